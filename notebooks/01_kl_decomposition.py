# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %%
# Set-up. Finds this repository in `.` or `..` (or a clone made earlier), else clones REPO_URL; then works from the
# repository root with it on sys.path (no kernel restart). On Colab it installs requirements-colab.txt, which keeps
# the runtime's CUDA torch, torchvision, numpy and pillow; anywhere else it installs nothing into your environment.
# %matplotlib inline
import os
import subprocess
import sys

REPO_URL = os.environ.get("RLSD_REPO_URL", "")  # the git URL of this repository: needed on a fresh runtime only
ON_COLAB = "google.colab" in sys.modules
CLONE_DIR = os.environ.get("RLSD_CLONE_DIR") or ("/content/rlsd" if ON_COLAB else os.path.join(".", "rlsd"))


def _is_repo(path):
    return os.path.isfile(os.path.join(path, "rlsd", "__init__.py")) and \
        os.path.isfile(os.path.join(path, "requirements-colab.txt"))


def _has_cuda_torch():
    try:
        import torch
    except ImportError:
        return False
    return torch.version.cuda is not None


_root = next((path for path in (".", "..", CLONE_DIR) if _is_repo(path)), None)
_cloned = _root is None
if _cloned:
    if not REPO_URL:
        raise SystemExit("The rlsd repository is not here: set REPO_URL in this cell (or the RLSD_REPO_URL "
                         "environment variable) to its git URL, e.g. https://github.com/<owner>/rlsd, and run the "
                         "cell again.")
    subprocess.run(["git", "clone", "--depth", "1", "--quiet", REPO_URL, CLONE_DIR], check=True)
    _root = CLONE_DIR
os.chdir(_root)
if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
if ON_COLAB or (_cloned and _has_cuda_torch()):
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements-colab.txt"], check=True)
    _installed = "installed requirements-colab.txt (the runtime's torch kept)"
elif _cloned:
    _installed = ("nothing installed (no CUDA torch here): run `pip install -r requirements.txt` for a CPU "
                  "machine, as the README says, then run this notebook again")
else:
    _installed = "nothing installed"
print(f"rlsd repository: {'cloned into' if _cloned else 'found at'} {_root} (now the working directory); "
      f"{_installed}")

# %% [markdown]
# # 01 — The KL decomposition: why on-policy self-distillation has a floor
#
# On-policy self-distillation (OPSD) trains a student $P_S(\cdot) = \pi_\theta(\cdot \mid x, y_{<t})$ to match a
# teacher that is the same network shown privileged information $r$ (a reference solution or final answer),
# $P_T(\cdot \mid r) = \pi(\cdot \mid x, r, y_{<t})$. The student never sees $r$. This notebook computes, on
# distributions small enough to enumerate exactly, what that mismatch costs:
#
# 1. **Theorem 1.** The OPSD objective splits into an *ideal* part (matching what $x$ alone justifies) plus the
#    mutual information between the next token and $r$ — a floor no student can remove.
# 2. The same decomposition **token by token** in a tiny autoregressive model: the floor lives on the tokens where $r$
#    matters.
# 3. **SGD on the OPSD objective** with one sampled $r$ per step: the loss never drops below the floor, and at a
#    constant learning rate the student keeps following whichever $r$ it saw last.
# 4. **Proposition 1.** The per-sample gradient is the ideal gradient plus zero-mean noise; we derive its exact
#    variance and check it (and the commonly stated diagonal formula) against sampled gradients.
# 5. **Theorem 4.** The quantity RLSD uses instead — the teacher/student ratio of the *sampled* token — is exactly the
#    update of the model's belief in $r$, and its product over a response telescopes.
# 6. **RLSD's hidden distillation term.** Exactly, with the clip, RLSD's token advantage is GRPO's plus a term with the
#    sign of the teacher/student log-ratio whatever the reward; in expectation over a group it pulls the student toward
#    the teacher even when the reward says nothing, and we compute that pull exactly (its size, direction, the
#    teacher's habits, and the `negative_only` / `thought_only` switches).
#
# All the logic lives in `rlsd/theory.py`; the cells below call it, print checks and draw the figures.

# %% tags=["parameters"]
PROFILE = os.environ.get("RLSD_PROFILE", "cpu")  # "smoke": seconds (CI); "cpu": the full notebook, < 1 minute
SEED = 0
SAVE_FIGURES = PROFILE != "smoke"  # smoke runs must not overwrite the committed figures

# %%
SIZES = {
    "smoke": {"sweep_points": 41, "sgd_steps": 400, "noise_samples": 2_000, "noise_cases": 12, "drift_cases": 30},
    "cpu": {"sweep_points": 201, "sgd_steps": 3_000, "noise_samples": 20_000, "noise_cases": 48, "drift_cases": 160},
}[PROFILE]

# %matplotlib inline
import numpy as np  # noqa: E402
import torch  # noqa: E402

from rlsd import theory as th  # noqa: E402

torch.manual_seed(SEED)


def num(x, digits=4):
    """A float as stable text: rounded, and never '-0.0000'."""
    return f"{round(float(x), digits) + 0.0:.{digits}f}"


def save(fig, name):
    if SAVE_FIGURES:
        th.save_figure(fig, name)
    return fig


# %% [markdown]
# ## 1. Theorem 1 at one position
#
# Fix a prompt and a prefix. From the student's side $r$ is uncertain, with belief $p(r) = P(r \mid x, y_{<t})$.
# The teacher's **marginal** $\bar P_T(v) = \sum_r p(r)\, P_T(v \mid r)$ is the best next-token distribution that can
# be justified without seeing $r$. Adding and subtracting $\log \bar P_T(v)$ inside the OPSD objective gives
#
# $$
# \underbrace{\mathbb{E}_{r}\, \mathrm{KL}\big(P_T(\cdot\mid r)\,\|\,P_S\big)}_{\text{OPSD objective}}
# \;=\; \underbrace{\mathrm{KL}\big(\bar P_T\,\|\,P_S\big)}_{\text{ideal objective}}
# \;+\; \underbrace{\sum_r p(r)\,\mathrm{KL}\big(P_T(\cdot\mid r)\,\|\,\bar P_T\big)}_{I(Y_t;\,R \mid x,\, y_{<t})} .
# $$
#
# The last term does not contain $P_S$: it is the same number for every student. So the OPSD objective is minimised
# at $P_S = \bar P_T$, where it equals the mutual information — never zero unless the teacher ignores $r$.
#
# The hand-built case: two possible references $a, b$ with belief $0.6 / 0.4$ and four candidate tokens. Told $a$, the
# teacher mostly writes token 0; told $b$, token 1.

