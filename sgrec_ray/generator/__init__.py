"""The generator: a causal LM over SID tokens (``model``), sequence encoding (``encoding``), SFT
with Ray Train (``sft``, the pipeline's ``sft`` stage) and trie-constrained beam search plus the
``Recommender`` that eval and Serve share (``decode``)."""
