"""The five benchmarks of the paper's Table 2 from the Hugging Face hub, or from a ``save_to_disk`` copy of it.

    items = load_hub_items("mathvista")                                  # AI4Math/MathVista, testmini
    items = load_hub_items("mmmu", data_dir="/data/bench")               # offline: /data/bench/mmmu
    score_responses("mathvista", items, responses)

``HUB_SOURCES`` says where each benchmark lives (checked against the dataset cards and the loaders of lmms-eval and
others that read them):

==============  =================================  ==========================  =====================================
name            hub dataset (config)               splits (scored first)       columns used
==============  =================================  ==========================  =====================================
``mmmu``        ``MMMU/MMMU`` (30 subject configs)  validation (900)            id, question (``<image n>`` inline),
                                                                               options (a stringified list),
                                                                               answer, image_1..image_7,
                                                                               question_type, subfield, ...
``mathvista``   ``AI4Math/MathVista``              testmini (1000)             pid, question, query (the prompt),
                                                                               decoded_image, choices, unit,
                                                                               precision, answer, question_type,
                                                                               answer_type, metadata
``mathvision``  ``MathLLMs/MathVision``            test (3040)                 id, question, options,
                                                                               decoded_image, answer, solution,
                                                                               level, subject
``zerobench``   ``jonathan-roberts1/zerobench``    zerobench_subquestions      question_id, question_text,
                (gated: accept its terms, then     (334), zerobench (100)      question_images_decoded,
                ``huggingface-cli login``)                                     question_answer, image_attribution
``wemath``      ``We-Math/We-Math``                testmini (1740)             ID, key, question, option, answer,
                                                                               image_path (an Image),
                                                                               knowledge concept, question number
==============  =================================  ==========================  =====================================

How rows become the scorers' items (the ONE place where hub rows are mapped): each split is exported once into
the local layout that the benchmark's own loader reads (``mmmu.load``, ``mathvista.load``, ...; the protocol's
prompt, the validation of every field and the error messages are theirs), and that loader builds the items:
MMMU and ZeroBench as parquet (the hub's own format, images embedded), MathVista and We-Math as ``testmini.json``,
MATH-Vision as ``<split>.jsonl``, with each image written as a file under ``images/`` (the bytes as published; the
hub's own image path strings are not trusted as file names).  Exports live under ``cache_dir`` (default
``~/.cache/rlsd/benchmarks``, or ``$RLSD_BENCHMARK_CACHE``) keyed by the dataset's fingerprint, are written to a
temporary folder and renamed into place (a killed export leaves nothing half-written), and are reused.

Offline (``data_dir``): ``<data_dir>/<name>`` is what ``DatasetDict.save_to_disk`` writes, with the split names of
the hub.  MMMU may be saved either as one DatasetDict of all subjects concatenated or as one folder per subject
config (``<data_dir>/mmmu/<Subject>``; the way ``load_dataset("MMMU/MMMU", subject)`` returns it).

Any failure to obtain the data (hub unreachable, offline without a copy, gated dataset without a token, a
``data_dir`` without the benchmark or split) raises ``BenchmarkDataError`` with a one-line message that says what to
do; malformed rows raise the loaders' ``BenchmarkFormatError`` naming dataset, row and field.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import mathvision, mathvista, mmmu, wemath, zerobench
from .common import BenchmarkFormatError, BenchmarkItem

logger = logging.getLogger("rlsd.benchmarks")


class BenchmarkDataError(RuntimeError):
    """A benchmark's data cannot be obtained (hub unreachable or gated, no local copy).  The message is one line."""


@dataclass(frozen=True)
class HubSource:
    """Where one benchmark lives on the hub."""

    repo: str
    """Dataset id on the Hugging Face hub."""
    splits: tuple[str, ...]
    """The splits scored, the one in the paper's Table 2 first."""
    configs: tuple[str | None, ...] = (None,)
    """Dataset configs whose rows together make the split (MMMU: one per subject); None: the default config."""
    gated: bool = False
    """The hub asks the user to accept terms and log in before downloading."""
    data_files: str | None = None
    """The split's parquet files in the repo (``{config}``, ``{split}`` filled in).  ``load_dataset(split=...)``
    downloads EVERY split (huggingface/datasets#7580); naming the files fetches only the one scored (MMMU's test
    split is 3.3 GB against 0.35 GB for validation).  If the pattern matches nothing, the plain call is used."""