# %%
# NBVAL_CHECK_OUTPUT
case = th.hand_built_case()
print("P_T(.|a)    =", [num(p, 2) for p in case.teacher_RV[0]])
print("P_T(.|b)    =", [num(p, 2) for p in case.teacher_RV[1]])
print("marginal P̄_T =", [num(p, 2) for p in case.marginal_V])
students = {
    "copy a": case.teacher_RV[0],
    "P̄_T": case.marginal_V,
    "copy b": case.teacher_RV[1],
    "uniform": torch.full((4,), 0.25, dtype=torch.float64),
}
named = {name: case.decompose(p) for name, p in students.items()}
for name, (opsd, ideal, mi) in named.items():
    print(f"{name:8s} opsd {num(opsd)} = ideal {num(ideal)} + MI {num(mi)}   "
          f"opsd - (ideal + MI) = 0 to 1e-12: {abs(opsd - ideal - mi) < 1e-12}")

# %% [markdown]
# The identity is not special to this case. Over 200 random beliefs, teachers and students (Dirichlet draws, a
# fixed seed), it holds to rounding error, and the MI term is the same whichever student we plug in:

# %%
# NBVAL_CHECK_OUTPUT
max_gap, max_mi_spread, min_mi = 0.0, 0.0, float("inf")
for i in range(200):
    random_case = th.random_case(seed=1000 + i, num_r=3, vocab=6)
    rows = np.array([random_case.decompose(th.random_distribution(seed=5000 + 10 * i + j, vocab=6))
                     for j in range(5)])
    max_gap = max(max_gap, np.abs(rows[:, 0] - rows[:, 1] - rows[:, 2]).max())
    max_mi_spread = max(max_mi_spread, rows[:, 2].max() - rows[:, 2].min())
    min_mi = min(min_mi, rows[:, 2].min())
print("opsd - (ideal + MI) = 0 to 1e-12 in all 1000 (case, student) pairs:", max_gap < 1e-12)
print("MI identical across the 5 students of each case (to 1e-12):", max_mi_spread < 1e-12)
print("MI >= 0 in every case:", min_mi >= 0.0)

# %% [markdown]
# Now sweep the student along the segment $P_S(\alpha) = (1-\alpha)\,P_T(\cdot\mid a) + \alpha\,P_T(\cdot\mid b)$,
# from "copy the teacher told $a$" to "copy the teacher told $b$". It passes through $\bar P_T$ at
# $\alpha = p(b) = 0.4$.
# The blue band (ideal) touches zero there; the red band (MI) has constant width. The dashed green line is what OPSD
# actually minimises in practice, the generalized Jensen–Shannon divergence with $\beta = 0.5$ (`generalized_jsd`):
# it has no exact decomposition, but it has a floor too.

# %%
alphas = np.linspace(0.0, 1.0, SIZES["sweep_points"])
sweep = th.decomposition_sweep(case, th.mixture_path(case.teacher_RV[0], case.teacher_RV[1], alphas))
print(f"largest |opsd - (ideal + MI)| on the sweep: {np.abs(sweep['gap']).max():.1e}")
print(f"OPSD objective is smallest at alpha = {alphas[sweep['opsd'].argmin()]:.3f}, "
      f"where it equals {sweep['opsd'].min():.4f} (MI = {sweep['mi'][0]:.4f})")
print(f"E_r JSD_0.5 is smallest at alpha = {alphas[sweep['jsd'].argmin()]:.3f}, "
      f"where it is {sweep['jsd'].min():.4f} > 0")
save(th.plot_decomposition(alphas, sweep, marginal_alpha=float(case.prior_R[1]), named_students=named),
     "01_decomposition")

# %% [markdown]
# ## 2. Token by token: an autoregressive model we can enumerate
#
# A response is a sequence $y = (y_0, \dots, y_{T-1})$. We build a **Bayes-consistent** joint from explicit tables,
#
# $$ P(r, y \mid x) = P(r \mid x) \prod_t P_T(y_t \mid r, y_{<t}), $$
#
# so the teacher's conditionals and everything on the student's side come from one distribution. After the prefix
# $y_{<t}$ the belief about $r$ is the posterior $P(r \mid x, y_{<t})$, and Theorem 1 holds at every prefix with
# $p(r) = P(r \mid x, y_{<t})$. Averaging its MI term over prefixes gives the per-position information
# $I(Y_t; R \mid x, Y_{<t})$, and the chain rule of mutual information says these add up to the information the whole
# response carries about $r$:
#
# $$ \sum_t I(Y_t; R \mid x, Y_{<t}) = I(Y; R \mid x). $$
#
# The hand-built model (`th.hand_built_sequence_model`): three possible answers $r \in \{0,1,2\}$ with
# $P(r\mid x) = (0.5, 0.3, 0.2)$, three tokens, four positions — narration that ignores $r$ ($t=0$), a *decisive step*
# that depends strongly on $r$ ($t=1$), narration that echoes the step ($t=2$), and the answer ($t=3$), which depends on
# $r$ and on the step. The left side of the chain rule is computed position by position from the conditionals; the
# right side directly from the $3 \times 3^4$ enumerated joint.

# %%
# NBVAL_CHECK_OUTPUT
model = th.hand_built_sequence_model()
position_names = ["narration", "decisive step", "echo", "answer"]
mi_T = th.position_mutual_information(model)
total_mi = th.sequence_mutual_information(model)
for t, name in enumerate(position_names):
    print(f"I(Y_{t}; R | x, Y<{t}) = {num(mi_T[t])}   ({name})")
print(f"sum over positions = {num(mi_T.sum())}, I(Y; R | x) from the joint = {num(total_mi)}, "
      f"equal to 1e-12: {abs(mi_T.sum() - total_mi) < 1e-12}")
_, joint_RS = th.enumerate_sequences(model)
print("the enumerated joint sums to 1 (to 1e-12):", abs(float(joint_RS.sum()) - 1.0) < 1e-12)

# %% [markdown]
# The floor sits exactly where $r$ changes what should be written: zero on narration, large on the decisive step,
# smaller on the answer (by then the step has already revealed much of $r$).
#
# The token-level decomposition for a student that is *not* Bayes-optimal shows the other half. The "prior-only"
# student averages the teacher over $P(r\mid x)$ and ignores what the prefix says about $r$. Averaged over its own
# rollouts (OPSD trains on student samples), its per-token OPSD objective is ideal + MI at every position; its ideal
# part is non-zero only at the answer, the one place where the prefix carries evidence it ignores.

# %%
# NBVAL_CHECK_OUTPUT
decomposition = th.token_decomposition(model, th.prior_only_student(model))
for t in range(model.length):
    gap = decomposition["opsd"][t] - decomposition["ideal"][t] - decomposition["mi"][t]
    print(f"t={t}: opsd {num(decomposition['opsd'][t])} = ideal {num(decomposition['ideal'][t])} "
          f"+ MI {num(decomposition['mi'][t])}   exact to 1e-12: {abs(gap) < 1e-12}")
