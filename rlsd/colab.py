"""Notebooks 03 and 04 on Colab or one GPU, and the same cells on a CPU: the pieces they share.

    profile = pick_gpu_profile(15.0)                       # "qwen3vl-2b-t4" (T4-class: <= 20 GiB)
    data = write_testbed_hub_dataset("/tmp/x/train-set")   # "hf:/tmp/x/train-set" (CPU stand-in for the hub set)
    results = benchmark_models(model, {"base": None, "rlsd": adapter}, out_root, limit=50)
    fig = plot_table2_comparison(results)

What each is for:

- ``pick_gpu_profile`` / ``visible_gpu``: which ``qwen3vl-<size>-<class>`` profile of ``rlsd.config`` fits the GPU
  the notebook sees, by its memory (``torch.cuda.get_device_properties(0).total_memory`` in GiB): at most 20 GiB
  is T4-class (``t4``: fp16, HF generate), at most 40 GiB ``l4`` (a 40 GB A100 reports 39.4 GiB and runs it with
  room to spare), above that ``a100``.  A GPU without bf16 (compute capability below 8.0: T4, V100) gets the ``t4``
  profile whatever its memory: it is the only one in fp16 with the HF engine, which such a GPU can run.
- ``write_testbed_hub_dataset``: testbed problems written as a hub repository is laid out (one parquet shard under
  ``data/``, the columns of the authors' release ``iieycx/rlsd-train-MMFineReason-123K``: ``problem`` with an inline
  ``<image>`` placeholder, ``images`` a list of ``datasets.Image``, ``answer``, ``problem_type``, ``options``, and
  the written solution in the column that release uses for the teacher's reference trajectory).  ``data=hf:<dir>``
  then goes through exactly the loader a GPU run uses for the hub set (``rlsd.data``), offline.
- ``benchmark_models``: the base model and each adapter through ``rlsd.benchmarks.run.run_benchmarks`` (one
  resumable output folder per model), with the memory freed between models.
- ``comparison_rows`` / ``plot_table2_comparison``: the measured rows beside the paper's Base, GRPO and RLSD rows of
  Table 2, as a table and as a labelled figure (accuracy in %, 95% intervals as error bars).
"""

from __future__ import annotations

import contextlib
import gc
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from rlsd.benchmarks.paper import METHOD_LABELS, PAPER_BENCHMARKS, PAPER_MODEL, PAPER_TABLE2

T4_CLASS_MAX_GIB = 20.0
"""Largest GPU memory (GiB) that gets the T4-class profile."""
L4_CLASS_MAX_GIB = 40.0
"""Largest GPU memory (GiB) that gets the L4-class profile; above it the A100-class one."""
MODEL_SIZES = ("2b", "8b")
PAPER_ROWS = ("base", "grpo", "rlsd")
"""The paper's Table-2 rows drawn beside the measured ones."""


# ------------------------------------------------------------------------------------------------------ the GPU


@dataclass(frozen=True)
class GpuInfo:
    """The visible CUDA device, as the profile picker needs it."""

    name: str
    """Device name, e.g. 'Tesla T4'."""
    memory_gib: float
    """Total device memory in GiB (2**30 bytes)."""
    bf16: bool
    """Whether the device computes in bfloat16 (compute capability 8.0 or newer)."""


def gpu_class(memory_gib: float, bf16: bool = True) -> str:
    """'t4', 'l4' or 'a100' (``rlsd.config.GPU_CLASSES``) for a GPU with ``memory_gib`` GiB."""
    if not isinstance(memory_gib, (int, float)) or isinstance(memory_gib, bool) or not math.isfinite(memory_gib) \
            or memory_gib <= 0:
        raise ValueError(f"GPU memory must be a positive number of GiB, got {memory_gib!r}")
    if not bf16 or memory_gib <= T4_CLASS_MAX_GIB:
        return "t4"
    return "l4" if memory_gib <= L4_CLASS_MAX_GIB else "a100"


def pick_gpu_profile(memory_gib: float, size: str = "2b", bf16: bool = True) -> str:
    """The training profile (``qwen3vl-<size>-<class>``) that fits a GPU of ``memory_gib`` GiB."""
    from rlsd.config import PROFILES

    if size not in MODEL_SIZES:
        raise ValueError(f"model size must be one of {MODEL_SIZES}, got {size!r}")
    name = f"qwen3vl-{size}-{gpu_class(memory_gib, bf16)}"
    assert name in PROFILES, name  # the classes above are exactly rlsd.config's
    return name


