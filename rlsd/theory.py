"""The theory behind RLSD, on distributions small enough to compute exactly (the engine of notebook 01).

Notation as in rlsd/algorithm.py and the paper: r is the privileged information (the reference answer), x the prompt, y the response.
The student P_S(y_t) = π(y_t | x, y<t) does not see r; the teacher P_T(y_t | r) = π(y_t | x, r, y<t) does. Everything
here is float64 and natural logs. Shape suffixes: R = values of r, V = vocabulary, A = points of a sweep, D = student
parameters, N = samples, T = positions, P = prefixes of one length, S = whole sequences.

Four results, each with functions that compute both sides of the identity:

1. Theorem 1 (KL decomposition), at one position. With P̄_T = Σ_r p(r) P_T(·|r) the teacher's marginal,
       E_r KL(P_T(·|r) ‖ P_S) = KL(P̄_T ‖ P_S) + I(Y; R),
   (the OPSD objective = the ideal objective + a mutual-information floor no student can remove).
   `hand_built_case`, `random_case`, `mixture_path`, `decomposition_sweep`; the numbers come from
   `rlsd.algorithm.kl_decomposition`.
2. The same, token by token, in a tiny autoregressive model whose sequences can all be enumerated
   (`SequenceModel`): a Bayes-consistent joint P(r, y | x) = P(r | x) Π_t P_T(y_t | r, y<t), the posterior
   P(r | x, y<t), the per-position mutual information I(Y_t; R | x, Y<t) and the chain rule
   Σ_t I(Y_t; R | x, Y<t) = I(Y; R | x).
3. Proposition 1 (gradient noise). The per-sample OPSD gradient g(r) = ∇_θ KL(P_T(·|r) ‖ P_S,θ) equals the ideal
   gradient ḡ = ∇_θ KL(P̄_T ‖ P_S,θ) plus δ(r) = -Σ_v (P_T(v|r) - P̄_T(v)) ∇_θ log P_S(v), with E_r δ = 0 and
       E_r ‖δ‖² = Σ_{v,v'} Cov_r[P_T(v|r), P_T(v'|r)] · <∇_θ log P_S(v), ∇_θ log P_S(v')>          (exact, any θ).
   The commonly stated Σ_v Var_r[P_T(v|r)] · ‖∇_θ log P_S(v)‖² is the diagonal (v = v') part of this sum. It is exact when
   the scores of different tokens are orthogonal, e.g. when the coordinates are the probabilities themselves
   (`probability_coordinates`), and in general neither exact nor a bound. For a softmax over free logits the exact
   result is simpler: δ(r) = P̄_T - P_T(·|r), so E_r ‖δ‖² = Σ_v Var_r[P_T(v|r)] with no score factor.
   `sgd_on_single_position` runs SGD with one sampled r per step (OPSD) or on the marginal (ideal).
4. Theorem 4 (evidence weights are belief updates). In a Bayes-consistent model with the Bayes student
   P_S(y_t | y<t) = Σ_r P(r | x, y<t) P_T(y_t | r, y<t),
       w_t = P_T(y_t | r, y<t) / P_S(y_t | y<t) = P(r | x, y≤t) / P(r | x, y<t),   Π_t w_t = P(r | x, y) / P(r | x).
   `evidence_weights` computes the left side from the conditionals, `belief_trajectory` the right side by summing the
   enumerated joint over completions: two independent routes to the same numbers.

5. RLSD's hidden distillation term. Exactly, with the clip (`rlsd.algorithm.rlsd_drift_decomposition`),
       Â_t = A·((1-λ) + λ·clip(e^{sign(A)δ_t}, 1±ε)) = A + λ|A|·φ_sign(A)(δ_t),
   φ_+(δ) = clip(e^δ, 1±ε) - 1, φ_-(δ) = 1 - clip(e^-δ, 1±ε), both with the sign of δ and |φ| <= ε. For one-token
   responses y ~ π = softmax(θ) and rewards independent of the response, the expected gradient of the group surrogate
   (1/G)Σ_i Â_i log π(y_i) w.r.t. the logits θ is exactly
       E g = 0 (GRPO part) + λ·(m_+·d_+ + m_-·d_-),   d_s = E_{y~π}[φ_s(δ(y))·(e_y - π)],  m_± = E[A_i^±],
   with m_+ = m_- because every group's advantages sum to 0 (`drift_gradient_factorised`). Inside the clip d_+ is
   exactly P_T - π = -∇_θ KL(P_T ‖ π) and d_- exactly -½∇_θ χ²(π ‖ P_T); both are -∇_θ KL(π ‖ P_T) to first order
   in δ. `drift_gradient_enumerated` computes the same expectation by enumerating every response and reward tuple
   through rlsd.algorithm's own functions and autograd (rewards may depend on the response there: then GRPO's part is
   not 0). `habit_rate` measures the pull toward a teacher's habit token; `thought_only_gradients` the effect of
   `thought_only` on a two-position response.

Figures: `plot_*` take results and return a matplotlib Figure (not attached to pyplot); `save_figure` writes
figures/<name>.png and .pdf at the repository root.
"""

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rlsd.algorithm import (
    generalized_jsd,
    group_advantages,
    kl_decomposition,
    rlsd_drift_decomposition,
    rlsd_phi,
    rlsd_token_advantages,
)
from rlsd.plots import FIGURES_DIR, save_figure  # noqa: F401  (re-exported for notebook 01)

DTYPE = torch.float64


def _t(x):
    return torch.as_tensor(x, dtype=DTYPE)


def _check_distribution(x, name, dim=-1):
    if (x < 0).any() or not torch.isfinite(x).all() or ((x.sum(dim=dim) - 1.0).abs() > 1e-9).any():
        raise ValueError(f"{name} must be non-negative and sum to 1 along axis {dim}")


def kl_to_student(target_V, student_logp_V):
    """KL(target ‖ P_S) = Σ_v target(v)·(log target(v) - log P_S(v)), differentiable in student_logp_V; 0·log 0 = 0."""
    safe_log_target_V = torch.log(torch.where(target_V > 0, target_V, torch.ones_like(target_V)))
    return (target_V * (safe_log_target_V - student_logp_V)).sum()


# ----------------------------------------------------------------------------------------------------------------------
# 1. Theorem 1 at one position


@dataclass(frozen=True)
class DiscreteCase:
    """One position: a belief p(r | x, y<t) over R values of r and the teacher's next-token conditionals P_T(·|r)."""

    prior_R: torch.Tensor
    teacher_RV: torch.Tensor

    def __post_init__(self):
        object.__setattr__(self, "prior_R", _t(self.prior_R))
        object.__setattr__(self, "teacher_RV", _t(self.teacher_RV))
        _check_distribution(self.prior_R, "prior_R")
        _check_distribution(self.teacher_RV, "teacher_RV")
        if self.teacher_RV.dim() != 2 or self.teacher_RV.shape[0] != self.prior_R.shape[0]:
            raise ValueError("teacher_RV must have shape (R, V) with R = len(prior_R)")

    @property
    def marginal_V(self):
        return teacher_marginal(self.prior_R, self.teacher_RV)

    def decompose(self, student_V):
        """(opsd, ideal, mutual_information) for the student P_S = student_V, via `kl_decomposition`."""
        return kl_decomposition(self.prior_R, self.teacher_RV, _t(student_V))


def teacher_marginal(prior_R, teacher_RV):
    """P̄_T(v) = Σ_r p(r)·P_T(v | r): the teacher averaged over what the student cannot see. Returns marginal_V."""
    return _t(prior_R) @ _t(teacher_RV)


