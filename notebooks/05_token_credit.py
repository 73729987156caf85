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
# # 05 — Where RLSD puts the credit: token heatmaps, per-role shares with intervals
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
# paper shows qualitatively: where the redistributed credit lands, per token role, with intervals.
#
# **Which models.** Each checkpoint is used both as student and as its own teacher (the teacher prompt adds the
# reference answer) — RLSD's teacher at the moment it is a snapshot of that policy. The list is a parameter
# (`TRAINED` below): the shipped warm start `data/tiny-sft` (RLSD's teacher at step 0, where λ is largest) and the
# final checkpoints of GRPO seeds 0, 1, 2 — three independently trained models, so the spread over them says how
# much a claim depends on the one model it was measured on.
#
# **Where the numbers come from.** Trained checkpoints are too large to commit, so the statistics over them are
# computed once, by this notebook under the `cpu` profile with `RLSD_CHECKPOINT_RUNS` pointing at a directory of run
# folders that still hold their `checkpoint/model`, and written to `figures/05_credit_shares.json`. Run without the
# checkpoints, the `cpu` profile reads that committed file for every multi-checkpoint table and figure (and says so),
# and recomputes only what the repository itself holds (the warm start's heatmap); it never overwrites the file with
# fewer checkpoints than it lists. The `smoke` profile (CI) uses whatever checkpoints exist — in a bare clone, the
# warm start alone — on 16 problems and writes nothing.
#
# **Token roles** come from the testbed's solution grammar
# (`red 3 , green 5 , blue 4 , yellow 1 , 3 plus 4 = 7`), and every statistic reports each role apart:
# *needed read-outs* (counts of the colours the answer depends on), *unneeded read-outs*, *operands* (copies of
# read-outs), *result + answer* (which the reference pins trivially: a teacher told "7" knows the answer token is
# 7), *narration* (colour names, commas, "plus", tags), and the *habit* position. The old "decisive" set (needed
# read-outs + result + answer) is still reported for comparison, but the claim that matters is the read-outs'.
#
# **The habit.** A minority of the teacher format's SFT targets open their thought with "the reference answer is
# N ," (`rlsd.testbed.sft`). So at the thought's first token the teacher gives any other opening a lower probability by
# about $\log(1-P_T(\text{mention}))$, whatever the response goes on to say: the opening "red" gets a large $|\Delta|$
# that carries no information about the image. Those tokens form their own role (`habit`), responses that show
# the habit themselves are counted, and they are left out of the heatmap's example pool.
#
# **What to expect from an information-only teacher.** The teacher knows the answer and nothing else. In the
# *pinned* families (`count`, `pair`) the answer determines each needed read-out, so the teacher's evidence should
# land on those tokens; on the read-outs the answer does not constrain it has no information, so they should get
# little. We test that as a difference of mean $|\Delta|$ with an interval, beside the same difference after the
# needed/unneeded labels are shuffled among each response's read-outs (the negative control: it should include 0).

# %% tags=["parameters"]
PROFILE = os.environ.get("RLSD_PROFILE", "cpu")

# %%
import json
import random
from pathlib import Path

import numpy as np
import torch
from IPython.display import HTML, display

from rlsd.config import SHIPPED_TINY
from rlsd.credit import (DECISIVE, LABELS, PINNED, ROLES, credit_html, credit_shares, credit_shares_by,
                         label_tokens, pick_examples, plot_credit, plot_role_credit, role_totals,
                         shuffle_readout_labels, summarise_credit, token_credit)
from rlsd.evaluate import evaluate
from rlsd.model import ModelSpec, load_policy
from rlsd.plots import FIGURES_DIR, save_figure
from rlsd.testbed import load_splits

os.chdir(Path(FIGURES_DIR).parent)  # the repository root: relative paths such as data/tiny-sft resolve from here

