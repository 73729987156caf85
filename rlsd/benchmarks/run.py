"""``python -m rlsd benchmark``: a model (optionally with a LoRA adapter) through the paper's five benchmarks, as one
row of its Table 2 with 95% confidence intervals.

    result = run_benchmarks(BenchmarkRunConfig(model="Qwen/Qwen3-VL-8B-Instruct", adapter="runs/rlsd/adapter",
                                               out="runs/bench/rlsd"))
    result["row"]        # {"MMMU": 67.2, ..., "Avg.": 56.2}  (%)
    result["headlines"]  # {"mmmu": 0.672, ...}  (fractions; what ``paper.table2_rows`` takes)

What it does, in order:

1. Data first (a missing dataset fails in seconds, before a model is downloaded): every benchmark's items from
   the hub or ``--data-dir`` (``hub.load_hub_items``).  ZeroBench is scored on both its splits: the sub-questions
   (the paper's column) and the 100 main questions (reported beside it).
2. ``--limit N`` keeps the first N items of each split (We-Math: the first whole problem groups totalling at least
   N items, so that its group score exists).  A limited row is a quick look, not the benchmark's number; the
   output says how many items each score rests on.
3. Predictions: one JSONL file per split under ``<out>/predictions/`` (``{"id", "response"}`` per line, appended
   and flushed batch by batch).  A rerun reads them and generates only the items not there yet, so an interrupted
   run resumes where it stopped; a partial last line (a kill mid-write) is cut off and its items generated again.
   ``<out>/run.json`` records what the predictions depend on (model, adapter, decoding, pixel budget, seed); a
   rerun with different settings into the same ``--out`` is refused rather than mixed.  When nothing is left to
   generate, the model is not even loaded.
4. Generation: the paper's validation decoding (``rlsd.rollout.VALIDATION_SAMPLING``: T 0.7, top-p 0.8, top-k 20)
   with a 4,096-token response budget (the paper's), batched, with a progress bar per split.  Each item is seeded
   from ``--seed`` and its own id (``rlsd.rollout.item_seed``), so a resumed run, at any ``--batch-size``, gives
   the responses an uninterrupted one would.  Images are resized to
   at most ``max_pixels`` (default 1,048,576: the upper end of the authors' 262,144-1,048,576 range).
5. Scoring: each benchmark's official protocol (``score_responses``), the headline with a 95% interval: Wilson for
   the accuracies (MMMU, MathVista, MATH-Vision, ZeroBench); for We-Math's Score (Strict), which is the mean over
   problem groups of 1 (composite and all its steps right), 0.5 (steps right, composite wrong) or 0, a normal
   interval on that mean over groups.  Written to ``<out>/table2_row.json`` and ``<out>/table2_row.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from rlsd.files import RunLock, append_text, disk_full, disk_full_error, write_text

from .common import BenchmarkItem
from .hub import HUB_SOURCES, load_hub_items
from .paper import PAPER_BENCHMARKS, PAPER_TABLE2, markdown_table

logger = logging.getLogger("rlsd.benchmarks")

TABLE2_NAMES = tuple(PAPER_BENCHMARKS)
"""The benchmarks of a Table-2 row, in the paper's column order."""
DEFAULT_MAX_NEW_TOKENS = 4096
DEFAULT_MAX_PIXELS = 1024 * 1024


class BenchmarkRunError(RuntimeError):
    """A benchmark run cannot proceed as asked (bad option, foreign or corrupt predictions).  One-line message."""


