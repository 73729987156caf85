"""The learning signals of GRPO, RLSD, OPSD, SDPO and GRPO+OPSD, as pure torch functions.

No model, tokenizer or trainer lives here: every function takes tensors and returns tensors (plus a dict of python
floats to log where useful), so each formula can be read, tested and reused on its own.

Shape suffixes: B = responses in the batch, T = response positions, V = vocabulary, N = rewards (groups laid out one
after another), R = values of the privileged information r. `mask_BT` is 1 on response tokens that count, 0 on padding.

All five methods follow one template. For every prompt the student samples G responses, a verifier scores them, and the
update is a PPO-style clipped surrogate on a per-token advantage Â_t (`policy_loss`), optionally plus a per-token
distillation loss to a teacher (the same network, prompted with privileged information r):

    method      token advantage Â_t                              extra loss
    GRPO        A                  (`group_advantages`)           -
    RLSD        A·((1-λ) + λ·clip(w_t, 1-ε_w, 1+ε_w))            -
                (`rlsd_token_advantages`, λ from `rlsd_lambda`)
    OPSD        - (no reward)                                     JSD_β(P_T ‖ P_S), full vocab (`generalized_jsd`)
    SDPO        - (or A, if combined)                             JSD_α over teacher top-K + tail (`topk_tail_divergence`)
    GRPO+OPSD   A                                                 μ · `generalized_jsd`

with A = (R - mean_group R) / (std_group R + 1e-6) and w_t = exp(sign(A)·stopgrad(log P_T(y_t) - log P_S(y_t))).
RLSD's advantage splits exactly into GRPO's plus a distillation term (`rlsd_drift_decomposition`):
Â_t = A + λ·|A|·φ_sign(A)(δ_t), φ_+(δ) = clip(e^δ, 1±ε_w) - 1, φ_-(δ) = 1 - clip(e^-δ, 1±ε_w), δ_t = Δ_t;
two switches of the authors' code restrict where the weights apply (`rlsd_weight_scope`: `negative_only`,
`thought_mask_BT` for thought_only), and `shuffle_within_rows` gives the shuffled-weights control.
`kl_decomposition` evaluates the paper's Theorem 1 (E_r KL(P_T(.|r) ‖ P_S) = KL(P̄_T ‖ P_S) + I(Y; R)) on explicit
discrete distributions.

Where this code departs from the paper (or pins down what the paper leaves open):
- `group_advantages` with group_size 1 returns zeros: the unbiased std of one sample is undefined (torch gives NaN).
- `rlsd_lambda` returns 0.0 when decay_steps <= 0 (i.e. "no RLSD phase": plain GRPO from the start).
- `rlsd_token_weights` computes the clipped weight as exp(clamp(sign(A)·Δ, log(1-ε), log(1+ε))), which equals
  clip(exp(sign(A)·Δ), 1-ε, 1+ε) exactly but cannot overflow. The unclipped weight it also returns (for logging and
  heatmaps only) is computed from an exponent clamped to ±50.
- `rlsd_token_advantages` returns a constant (fully detached) tensor, and requires 0 <= λ <= 1.
- `negative_only` (the authors' `rlsd_negative_only`, off by default): the weights apply only to responses with A < 0;
  the others keep weight 1 (Â_t = A). ms-swift's rule is "A < 0 only", the authors' "rows whose Σ_t A >= 0 keep
  weight 1"; with one scalar A per response Σ_t A = (number of tokens)·A, so the two rules coincide.
- `thought_only` (the authors' `rlsd_thought_only`, off by default) is a boolean `thought_mask_BT` the caller passes
  (e.g. the tokens before the answer tag): the weights apply inside it only, weight 1 elsewhere. None = off.
- Out of the scope the two switches leave, a token is treated like a masked one or one with A = 0: weight 1 (it is
  not counted in the clip fractions, and `delta_mean` still averages Δ over all unmasked tokens). With both off the
  outputs are bit-identical to the code without them (tests/test_algorithm.py).
- The shuffled-weights control (`shuffle_generator`) permutes each response's clipped weights among that response's
  in-scope tokens (the same magnitudes, no targeting), one `torch.randperm` per response from the given generator.
- `policy_loss` clamps the log-ratio to ±20 before exp (as verl does) so a stale or corrupted old_logp cannot make
  inf/NaN; the clip makes this invisible for any ratio within [e^-20, e^20]. `approx_kl` is the k3 estimator.
- `generalized_jsd`: β = 0 and β = 1 are defined as the two KL directions, KL(P_T ‖ P_S) and KL(P_S ‖ P_T) (the TRL GKD
  convention), not as the literal formula (which is identically 0 at both ends). They are the limits of JSD_β/β and
  JSD_β/(1-β), so the family is continuous up to that normalisation.
- `topk_tail_divergence` (SDPO) selects the top-K ids by the TEACHER's probabilities and applies the same generalized
  JSD to the K+1 buckets (K tokens + one tail bucket holding the remaining mass) with β = α.
- `generalized_jsd`, `topk_tail_divergence` and `token_entropy` are per-position: each position's value depends on
  that position's logits alone. The trainer relies on it: it never holds B×T×V logits, but evaluates these functions
  on chunks of positions projected from hidden states (`rlsd.scoring.chunked_divergence`, recomputed in backward),
  which equals one call on the full logits (tests/test_scoring.py).
- Divergence and entropy functions compute in float32 (or float64 if given) and treat -inf logits (suppressed tokens)
  as a very negative finite number, so their probability is exactly 0 and neither values nor gradients become NaN.
  Where the target puts mass on a token the other distribution forbids, the KL is then huge but finite, not inf.
"""

