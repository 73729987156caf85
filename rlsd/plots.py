"""Figures, drawn from run logs by code (never by hand), saved as PNG (reading) and PDF (papers) into figures/.

Every figure says, on the figure, how many seeds each curve averages (the legend) and how it is smoothed (the
caption under the title): per-step training metrics by a trailing moving average, test evaluations and schedules
(λ, lr) not at all.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")  # headless: CI, servers; notebooks still display the returned figures inline
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from rlsd.runs import METHOD_LABEL, METHOD_ORDER, curve, seed_band  # noqa: E402

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"
COLOURS = {"base": "tab:gray", "grpo": "tab:blue", "rlsd": "tab:red", "opsd": "tab:green",
           "opsd_online": "tab:olive", "sdpo": "tab:purple", "grpo_opsd": "tab:orange", "rlsd_const": "tab:brown"}
LAMBDA_RUN = "rlsd"  # the run whose λ decays to 0: the dotted marker belongs to it alone


def save_figure(fig, name, directory=None):
    """Write <directory>/<name>.png (150 dpi, for reading) and .pdf (vector, for papers); directory defaults to the
    repository's figures/. Metadata that changes between runs (software version, creation date) is left out."""
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"figure name must be a plain file stem, got {name!r}")
    directory = FIGURES_DIR if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / f"{name}.png", directory / f"{name}.pdf")
    fig.savefig(paths[0], dpi=150, metadata={"Software": None})
    fig.savefig(paths[1], metadata={"Creator": None, "Producer": None, "CreationDate": None})
    return paths


def label(method: str) -> str:
    return METHOD_LABEL.get(method, method)


def _ordered(runs: dict) -> list[str]:
    return [m for m in METHOD_ORDER if m in runs] + sorted(m for m in runs if m not in METHOD_ORDER)


SCHEDULES = {"lambda", "lr"}  # set by the config, not measured: drawn exactly, never smoothed


class Panel(NamedTuple):
    """One panel: what it plots, its title, its y-axis label with units, a scale (100 for a share shown in %), and
    the methods it applies to (None: all; a quantity that only some methods have -- clip fractions, teacher KL -- is
    not drawn as a flat 0 for the rest).

    `kind`: 'metrics' (per optimizer step), 'eval' (per test evaluation), or 'paired' (per test evaluation, each of
    `methods` minus `baseline` seed by seed: the mean difference with a ±1 paired-SE band). `reference`: a
    horizontal line (value in the key's own units, its legend text), e.g. the teacher's own habit rate."""

    kind: str
    key: str
    title: str
    ylabel: str = ""
    scale: float = 1.0
    methods: tuple[str, ...] | None = None
    baseline: str = "grpo"
    reference: tuple[float, str] | None = None


REFERENCE_MARK = "\x00ref:"  # legend entries of reference lines, keyed apart from the methods'
REFERENCE_STYLES = ({"color": "black", "linestyle": "--"}, {"color": "0.45", "linestyle": "-."})


def _always_zero(per_seed: dict[int, dict], panel: Panel) -> bool:
    """Is `panel.key` exactly 0 at every record of every seed (after step 0)?"""
    values = [v for logs in per_seed.values() for s, v in zip(*curve(logs[panel.kind], panel.key)) if s > 0]
    return bool(values) and all(v == 0 for v in values)


def _binomial_halfwidth(p, n):
    """95% normal-approximation half-width of a proportion estimated from n independent items."""
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    return 1.96 * np.sqrt(p * (1 - p) / max(n, 1))


def paired_curve(a: dict[int, dict], b: dict[int, dict], key: str = "accuracy", kind: str = "eval"):
    """a − b seed by seed (the seeds both have), at the steps every such seed evaluated in both runs.

    Returns (steps, mean, paired standard error, n seeds); the SE is NaN with fewer than 2 seeds. The same seed
    draws the same prompts and sampling seeds in every method, so these differences are much less noisy than the
    difference of two seed means."""
    seeds = sorted(set(a) & set(b))
    per_seed = []
    for s in seeds:
        sa, ya = curve(a[s][kind], key)
        sb, yb = curve(b[s][kind], key)
        if len(sa) and len(sb):
            per_seed.append(({int(t): y for t, y in zip(sa, ya)}, {int(t): y for t, y in zip(sb, yb)}))
    if not per_seed:
        return np.array([]), np.array([]), np.array([]), 0
    steps = sorted(set.intersection(*(set(da) & set(db) for da, db in per_seed)))
    diffs = np.array([[da[t] - db[t] for t in steps] for da, db in per_seed], dtype=float)  # seeds x steps
    n = len(per_seed)
    se = diffs.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(len(steps), np.nan)
    return np.array(steps), diffs.mean(0), se, n