@dataclass
class BenchmarkRunConfig:
    """One model (plus optional adapter) through some of the paper's benchmarks."""

    model: str
    """Hub id or local directory of the (base) model, loaded with ``rlsd.model.load_policy``."""
    adapter: str | None = None
    """A peft LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``) put on the model."""
    benchmarks: Sequence[str] = TABLE2_NAMES
    """Which benchmarks: any of mmmu, mathvista, mathvision, zerobench, wemath."""
    limit: int | None = None
    """Score only the first N items of each split (a quick look; see the module docstring for We-Math)."""
    data_dir: str | None = None
    """Read ``<data_dir>/<benchmark>`` (``DatasetDict.save_to_disk`` output) instead of the hub."""
    out: str = "runs/benchmark"
    """Where predictions (``predictions/*.jsonl``), ``run.json`` and the Table-2 row go."""
    cache_dir: str | None = None
    """Where hub splits are exported for the loaders (default ``~/.cache/rlsd/benchmarks``)."""
    batch_size: int = 8
    """Items per generate call."""
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    """Response budget per item (the paper: 4k)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Upper bound on the pixels of each image after resizing (never raised above the processor's own)."""
    seed: int = 0
    """Seed of the sampling (see the module docstring)."""
    device: str | None = None
    """torch device; default cuda when available, else cpu."""
    dtype: str | None = None
    """float32, bfloat16 or float16; default bfloat16 on a GPU that has it, float16 on one that has not, else
    float32."""
    load_in_4bit: bool = False
    """Load the base model in NF4 (bitsandbytes; vision tower and head kept in 16-bit), as the GPU training profiles
    do: the 8B model in 16-bit (~17.5 GB) cannot load on a T4 and barely on an L4."""
    label: str | None = None
    """Name of the row in the table (default: the model, plus the adapter's folder)."""
    progress: bool = True
    """Show a progress bar per split."""
    extra: dict = field(default_factory=dict)
    """Extra ``ModelSpec`` fields for ``load_policy`` (e.g. ``{"attn_implementation": "sdpa"}``)."""


def parse_benchmarks(text: str) -> tuple[str, ...]:
    """``all`` or a comma-separated list of benchmark names -> names in the paper's column order."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise BenchmarkRunError("--benchmarks names no benchmark; use 'all' or e.g. mmmu,mathvista")
    if names == ["all"]:
        return TABLE2_NAMES
    unknown = [n for n in names if n not in TABLE2_NAMES]
    if unknown:
        raise BenchmarkRunError(f"unknown benchmark(s) {unknown}; expected 'all' or any of {', '.join(TABLE2_NAMES)}")
    return tuple(n for n in TABLE2_NAMES if n in names)


def limit_items(name: str, items: list[BenchmarkItem], limit: int | None) -> list[BenchmarkItem]:
    """The first ``limit`` items; for We-Math the first whole problem groups holding at least ``limit`` items."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise BenchmarkRunError(f"--limit must be >= 1, got {limit}")
    if name != "wemath":
        return list(items[:limit])
    groups: list[str] = []
    for item in items:
        if item.meta["group"] not in groups:
            groups.append(item.meta["group"])
    size = {g: 0 for g in groups}
    for item in items:
        size[item.meta["group"]] += 1
    kept, total = set(), 0
    for group in groups:
        if total >= limit:
            break
        kept.add(group)
        total += size[group]
    return [item for item in items if item.meta["group"] in kept]


# ---------------------------------------------------------------------------
# Predictions on disk
# ---------------------------------------------------------------------------