def visible_gpu() -> GpuInfo | None:
    """The first CUDA device, or None when torch sees none."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return GpuInfo(name=props.name, memory_gib=props.total_memory / 2**30, bf16=torch.cuda.is_bf16_supported())


# ------------------------------------------------------------------------------- the testbed in the hub's layout


@contextlib.contextmanager
def quiet_progress_bars():
    """The progress bars of ``datasets`` and ``transformers`` (dataset builds, weight loading) off inside the block,
    then as they were: a CPU notebook run loads a dozen tiny things, and a bar each would bury its output."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets_off, transformers_on = datasets.are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not datasets_off:
            datasets.enable_progress_bars()
        if transformers_on:
            hf_logging.enable_progress_bar()


HUB_SHARD = "data/train-00000-of-00001.parquet"
"""Where ``write_testbed_hub_dataset`` puts its one parquet shard (the hub's layout for a single train split)."""


def write_testbed_hub_dataset(root: str | Path, n: int = 64, split: str = "train") -> str:
    """Write the first ``n`` problems of a testbed split as a hub-layout dataset under ``root``; returns ``hf:<root>``.

    The questions, answers, images (PNG, lossless) and written solutions come back unchanged through
    ``rlsd.data.load_train_and_eval`` (tests/test_colab.py checks it).  Testbed-only metadata (colour counts,
    family) is not written: the run sees the rows as it would see any hub dataset.
    """
    import datasets

    from rlsd.testbed import generate_split

    root = Path(root)
    if ":" in str(root):
        raise ValueError(f"{root}: a path holding ':' cannot be named in hf:<path>[:<split>[:<config>]]")
    if n < 1:
        raise ValueError(f"need n >= 1 problems, got {n}")
    features = datasets.Features({
        "id": datasets.Value("string"), "problem": datasets.Value("string"), "answer": datasets.Value("string"),
        "images": datasets.List(datasets.Image()), "problem_type": datasets.Value("string"),
        "options": datasets.List(datasets.Value("string")),
        "qwen3vl_235b_thinking_response": datasets.Value("string")})
    rows = {name: [] for name in features}
    for problem in generate_split(split, n):
        rows["id"].append(problem.id)
        rows["problem"].append("<image>" * len(problem.images) + problem.question)
        rows["answer"].append(problem.answer)
        rows["images"].append([{"bytes": _png(image), "path": None} for image in problem.images])
        rows["problem_type"].append("multiple choice" if problem.meta["family"] == "most" else "numerical")
        rows["options"].append([])  # the options are in the question text, as the testbed writes them
        rows["qwen3vl_235b_thinking_response"].append(problem.solution or "")
    (root / "data").mkdir(parents=True, exist_ok=True)
    with quiet_progress_bars():
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / HUB_SHARD))
    return f"hf:{root}"


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------- benchmarks


def find_adapters(run_root: str | Path, methods) -> dict[str, Path]:
    """{method: <run_root>/<method>-s0/checkpoint/adapter} for the methods whose trained adapter is there."""
    found = {}
    for method in methods:
        path = Path(run_root) / f"{method}-s0" / "checkpoint" / "adapter"
        if (path / "adapter_config.json").is_file():
            found[method] = path
    return found