def hand_built_case():
    """Two possible reference answers r ∈ {a, b} (belief 0.6 / 0.4) and four candidate next tokens.

    Told r = a, the teacher mostly writes token 0; told r = b, mostly token 1. Tokens 2 and 3 are r-neutral-ish.
    P̄_T = (0.46, 0.30, 0.15, 0.09).
    """
    return DiscreteCase(
        prior_R=[0.6, 0.4],
        teacher_RV=[[0.70, 0.10, 0.15, 0.05], [0.10, 0.60, 0.15, 0.15]],
    )


def random_case(seed, num_r=3, vocab=5, concentration=1.0):
    """A random belief over r and random teacher rows, each drawn from a symmetric Dirichlet(concentration)."""
    rng = np.random.default_rng(seed)
    prior_R = rng.dirichlet(np.full(num_r, concentration))
    teacher_RV = rng.dirichlet(np.full(vocab, concentration), size=num_r)
    return DiscreteCase(prior_R=prior_R, teacher_RV=teacher_RV)


def random_distribution(seed, vocab, concentration=1.0):
    """A random distribution over `vocab` tokens (e.g. an arbitrary student), Dirichlet(concentration)."""
    return _t(np.random.default_rng(seed).dirichlet(np.full(vocab, concentration)))


def mixture_path(start_V, end_V, alphas_A):
    """Students on the segment between two distributions: P_S(α) = (1-α)·start + α·end. Returns students_AV.

    With start = P_T(·|a), end = P_T(·|b) and two values of r, the path passes through P̄_T at α = p(b): it runs from
    "copy the teacher told a" through "what x alone justifies" to "copy the teacher told b".
    """
    alphas_A1 = _t(alphas_A).unsqueeze(1)
    return (1.0 - alphas_A1) * _t(start_V) + alphas_A1 * _t(end_V)


def expected_jsd(case, students_AV, beta=0.5):
    """E_r JSD_β(P_T(·|r) ‖ P_S) for each student, with OPSD's own `generalized_jsd` (the loss OPSD actually uses).

    Returns jsd_A. Unlike the forward KL it has no exact decomposition; it is shown beside Theorem 1 for contrast.
    """
    students_AV = _t(students_AV)
    num_r, num_a = case.prior_R.shape[0], students_AV.shape[0]
    student_logits_RAV = torch.log(students_AV).unsqueeze(0).expand(num_r, -1, -1)
    teacher_logits_RAV = torch.log(case.teacher_RV).unsqueeze(1).expand(-1, num_a, -1)
    _, jsd_RA = generalized_jsd(student_logits_RAV, teacher_logits_RAV, torch.ones(num_r, num_a), beta=beta)
    return case.prior_R @ jsd_RA


def decomposition_sweep(case, students_AV):
    """Theorem 1 along a family of students. Returns a dict of numpy arrays over the A students:

    opsd = E_r KL(P_T(·|r) ‖ P_S),  ideal = KL(P̄_T ‖ P_S),  mi = I(Y; R) (the same number for every student),
    jsd = E_r JSD_0.5(P_T(·|r) ‖ P_S) (OPSD's practical loss, for contrast), gap = opsd - (ideal + mi).
    """
    rows = np.array([case.decompose(student_V) for student_V in _t(students_AV)])
    opsd_A, ideal_A, mi_A = rows[:, 0], rows[:, 1], rows[:, 2]
    return {
        "opsd": opsd_A,
        "ideal": ideal_A,
        "mi": mi_A,
        "jsd": expected_jsd(case, students_AV).numpy(),
        "gap": opsd_A - (ideal_A + mi_A),
    }


# ----------------------------------------------------------------------------------------------------------------------
# 2. A tiny autoregressive model, enumerated exactly


@dataclass(frozen=True)
class SequenceModel:
    """A Bayes-consistent joint P(r, y | x) = P(r | x) · Π_t P_T(y_t | r, y<t), y ∈ {0..V-1}^T, given by its tables.

    prior_R = P(r | x). teacher[t] has shape (R, V**t, V): teacher[t][r, p, v] = P_T(y_t = v | r, y<t = prefix p), where
    a prefix (y_0 .. y_{t-1}) has index p = Σ_s y_s·V^(t-1-s) (base-V digits, so prefix p followed by v is p·V + v).
    Every quantity of the student side (posterior over r, Bayes student) is derived from these tables: the model is
    Bayes-consistent by construction.
    """

    prior_R: torch.Tensor
    teacher: tuple

    def __post_init__(self):
        object.__setattr__(self, "prior_R", _t(self.prior_R))
        object.__setattr__(self, "teacher", tuple(_t(table) for table in self.teacher))
        _check_distribution(self.prior_R, "prior_R")
        vocab = self.teacher[0].shape[-1]
        for t, table_RPV in enumerate(self.teacher):
            if table_RPV.shape != (self.num_r, vocab**t, vocab):
                raise ValueError(f"teacher[{t}] must have shape {(self.num_r, vocab**t, vocab)}")
            _check_distribution(table_RPV, f"teacher[{t}]")

    @property
    def num_r(self):
        return self.prior_R.shape[0]

    @property
    def vocab(self):
        return self.teacher[0].shape[-1]

    @property
    def length(self):
        return len(self.teacher)


def prefix_index(y_T, t, vocab):
    """Index of the prefix y<t = (y_0 .. y_{t-1}) among the vocab**t prefixes of length t."""
    index = 0
    for token in list(y_T)[:t]:
        index = index * vocab + int(token)
    return index


def hand_built_sequence_model():
    """Three reference answers r ∈ {0, 1, 2} (P(r|x) = 0.5, 0.3, 0.2), tokens {0, 1, 2}, four positions:

    t = 0  narration:     P_T ∝ exp(0.5, 0, -0.5), the same for every r          -> carries no information about r
    t = 1  decisive step: P_T ∝ exp(2·[v = r])                                    -> strongly r-dependent
    t = 2  narration:     P_T ∝ exp(1·[v = y_1]), echoes the step, ignores r      -> no information given the prefix
    t = 3  answer:        P_T ∝ exp(1.5·[v = r] + 1·[v = y_1])                    -> r-dependent, and so is the step
    """
    num_r, vocab, length = 3, 3, 4
    prior_R = torch.tensor([0.5, 0.3, 0.2], dtype=DTYPE)
    tables = []
    for t in range(length):
        logits_RPV = torch.zeros(num_r, vocab**t, vocab, dtype=DTYPE)
        for r, prefix in itertools.product(range(num_r), itertools.product(range(vocab), repeat=t)):
            p = prefix_index(prefix, t, vocab)
            for v in range(vocab):
                if t == 0:
                    logit = (0.5, 0.0, -0.5)[v]
                elif t == 1:
                    logit = 2.0 * (v == r)
                elif t == 2:
                    logit = 1.0 * (v == prefix[1])
                else:
                    logit = 1.5 * (v == r) + 1.0 * (v == prefix[1])
                logits_RPV[r, p, v] = logit
        tables.append(torch.softmax(logits_RPV, dim=-1))
    return SequenceModel(prior_R=prior_R, teacher=tuple(tables))


def random_sequence_model(seed, num_r=3, vocab=3, length=3, concentration=1.0):
    """Random tables: P(r | x) and every row P_T(·| r, y<t) drawn from a symmetric Dirichlet(concentration)."""
    rng = np.random.default_rng(seed)
    prior_R = rng.dirichlet(np.full(num_r, concentration))
    tables = [rng.dirichlet(np.full(vocab, concentration), size=(num_r, vocab**t)) for t in range(length)]
    return SequenceModel(prior_R=prior_R, teacher=tuple(tables))