def read_predictions(path: Path) -> dict[str, str]:
    """id -> response from a predictions file; a partial last line (killed mid-write) is cut off the file."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    *complete, tail = data.split(b"\n")
    if tail:  # no newline at the end: the last write did not finish
        logger.warning("%s: dropping a partial last line (%d bytes); its item will be generated again", path,
                       len(tail))
        with open(path, "r+b") as handle:
            handle.truncate(len(data) - len(tail))
    predictions = {}
    for line_number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise BenchmarkRunError(f"{path}: line {line_number}: not JSON ({error}); the file is corrupt: delete it "
                                    "to regenerate that split") from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or \
                not isinstance(record.get("response"), str):
            raise BenchmarkRunError(f"{path}: line {line_number}: expected {{\"id\": str, \"response\": str}}")
        predictions[record["id"]] = record["response"]
    return predictions


def append_predictions(path: Path, records: list[dict]) -> None:
    """Append one JSON line per record in a single write, flushed to disk (a kill loses at most this batch; a full
    disk loses nothing written before: the file is cut back to its last complete line)."""
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    with _disk_full_is_one_line(path.parent, f"{path.name} (finished predictions are intact)"):
        append_text(path, text, fsync=True)


@contextmanager
def _disk_full_is_one_line(directory: Path, what: str):
    try:
        yield
    except OSError as error:
        if not disk_full(error):
            raise
        raise disk_full_error(directory, what, "nothing written before is lost") from None


def _run_identity(cfg: BenchmarkRunConfig, sampling) -> dict:
    """What the predictions depend on: a rerun into the same --out must match it."""
    return {"model": cfg.model, "adapter": str(Path(cfg.adapter).resolve()) if cfg.adapter else None,
            "sampling": dataclasses.asdict(sampling), "max_pixels": cfg.max_pixels, "seed": cfg.seed,
            "seeding": "per item",  # predictions of runs seeded per batch (before this key) are not mixed in
            "dtype": cfg.dtype or default_dtype(cfg.device or default_device()),
            **({"load_in_4bit": True} if cfg.load_in_4bit else {})}  # absent when off: older run.json files match


def _check_identity(out: Path, identity: dict) -> None:
    path = out / "run.json"
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise BenchmarkRunError(f"{path}: not JSON ({error})") from None
        differing = sorted(k for k in identity if previous.get(k) != identity[k])
        if differing:
            key = differing[0]
            raise BenchmarkRunError(f"{out} holds predictions made with other settings ({key}: {previous.get(key)!r} "
                                    f"there, {identity[key]!r} now); choose another --out or delete {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    with _disk_full_is_one_line(out, "run.json"):
        write_text(path, json.dumps(identity, indent=2) + "\n")


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    import torch

    if not str(device).startswith("cuda"):
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def check_adapter(adapter: str | Path) -> Path:
    """The adapter directory, checked: a local folder with adapter_config.json and adapter_model.safetensors."""
    path = Path(adapter)
    if not path.is_dir():
        raise BenchmarkRunError(f"--adapter {path}: not a directory (expected a peft adapter folder)")
    if not (path / "adapter_config.json").is_file():
        raise BenchmarkRunError(f"--adapter {path}: no adapter_config.json (not a peft adapter folder)")
    if not (path / "adapter_model.safetensors").is_file():
        found = "adapter_model.bin (a pickle, refused)" if (path / "adapter_model.bin").is_file() else "none"
        raise BenchmarkRunError(f"--adapter {path}: no adapter_model.safetensors (found: {found}); only safetensors "
                                "weights are loaded")
    from rlsd.checkpoint import CheckpointError
    from rlsd.model import check_adapter_files

    try:  # complete and a LoRA adapter, before any data or model loads
        check_adapter_files(path)
    except CheckpointError as error:
        raise BenchmarkRunError(f"--{error}") from None
    return path


def limit_pixels(processor, max_pixels: int) -> None:
    """Lower the image processor's pixel budget to ``max_pixels`` (it is never raised)."""
    size = processor.image_processor.size
    current = size["longest_edge"] if "longest_edge" in size else None
    if current is None or max_pixels < current:
        size["longest_edge"] = max_pixels


def load_model(cfg: BenchmarkRunConfig):
    """(model, processor) in eval mode: ``load_policy(ModelSpec(path=model))``, then the adapter if any."""
    from rlsd.model import ModelSpec, load_policy

    device = cfg.device or default_device()
    spec = ModelSpec(path=cfg.model, dtype=cfg.dtype or default_dtype(device), load_in_4bit=cfg.load_in_4bit,
                     **cfg.extra)
    model, processor = load_policy(spec, device=device, trainable=False)
    if cfg.adapter:
        from rlsd.model import load_adapter

        # a 4-bit base is already placed (device_map) and cannot be moved
        model = load_adapter(model, check_adapter(cfg.adapter), None if cfg.load_in_4bit else device)
    model.eval()
    limit_pixels(processor, cfg.max_pixels)
    return model, processor


# ---------------------------------------------------------------------------
# Confidence intervals
# ---------------------------------------------------------------------------


def wemath_group_scores(items: list[BenchmarkItem], correct: list[bool]) -> list[float]:
    """Per complete problem group: 1 (composite and all steps right), 0.5 (steps right, composite wrong), else 0.

    Their mean is We-Math's Score (Strict) = (N - 0.5 IG - RM_strict - IK) / N = (CM_strict + 0.5 IG) / N.
    """
    groups: dict[str, dict] = {}
    for item, flag in zip(items, correct):
        group = groups.setdefault(item.meta["group"], {"subs": [], "comp": None, "n_steps": item.meta["n_steps"]})
        if item.meta["step"] == "multi":
            group["comp"] = flag
        else:
            group["subs"].append(flag)
    scores = []
    for group in groups.values():
        if group["comp"] is None or len(group["subs"]) != group["n_steps"]:
            continue  # incomplete group: left out, as the scorer does
        steps_right = all(group["subs"])
        scores.append(1.0 if steps_right and group["comp"] else 0.5 if steps_right else 0.0)
    return scores