MMMU_SUBJECTS = tuple(sorted(subject for subjects in mmmu.DISCIPLINES.values() for subject in subjects))

HUB_SOURCES: dict[str, HubSource] = {
    "mmmu": HubSource("MMMU/MMMU", ("validation",), configs=MMMU_SUBJECTS, data_files="{config}/{split}-*.parquet"),
    "mathvista": HubSource("AI4Math/MathVista", ("testmini",), data_files="data/{split}-*.parquet"),
    "mathvision": HubSource("MathLLMs/MathVision", ("test",)),
    "zerobench": HubSource("jonathan-roberts1/zerobench", ("zerobench_subquestions", "zerobench"), gated=True),
    "wemath": HubSource("We-Math/We-Math", ("testmini",)),
}
"""Benchmark name -> hub source, for the five benchmarks of the paper's Table 2."""

_IMAGE_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}


def default_cache_dir() -> Path:
    """``$RLSD_BENCHMARK_CACHE``, else ``~/.cache/rlsd/benchmarks``."""
    return Path(os.environ.get("RLSD_BENCHMARK_CACHE") or Path.home() / ".cache" / "rlsd" / "benchmarks")


def load_hub_items(name: str, split: str | None = None, *, data_dir: str | Path | None = None,
                   cache_dir: str | Path | None = None, limit: int | None = None) -> list[BenchmarkItem]:
    """Every item of ``name``/``split`` (default: the split of the paper's Table 2), from the hub or ``data_dir``.

    ``limit`` is a hint for MMMU only: subject configs are loaded in order until at least ``limit`` items are in
    hand (a quick look need not download all 30); every other benchmark is one dataset and is loaded whole.
    The items are exactly what the benchmark's local loader builds (see the module docstring).
    """
    try:
        source = HUB_SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown hub benchmark {name!r}; expected one of {sorted(HUB_SOURCES)}") from None
    split = split or source.splits[0]
    if split not in source.splits:
        raise ValueError(f"{name}: split {split!r} is not scored here; expected one of {list(source.splits)}")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    items: list[BenchmarkItem] = []
    for label, config, dataset in _datasets(name, source, split, data_dir):
        root = _export(name, split, label, config, dataset, cache)
        items.extend(_LOADERS[name](root, split))
        if limit is not None and len(items) >= limit:
            break
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise BenchmarkFormatError(f"{source.repo}[{split}]", f"duplicate item id {duplicate!r}")
    return items


# ---------------------------------------------------------------------------
# Getting the datasets
# ---------------------------------------------------------------------------


def _datasets(name: str, source: HubSource, split: str, data_dir) -> Iterator[tuple[str, str | None, object]]:
    """(label for messages, config, ``datasets.Dataset``) for every config that makes up the split."""
    if data_dir is not None:
        yield from _datasets_from_disk(name, source, split, Path(data_dir) / name)
        return
    for config in source.configs:
        yield f"{source.repo}" + (f" ({config})" if config else "") + f"[{split}]", config, \
            _load_from_hub(name, source, config, split)


def _load_from_hub(name: str, source: HubSource, config: str | None, split: str):
    import datasets

    what = source.repo + (f" config {config}" if config else "") + f" split {split}"
    try:
        if source.data_files:
            pattern = source.data_files.format(config=config or "", split=split)
            try:
                return datasets.load_dataset(source.repo, data_files={split: pattern}, split=split)
            except FileNotFoundError:  # the repo's layout changed: fall back to the config (all its splits)
                logger.warning("%s: no files match %s; downloading the whole config", source.repo, pattern)
        return datasets.load_dataset(source.repo, config, split=split)
    except Exception as error:  # connection, offline, gated, missing split: each a different type upstream
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        hint = " (gated: accept its terms on the hub, then `huggingface-cli login` or set HF_TOKEN)" if source.gated \
            else ""
        raise BenchmarkDataError(
            f"{name}: cannot load {what} from the Hugging Face hub{hint}: {type(error).__name__}: {reason}. "
            f"Offline? Pass --data-dir DIR with DIR/{name} written by DatasetDict.save_to_disk") from None