def prefix_joints(model):
    """P(r, y<t | x) for t = 0..T, by the chain rule: a list of T+1 tensors joint_RP of shape (R, V**t)."""
    joints = [model.prior_R.unsqueeze(1)]
    for table_RPV in model.teacher:
        joints.append((joints[-1].unsqueeze(2) * table_RPV).reshape(model.num_r, -1))
    return joints


def enumerate_sequences(model):
    """Every response and its joint with r: (sequences_ST as a long tensor in prefix-index order, joint_RS)."""
    sequences_ST = torch.tensor(list(itertools.product(range(model.vocab), repeat=model.length)), dtype=torch.long)
    return sequences_ST, prefix_joints(model)[-1]


def prefix_posteriors(model):
    """For t = 0..T-1: (prefix_prob_P = P(y<t | x), posterior_PR = P(r | x, y<t)), by Bayes' rule on `prefix_joints`."""
    out = []
    for joint_RP in prefix_joints(model)[:-1]:
        prefix_prob_P = joint_RP.sum(0)
        safe_P = torch.where(prefix_prob_P > 0, prefix_prob_P, torch.ones_like(prefix_prob_P))
        out.append((prefix_prob_P, (joint_RP / safe_P).T))
    return out


def bayes_student(model):
    """The Bayes student P_S(v | y<t) = Σ_r P(r | x, y<t)·P_T(v | r, y<t) (the teacher's marginal at every prefix).

    Returns a tuple over t of tables (V**t, V). Its rollouts have exactly the distribution P(y | x) of the joint.
    """
    return tuple(
        torch.einsum("pr,rpv->pv", posterior_PR, table_RPV)
        for (_, posterior_PR), table_RPV in zip(prefix_posteriors(model), model.teacher)
    )


def prior_only_student(model):
    """A non-Bayes student: averages the teacher over P(r | x) and ignores what the prefix says about r."""
    return tuple(torch.einsum("r,rpv->pv", model.prior_R, table_RPV) for table_RPV in model.teacher)


def student_prefix_probs(student):
    """Rollout probabilities of the prefixes under a student: a list over t of P_S(y<t) with shape (V**t,)."""
    probs = [torch.ones(1, dtype=DTYPE)]
    for table_PV in student[:-1]:
        probs.append((probs[-1].unsqueeze(1) * table_PV).reshape(-1))
    return probs


def token_decomposition(model, student, prefix_weights=None):
    """Theorem 1 at every position, averaged over prefixes. Returns numpy arrays of shape (T,):

    opsd[t]  = Σ_p w(p) · E_{r ~ P(r|x,y<t=p)} KL(P_T(·| r, p) ‖ P_S(·| p))
    ideal[t] = Σ_p w(p) · KL(P̄_T(·| p) ‖ P_S(·| p))
    mi[t]    = Σ_p w(p) · I(Y_t; R | x, y<t = p)
    with per-prefix numbers from `kl_decomposition`, so opsd = ideal + mi at every position. The weights w(p) default
    to the student's own rollout distribution (OPSD trains on student samples); pass a list of (V**t,) tensors to
    override. With the Bayes student both coincide with P(y<t | x) and mi[t] = I(Y_t; R | x, Y<t).
    """
    weights = student_prefix_probs(student) if prefix_weights is None else [_t(w) for w in prefix_weights]
    out = {key: np.zeros(model.length) for key in ("opsd", "ideal", "mi")}
    for t, ((_, posterior_PR), table_RPV) in enumerate(zip(prefix_posteriors(model), model.teacher)):
        for p in range(model.vocab**t):
            if weights[t][p] == 0:
                continue
            opsd, ideal, mi = kl_decomposition(posterior_PR[p], table_RPV[:, p, :], student[t][p])
            out["opsd"][t] += float(weights[t][p]) * opsd
            out["ideal"][t] += float(weights[t][p]) * ideal
            out["mi"][t] += float(weights[t][p]) * mi
    return out


def position_mutual_information(model):
    """I(Y_t; R | x, Y<t) for every t (exact, averaged over prefixes under P(y<t | x)). Returns a numpy array (T,)."""
    return token_decomposition(model, bayes_student(model))["mi"]


def sequence_mutual_information(model):
    """I(Y; R | x) = Σ_{r,y} P(r,y)·log[P(r,y) / (P(r)·P(y))], straight from the enumerated joint (no chain rule)."""
    _, joint_RS = enumerate_sequences(model)
    product_RS = model.prior_R.unsqueeze(1) * joint_RS.sum(0, keepdim=True)
    positive = joint_RS > 0
    return float((joint_RS[positive] * torch.log(joint_RS[positive] / product_RS[positive])).sum())


# ----------------------------------------------------------------------------------------------------------------------
# 3. Proposition 1: the per-sample OPSD gradient is the ideal gradient plus zero-mean noise


def softmax_logits(theta_V):
    """Student parameterised by free logits: log P_S = log_softmax(θ). Scores: ∇_θ log P_S(v) = e_v - P_S."""
    return F.log_softmax(theta_V, dim=-1)


def probability_coordinates(theta_V):
    """Student whose coordinates are its probabilities: log P_S(v) = log θ_v, each token with its own coordinate.

    (The gradient is taken in these ambient coordinates, not projected onto the simplex.) Scores
    ∇_θ log P_S(v) = e_v / θ_v are mutually orthogonal, which is exactly when the diagonal formula holds.
    """
    return torch.log(theta_V)


def linear_softmax(features_VD):
    """Student with shared parameters: log P_S = log_softmax(W θ), W = features_VD (tokens share directions of θ)."""
    features_VD = _t(features_VD)
    return lambda theta_D: F.log_softmax(features_VD @ theta_D, dim=-1)


def student_scores(log_student, theta_D):
    """The Jacobian J_VD with rows J[v] = ∇_θ log P_S(v), by autograd."""
    return torch.autograd.functional.jacobian(log_student, _t(theta_D))


def teacher_covariance(prior_R, teacher_RV):
    """C_VV[v, v'] = Cov_{r ~ p}[P_T(v|r), P_T(v'|r)]. Rows sum to 0 because every P_T(·|r) sums to 1."""
    prior_R, teacher_RV = _t(prior_R), _t(teacher_RV)
    centred_RV = teacher_RV - prior_R @ teacher_RV
    return centred_RV.T @ (prior_R.unsqueeze(1) * centred_RV)


def prop1_variance_exact(prior_R, teacher_RV, scores_VD):
    """E_r ‖δ‖² = Σ_{v,v'} C[v,v']·<J[v], J[v']> = Σ (C ⊙ J Jᵀ): the exact total variance of δ, any parameterisation."""
    return float((teacher_covariance(prior_R, teacher_RV) * (scores_VD @ scores_VD.T)).sum())


def prop1_variance_diagonal(prior_R, teacher_RV, scores_VD):
    """The commonly stated Σ_v Var_r[P_T(v|r)]·‖∇_θ log P_S(v)‖²: the v = v' terms of `prop1_variance_exact` only."""
    var_V = torch.diagonal(teacher_covariance(prior_R, teacher_RV))
    return float((var_V * (scores_VD**2).sum(1)).sum())


def prop1_variance_softmax(prior_R, teacher_RV):
    """For free softmax logits δ(r) = P̄_T - P_T(·|r) exactly, so E_r ‖δ‖² = Σ_v Var_r[P_T(v|r)] (student-free)."""
    return float(torch.diagonal(teacher_covariance(prior_R, teacher_RV)).sum())