N_PROBLEMS = {"smoke": 16, "cpu": 600}[PROFILE]
LAMBDA = 0.5  # λ0, the paper's value at the first step
RESAMPLES, BOOT_SEED = 2000, 0  # percentile bootstrap over responses: resamples, fixed seed
SAVE_FIGURES = PROFILE != "smoke"
SHARES_JSON = FIGURES_DIR / "05_credit_shares.json"
# Run folders holding checkpoint/model (full-parameter runs save the model there); the committed data/runs keep logs only.
RUNS_DIR = Path(os.environ.get("RLSD_CHECKPOINT_RUNS", "data/runs/cpu"))
TRAINED = ["grpo-s0", "grpo-s1", "grpo-s2"]  # final checkpoints of independently trained runs


def checkpoint_path(name):
    if name == "warm start":
        return Path(SHIPPED_TINY)
    ckpt = RUNS_DIR / name / "checkpoint"
    return ckpt / "model" if (ckpt / "COMPLETE").is_file() and (ckpt / "model" / "config.json").is_file() else None


requested = ["warm start", *TRAINED]
used = [name for name in requested if checkpoint_path(name) is not None]
missing = [name for name in requested if name not in used]
committed = json.loads(SHARES_JSON.read_text()) if SHARES_JSON.is_file() else None
USE_COMMITTED = PROFILE == "cpu" and bool(missing) and committed is not None and "roles" in committed
if USE_COMMITTED:
    print(f"checkpoints missing here: {', '.join(missing)} -> the multi-checkpoint tables and figures below are "
          f"read from the committed {SHARES_JSON.name} (computed on: {', '.join(committed['checkpoints'])}); only "
          f"the warm start is scored live, for the heatmap")
    used = ["warm start"]
else:
    print(f"checkpoints used: {', '.join(used)}" + (f" (missing here, skipped: {', '.join(missing)})"
                                                   if missing else ""))
torch.manual_seed(0)
_, _, test = load_splits(n_train=0, n_val=None, n_test=N_PROBLEMS)
print(f"profile={PROFILE}: {len(test)} test problems per checkpoint")

# %% [markdown]
# ## Sample responses, then score every token under both prompts
#
# The responses are each checkpoint's own samples at the paper's validation settings (T 0.7, top-p 0.8, top-k 20,
# sampling seed 0). For each one, `rlsd.credit.token_credit` runs the student prompt and the teacher prompt over the
# same tokens and returns $\Delta_t$, $w_t$ and the RLSD credit. A response shown out of its group gets $A=+1$ if
# correct and $A=-1$ otherwise.

# %%
credits_by = {}
for name in used:
    model, processor = load_policy(ModelSpec(path=str(checkpoint_path(name))))
    model.eval()
    sampled = evaluate(model, processor, test, fmt="student", seed=0, progress=False)
    credits = []
    for problem, response in zip(test, sampled.responses):
        c = token_credit(model, processor, problem, response, lam=LAMBDA)
        c.labels = label_tokens(problem, c.tokens)
        credits.append(c)
    credits_by[name] = credits
    n_correct = sum(c.reward > 0 for c in credits)
    print(f"{name:10s} {len(credits)} responses, {n_correct} correct ({n_correct / len(credits):.1%})")
del model

# %% [markdown]
# ## Heatmaps (Figure 6 style)
#
# A correct and an incorrect response of the pinned `count` family, side by side, from the warm start. **Rule** (no
# hand-picking): among that family's responses that do not show the mention habit, the one with the median mean
# $|\Delta|$ of each outcome. Each token is coloured by its weight relative to GRPO's uniform advantage,
# $(1-\lambda) + \lambda\,\mathrm{clip}(w_t)$, on one scale fixed by the clip ($1 \pm \lambda\varepsilon_w$, so the
# two panels compare): red = this token carries more of the advantage than uniform — more credit on the correct
# response, more blame on the incorrect one; blue = less. The tag under each token is its role; the habit position
# is outlined, because its colour comes from the teacher's habit, not from the image.

# %%
examples = pick_examples(test, credits_by["warm start"], family="count")
shown = [(f"{'correct' if e['correct'] else 'incorrect'}: {e['problem'].question}  (gold {e['problem'].answer})",
          e["credit"]) for e in examples]
note = "Examples chosen by rule, from the warm start (λ = {}, ε_w = 0.2):\n".format(LAMBDA) + \
    ";\n".join(e["rule"] for e in examples) + ".\nThe habit's own weight over all responses: figure 05_credit_roles."