def _smoothing_note(panels: list[Panel], smooth: int, eval_items: int | None) -> str:
    parts = []
    if any(p.kind == "metrics" and p.key not in SCHEDULES for p in panels):
        parts.append(f"per-step training metrics: trailing {smooth}-step moving average per seed" if smooth > 1
                     else "per-step training metrics: not smoothed")
    if any(p.kind in ("eval", "paired") for p in panels):
        parts.append("test evaluations (markers): not smoothed")
    if any(p.key in SCHEDULES for p in panels):
        parts.append("λ: the schedule as set")
    bands = ["lines: mean over seeds (n per method in the key); bands: min–max over seeds"]
    if eval_items and any(p.kind == "eval" and p.key == "accuracy" for p in panels):
        bands.append(f"bars on test accuracy: binomial 95% CI of the seed mean ({eval_items} problems × n seeds)")
    if any(p.kind == "paired" for p in panels):
        bands.append("difference panels: band ±1 paired SE over seeds")
    return "; ".join(bands) + ". Smoothing: " + "; ".join(parts) + "."


def _caption(fig: Figure, title: str, note: str, width_in: float) -> None:
    """The title, and under it the figure's n / uncertainty / smoothing statement, wrapped to the figure width."""
    wrapped = "\n".join(textwrap.wrap(note, width=max(40, int(width_in * 12))))
    fig.suptitle(f"{title}\n{wrapped}" if title else wrapped, fontsize=9.5)


