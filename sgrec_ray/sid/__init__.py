"""Semantic IDs: item text → embeddings (``embed``, Ray Data) → RQ-KMeans codes with a collision
level (``rqkmeans``, pure) → token vocabulary and prefix trie for constrained decoding (``trie``,
pure). ``stage.run`` wires them; later stages call ``stage.load_sid_artifacts``.
"""
