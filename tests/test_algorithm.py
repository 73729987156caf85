"""Tests for rlsd/algorithm.py: each function against an independent loop/numpy re-implementation on random inputs,
plus the properties the paper proves (sign preservation and bounds of RLSD advantages, Theorem 1's decomposition,
JSD limits and bounds) and hand-computed PPO clipping cases."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlsd.algorithm import (
    gather_token_logp,
    generalized_jsd,
    group_advantages,
    kl_decomposition,
    masked_mean,
    policy_loss,
    rlsd_drift_decomposition,
    rlsd_lambda,
    rlsd_phi,
    rlsd_token_advantages,
    rlsd_token_weights,
    rlsd_weight_scope,
    shuffle_within_rows,
    token_entropy,
    topk_tail_divergence,
)

seeds = st.integers(0, 2**31 - 1)
FAST = settings(max_examples=30, deadline=None)


# ----------------------------------------------------------------------------------------------------------------------
# independent numpy references


def np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_kl(p, q):
    """KL(p ‖ q) for 1-D numpy probability vectors, 0·log 0 = 0."""
    total = 0.0
    for pi, qi in zip(p, q):
        if pi > 0:
            total += pi * (math.log(pi) - math.log(qi))
    return total


def np_jsd(ps, pt, beta):
    if beta == 0:
        return np_kl(pt, ps)
    if beta == 1:
        return np_kl(ps, pt)
    m = beta * pt + (1 - beta) * ps
    return beta * np_kl(pt, m) + (1 - beta) * np_kl(ps, m)


def random_case(seed, B=3, T=5, V=7, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale
    t = torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale
    mask = (torch.rand(B, T, generator=g) > 0.3).to(torch.float64)
    mask[0, 0] = 1.0  # never an empty mask
    return s, t, mask


# ----------------------------------------------------------------------------------------------------------------------
# helpers


@FAST
@given(seeds, st.integers(1, 4), st.integers(1, 6))
def test_masked_mean_matches_loop(seed, B, T):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T))
    m = (rng.random((B, T)) > 0.4).astype(float)
    got = masked_mean(torch.tensor(x), torch.tensor(m)).item()
    vals = [x[i, j] for i in range(B) for j in range(T) if m[i, j]]
    assert got == pytest.approx(sum(vals) / len(vals) if vals else 0.0, abs=1e-12)
    got_rows = masked_mean(torch.tensor(x), torch.tensor(m), dim=1).numpy()
    for i in range(B):
        row = [x[i, j] for j in range(T) if m[i, j]]
        assert got_rows[i] == pytest.approx(sum(row) / len(row) if row else 0.0, abs=1e-12)


def test_masked_mean_ignores_inf_in_padding_and_empty_mask():
    x = torch.tensor([[1.0, float("-inf")], [3.0, float("nan")]])
    m = torch.tensor([[1, 0], [1, 0]])
    assert masked_mean(x, m).item() == 2.0
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0


@FAST
@given(seeds)
def test_token_entropy_matches_numpy(seed):
    s, _, _ = random_case(seed)
    p = np.exp(np_log_softmax(s.numpy()))
    ref = -(p * np.log(p)).sum(-1)
    np.testing.assert_allclose(token_entropy(s).numpy(), ref, atol=1e-10)


def test_token_entropy_uniform_and_suppressed_tokens():
    assert token_entropy(torch.zeros(1, 1, 8)).item() == pytest.approx(math.log(8), abs=1e-6)
    logits = torch.tensor([[[0.0, 0.0, float("-inf"), float("-inf")]]], requires_grad=True)
    h = token_entropy(logits)
    h.sum().backward()
    assert h.item() == pytest.approx(math.log(2), abs=1e-6)
    assert torch.isfinite(logits.grad).all()


@FAST
@given(seeds, st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_gather_token_logp_matches_log_softmax(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, 4, 11, generator=g) * 4).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, 11, (2, 4), generator=g)
    got = gather_token_logp(logits, tokens)
    ref_logits = logits.detach().double().requires_grad_(True)
    ref = torch.log_softmax(ref_logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got.double(), ref.detach(), atol=tol, rtol=0)
    got.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(logits.grad.double(), ref_logits.grad, atol=tol, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# GRPO advantages


@FAST
@given(seeds, st.integers(1, 5), st.integers(2, 8), st.booleans())
def test_group_advantages_matches_numpy(seed, groups, G, binary):
    rng = np.random.default_rng(seed)
    r = rng.integers(0, 2, groups * G).astype(float) if binary else rng.normal(size=groups * G)
    got = group_advantages(torch.tensor(r), G).numpy()
    ref = np.concatenate(
        [(g - g.mean()) / (g.std(ddof=1) + 1e-6) for g in r.reshape(groups, G)]
    )
    np.testing.assert_allclose(got, ref, atol=1e-9)


def test_group_advantages_hand_case_and_degenerate_groups():
    got = group_advantages(torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1]), 4)
    # group 1: mean 0.25, unbiased std 0.5; group 2: all equal -> 0
    torch.testing.assert_close(got[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6))
    assert torch.equal(got[4:], torch.zeros(4))
    assert torch.equal(group_advantages(torch.tensor([1.0, 0.0, 1.0]), 1), torch.zeros(3))


def test_group_advantages_rejects_indivisible():
    with pytest.raises(ValueError, match="7.*3"):
        group_advantages(torch.zeros(7), 3)


# ----------------------------------------------------------------------------------------------------------------------
# RLSD


def test_rlsd_lambda_schedule():
    assert rlsd_lambda(0) == 0.5
    assert rlsd_lambda(25) == pytest.approx(0.25)
    assert rlsd_lambda(49) == pytest.approx(0.01)
    assert rlsd_lambda(50) == 0.0 and rlsd_lambda(500) == 0.0
    assert rlsd_lambda(3, lam0=1.0, decay_steps=4) == pytest.approx(0.25)
    assert rlsd_lambda(0, decay_steps=0) == 0.5 and rlsd_lambda(900, lam0=0.3, decay_steps=0) == 0.3  # constant
    with pytest.raises(ValueError):
        rlsd_lambda(-1)


def rlsd_case(seed, B=4, T=6, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    adv[0] = 0.0  # always include an A = 0 response
    teacher = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 * scale
    student = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 * scale
    mask = (torch.rand(B, T, generator=g) > 0.3).to(torch.float64)
    return adv, teacher, student, mask


@FAST
@given(seeds, st.floats(0, 1), st.floats(0, 0.9), st.floats(0.01, 30))
def test_rlsd_token_advantages_matches_loop(seed, lam, eps, scale):
    adv, teacher, student, mask = rlsd_case(seed, scale=scale)
    got = rlsd_token_advantages(adv, teacher, student, mask, lam, eps)
    for i in range(adv.shape[0]):
        a = adv[i].item()
        sgn = (a > 0) - (a < 0)
        for t in range(teacher.shape[1]):
            if mask[i, t] == 0:
                assert got[i, t].item() == 0.0
                continue
            w = math.exp(sgn * (teacher[i, t].item() - student[i, t].item()))
            ref = a * ((1 - lam) + lam * min(max(w, 1 - eps), 1 + eps))
            assert got[i, t].item() == pytest.approx(ref, rel=1e-9, abs=1e-12)


@FAST
@given(seeds, st.floats(0, 1), st.floats(0, 0.9), st.floats(0.01, 100))
def test_rlsd_sign_and_bounds(seed, lam, eps, scale):
    adv, teacher, student, mask = rlsd_case(seed, scale=scale)
    got = rlsd_token_advantages(adv, teacher, student, mask, lam, eps)
    on = mask != 0
    a = adv[:, None].expand_as(got)
    assert torch.isfinite(got).all()
    assert torch.equal(torch.sign(got)[on], torch.sign(a)[on])  # includes Â = 0 iff A = 0
    assert (got[~on] == 0).all()
    slack = 1e-12
    assert (got.abs()[on] <= a.abs()[on] * (1 + lam * eps) + slack).all()
    assert (got.abs()[on] >= a.abs()[on] * (1 - lam * eps) - slack).all()


@FAST
@given(seeds)
def test_rlsd_lambda_zero_is_grpo_and_zero_adv_is_zero(seed):
    adv, teacher, student, mask = rlsd_case(seed)
    got = rlsd_token_advantages(adv, teacher, student, mask, 0.0)
    assert torch.equal(got, adv[:, None] * mask)
    zero = rlsd_token_advantages(torch.zeros_like(adv), teacher, student, mask, 0.5)
    assert torch.equal(zero, torch.zeros_like(zero))


def test_rlsd_hand_case_and_extreme_gaps():
    # A = +2: teacher 1000 nats more confident -> clipped to 1+ε; A = -1: same gap -> w = e^-1000 -> clipped to 1-ε
    adv = torch.tensor([2.0, -1.0])
    teacher = torch.tensor([[0.0, -0.1], [0.0, -0.1]])
    student = torch.tensor([[-1000.0, -0.1], [-1000.0, -0.1]])
    mask = torch.ones(2, 2)
    got = rlsd_token_advantages(adv, teacher, student, mask, lam=0.5, clip_eps=0.2)
    torch.testing.assert_close(got, torch.tensor([[2 * (0.5 + 0.5 * 1.2), 2.0], [-(0.5 + 0.5 * 0.8), -1.0]]))


def test_rlsd_no_gradient_into_logps():
    adv, teacher, student, mask = rlsd_case(0)
    teacher.requires_grad_(True)
    student.requires_grad_(True)
    adv.requires_grad_(True)
    got = rlsd_token_advantages(adv, teacher, student, mask, 0.5)
    assert not got.requires_grad
    w, cw, _ = rlsd_token_weights(adv, teacher, student, mask)
    assert not w.requires_grad and not cw.requires_grad


def test_rlsd_weight_stats_hand_case():
    # active tokens: response 0 (A>0) 3 unmasked, response 1 (A<0) 2 unmasked; response 2 (A=0) is ignored
    adv = torch.tensor([1.0, -1.0, 0.0])
    delta = torch.tensor([[1.0, 0.0, -1.0, 5.0], [1.0, 0.05, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]])
    w, cw, stats = rlsd_token_weights(adv, delta, torch.zeros_like(delta), mask, clip_eps=0.2)
    # exponents sign(A)·Δ on active tokens: +1 (high), 0, -1 (low) | -1 (low), -0.05 (inside)
    assert stats["weight_clip_high_frac"] == pytest.approx(1 / 5)
    assert stats["weight_clip_low_frac"] == pytest.approx(2 / 5)
    assert stats["delta_mean"] == pytest.approx((1 + 0 - 1 + 1 + 0.05 + 9 + 9) / 7)
    assert stats["weight_mean"] == pytest.approx((math.e + 1 + 2 / math.e + math.exp(-0.05)) / 5)
    torch.testing.assert_close(w[0, :3], torch.tensor([math.e, 1.0, 1 / math.e]))
    torch.testing.assert_close(cw[0, :3], torch.tensor([1.2, 1.0, 0.8]))
    assert (w[2] == 1).all() and (cw[:, 3] == 1).all()  # neutral where A = 0 and on padding
    assert all(isinstance(v, float) for v in stats.values())


def test_rlsd_rejects_bad_lambda():
    adv, teacher, student, mask = rlsd_case(1)
    with pytest.raises(ValueError):
        rlsd_token_advantages(adv, teacher, student, mask, 1.5)


def _pre_switch_advantages(adv_B, teacher_logp_BT, student_logp_BT, mask_BT, lam, clip_eps):
    """The RLSD weights and advantages exactly as computed before the switches existed (frozen copy, float ops in the
    same order), so 'off' can be checked bit for bit."""
    valid_BT = mask_BT != 0
    delta_BT = (teacher_logp_BT - student_logp_BT).detach()
    delta_BT = torch.where(valid_BT, delta_BT, torch.zeros_like(delta_BT))
    sign_B1 = torch.sign(adv_B.detach()).to(delta_BT.dtype).unsqueeze(1)
    expo_BT = sign_B1 * delta_BT
    w_BT = expo_BT.clamp(-50.0, 50.0).exp()
    clipped_w_BT = expo_BT.clamp(math.log(1.0 - clip_eps), math.log(1.0 + clip_eps)).exp()
    adv_BT = adv_B.detach().to(clipped_w_BT.dtype).unsqueeze(1) * ((1.0 - lam) + lam * clipped_w_BT)
    return w_BT, clipped_w_BT, torch.where(mask_BT != 0, adv_BT, torch.zeros_like(adv_BT))


@FAST
@given(seeds, st.floats(0, 1), st.floats(0, 0.9), st.floats(0.01, 30), st.sampled_from([torch.float32, torch.float64]))
def test_rlsd_switches_off_are_bit_identical_to_before(seed, lam, eps, scale, dtype):
    adv, teacher, student, mask = (x.to(dtype) for x in rlsd_case(seed, scale=scale))
    adv[0] = 0.0  # an A = 0 response too
    w_ref, cw_ref, adv_ref = _pre_switch_advantages(adv, teacher, student, mask, lam, eps)
    for kwargs in ({}, {"negative_only": False, "thought_mask_BT": None}):
        w, cw, _ = rlsd_token_weights(adv, teacher, student, mask, eps, **kwargs)
        assert torch.equal(w, w_ref) and torch.equal(cw, cw_ref)
        assert torch.equal(rlsd_token_advantages(adv, teacher, student, mask, lam, eps, **kwargs), adv_ref)
    assert torch.equal(rlsd_weight_scope(adv, mask), mask != 0)
    # a thought mask covering every token is also "off"
    everywhere = torch.ones_like(mask, dtype=torch.bool)
    assert torch.equal(rlsd_token_advantages(adv, teacher, student, mask, lam, eps, thought_mask_BT=everywhere),
                       adv_ref)


def _switch_hand_case():
    # response 0: A = +2, response 1: A = -1, response 2: A = -0.5 with its last token masked; δ = ±1 or ±0.1
    adv = torch.tensor([2.0, -1.0, -0.5], dtype=torch.float64)
    delta = torch.tensor([[1.0, -0.1, 0.1], [1.0, -0.1, 0.1], [-1.0, 0.1, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]])
    thought = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=torch.bool)  # e.g. tokens before <answer>
    return adv, delta, torch.zeros_like(delta), mask, thought


def test_rlsd_negative_only_hand_case():
    adv, teacher, student, mask, _ = _switch_hand_case()
    lam, eps = 0.5, 0.2
    got = rlsd_token_advantages(adv, teacher, student, mask, lam, eps, negative_only=True)
    e = math.exp
    want = torch.tensor([
        [2.0, 2.0, 2.0],  # A > 0: weight 1 everywhere, Â = A
        [-1 * (0.5 + 0.5 * 0.8), -1 * (0.5 + 0.5 * e(0.1)), -1 * (0.5 + 0.5 * e(-0.1))],  # w = e^{-δ}, clipped
        [-0.5 * (0.5 + 0.5 * 1.2), -0.5 * (0.5 + 0.5 * e(-0.1)), 0.0],
    ], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    w, cw, stats = rlsd_token_weights(adv, teacher, student, mask, eps, negative_only=True)
    assert (w[0] == 1).all() and (cw[0] == 1).all()
    assert stats["weight_clip_low_frac"] == pytest.approx(1 / 5)
    assert stats["weight_clip_high_frac"] == pytest.approx(1 / 5)
    # without the switch response 0 is reweighted (a check that catches a switch that does nothing)
    off = rlsd_token_advantages(adv, teacher, student, mask, lam, eps)
    assert off[0, 0] == pytest.approx(2 * (0.5 + 0.5 * 1.2)) and torch.equal(off[1:], got[1:])


def test_rlsd_thought_only_hand_case():
    adv, teacher, student, mask, thought = _switch_hand_case()
    lam, eps = 0.5, 0.2
    got = rlsd_token_advantages(adv, teacher, student, mask, lam, eps, thought_mask_BT=thought)
    e = math.exp
    want = torch.tensor([
        [2 * (0.5 + 0.5 * 1.2), 2 * (0.5 + 0.5 * e(-0.1)), 2.0],
        [-1 * (0.5 + 0.5 * 0.8), -1.0, -1.0],
        [-0.5, -0.5 * (0.5 + 0.5 * e(-0.1)), 0.0],  # the thought mask never un-masks padding
    ], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    both = rlsd_token_advantages(adv, teacher, student, mask, lam, eps, negative_only=True, thought_mask_BT=thought)
    assert torch.equal(both[0], torch.full((3,), 2.0, dtype=torch.float64)) and torch.equal(both[1:], got[1:])
    _, _, stats = rlsd_token_weights(adv, teacher, student, mask, eps, thought_mask_BT=thought)
    assert stats["weight_clip_high_frac"] == pytest.approx(1 / 4)
    assert stats["weight_clip_low_frac"] == pytest.approx(1 / 4)
    assert stats["delta_mean"] == pytest.approx(float(teacher[mask != 0].mean()))  # Δ still over all tokens
    with pytest.raises(ValueError, match="thought_mask_BT"):
        rlsd_token_advantages(adv, teacher, student, mask, lam, eps, thought_mask_BT=thought[:, :2])


def test_shuffle_within_rows_keeps_each_rows_multiset_and_moves_it():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 9, generator=g, dtype=torch.float64)
    where = torch.rand(6, 9, generator=g) > 0.3
    where[0] = False  # an empty row stays as it is
    out = shuffle_within_rows(x, where, torch.Generator().manual_seed(1))
    assert torch.equal(out[~where], x[~where])
    moved = 0
    for b in range(6):
        assert torch.equal(torch.sort(out[b, where[b]]).values, torch.sort(x[b, where[b]]).values)
        moved += int(not torch.equal(out[b, where[b]], x[b, where[b]]))
    assert moved >= 4  # 5 non-empty rows of distinct values: an identity "shuffle" fails here
    same = shuffle_within_rows(x, where, torch.Generator().manual_seed(1))
    assert torch.equal(out, same)  # the generator decides, nothing else


def test_rlsd_shuffled_weights_control():
    adv, teacher, student, mask = rlsd_case(3, B=4, T=12, scale=0.3)
    lam, eps = 0.5, 0.5
    plain = rlsd_token_advantages(adv, teacher, student, mask, lam, eps)
    shuffled = rlsd_token_advantages(adv, teacher, student, mask, lam, eps,
                                     shuffle_generator=torch.Generator().manual_seed(0))
    on = mask != 0
    for b in range(4):
        assert torch.allclose(torch.sort(shuffled[b, on[b]]).values, torch.sort(plain[b, on[b]]).values,
                              rtol=0, atol=0)
    assert not torch.equal(shuffled, plain)
    assert (shuffled[~on] == 0).all()
    # with thought_only the weights stay inside the thought span
    thought = torch.zeros_like(on)
    thought[:, :6] = True
    sh_thought = rlsd_token_advantages(adv, teacher, student, mask, lam, eps, thought_mask_BT=thought,
                                       shuffle_generator=torch.Generator().manual_seed(0))
    outside = on & ~thought
    assert torch.equal(sh_thought[outside], adv[:, None].expand_as(on)[outside])


@FAST
@given(seeds, st.floats(0, 1), st.floats(0, 0.9), st.floats(0.01, 30), st.booleans(), st.booleans())
def test_rlsd_drift_decomposition_is_exact(seed, lam, eps, scale, negative_only, thought_only):
    adv, teacher, student, mask = rlsd_case(seed, scale=scale)
    adv[0] = 0.0
    thought = (torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed)) > 0.4) if thought_only else None
    kwargs = {"negative_only": negative_only, "thought_mask_BT": thought}
    grpo, drift = rlsd_drift_decomposition(adv, teacher, student, mask, lam, eps, **kwargs)
    total = rlsd_token_advantages(adv, teacher, student, mask, lam, eps, **kwargs)
    torch.testing.assert_close(grpo + drift, total, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grpo, adv[:, None] * (mask != 0), rtol=0, atol=0)
    scope = rlsd_weight_scope(adv, mask, negative_only, thought)
    delta = teacher - student
    assert (drift[~scope] == 0).all()
    assert (drift.abs() <= lam * adv.abs()[:, None] * eps + 1e-12).all()
    # the drift has the sign of δ whatever the sign of A
    # (away from float underflow: tiny λ, ε, |A| or |δ| can round the term to 0)
    active = scope & (adv.abs() > 1e-6)[:, None] & (delta.abs() > 1e-9) & (lam > 1e-6) & (eps > 1e-6)
    assert torch.equal(torch.sign(drift[active]), torch.sign(delta[active]))
    # shuffled: the same permutation as the advantages when the generator is in the same state
    g1, g2 = torch.Generator().manual_seed(seed % 1000), torch.Generator().manual_seed(seed % 1000)
    grpo_s, drift_s = rlsd_drift_decomposition(adv, teacher, student, mask, lam, eps, shuffle_generator=g1, **kwargs)
    total_s = rlsd_token_advantages(adv, teacher, student, mask, lam, eps, shuffle_generator=g2, **kwargs)
    torch.testing.assert_close(grpo_s + drift_s, total_s, rtol=1e-12, atol=1e-12)


def test_rlsd_phi_properties_and_a_clipless_phi_fails():
    delta = torch.linspace(-3, 3, 600, dtype=torch.float64)  # even count: no δ within rounding of 0
    assert rlsd_phi(torch.zeros(1), True).item() == 0.0 and rlsd_phi(torch.zeros(1), False).item() == 0.0
    for eps in (0.1, 0.2, 0.5):
        for positive in (True, False):
            phi = rlsd_phi(delta, positive, eps)
            assert (phi.diff() >= 0).all() and (phi.abs() <= eps + 1e-15).all()
            assert torch.equal(torch.sign(phi), torch.sign(delta))
    # the identity needs the clip: φ_+ defined as e^δ - 1 (no clip) breaks it where |δ| is large
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    teacher = torch.tensor([[2.0, 0.05], [2.0, 0.05]], dtype=torch.float64)
    student = torch.zeros_like(teacher)
    total = rlsd_token_advantages(adv, teacher, student, torch.ones(2, 2), 0.5, 0.2)
    wrong = adv[:, None] + 0.5 * adv.abs()[:, None] * torch.where(adv[:, None] > 0, teacher.exp() - 1,
                                                                   1 - (-teacher).exp())
    assert (total - wrong).abs()[:, 0].min() > 0.1  # clipped tokens: the clipless φ is off
    torch.testing.assert_close(total[:, 1], wrong[:, 1], rtol=0, atol=1e-15)  # inside the clip they agree


# ----------------------------------------------------------------------------------------------------------------------
# policy loss


def test_policy_loss_ratio_one_is_minus_mean_advantage():
    adv = torch.tensor([[1.0, -2.0, 3.0], [0.5, 7.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    logp = torch.log(torch.rand(2, 3)).requires_grad_(True)
    loss, stats = policy_loss(logp, logp.detach(), adv, mask)
    assert loss.item() == pytest.approx(-(1 - 2 + 0.5 - 1) / 4)
    assert stats["clip_frac"] == 0 and stats["dual_clip_frac"] == 0
    assert stats["ratio_mean"] == pytest.approx(1.0) and stats["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    loss.backward()  # d(-ρA)/dlogp = -A/N at ρ = 1
    torch.testing.assert_close(logp.grad, -adv * mask / 4)


def test_policy_loss_clipping_hand_cases():
    # (ratio, A) -> per-token loss, clipped?, dual-clipped?   (ε_low 0.2, ε_high 0.28, C = 3)
    cases = [
        (1.5, 1.0, -1.28, True, False),  # A>0, ratio above 1+ε_high: clipped
        (0.5, 1.0, -0.5, False, False),  # A>0, ratio low: unclipped branch is the min
        (1.1, 1.0, -1.1, False, False),  # inside the trust region
        (0.5, -1.0, 0.8, True, False),  # A<0, ratio below 1-ε_low: clipped
        (2.0, -1.0, 2.0, False, False),  # A<0, big ratio but below the dual bound 3
        (5.0, -1.0, 3.0, False, True),  # A<0, dual clip bounds the loss at C·|A|
        (5.0, -2.0, 6.0, False, True),  # bound scales with |A|
        (9.0, 0.0, 0.0, False, False),  # A = 0: nothing
    ]
    ratio = torch.tensor([[c[0] for c in cases]], dtype=torch.float64)
    adv = torch.tensor([[c[1] for c in cases]], dtype=torch.float64)
    logp = torch.log(ratio).requires_grad_(True)
    loss, stats = policy_loss(logp, torch.zeros_like(logp), adv, torch.ones_like(adv))
    assert loss.item() == pytest.approx(sum(c[2] for c in cases) / len(cases))
    assert stats["clip_frac"] == pytest.approx(sum(c[3] for c in cases) / len(cases))
    assert stats["dual_clip_frac"] == pytest.approx(sum(c[4] for c in cases) / len(cases))
    assert stats["ratio_mean"] == pytest.approx(ratio.mean().item())
    loss.backward()
    # clipped and dual-clipped tokens carry no gradient; the others d(-ρA)/dlogp = -ρA/N
    expected = [0.0 if (c[3] or c[4]) else -c[0] * c[1] / len(cases) for c in cases]
    np.testing.assert_allclose(logp.grad[0].numpy(), expected, atol=1e-12)


@FAST
@given(seeds)
def test_policy_loss_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 3
    old = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 3
    adv = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, 5, generator=g) > 0.3).double()
    mask[0, 0] = 1
    loss, stats = policy_loss(logp, old, adv, mask, 0.2, 0.28, 3.0)
    losses, kls = [], []
    for i in range(3):
        for t in range(5):
            if not mask[i, t]:
                continue
            r, a = math.exp(logp[i, t] - old[i, t]), adv[i, t].item()
            l = -min(r * a, min(max(r, 0.8), 1.28) * a)
            if a < 0:
                l = min(l, -3.0 * a)
            losses.append(l)
            kls.append(r - 1 - math.log(r))
    assert loss.item() == pytest.approx(sum(losses) / len(losses), rel=1e-9)
    assert stats["approx_kl"] == pytest.approx(sum(kls) / len(kls), rel=1e-9)
    assert stats["approx_kl"] >= 0


def test_policy_loss_empty_mask_and_bad_dual_clip():
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(2, 3))
    with pytest.raises(ValueError):
        policy_loss(logp, logp, torch.ones(2, 3), torch.ones(2, 3), dual_clip=1.0)


# ----------------------------------------------------------------------------------------------------------------------
# generalized JSD (OPSD)


@FAST
@given(seeds, st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
def test_generalized_jsd_matches_numpy(seed, beta):
    s, t, mask = random_case(seed)
    loss, per_token = generalized_jsd(s, t, mask, beta)
    ps, pt = np.exp(np_log_softmax(s.numpy())), np.exp(np_log_softmax(t.numpy()))
    ref = np.zeros(mask.shape)
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if mask[i, j]:
                ref[i, j] = np_jsd(ps[i, j], pt[i, j], beta)
    np.testing.assert_allclose(per_token.numpy(), ref, atol=1e-10)
    assert loss.item() == pytest.approx(ref.sum() / mask.sum().item(), abs=1e-10)


@FAST
@given(seeds)
def test_jsd_ends_are_the_two_kl_directions(seed):
    s, t, mask = random_case(seed, B=1, T=1)
    ps, pt = np.exp(np_log_softmax(s[0, 0].numpy())), np.exp(np_log_softmax(t[0, 0].numpy()))
    forward = generalized_jsd(s, t, mask, 0.0)[0].item()
    reverse = generalized_jsd(s, t, mask, 1.0)[0].item()
    assert forward == pytest.approx(np_kl(pt, ps), rel=1e-9)  # KL(T ‖ S)
    assert reverse == pytest.approx(np_kl(ps, pt), rel=1e-9)  # KL(S ‖ T)
    # and they are the normalised limits of the mixture formula (JSD_β/β -> KL(T‖S), JSD_β/(1-β) -> KL(S‖T));
    # the expansion needs β·P_T/P_S small, hence milder logits here
    s, t = s / 3, t / 3
    b = 1e-7
    assert generalized_jsd(s, t, mask, b)[0].item() / b == pytest.approx(
        generalized_jsd(s, t, mask, 0.0)[0].item(), rel=1e-3
    )
    assert generalized_jsd(s, t, mask, 1 - b)[0].item() / b == pytest.approx(
        generalized_jsd(s, t, mask, 1.0)[0].item(), rel=1e-3
    )


@FAST
@given(seeds, st.floats(0.01, 0.99))
def test_jsd_symmetry_zero_and_bounds(seed, beta):
    s, t, mask = random_case(seed, scale=20.0)  # peaked distributions push towards the bound
    _, st_ = generalized_jsd(s, t, mask, 0.5)
    _, ts = generalized_jsd(t, s, mask, 0.5)
    torch.testing.assert_close(st_, ts, atol=1e-12, rtol=0)
    assert (st_ <= math.log(2) + 1e-12).all() and (st_ >= -1e-12).all()
    _, per_b = generalized_jsd(s, t, mask, beta)
    h = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)  # binary entropy bounds JSD_β
    assert (per_b <= h + 1e-12).all()
    _, same = generalized_jsd(s, s.clone(), mask, beta)
    assert same.abs().max().item() < 1e-12


def test_jsd_reaches_log2_for_disjoint_supports():
    s = torch.tensor([[[50.0, -50.0]]])
    t = torch.tensor([[[-50.0, 50.0]]])
    loss, _ = generalized_jsd(s, t, torch.ones(1, 1), 0.5)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_gradient_to_student_only_and_mask(beta):
    s, t, mask = random_case(3)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss, per_token = generalized_jsd(s, t, mask, beta)
    assert (per_token[mask == 0] == 0).all()
    loss.backward()
    assert t.grad is None
    assert s.grad.abs().sum() > 0
    assert (s.grad[mask == 0] == 0).all()  # masked positions get no gradient


def test_jsd_suppressed_tokens_stay_finite():
    s = torch.tensor([[[1.0, 2.0, float("-inf")]]], requires_grad=True)
    t = torch.tensor([[[2.0, float("-inf"), float("-inf")]]])
    for beta in (0.0, 0.5, 1.0):
        loss, _ = generalized_jsd(s, t, torch.ones(1, 1), beta)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
        s.grad = None
    with pytest.raises(ValueError):
        generalized_jsd(s, t, torch.ones(1, 1), 1.5)


# ----------------------------------------------------------------------------------------------------------------------
# top-K + tail divergence (SDPO)


@FAST
@given(seeds, st.integers(1, 6), st.sampled_from([0.0, 0.3, 0.5, 1.0]))
def test_topk_tail_matches_numpy(seed, k, alpha):
    s, t, mask = random_case(seed, V=9)
    loss, per_token = topk_tail_divergence(s, t, mask, top_k=k, alpha=alpha)
    ps, pt = np.exp(np_log_softmax(s.numpy())), np.exp(np_log_softmax(t.numpy()))
    ref = np.zeros(mask.shape)
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if mask[i, j]:
                ids = np.argsort(-pt[i, j])[:k]
                bs = np.append(ps[i, j][ids], 1 - ps[i, j][ids].sum())
                bt = np.append(pt[i, j][ids], 1 - pt[i, j][ids].sum())
                ref[i, j] = np_jsd(bs, bt, alpha)
    np.testing.assert_allclose(per_token.numpy(), ref, atol=1e-9)
    assert loss.item() == pytest.approx(ref.sum() / mask.sum().item(), abs=1e-9)


@FAST
@given(seeds, st.sampled_from([0.0, 0.5, 1.0]))
def test_topk_without_tail_equals_full_jsd(seed, alpha):
    s, t, mask = random_case(seed, V=6)
    for k in (6, 100):
        loss_k, per_k = topk_tail_divergence(s, t, mask, top_k=k, alpha=alpha)
        loss_f, per_f = generalized_jsd(s, t, mask, alpha)
        torch.testing.assert_close(per_k, per_f, atol=1e-12, rtol=0)
    # with a tail the coarser buckets can only lose information (data processing inequality)
    _, per_2 = topk_tail_divergence(s, t, mask, top_k=2, alpha=alpha)
    assert (per_2 <= per_f + 1e-12).all()


def test_topk_tail_gradient_and_precision():
    s, t, mask = random_case(5, V=12)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss, _ = topk_tail_divergence(s, t, mask, top_k=3)
    loss.backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    assert torch.isfinite(s.grad).all()
    # a teacher whose top-1 holds all but ~e^-60 of the mass: the tail log-prob must stay finite and ≈ -60
    t2 = torch.tensor([[[60.0, 0.0, float("-inf")]]], dtype=torch.float64)
    s2 = torch.tensor([[[0.0, 0.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    loss2, _ = topk_tail_divergence(s2, t2, torch.ones(1, 1), top_k=1, alpha=1.0)
    # reverse KL over buckets [top, tail]: its tail term (2/3)·log((2/3)/P_T(tail)) ≈ 40 is inf if P_T(tail) were
    # computed as 1 - Σ top-K (= 0 in float64) instead of from the remaining logits
    z = 1 + math.exp(-60)
    ref = (1 / 3) * math.log((1 / 3) * z) + (2 / 3) * (math.log(2 / 3) + 60 + math.log(z))
    assert loss2.item() == pytest.approx(ref, rel=1e-9)
    loss2.backward()
    assert torch.isfinite(s2.grad).all()


# ----------------------------------------------------------------------------------------------------------------------
# Theorem 1


def random_dists(rng, R, V, sparse=False):
    prior = rng.dirichlet(np.ones(R))
    teacher = rng.dirichlet(np.ones(V) * 0.5, size=R)
    if sparse:  # exact zeros exercise 0·log 0 = 0
        teacher[:, 0] = 0.0
        teacher /= teacher.sum(1, keepdims=True)
    return prior, teacher, rng.dirichlet(np.ones(V)), rng.dirichlet(np.ones(V))


@settings(max_examples=60, deadline=None)
@given(seeds, st.integers(1, 6), st.integers(2, 10), st.booleans())
def test_kl_decomposition_identity(seed, R, V, sparse):
    rng = np.random.default_rng(seed)
    prior, teacher, student, student2 = random_dists(rng, R, V, sparse)
    opsd, ideal, mi = kl_decomposition(prior, teacher, student)
    assert all(isinstance(x, float) for x in (opsd, ideal, mi))
    assert opsd == pytest.approx(ideal + mi, abs=1e-9)
    assert mi >= -1e-12
    # independent re-implementation with loops
    marginal = prior @ teacher
    assert opsd == pytest.approx(sum(prior[r] * np_kl(teacher[r], student) for r in range(R)), abs=1e-9)
    assert ideal == pytest.approx(np_kl(marginal, student), abs=1e-9)
    # MI does not depend on the student
    opsd2, ideal2, mi2 = kl_decomposition(prior, teacher, student2)
    assert mi2 == pytest.approx(mi, abs=1e-12)
    # the OPSD objective is minimised at the marginal, where only the irreducible MI floor remains
    opsd_star, ideal_star, mi_star = kl_decomposition(prior, teacher, marginal / marginal.sum())
    assert ideal_star == pytest.approx(0.0, abs=1e-9)
    assert opsd_star == pytest.approx(mi, abs=1e-9)
    assert opsd_star <= min(opsd, opsd2) + 1e-12


def test_kl_decomposition_hand_cases():
    # two equally likely references that each pin a different token: MI = log 2, the student's best is 50/50
    opsd, ideal, mi = kl_decomposition([0.5, 0.5], [[1.0, 0.0], [0.0, 1.0]], [0.5, 0.5])
    assert (opsd, ideal) == (pytest.approx(math.log(2)), pytest.approx(0.0))
    assert mi == pytest.approx(math.log(2))
    # a single reference carries no information
    assert kl_decomposition([1.0], [[0.2, 0.8]], [0.5, 0.5])[2] == 0.0
    # a zero-probability reference is skipped even if its KL would be infinite
    opsd, ideal, mi = kl_decomposition([1.0, 0.0], [[0.0, 1.0], [1.0, 0.0]], [0.0, 1.0])
    assert (opsd, ideal, mi) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "args, name",
    [
        (([0.5, 0.6], [[0.5, 0.5], [0.5, 0.5]], [0.5, 0.5]), "prior_R"),
        (([0.5, 0.5], [[1.5, -0.5], [0.5, 0.5]], [0.5, 0.5]), "teacher_RV"),
        (([0.5, 0.5], [[0.5, 0.5], [0.5, 0.5]], [0.4, 0.5]), "student_V"),
    ],
)
def test_kl_decomposition_validates(args, name):
    with pytest.raises(ValueError, match=name):
        kl_decomposition(*args)
