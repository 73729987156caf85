"""Figures, drawn from run logs by code (never by hand), saved as PNG (reading) and PDF (papers) into figures/."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI, servers; notebooks still display the returned figures inline
from matplotlib.figure import Figure  # noqa: E402

from rlsd.runs import METHOD_LABEL, METHOD_ORDER, seed_band  # noqa: E402

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"
COLOURS = {"base": "tab:gray", "grpo": "tab:blue", "rlsd": "tab:red", "opsd": "tab:green",
           "opsd_online": "tab:olive", "sdpo": "tab:purple", "grpo_opsd": "tab:orange"}


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


def plot_panels(runs: dict, panels: list[tuple[str, str, str]], title: str = "", smooth: int = 1,
                methods: list[str] | None = None, ncols: int = 3) -> Figure:
    """One panel per (kind, key, label); kind is 'metrics' (per step) or 'eval'. Mean over seeds, min-max band.

    `smooth` is a moving-average window for measured per-step metrics; schedules (λ, lr) are drawn as set.
    """
    methods = methods or _ordered(runs)
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (kind, key, label) in zip(axes, panels):
        for m in methods:
            if m not in runs:
                continue
            smoothed = kind == "metrics" and key not in SCHEDULES
            steps, mean, lo, hi = seed_band(runs[m], kind, key, smooth=smooth if smoothed else 1)
            if not len(steps):
                continue
            n = len(runs[m])
            ax.plot(steps, mean, color=COLOURS.get(m), label=f"{METHOD_LABEL.get(m, m)} (n={n})",
                    marker="o" if kind == "eval" else None, markersize=3)
            ax.fill_between(steps, lo, hi, color=COLOURS.get(m), alpha=0.15, linewidth=0)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(6, len(handles)), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


TRAINING_PANELS = [
    ("metrics", "reward_mean", "training reward"),
    ("eval", "accuracy", "test accuracy (student prompt)"),
    ("metrics", "entropy", "policy entropy (nats/token)"),
    ("metrics", "weight_clip_low_frac", "evidence weight clipped low (RLSD)"),
    ("metrics", "weight_clip_high_frac", "evidence weight clipped high (RLSD)"),
    ("metrics", "lambda", "λ (RLSD)"),
]

LEAKAGE_PANELS = [
    ("eval", "leak_rate", "leak rate: mentions a reference"),
    ("eval", "mention_prob", "P(response opens with the mention)"),
    ("eval", "unsupported_answer_rate", "answer not supported by own steps"),
    ("eval", "accuracy", "test accuracy (student prompt)"),
    ("metrics", "kl_student_teacher", "KL(student ‖ teacher), sampled tokens"),
]