bayes = th.token_decomposition(model, th.bayes_student(model))
print("Bayes student: ideal part = 0 at every position (to 1e-12):", bool(np.abs(bayes["ideal"]).max() < 1e-12))

# %%
save(th.plot_position_information(mi_T, total_mi, decomposition, position_names), "01_position_information")

# %% [markdown]
# ## 3. Training on the OPSD objective: a floor in the loss, noise in the student
#
# OPSD does not see the expectation over $r$: each training example comes with *one* $r$. Take a student with free
# logits $\theta \in \mathbb{R}^4$ at the single position of §1 and run plain SGD from uniform logits, either
#
# * on the OPSD loss $\mathrm{KL}(P_T(\cdot\mid r)\,\|\,P_S)$ with **one $r \sim p(r)$ drawn per step**, or
# * on the ideal loss $\mathrm{KL}(\bar P_T\,\|\,P_S)$.
#
# Before every step we log both objectives exactly. Because the expected OPSD gradient *is* the ideal gradient (§4),
# SGD on OPSD is unbiased SGD on the ideal objective: with a decaying (Robbins–Monro) learning rate it converges to
# $\bar P_T$ too. What it cannot do is show it in its loss, which never goes below the floor; and at a constant
# learning rate the student never settles — after each step it leans toward the $r$ it was just shown.

# %%
runs = {
    "ideal, lr 1.0": th.sgd_on_single_position(case, "ideal", SIZES["sgd_steps"], lr=1.0, seed=SEED),
    "OPSD one r/step, lr 1.0": th.sgd_on_single_position(case, "opsd", SIZES["sgd_steps"], lr=1.0, seed=SEED),
    "OPSD one r/step, lr 0.2": th.sgd_on_single_position(case, "opsd", SIZES["sgd_steps"], lr=0.2, seed=SEED),
    "OPSD one r/step, lr 1/(1+k/100)": th.sgd_on_single_position(case, "opsd", SIZES["sgd_steps"], lr=1.0,
                                                                 seed=SEED, schedule="inverse"),
}
tail = SIZES["sgd_steps"] // 2
mi = runs["ideal, lr 1.0"]["mi"]
print(f"floor I(Y; R) = {mi:.4f}")
for label, run in runs.items():
    print(f"{label:32s} last {tail} steps: OPSD objective {num(run['opsd'][tail:].mean())}, "
          f"loss it descended {num(run['sampled_loss'][tail:].mean())}, "
          f"ideal KL {max(0.0, run['ideal'][tail:].mean()):.1e}")
after = th.student_after_each_r(runs["OPSD one r/step, lr 1.0"], num_r=2, burn_in=tail)
print(f"OPSD, lr 1.0: P_S(token 0) right after a step with r=a: {after[0, 0]:.3f}, with r=b: {after[1, 0]:.3f}  "
      f"(P̄_T(token 0) = {float(case.marginal_V[0]):.3f})")
save(th.plot_sgd(runs, mi), "01_sgd_floor")

# %% [markdown]
# (Both panels: exact objectives, smoothed by an exponential moving average, against the step on a log axis.)
# Left: the ideal run drives the OPSD objective straight down to the floor $I(Y;R)$ and no further — a learning curve
# that plateaus at a positive value although the student is already perfect. The OPSD runs hover above the floor.
# Right: the ideal loss goes to zero (machine precision) for the ideal run; the constant-rate OPSD runs stall at a
# noise level that shrinks with the learning rate, and only the decaying rate keeps bringing it down. The last printed line is
# the toy version of leakage: the student's output depends on which privileged $r$ it saw last — information it will
# never have at test time. In this convex one-position toy the pull averages out; in a network with shared parameters
# nothing guarantees that it does.

# %% [markdown]
# ## 4. Proposition 1: the per-sample gradient is the ideal gradient plus zero-mean noise
#
# **Which gradient.** Everything here is the gradient with respect to the student's parameters $\theta$ of one
# position's forward-KL distillation loss, prefix held fixed (no gradient through the sampling of $y$), with $r$ drawn
# from the student-side belief $p(r) = P(r\mid x, y_{<t})$:
#
# $$ g(r) = \nabla_\theta\, \mathrm{KL}\big(P_T(\cdot\mid r)\,\|\,P_{S,\theta}\big) = -\sum_v P_T(v\mid r)\, s_v,
# \qquad s_v = \nabla_\theta \log P_{S,\theta}(v). $$
#
# The ideal gradient is $\bar g = \nabla_\theta \mathrm{KL}(\bar P_T \| P_{S,\theta}) = -\sum_v \bar P_T(v)\, s_v
# = \mathbb{E}_r\, g(r)$, so $\delta(r) = g(r) - \bar g = -\sum_v \big(P_T(v\mid r) - \bar P_T(v)\big)\, s_v$ has
# $\mathbb{E}_r\,\delta = 0$. With $C_{vv'} = \mathrm{Cov}_r\big[P_T(v\mid r), P_T(v'\mid r)\big]$, its **exact**
# total variance is
#
# $$ \mathbb{E}_r \|\delta\|^2 = \sum_{v, v'} C_{vv'}\, \langle s_v, s_{v'} \rangle
# = \underbrace{\sum_v \mathrm{Var}_r\big[P_T(v\mid r)\big]\, \|s_v\|^2}_{\text{the diagonal formula}}
# + \sum_{v \ne v'} C_{vv'}\, \langle s_v, s_{v'} \rangle . $$
#
# So the commonly stated formula is the diagonal part. It is exact when the scores of different tokens are
# orthogonal — e.g. when the coordinates are the probabilities themselves, $s_v = e_v / P_S(v)$ — and in general it is
# **neither exact nor a bound**. For the usual softmax over free logits, $s_v = e_v - P_S$, and because every row of
# $C$ sums to zero (each $P_T(\cdot\mid r)$ sums to 1) all terms involving $P_S$ cancel:
#
# $$ \delta(r) = \bar P_T - P_T(\cdot\mid r), \qquad
# \mathbb{E}_r\|\delta\|^2 = \sum_v \mathrm{Var}_r\big[P_T(v\mid r)\big]
# \quad \text{(softmax logits, exact, independent of the student)} , $$
#
# while the diagonal formula gives $\sum_v \mathrm{Var}_r[P_T(v\mid r)]\,(1 - 2P_S(v) + \|P_S\|^2)$ — too small at a
# uniform student, too large at a student peaked on a token whose probability the teacher does not vary.
#
# First the exact check: enumerate $r$, compute every $g(r)$ and $\bar g$ by autograd, and compare with the formulas.

