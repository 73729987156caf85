"""Figures, drawn from run logs by code (never by hand), saved as PNG (reading) and PDF (papers) into figures/."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")  # headless: CI, servers; notebooks still display the returned figures inline
from matplotlib.figure import Figure  # noqa: E402

from rlsd.runs import METHOD_LABEL, METHOD_ORDER, seed_band  # noqa: E402

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"
COLOURS = {"base": "tab:gray", "grpo": "tab:blue", "rlsd": "tab:red", "opsd": "tab:green",
           "opsd_online": "tab:olive", "sdpo": "tab:purple", "grpo_opsd": "tab:orange", "rlsd_const": "tab:brown"}


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


def _ordered(runs: dict) -> list[str]:
    return [m for m in METHOD_ORDER if m in runs] + sorted(m for m in runs if m not in METHOD_ORDER)


SCHEDULES = {"lambda", "lr"}  # set by the config, not measured: drawn exactly, never smoothed


class Panel(NamedTuple):
    """One panel: what it plots (`kind` 'metrics' per step or 'eval' per test evaluation, `key`), its title, its
    y-axis label with units, a scale (100 for a share shown in %), and the methods it applies to (None: all; a
    quantity that only some methods have -- clip fractions, teacher KL -- is not drawn as a flat 0 for the rest)."""

    kind: str
    key: str
    title: str
    ylabel: str = ""
    scale: float = 1.0
    methods: tuple[str, ...] | None = None


def _binomial_halfwidth(p, n):
    """95% normal-approximation half-width of a proportion estimated from n independent items."""
    import numpy as np

    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    return 1.96 * np.sqrt(p * (1 - p) / max(n, 1))


def plot_panels(runs: dict, panels: list, title: str = "", smooth: int = 1, methods: list[str] | None = None,
                ncols: int = 3, lambda_zero_step: int | None = None, eval_items: int | None = None) -> Figure:
    """One panel per `Panel` (plain (kind, key, title) tuples work too). Mean over seeds with the min-max seed band;
    on test curves (kind 'eval') with `eval_items` given, error bars are the binomial 95% interval of the seed-mean
    accuracy (eval_items x seeds responses). `smooth` is a moving-average window for measured per-step metrics;
    schedules (λ, lr) are drawn as set. `lambda_zero_step` draws a dotted line where λ reaches 0.
    """
    panels = [p if isinstance(p, Panel) else Panel(*p) for p in panels]
    methods = methods or _ordered(runs)
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.1 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    seen = {}
    for ax, panel in zip(axes, panels):
        for m in methods:
            if m not in runs or (panel.methods is not None and m not in panel.methods):
                continue
            smoothed = panel.kind == "metrics" and panel.key not in SCHEDULES
            steps, mean, lo, hi = seed_band(runs[m], panel.kind, panel.key, smooth=smooth if smoothed else 1)
            if not len(steps):
                continue
            n = len(runs[m])
            k = panel.scale
            line, = ax.plot(steps, mean * k, color=COLOURS.get(m), label=f"{METHOD_LABEL.get(m, m)} (n={n} seeds)",
                            marker="o" if panel.kind == "eval" else None, markersize=3)
            seen.setdefault(line.get_label(), line)
            ax.fill_between(steps, lo * k, hi * k, color=COLOURS.get(m), alpha=0.15, linewidth=0)
            if panel.kind == "eval" and eval_items and panel.key == "accuracy":
                ax.errorbar(steps, mean * k, yerr=_binomial_halfwidth(mean, eval_items * n) * k, fmt="none",
                            ecolor=COLOURS.get(m), elinewidth=0.8, capsize=2)
        if lambda_zero_step:
            ax.axvline(lambda_zero_step, color="black", linestyle=":", linewidth=0.9)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(panel.ylabel, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.axis("off")
    handles = list(seen.values())
    if lambda_zero_step:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="black", linestyle=":", label=f"λ reaches 0 (step {lambda_zero_step})"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


RLSD_RUNS = ("rlsd", "rlsd_const")
TEACHER_RUNS = ("rlsd", "rlsd_const", "opsd", "opsd_online", "sdpo", "grpo_opsd")

TRAINING_PANELS = [
    Panel("metrics", "reward_mean", "training reward (T = 1 rollouts)", "reward, % correct", 100),
    Panel("eval", "accuracy", "test accuracy (student prompt)", "accuracy, %", 100),
    Panel("metrics", "entropy", "policy entropy", "nats / token"),
    Panel("metrics", "weight_clip_low_frac", "evidence weight clipped low", "% of tokens with A ≠ 0", 100, RLSD_RUNS),
    Panel("metrics", "weight_clip_high_frac", "evidence weight clipped high", "% of tokens with A ≠ 0", 100, RLSD_RUNS),
    Panel("metrics", "lambda", "λ, the evidence weight's share", "λ", 1, RLSD_RUNS),
]

LEAKAGE_PANELS = [
    Panel("eval", "leak_rate", "leak rate: mentions a reference", "% of test responses", 100),
    Panel("eval", "mention_prob", "P(response opens with the mention)", "probability, %", 100),
    Panel("eval", "unsupported_answer_rate", "answer not supported by own steps", "% of test responses", 100),
    Panel("eval", "accuracy", "test accuracy (student prompt)", "accuracy, %", 100),
    Panel("metrics", "kl_student_teacher", "KL(student ‖ teacher), sampled tokens", "nats / token", 1, TEACHER_RUNS),
]
