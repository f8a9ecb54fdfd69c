"""Named sizes, checkpoint save/load, and the pretrained-base path (SID tokens added)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sgrec_ray.generator.model import (
    SIZES,
    GeneratorMeta,
    add_dropout,
    build_model,
    identity_map,
    load_generator,
    load_pretrained,
    save_generator,
    sid_token_strings,
)
from tests.generator.gen_synthetic import make_item_tokens, sid_vocab_json, vocab_size


def test_named_sizes_build_and_unknown_size_names_allowed_values():
    for name in SIZES:
        assert build_model(name, 40).config.vocab_size == 40
    with pytest.raises(ValueError, match=r"\['base', 'small', 'tiny'\]"):
        build_model("huge", 40)


def test_build_is_seeded():
    a, b = build_model("tiny", 20, seed=3), build_model("tiny", 20, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_dropout_acts_in_training_only_and_leaves_the_checkpoint_plain(tmp_path):
    model = build_model("tiny", 20, seed=0)
    ids = torch.randint(3, 20, (2, 9))
    plain = model.eval()(input_ids=ids).logits
    handles = add_dropout(model, 0.5)
    assert len(handles) == 1 + 2 * len(model.model.layers)  # embeddings + attention, MLP per block
    assert torch.equal(model.eval()(input_ids=ids).logits, plain)  # eval: hooks are a no-op
    torch.manual_seed(1)
    a = model.train()(input_ids=ids).logits
    torch.manual_seed(2)
    b = model(input_ids=ids).logits
    assert not torch.allclose(a, b) and not torch.allclose(a, plain)
    model.save_pretrained(tmp_path)  # a plain Llama config: nothing for loaders to know about
    assert json.loads((tmp_path / "config.json").read_text())["attention_dropout"] == 0.0
    assert add_dropout(build_model("tiny", 20), 0.0) == []


def _meta(n_items: int, depth: int) -> GeneratorMeta:
    return GeneratorMeta(
        size="tiny",
        sid_vocab_size=vocab_size(),
        model_vocab_size=vocab_size(),
        depth=depth,
        n_items=n_items,
        max_history=7,
        epoch=2,
        step=30,
        token_map=identity_map(vocab_size()).tolist(),
    )


def test_checkpoint_roundtrip(tmp_path):
    item_tokens = make_item_tokens(10)
    model = build_model("tiny", vocab_size(), seed=0).eval()
    save_generator(model, str(tmp_path / "ckpt"), _meta(10, 3), item_tokens, sid_vocab_json())
    gen = load_generator(str(tmp_path / "ckpt"))
    assert gen.meta.epoch == 2 and gen.meta.max_history == 7
    np.testing.assert_array_equal(gen.item_tokens, item_tokens)
    np.testing.assert_array_equal(gen.token_map, identity_map(vocab_size()))
    assert gen.sid_vocab_json == sid_vocab_json()
    x = torch.tensor([[1, 3, 7, 10]])
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, gen.model(x).logits)


def test_a_checkpoint_from_before_reranking_loads_as_beam_only(tmp_path):
    """Run folders written before item-level re-ranking (no rerank_weight key) still load and
    decode by beam likelihood alone."""
    item_tokens = make_item_tokens(10)
    model = build_model("tiny", vocab_size(), seed=0).eval()
    save_generator(model, str(tmp_path / "ckpt"), _meta(10, 3), item_tokens, sid_vocab_json())
    path = tmp_path / "ckpt" / "generator.json"
    old = {
        k: v
        for k, v in json.loads(path.read_text()).items()
        if k not in ("rerank_weight", "valid_ndcg")
    }
    path.write_text(json.dumps(old))
    gen = load_generator(str(tmp_path / "ckpt"))
    assert gen.meta.rerank_weight == 0.0 and gen.meta.valid_ndcg is None


def make_pretrained_base(path) -> str:
    """A tiny 'pretrained' HF LM + word-level tokenizer, saved like a hub checkpoint."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "the", "movie", "user", "likes"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    cfg = LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    hf_tok.save_pretrained(str(path))
    return str(path)


def test_pretrained_base_gets_sid_tokens(tmp_path):
    base = make_pretrained_base(tmp_path / "base")
    level_sizes = [4, 3, 2]
    model, tokenizer, token_map = load_pretrained(base, level_sizes)
    assert len(token_map) == vocab_size(level_sizes)
    assert token_map[0] == tokenizer.pad_token_id  # PAD reuses the base's pad
    assert len(set(token_map[1:].tolist())) == len(token_map) - 1  # every SID token is new
    assert token_map[1:].min() >= 8  # appended after the base vocabulary
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    names = sid_token_strings(level_sizes)
    assert names[3] == "<a_0>" and names[-1] == "<c_1>"
    assert tokenizer.convert_ids_to_tokens(int(token_map[3])) == "<a_0>"
