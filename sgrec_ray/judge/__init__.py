"""The Personalized Semantic Judge: Stage A (aspect scores per user and candidate) and Stage B
(the user-conditional aggregator), plus the semantic reward service A2PO calls.

Engines. ``judge.engine`` names one entry of :data:`sgrec_ray.judge.registry.JUDGE_ENGINES`:
``transformers`` (``scoring.py``), ``vllm`` (``vllm_engine.py``) and ``embedding``
(``embedding_engine.py``). The stage, the reward service, the pre-run checks and the config rules
ask the engine (:class:`~sgrec_ray.judge.registry.JudgeEngine`) what it needs and can do; none
tests an engine's name. **Adding an engine touches one new file and one registry line**: write a
class with the protocol's attributes and methods in its own module (``EmbeddingJudgeEngine`` at
the bottom of ``embedding_engine.py`` is the example: no language model, scores in-process, its
config rules next to it), add ``"name": "module:YourEngine"`` to ``JUDGE_ENGINES``, and add a test
(``tests/judge/test_registry.py`` checks every registered engine against the protocol).

Prompts and parsing live in ``prompts.py`` / ``rows.py`` only; engines turn prompt tokens into
score-slot logits. The default judge is a GGUF file; vLLM 0.29 loads no GGUF, so
``sgrec export-judge`` (``export.py``) writes it as the Hugging Face folder ``judge.engine: vllm``
reads.
"""