def per_r_gradients(prior_R, teacher_RV, log_student, theta_D):
    """g(r) = ∇_θ KL(P_T(·|r) ‖ P_S,θ) for every value of r and ḡ = ∇_θ KL(P̄_T ‖ P_S,θ), each by its own autograd pass.

    Returns (grads_RD, ideal_grad_D). These are gradients of one position's loss with the prefix held fixed (the
    distillation term; no gradient flows through the sampling of y).
    """
    prior_R, teacher_RV, theta_D = _t(prior_R), _t(teacher_RV), _t(theta_D)

    def grad_of(target_V):
        theta = theta_D.detach().clone().requires_grad_(True)
        (grad_D,) = torch.autograd.grad(kl_to_student(target_V, log_student(theta)), theta)
        return grad_D

    grads_RD = torch.stack([grad_of(row_V) for row_V in teacher_RV])
    return grads_RD, grad_of(prior_R @ teacher_RV)


def gradient_noise(prior_R, teacher_RV, log_student, theta_D, num_samples, seed=0):
    """Proposition 1 measured: δ(r) = g(r) - ḡ, exactly over r and empirically over `num_samples` draws r ~ p.

    Each distinct r's gradient is computed once by autograd (`per_r_gradients`) and indexed by the sampled r, which is
    the same as recomputing it per draw. Returns python floats:
      exact_mean_norm   ‖Σ_r p(r)·δ(r)‖                (0 up to rounding: E δ = 0)
      exact_variance    Σ_r p(r)·‖δ(r)‖²              (enumeration over r; equals `prop1_variance_exact`)
      empirical_mean_norm, empirical_variance           ‖mean δ‖ and the trace of the sample covariance (ddof 1)
      empirical_second_moment, empirical_se             mean ‖δ‖² over the draws and its standard error
      formula_exact, formula_diagonal                   `prop1_variance_exact` / `prop1_variance_diagonal`
    """
    prior_R, teacher_RV = _t(prior_R), _t(teacher_RV)
    grads_RD, ideal_grad_D = per_r_gradients(prior_R, teacher_RV, log_student, theta_D)
    delta_RD = grads_RD - ideal_grad_D
    generator = torch.Generator().manual_seed(seed)
    r_N = torch.multinomial(prior_R, num_samples, replacement=True, generator=generator)
    delta_ND = delta_RD[r_N]
    sq_norm_N = (delta_ND**2).sum(1)
    scores_VD = student_scores(log_student, theta_D)
    return {
        "exact_mean_norm": float((prior_R @ delta_RD).norm()),
        "exact_variance": float(prior_R @ (delta_RD**2).sum(1)),
        "empirical_mean_norm": float(delta_ND.mean(0).norm()),
        "empirical_variance": float(delta_ND.var(0, unbiased=True).sum()),
        "empirical_second_moment": float(sq_norm_N.mean()),
        "empirical_se": float(sq_norm_N.std() / math.sqrt(num_samples)),
        "formula_exact": prop1_variance_exact(prior_R, teacher_RV, scores_VD),
        "formula_diagonal": prop1_variance_diagonal(prior_R, teacher_RV, scores_VD),
    }


def sgd_on_single_position(case, objective, steps, lr, seed=0, schedule="constant", decay_steps=100.0):
    """Plain SGD on a free-logit student at one position; the exact objectives are logged before every step.

    objective = "opsd": each step draws ONE r ~ p(r) and descends KL(P_T(·|r) ‖ P_S) (what OPSD does);
    objective = "ideal": each step descends KL(P̄_T ‖ P_S) (matching the marginal, deterministic).
    schedule = "constant" (lr) or "inverse" (lr / (1 + k/decay_steps), a Robbins-Monro schedule). Logits start at 0.
    Returns numpy arrays over steps: sampled_loss (the loss the step descended), opsd (E_r KL, exact), ideal
    (KL(P̄_T ‖ P_S), exact), all logged before the step; r (the r drawn at each step, -1 for "ideal") and
    student_after (K, V) (P_S right after each step); plus mi (a float: the floor) and the final student_V.
    """
    if objective not in ("opsd", "ideal"):
        raise ValueError(f"objective must be 'opsd' or 'ideal', got {objective!r}")
    if schedule not in ("constant", "inverse"):
        raise ValueError(f"schedule must be 'constant' or 'inverse', got {schedule!r}")
    generator = torch.Generator().manual_seed(seed)
    r_K = torch.multinomial(case.prior_R, steps, replacement=True, generator=generator)
    theta_V = torch.zeros(case.teacher_RV.shape[1], dtype=DTYPE)
    log = {key: np.zeros(steps) for key in ("sampled_loss", "opsd", "ideal")}
    student_after_KV = np.zeros((steps, case.teacher_RV.shape[1]))
    mi = 0.0
    for k in range(steps):
        student_logp_V = softmax_logits(theta_V.requires_grad_(True))
        target_V = case.teacher_RV[r_K[k]] if objective == "opsd" else case.marginal_V
        loss = kl_to_student(target_V, student_logp_V)
        (grad_V,) = torch.autograd.grad(loss, theta_V)
        opsd, ideal, mi = case.decompose(student_logp_V.detach().exp())
        log["sampled_loss"][k], log["opsd"][k], log["ideal"][k] = loss.item(), opsd, ideal
        step_lr = lr if schedule == "constant" else lr / (1.0 + k / decay_steps)
        theta_V = (theta_V - step_lr * grad_V).detach()
        student_after_KV[k] = torch.softmax(theta_V, -1).numpy()
    r_K = r_K.numpy() if objective == "opsd" else np.full(steps, -1)
    return {**log, "r": r_K, "student_after": student_after_KV, "mi": mi, "student_V": torch.softmax(theta_V, -1)}


def student_after_each_r(run, num_r, burn_in=0):
    """Mean P_S right after the steps that drew r, for each r (rows (R, V)), skipping the first `burn_in` steps.

    If the rows differ, the student's behaviour depends on which privileged r it was last shown: a quantity it can
    never see at test time (a toy form of leakage). For the ideal objective every row is NaN (no r is drawn).
    """
    rows = []
    for r in range(num_r):
        chosen = run["r"][burn_in:] == r
        rows.append(run["student_after"][burn_in:][chosen].mean(0) if chosen.any() else
                    np.full(run["student_after"].shape[1], np.nan))
    return np.stack(rows)


# ----------------------------------------------------------------------------------------------------------------------
# 4. Theorem 4: the evidence weight is the belief update


def evidence_weights(model, y_T, r, student=None):
    """w_t = P_T(y_t | r, y<t) / P_S(y_t | y<t) along the response y_T (the student defaults to the Bayes student).

    This is the RLSD weight for A > 0 before clipping (rlsd/algorithm.py). Returns a float64 tensor (T,).
    """
    student = bayes_student(model) if student is None else student
    weights = []
    for t, token in enumerate(y_T):
        p = prefix_index(y_T, t, model.vocab)
        weights.append(model.teacher[t][r, p, int(token)] / student[t][p, int(token)])
    return torch.stack(weights)


def belief_trajectory(model, y_T, r):
    """P(r | x, y<k) for k = 0..T, by summing the enumerated joint P(r, y) over all completions of each prefix.

    Uses no conditional of the student and no Bayes rule step by step: an independent route to Theorem 4's right side.
    Returns a float64 tensor (T+1,); entry 0 is P(r | x), entry T is P(r | x, y).
    """
    sequences_ST, joint_RS = enumerate_sequences(model)
    y_T = torch.as_tensor(list(y_T), dtype=torch.long)
    beliefs = []
    for k in range(model.length + 1):
        match_S = (sequences_ST[:, :k] == y_T[:k]).all(1)
        beliefs.append(joint_RS[r, match_S].sum() / joint_RS[:, match_S].sum())
    return torch.stack(beliefs)