# %%
# NBVAL_CHECK_OUTPUT
features_VD = torch.randn(4, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
parameterisations = {
    "softmax logits": (th.softmax_logits, torch.zeros(4, dtype=torch.float64)),
    "probabilities": (th.probability_coordinates, torch.full((4,), 0.25, dtype=torch.float64)),
    "linear softmax": (th.linear_softmax(features_VD), torch.zeros(3, dtype=torch.float64)),
}
prior_R, teacher_RV = case.prior_R, case.teacher_RV
for name, (log_student, theta) in parameterisations.items():
    grads_RD, ideal_D = th.per_r_gradients(prior_R, teacher_RV, log_student, theta)
    delta_RD = grads_RD - ideal_D
    enumerated = float(prior_R @ (delta_RD**2).sum(1))
    scores_VD = th.student_scores(log_student, theta)
    exact = th.prop1_variance_exact(prior_R, teacher_RV, scores_VD)
    diagonal = th.prop1_variance_diagonal(prior_R, teacher_RV, scores_VD)
    print(f"{name:15s} E_r delta = 0: {float((prior_R @ delta_RD).norm()) < 1e-12}  "
          f"E_r|delta|^2 = {num(enumerated)}  exact formula = {num(exact)} (match: {abs(enumerated - exact) < 1e-12})  "
          f"diagonal formula = {num(diagonal)} (match: {abs(enumerated - diagonal) < 1e-12})")
softmax_grads, softmax_ideal = th.per_r_gradients(prior_R, teacher_RV, th.softmax_logits, torch.zeros(4))
print("softmax logits: delta(r) = P̄_T - P_T(.|r) (to 1e-12):",
      bool(((softmax_grads - softmax_ideal) - (case.marginal_V - teacher_RV)).abs().max() < 1e-12))
print("softmax logits: E|delta|^2 = sum_v Var_r P_T(v|r) =", num(th.prop1_variance_softmax(prior_R, teacher_RV)))

# %% [markdown]
# Now the check the proposition is about: draw many $r \sim p(r)$, form $\delta(r) = g(r) - \bar g$ for each draw and
# measure its mean and variance. Left panel: the hand-built case at the students above (error bars: two standard
# errors of the sampled mean of $\|\delta\|^2$). Right panel: random cases and random softmax-logit students, from
# nearly uniform to sharply peaked; the exact formula lies on the diagonal, the diagonal formula scatters on both sides.

# %%
bars = {
    name: th.gradient_noise(prior_R, teacher_RV, log_student, theta, SIZES["noise_samples"], seed=SEED + k)
    for k, (name, (log_student, theta)) in enumerate(parameterisations.items())
}
for name, result in bars.items():
    z_exact = (result["empirical_second_moment"] - result["formula_exact"]) / result["empirical_se"]
    z_diagonal = (result["empirical_second_moment"] - result["formula_diagonal"]) / result["empirical_se"]
    print(f"{name:15s} sampled E|delta|^2 = {result['empirical_second_moment']:.4f} ± {result['empirical_se']:.4f}; "
          f"|mean delta| = {result['empirical_mean_norm']:.4f}; exact formula off by {z_exact:+.1f} s.e., "
          f"diagonal formula by {z_diagonal:+.1f} s.e.")

scatter = {"empirical": [], "exact": [], "diagonal": []}
for i in range(SIZES["noise_cases"]):
    noise_case = th.random_case(seed=2000 + i, num_r=3, vocab=5)
    scale = 4.0 * i / max(1, SIZES["noise_cases"] - 1)  # from uniform students to peaked ones
    theta = scale * torch.randn(5, generator=torch.Generator().manual_seed(3000 + i), dtype=torch.float64)
    result = th.gradient_noise(noise_case.prior_R, noise_case.teacher_RV, th.softmax_logits, theta,
                               SIZES["noise_samples"], seed=SEED + i)
    for key, value in (("empirical", "empirical_second_moment"), ("exact", "formula_exact"),
                       ("diagonal", "formula_diagonal")):
        scatter[key].append(result[value])
scatter = {key: np.array(values) for key, values in scatter.items()}
print(f"{SIZES['noise_cases']} random softmax students: median |sampled/exact - 1| = "
      f"{np.median(np.abs(scatter['empirical'] / scatter['exact'] - 1)):.3f}; diagonal/exact ranges from "
      f"{(scatter['diagonal'] / scatter['exact']).min():.2f} to {(scatter['diagonal'] / scatter['exact']).max():.2f}")
save(th.plot_gradient_noise(bars, scatter), "01_gradient_noise")

# %% [markdown]
# The noise is the paper's leakage mechanism in miniature: each $\delta(r)$ pushes the student toward the
# behaviour of the teacher told *this* $r$ — behaviour that $x$ alone cannot justify. Its size is set by how much the
# teacher's next-token distribution varies with $r$, i.e. by the same quantity that sets the MI floor.

# %% [markdown]
# ## 5. Theorem 4: what RLSD uses instead is a belief update
#
# RLSD keeps the reward as the only source of *direction* and uses the teacher only to redistribute credit among the
# sampled tokens, through the evidence weight (for $A > 0$, before clipping)
#
# $$ w_t = \frac{P_T(y_t \mid r, y_{<t})}{P_S(y_t \mid y_{<t})} . $$
#
# In a Bayes-consistent model whose student is the Bayes student $P_S(y_t\mid y_{<t}) = \sum_r P(r\mid x, y_{<t})\,
# P_T(y_t\mid r, y_{<t})$, Bayes' rule $P(r\mid x, y_{\le t}) = P(r \mid x, y_{<t})\, P_T(y_t\mid r, y_{<t}) /
# P_S(y_t\mid y_{<t})$ turns this into
#
# $$ w_t = \frac{P(r \mid x, y_{\le t})}{P(r \mid x, y_{<t})}, \qquad
# \prod_{t} w_t = \frac{P(r \mid x, y)}{P(r \mid x)} : $$
#
# how much token $t$ raised the model's belief in the correct answer, and the product telescopes. We compute the left
# side from the teacher's conditionals and the right side independently, by summing the enumerated joint over all
# completions of each prefix. Take the correct answer $r = 1$ and two responses: one whose decisive step agrees with it,
# one whose step points elsewhere.

# %%
# NBVAL_CHECK_OUTPUT
r_true = 1
examples = {}
for label, y in (("step agrees", (0, 1, 1, 1)), ("step disagrees", (0, 2, 2, 2))):
    weights_T = th.evidence_weights(model, y, r_true)
    updates_T = th.belief_updates(model, y, r_true)
    beliefs_K = th.belief_trajectory(model, y, r_true)
    examples[label] = (y, weights_T.numpy(), updates_T.numpy(), beliefs_K.numpy())
    print(f"{label}: y = {y}")
    for t in range(model.length):
        print(f"  t={t} ({position_names[t]:13s}) w_t = {num(weights_T[t])}   belief update = {num(updates_T[t])}")
    product, ratio = float(weights_T.prod()), th.posterior_ratio(model, y, r_true)
    print(f"  prod w_t = {num(product)}, P(r|x,y)/P(r|x) = {num(ratio)}, equal to 1e-12: {abs(product - ratio) < 1e-12}"
          f"; w_t = update at every t (1e-12): {bool((weights_T - updates_T).abs().max() < 1e-12)}")

# %% [markdown]
# Narration tokens get weight exactly 1: they say nothing about $r$, so RLSD leaves their credit at the group
# advantage. The decisive step gets the largest weight (up when it agrees with the answer, down when it does not) —
# credit goes where the belief moves. The same holds for every response and every $r$ of random Bayes-consistent
# models:

# %%
# NBVAL_CHECK_OUTPUT
worst_update, worst_product = 0.0, 0.0
for i in range(20):
    random_model = th.random_sequence_model(seed=4000 + i, num_r=3, vocab=3, length=3)
    sequences_ST, _ = th.enumerate_sequences(random_model)
    for y in sequences_ST.tolist():
        for r in range(random_model.num_r):
            weights_T = th.evidence_weights(random_model, y, r)
            rel = (weights_T / th.belief_updates(random_model, y, r) - 1).abs().max()
            worst_update = max(worst_update, float(rel))
            ratio = th.posterior_ratio(random_model, y, r)
            worst_product = max(worst_product, abs(float(weights_T.prod()) / ratio - 1))
print("20 random models x 27 responses x 3 answers: w_t = belief update (relative 1e-12):", worst_update < 1e-12)
print("product of w_t = P(r|x,y)/P(r|x) (relative 1e-12):", worst_product < 1e-12)

# %%
save(th.plot_evidence(examples, r_true), "01_evidence_weights")

# %% [markdown]
# ## 6. RLSD's hidden distillation term
#
# RLSD's token advantage is $\hat A_t = A\,\big((1-\lambda) + \lambda\, c_t\big)$ with
# $c_t = \mathrm{clip}\big(e^{\operatorname{sign}(A)\,\delta_t}, 1-\varepsilon_w, 1+\varepsilon_w\big)$ and
# $\delta_t = \log P_T(y_t) - \log \pi(y_t)$ (stop-gradient). Define
#
# $$ \varphi_+(\delta) = \mathrm{clip}(e^{\delta}, 1\pm\varepsilon_w) - 1, \qquad
#    \varphi_-(\delta) = 1 - \mathrm{clip}(e^{-\delta}, 1\pm\varepsilon_w) . $$
#
# **Proposition 2 (exact, with the clip).** $\hat A_t = A + \lambda\,|A|\,\varphi_{\operatorname{sign} A}(\delta_t)$.
#
# *Proof.* $\hat A_t = A + \lambda A (c_t - 1)$. If $A > 0$, $c_t = \mathrm{clip}(e^{\delta_t})$ and
# $\lambda A(c_t - 1) = \lambda|A|\varphi_+(\delta_t)$. If $A < 0$, $c_t = \mathrm{clip}(e^{-\delta_t})$ and
# $\lambda A (c_t - 1) = \lambda |A| (1 - c_t) = \lambda|A|\varphi_-(\delta_t)$. If $A = 0$ both sides are 0. $\square$
#
# Because $1 \in [1-\varepsilon_w, 1+\varepsilon_w]$ and the clip is monotone, both $\varphi_\pm$ are non-decreasing,
# vanish only at $\delta = 0$, have **the sign of $\delta$**, and $|\varphi_\pm| \le \varepsilon_w$. So RLSD is GRPO
# plus a term $\lambda|A|\varphi(\delta_t)$ that raises the tokens the teacher prefers ($\delta_t > 0$) and lowers the
# others **whatever the reward**: per token, $\operatorname{sign}\hat A_t = \operatorname{sign} A$ (the paper's
# "direction isolation"), but the *difference* from GRPO follows the teacher. The split is
# `rlsd.algorithm.rlsd_drift_decomposition`. First the identity, checked on random inputs against the trainer's own
# `rlsd_token_advantages`, and a negative control: the same identity with $\varphi$ defined without the clip.

# %%
# NBVAL_CHECK_OUTPUT
from rlsd import algorithm as alg  # noqa: E402

worst, worst_clipless, sign_ok, bound_ok, clipped_tokens = 0.0, 0.0, True, True, 0
for i in range(200):
    g = torch.Generator().manual_seed(6000 + i)
    adv_B = torch.randn(8, generator=g, dtype=torch.float64)
    teacher_BT = -3 * torch.rand(8, 16, generator=g, dtype=torch.float64)
    student_BT = -3 * torch.rand(8, 16, generator=g, dtype=torch.float64)
    mask_BT = torch.ones(8, 16)
    lam, eps = float(torch.rand(1, generator=g)), 0.05 + 0.9 * float(torch.rand(1, generator=g))
    total_BT = alg.rlsd_token_advantages(adv_B, teacher_BT, student_BT, mask_BT, lam, eps)
    grpo_BT, drift_BT = alg.rlsd_drift_decomposition(adv_B, teacher_BT, student_BT, mask_BT, lam, eps)
    worst = max(worst, float((total_BT - grpo_BT - drift_BT).abs().max()))
    delta_BT, positive_B1 = teacher_BT - student_BT, adv_B[:, None] > 0
    clipless_BT = torch.where(positive_B1, th.phi(delta_BT, True, None), th.phi(delta_BT, False, None))
    worst_clipless = max(worst_clipless, float((total_BT - grpo_BT - lam * adv_B.abs()[:, None] * clipless_BT)
                                               .abs().max()))
    sign_ok &= bool(torch.equal(torch.sign(drift_BT), torch.sign(delta_BT)))
    bound_ok &= bool((drift_BT.abs() <= lam * eps * adv_B.abs()[:, None] + 1e-15).all())
print(f"200 random batches (8 x 16 tokens, random λ, ε): max |Â - (A + λ|A|φ(δ))| = {worst:.0e} (exact to 1e-14: "
      f"{worst < 1e-14})")
print(f"negative control, φ without the clip: max error {worst_clipless:.2f} "
      f"(the identity fails: {worst_clipless > 0.1})")
print("sign(extra term) = sign(δ) on every token, for A > 0 and A < 0 alike:", sign_ok)
print("|extra term| <= λ·ε·|A| on every token:", bound_ok)

# %% [markdown]
# **Proposition 3 (the group average).** Take one-token responses $y_i \sim \pi = \mathrm{softmax}(\theta)$,
# $i = 1..G$, rewards $R_i$ independent of the responses, and the on-policy surrogate
# $\frac1G\sum_i \hat A_i \log\pi(y_i)$ (the PPO surrogate's gradient at ratio 1). Its expected gradient is
#
# $$ \mathbb{E}\, g \;=\; \underbrace{0}_{\text{GRPO part}}
# \;+\; \lambda\,\big(m_+\, d_+ + m_-\, d_-\big), \qquad
# d_\pm = \mathbb{E}_{y\sim\pi}\big[\varphi_\pm(\delta(y))\,\nabla_\theta\log\pi(y)\big],\quad
# m_\pm = \mathbb{E}\big[\max(\pm A_i, 0)\big], $$
#
# and $m_+ = m_- =: m$.
#
# *Proof.* $A_i$ is a function of the rewards only, hence independent of $y_i$:
# $\mathbb{E}[A_i \nabla\log\pi(y_i)] = \mathbb{E}[A_i]\,\mathbb{E}_y[\nabla\log\pi(y)] = 0$ because
# $\mathbb{E}_y \nabla\log\pi(y) = \nabla \sum_y \pi(y) = 0$. Likewise
# $\mathbb{E}\big[\lambda|A_i|\varphi_{\operatorname{sign}A_i}(\delta(y_i))\nabla\log\pi(y_i)\big]
# = \lambda \sum_\pm \mathbb{E}[|A_i|\,\mathbb 1\{\pm A_i > 0\}]\, d_\pm$. Every group's advantages sum to zero
# ($A_i$ is centred by the group mean and divided by one common scale), so $\sum_i A_i^+ = \sum_i A_i^-$ in every
# group and $m_+ = m_-$ by exchangeability. $\square$
#
# So in expectation GRPO does nothing here (the reward carries no information about the response) and RLSD moves the
# student anyway: $\frac1G\sum_i \lambda|A_i|\varphi(\delta(y_i))\nabla\log\pi(y_i)$ is an $|A|$-weighted
# sampled-token estimator of a pull toward the teacher. Which pull? Inside the clip ($\varphi_+ = e^\delta - 1$,
# $\varphi_- = 1 - e^{-\delta}$) it is exact in closed form, since $\pi(y)\,e^{\delta(y)} = P_T(y)$:
#
# $$ d_+ = P_T - \pi = -\nabla_\theta \mathrm{KL}(P_T \,\|\, \pi), \qquad
#    d_- = -\tfrac12 \nabla_\theta\, \chi^2(\pi \,\|\, P_T), $$
#
# and since $\varphi_\pm(\delta) = \delta + O(\delta^2)$, both are $\mathbb{E}_y[\delta\,\nabla\log\pi] =
# -\nabla_\theta\mathrm{KL}(\pi\,\|\,P_T)$ to first order: $\mathbb{E}\,g \approx 2\lambda m\,(-\nabla_\theta
# \mathrm{KL}(\pi\|P_T))$. The clip bounds the pull: $\|d_\pm\|$ cannot exceed what $|\varphi| = \varepsilon_w$ gives.
#
# The check does not use any of these formulas: `th.drift_gradient_enumerated` enumerates every tuple of $G = 4$
# responses over $V = 5$ tokens and every tuple of rewards ($5^4 \times 2^4 = 10{,}000$ groups), computes $\hat A$ with
# `rlsd.algorithm` and the expected gradient with autograd; `th.drift_gradient_factorised` evaluates the right side
# (with $m_\pm$ from the $2^G$ reward tuples through `group_advantages`).

# %%
# NBVAL_CHECK_OUTPUT
student_V = torch.tensor([0.40, 0.25, 0.15, 0.12, 0.08], dtype=torch.float64)
teacher_V = torch.tensor([0.30, 0.27, 0.17, 0.10, 0.16], dtype=torch.float64)
theta_V, lam, eps, p_success, G = torch.log(student_V), 0.5, 0.2, 0.5, 4
exact = th.drift_gradient_enumerated(theta_V, teacher_V, torch.full((5,), p_success, dtype=torch.float64), G,
                                     lam, eps)
factorised = th.drift_gradient_factorised(student_V, teacher_V, p_success, G, lam, eps)
divergences = th.divergence_gradients(theta_V, teacher_V)
first_order = 2 * lam * factorised["m_pos"] * -divergences["reverse_kl"]
print("δ(v) =", [num(d, 3) for d in th.log_ratio(student_V, teacher_V)])
print(f"m+ = {num(factorised['m_pos'])}, m- = {num(factorised['m_neg'])} (equal: "
      f"{abs(factorised['m_pos'] - factorised['m_neg']) < 1e-12})")
grpo_max = float(exact["grpo"].abs().max())
print(f"GRPO: max |E g| = {grpo_max:.0e} (0 to 1e-15: {grpo_max < 1e-15})")
print("RLSD: E g =", [num(x, 5) for x in exact["rlsd"]], f"(norm {float(exact['rlsd'].norm()):.4f})")
print(f"RLSD (enumerated) = λ(m+ d+ + m- d-) (factorised) to 1e-15: "
      f"{float((exact['rlsd'] - factorised['drift']).abs().max()) < 1e-15}; "
      f"= its drift part to 1e-15: {float((exact['rlsd'] - exact['drift_part']).abs().max()) < 1e-15}")
print(f"cosine(E g, -∇KL(π ‖ P_T)) = {th.cosine(exact['rlsd'], -divergences['reverse_kl']):.4f}; "
      f"|E g| / |2λm·∇KL| = {float(exact['rlsd'].norm() / first_order.norm()):.3f}")
inside = [float((th.drift_direction(student_V, teacher_V, None, True) + divergences["forward_kl"]).abs().max()),
          float((th.drift_direction(student_V, teacher_V, None, False) + 0.5 * divergences["chi2"]).abs().max())]
print(f"without the clip: d+ = -∇KL(P_T ‖ π) and d- = -½∇χ²(π ‖ P_T) to 1e-15: {max(inside) < 1e-15}")
dependent = th.drift_gradient_enumerated(theta_V, teacher_V, torch.tensor([0.9, 0.5, 0.5, 0.5, 0.1],
                                         dtype=torch.float64), G, lam, eps)
print(f"negative control, reward depends on the response: GRPO max |E g| = "
      f"{float(dependent['grpo'].abs().max()):.4f} (not 0: {float(dependent['grpo'].abs().max()) > 1e-3})")
# %% [markdown]
# A Monte-Carlo over sampled groups (G = 8, λ 0.5, ε 0.2, rewards independent of the response) only estimates this
# direction. Exactly, its cosine with $-\nabla\mathrm{KL}(\pi\|P_T)$ does not depend on λ, G or the success rate at
# all (they enter through the scalar $\lambda m$); it depends on the case, through how much of δ the clip cuts. For
# this case at $G = 8$, the exact value and a 50,000-group Monte-Carlo through `rlsd.algorithm`:

# %%
# NBVAL_CHECK_OUTPUT
exact8 = th.drift_gradient_factorised(student_V, teacher_V, 0.5, 8, 0.5, 0.2)
mc_mean, mc_se = th.monte_carlo_group_gradient(theta_V, teacher_V, 0.5, 8, 0.5, 0.2, num_groups=50_000, seed=SEED)
z = (mc_mean - exact8["drift"]) / mc_se
print(f"G = 8: m = {num(exact8['m_pos'])}; exact cosine with -∇KL(π ‖ P_T) = "
      f"{th.cosine(exact8['drift'], -divergences['reverse_kl']):.4f}")
print(f"Monte-Carlo (50,000 groups): cosine {th.cosine(mc_mean, -divergences['reverse_kl']):.2f}, "
      f"largest |MC - exact| = {float(z.abs().max()):.1f} s.e. (< 4: {float(z.abs().max()) < 4})")

# %% [markdown]
# **How the drift scales.** $\|\mathbb{E} g\| = \lambda\, m(p, G)\, \|d_+ + d_-\|$: linear in λ; through $m$, it is
# zero when every group has equal rewards ($p \in \{0, 1\}$) and largest at $p = 1/2$; through $\varphi$, it grows
# with the teacher–student gap until the clip saturates, where $|\varphi| = \varepsilon_w$. The exact $m(p, G)$:

# %%
# NBVAL_CHECK_OUTPUT
for group_size in (4, 8):
    row = [th.advantage_moments(p, group_size) for p in (0.05, 0.1, 0.25, 0.5, 0.75, 0.9)]
    print(f"G = {group_size}: m(p) at p = 0.05, 0.1, 0.25, 0.5, 0.75, 0.9:", [num(r["pos"], 3) for r in row],
          f" E[A] = 0: {max(abs(r['mean']) for r in row) < 1e-12}")

# %% [markdown]
# Over random cases (student and teacher Dirichlet draws over $V = 5$; the teacher moved away from the student by a
# varying amount, $P_T \propto \pi\, e^{s z}$) the direction of the exact drift against $-\nabla\mathrm{KL}(\pi\|P_T)$:
# near the student it is the reverse-KL gradient; far away the clip flattens φ and the direction turns, more so for
# the smaller ε. (`negative_only`, which keeps only $d_-$, points almost the same way: it changes the size, below.)

# %%
cosines = {}
kl_N = []
cases = []
for i in range(SIZES["drift_cases"]):
    rng = np.random.default_rng(7000 + i)
    pi_V = torch.tensor(rng.dirichlet(np.ones(5)), dtype=torch.float64)
    scale = 10 ** rng.uniform(-1.5, 0.7)
    t_V = torch.softmax(torch.log(pi_V) + scale * torch.tensor(rng.standard_normal(5), dtype=torch.float64), -1)
    cases.append((pi_V, t_V))
    kl_N.append(float((pi_V * (torch.log(pi_V) - torch.log(t_V))).sum()))
kl_N = np.array(kl_N)
for label, eps_w, negative_only in (("ε 0.2", 0.2, False), ("ε 0.5", 0.5, False),
                                    ("ε 0.2, negative_only", 0.2, True)):
    cos_N = np.array([th.cosine(th.drift_gradient_factorised(pi_V, t_V, 0.5, 8, 0.5, eps_w, negative_only)["drift"],
                                -th.divergence_gradients(torch.log(pi_V), t_V)["reverse_kl"]) for pi_V, t_V in cases])
    cosines[label] = (kl_N, cos_N)
    near, far = kl_N < 0.01, kl_N > 0.3
    print(f"{label:22s} cosine: median {np.median(cos_N):.3f}; KL < 0.01: min {cos_N[near].min():.3f}; "
          f"KL > 0.3: median {np.median(cos_N[far]):.3f}, min {cos_N[far].min():.3f}")

# %% [markdown]
# **The teacher's habit.** Let the teacher be the student plus a habit, $P_T = (1-h)\,\pi + h\, e_{\text{habit}}$ (the
# self-teacher's tendency to open with "the reference says…"). Then δ takes two values, $a = \log(1 - h + h/\pi_h)$
# on the habit token and $c = \log(1-h)$ on every other one, and the rate at which the habit's probability grows per
# unit logit step is exactly
#
# $$ \frac{d\pi_h}{d\eta} = \lambda\,\pi_h^2\, \|e_h - \pi\|^2\,\big[m_+(\varphi_+(a) - \varphi_+(c))
# + m_-(\varphi_-(a) - \varphi_-(c))\big] \;\le\; 4\lambda\varepsilon_w m\, \pi_h^2\, \|e_h - \pi\|^2 $$
#
# (*proof*: φ is constant on the non-habit tokens, so $d_\pm = \pi_h(\varphi_\pm(a) - \varphi_\pm(c))(e_h - \pi)$, and
# $d\pi_h/d\eta = \pi_h (g_h - \pi\cdot g)$ for a logit step along $g$), with equality once the clip saturates on
# both values of δ. It grows with $h$, with λ and, up to saturation, with ε: the dose is
# $\lambda\varepsilon_w$. `negative_only` drops the $m_+$ term. Below for $\pi_h = 0.1$, $G = 8$, $p = 1/2$ at the
# four (λ0, ε_w) cells of the sensitivity study. (Two curves nearly coincide: λ 1.0 with `negative_only` and λ 0.5
# without it, both at ε 0.2 — `negative_only` is worth about half of λ, exactly half once the clip saturates.)

# %%
# NBVAL_CHECK_OUTPUT
habit_student = torch.tensor([0.35, 0.25, 0.2, 0.1, 0.1], dtype=torch.float64)
HABIT = 3
strengths = np.linspace(0.0, 0.6, 61)
cells = [(0.5, 0.2), (1.0, 0.2), (0.5, 0.5), (1.0, 0.5)]
colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
habit = {"strength": strengths, "title": f"(d) pull toward the habit (π_h = 0.1, G = 8, p = 0.5)"}
worst_closed = 0.0
for (lam0, eps_w), colour in zip(cells, colours):
    for negative_only, ls in ((False, "-"), (True, "--")):
        rates = []
        for h in strengths:
            t_V = th.habit_teacher(habit_student, HABIT, h)
            out = th.drift_gradient_factorised(habit_student, t_V, 0.5, 8, lam0, eps_w, negative_only)
            rates.append(th.habit_rate(out["drift"], habit_student, HABIT))
            closed = th.habit_rate_closed_form(habit_student, HABIT, h, 0.0 if negative_only else out["m_pos"],
                                               out["m_neg"], lam0, eps_w)
            worst_closed = max(worst_closed, abs(rates[-1] - closed))
        label = f"λ {lam0}, ε {eps_w}" + (", negative_only" if negative_only else "")
        habit[label] = (np.array(rates), ls, colour)
m8 = th.advantage_moments(0.5, 8)["pos"]
pi_h = float(habit_student[HABIT])
spread = float(((torch.eye(5, dtype=torch.float64)[HABIT] - habit_student) ** 2).sum())  # ‖e_h - π‖²
print(f"closed form = factorised gradient to 1e-15 at every h and cell: {worst_closed < 1e-15}")
for (lam0, eps_w) in cells:
    full, neg = habit[f"λ {lam0}, ε {eps_w}"][0], habit[f"λ {lam0}, ε {eps_w}, negative_only"][0]
    bound = 4 * lam0 * eps_w * m8 * pi_h**2 * spread
    print(f"λ {lam0}, ε {eps_w}: rate at h = 0.05 / 0.2 / 0.6: {full[5]:.5f} / {full[20]:.5f} / {full[60]:.5f} "
          f"(bound 4λεmπ_h²‖e_h-π‖² = {bound:.5f}); negative_only / full at h = 0.05: {neg[5] / full[5]:.2f}, "
          f"at h = 0.6: {neg[60] / full[60]:.2f}; rate <= bound for all h: {bool((full <= bound + 1e-15).all())}, "
          f"= bound at h = 0.6 (clip saturated): {abs(full[60] - bound) < 1e-15}")
print("monotone non-decreasing in h for every cell:", all(np.all(np.diff(v[0]) >= -1e-15)
                                                        for k, v in habit.items() if k not in ("strength", "title")))

# %% [markdown]
# **What the two switches do to the drift.** `negative_only` keeps only the failed responses' term: the expected
# drift becomes $\lambda m\, d_-$ exactly, $d_- = -\frac12\nabla\chi^2(\pi\|P_T)$ inside the clip — the extra term
# is no longer present for every reward sign, only for $A < 0$. `thought_only` removes the drift from every token
# outside the thought span exactly and leaves the thought tokens' drift as it was: a habit that lives in the thought
# (a mention of the reference) is pulled in just the same. Exactly, for the hand case above and a two-position
# response (a thought token, then an answer token; enumerated over $G = 3$ groups):

# %%
# NBVAL_CHECK_OUTPUT
full = th.drift_gradient_factorised(student_V, teacher_V, 0.5, 8, 0.5, 0.2)["drift"]
neg = th.drift_gradient_factorised(student_V, teacher_V, 0.5, 8, 0.5, 0.2, negative_only=True)["drift"]
neg_enum = th.drift_gradient_enumerated(theta_V, teacher_V, torch.full((5,), 0.5, dtype=torch.float64), 4, 0.5, 0.2,
                                        negative_only=True)
neg_fact4 = th.drift_gradient_factorised(student_V, teacher_V, 0.5, 4, 0.5, 0.2, negative_only=True)["drift"]
print(f"negative_only: enumerated = λ·m·d- to 1e-15: {float((neg_enum['rlsd'] - neg_fact4).abs().max()) < 1e-15}; "
      f"GRPO part still 0: {float(neg_enum['grpo_part'].abs().max()) < 1e-15}")
print(f"negative_only: |drift| / |full drift| = {float(neg.norm() / full.norm()):.3f}, cosine with the full drift "
      f"{th.cosine(neg, full):.4f}, with -∇KL(π ‖ P_T) {th.cosine(neg, -divergences['reverse_kl']):.4f}")
thought_case = (torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)),
                torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64))
