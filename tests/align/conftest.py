"""A tiny judge model for the align stage tests: SmolLM2's real tokenizer and chat template on a
randomly initialised 2-layer Llama, saved as a model folder (``judge.model``).

Why not SmolLM2 itself: each of the stage's three model loads de-quantises the GGUF file (~12 s)
and a 500-token prompt costs ~2 s per training example on 2 cores, which put the stage test at
~3 minutes. The real model's alignment path is what docs/EXPERIMENTS.md measures on ML-100k;
here every part (prompts, LoRA on Ray Train, GRPO, merging, evaluation, Stage B, the report) runs
for real on a model small enough for seconds.
"""

from __future__ import annotations

import pytest


def save_tiny_llama(path, vocab_size: int, max_positions: int, **config) -> None:
    """A randomly initialised 2-layer Llama saved at ``path``: a real transformers model that
    trains in milliseconds. Embeddings are drawn large (``initializer_range`` 0.3) so the frozen,
    tied LM head can express a confident answer once LoRA moves the hidden states."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        initializer_range=0.3,
        **config,
    )
    LlamaForCausalLM(llama).save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_judge(tmp_path_factory) -> str:
    from sgrec_ray.config import JudgeSection
    from sgrec_ray.judge.engines import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(JudgeSection()))
    path = tmp_path_factory.mktemp("tiny_judge")
    save_tiny_llama(
        path,
        len(tokenizer),
        1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    tokenizer.save_pretrained(path)
    return str(path)