import math

import torch
import torch.nn.functional as F

# -inf logits (suppressed special tokens) are replaced by this: exp() of it is exactly 0 in float32/float64, yet
# differences and logsumexp of it stay finite, so autograd never meets inf - inf.
_NEG_LOGIT = -1e9


# ----------------------------------------------------------------------------------------------------------------------
# helpers


def masked_mean(x_BT, mask_BT, dim=None):
    """sum(x·mask) / sum(mask), over everything (dim=None) or along `dim`; 0 where the mask sums to 0.

    Values at masked positions are ignored even if they are inf/NaN (e.g. log-probs of padding).
    """
    mask = mask_BT.to(x_BT.dtype)
    x = torch.where(mask != 0, x_BT, torch.zeros_like(x_BT))
    if dim is None:
        num, den = (x * mask).sum(), mask.sum()
    else:
        num, den = (x * mask).sum(dim=dim), mask.sum(dim=dim)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def _as_float_logits(logits):
    """Upcast to >= float32 (bf16 log-probs over a 150k vocabulary are too coarse) and make -inf finite."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits.masked_fill(logits == float("-inf"), _NEG_LOGIT)


def token_entropy(logits_BTV):
    """H_t = -Σ_v p_v log p_v, from log_softmax (stable); -inf logits contribute 0. Returns entropy_BT (float32+)."""
    logp_BTV = F.log_softmax(_as_float_logits(logits_BTV), dim=-1)
    return -(logp_BTV.exp() * logp_BTV).sum(dim=-1)


def gather_token_logp(logits_BTV, tokens_BT):
    """log p(tokens_t) = logits[tokens_t] - logsumexp(logits), i.e. log_softmax then gather.

    Never materialises a B×T×V log_softmax: only the gathered logit and one logsumexp per position. Half-precision
    logits are upcast to float32 one batch row at a time, so the float32 copy is T×V, not B×T×V.
    """
    tokens_BT1 = tokens_BT.long().unsqueeze(-1)
    if logits_BTV.dtype in (torch.float16, torch.bfloat16):
        rows = []
        for logits_TV, tokens_T1 in zip(logits_BTV, tokens_BT1):
            logits_TV = logits_TV.float()
            rows.append(logits_TV.gather(-1, tokens_T1).squeeze(-1) - torch.logsumexp(logits_TV, dim=-1))
        return torch.stack(rows)
    return logits_BTV.gather(-1, tokens_BT1).squeeze(-1) - torch.logsumexp(logits_BTV, dim=-1)


# ----------------------------------------------------------------------------------------------------------------------
# GRPO


def group_advantages(rewards_N, group_size, eps=1e-6):
    """A_i = (R_i - mean(R_group)) / (std(R_group) + eps), std unbiased (torch.std default, ddof=1).

    rewards_N is laid out group by group: [g0 r0..r(G-1), g1 r0.., ...]. A group whose rewards are all equal gets A = 0
    (no policy-gradient signal). Departure: group_size == 1 returns zeros (the unbiased std of one value is undefined).
    """
    rewards_N = torch.as_tensor(rewards_N)
    if not rewards_N.is_floating_point():
        rewards_N = rewards_N.float()
    if rewards_N.dim() != 1:
        raise ValueError(f"rewards_N must be 1-D, got shape {tuple(rewards_N.shape)}")
    n = rewards_N.numel()
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"{n} rewards cannot be split into groups of size {group_size}")
    if group_size == 1:
        return torch.zeros_like(rewards_N)
    rewards_MG = rewards_N.view(-1, group_size)
    mean_M1 = rewards_MG.mean(dim=1, keepdim=True)
    std_M1 = rewards_MG.std(dim=1, keepdim=True)  # unbiased
    return ((rewards_MG - mean_M1) / (std_M1 + eps)).view(-1)


# ----------------------------------------------------------------------------------------------------------------------
# RLSD


def rlsd_lambda(step, lam0=0.5, decay_steps=50):
    """λ_k = λ0 · max(0, 1 - k/K), k = 0 at the first optimizer step: RLSD blends into plain GRPO after K steps.

    decay_steps = 0 means a CONSTANT λ = λ0 (as in the authors' code; no RLSD phase is λ0 = 0). The authors count
    k from 1 (λ at the first step is λ0·(1 - 1/K)); we count from 0, so the first step gets the full λ0. A negative
    step or decay_steps raises ValueError.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if decay_steps < 0:
        raise ValueError(f"decay_steps must be >= 0 (0: constant λ), got {decay_steps}")
    if decay_steps == 0:
        return float(lam0)
    return float(lam0) * max(0.0, 1.0 - step / decay_steps)


def rlsd_weight_scope(adv_B, mask_BT, negative_only=False, thought_mask_BT=None):
    """Where RLSD's evidence weights apply: scope_BT (bool) = unmasked tokens, restricted to responses with A < 0 if
    `negative_only`, and to tokens with thought_mask_BT != 0 if a thought mask is given (thought_only). Elsewhere the
    weight is 1, so Â_t = A. With both switches off this is just mask_BT != 0."""
    scope_BT = mask_BT != 0
    if negative_only:
        scope_BT = scope_BT & (adv_B.detach() < 0).unsqueeze(1)
    if thought_mask_BT is not None:
        if thought_mask_BT.shape != mask_BT.shape:
            raise ValueError(f"thought_mask_BT shape {tuple(thought_mask_BT.shape)} does not match mask_BT "
                             f"{tuple(mask_BT.shape)}")
        scope_BT = scope_BT & (thought_mask_BT != 0)
    return scope_BT


def shuffle_within_rows(x_BT, where_BT, generator):
    """Each row's values at its `where_BT` positions, permuted among those positions (torch.randperm per row from
    `generator`); every other entry unchanged. Each row keeps its multiset of values: same magnitudes, new places."""
    out_BT = x_BT.clone()
    for b in range(x_BT.shape[0]):
        idx_K = where_BT[b].nonzero().squeeze(1)
        perm_K = torch.randperm(idx_K.numel(), generator=generator).to(idx_K.device)
        out_BT[b, idx_K] = x_BT[b, idx_K[perm_K]]
    return out_BT


def rlsd_token_weights(adv_B, teacher_logp_BT, student_logp_BT, mask_BT, clip_eps=0.2, negative_only=False,
                       thought_mask_BT=None):
    """RLSD evidence weights for the sampled tokens.

    Δ_t = stopgrad(log P_T(y_t) - log P_S(y_t)),  w_t = exp(sign(A)·Δ_t) = (P_T/P_S)^sign(A) > 0,
    clipped_w_t = clip(w_t, 1-ε, 1+ε), computed as exp(clamp(sign(A)·Δ_t, log(1-ε), log(1+ε))) — equal, never inf.

    Returns (w_BT, clipped_w_BT, stats). Both weights are 1 (neutral) on masked positions, where A = 0 and outside
    the scope of the switches (`rlsd_weight_scope`: negative_only, thought_mask_BT). w_BT is for logging/heatmaps;
    its exponent is clamped to ±50 so it stays finite. stats (python floats):
      delta_mean             masked mean of Δ over all unmasked tokens
      weight_mean            mean of w over in-scope tokens of responses with A != 0 ("active" tokens)
      weight_clip_low_frac   fraction of active tokens with w < 1-ε
      weight_clip_high_frac  fraction of active tokens with w > 1+ε
    """
    if not 0.0 <= clip_eps < 1.0:
        raise ValueError(f"clip_eps must be in [0, 1), got {clip_eps}")
    if teacher_logp_BT.shape != student_logp_BT.shape or teacher_logp_BT.shape != mask_BT.shape:
        raise ValueError(
            f"teacher_logp {tuple(teacher_logp_BT.shape)}, student_logp {tuple(student_logp_BT.shape)} and "
            f"mask {tuple(mask_BT.shape)} must have the same shape"
        )
    if adv_B.shape != teacher_logp_BT.shape[:1]:
        raise ValueError(f"adv_B shape {tuple(adv_B.shape)} does not match batch size {teacher_logp_BT.shape[0]}")

    valid_BT = mask_BT != 0
    scope_BT = rlsd_weight_scope(adv_B, mask_BT, negative_only, thought_mask_BT)  # == valid_BT with switches off
    delta_BT = (teacher_logp_BT - student_logp_BT).detach()
    delta_BT = torch.where(valid_BT, delta_BT, torch.zeros_like(delta_BT))  # padding may hold -inf
    sign_B1 = torch.sign(adv_B.detach()).to(delta_BT.dtype).unsqueeze(1)
    expo_BT = sign_B1 * torch.where(scope_BT, delta_BT, torch.zeros_like(delta_BT))  # 0 -> weight 1
    w_BT = expo_BT.clamp(-50.0, 50.0).exp()
    clipped_w_BT = expo_BT.clamp(math.log(1.0 - clip_eps), math.log(1.0 + clip_eps)).exp()

    active_BT = scope_BT & (sign_B1 != 0)
    low_BT = active_BT & (expo_BT < math.log(1.0 - clip_eps))
    high_BT = active_BT & (expo_BT > math.log(1.0 + clip_eps))
    n_active = max(int(active_BT.sum()), 1)
    stats = {
        "delta_mean": float(masked_mean(delta_BT, valid_BT)),
        "weight_mean": float(masked_mean(w_BT, active_BT)),
        "weight_clip_low_frac": int(low_BT.sum()) / n_active,
        "weight_clip_high_frac": int(high_BT.sum()) / n_active,
    }
    return w_BT, clipped_w_BT, stats


def rlsd_token_advantages(adv_B, teacher_logp_BT, student_logp_BT, mask_BT, lam, clip_eps=0.2, negative_only=False,
                          thought_mask_BT=None, shuffle_generator=None):
    """Â_t = A · ((1-λ) + λ·clip(w_t, 1-ε, 1+ε)), 0 on masked positions (see `rlsd_token_weights` for w_t).

    Since the clipped weight is positive and 0 <= λ <= 1, sign(Â_t) = sign(A) and
    |A|·(1-λε) <= |Â_t| <= |A|·(1+λε): the reward decides the direction, the teacher only redistributes magnitude.
    λ = 0 is GRPO exactly; A = 0 gives 0. The result is detached (an advantage is a constant of the surrogate).
    negative_only / thought_mask_BT: the weights apply only in `rlsd_weight_scope` (weight 1 elsewhere).
    shuffle_generator (a torch.Generator; None = off): the shuffled-weights control, each response's clipped weights
    permuted among its in-scope tokens (`shuffle_within_rows`).
    Departure: λ outside [0, 1] raises ValueError (the paper only uses λ in [0, 0.5]).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    _, clipped_w_BT, _ = rlsd_token_weights(adv_B, teacher_logp_BT, student_logp_BT, mask_BT, clip_eps, negative_only,
                                            thought_mask_BT)
    if shuffle_generator is not None:
        scope_BT = rlsd_weight_scope(adv_B, mask_BT, negative_only, thought_mask_BT)
        clipped_w_BT = shuffle_within_rows(clipped_w_BT, scope_BT, shuffle_generator)
    adv_B1 = adv_B.detach().to(clipped_w_BT.dtype).unsqueeze(1)
    adv_BT = adv_B1 * ((1.0 - lam) + lam * clipped_w_BT)
    return torch.where(mask_BT != 0, adv_BT, torch.zeros_like(adv_BT))


def rlsd_phi(delta_X, positive, clip_eps=0.2):
    """φ_+(δ) = clip(e^δ, 1-ε, 1+ε) - 1 (positive=True, for A > 0), φ_-(δ) = 1 - clip(e^-δ, 1-ε, 1+ε) (for A < 0).

    Both are non-decreasing in δ, have the sign of δ (1 lies inside the clip range) and |φ| <= ε. Computed through
    a clamped exponent, like `rlsd_token_weights`, so they never overflow.
    """
    lo, hi = math.log(1.0 - clip_eps), math.log(1.0 + clip_eps)
    if positive:
        return delta_X.clamp(lo, hi).exp() - 1.0
    return 1.0 - (-delta_X).clamp(lo, hi).exp()


def rlsd_drift_decomposition(adv_B, teacher_logp_BT, student_logp_BT, mask_BT, lam, clip_eps=0.2,
                             negative_only=False, thought_mask_BT=None, shuffle_generator=None):
    """RLSD's token advantage split exactly into GRPO's and a distillation ("drift") term: returns (grpo_BT, drift_BT)
    with grpo_BT + drift_BT = `rlsd_token_advantages(...)` (same arguments; equal up to float rounding), where

        grpo_BT  = A                                   (on unmasked tokens, 0 elsewhere)
        drift_BT = λ·|A|·φ_sign(A)(δ_t)                 (in `rlsd_weight_scope`, 0 elsewhere),  δ_t = stopgrad(Δ_t).

    Proof. Let c_t = clip(e^{sign(A)δ_t}, 1-ε, 1+ε). Then Â_t = A((1-λ) + λc_t) = A + λA(c_t - 1).
    If A > 0: λA(c_t - 1) = λ|A|(clip(e^δ_t) - 1) = λ|A|φ_+(δ_t). If A < 0: λA(c_t - 1) = λ|A|(1 - clip(e^-δ_t)) =
    λ|A|φ_-(δ_t). If A = 0 both sides are 0. Outside the scope c_t = 1 and the term is 0.  ∎
    Since φ has the sign of δ_t (`rlsd_phi`), the drift term has the sign of δ_t whatever the reward, and
    |drift| <= λ|A|ε. With shuffle_generator, φ is permuted within each response as `rlsd_token_advantages` permutes
    the weights (a generator in the same state gives the same permutation). Both outputs are detached.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    valid_BT = mask_BT != 0
    scope_BT = rlsd_weight_scope(adv_B, mask_BT, negative_only, thought_mask_BT)
    adv_B1 = adv_B.detach().to(teacher_logp_BT.dtype).unsqueeze(1)
    delta_BT = torch.where(scope_BT, (teacher_logp_BT - student_logp_BT).detach(), torch.zeros_like(teacher_logp_BT))
    phi_BT = torch.where(adv_B1 > 0, rlsd_phi(delta_BT, True, clip_eps), rlsd_phi(delta_BT, False, clip_eps))
    if shuffle_generator is not None:
        phi_BT = shuffle_within_rows(phi_BT, scope_BT, shuffle_generator)
    grpo_BT = torch.where(valid_BT, adv_B1.expand_as(delta_BT), torch.zeros_like(delta_BT))
    drift_BT = torch.where(scope_BT, lam * adv_B1.abs() * phi_BT, torch.zeros_like(delta_BT))
    return grpo_BT, drift_BT


# ----------------------------------------------------------------------------------------------------------------------
# PPO-style policy loss (all reward-driven methods)


def policy_loss(logp_BT, old_logp_BT, adv_BT, mask_BT, eps_low=0.2, eps_high=0.28, dual_clip=3.0):
    """Clipped surrogate with asymmetric clip and dual clip, token-mean over all unmasked tokens of the batch.

    ρ_t = exp(logp - old_logp);  l_t = -min(ρ_t·Â_t, clip(ρ_t, 1-ε_low, 1+ε_high)·Â_t);
    for Â_t < 0 additionally l_t = min(l_t, -C·Â_t) (dual clip: the loss of a token is bounded by C·|Â_t|);
    loss = Σ_t l_t·mask_t / Σ_t mask_t (0 if the mask is empty).

    stats (python floats, over unmasked tokens): clip_frac (the clipped branch is the active one), dual_clip_frac,
    ratio_mean, approx_kl = mean of k3 = (ρ - 1) - log ρ, an unbiased, non-negative estimate of KL(π_old ‖ π_θ).
    Departure: the log-ratio is clamped to ±20 before exp (numerical guard, as in verl).
    """
    if dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    valid_BT = mask_BT != 0
    adv_BT = adv_BT.detach()
    log_ratio_BT = (logp_BT - old_logp_BT.detach()).clamp(-20.0, 20.0)
    log_ratio_BT = torch.where(valid_BT, log_ratio_BT, torch.zeros_like(log_ratio_BT))  # padding may hold -inf
    ratio_BT = log_ratio_BT.exp()

    loss_unclipped_BT = -ratio_BT * adv_BT
    loss_clipped_BT = -ratio_BT.clamp(1.0 - eps_low, 1.0 + eps_high) * adv_BT
    loss_BT = torch.maximum(loss_unclipped_BT, loss_clipped_BT)
    dual_bound_BT = -dual_clip * adv_BT
    neg_BT = adv_BT < 0
    loss_BT = torch.where(neg_BT, torch.minimum(loss_BT, dual_bound_BT), loss_BT)

    loss = masked_mean(loss_BT, valid_BT)
    with torch.no_grad():
        stats = {
            "clip_frac": float(masked_mean((loss_clipped_BT > loss_unclipped_BT).float(), valid_BT)),
            "dual_clip_frac": float(masked_mean((neg_BT & (loss_unclipped_BT > dual_bound_BT)).float(), valid_BT)),
            "ratio_mean": float(masked_mean(ratio_BT, valid_BT)),
            "approx_kl": float(masked_mean((ratio_BT - 1.0) - log_ratio_BT, valid_BT)),
        }
    return loss, stats


# ----------------------------------------------------------------------------------------------------------------------
# Distillation divergences (OPSD, SDPO)


def _kl_from_logp(logp_p, logp_q):
    """Σ_last p·(log p - log q) on log-probabilities (finite inputs; p = 0 entries contribute exactly 0)."""
    return (logp_p.exp() * (logp_p - logp_q)).sum(dim=-1)


def _generalized_jsd_from_logp(student_logp_XK, teacher_logp_XK, beta):
    """JSD_β over the last axis of two log-probability tensors (the core shared by OPSD and SDPO).

    β = 0 -> KL(T ‖ S);  β = 1 -> KL(S ‖ T);  otherwise β·KL(T ‖ M) + (1-β)·KL(S ‖ M), M = β·T + (1-β)·S,
    with log M = logsumexp(log β + log T, log(1-β) + log S) so no probability is ever exponentiated and re-logged.
    """
    if beta == 0.0:
        return _kl_from_logp(teacher_logp_XK, student_logp_XK)
    if beta == 1.0:
        return _kl_from_logp(student_logp_XK, teacher_logp_XK)
    log_m_XK = torch.logsumexp(
        torch.stack([teacher_logp_XK + math.log(beta), student_logp_XK + math.log(1.0 - beta)]), dim=0
    )
    return beta * _kl_from_logp(teacher_logp_XK, log_m_XK) + (1.0 - beta) * _kl_from_logp(student_logp_XK, log_m_XK)


def _check_beta(beta, name):
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {beta}")


def generalized_jsd(student_logits_BTV, teacher_logits_BTV, mask_BT, beta=0.5):
    """OPSD's full-vocabulary generalized Jensen-Shannon divergence, per response position.

    JSD_β(T ‖ S) = β·KL(P_T ‖ M) + (1-β)·KL(P_S ‖ M),  M = β·P_T + (1-β)·P_S   (0 < β < 1),
    bounded by the binary entropy h(β) (log 2 at β = 0.5, where it is symmetric in S and T).
    Convention at the ends (the literal formula is identically 0 there): β = 0 gives the forward KL(P_T ‖ P_S),
    β = 1 the reverse KL(P_S ‖ P_T) — the TRL GKD convention; they are the limits of JSD_β/β (β->0) and
    JSD_β/(1-β) (β->1). The teacher is detached: gradient reaches the student only.

    Returns (loss, per_token_BT): loss = masked token-mean, per_token_BT = 0 on masked positions.
    """
    _check_beta(beta, "beta")
    student_logp_BTV = F.log_softmax(_as_float_logits(student_logits_BTV), dim=-1)
    teacher_logp_BTV = F.log_softmax(_as_float_logits(teacher_logits_BTV.detach()), dim=-1)
    per_token_BT = _generalized_jsd_from_logp(student_logp_BTV, teacher_logp_BTV, float(beta))
    per_token_BT = torch.where(mask_BT != 0, per_token_BT, torch.zeros_like(per_token_BT))
    return masked_mean(per_token_BT, mask_BT), per_token_BT


def _topk_tail_logp(logits_BTV, ids_BTK):
    """log-probs of the K given ids plus a tail bucket: log(1 - Σ_topK p) = logsumexp(other logits) - logsumexp(all).

    The tail is computed from the remaining logits directly, not as log1p(-Σ p), so it stays exact when the top-K
    hold almost all the mass.
    """
    lse_BT1 = torch.logsumexp(logits_BTV, dim=-1, keepdim=True)
    top_logp_BTK = logits_BTV.gather(-1, ids_BTK) - lse_BT1
    rest_BTV = logits_BTV.scatter(-1, ids_BTK, _NEG_LOGIT)  # a finite fill keeps the logsumexp gradient NaN-free
    tail_logp_BT1 = torch.logsumexp(rest_BTV, dim=-1, keepdim=True) - lse_BT1
    return torch.cat([top_logp_BTK, tail_logp_BT1], dim=-1)


def topk_tail_divergence(student_logits_BTV, teacher_logits_BTV, mask_BT, top_k=100, alpha=0.5):
    """SDPO's distillation divergence: generalized JSD (β = α) over K+1 buckets.

    The buckets are the teacher's top-K token ids plus one tail bucket holding each distribution's remaining mass,
    1 - Σ_{v in topK} p(v); both the student's and the teacher's distributions are collapsed onto the same buckets.
    If top_k >= V there is no tail and the result equals `generalized_jsd(..., beta=alpha)`. Teacher detached.

    Returns (loss, per_token_BT) as `generalized_jsd`.
    """
    _check_beta(alpha, "alpha")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    student_BTV = _as_float_logits(student_logits_BTV)
    teacher_BTV = _as_float_logits(teacher_logits_BTV.detach())
    vocab = teacher_BTV.shape[-1]
    if top_k >= vocab:
        student_logp = F.log_softmax(student_BTV, dim=-1)
        teacher_logp = F.log_softmax(teacher_BTV, dim=-1)
    else:
        ids_BTK = teacher_BTV.topk(top_k, dim=-1).indices
        student_logp = _topk_tail_logp(student_BTV, ids_BTK)
        teacher_logp = _topk_tail_logp(teacher_BTV, ids_BTK)
    per_token_BT = _generalized_jsd_from_logp(student_logp, teacher_logp, float(alpha))
    per_token_BT = torch.where(mask_BT != 0, per_token_BT, torch.zeros_like(per_token_BT))
    return masked_mean(per_token_BT, mask_BT), per_token_BT


# ----------------------------------------------------------------------------------------------------------------------
# Theorem 1: the KL decomposition behind OPSD's leakage


def _as_distribution(x, name, dim=-1):
    x = torch.as_tensor(x, dtype=torch.float64)
    if (x < 0).any() or not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite and non-negative")
    if ((x.sum(dim=dim) - 1.0).abs() > 1e-6).any():
        raise ValueError(f"{name} must sum to 1 along its last axis (within 1e-6)")
    return x


def _kl_discrete(p_XV, q_XV):
    """KL(p ‖ q) over the last axis in nats, with 0·log(0/q) = 0 (and inf where p > 0 = q)."""
    terms = torch.where(p_XV > 0, p_XV * (torch.log(p_XV) - torch.log(q_XV)), torch.zeros_like(p_XV))
    return terms.sum(dim=-1)


def kl_decomposition(prior_R, teacher_RV, student_V):
    """Theorem 1 on explicit discrete distributions (float64, natural logs). Returns three python floats:

    opsd = Σ_r p(r)·KL(P_T(.|r) ‖ P_S)          (the OPSD objective, in expectation over r)
    ideal = KL(P̄_T ‖ P_S),  P̄_T = Σ_r p(r)·P_T(.|r)   (the teacher's marginal: what x alone can justify)
    mutual_information = Σ_r p(r)·KL(P_T(.|r) ‖ P̄_T) = I(Y; R)   (independent of the student)

    and opsd = ideal + mutual_information. Uses 0·log 0 = 0. Inputs must be distributions (ValueError naming the
    argument otherwise): prior_R over R values of r, each row of teacher_RV and student_V over V tokens.
    """
    prior_R = _as_distribution(prior_R, "prior_R")
    teacher_RV = _as_distribution(teacher_RV, "teacher_RV")
    student_V = _as_distribution(student_V, "student_V")
    if prior_R.dim() != 1 or teacher_RV.dim() != 2 or student_V.dim() != 1:
        raise ValueError("expected prior_R of shape (R,), teacher_RV of shape (R, V), student_V of shape (V,)")
    if teacher_RV.shape != (prior_R.shape[0], student_V.shape[0]):
        raise ValueError(
            f"teacher_RV shape {tuple(teacher_RV.shape)} does not match prior_R {tuple(prior_R.shape)} "
            f"and student_V {tuple(student_V.shape)}"
        )
    marginal_V = prior_R @ teacher_RV

    def expect_over_r(kl_R):  # Σ_r p(r)·kl_r, skipping p(r) = 0 (its kl may be inf; 0·inf would be NaN)
        return torch.where(prior_R > 0, prior_R * kl_R, torch.zeros_like(kl_R)).sum()

    opsd = expect_over_r(_kl_discrete(teacher_RV, student_V.expand_as(teacher_RV)))
    ideal = _kl_discrete(marginal_V, student_V)
    mutual_information = expect_over_r(_kl_discrete(teacher_RV, marginal_V.expand_as(teacher_RV)))
    return float(opsd), float(ideal), float(mutual_information)