answer_case = (torch.log(torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)),
               torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64))
off = th.thought_only_gradients(thought_case, answer_case, 0.5, 3, 0.5, 0.2, thought_only=False)
on = th.thought_only_gradients(thought_case, answer_case, 0.5, 3, 0.5, 0.2, thought_only=True)
print(f"thought_only off: |E g| thought {float(off[0].norm()):.5f}, answer {float(off[1].norm()):.5f}")
print(f"thought_only on:  |E g| thought {float(on[0].norm()):.5f} (unchanged to 1e-15: "
      f"{float((on[0] - off[0]).abs().max()) < 1e-15}), answer {float(on[1].abs().max()):.0e} (0 to 1e-15: "
      f"{float(on[1].abs().max()) < 1e-15})")

# %%
phi_delta = np.linspace(-1.0, 1.0, 401)
phi_curves = {"delta": phi_delta}
for eps_w in (0.2, 0.5):
    phi_curves[f"φ₊ (A > 0), ε {eps_w}"] = th.phi(phi_delta, True, eps_w).numpy()
    phi_curves[f"φ₋ (A < 0), ε {eps_w}"] = th.phi(phi_delta, False, eps_w).numpy()
bars = {"grpo": exact["grpo"].numpy(), "rlsd": exact["rlsd"].numpy(), "drift": factorised["drift"].numpy(),
        "first_order": first_order.numpy(),
        "title": "(b) exact expected gradient, rewards independent of y\n(V = 5, G = 4, λ 0.5, ε 0.2, p = 0.5)"}
