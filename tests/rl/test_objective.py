"""The A2PO objective: clipping, k3 KL, the NLL term (pure torch, no Ray)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sgrec_ray.rl.objective import clipped_surrogate, k3_kl, policy_loss

logps = st.lists(st.floats(-20, 0, allow_nan=False), min_size=1, max_size=32)


@settings(max_examples=100, deadline=None)
@given(logps, logps)
def test_k3_is_nonnegative(a, b):
    n = min(len(a), len(b))
    kl = k3_kl(torch.tensor(a[:n], dtype=torch.float64), torch.tensor(b[:n], dtype=torch.float64))
    assert (kl >= -1e-12).all()


@given(logps)
def test_k3_is_zero_when_policy_equals_reference(a):
    x = torch.tensor(a, dtype=torch.float64)
    assert torch.allclose(k3_kl(x, x.clone()), torch.zeros_like(x))


def test_k3_matches_true_kl_in_expectation():
    # Samples from p; E_p[k3] = KL(p || q) for categorical p, q.
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    k3 = k3_kl(p.log(), q.log())
    assert abs(float((p * k3).sum()) - exact) < 1e-9


def test_clipping_stops_gradient_outside_the_trust_region():
    eps = 0.2
    logp_old = torch.zeros(4, dtype=torch.float64)
    # ratios 1.5 (adv +, clipped), 1.5 (adv -, not clipped), 0.5 (adv -, clipped), 1.1 (inside)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.1], dtype=torch.float64)).requires_grad_()
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    obj, active = clipped_surrogate(logp, logp_old, adv, eps)
    assert active.tolist() == [True, False, True, False]
    assert torch.allclose(obj, torch.tensor([1.2, -1.5, -0.8, 1.1], dtype=torch.float64))
    obj.sum().backward()
    grad = logp.grad
    assert grad is not None
    assert grad[0] == 0 and grad[2] == 0  # clipped: no push further
    assert torch.isclose(grad[1], torch.tensor(-1.5, dtype=torch.float64))  # d(r*A)/dlogp = r*A
    assert torch.isclose(grad[3], torch.tensor(1.1, dtype=torch.float64))


def test_on_policy_loss_is_policy_gradient_plus_kl():
    logp = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    ref = torch.tensor([-1.5, -2.0, -2.5])
    adv = torch.tensor([1.0, 0.0, -1.0])
    parts = policy_loss(logp, logp.detach(), ref, adv, clip_eps=0.2, kl_beta=0.1)
    assert parts.clip_frac == 0.0 and parts.ratio_mean == pytest.approx(1.0)
    assert parts.kl == pytest.approx(float(k3_kl(logp.detach(), ref).mean()))
    parts.loss.backward()
    # -mean(A * r) has gradient -A/N at r = 1; KL adds beta * d k3 / d logp / N = beta*(1 - e^{ref-logp})/N
    expected = -adv / 3 + 0.1 * (1 - torch.exp(ref - logp.detach())) / 3
    assert torch.allclose(logp.grad, expected, atol=1e-6)


def test_nll_term_is_added_with_its_weight():
    logp = torch.zeros(2, requires_grad=True)
    nll = torch.tensor([2.0, 4.0], requires_grad=True)
    base = policy_loss(logp, logp.detach(), logp.detach(), torch.zeros(2), clip_eps=0.2, kl_beta=0)
    with_nll = policy_loss(
        logp, logp.detach(), logp.detach(), torch.zeros(2), clip_eps=0.2, kl_beta=0,
        nll=nll, nll_weight=0.5,
    )  # fmt: skip
    assert float((with_nll.loss - base.loss).detach()) == pytest.approx(1.5)
    assert with_nll.nll == pytest.approx(3.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        policy_loss(
            torch.zeros(3), torch.zeros(3), torch.zeros(2), torch.zeros(3), clip_eps=0.2, kl_beta=0
        )