def belief_updates(model, y_T, r):
    """P(r | x, y≤t) / P(r | x, y<t) for t = 0..T-1 (how much token t raised the belief in r). Returns a tensor (T,)."""
    beliefs_K = belief_trajectory(model, y_T, r)
    return beliefs_K[1:] / beliefs_K[:-1]


def posterior_ratio(model, y_T, r):
    """P(r | x, y) / P(r | x): what the whole response did to the belief in r (the telescoped product)."""
    beliefs_K = belief_trajectory(model, y_T, r)
    return float(beliefs_K[-1] / beliefs_K[0])


# ----------------------------------------------------------------------------------------------------------------------
# 5. RLSD's hidden distillation term


def phi(delta_X, positive, clip_eps):
    """φ_+ (positive=True) or φ_- of `rlsd.algorithm.rlsd_phi`; clip_eps=None gives the clipless versions e^δ - 1 and
    1 - e^-δ (what φ is inside the clip, and a wrong definition wherever the clip is active)."""
    delta_X = _t(delta_X)
    if clip_eps is None:
        return delta_X.exp() - 1.0 if positive else 1.0 - (-delta_X).exp()
    return rlsd_phi(delta_X, positive, clip_eps)


def advantage_moments(success_prob, group_size):
    """Exact moments of one response's group advantage A_i, rewards R_i ~ Bernoulli(success_prob) i.i.d., by
    enumerating all 2^G reward tuples through `rlsd.algorithm.group_advantages` (float64). Returns python floats:
    mean = E[A_i] (0: every group's advantages sum to 0), pos = E[max(A_i, 0)], neg = E[max(-A_i, 0)] (pos = neg),
    p_mixed = P(the group has both rewards: A != 0)."""
    tuples_NG = torch.tensor(list(itertools.product((0.0, 1.0), repeat=group_size)), dtype=DTYPE)
    prob_N = (success_prob ** tuples_NG * (1.0 - success_prob) ** (1.0 - tuples_NG)).prod(1)
    adv_NG = group_advantages(tuples_NG.reshape(-1), group_size).view(-1, group_size)
    mixed_N = (tuples_NG.sum(1) > 0) & (tuples_NG.sum(1) < group_size)
    return {
        "mean": float(prob_N @ adv_NG.mean(1)),
        "pos": float(prob_N @ adv_NG.clamp(min=0).mean(1)),
        "neg": float(prob_N @ (-adv_NG).clamp(min=0).mean(1)),
        "p_mixed": float(prob_N[mixed_N].sum()),
    }


def log_ratio(student_V, teacher_V):
    """δ(v) = log P_T(v) - log π(v) for every token (what RLSD's Δ_t is for a sampled token v)."""
    return torch.log(_t(teacher_V)) - torch.log(_t(student_V))


def drift_direction(student_V, teacher_V, clip_eps, positive):
    """d_s = E_{y~π}[φ_s(δ(y))·∇_θ log π(y)] = Σ_y π(y)·φ_s(δ(y))·(e_y - π) for free logits θ (closed form)."""
    student_V = _t(student_V)
    weighted_V = student_V * phi(log_ratio(student_V, teacher_V), positive, clip_eps)
    return weighted_V - weighted_V.sum() * student_V


def drift_gradient_factorised(student_V, teacher_V, success_prob, group_size, lam, clip_eps, negative_only=False):
    """E g of one group (rewards independent of the response), from the factorisation
    E g = λ·(m_+·d_+ + m_-·d_-)  (m_+ term dropped with negative_only); the GRPO part is exactly 0.
    Returns a dict of float64 tensors over V: grpo (zeros), drift, and python floats m_pos, m_neg."""
    moments = advantage_moments(success_prob, group_size)
    drift_V = lam * moments["neg"] * drift_direction(student_V, teacher_V, clip_eps, positive=False)
    if not negative_only:
        drift_V = drift_V + lam * moments["pos"] * drift_direction(student_V, teacher_V, clip_eps, positive=True)
    return {"grpo": torch.zeros_like(drift_V), "drift": drift_V, "m_pos": moments["pos"], "m_neg": moments["neg"]}


def _enumerated_groups(student_V, success_prob_V, group_size):
    """Every (responses, rewards) tuple of one group with its probability: tokens_NG, rewards_NG, prob_N."""
    vocab = student_V.shape[0]
    ys_YG = torch.tensor(list(itertools.product(range(vocab), repeat=group_size)), dtype=torch.long)
    rs_QG = torch.tensor(list(itertools.product((0.0, 1.0), repeat=group_size)), dtype=DTYPE)
    tokens_NG = ys_YG.repeat_interleave(rs_QG.shape[0], dim=0)
    rewards_NG = rs_QG.repeat(ys_YG.shape[0], 1)
    q_NG = success_prob_V[tokens_NG]
    prob_N = (student_V[tokens_NG] * (q_NG ** rewards_NG) * ((1.0 - q_NG) ** (1.0 - rewards_NG))).prod(1)
    return tokens_NG, rewards_NG, prob_N


def drift_gradient_enumerated(student_logits_V, teacher_V, success_prob_V, group_size, lam, clip_eps,
                              negative_only=False):
    """The exact expected gradient of one group's on-policy surrogate (1/G)·Σ_i Â_i·log π(y_i) w.r.t. the student's
    logits, by enumeration: all V^G response tuples × 2^G reward tuples, R_i ~ Bernoulli(success_prob_V[y_i]) (a
    constant vector = rewards independent of the response). Â comes from `rlsd.algorithm` (group_advantages,
    rlsd_token_advantages, rlsd_drift_decomposition), the gradient from autograd: no formula of this section is used.
    (At ratio 1 the PPO surrogate's gradient is this one; one-token responses make the token-mean a mean over G.)

    Returns float64 tensors over V: grpo (λ = 0), rlsd, and the parts grpo_part / drift_part of rlsd's gradient (the
    gradients of the surrogate with Â replaced by each term of `rlsd_drift_decomposition`).
    """
    theta_V = _t(student_logits_V).clone().requires_grad_(True)
    logp_V = F.log_softmax(theta_V, dim=-1)
    student_V = logp_V.detach().exp()
    tokens_NG, rewards_NG, prob_N = _enumerated_groups(student_V, _t(success_prob_V), group_size)
    rows = tokens_NG.reshape(-1, 1)  # one response per row, T = 1
    adv_B = group_advantages(rewards_NG.reshape(-1), group_size)
    teacher_logp_B1 = torch.log(_t(teacher_V))[rows]
    student_logp_B1 = logp_V.detach()[rows]
    mask_B1 = torch.ones_like(teacher_logp_B1)
    weight_B = (prob_N / group_size).repeat_interleave(group_size)  # P(tuple) · 1/G per response
    logp_B = logp_V[rows.squeeze(1)]

    def expected_grad(adv_hat_B1):
        (grad_V,) = torch.autograd.grad((weight_B * adv_hat_B1.squeeze(1) * logp_B).sum(), theta_V,
                                        retain_graph=True)
        return grad_V

    args = (adv_B, teacher_logp_B1, student_logp_B1, mask_B1)
    grpo_part, drift_part = rlsd_drift_decomposition(*args, lam, clip_eps, negative_only=negative_only)
    return {
        "grpo": expected_grad(rlsd_token_advantages(*args, 0.0, clip_eps)),
        "rlsd": expected_grad(rlsd_token_advantages(*args, lam, clip_eps, negative_only=negative_only)),
        "grpo_part": expected_grad(grpo_part),
        "drift_part": expected_grad(drift_part),
    }