save(th.plot_hidden_drift(phi_curves, bars, cosines, habit), "01_hidden_drift")

# %% [markdown]
# ## What this means for RLSD
#
# * Matching the answer-conditioned teacher's full distribution (OPSD) carries an irreducible cost $I(Y_t; R \mid x,
#   y_{<t})$ at every token where $r$ matters, and its gradient carries zero-mean but $r$-specific noise whose size is
#   set by the same variation of the teacher across $r$ (§1–§4).
# * RLSD never asks the student to *match* the teacher. It reads one number per sampled token, $w_t$, which in a
#   Bayes-consistent model is exactly the belief update about the answer (§5), and only lets it rescale — within
#   $[1-\varepsilon_w, 1+\varepsilon_w]$ — an advantage whose sign the verifier decides.
#
# * But RLSD is not only a credit re-weighting. Exactly, $\hat A_t = A + \lambda|A|\varphi(\delta_t)$ with
#   $\varphi$ of the sign of $\delta_t$ (§6): averaged over a group it is GRPO plus an $|A|$-weighted, clipped pull
#   toward the answer-conditioned teacher — $-\nabla\mathrm{KL}(\pi\|P_T)$ to first order — that acts even when the
#   reward carries no information about the response, and pulls in the teacher's habits at a rate set by
#   $\lambda\varepsilon_w$. `negative_only` keeps only its $\chi^2$ half (about half the size: exactly half once the
#   clip saturates);
#   `thought_only` removes it outside the thought span only.
#
# The toy models here are exact but tiny; whether a real network's teacher pass is close enough to Bayes-consistent
# for $w_t$ to behave like a belief update is an empirical question for the later notebooks.