def _load_dict(path: Path, name: str, split: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:
        raise BenchmarkDataError(f"{name}: cannot read {path} as a save_to_disk dataset: "
                                 f"{type(error).__name__}: {' '.join(str(error).split())[:200]}") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise BenchmarkDataError(f"{name}: {path} holds a single Dataset; save a DatasetDict with the hub's split "
                                 f"names (e.g. DatasetDict({{{split!r}: dataset}}).save_to_disk(...))")
    if split not in loaded:
        raise BenchmarkDataError(f"{name}: {path} has no split {split!r} (it has {sorted(loaded)})")
    return loaded[split]


def _datasets_from_disk(name: str, source: HubSource, split: str, path: Path):
    if not path.is_dir():
        raise BenchmarkDataError(f"{name}: {path} not found; --data-dir DIR must hold DIR/{name} written by "
                                 "DatasetDict.save_to_disk")
    if name == "mmmu" and not (path / "dataset_dict.json").is_file():
        subjects = sorted(p.name for p in path.iterdir() if (p / "dataset_dict.json").is_file())
        if not subjects:
            raise BenchmarkDataError(f"mmmu: {path} holds neither a DatasetDict nor one per subject "
                                     f"(<Subject>/dataset_dict.json, e.g. {path / 'Accounting'})")
        unknown = sorted(set(subjects) - set(MMMU_SUBJECTS))
        if unknown:
            raise BenchmarkDataError(f"mmmu: {path} has folders that are not MMMU subjects: {unknown[:5]}")
        for subject in subjects:
            yield str(path / subject) + f"[{split}]", subject, _load_dict(path / subject, name, split)
        return
    yield str(path) + f"[{split}]", None, _load_dict(path, name, split)


# ---------------------------------------------------------------------------
# Exporting a split into the local layout its loader reads
# ---------------------------------------------------------------------------


def _fingerprint(dataset) -> str:
    value = getattr(dataset, "_fingerprint", None)
    if not value:  # every datasets.Dataset has one; this keeps the export keyed if a version drops it
        import hashlib

        value = hashlib.sha1(repr((dataset.features, dataset.num_rows)).encode()).hexdigest()[:16]
    return "".join(c for c in str(value) if c.isalnum())[:32]


def _export(name: str, split: str, label: str, config: str | None, dataset, cache: Path) -> Path:
    """The folder holding ``dataset`` in the loader's layout; written once, atomically, then reused."""
    root = cache / name / split / f"{config or 'all'}-{_fingerprint(dataset)}"
    if (root / ".complete").is_file():
        return root
    tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _EXPORTERS[name](dataset, tmp, split, label, config)
        (tmp / ".complete").write_text(json.dumps({"source": label, "rows": dataset.num_rows}) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _require_columns(dataset, columns: tuple[str, ...], label: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise BenchmarkFormatError(label, f"missing column(s) {missing}; the dataset has {dataset.column_names}")


def _undecoded_rows(dataset, image_columns: tuple[str, ...]) -> Iterator[dict]:
    """Rows with image cells as ``{"bytes", "path"}`` (no decoding; the bytes are written as published)."""
    import datasets

    # datasets >= 4 types image lists as List; older releases as Sequence
    _LIST_FEATURES = tuple(t for t in (getattr(datasets, "List", None), datasets.Sequence) if t is not None)
    for column in image_columns:
        feature = dataset.features[column]
        if isinstance(feature, datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
        elif isinstance(feature, _LIST_FEATURES) and isinstance(feature.feature, datasets.Image):
            dataset = dataset.cast_column(column, type(feature)(datasets.Image(decode=False)))
    return iter(dataset)


def _write_image(cell, directory: Path, stem: str, label: str, row: int, field: str) -> str:
    """Write one image cell to ``directory/stem.<format>``; returns the path relative to the export root."""
    from PIL import Image, UnidentifiedImageError

    data = cell.get("bytes") if isinstance(cell, dict) else None
    if not data and isinstance(cell, dict) and cell.get("path") and Path(cell["path"]).is_file():
        data = Path(cell["path"]).read_bytes()  # a dataset built from local image files keeps only their paths
    if not data:
        raise BenchmarkFormatError(label, "no image", row=row, field_name=field)
    try:
        with Image.open(io.BytesIO(data)) as image:
            suffix = _IMAGE_SUFFIX.get(image.format or "", ".img")
    except (UnidentifiedImageError, OSError) as error:
        raise BenchmarkFormatError(label, f"not an image ({error})", row=row, field_name=field) from None
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}{suffix}").write_bytes(data)
    return f"images/{stem}{suffix}"


def _write_json(path: Path, value) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, ensure_ascii=False)


def _export_parquet(dataset, root: Path, split: str, label: str, config: str | None) -> None:
    """MMMU / ZeroBench: the hub's parquet layout, which their loaders read (images stay embedded)."""
    if config:  # the folder name is the subject (the MMMU loader's fallback when an id has no subject)
        root = root / config
    root.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(root / f"{split}-00000-of-00001.parquet"))


MMMU_COLUMNS = ("id", "question", "options", "answer", "question_type") + tuple(f"image_{k}" for k in range(1, 8))
ZEROBENCH_COLUMNS = ("question_id", "question_text", "question_answer", "question_images_decoded")
MATHVISTA_COLUMNS = ("pid", "question", "decoded_image", "choices", "unit", "precision", "answer", "question_type",
                     "answer_type")
MATHVISION_COLUMNS = ("id", "question", "options", "decoded_image", "answer", "level", "subject")
WEMATH_COLUMNS = ("ID", "key", "question", "option", "answer", "image_path", "knowledge concept")


def _export_mmmu(dataset, root, split, label, config):
    _require_columns(dataset, MMMU_COLUMNS, label)
    _export_parquet(dataset, root, split, label, config)


def _export_zerobench(dataset, root, split, label, config):
    _require_columns(dataset, ZEROBENCH_COLUMNS, label)
    _export_parquet(dataset, root, split, label, config)


def _export_mathvista(dataset, root: Path, split: str, label: str, config) -> None:
    """``<split>.json`` (pid -> record, the GitHub release's shape) and ``query.json`` (pid -> the hub's prompt)."""
    _require_columns(dataset, MATHVISTA_COLUMNS, label)
    records, queries = {}, {}
    for row, record in enumerate(_undecoded_rows(dataset, ("decoded_image",))):
        pid = str(record["pid"])
        if pid in records:
            raise BenchmarkFormatError(label, f"duplicate pid {pid!r}", row=row, field_name="pid")
        image = _write_image(record["decoded_image"], root / "images", f"{row:05d}", label, row, "decoded_image")
        records[pid] = {k: v for k, v in record.items() if k not in ("decoded_image", "query")} | {"image": image}
        if isinstance(record.get("query"), str) and record["query"]:
            queries[pid] = record["query"]
    _write_json(root / f"{split}.json", records)
    _write_json(root / "query.json", queries)


def _export_mathvision(dataset, root: Path, split: str, label: str, config) -> None:
    """``<split>.jsonl`` as in the GitHub release, ``image`` pointing at the written file."""
    _require_columns(dataset, MATHVISION_COLUMNS, label)
    with open(root / f"{split}.jsonl", "w", encoding="utf-8") as handle:
        for row, record in enumerate(_undecoded_rows(dataset, ("decoded_image",))):
            image = _write_image(record["decoded_image"], root / "images", f"{row:05d}", label, row, "decoded_image")
            out = {k: v for k, v in record.items() if k != "decoded_image"} | {"image": image}
            handle.write(json.dumps(out, ensure_ascii=False) + "\n")


def _export_wemath(dataset, root: Path, split: str, label: str, config) -> None:
    """``<split>.json`` (a list, as in the GitHub release), ``image_path`` pointing at the written file."""
    _require_columns(dataset, WEMATH_COLUMNS, label)
    records = []
    for row, record in enumerate(_undecoded_rows(dataset, ("image_path",))):
        image = _write_image(record["image_path"], root / "images", f"{row:05d}", label, row, "image_path")
        records.append(record | {"image_path": image})
    _write_json(root / f"{split}.json", records)


_EXPORTERS = {"mmmu": _export_mmmu, "zerobench": _export_zerobench, "mathvista": _export_mathvista,
              "mathvision": _export_mathvision, "wemath": _export_wemath}


def _load_with(module):
    def load(root: Path, split: str) -> list[BenchmarkItem]:
        return module.load(root, split, image_root=root, image_cache=root / "images")

    return load


_LOADERS = {name: _load_with(module) for name, module in
            (("mmmu", mmmu), ("zerobench", zerobench), ("mathvista", mathvista), ("mathvision", mathvision),
             ("wemath", wemath))}