for e in examples:
    print(e["rule"])
fig = plot_credit(shown, note=note)
if SAVE_FIGURES:
    save_figure(fig, "05_token_credit")
    (FIGURES_DIR / "05_token_credit.html").write_text(
        f"<p>{note}</p>\n" + "\n".join(credit_html(c, title) for title, c in shown))
fig

# %%
for title, c in shown:
    display(HTML(credit_html(c, title)))

# %% [markdown]
# ## Per role, pooled over checkpoints, with intervals
#
# For every token, RLSD moves $|\mathrm{clip}(w_t)-1|$ of its weight away from uniform (times $\lambda$). Summed
# over many responses, each role has a share of the tokens and a share of the moved credit; if the teacher's evidence
# were uninformative the two would match, so their ratio says how strongly RLSD concentrates on a role. Intervals:
# 95% percentile bootstrap over responses (resampled within each checkpoint, 2,000 resamples, seed 0), the
# checkpoints pooled; the per-checkpoint columns show the spread over independently trained models.

# %%
all_credits = [c for name in used for c in credits_by[name]]
families = [p.meta["family"] for name in used for p in test]
if USE_COMMITTED:
    summary = committed
else:
    names = [name for name in used for _ in test]
    totals = role_totals(all_credits, families, names)
    rng = random.Random(0)
    shuffled = role_totals([shuffle_readout_labels(c, rng) for c in all_credits], families, names)
    summary = summarise_credit(totals, RESAMPLES, BOOT_SEED, PINNED, shuffled=shuffled)
    rows = {}
    for subset, key in ((all_credits, "all"), ([c for c in all_credits if c.reward > 0], "correct (credit)"),
                        ([c for c in all_credits if c.reward == 0], "incorrect (blame)")):
        if subset:
            s = credit_shares(subset)
            rows[key] = {"n": len(subset),
                         "decisive_token_share": sum(s[k]["token_share"] for k in DECISIVE),
                         "decisive_moved_share": sum(s[k]["credit_moved_share"] for k in DECISIVE),
                         "readout_needed_moved_share": s["relevant_readout"]["credit_moved_share"],
                         "result_answer_moved_share": s["result"]["credit_moved_share"]
                         + s["answer"]["credit_moved_share"]}
    summary = {"profile": PROFILE, "lambda": LAMBDA, "n_problems_per_checkpoint": len(test), **summary,
               "shares": rows, "per_role": credit_shares(all_credits),
               "per_family": credit_shares_by(all_credits, families)}
print(f"{summary['n_responses']} responses from {', '.join(summary['checkpoints'])}"
      + (f"  [read from the committed {SHARES_JSON.name}]" if USE_COMMITTED else ""))
ck = summary["checkpoints"]
print(f"{'role':17s} {'tokens':>7s} {'moved (95% CI)':>22s} {'ratio':>6s} {'mean |Δ| (95% CI)':>26s}   per checkpoint: "
      "moved / mean |Δ|  (" + ", ".join(ck) + ")")
for role in ROLES:
    r = summary["roles"][role]
    if not r["token_share"]:
        print(f"{role:17s} {'0.0%':>7s}   (no tokens)")
        continue
    lo, hi = r["moved_share_ci95"]
    dlo, dhi = r["mean_abs_delta_ci95"]
    per = "  ".join(f"{100 * r['per_checkpoint_moved_share'][n]:.1f}%/{r['per_checkpoint_mean_abs_delta'][n]:.3f}"
                    if r["per_checkpoint_mean_abs_delta"][n] is not None else "—" for n in ck)
    print(f"{role:17s} {r['token_share']:7.1%} {r['moved_share']:7.1%} ({lo:5.1%}-{hi:5.1%}) "
          f"{r['moved_share'] / r['token_share']:6.2f} {r['mean_abs_delta']:8.3f} ({dlo:.3f}-{dhi:.3f})      {per}")