def plot_panels(runs: dict, panels: list, title: str = "", smooth: int = 1, methods: list[str] | None = None,
                ncols: int = 3, lambda_zero_step: int | None = None, eval_items: int | None = None,
                note: str = "", panel_size: tuple[float, float] = (4.2, 3.1)) -> Figure:
    """One panel per `Panel` (plain (kind, key, title) tuples work too). Mean over seeds with the min-max seed band;
    on test curves (kind 'eval') with `eval_items` given, error bars are the binomial 95% interval of the seed-mean
    accuracy (eval_items x seeds responses). `smooth` is a moving-average window for measured per-step metrics;
    schedules (λ, lr) are drawn as set. `lambda_zero_step` draws a dotted line where RLSD's λ reaches 0, in the
    panels that draw the decaying RLSD run. A panel with no data (a metric older logs lack) says so. The caption
    under `title` states n, the bands and the smoothing, then `note`.
    """
    panels = [p if isinstance(p, Panel) else Panel(*p) for p in panels]
    methods = methods or _ordered(runs)
    nrows = -(-len(panels) // ncols)
    width = panel_size[0] * ncols
    fig = Figure(figsize=(width, panel_size[1] * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    seen, ref_styles = {}, {}
    lambda_drawn = False
    for ax, panel in zip(axes, panels):
        drawn = []
        k = panel.scale
        if panel.kind == "paired":
            base = runs.get(panel.baseline)
            for m in panel.methods or ():
                if m not in runs or base is None:
                    continue
                steps, mean, se, n = paired_curve(runs[m], base, panel.key)
                if not len(steps):
                    continue
                ax.plot(steps, mean * k, color=COLOURS.get(m), marker="o", markersize=3,
                        label=f"{label(m)} − {label(panel.baseline)} (n={n} paired seeds)")
                if n > 1:
                    ax.fill_between(steps, (mean - se) * k, (mean + se) * k, color=COLOURS.get(m), alpha=0.2,
                                    linewidth=0)
                drawn.append(m)
            ax.axhline(0, color="black", linewidth=0.8)
            if drawn:
                ax.legend(fontsize=7.5, loc="lower left")
        else:
            for m in methods:
                if m not in runs or (panel.methods is not None and m not in panel.methods):
                    continue
                smoothed = panel.kind == "metrics" and panel.key not in SCHEDULES
                steps, mean, lo, hi = seed_band(runs[m], panel.kind, panel.key, smooth=smooth if smoothed else 1)
                if not len(steps):
                    continue
                n = len(runs[m])
                line, = ax.plot(steps, mean * k, color=COLOURS.get(m), label=f"{label(m)} (n={n} seeds)",
                                marker="o" if panel.kind == "eval" else None, markersize=3)
                seen.setdefault(line.get_label(), line)
                ax.fill_between(steps, lo * k, hi * k, color=COLOURS.get(m), alpha=0.15, linewidth=0)
                if panel.kind == "eval" and eval_items and panel.key == "accuracy":
                    ax.errorbar(steps, mean * k, yerr=_binomial_halfwidth(mean, eval_items * n) * k, fmt="none",
                                ecolor=COLOURS.get(m), elinewidth=0.8, capsize=2)
                drawn.append(m)
        if panel.reference is not None and drawn:
            value, text = panel.reference
            style = ref_styles.setdefault(text, REFERENCE_STYLES[len(ref_styles) % len(REFERENCE_STYLES)])
            ref = ax.axhline(value * k, linewidth=1.1, label=text, zorder=1, **style)
            seen.setdefault(REFERENCE_MARK + text, ref)
        flat = [m for m in drawn if panel.kind != "paired" and _always_zero(runs[m], panel)]
        if len(flat) > 1:  # curves that sit on the axis hide each other: name them
            ax.text(0.02, 0.97, "0 at every point: " + ", ".join(label(m) for m in flat), transform=ax.transAxes,
                    ha="left", va="top", fontsize=7.5, color="0.25", wrap=True)
        if not drawn:
            ax.text(0.5, 0.5, f"`{panel.key}` not in these logs", ha="center", va="center", transform=ax.transAxes,
                    fontsize=9, color="0.4")
        elif panel.kind != "paired":  # runs whose logs predate the metric: named, not silently missing
            absent = [m for m in methods if m in runs and m not in drawn
                      and (panel.methods is None or m in panel.methods)]
            if absent:
                ax.text(0.98, 0.97, "not logged by: " + ", ".join(label(m) for m in absent),
                        transform=ax.transAxes, ha="right", va="top", fontsize=7.5, color="0.25")
        if lambda_zero_step and LAMBDA_RUN in drawn:
            ax.axvline(lambda_zero_step, color="black", linestyle=":", linewidth=0.9)
            lambda_drawn = True
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(panel.ylabel, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.axis("off")
    handles = list(seen.values())
    if lambda_drawn:
        handles.append(Line2D([], [], color="black", linestyle=":",
                              label=f"{label(LAMBDA_RUN)}: λ reaches 0 (step {lambda_zero_step})"))
    if handles:  # keys in as many columns as the figure's width holds (about 3 inches each): none is cut off
        fig.legend(handles=handles, loc="outside lower center", fontsize=9,
                   ncols=max(1, min(len(handles), int(width / 3.0))))
    _caption(fig, title, _smoothing_note(panels, smooth, eval_items) + (f" {note}" if note else ""), width)
    return fig


RLSD_RUNS = ("rlsd", "rlsd_const")
TEACHER_RUNS = ("rlsd", "rlsd_const", "opsd", "opsd_online", "sdpo", "grpo_opsd")

TRAINING_PANELS = [
    Panel("metrics", "reward_mean", "training reward (T = 1 rollouts)", "reward, % correct", 100),
    Panel("eval", "accuracy", "test accuracy (student prompt)", "accuracy, %", 100),
    Panel("paired", "accuracy", "test accuracy, paired by seed: run − GRPO", "difference, points", 100,
          ("rlsd", "rlsd_const")),
    Panel("metrics", "entropy", "policy entropy", "nats / token"),
    Panel("metrics", "weight_clip_low_frac", "evidence weight clipped low", "% of tokens with A ≠ 0", 100, RLSD_RUNS),
    Panel("metrics", "weight_clip_high_frac", "evidence weight clipped high", "% of tokens with A ≠ 0", 100, RLSD_RUNS),
    Panel("metrics", "lambda", "λ, the evidence weight's share", "λ", 1, RLSD_RUNS),
]
TRAINING_METHODS = ("grpo", "rlsd", "opsd", "sdpo", "grpo_opsd", "rlsd_const")
"""03_training_dynamics draws these; online OPSD degenerates (its curves would flatten every axis) and is named in the
caption instead, with its numbers (`left_out_note`)."""

LEAKAGE_METHODS = ("grpo", "rlsd", "rlsd_const", "opsd", "opsd_online", "sdpo", "grpo_opsd")
"""02_leakage: every method with a teacher in the loss, and GRPO (no teacher) as the control."""

KL_PANEL = Panel("metrics", "kl_student_teacher", "KL(student ‖ teacher), sampled tokens", "nats / token", 1,
                 TEACHER_RUNS)


def leakage_panels(base_eval: dict | None = None) -> list[Panel]:
    """The three leakage measures, each in its own panel, with the teacher prompt's own rate as a reference line
    where the warm start's evaluation (base_eval.json, "teacher/none") is given.

    1. `leak_rate`: the share of test responses that mention a reference, sampled under validation decoding
       (T 0.7, top-p 0.8, top-k 20) -- a continuation below the nucleus is never sampled;
    2. `rollout_leak_rate`: the same share in the T = 1 training rollouts (no nucleus), per optimizer step;
    3. `mention_prob`: the probability of opening the response with the teacher format's mention. For the teacher
       prompt this is its built-in habit, and the rate at which an unrestricted T = 1 sample opens with it."""
    teacher = (base_eval or {}).get("teacher/none") or {}
    habit = teacher.get("mention_prob")
    sampled = teacher.get("leak_rate")
    habit_ref = None if habit is None else (habit, f"teacher prompt's own habit, P(mention) = {100 * habit:.1f}%")
    return [
        Panel("eval", "leak_rate", "sampled leak rate, validation decoding\n(test split; T 0.7, top-p 0.8, top-k 20)",
              "% of test responses that mention a reference", 100,
              reference=None if sampled is None else
              (sampled, f"teacher prompt, validation decoding: {100 * sampled:.1f}% mention it")),
        Panel("metrics", "rollout_leak_rate", "leak rate of the training rollouts\n(T = 1, no top-p / top-k)",
              "% of rollouts that mention a reference", 100, reference=habit_ref),
        Panel("eval", "mention_prob", "P(response opens with the mention)\n(test split, one forward pass)",
              "probability, %", 100, reference=habit_ref),
    ]


def left_out_note(runs: dict, method: str = "opsd_online", key: str = "accuracy") -> str:
    """Why `method` is not drawn, with its numbers: its seed-mean test accuracy after step 0 ('' if not run)."""
    if method not in runs:
        return ""
    steps, mean, _, _ = seed_band(runs[method], "eval", key)
    after = [(s, v) for s, v in zip(steps, mean) if s > 0]
    if not after:
        return ""
    worst = max(v for _, v in after)
    return (f"{label(method)} (n={len(runs[method])} seeds) is not drawn: it degenerates, its seed-mean test accuracy "
            f"is at most {100 * worst:.1f}% at every evaluation after step 0 (steps {after[0][0]}–{after[-1][0]}), "
            f"which would flatten every axis; see figures/02_trilemma.png.")


def training_dynamics_figure(runs: dict, lambda_zero_step: int | None, eval_items: int | None,
                             title: str = "Training dynamics on the CPU testbed") -> Figure:
    """03_training_dynamics: Figure 5 of the paper on the testbed, with the paired RLSD − GRPO (and constant-λ −
    GRPO) test-accuracy difference beside the raw curves."""
    return plot_panels(runs, TRAINING_PANELS, title, smooth=10, lambda_zero_step=lambda_zero_step,
                       eval_items=eval_items, methods=[m for m in TRAINING_METHODS if m in runs], ncols=4,
                       note=left_out_note(runs))


def leakage_figure(runs: dict, base_eval: dict | None, lambda_zero_step: int | None = None,
                   title: str = "Leakage: mentions of a reference the student prompt never has") -> Figure:
    """02_leakage: the three leakage measures (`leakage_panels`) for every teacher-using method and GRPO."""
    return plot_panels(runs, leakage_panels(base_eval), title, smooth=10, ncols=3,
                       lambda_zero_step=lambda_zero_step, methods=[m for m in LEAKAGE_METHODS if m in runs],
                       panel_size=(5.0, 3.6))


def table2_gains_figure(testbed_rows: list[dict] | None, paper_table: dict, paper_model: str,
                        degenerate: tuple[str, ...] = ("opsd_online",)) -> Figure:
    """04_table2_gains: the paper's Avg. − Base (left) beside the testbed's final test accuracy − Base (middle),
    mean over seeds with the min–max bar and n per method under each bar. Runs named in `degenerate` get their own
    panel (right), their value written on the bar, so that a −55-point collapse does not flatten the others.

    `testbed_rows`: rlsd.benchmarks.paper.table2_testbed_rows (percent; the base row has no seeds)."""
    order = [m for m in ("grpo", "opsd", "sdpo", "grpo_opsd", "rlsd") if m in paper_table]
    base_paper = paper_table["base"]["avg"]
    rows = [] if testbed_rows is None else [r for r in testbed_rows
                                           if r["method"] != "base" and r["accuracy_mean"] is not None]
    main = [r for r in rows if r["method"] not in degenerate]
    extra = [r for r in rows if r["method"] in degenerate]
    ratios = [len(order), max(len(main), 1)] + ([max(len(extra), 1) + 0.6] if extra else [])
    fig = Figure(figsize=(2.0 + 1.25 * sum(ratios), 4.6), layout="constrained")
    axes = fig.subplots(1, len(ratios), width_ratios=ratios)

    def ticks(ax, names, ns=None):
        text = [label(m).replace(", ", ",\n").replace(" (", "\n(") for m in names]
        if ns is not None:
            text = [f"{t}\nn={n}" for t, n in zip(text, ns)]
        ax.set_xticks(range(len(names)), text, fontsize=8.5)

    gains = [paper_table[m]["avg"] - base_paper for m in order]
    axes[0].bar(range(len(order)), gains, color=[COLOURS.get(m, "tab:gray") for m in order])
    ticks(axes[0], order)
    axes[0].set_title(f"paper ({paper_model}):\nAvg. of 5 benchmarks − Base (one run each)", fontsize=10)
    axes[0].set_ylabel("gain over Base, points")
    if not rows:
        axes[1].text(0.5, 0.5, "no CPU reproduction yet", ha="center", va="center", transform=axes[1].transAxes)
        axes[1].set_axis_off()
    else:
        base = next(r for r in testbed_rows if r["method"] == "base")["accuracy_mean"]
        for ax, group in ((axes[1], main), *(((axes[2], extra),) if extra else ())):
            means = [r["accuracy_mean"] - base for r in group]
            err = [[r["accuracy_mean"] - r["accuracy_min"] for r in group],
                   [r["accuracy_max"] - r["accuracy_mean"] for r in group]]
            ax.bar(range(len(group)), means, yerr=err, capsize=3, ecolor="black",
                   color=[COLOURS.get(r["method"], "tab:gray") for r in group])
            ticks(ax, [r["method"] for r in group], [r["seeds"] for r in group])
            ax.set_ylabel("final test accuracy − Base, points")
        axes[1].set_title(f"CPU testbed (tiny Qwen3-VL): final test accuracy − Base ({base:.1f}%)\nmean over n "
                          "seeds, bar = min–max over seeds", fontsize=10)
        if extra:
            for i, r in enumerate(extra):
                v = r["accuracy_mean"] - base
                axes[2].text(i, v / 2, f"{v:+.1f}\npoints", ha="center", va="center", fontsize=10, color="white",
                             fontweight="bold")
            axes[2].set_ylim(min(r["accuracy_min"] - base for r in extra) * 1.15, 5)
            axes[2].set_title("degenerate run\n(own scale)", fontsize=10)
    for ax in axes:
        ax.axhline(0, color="black", lw=0.8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Gain over each table's own Base row (different tasks and scales: compare the orderings, not the "
                 "sizes)", fontsize=11)
    return fig

