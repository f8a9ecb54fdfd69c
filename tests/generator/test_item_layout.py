"""The item layout: one position per item behind the token layout's interface.

What must hold for the shared training, decoding and RL code to be right: position t's logits
depend only on tokens <= t, padding on either side changes nothing, the logits at an item
boundary are the code head over the state after that item, and a checkpoint round-trips.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgrec_ray.generator.encoding import collate, history_tokens, left_pad, training_example
from sgrec_ray.generator.item_layout import HEAD_FILE, ItemLayoutLM
from sgrec_ray.generator.model import (
    GeneratorMeta,
    build_model,
    identity_map,
    load_generator,
    save_generator,
)
from tests.generator.gen_synthetic import LEVEL_SIZES, make_item_tokens, sid_vocab_json, vocab_size

TOKENS = make_item_tokens(20)
DEPTH = TOKENS.shape[1]


@pytest.fixture(scope="module")
def model() -> ItemLayoutLM:
    m = build_model("tiny", vocab_size(), seed=0, layout="item", depth=DEPTH).eval()
    with torch.no_grad():  # a non-identity head, so the tests see it
        torch.nn.init.normal_(m.head_out.weight, std=0.5)
        torch.nn.init.normal_(m.attn_o.weight, std=0.5)
    return m


def _seq(items: list[int], partial: int = 0) -> np.ndarray:
    """BOS + the items' tokens + the first ``partial`` tokens of one more item."""
    return np.concatenate([history_tokens(items, TOKENS), TOKENS[19][:partial]])


def test_build_needs_the_depth_and_names_the_layouts():
    assert isinstance(build_model("tiny", 20, layout="item", depth=3), ItemLayoutLM)
    with pytest.raises(ValueError, match="depth"):
        build_model("tiny", 20, layout="item")
    with pytest.raises(ValueError, match=r"\['token', 'item'\]"):
        build_model("tiny", 20, layout="slot")


@torch.no_grad()
def test_logits_are_causal_and_padding_free(model):
    full = torch.as_tensor(_seq([3, 4, 5], partial=DEPTH - 1))[None]
    logits = model(full).logits[0]
    # Any prefix (a complete item, or part of one) gives the same logits as the full sequence.
    for t in range(1, full.shape[1] + 1):
        torch.testing.assert_close(model(full[:, :t]).logits[0], logits[:t])
    # Left padding (decoding) and right padding (training) change nothing at real positions.
    seqs = [full[0].numpy(), _seq([7]), _seq([])]
    ids, mask, _ = left_pad(seqs)
    left = model(input_ids=ids, attention_mask=mask).logits
    right = collate([(s, s) for s in seqs])
    rlog = model(input_ids=right["input_ids"], attention_mask=right["attention_mask"]).logits
    for row, s in enumerate(seqs):
        torch.testing.assert_close(left[row, ids.shape[1] - len(s) :], logits_of(model, s))
        torch.testing.assert_close(rlog[row, : len(s)], logits_of(model, s))


def logits_of(model: ItemLayoutLM, seq: np.ndarray) -> torch.Tensor:
    return model(torch.as_tensor(seq)[None]).logits[0]


@torch.no_grad()
def test_item_boundaries_read_the_state_after_the_item(model):
    """At BOS and after each complete item the logits are the head's level 0 over the state after
    it: what decoding starts from (history_state) and what the item-level score reads."""
    items = [3, 4, 5]
    logits = logits_of(model, _seq(items))
    for n in range(len(items) + 1):
        ids = torch.as_tensor(_seq(items[:n]))[None]
        state, states, visible = model.history_state(ids, torch.ones_like(ids))
        first = model.code_logits(state[:, None], 0, states, visible[:, None])
        torch.testing.assert_close(logits[n * DEPTH], first[0, 0])


def test_training_loss_matches_the_token_labels(model):
    ids, labels = training_example([3, 4, 5, 6], 2, TOKENS)
    batch = collate([(ids, labels)])
    out = model(**batch)
    want = torch.nn.functional.cross_entropy(
        out.logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100
    )
    torch.testing.assert_close(out.loss, want)
    out.loss.backward()  # every parameter of the head and body takes part
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert {"level.weight", "attn_q.weight", "attn_o.weight", "head_out.weight"} <= grads
    model.zero_grad()


def test_checkpoint_roundtrip_keeps_the_layout(tmp_path, model):
    meta = GeneratorMeta(
        size="tiny",
        sid_vocab_size=vocab_size(),
        model_vocab_size=vocab_size(),
        depth=DEPTH,
        n_items=len(TOKENS),
        max_history=7,
        token_map=identity_map(vocab_size()).tolist(),
        layout="item",
    )
    save_generator(model, str(tmp_path / "ckpt"), meta, TOKENS, sid_vocab_json())
    assert (tmp_path / "ckpt" / HEAD_FILE).exists()
    gen = load_generator(str(tmp_path / "ckpt"))
    assert isinstance(gen.model, ItemLayoutLM) and gen.meta.layout == "item"
    x = torch.as_tensor(_seq([1, 2], partial=1))[None]
    with torch.no_grad():
        torch.testing.assert_close(gen.model(x).logits, model(x).logits)


def test_a_training_checkpoint_restores_the_item_layout(tmp_path, model):
    """What SFT and A2PO resume from (Ray Train checkpoints) rebuilds the same item-layout model."""
    from ray.train import Checkpoint

    from sgrec_ray.generator.checkpoint import GeneratorSpec, restore_checkpoint, save_checkpoint

    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    spec = GeneratorSpec(
        size="tiny",
        pretrained=None,
        level_sizes=LEVEL_SIZES,
        item_tokens=TOKENS,
        sid_vocab_json=sid_vocab_json(),
        max_history=7,
    )
    ids = identity_map(vocab_size())
    save_checkpoint(str(tmp_path), model, None, ids, opt, sched, 3, 40, [], spec)
    restored, tokenizer, state, _ = restore_checkpoint(Checkpoint.from_directory(str(tmp_path)))
    assert isinstance(restored, ItemLayoutLM) and tokenizer is None and state["step"] == 40
    x = torch.as_tensor(_seq([4, 5], partial=2))[None]
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x).logits, model(x).logits)
