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
# **What we measure, on the CPU testbed** (`rlsd/testbed.py`: counting and arithmetic over noisy grids of coloured
# squares, a ~1M-parameter Qwen3-VL, an SFT warm start `data/tiny-sft`):
#
# * `leak_rate` — the share of test responses (student prompt, no reference anywhere) that mention a reference
#   (`rlsd.testbed.mentions_reference`);
# * `mention_prob` — the mean probability the student gives to *opening* its response with the teacher format's
#   mention, "the reference answer is" (one forward pass per test prompt). Validation decoding (top-p 0.8) never
#   samples a continuation below roughly 15% probability, so `leak_rate` stays at zero while a habit grows below that
#   line; `mention_prob` sees it grow;
# * `unsupported_answer_rate` — the share whose final answer does not follow from the response's own written steps
#   (`rlsd.testbed.supported_answer`): a leakage signal the model was never taught, since copying an answer it cannot
#   derive shows up as an answer its reasoning does not support;
# * test accuracy, and the teacher–student KL on sampled tokens (`kl_student_teacher`) during training.
#
# **The controls.** The warm start was trained on *both* prompt formats, and a minority of its teacher-format targets
# open with "the reference answer is N ," (`rlsd/sft.py`, the leakable habit). So the student's weights already hold
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
from rlsd.config import SHIPPED_TINY  # noqa: E402
from rlsd.plots import LEAKAGE_PANELS, Panel, plot_panels, save_figure  # noqa: E402
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
# ## 0. The criteria, declared before looking at any number
#
# Each claim gets a yes/no test fixed here, in code, before the logs are read. **Leakage is judged on the whole
# trajectory**: a seed's value is the PEAK of its test curve (step 0, the warm start, included), not its last point —
# a habit that rises and then collapses with the model (the online teacher) still leaked. Differences between
# methods are **paired by seed** (the same seed draws the same prompts and sampling seeds in every method) and must
# exceed `spreads` × the paired standard error of the mean difference. A claim involving a method with fewer than
# `min_seeds` seeds, or a method that was not run, is **undetermined**. Accuracy curves are compared against a noise level that is the larger of the seed
# standard deviation at the final evaluation and the binomial standard error of the seed-mean accuracy
# $\sqrt{p(1-p)/(n_\text{items}\, n_\text{seeds})}$ (so three nearly identical seeds cannot make a 0.3-point wiggle
# count). Step 0 of every curve is the warm start's own test evaluation (`base_eval.json`), shared by all runs.
#
# | # | claim (source) | test |
# |---|---|---|
# | 1 | OPSD leaks (paper) | peak `leak_rate` over the trajectory: OPSD − GRPO, paired by seed, > 2 × paired SE |
# | 2 | OPSD's mention habit grows, sampled or not (ours) | the same test on `mention_prob` (the probability of opening with the teacher's mention) |
# | 3 | OPSD's answers stop following from its own steps (ours) | the same test on `unsupported_answer_rate` |
# | 4 | RLSD does not leak (paper) | peak `leak_rate` **and** peak `mention_prob`: RLSD − GRPO, paired, mean + 2 × SE ≤ 2 points |
# | 5 | OPSD's test accuracy peaks early, then declines (paper) | the seed-mean accuracy curve peaks after step 0 and in the first half of training, and its final value is below the peak by more than 2 × noise |
# | 6 | an online teacher gains early (trilemma) | OPSD-online's seed-mean accuracy, at its best evaluation in the first half, exceeds step 0 by more than 2 × noise |
# | 7 | … and destabilises later (trilemma) | OPSD-online's final seed-mean accuracy is below its peak by more than 2 × noise, **or** its final seed std is more than twice OPSD-fixed's |
# | 8 | an online teacher leaks too (trilemma) | as claim 2 (peak `mention_prob`), for OPSD-online |

# %%
CRITERIA = {"min_seeds": 3, "spreads": 2.0, "early_fraction": 0.5, "leak_margin": 0.02}


def accuracy_noise(pf, n_items):
    """The noise level of claims 5-7: max(seed std at the final eval, binomial s.e. of the seed-mean accuracy)."""
    p = min(max(pf["final"], 0.0), 1.0)
    return max(pf["final_std"], math.sqrt(p * (1 - p) / max(1, n_items * pf["n"])))


# %% [markdown]
# ## 1. The logs