def mean_interval(values: list[float], z: float = 1.96) -> list[float] | None:
    """Normal-approximation 95% interval of a mean of values in [0, 1], clipped to [0, 1]; None below 2 values
    (one value says nothing about the spread)."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return [max(0.0, mean - half), min(1.0, mean + half)]


def headline_interval(name: str, items: list[BenchmarkItem], result: dict) -> tuple[list[float] | None, int]:
    """(95% interval of the headline, the number of units it averages: items, or We-Math groups)."""
    from rlsd.evaluate import wilson_interval

    if name == "wemath":
        scores = wemath_group_scores(items, result["correct"])
        if scores and abs(sum(scores) / len(scores) - result["headline"]) > 1e-9:
            raise AssertionError("wemath: group scores disagree with the scorer's score_strict")
        return mean_interval(scores), len(scores)
    n = len(result["correct"])
    return (wilson_interval(sum(result["correct"]), n) if n else None), n


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def _splits(name: str) -> tuple[str, ...]:
    return HUB_SOURCES[name].splits


def run_benchmarks(cfg: BenchmarkRunConfig, model_and_processor=None) -> dict:
    """Load, generate what is missing, score; returns the row (see ``format_result``) and writes it to ``cfg.out``.

    ``model_and_processor`` (already loaded) skips ``load_model``; the run's identity still uses ``cfg.model``.
    """
    from rlsd.rollout import VALIDATION_SAMPLING

    if cfg.batch_size < 1:
        raise BenchmarkRunError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.max_new_tokens < 1:
        raise BenchmarkRunError(f"--max-new-tokens must be >= 1, got {cfg.max_new_tokens}")
    if cfg.limit is not None and cfg.limit < 1:
        raise BenchmarkRunError(f"--limit must be >= 1, got {cfg.limit}")
    if cfg.adapter:
        check_adapter(cfg.adapter)
    names = parse_benchmarks(",".join(cfg.benchmarks))
    sampling = dataclasses.replace(VALIDATION_SAMPLING, max_new_tokens=cfg.max_new_tokens)
    out = Path(cfg.out)

    # 1-2. data first: every split's items, limited
    tasks = []
    for name in names:
        for split in _splits(name):
            loaded = load_hub_items(name, split, data_dir=cfg.data_dir, cache_dir=cfg.cache_dir, limit=cfg.limit)
            lazy = cfg.limit is not None and len(HUB_SOURCES[name].configs) > 1  # MMMU: not every subject loaded
            tasks.append({"name": name, "split": split, "n_total": None if lazy else len(loaded),
                          "items": limit_items(name, loaded, cfg.limit)})

    # 3. predictions already on disk (one run per --out: a second one is refused naming this one)
    lock = RunLock(out, "benchmark")
    lock.check()
    _check_identity(out, _run_identity(cfg, sampling))
    with lock:
        return _generate_and_score(cfg, names, tasks, sampling, out, model_and_processor)


def _generate_and_score(cfg, names, tasks, sampling, out: Path, model_and_processor) -> dict:
    from . import check_generatable, generate_responses, score_responses

    (out / "predictions").mkdir(parents=True, exist_ok=True)
    for task in tasks:
        task["path"] = out / "predictions" / f"{task['name']}.{task['split']}.jsonl"
        task["done"] = read_predictions(task["path"])
        task["pending"] = [item for item in task["items"] if item.id not in task["done"]]
        check_generatable(task["pending"])

    # 4. generation (the model is loaded only if something is left to generate)
    generated = {}
    if any(task["pending"] for task in tasks):
        model, processor = model_and_processor or load_model(cfg)
        limit_pixels(processor, cfg.max_pixels)
        from tqdm.auto import tqdm

        for task in tasks:
            pending, key = task["pending"], f"{task['name']}/{task['split']}"
            generated[key] = 0
            if not pending:
                continue
            with tqdm(total=len(pending), desc=key, unit="item", disable=not cfg.progress) as bar:
                for start in range(0, len(pending), cfg.batch_size):
                    chunk = pending[start:start + cfg.batch_size]
                    responses = generate_responses(model, processor, chunk, sampling=sampling,
                                                   batch_size=len(chunk), progress=False, seed=cfg.seed)
                    append_predictions(task["path"], [{"id": item.id, "response": response}
                                                      for item, response in zip(chunk, responses)])
                    task["done"].update((item.id, response) for item, response in zip(chunk, responses))
                    generated[key] += len(chunk)
                    bar.update(len(chunk))
    else:
        generated = {f"{task['name']}/{task['split']}": 0 for task in tasks}

    # 5. scoring
    scores = {}
    for task in tasks:
        name, split, items = task["name"], task["split"], task["items"]
        result = score_responses(name, items, [task["done"][item.id] for item in items])
        interval, units = headline_interval(name, items, result)
        scores[f"{name}/{split}"] = {
            "benchmark": name, "split": split, "metric": result["headline_key"], "score": result["headline"],
            "ci95": interval, "n_scored": len(items), "n_units": units, "n_total": task["n_total"],
            "limited": cfg.limit is not None, "metrics": _plain(result["metrics"]),
        }
    result = format_result(cfg, names, scores, generated, sampling)
    _write_outputs(out, result)
    return result


def _plain(metrics: dict) -> dict:
    """The scorer's metrics without the per-group breakdowns (they stay available through score_responses)."""
    return {k: v for k, v in metrics.items() if not k.startswith("per_")}


