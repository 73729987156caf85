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
# # 05 — Where RLSD puts the credit: token heatmaps
#
# GRPO gives every token of a response the same advantage $A$. RLSD keeps the *direction* of $A$ and lets the
# model's own answer-conditioned pass redistribute its *magnitude*:
#
# $$\hat A_t = A\,\big((1-\lambda) + \lambda\,\mathrm{clip}(w_t, 1-\varepsilon_w, 1+\varepsilon_w)\big),\qquad
#   w_t = \exp\!\big(\mathrm{sign}(A)\,[\log P_T(y_t) - \log P_S(y_t)]\big)$$
#
# where $P_T$ is the same network shown the reference final answer. By Theorem 4 (notebook 01), $w_t$ for a
# correct response is how much token $t$ raised the model's belief in the correct answer. The paper's Figure 6
# shows heatmaps where credit (or blame) lands on the decisive steps — the key count, the wrong equation — and
# little on narration. Here we draw the same heatmaps for the tiny model on the testbed, and then *measure* what the
# paper shows qualitatively: the share of the redistributed credit that lands on decisive tokens.
#
# **Which model.** The shipped warm start `data/tiny-sft`, used both as student and as teacher (the teacher prompt
# adds the reference answer). This is exactly RLSD's teacher at step 0, where λ is largest.
#
# **Token roles** come from the testbed's solution grammar
# (`red 3 , green 5 , blue 4 , yellow 1 , 3 plus 4 = 7`): *relevant read-outs* (counts of the colours the answer
# depends on), *other read-outs*, *operands* (copies of read-outs), the *result*, the *answer*, and *narration*
# (colour names, commas, "plus", tags). Decisive = relevant read-outs, result and answer.
#
# **What to expect from an information-only teacher.** The teacher knows the answer and nothing else (its SFT
# targets are the student's careless demonstrator conditioned on reaching the reference). In the *pinned* families
# (`count`, `pair`) the answer determines each relevant read-out, so the teacher's evidence should land on those
# tokens; on the read-outs the answer does not constrain it has no information, so they should get little.

# %% tags=["parameters"]
PROFILE = os.environ.get("RLSD_PROFILE", "cpu")

# %%
import json
from pathlib import Path

import torch
from IPython.display import HTML, display

from rlsd.config import SHIPPED_TINY
from rlsd.credit import (DECISIVE, LABELS, credit_html, credit_shares, credit_shares_by, label_tokens, plot_credit,
                         token_credit)
from rlsd.evaluate import evaluate
from rlsd.model import ModelSpec, load_policy
from rlsd.plots import FIGURES_DIR, save_figure
from rlsd.testbed import load_splits

os.chdir(Path(FIGURES_DIR).parent)  # the repository root: relative paths such as data/tiny-sft resolve from here

N_PROBLEMS = {"smoke": 16, "cpu": 600}[PROFILE]
LAMBDA = 0.5  # λ0, the paper's value at the first step
SAVE_FIGURES = PROFILE != "smoke"
torch.manual_seed(0)

model, processor = load_policy(ModelSpec(path=SHIPPED_TINY))
model.eval()
_, _, test = load_splits(n_train=0, n_val=None, n_test=N_PROBLEMS)
print(f"profile={PROFILE}: {len(test)} test problems")

# %% [markdown]
# ## Sample responses, then score every token under both prompts
#
# The responses are the student's own samples at the paper's validation settings (T 0.7, top-p 0.8, top-k 20).
# For each one, `rlsd.credit.token_credit` runs the student prompt and the teacher prompt over the same tokens
# and returns $\Delta_t$, $w_t$ and the RLSD credit. A response shown out of its group gets $A=+1$ if correct and
# $A=-1$ otherwise.

# %%
sampled = evaluate(model, processor, test, fmt="student", seed=0, progress=False)
credits = []
for problem, response in zip(test, sampled.responses):
    c = token_credit(model, processor, problem, response, lam=LAMBDA)
    c.labels = label_tokens(problem, c.tokens)
    credits.append(c)
n_correct = sum(c.reward > 0 for c in credits)
print(f"{len(credits)} responses, {n_correct} correct ({n_correct / len(credits):.1%})")

# %% [markdown]
# ## Heatmaps (Figure 6 style)
#
# A correct and an incorrect response of a pinned family side by side. Each token is coloured by its weight relative
# to GRPO's uniform advantage, $(1-\lambda) + \lambda\,\mathrm{clip}(w_t)$, on one scale fixed by the clip
# ($1 \pm \lambda\varepsilon_w$, so nothing saturates and the two panels compare): red = this token carries more of
# the advantage than uniform — more credit on the correct response, more blame on the incorrect one; blue = less.
# The tag under each token is its role.