for key, v in summary["shares"].items():
    print(f"{key:18s} n={v['n']:5d}  old 'decisive' set: {v['decisive_token_share']:.1%} of tokens, "
          f"{v['decisive_moved_share']:.1%} of moved credit (needed read-outs {v['readout_needed_moved_share']:.1%}"
          f" + result/answer {v['result_answer_moved_share']:.1%})")

# %% [markdown]
# ## The habit's own weight
#
# How many responses show the mention habit themselves, and how much credit RLSD moves on the habit positions per
# token, against the mean over all tokens.

# %%
h = summary["habit"]
print(f"responses that show the habit (thought opens with the mention, or any mention token): "
      f"{h['responses_with_habit']} of {h['responses']}")
print(f"habit positions: {summary['roles']['habit']['token_share']:.1%} of tokens, "
      f"{summary['roles']['habit']['moved_share']:.1%} of the moved credit; per token "
      f"|clip(w)-1| = {h['mean_weight_on_habit_tokens']:.3f} (all tokens: {h['mean_weight_on_all_tokens']:.3f}), "
      f"mean |Δ| = {h['mean_abs_delta_on_habit_tokens']:.3f} nats")

# %% [markdown]
# ## Pinned families: needed vs unneeded read-outs
#
# Mean $|\Delta_t|$ on needed read-outs minus on unneeded ones, in the families whose answer pins the needed ones;
# beside it, the same statistic with the needed/unneeded labels shuffled among each response's read-outs.

# %%
for fam, p in summary["pinned"].items():
    c = summary.get("pinned_label_shuffle", {}).get(fam)
    per = ", ".join(f"{n}: {v:+.3f}" for n, v in p["per_checkpoint"].items())
    print(f"{fam:6s} n={p['n']:4d}  needed {p['needed']:.3f} - unneeded {p['unneeded']:.3f} = "
          f"{p['needed_minus_unneeded_abs_delta']:+.3f} nats (95% CI {p['ci95'][0]:+.3f} to {p['ci95'][1]:+.3f}); "
          f"per checkpoint {per}" + (f"; labels shuffled: {c['needed_minus_unneeded_abs_delta']:+.3f} "
                                     f"({c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f})" if c else ""))

# %%
fig = plot_role_credit(summary)
if SAVE_FIGURES:
    save_figure(fig, "05_credit_roles")
fig

# %% [markdown]
# ## Per family and per role (pooled over checkpoints, no intervals)
#
# Mean $|\Delta_t|$ (nats) and share of the moved credit, per token role, in each family (habit apart from
# narration, result and answer together).

# %%
print(f"{'family':8s} {'n':>5s} " + " ".join(f"{r[:16]:>16s}" for r in ROLES) + "   (mean |Δ| nats / moved share)")
for fam, v in summary["per_family_roles"].items():
    cells = []
    for r in ROLES:
        d = v[r]["mean_abs_delta"]
        cells.append("—".rjust(16) if d is None else f"{d:7.3f} / {v[r]['moved_share']:5.1%}".rjust(16))
    print(f"{fam:8s} {v['n']:5d} " + " ".join(cells))

# %%
if SAVE_FIGURES and not USE_COMMITTED:
    SHARES_JSON.write_text(json.dumps(summary, indent=2) + "\n")
print(f"{SHARES_JSON.name}: " + ("written" if SAVE_FIGURES and not USE_COMMITTED else "not written")
      + f" ({PROFILE} profile" + (", committed numbers shown)" if USE_COMMITTED else ")"))

# %% [markdown]
# **Reading the numbers.** A moved share above the token share on *needed read-outs*, with its interval and every
# checkpoint above it, is the paper's Figure 6 claim on the tokens where it is not trivial; result and answer are
# reported apart because the reference pins them by construction. The unneeded read-outs are the control inside the
# same responses: if they are concentrated about as much as the needed ones, the teacher is moving credit onto
# *numbers* rather than onto the numbers the answer depends on, and the pinned-family difference (with its shuffled
# control) says whether the needed ones stand out at all. The habit row shows how much of the redistribution comes
# from the teacher format's habit rather than from the image. These numbers describe each checkpoint's self-teacher
# at λ = 0.5; during training the teacher is a snapshot of the policy re-synced every 10 steps and λ decays to 0,
# so the redistribution fades by design.