def format_result(cfg: BenchmarkRunConfig, names: Sequence[str], scores: dict, generated: dict, sampling) -> dict:
    """The output: per benchmark its Table-2 cell (score, 95% CI, items scored), the row in %, and the run."""
    label = cfg.label or (cfg.model + (f" + {Path(cfg.adapter).name}" if cfg.adapter else ""))
    benchmarks, row, headlines = {}, {"Method": label}, {}
    for name in names:
        column, paper_split = PAPER_BENCHMARKS[name]
        main = dict(scores[f"{name}/{_splits(name)[0]}"])
        main["column"] = column
        main["paper"] = {method: PAPER_TABLE2[method][name] for method in ("base", "rlsd")}
        for split in _splits(name)[1:]:  # ZeroBench's 100 main questions, reported beside the paper's column
            main.setdefault("also", {})[split] = scores[f"{name}/{split}"]
        benchmarks[name] = main
        headlines[name] = main["score"]
        row[column] = None if main["score"] is None else 100.0 * main["score"]
    complete = all(name in headlines and headlines[name] is not None for name in TABLE2_NAMES)
    row["Avg."] = 100.0 * sum(headlines[n] for n in TABLE2_NAMES) / len(TABLE2_NAMES) if complete else None
    return {
        "label": label, "model": cfg.model, "adapter": cfg.adapter, "limit": cfg.limit,
        "decoding": dataclasses.asdict(sampling), "max_pixels": cfg.max_pixels, "seed": cfg.seed,
        "benchmarks": benchmarks, "row": row, "headlines": headlines, "generated": generated,
        "note": ("quick look: each score rests on the first --limit items only, not the benchmark's number"
                 if cfg.limit else "full splits"),
    }


def _pct(value) -> str:
    return "" if value is None else f"{100.0 * value:.1f}"


def readable_table(result: dict) -> str:
    """Markdown: one line per scored split (score, 95% CI, items), then the Table-2 row."""
    lines = []
    for name, entry in result["benchmarks"].items():
        for part in [entry] + list(entry.get("also", {}).values()):
            ci = part["ci95"]
            lines.append({
                "Benchmark": entry["column"] + ("" if part is entry else f" ({part['split']})"),
                "Split": part["split"], "Metric": part["metric"], "Score (%)": _pct(part["score"]),
                "95% CI (%)": "n/a" if ci is None else f"{_pct(ci[0])}–{_pct(ci[1])}",
                "Items scored": (str(part["n_scored"]) if part["n_total"] is None else
                                 f"{part['n_scored']}/{part['n_total']}")
                                + (f" ({part['n_units']} groups)" if name == "wemath" else ""),
                "Paper Base (%)": f"{entry['paper']['base']:.2f}" if part is entry else "",
                "Paper RLSD (%)": f"{entry['paper']['rlsd']:.2f}" if part is entry else "",
            })
    row_columns = ["Method"] + [PAPER_BENCHMARKS[n][0] for n in result["benchmarks"]] + ["Avg."]
    return "\n".join([f"## {result['label']}", "", f"({result['note']})", "", markdown_table(lines), "",
                      "Table-2 row (%):", "", markdown_table([result["row"]], row_columns, digits=2)])


def _write_outputs(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with _disk_full_is_one_line(out, "the Table-2 row (the predictions are intact; rerun to score them)"):
        write_text(out / "table2_row.json", json.dumps(result, indent=2) + "\n")
        write_text(out / "table2_row.md", readable_table(result) + "\n")