# %%
def pick(correct: bool, family: str = "count"):
    for problem, c in zip(test, credits):
        if (c.reward > 0) == correct and problem.meta["family"] == family:
            return problem, c
    return next(((p, c) for p, c in zip(test, credits) if (c.reward > 0) == correct), (None, None))


shown = []
for correct in (True, False):
    problem, c = pick(correct)
    if c is not None:
        title = f"{'correct' if correct else 'incorrect'}: {problem.question}  (gold {problem.answer})"
        shown.append((title, c))
fig = plot_credit(shown)
if SAVE_FIGURES:
    save_figure(fig, "05_token_credit")
    (FIGURES_DIR / "05_token_credit.html").write_text(
        "\n".join(credit_html(c, title) for title, c in shown))
fig

# %%
for title, c in shown:
    display(HTML(credit_html(c, title)))

# %% [markdown]
# ## Per family and per role
#
# Mean $|\Delta_t|$ (nats) and share of the moved credit, per token role, in each family. For an information-only
# teacher, relevant read-outs should stand out in the pinned families and other read-outs should not.

# %%
by_family = credit_shares_by(credits, [p.meta["family"] for p in test])
roles = ("relevant_readout", "other_readout", "operand", "result", "answer", "narration")
print(f"{'family':8s} {'n':>4s} " + " ".join(f"{r[:14]:>16s}" for r in roles) + "   (mean |Δ| nats / moved share)")
for fam, v in by_family.items():
    cells = []
    for r in roles:
        d = v[r]["mean_abs_delta"]
        cells.append("—".rjust(16) if d is None else f"{d:7.3f} / {v[r]['credit_moved_share']:5.1%}".rjust(16))
    print(f"{fam:8s} {v['n']:4d} " + " ".join(cells))

# %% [markdown]
# ## How much of the redistributed credit lands on decisive tokens?
#
# For every token, RLSD moves $|\mathrm{clip}(w_t)-1|$ of its weight away from uniform (times $\lambda$). Summed
# over many responses, we report for each token role its share of the tokens and its share of the moved credit.
# If the teacher's evidence were uninformative, the two shares would match; the ratio (moved share ÷ token share)
# says how strongly RLSD concentrates on a role.

# %%
rows = []
for subset, name in ((credits, "all"), ([c for c in credits if c.reward > 0], "correct (credit)"),
                     ([c for c in credits if c.reward == 0], "incorrect (blame)")):
    if not subset:
        continue
    shares = credit_shares(subset)
    decisive_tokens = sum(shares[k]["token_share"] for k in DECISIVE)
    decisive_moved = sum(shares[k]["credit_moved_share"] for k in DECISIVE)
    rows.append((name, len(subset), decisive_tokens, decisive_moved, shares))
    print(f"{name:18s} n={len(subset):4d}  decisive tokens: {decisive_tokens:.1%} of tokens, "
          f"{decisive_moved:.1%} of moved credit  (concentration x{decisive_moved / max(decisive_tokens, 1e-9):.2f})")

# %%
print(f"{'role':18s} {'token share':>12s} {'moved share':>12s} {'ratio':>7s} {'mean |Δ|':>9s}")
for label in LABELS:
    v = rows[0][4][label]
    if v["token_share"] == 0:
        continue
    print(f"{label:18s} {v['token_share']:12.1%} {v['credit_moved_share']:12.1%} "
          f"{v['credit_moved_share'] / v['token_share']:7.2f} {v['mean_abs_delta']:9.3f}")

# %%
summary = {name: {"n": n, "decisive_token_share": dt, "decisive_moved_share": dm} for name, n, dt, dm, _ in rows}
if SAVE_FIGURES:
    (FIGURES_DIR / "05_credit_shares.json").write_text(json.dumps({"profile": PROFILE, "lambda": LAMBDA, "shares": summary,
                               "per_role": rows[0][4], "per_family": by_family}, indent=2))
summary

# %% [markdown]
# **Reading the numbers.** A concentration above 1 on decisive roles means the teacher's evidence moves credit to
# the tokens that decide the answer — the paper's Figure 6 claim, quantified. The per-role table shows where the rest
# goes. These numbers describe the warm-start model's teacher at λ = 0.5; during training the teacher is a snapshot
# of the policy re-synced every 10 steps and λ decays to 0, so the redistribution fades by design.