def divergence_gradients(student_logits_V, teacher_V):
    """Gradients w.r.t. the student's logits, by autograd, of KL(π ‖ P_T) (reverse), KL(P_T ‖ π) (forward) and
    χ²(π ‖ P_T) = Σ_v π(v)²/P_T(v) - 1. Returns a dict of float64 tensors over V."""
    teacher_V = _t(teacher_V)
    out = {}
    for name, fn in (
        ("reverse_kl", lambda p: (p * (torch.log(p) - torch.log(teacher_V))).sum()),
        ("forward_kl", lambda p: (teacher_V * (torch.log(teacher_V) - torch.log(p))).sum()),
        ("chi2", lambda p: (p**2 / teacher_V).sum() - 1.0),
    ):
        theta_V = _t(student_logits_V).clone().requires_grad_(True)
        (out[name],) = torch.autograd.grad(fn(torch.softmax(theta_V, -1)), theta_V)
    return out


def cosine(a, b):
    """Cosine similarity of two vectors (python float)."""
    a, b = _t(a).reshape(-1), _t(b).reshape(-1)
    return float(a @ b / (a.norm() * b.norm()))


def monte_carlo_group_gradient(student_logits_V, teacher_V, success_prob, group_size, lam, clip_eps, num_groups,
                               seed=0, negative_only=False):
    """The same expectation estimated from `num_groups` sampled groups (responses y ~ π, rewards Bernoulli, independent
    of y), through rlsd.algorithm: per group (1/G)·Σ_i Â_i·(e_{y_i} - π). Returns (mean_V, standard_error_V)."""
    generator = torch.Generator().manual_seed(seed)
    student_V = torch.softmax(_t(student_logits_V), -1)
    tokens_B = torch.multinomial(student_V, num_groups * group_size, replacement=True, generator=generator)
    rewards_B = (torch.rand(num_groups * group_size, generator=generator, dtype=DTYPE) < success_prob).to(DTYPE)
    adv_B = group_advantages(rewards_B, group_size)
    rows = tokens_B.unsqueeze(1)
    adv_hat_B = rlsd_token_advantages(adv_B, torch.log(_t(teacher_V))[rows], torch.log(student_V)[rows],
                                      torch.ones(rows.shape, dtype=DTYPE), lam, clip_eps,
                                      negative_only=negative_only).squeeze(1)
    per_response_BV = adv_hat_B.unsqueeze(1) * (F.one_hot(tokens_B, student_V.shape[0]).to(DTYPE) - student_V)
    per_group_MV = per_response_BV.view(num_groups, group_size, -1).mean(1)
    return per_group_MV.mean(0), per_group_MV.std(0) / math.sqrt(num_groups)


def habit_teacher(student_V, habit, strength):
    """A teacher that is the student plus a habit: P_T = (1-h)·π + h·e_habit (e.g. "the reference says ..." openers)."""
    student_V = _t(student_V)
    return (1.0 - strength) * student_V + strength * F.one_hot(torch.tensor(habit), student_V.shape[0]).to(DTYPE)


def habit_rate(grad_V, student_V, habit):
    """dπ(habit)/dη when the logits move along grad_V with step η: π_h·(g_h - Σ_v π_v g_v) (first order in η)."""
    student_V, grad_V = _t(student_V), _t(grad_V)
    return float(student_V[habit] * (grad_V[habit] - student_V @ grad_V))


def habit_rate_closed_form(student_V, habit, strength, m_pos, m_neg, lam, clip_eps):
    """The habit rate of `drift_gradient_factorised` for `habit_teacher`, in closed form. δ takes two values, a on the
    habit token and c < 0 on every other one, so d_s = π_h·(φ_s(a) - φ_s(c))·(e_h - π) and
        rate = λ·π_h²·‖e_h - π‖²·[m_+·(φ_+(a) - φ_+(c)) + m_-·(φ_-(a) - φ_-(c))]  <=  4·λ·ε·m·π_h²·‖e_h - π‖²,
    the bound reached once all four φ values saturate. Pass m_pos = 0 for negative_only."""
    student_V = _t(student_V)
    pi_h = float(student_V[habit])
    spread = float(((F.one_hot(torch.tensor(habit), student_V.shape[0]).to(DTYPE) - student_V) ** 2).sum())
    a = math.log(1.0 - strength + strength / pi_h)
    c = math.log(1.0 - strength)
    gap = sum(m * float(phi(_t(a), s, clip_eps) - phi(_t(c), s, clip_eps))
              for m, s in ((m_pos, True), (m_neg, False)))
    return lam * pi_h**2 * spread * gap


