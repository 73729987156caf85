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
# # 02 — OPSD leakage: does the student learn to talk about a reference it never saw?
#
# **The paper's claim.** On-policy self-distillation (OPSD) trains the student $\pi_\theta(\cdot\mid x)$ to match, token
# by token and over the full vocabulary, the same network shown privileged information $r$,
# $\pi(\cdot\mid x, r)$. Notebook 01 showed why this is risky: the objective has an irreducible floor, the mutual
# information $I(Y_t; R\mid x, y_{<t})$, and its per-sample gradient carries zero-mean noise that pulls the student
# toward $r$-specific behaviour it cannot justify from $x$. The paper reports the consequence on Qwen3-VL-8B: an
# OPSD-trained model writes things like *"Given that the reference solution uses 9 values…"* at test time, where no
# reference exists; the frequency of such **leakage rises monotonically** over training, and OPSD's **validation
# accuracy peaks early** (around step 15 of 100) **and then declines**. Its Theorem 3 (the trilemma) adds that
# switching to an **online** teacher (the current policy, prompted with $r$) buys improvement at the price of stability,
# and still leaks.
#
# **What we measure, on the CPU testbed** (`rlsd/testbed/scenes.py`: counting and arithmetic over noisy grids of coloured
# squares, a ~1M-parameter Qwen3-VL, an SFT warm start `data/tiny-sft`):
#
# Leakage, three ways (the paper counts leaks in sampled outputs; which samples matters here):
#
# * `leak_rate` — the share of test responses (student prompt, no reference anywhere) that mention a reference
#   (`rlsd.testbed.mentions_reference`), sampled under the paper's **validation decoding** (T 0.7, top-p 0.8,
#   top-k 20);
# * `rollout_leak_rate` — the same share in the **T = 1 training rollouts** (no top-p, no top-k), logged by the
#   trainer at every optimizer step (64 rollouts per step; drawn with a trailing 10-step moving average);
# * `mention_prob` — the mean probability the student gives to *opening* its response with the teacher format's
#   mention, "the reference answer is" (one forward pass per test prompt), i.e. the rate at which an unrestricted
#   T = 1 sample would open with it. The nucleus of validation decoding keeps only the most likely tokens up to 80%
#   of the mass, so a mention habit can hold a fifth of the probability and still never be sampled there:
#   `leak_rate` can read 0 while `mention_prob` and the rollouts see the habit. The teacher prompt's own
#   `mention_prob` (the warm start's habit, printed in §1) is drawn as a reference line;
# * `unsupported_answer_rate` — the share whose final answer does not follow from the response's own written steps
#   (`rlsd.testbed.supported_answer`): a leakage signal the model was never taught, since copying an answer it cannot
#   derive shows up as an answer its reasoning does not support;
# * test accuracy, and the teacher–student KL on sampled tokens (`kl_student_teacher`) during training.
#
# **The controls.** The warm start was trained on *both* prompt formats, and a minority of its teacher-format targets
# open with "the reference answer is N ," (`rlsd/testbed/sft.py`, the leakable habit). So the student's weights already hold
# the teacher's habits, and a policy could drift into them **with no teacher in the loss at all** (an earlier probe of this testbed saw
# exactly this in a GRPO run of an earlier probe). **GRPO** is therefore the control: leakage counts as OPSD's only
# where it exceeds GRPO's. **RLSD** uses the same answer-conditioned teacher as OPSD, but only to rescale the
# magnitude of a reward-signed advantage on the sampled tokens, within $[0.8, 1.2]$; the paper's claim is that this
# does not leak.
#
# Everything here is read from the logs of the reproduction (`data/runs/<profile>/`, written by
# `python -m rlsd reproduce`); this notebook never trains under the `cpu` profile. Under the `smoke` profile (CI) it
# runs the same pipeline for a few steps of three methods into a temporary directory, so every cell below is exercised
# on real logs; those numbers mean nothing.

# %% tags=["parameters"]
PROFILE = os.environ.get("RLSD_PROFILE", "cpu")  # "smoke": 3-step runs in a temp dir (CI); "cpu": read data/runs/cpu
SAVE_FIGURES = PROFILE == "cpu"  # only the real reproduction writes figures/

# %%
# %matplotlib inline
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

from IPython.display import Markdown, display  # noqa: E402

