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

Figures: `plot_*` take results and return a matplotlib Figure (not attached to pyplot); `save_figure` writes
figures/<name>.png and .pdf at the repository root.
"""

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rlsd.algorithm import generalized_jsd, kl_decomposition
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