def free_accelerator_memory() -> None:
    """Drop unreferenced models and return the CUDA cache, so the next model loads into free memory."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def benchmark_models(model: str, adapters: Mapping[str, str | Path | None], out_root: str | Path, *,
                     labels: Mapping[str, str] | None = None, **options) -> dict[str, dict]:
    """``run_benchmarks`` for the base ``model`` with each adapter (None: the model itself), in order.

    ``adapters`` maps a row name (``base``, ``grpo``, ``rlsd``, ...) to an adapter folder or None; each row's
    predictions and Table-2 row go to ``<out_root>/<row name>`` (a rerun generates only what is missing there).
    ``options`` are further ``BenchmarkRunConfig`` fields (``limit``, ``data_dir``, ``max_new_tokens``, ...).
    Returns {row name: the result of ``run_benchmarks``}.
    """
    from rlsd.benchmarks.run import BenchmarkRunConfig, run_benchmarks

    results = {}
    for method, adapter in adapters.items():
        label = (labels or {}).get(method) or METHOD_LABELS.get(method, method)
        cfg = BenchmarkRunConfig(model=model, adapter=None if adapter is None else str(adapter),
                                 out=str(Path(out_root) / method), label=label, **options)
        results[method] = run_benchmarks(cfg)
        free_accelerator_memory()
    return results


def comparison_rows(results: Mapping[str, dict]) -> list[dict]:
    """One row per measured model and per paper row (Base, GRPO, RLSD): accuracy (%) per benchmark, then Avg.

    Measured cells read 'score [low–high]' (95% interval) with the items scored; paper cells are as published.
    """
    names = [n for n in PAPER_BENCHMARKS if any(n in r["benchmarks"] for r in results.values())]
    rows = []
    for method, result in results.items():
        row = {"Row": f"measured: {result['label']}"}
        for name in names:
            entry = result["benchmarks"].get(name)
            if entry is None or entry["score"] is None:
                row[PAPER_BENCHMARKS[name][0]] = ""
                continue
            ci = entry["ci95"]
            interval = "" if ci is None else f" [{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]"
            row[PAPER_BENCHMARKS[name][0]] = f"{100 * entry['score']:.1f}{interval} (n={entry['n_scored']})"
        avg = result["row"].get("Avg.")
        row["Avg."] = "" if avg is None else f"{avg:.1f}"
        rows.append(row)
    for method in PAPER_ROWS:
        row = {"Row": f"paper: {METHOD_LABELS[method]}"}
        row.update({PAPER_BENCHMARKS[n][0]: f"{PAPER_TABLE2[method][n]:.2f}" for n in names})
        row["Avg."] = f"{PAPER_TABLE2[method]['avg']:.2f}"
        rows.append(row)
    return rows


def plot_table2_comparison(results: Mapping[str, dict], title: str | None = None):
    """Grouped bars per benchmark (and Avg.): the measured rows (95% intervals as error bars) beside the paper's
    Base, GRPO and RLSD rows (hatched).  Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    names = [n for n in PAPER_BENCHMARKS if any(n in r["benchmarks"] for r in results.values())]
    columns = [PAPER_BENCHMARKS[n][0] for n in names] + ["Avg."]
    series = []  # (label, values %, (low err, high err) or None, style)
    colours = {"base": "tab:gray", "grpo": "tab:blue", "rlsd": "tab:red"}
    for k, (method, result) in enumerate(results.items()):
        values, low, high = [], [], []
        for name in names:
            entry = result["benchmarks"].get(name)
            score = None if entry is None else entry["score"]
            values.append(math.nan if score is None else 100 * score)
            ci = None if entry is None else entry["ci95"]
            low.append(math.nan if ci is None or score is None else 100 * (score - ci[0]))  # nan: no bar drawn
            high.append(math.nan if ci is None or score is None else 100 * (ci[1] - score))
        avg = result["row"].get("Avg.")
        values.append(math.nan if avg is None else avg)
        low.append(math.nan)  # the average of five intervals is not an interval: none drawn
        high.append(math.nan)
        series.append((f"measured: {result['label']}", values, (low, high),
                       dict(color=colours.get(method, f"C{k + 3}"))))
    for method in PAPER_ROWS:
        values = [PAPER_TABLE2[method][n] for n in names] + [PAPER_TABLE2[method]["avg"]]
        series.append((f"paper ({PAPER_MODEL}): {METHOD_LABELS[method]}", values, None,
                       dict(color=colours[method], alpha=0.35, hatch="//", edgecolor="black", linewidth=0.5)))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(columns) + 2), 5.0))
    x = np.arange(len(columns))
    width = 0.8 / len(series)
    for k, (label, values, err, style) in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * width
        ax.bar(x + offset, values, width, label=label, yerr=None if err is None else np.array(err),
               capsize=2 if err is not None else 0, error_kw=dict(elinewidth=0.8), **style)
    ax.set_xticks(x, columns)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "Table 2: measured rows beside the paper's", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.09), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