# %%
LOGS = R.notebook_logs(PROFILE, SMOKE_METHODS)
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
        print(f"{label(name):14s} seeds {sorted(per_seed)}  steps {cfg['steps']}  lr {cfg['lr']:g}  "
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
# ## 2. Leakage over training: OPSD (fixed initial teacher) vs GRPO vs RLSD
#
# Mean over seeds, with the min–max band. Every test evaluation uses the same problems and the validation sampling of
# the paper (T 0.7, top-p 0.8, top-k 20).

# %%
LEAK_METHODS = [m for m in ("grpo", "rlsd", "opsd") if m in runs]
EVAL_PANELS = [p for p in LEAKAGE_PANELS if p[0] == "eval"]  # leak rate, mention probability, unsupported, accuracy
if HAVE_LOGS:
    fig = plot_panels(runs, EVAL_PANELS, "Leakage on the test split (mean over seeds, min-max band)",
                      methods=LEAK_METHODS, ncols=2)
    save(fig, "02_leakage_over_training")
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
    for key in [panel.key for panel in EVAL_PANELS]:
        display(Markdown(f"**{key}**\n\n" + curve_table(key, LEAK_METHODS)))

# %% [markdown]
# **Teacher–student KL during training.** `kl_student_teacher` is the mean over sampled response tokens of
# $\log P_S(y_t) - \log P_T(y_t)$ — a single-sample estimate of $\mathrm{KL}(P_S \| P_T)$ on the student's own
# rollouts. For OPSD the teacher is the initial policy shown the answer; for RLSD it is a snapshot of the policy
# re-synced every 10 steps, also shown the answer. GRPO has no teacher (its logged value is a placeholder 0 and is
# left out).

# %%
KL_METHODS = [m for m in ("rlsd", "opsd", "opsd_online", "grpo_opsd", "sdpo") if m in runs]
if HAVE_LOGS and KL_METHODS:
    KL_PANEL = [p for p in LEAKAGE_PANELS if p[1] == "kl_student_teacher"]
    fig = plot_panels(runs, KL_PANEL, "Teacher-student KL during training\n(mean over seeds, min-max band)",
                      smooth=10, methods=KL_METHODS, ncols=1)
    save(fig, "02_teacher_kl")
    display(fig)
    for m in KL_METHODS:
        head = R.window_mean(runs[m], "kl_student_teacher", 0.1, first=True)
        tail = R.window_mean(runs[m], "kl_student_teacher", 0.1)
        print(f"{label(m):14s} KL(student || teacher), mean over the first 10% of steps "
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
                             Panel("eval", "mention_prob", "P(response opens with the mention)", "probability, %", 100),
                             Panel("metrics", "reward_mean", "training reward (rollout accuracy)", "% correct", 100)],
                      "Fixed vs online teacher (mean over seeds, min-max band)", smooth=10,
                      methods=TRILEMMA_METHODS, ncols=3)
    save(fig, "02_trilemma")
    display(fig)
    for m in TRILEMMA_METHODS:
        pf = R.peak_and_final(runs[m], "accuracy")
        print(f"{label(m):14s} test accuracy: step {pf['first_step']} {pct(pf['first'])} -> peak {pct(pf['peak'])} "
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
        print(f"{label(m):14s} decoded samples that mention a reference: {leaked} of {total}")
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
# ## 5. The claims, measured
#
# Each row applies the test declared in §0 to the logs; the "measured" column gives the numbers the test used (percent;
# mean ± std [min–max] over seeds). Nothing in this table is typed by hand.

# %%
def final(m, key):
    return R.final_eval(runs[m], key) if m in runs else []


def n_seeds(*methods):
    """The fewest seeds among `methods` (0 if one of them was not run)."""
    return min(len(runs[m]) for m in methods) if all(m in runs for m in methods) else 0


def peak_vs_grpo(m, key):
    """Per-seed peak of `key` over the test trajectory, m - GRPO paired by seed."""
    return R.paired_difference(R.per_seed_peak(runs[m], key), R.per_seed_peak(runs["grpo"], key))


def rises(m, key):
    """Claims 1, 2, 3 and 8: m's peak `key` exceeds GRPO's, paired by seed, by 2 paired SE."""
    if m not in runs or "grpo" not in runs:
        return None, "not run"
    d = peak_vs_grpo(m, key)
    if d["mean"] is None:
        return None, "no data"
    se = d["se"] or 0.0
    digits = DIGITS.get(key, 1)
    return d["mean"] > CRITERIA["spreads"] * se, (
        f"peak {key}: {label(m)} {R.format_spread(list(R.per_seed_peak(runs[m], key).values()), digits=digits)} vs "
        f"GRPO {R.format_spread(list(R.per_seed_peak(runs['grpo'], key).values()), digits=digits)}; paired "
        f"difference {pts(d['mean'], digits)} ± {size(se, digits)} SE over {d['n']} seeds "
        f"(needs > {size(CRITERIA['spreads'] * se, digits)})")


def no_more_than_grpo(m, keys):
    """Claim 4: for every key, m's peak exceeds GRPO's by at most the margin, at 2 paired SE."""
    holds, texts = True, []
    for key in keys:
        if m not in runs or "grpo" not in runs:
            return None, f"{key}: not run"
        d = peak_vs_grpo(m, key)
        if d["mean"] is None:
            return None, f"{key}: no data"
        upper = d["mean"] + CRITERIA["spreads"] * (d["se"] or 0.0)
        holds = holds and upper <= CRITERIA["leak_margin"]
        digits = DIGITS.get(key, 1)
        texts.append(f"peak {key}: {label(m)} − GRPO {pts(d['mean'], digits)} ± {size(d['se'] or 0.0, digits)} SE "
                     f"(mean + 2 SE {pts(upper, digits)}; needs ≤ {size(CRITERIA['leak_margin'], digits)})")
    return holds, "; ".join(texts)


def peaks_early_then_declines(m):
    """Claim 5."""
    if m not in runs:
        return None, "not run"
    pf = R.peak_and_final(runs[m], "accuracy")
    noise = accuracy_noise(pf, N_ITEMS)
    early = 0 < pf["peak_step"] <= CRITERIA["early_fraction"] * TOTAL_STEPS
    declines = pf["final"] < pf["peak"] - CRITERIA["spreads"] * noise
    return early and declines, (f"seed-mean accuracy peaks at step {pf['peak_step']} of {TOTAL_STEPS} "
                                f"({pct(pf['peak'])}), ends at {pct(pf['final'])}: "
                                f"drop {pts(pf['peak'] - pf['final'])} (needs > {size(CRITERIA['spreads'] * noise)})")


def gains_early(m):
    """Claim 6."""
    if m not in runs:
        return None, "not run"
    pf = R.peak_and_final(runs[m], "accuracy")
    first_half = [(v, s, sd) for s, v, sd in zip(pf["steps"], pf["mean"], pf["std"])
                  if 0 < s <= CRITERIA["early_fraction"] * TOTAL_STEPS]
    if not first_half:
        return None, "no evaluation in the first half of training"
    best, step, _ = max(first_half)
    noise = accuracy_noise(pf, N_ITEMS)
    return best > pf["first"] + CRITERIA["spreads"] * noise, (
        f"step {pf['first_step']} {pct(pf['first'])} -> best in the first half {pct(best)} at step {step}: gain "
        f"{pts(best - pf['first'])} (needs > {size(CRITERIA['spreads'] * noise)})")


def destabilises(m, fixed="opsd"):
    """Claim 7."""
    if m not in runs or fixed not in runs:
        return None, "not run"
    pf, pf_fixed = R.peak_and_final(runs[m], "accuracy"), R.peak_and_final(runs[fixed], "accuracy")
    noise = accuracy_noise(pf, N_ITEMS)
    declines = pf["final"] < pf["peak"] - CRITERIA["spreads"] * noise
    spread = pf["final_std"] > 2 * pf_fixed["final_std"]
    return declines or spread, (
        f"peak {pct(pf['peak'])} at step {pf['peak_step']} -> final {pct(pf['final'])}: drop "
        f"{pts(pf['peak'] - pf['final'])} (needs > {size(CRITERIA['spreads'] * noise)}); final seed std "
        f"{size(pf['final_std'])} vs fixed teacher {size(pf_fixed['final_std'])} (needs > 2×)")


CLAIMS = [
    ("1. OPSD leaks (paper)", ("opsd", "grpo"), lambda: rises("opsd", "leak_rate")),
    ("2. OPSD's mention habit grows, sampled or not (ours)", ("opsd", "grpo"), lambda: rises("opsd", "mention_prob")),
    ("3. OPSD's answers stop following from its steps (ours)", ("opsd", "grpo"),
     lambda: rises("opsd", "unsupported_answer_rate")),
    ("4. RLSD does not leak (paper)", ("rlsd", "grpo"),
     lambda: no_more_than_grpo("rlsd", ("leak_rate", "mention_prob"))),
    ("5. OPSD accuracy peaks early, then declines (paper)", ("opsd",), lambda: peaks_early_then_declines("opsd")),
    ("6. online teacher gains early (trilemma)", ("opsd_online",), lambda: gains_early("opsd_online")),
    ("7. online teacher destabilises later (trilemma)", ("opsd_online", "opsd"), lambda: destabilises("opsd_online")),
    ("8. online teacher leaks too (trilemma)", ("opsd_online", "grpo"), lambda: rises("opsd_online", "mention_prob")),
]
verdicts = []
if HAVE_LOGS:
    rows = []
    for claim, methods, test in CLAIMS:
        holds, measured = test()
        v = R.verdict(holds, n_seeds(*methods), CRITERIA["min_seeds"])
        verdicts.append((claim, v))
        rows.append({"claim": claim, "measured": measured, "reproduced": v})
    display(Markdown(R.markdown_table(rows, ["claim", "measured", "reproduced"])))

# %%
if HAVE_LOGS:
    groups = {"reproduced": [c for c, v in verdicts if v == "yes"],
              "not reproduced": [c for c, v in verdicts if v == "no"],
              "undetermined": [c for c, v in verdicts if v.startswith("undetermined")]}
    lines = [f"On the `{PROFILE}` logs, by the criteria of §0:"]
    for outcome, claims in groups.items():
        lines.append(f"* **{outcome}** ({len(claims)}): " + ("; ".join(claims) if claims else "none"))
    if groups["undetermined"]:
        lines.append("\nUndetermined claims need more seeds or the missing runs "
                     "(`python -m rlsd reproduce --profile cpu` runs every method).")
    display(Markdown("\n".join(lines)))