from rlsd import runs as R  # noqa: E402
from rlsd.reproduce import notebook_logs  # noqa: E402
from rlsd.config import SHIPPED_TINY  # noqa: E402
import rlsd.claims as C  # noqa: E402
from rlsd.plots import (KL_PANEL, LEAKAGE_METHODS, Panel, leakage_figure, leakage_panels, left_out_note,  # noqa: E402
                        plot_panels, save_figure)
from rlsd.testbed import load_splits, mentions_reference  # noqa: E402

SMOKE_METHODS = ("grpo", "opsd", "opsd_online")  # CI: the control, the fixed teacher and the online teacher
REPO = Path(R.__file__).resolve().parent.parent


def label(method):
    return R.METHOD_LABEL.get(method, method)


DIGITS = {"mention_prob": 2}  # decimals of a percentage, per key (the mention probability starts far below 1%)


def pct(x, digits=1):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def pts(x, digits=1, sign=True):
    """A difference of two rates (signed) or a margin (unsigned), in percentage points."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:{'+' if sign else ''}.{digits}f} pts"


def size(x, digits=1):
    """A margin or a standard deviation, in percentage points."""
    return pts(x, digits, sign=False)


def save(fig, name):
    if SAVE_FIGURES:
        save_figure(fig, name)
    return fig


# %% [markdown]
# ## 0. The criteria: `rlsd.claims`, the same as notebook 03 and the README
#
# This notebook does not define criteria of its own. Its verdicts (§5) are the rows of `rlsd.claims.judge` whose
# topic is leakage, OPSD or the trilemma — the same function, on the same `summary.json`, that writes the claims table
# of notebook 03 and the README, so the three show the same verdicts. Each row has two verdict columns:
#
# * **as declared** — the criterion committed before the v2 runs (commit `ee0956b`, 2026-12-01; printed below from
#   `rlsd.claims`), applied unchanged;
# * **revised, post hoc** — the criterion revised after reading those runs (2026-12-07), with the reason; "= declared"
#   where nothing changed. A revision made after seeing the data is post hoc: both are shown so that neither can be
#   chosen silently.
#
# Differences between methods are **paired by seed** (the same seed draws the same prompts and sampling seeds in
# every method). Step 0 of every curve is the warm start's own test evaluation (`base_eval.json`), shared by all
# runs. The figures and tables of §2–§4 are the evidence the criteria read; they carry no verdicts of their own.

# %%
print(f"declared: commit {C.DECLARED_COMMIT}, {C.DECLARED_DATE}; revised (post hoc): {C.REVISED_DATE}")
CLAIM_TOPICS = ("leakage", "opsd", "trilemma")  # the rows of rlsd.claims.judge this notebook is about


# %% [markdown]
# ## 1. The logs

# %%
LOGS = notebook_logs(PROFILE, SMOKE_METHODS)
raw_runs = R.load_runs(LOGS) if LOGS else {}
base = json.loads((LOGS / "base_eval.json").read_text()) if LOGS and (LOGS / "base_eval.json").exists() else None
runs = R.with_base_eval(raw_runs, base["student/none"] if base else None)
HAVE_LOGS = bool(runs)
configs = {}
if HAVE_LOGS:
    for name, per_seed in runs.items():
        seed = min(per_seed)
        configs[name] = json.loads((LOGS / f"{name}-s{seed}" / "config.json").read_text())
        cfg = configs[name]
        evals = [r["step"] for r in per_seed[seed]["eval"]]
        print(f"{label(name):16s} seeds {sorted(per_seed)}  steps {cfg['steps']}  lr {cfg['lr']:g}  "
              f"test evaluations at steps {evals} on {cfg['eval_problems']} problems")
    TOTAL_STEPS = max(c["steps"] for c in configs.values())
    N_ITEMS = next(iter(configs.values()))["eval_problems"]
    if base:
        b = base["student/none"]
        print(f"\nwarm start (step 0), student prompt: accuracy {pct(b['accuracy'])}, leak rate {pct(b['leak_rate'])}, "
              f"P(opens with the mention) {pct(b.get('mention_prob'), 2)}, "
              f"unsupported answers {pct(b['unsupported_answer_rate'])}")
        t = base["teacher/none"]
        print(f"warm start, teacher prompt (reference shown): accuracy {pct(t['accuracy'])}, "
              f"mentions the reference in {pct(t['leak_rate'])} of responses, "
              f"P(opens with the mention) {pct(t.get('mention_prob'), 2)}")
    sft_config = REPO / SHIPPED_TINY / "sft_config.json"
    if sft_config.exists():
        sft = json.loads(sft_config.read_text())
        print(f"warm start's SFT data: {pct(sft.get('teacher_frac'), 0)} of examples in the teacher format, "
              f"{pct(sft.get('mention_prob'), 0)} of those opening with the mention")

# %% [markdown]
# The two warm-start lines are the starting point of every run: how often the student already mentions a reference
# with none in its prompt, and how strongly the teacher prompt carries the habit the student could pick up (the
# warm start's SFT data opened a share `mention_prob` of its teacher-format thoughts with the mention, printed from
# `data/tiny-sft/sft_config.json` above; validation decoding may still never sample it, which is why the probability
# is reported beside `leak_rate`).
#
# ## 2. Leakage over training: every run with a teacher in its loss, and GRPO
#
# The three measures in separate panels: mean over seeds, with the min–max band over seeds (n per method in the key).
# **GRPO** has no teacher in its loss: it is the control for drift into the warm start's own habit. **RLSD** with λ
# decaying to 0 (the paper's schedule) and with **constant λ** (ms-swift's default, `rlsd_decay_steps=0`) use the same
# answer-conditioned teacher to rescale a reward-signed advantage. OPSD (fixed and online teacher), SDPO and
# GRPO+OPSD distil the teacher directly. The dotted line marks where RLSD's λ reaches 0; no other run has a λ. Every
# test evaluation uses the same problems.

# %%
LEAK_METHODS = [m for m in LEAKAGE_METHODS if m in runs]
LAMBDA_ZERO = (configs["rlsd"]["rlsd_decay_steps"] or None) if "rlsd" in configs else None  # RLSD's λ reaches 0
if HAVE_LOGS:
    fig = leakage_figure(runs, base, LAMBDA_ZERO)
    save(fig, "02_leakage")
    display(fig)

# %% [markdown]
# A leak that copies an answer the model cannot derive also shows as an answer its own written steps do not support
# (`unsupported_answer_rate`, a signal the model was never taught), and leakage may cost accuracy. Online OPSD is
# left out of these two panels (its caption says why).

# %%
SIDE_METHODS = [m for m in LEAK_METHODS if m != "opsd_online"]
SIDE_PANELS = [Panel("eval", "unsupported_answer_rate", "answer not supported by own steps", "% of test responses",
                     100),
               Panel("eval", "accuracy", "test accuracy (student prompt)", "accuracy, %", 100)]
if HAVE_LOGS:
    fig = plot_panels(runs, SIDE_PANELS, "Unsupported answers and test accuracy on the test split",
                      methods=SIDE_METHODS, ncols=2, lambda_zero_step=LAMBDA_ZERO, eval_items=N_ITEMS,
                      note=left_out_note(runs), panel_size=(5.2, 3.4))
    save(fig, "02_unsupported_answers")
    display(fig)

# %% [markdown]
# The same curves as numbers (percent, mean ± std over seeds at each evaluation):

# %%
def curve_table(key, methods):
    curves = {m: R.peak_and_final(runs[m], key) for m in methods}
    steps = sorted({s for c in curves.values() for s in c.get("steps", [])})
    rows = []
    for s in steps:
        row = {"step": s}
        for m, c in curves.items():
            if s in c.get("steps", []):
                i = c["steps"].index(s)
                d = DIGITS.get(key, 1)
                row[label(m)] = f"{100 * c['mean'][i]:.{d}f} ± {100 * c['std'][i]:.{d}f}"
        rows.append(row)
    return R.markdown_table(rows, ["step"] + [label(m) for m in methods])


if HAVE_LOGS:
    for key in ("leak_rate", "mention_prob", "unsupported_answer_rate", "accuracy"):
        display(Markdown(f"**{key}**\n\n" + curve_table(key, LEAK_METHODS)))

# %% [markdown]
# The training rollouts' leak rate as numbers: per seed, the mean of `rollout_leak_rate` over the first and the last
# 10% of steps, and its peak 10-step trailing mean (the curve drawn above), then mean ± std [min–max] over seeds.

# %%
def rollout_peak(per_seed, key="rollout_leak_rate", window=10):
    """Per seed: the largest `window`-step trailing mean of `key` (what the figure draws at its highest)."""
    out = []
    for logs in per_seed.values():
        _, values = R.curve(logs["metrics"], key)
        if len(values) >= window:
            out.append(float(max(sum(values[i - window:i]) / window for i in range(window, len(values) + 1))))
        elif len(values):
            out.append(float(values.mean()))
    return out


if HAVE_LOGS:
    logged = [m for m in LEAK_METHODS if R.window_mean(runs[m], "rollout_leak_rate")]
    if logged:
        display(Markdown(R.markdown_table([{
            "method": label(m),
            "first 10% of steps": R.format_spread(R.window_mean(runs[m], "rollout_leak_rate", 0.1, first=True)),
            "last 10% of steps": R.format_spread(R.window_mean(runs[m], "rollout_leak_rate", 0.1)),
            "peak 10-step mean": R.format_spread(rollout_peak(runs[m]))} for m in logged])))
        missing = [label(m) for m in LEAK_METHODS if m not in logged]
        if missing:
            print("not logged by (their logs predate the metric): " + ", ".join(missing))
    else:
        print("These logs predate `rollout_leak_rate` (the trainer logs it since the leakage revision): no rows.")

# %% [markdown]
# **Teacher–student KL during training.** `kl_student_teacher` is the mean over sampled response tokens of
# $\log P_S(y_t) - \log P_T(y_t)$ — a single-sample estimate of $\mathrm{KL}(P_S \| P_T)$ on the student's own
# rollouts. For OPSD the teacher is the initial policy shown the answer; for RLSD it is a snapshot of the policy
# re-synced every 10 steps, also shown the answer. GRPO has no teacher (its logged value is a placeholder 0 and is
# left out).

# %%
KL_METHODS = [m for m in ("rlsd", "rlsd_const", "opsd", "opsd_online", "grpo_opsd", "sdpo") if m in runs]
if HAVE_LOGS and KL_METHODS:
    fig = plot_panels(runs, [KL_PANEL], "Teacher-student KL during training", smooth=10, methods=KL_METHODS,
                      ncols=1, panel_size=(6.4, 3.6))
    save(fig, "02_teacher_kl")
    display(fig)
    for m in KL_METHODS:
        head = R.window_mean(runs[m], "kl_student_teacher", 0.1, first=True)
        tail = R.window_mean(runs[m], "kl_student_teacher", 0.1)
        print(f"{label(m):16s} KL(student || teacher), mean over the first 10% of steps "
              f"{R.format_spread(head, scale=1, digits=4)}; "
              f"over the last 10% {R.format_spread(tail, scale=1, digits=4)}")

# %% [markdown]
# ## 3. The trilemma: a fixed teacher vs an online one
#
# Theorem 3 of the paper: with shared parameters, a **fixed** teacher (OPSD's default, the initial policy) is stable
# but cannot improve beyond what it already knows and leaks; an **online** teacher (the current policy shown the
# answer, run name `opsd_online`) keeps improving with the student but is unstable, and leaks too. The training reward
# is logged for OPSD although OPSD does not optimise it: it is the accuracy of the rollouts, an on-policy view of
# stability between the test evaluations.

# %%
TRILEMMA_METHODS = [m for m in ("opsd", "opsd_online", "grpo") if m in runs]
if HAVE_LOGS and any(m in runs for m in ("opsd", "opsd_online")):
    fig = plot_panels(runs, [Panel("eval", "accuracy", "test accuracy (student prompt)", "accuracy, %", 100),
                             leakage_panels(base)[2],
                             Panel("metrics", "reward_mean", "training reward (rollout accuracy)", "% correct", 100)],
                      "Fixed vs online teacher", smooth=10, eval_items=N_ITEMS,
                      methods=TRILEMMA_METHODS, ncols=3)
    save(fig, "02_trilemma")
    display(fig)
    for m in TRILEMMA_METHODS:
        pf = R.peak_and_final(runs[m], "accuracy")
        print(f"{label(m):16s} test accuracy: step {pf['first_step']} {pct(pf['first'])} -> peak {pct(pf['peak'])} "
              f"at step {pf['peak_step']} -> final {pct(pf['final'])} ± {pct(pf['final_std'])} at step "
              f"{pf['final_step']} (n={pf['n']})")

# %% [markdown]
# ## 4. What a leaked response looks like
#
# `samples.jsonl` keeps only the first few test problems' responses at each evaluation (`samples_per_eval`, 4 in the
# `cpu` profile), so this section shows examples, not rates. Each leaked response (latest step first, one per
# problem) is printed next to a clean response to the same problem, from GRPO at the same step when there is one.
# The flags are the evaluation's own: `leak` (mentions a reference), `unsupported` (the final answer does not follow
# from the written steps).

# %%
if HAVE_LOGS:
    distill = [m for m in ("opsd", "opsd_online", "grpo_opsd", "sdpo") if m in runs]
    examples = R.leak_examples(runs, distill, clean_methods=["grpo"], k=3)
    ids = {e["id"] for e in examples}  # testbed ids are "test-<index>": regenerate just that prefix of the split
    n_test = max((int(i[5:]) for i in ids if i.startswith("test-") and i[5:].isdigit()), default=-1) + 1
    problems = {p.id: p for p in load_splits(n_train=0, n_val=None, n_test=n_test)[2]} if n_test else {}
    for m in runs:
        leaked, total = R.sample_rate(runs, m, mentions_reference)
        print(f"{label(m):16s} decoded samples that mention a reference: {leaked} of {total}")
    if not examples:
        print("\nNo decoded sample of a distillation run mentions a reference; nothing to show.")
    for e in examples:
        p = problems.get(e["id"])
        print(f"\n=== {e['id']}: {e['question']}  (gold answer {e['answer']})")
        for tag, s in (("LEAKED", e), ("CLEAN ", e["clean"])):
            if s is None:
                print(f"{tag}  (no clean response to this problem among the samples)")
                continue
            flags = R.response_flags(p, s["response"]) if p else {}
            print(f"{tag}  {label(s['method'])} seed {s['seed']} step {s['step']}, reward {s['reward']:.0f}, "
                  f"unsupported {flags.get('unsupported')}:\n        {s['response']!r}")

# %% [markdown]
# ## 5. The claims, judged by `rlsd.claims`
#
# The rows of `rlsd.claims.judge` about leakage, OPSD and the trilemma, on this profile's `summary.json`: the same
# criteria, numbers and verdicts as notebook 03 §5 and the README. "as declared" applies the criterion committed
# before the v2 runs; "revised" the post hoc criterion, with its reason ("= declared": unchanged). Nothing in this
# table is typed by hand.

# %%
SUMMARY = json.loads((LOGS / "summary.json").read_text()) if LOGS and (LOGS / "summary.json").exists() else None
claim_rows = [r for r in C.judge(SUMMARY, None) if r["topic"] in CLAIM_TOPICS] if SUMMARY is not None else []
if claim_rows:
    display(Markdown(C.claims_markdown(claim_rows)))
elif HAVE_LOGS:
    print("summary.json is missing: the reproduction has not finished, so there are no verdicts yet.")

# %% [markdown]
# **Supporting numbers, not verdicts.** Per seed, the peak of each leakage measure over the whole trajectory
# (step 0 included; for the training rollouts, the peak 10-step trailing mean), minus GRPO's, paired by seed: mean ±
# paired standard error (seeds with a positive difference / seeds). These are the quantities the leakage rows above
# read, for every method; they apply no threshold. Where a method's three measures disagree (a habit in
# `mention_prob` and the rollouts that validation decoding never samples), the table above reports them separately
# rather than choosing one.

# %%
def peak_rollout(per_seed, window=10):
    return dict(zip(per_seed, rollout_peak(per_seed, window=window)))


def paired_peak(m, key):
    if key == "rollout_leak_rate":
        a, b = peak_rollout(runs[m]), peak_rollout(runs["grpo"])
    else:
        a, b = R.per_seed_peak(runs[m], key), R.per_seed_peak(runs["grpo"], key)
    d = R.paired_difference(a, b)
    if d["mean"] is None:
        return "not logged"
    se = "" if d["se"] is None else f" ± {100 * d['se']:.1f}"
    return f"{100 * d['mean']:+.1f}{se} ({d['positive']}/{d['n']})"


if HAVE_LOGS and "grpo" in runs:
    rows = [{"run − GRPO, peak, points": label(m), **{
        name: paired_peak(m, key) for name, key in (
            ("sampled leak rate (validation decoding)", "leak_rate"),
            ("rollout leak rate (T = 1)", "rollout_leak_rate"),
            ("P(mention)", "mention_prob"),
            ("unsupported answers", "unsupported_answer_rate"))}} for m in LEAK_METHODS if m != "grpo"]
    display(Markdown(R.markdown_table(rows)))