def thought_only_gradients(thought, answer, success_prob, group_size, lam, clip_eps, thought_only):
    """Two-position responses (y_0 = a thought token, y_1 = an answer token), drawn independently from the student's
    free-logit distributions at each position; thought/answer = (student_logits_V, teacher_V) per position; rewards
    Bernoulli(success_prob) independent of the response. Exact expected gradient of the token-mean surrogate
    (1/(2G))·Σ_i Σ_t Â_it·log π_t(y_it) w.r.t. both positions' logits, by enumeration through
    `rlsd_token_advantages` with thought_mask_BT = position 0 if thought_only. Returns (grad_thought_V, grad_answer_V).
    """
    thetas = [_t(thought[0]).clone().requires_grad_(True), _t(answer[0]).clone().requires_grad_(True)]
    logps = [F.log_softmax(theta, -1) for theta in thetas]
    students = [lp.detach().exp() for lp in logps]
    vocab = students[0].shape[0]
    # a response is one token of a joint vocabulary vocab², so `_enumerated_groups` enumerates the pairs
    joint_V = (students[0].unsqueeze(1) * students[1].unsqueeze(0)).reshape(-1)
    tokens_NG, rewards_NG, prob_N = _enumerated_groups(joint_V, torch.full((vocab**2,), float(success_prob),
                                                                           dtype=DTYPE), group_size)
    pairs_B2 = torch.stack([tokens_NG.reshape(-1) // vocab, tokens_NG.reshape(-1) % vocab], dim=1)
    adv_B = group_advantages(rewards_NG.reshape(-1), group_size)
    teacher_logp_B2 = torch.stack([torch.log(_t(thought[1]))[pairs_B2[:, 0]],
                                   torch.log(_t(answer[1]))[pairs_B2[:, 1]]], 1)
    student_logp_B2 = torch.stack([logps[0].detach()[pairs_B2[:, 0]], logps[1].detach()[pairs_B2[:, 1]]], 1)
    mask_B2 = torch.ones_like(teacher_logp_B2)
    thought_mask_B2 = torch.tensor([[True, False]]).expand(pairs_B2.shape[0], 2) if thought_only else None
    adv_hat_B2 = rlsd_token_advantages(adv_B, teacher_logp_B2, student_logp_B2, mask_B2, lam, clip_eps,
                                       thought_mask_BT=thought_mask_B2)
    weight_B = (prob_N / (2 * group_size)).repeat_interleave(group_size)
    surrogate = (weight_B * (adv_hat_B2[:, 0] * logps[0][pairs_B2[:, 0]]
                             + adv_hat_B2[:, 1] * logps[1][pairs_B2[:, 1]])).sum()
    grad_thought_V, grad_answer_V = torch.autograd.grad(surrogate, thetas)
    return grad_thought_V, grad_answer_V


# ----------------------------------------------------------------------------------------------------------------------
# Figures


def _figure(width, height, ncols=1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def plot_decomposition(alphas_A, sweep, marginal_alpha, named_students):
    """(a) Theorem 1 over students. Left: along the mixture path, ideal (band) + MI (band) = OPSD objective (line),
    with OPSD's practical JSD dashed. Right: stacked bars for a few named students.

    named_students: dict name -> (opsd, ideal, mi).
    """
    fig, (ax_path, ax_bars) = _figure(10.0, 3.8, ncols=2)
    ideal_A, mi_A = sweep["ideal"], sweep["mi"]
    ax_path.fill_between(alphas_A, 0, ideal_A, color="tab:blue", alpha=0.45, label="ideal: KL(P̄_T ‖ P_S)")
    ax_path.fill_between(alphas_A, ideal_A, ideal_A + mi_A, color="tab:red", alpha=0.35, label="I(Y; R): the floor")
    ax_path.plot(alphas_A, sweep["opsd"], color="black", lw=1.5, label="OPSD: E_r KL(P_T(·|r) ‖ P_S)")
    ax_path.plot(alphas_A, sweep["jsd"], color="tab:green", ls="--", lw=1.2, label="E_r JSD$_{0.5}$ (OPSD's loss)")
    ax_path.axvline(marginal_alpha, color="gray", ls=":", lw=1)
    ax_path.annotate("P_S = P̄_T", (marginal_alpha, ax_path.get_ylim()[1] * 0.92), ha="center", fontsize=8,
                     color="gray")
    ax_path.set_xlabel("student α:  P_S = (1-α)·P_T(·|a) + α·P_T(·|b)")
    ax_path.set_ylabel("nats")
    ax_path.set_title("Theorem 1 along a path of students")
    ax_path.legend(fontsize=7, loc="upper right")
    names = list(named_students)
    ideal = np.array([named_students[n][1] for n in names])
    mi = np.array([named_students[n][2] for n in names])
    ax_bars.bar(names, ideal, color="tab:blue", alpha=0.6, label="ideal")
    ax_bars.bar(names, mi, bottom=ideal, color="tab:red", alpha=0.45, label="I(Y; R)")
    ax_bars.scatter(names, [named_students[n][0] for n in names], color="black", marker="_", s=400, zorder=3,
                    label="OPSD objective")
    ax_bars.set_ylabel("nats")
    ax_bars.set_title("OPSD objective = ideal + MI, per student")
    ax_bars.tick_params(axis="x", labelsize=8)
    ax_bars.legend(fontsize=7)
    return fig


def plot_position_information(mi_T, total_mi, decomposition, position_names):
    """Token-level Theorem 1. Left: I(Y_t; R | x, Y<t) per position (they sum to I(Y; R | x)). Right: the OPSD
    objective of a non-Bayes student per position, stacked as ideal + MI (`token_decomposition` output)."""
    fig, (ax_mi, ax_dec) = _figure(10.0, 3.6, ncols=2)
    positions = np.arange(len(mi_T))
    ax_mi.bar(positions, mi_T, color="tab:red", alpha=0.6)
    ax_mi.set_xticks(positions, [f"t={t}\n{n}" for t, n in enumerate(position_names)], fontsize=8)
    ax_mi.set_ylabel("nats")
    ax_mi.set_title(f"I(Y_t; R | x, Y<t): sums to I(Y; R | x) = {total_mi:.3f}")
    ax_dec.bar(positions, decomposition["ideal"], color="tab:blue", alpha=0.6, label="ideal")
    ax_dec.bar(positions, decomposition["mi"], bottom=decomposition["ideal"], color="tab:red", alpha=0.45,
               label="I(Y_t; R | y<t)")
    ax_dec.scatter(positions, decomposition["opsd"], color="black", marker="_", s=400, zorder=3, label="OPSD objective")
    ax_dec.set_xticks(positions, [f"t={t}" for t in positions], fontsize=8)
    ax_dec.set_ylabel("nats (averaged over the student's prefixes)")
    ax_dec.set_title("prior-only student: OPSD = ideal + MI per token")
    ax_dec.legend(fontsize=7)
    return fig


IDEAL_FLOOR = 1e-9  # the ideal run reaches 0 to machine precision; a log axis needs a floor


def exponential_moving_average(x, rate=0.02):
    """EMA with weight `rate` on the newest value (about a 1/rate-step window), started at x[0]."""
    out = np.empty(len(x))
    running = x[0]
    for k, value in enumerate(x):
        running = (1.0 - rate) * running + rate * value
        out[k] = running
    return out


def plot_sgd(runs, mi, rate=0.02):
    """(b) SGD on a free-logit student. runs: dict label -> `sgd_on_single_position` output.

    Left: the OPSD objective E_r KL(P_T(·|r) ‖ P_S) (exact, EMA-smoothed) against the floor I(Y; R). Right: the ideal
    loss KL(P̄_T ‖ P_S) (EMA-smoothed, log scale). Both against the step on a log axis, so the first steps show.
    """
    fig, (ax_opsd, ax_ideal) = _figure(10.0, 3.8, ncols=2)
    colors = ["black", "tab:orange", "tab:purple", "tab:green", "tab:brown"]
    for (label, run), color in zip(runs.items(), colors):
        steps = np.arange(1, len(run["opsd"]) + 1)
        ax_opsd.plot(steps, exponential_moving_average(run["opsd"], rate), color=color, lw=1.2, label=label)
        ideal = np.maximum(exponential_moving_average(run["ideal"], rate), IDEAL_FLOOR)
        ax_ideal.plot(steps, ideal, color=color, lw=1.2, label=label)
    ax_opsd.axhline(mi, color="tab:red", ls=":", lw=1.5, label=f"floor I(Y; R) = {mi:.3f}")
    ax_opsd.set_xscale("log")
    ax_opsd.set_xlabel("SGD step")
    ax_opsd.set_ylabel("nats")
    ax_opsd.set_title("OPSD objective: never below the floor")
    ax_opsd.legend(fontsize=7)
    ax_ideal.set_xscale("log")
    ax_ideal.set_yscale("log")
    ax_ideal.set_xlabel("SGD step")
    ax_ideal.set_ylabel(f"KL(P̄_T ‖ P_S), nats (floored at {IDEAL_FLOOR:g})")
    ax_ideal.set_title("ideal loss: distance to what x justifies")
    ax_ideal.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"SGD on a free-logit student (curves: EMA over ~{round(1 / rate)} steps)", fontsize=10)
    return fig


def plot_gradient_noise(bars, scatter):
    """(c) Proposition 1. Left: for each student parameterisation, the exact formula and the diagonal formula
    divided by the sampled E_r ‖δ‖² (error bars: ± 2 s.e. of the sampled value). Right: over random cases and
    students, both formulas against the sampled value (softmax logits).

    bars: dict name -> `gradient_noise` output. scatter: dict with arrays empirical, exact, diagonal.
    """
    fig, (ax_bars, ax_scatter) = _figure(10.0, 3.8, ncols=2)
    names = list(bars)
    x = np.arange(len(names))
    width = 0.36
    series = (
        (-width / 2, "formula_exact", "tab:blue", "exact: Σ_vv' C_vv'·<s_v, s_v'>"),
        (width / 2, "formula_diagonal", "tab:gray", "diagonal: Σ_v Var_r[P_T(v|r)]·‖s_v‖²"),
    )
    for offset, key, color, label in series:
        ratio = np.array([bars[n][key] / bars[n]["empirical_second_moment"] for n in names])
        rel_se = np.array([2 * bars[n]["empirical_se"] / bars[n]["empirical_second_moment"] for n in names])
        ax_bars.bar(x + offset, ratio, width, color=color, label=label, yerr=ratio * rel_se, capsize=3)
    ax_bars.axhline(1.0, color="black", lw=0.8, ls=":")
    ax_bars.set_xticks(x, names, fontsize=8)
    ax_bars.set_ylabel("formula ÷ sampled E_r ‖δ‖²")
    ax_bars.set_title("one student, three parameterisations")
    ax_bars.legend(fontsize=7, loc="upper right")
    ax_bars.set_ylim(0, 1.35)
    empirical = np.asarray(scatter["empirical"])
    ax_scatter.scatter(empirical, scatter["exact"], s=12, color="tab:blue", label="exact: Σ_v Var_r[P_T(v|r)]")
    ax_scatter.scatter(empirical, scatter["diagonal"], s=12, color="tab:gray", marker="x",
                       label="diagonal formula")
    lim = [0.0, 1.05 * max(empirical.max(), np.max(scatter["diagonal"]), np.max(scatter["exact"]))]
    ax_scatter.plot(lim, lim, color="black", lw=0.8, ls=":")
    ax_scatter.set_xlim(lim)
    ax_scatter.set_ylim(lim)
    ax_scatter.set_xlabel("sampled E_r ‖δ‖²")
    ax_scatter.set_ylabel("formula")
    ax_scatter.set_title("softmax-logit students, random cases")
    ax_scatter.legend(fontsize=7)
    return fig


def plot_evidence(examples, r):
    """Theorem 4. examples: dict label -> (y_T, weights_T, updates_T, beliefs_K). Left: log w_t (bars) and
    log belief update (dots) per token. Right: the belief P(r | x, y<k) along each response."""
    fig, (ax_w, ax_b) = _figure(10.0, 3.6, ncols=2)
    labels = list(examples)
    width = 0.8 / len(labels)
    colors = ["tab:green", "tab:red", "tab:blue", "tab:orange"]
    for i, (label, color) in enumerate(zip(labels, colors)):
        y_T, weights_T, updates_T, beliefs_K = examples[label]
        positions = np.arange(len(y_T)) + (i - (len(labels) - 1) / 2) * width
        ax_w.bar(positions, np.log(np.asarray(weights_T)), width, color=color, alpha=0.6, label=f"{label}: log w_t")
        ax_w.scatter(positions, np.log(np.asarray(updates_T)), color="black", s=14, zorder=3)
        ax_b.plot(np.arange(len(beliefs_K)), np.asarray(beliefs_K), marker="o", color=color, label=label)
    ax_w.axhline(0.0, color="black", lw=0.6)
    ax_w.set_xticks(np.arange(len(examples[labels[0]][0])), [f"t={t}" for t in range(len(examples[labels[0]][0]))])
    ax_w.set_ylabel("log w_t  (dots: log belief update)")
    ax_w.set_title(f"evidence weight = belief update (r = {r})")
    ax_w.legend(fontsize=7)
    ax_b.set_xticks(np.arange(len(examples[labels[0]][3])))
    ax_b.set_xlabel("tokens read (k)")
    ax_b.set_ylabel(f"P(r = {r} | x, y<k)")
    ax_b.set_ylim(0, 1)
    ax_b.set_title("the belief in r along the response")
    ax_b.legend(fontsize=7)
    return fig


def plot_hidden_drift(phi_curves, bars, cosines, habit):  # noqa: C901 (four panels, one after another)
    """§6: RLSD's hidden distillation term, four panels.

    phi_curves: dict with delta (A,) and label -> φ values (A,). bars: dict with tokens, grpo, rlsd (enumerated),
    drift (factorised), first_order (2λm·(-∇KL(π ‖ P_T))) over V and a title. cosines: dict label -> (kl_N, cos_N).
    habit: dict with strength (H,), an optional title, and label -> (rate_H, linestyle, colour).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 7.4), layout="constrained")
    (ax_phi, ax_bars), (ax_cos, ax_habit) = fig.subplots(2, 2)
    delta = phi_curves["delta"]
    ax_phi.plot(delta, delta, color="gray", ls=":", lw=1.2, label="δ (first order)")
    for (label, values), color, ls in zip([kv for kv in phi_curves.items() if kv[0] != "delta"],
                                          ["tab:red", "tab:blue", "salmon", "lightskyblue"], ["-", "--", "-", "--"]):
        ax_phi.plot(delta, values, color=color, ls=ls, lw=1.6, label=label)
    ax_phi.axhline(0, color="black", lw=0.5)
    ax_phi.axvline(0, color="black", lw=0.5)
    ax_phi.set_xlabel("δ = log P_T(y_t) − log π(y_t)   (nats)")
    ax_phi.set_ylabel("φ(δ) = (Â_t − A) / (λ|A|)")
    ax_phi.set_title("(a) Â_t = A + λ|A|·φ(δ_t): the extra term has the sign of δ, |φ| ≤ ε", fontsize=9)
    ax_phi.legend(fontsize=7, loc="upper left")
    ax_phi.set_ylim(-1.05, 1.05)

    tokens = np.arange(len(bars["rlsd"]))
    width = 0.38
    ax_bars.scatter(tokens - width / 2, bars["grpo"], color="tab:blue", marker="o", s=22, zorder=3,
                    label="GRPO (enumerated): exactly 0")
    ax_bars.bar(tokens + width / 2, bars["rlsd"], width, color="tab:red", alpha=0.7, label="RLSD (enumerated)")
    ax_bars.scatter(tokens + width / 2, bars["drift"], color="black", marker="_", s=300, zorder=3,
                    label="λ(m₊d₊ + m₋d₋) (Proposition 3)")
    ax_bars.scatter(tokens + width / 2, bars["first_order"], color="tab:green", marker="x", s=30, zorder=3,
                    label="2λm·(−∇KL(π ‖ P_T)) (first order, no clip)")
    ax_bars.axhline(0, color="black", lw=0.5)
    ax_bars.set_xticks(tokens, [f"v={v}" for v in tokens])
    ax_bars.set_xlabel("token v (one-token responses)")
    ax_bars.set_ylabel("E[∂ surrogate / ∂θ_v] per group")
    ax_bars.set_title(bars["title"], fontsize=9)
    ax_bars.legend(fontsize=7)

    markers = ["o", "s", "^", "v"]
    colours = ["tab:red", "tab:purple", "tab:orange", "tab:brown"]
    for (label, (kl_N, cos_N)), marker, colour in zip(cosines.items(), markers, colours):
        ax_cos.scatter(kl_N, cos_N, s=10, marker=marker, color=colour, alpha=0.7, label=label)
    ax_cos.set_xscale("log")
    ax_cos.axhline(1.0, color="gray", ls=":", lw=1)
    ax_cos.set_xlabel("KL(π ‖ P_T) of the case (nats)")
    ax_cos.set_ylabel("cosine(E drift, −∇KL(π ‖ P_T))")
    ax_cos.set_title("(c) direction of the exact drift (random cases, V = 5)", fontsize=9)
    ax_cos.legend(fontsize=7, loc="lower left")

    strength = habit["strength"]
    for label, (rate_H, ls, colour) in [kv for kv in habit.items() if kv[0] not in ("strength", "title")]:
        ax_habit.plot(strength, rate_H, ls=ls, color=colour, lw=1.5, label=label)
    ax_habit.set_xlabel("teacher's habit h:  P_T = (1 − h)·π + h·e_habit")
    ax_habit.set_ylabel("dπ(habit)/dη per group  (η: logit step)")
    ax_habit.set_title(habit.get("title", "(d) pull toward the teacher's habit"), fontsize=9)
    top = max(np.max(v[0]) for k, v in habit.items() if k not in ("strength", "title"))
    ax_habit.set_ylim(0, 1.45 * top)  # room for the legend above the curves
    ax_habit.legend(fontsize=7, ncol=2, loc="upper left")
    return fig
