"""SFT and GRPO steps on a tiny random Llama (built here, no download): each objective moves the
slot distributions toward the labels, and the saved adapter merges back into the base model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sgrec_ray.align.examples import Example
from sgrec_ray.align.train import SlotHidden, grpo_step, load_policy, sft_step, slot_logp
from sgrec_ray.config import AlignSection
from sgrec_ray.judge.engines import ModelRef, merge_adapter
from tests.align.conftest import save_tiny_llama

SCORE_IDS = [11, 12, 13, 14, 15]  # the "digits" 1..5 of this toy vocabulary
PAD = 0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_llama(path, vocab_size=64, max_positions=64)
    return ModelRef(str(path), None)


def examples() -> list[Example]:
    """Two prompts; the slots hold the placeholder digit 3 (id 13), as the judge's scaffold does."""
    a = Example([1, 5, 6, 7, 2, 13, 3, 13], [5, 7], [4, 2])
    b = Example([1, 8, 9, 2, 13, 3, 13], [4, 6], [1, 5], rationale=[([1, 8, 9, 2, 20, 21, 22], 4)])
    return [a, b]


CFG = AlignSection(lora_r=4, lora_alpha=8, sft_lr=2e-2, grpo_lr=5e-3, group_size=16, kl_beta=0.0)


def _target_prob(net, head, batch) -> float:
    with torch.no_grad():
        logp = slot_logp(net, head, batch, SCORE_IDS, PAD, "cpu")
    return float(
        np.mean(
            [
                logp[b, k, lvl - 1].exp()
                for b, e in enumerate(batch)
                for k, lvl in enumerate(e.levels)
            ]
        )
    )


def _policy(tiny_model, cfg=CFG):
    torch.manual_seed(0)
    model = load_policy(tiny_model, cfg, None, "cpu")
    head = model.get_base_model().get_output_embeddings().weight.detach()
    return model, SlotHidden(model), head


def test_only_lora_parameters_train(tiny_model):
    model, _, _ = _policy(tiny_model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_sft_lowers_the_loss_on_answer_tokens(tiny_model):
    model, net, head = _policy(tiny_model)
    batch = examples()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=CFG.sft_lr)
    before = _target_prob(net, head, batch)
    losses = []
    for _ in range(40):
        metrics = sft_step(net, head, optim, batch, SCORE_IDS, PAD, "cpu", micro_batch=1)
        losses.append(metrics["loss"])
    # 4 digits + 3 rationale tokens: the loss reads answer tokens only
    assert metrics["answer_tokens"] == 7
    assert losses[-1] < 0.5 * losses[0]
    assert _target_prob(net, head, batch) > before + 0.2


def test_grpo_raises_the_reward_without_a_label_gradient(tiny_model):
    cfg = dataclasses.replace(CFG, ppo_epochs=2)
    model, net, head = _policy(tiny_model, cfg)
    batch = examples()
    with torch.no_grad():
        ref = slot_logp(net, head, batch, SCORE_IDS, PAD, "cpu").numpy()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.grpo_lr)
    rewards = []
    for step in range(25):
        m = grpo_step(net, head, optim, batch, ref, SCORE_IDS, PAD, "cpu", cfg, seed=step)
        rewards.append(m["reward"])
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.1
    assert m["kl"] > 0  # it moved away from the reference, which a KL weight would hold back


def test_saved_adapter_merges_into_the_base_with_the_same_scores(tiny_model, tmp_path):
    model, net, head = _policy(tiny_model)
    with torch.no_grad():  # make the adapter non-trivial (LoRA B starts at zero)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05 * torch.randn_like(p))
        expected = slot_logp(net, head, examples(), SCORE_IDS, PAD, "cpu")
    model.save_pretrained(tmp_path / "adapter")
    from transformers import AutoModelForCausalLM

    merged = merge_adapter(
        AutoModelForCausalLM.from_pretrained(tiny_model.path), str(tmp_path / "adapter")
    )

    class Plain(torch.nn.Module):  # SlotHidden expects a peft wrapper; the merged model is plain
        def __init__(self, m):
            super().__init__()
            self.m = m

        def get_base_model(self):
            return self.m

    with torch.no_grad():
        got = slot_logp(SlotHidden(Plain(merged)), head, examples(), SCORE_IDS, PAD, "cpu")
    assert torch.allclose(got, expected, atol=1e-4)


def test_micro_batches_accumulate_to_the_full_batch_gradient(tiny_model):
    grads = []
    for micro in (1, 2):
        model, net, head = _policy(tiny_model)
        optim = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
        sft_step(net, head, optim, examples(), SCORE_IDS, PAD, "cpu", micro_batch=micro)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.integration
@pytest.mark.slow  # ~50 s on 2 cores: `make test-slow` (CI) runs it
def test_grpo_on_two_ddp_workers_from_an_sft_adapter_resumes_after_a_killed_worker(
    tiny_model, tmp_path, ray_session
):
    from sgrec_ray.align.train import train_adapter

    # Two DDP workers (each takes half of a step's prompts) and one killed mid-run.
    cfg = dataclasses.replace(
        CFG,
        batch_size=2,
        grpo_epochs=4,
        max_failures=1,
        group_size=4,
        num_workers=2,
        cpus_per_worker=0.5,
    )
    sft_dir = tmp_path / "adapter" / "sft"
    _policy(tiny_model, cfg)[0].save_pretrained(sft_dir)  # stands in for the SFT phase's output
    history = train_adapter(
        "grpo",
        examples(),
        cfg,
        tiny_model,
        SCORE_IDS,
        PAD,
        storage_path=str(tmp_path / "train"),
        name="grpo",
        out_uri=str(tmp_path / "adapter" / "grpo"),
        init_adapter=str(sft_dir),
        fail_at_step=2,
    )
    # 2 prompts x 4 epochs, one step each; the group died after step 2 and resumed from step 1
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert {"reward", "exact", "kl"} <= set(history[-1])
    # the reference is the SFT adapter GRPO starts from: no KL before the first update
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "adapter" / "grpo" / "adapter_config.json").is_file()
