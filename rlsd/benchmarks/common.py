"""Shared pieces of the benchmark loaders: the item record, strict file readers, image handling.

Everything here is protocol-neutral.  Benchmark-specific prompt building, extraction and scoring live in
one module per benchmark (``mmmu.py``, ``mathvista.py``, ...).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from rapidfuzz.distance import Levenshtein as _rapidfuzz_levenshtein

logger = logging.getLogger("rlsd.benchmarks")


@dataclass
class BenchmarkItem:
    """One evaluation question, in a benchmark-neutral shape.

    ``prompt`` is the text the benchmark's official protocol sends to the model (images go separately, see
    ``build_messages``); it is "" when the local files hold no question text (MMMU answer-dict-only mode).
    ``images`` are file paths in the order the protocol passes them; they may not exist on disk
    (annotation-only checkouts), in which case ``images_missing`` is True.  ``answer`` is the gold answer as
    the official scorer compares it (a string, or a list of acceptable strings for a few MMMU items).
    ``choices`` are the option texts in letter order (A, B, ...) or None for free-form items.
    ``answer_type`` is benchmark-specific (e.g. "multiple-choice"/"open", "integer"/"float"/"text"/"list").
    """

    benchmark: str
    id: str
    question: str
    prompt: str
    images: list[str]
    answer: Any
    choices: list[str] | None
    answer_type: str
    meta: dict = field(default_factory=dict)
    images_missing: bool = False

    @property
    def has_question(self) -> bool:
        return bool(self.prompt)


class BenchmarkFormatError(ValueError):
    """A local benchmark file does not have the expected format.  The message names file, row and field."""

    def __init__(self, file: Path | str, problem: str, row: Any = None, field_name: str | None = None):
        where = [str(file)]
        if row is not None:
            where.append(f"row {row}")
        if field_name is not None:
            where.append(f"field {field_name!r}")
        super().__init__(": ".join(where) + ": " + problem)
        self.file, self.row, self.field = str(file), row, field_name


# ---------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error is reported with the file name and position."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise BenchmarkFormatError(path, f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}")


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object) for each non-blank line of a JSONL file."""
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise BenchmarkFormatError(path, f"invalid JSON: {error.msg}", row=line_number)
            if not isinstance(record, dict):
                raise BenchmarkFormatError(path, f"expected a JSON object, got {type(record).__name__}",
                                           row=line_number)
            yield line_number, record


def read_parquet_rows(paths: Iterable[Path]) -> Iterator[tuple[Path, int, dict]]:
    """Yield (file, 0-based row, record) from local parquet files (pyarrow; no network)."""
    import pyarrow.parquet as pq

    for path in paths:
        try:
            table = pq.read_table(path)
        except Exception as error:  # pyarrow raises several unrelated types for a corrupt file
            raise BenchmarkFormatError(path, f"cannot read parquet: {error}")
        for row, record in enumerate(table.to_pylist()):
            yield path, row, record


def require(record: dict, name: str, types: type | tuple[type, ...], file: Path, row: Any,
            *, allow_none: bool = False) -> Any:
    """``record[name]``, checked for presence and type; otherwise a BenchmarkFormatError naming the place."""
    if not isinstance(record, dict):
        raise BenchmarkFormatError(file, f"expected an object, got {type(record).__name__}", row=row)
    if name not in record:
        raise BenchmarkFormatError(file, "missing", row=row, field_name=name)
    value = record[name]
    if value is None and allow_none:
        return None
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        ok = False  # JSON true/false is not a number here
    else:
        ok = isinstance(value, types)
    if not ok:
        wanted = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise BenchmarkFormatError(file, f"expected {wanted}, got {type(value).__name__} ({value!r:.60})",
                                   row=row, field_name=name)
    return value


def require_str_list(record: dict, name: str, file: Path, row: Any, *, allow_none: bool = False) -> list[str] | None:
    """A list of strings (e.g. choices)."""
    value = require(record, name, list, file, row, allow_none=allow_none)
    if value is None:
        return None
    for index, entry in enumerate(value):
        if not isinstance(entry, str):
            raise BenchmarkFormatError(file, f"entry {index} is {type(entry).__name__}, expected str",
                                       row=row, field_name=name)
    return list(value)


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def default_image_cache(benchmark: str, split: str) -> Path:
    """Where embedded (parquet) images are written when no ``image_cache`` is given."""
    return Path(tempfile.gettempdir()) / "rlsd_benchmark_images" / benchmark / split


def materialise_image(value: Any, image_root: Path, cache_dir: Path, stem: str) -> str | None:
    """A file path for an image cell: a relative path string, or an HF ``{"bytes", "path"}`` struct.

    Embedded bytes are written once to ``cache_dir`` (named by ``stem`` + a content hash, so re-loading
    is idempotent).  Returns None for an empty cell.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return str(resolve_path(value, image_root)) if value else None
    if isinstance(value, dict):
        data = value.get("bytes")
        if data:
            digest = hashlib.sha1(data).hexdigest()[:12]
            suffix = Path(value.get("path") or "").suffix or ".png"
            target = cache_dir / f"{stem}_{digest}{suffix}"
            if not target.exists():
                cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(target.suffix + ".tmp")
                tmp.write_bytes(data)
                tmp.replace(target)
            return str(target)
        if value.get("path"):
            return str(resolve_path(value["path"], image_root))
        return None
    raise TypeError(f"unsupported image cell of type {type(value).__name__}")


def resolve_path(relative: str, image_root: Path) -> Path:
    """``image_root / relative``, or ``image_root / images / relative`` if only that one exists."""
    path = Path(relative)
    if path.is_absolute():
        return path
    first = image_root / path
    if not first.exists() and (image_root / "images" / path).exists():
        return image_root / "images" / path
    return first


def flag_missing_images(items: list[BenchmarkItem], benchmark: str, image_root: Path) -> None:
    """Set ``images_missing`` on each item and log ONE warning per load when any image file is absent.

    Annotation-only checkouts are a supported mode: responses computed elsewhere can still be scored, but
    nothing can be generated from these items.
    """
    missing = 0
    for item in items:
        item.images_missing = (not item.images and item.meta.get("expects_images", True)) or any(
            not Path(p).is_file() for p in item.images)
        missing += item.images_missing
    if missing:
        logger.warning(
            "%s: %d of %d items have missing image files (looked under %s); only annotations are available, "
            "so responses can be scored but prompts cannot be sent to a model",
            benchmark, missing, len(items), image_root)


def letters(n: int) -> list[str]:
    """The first ``n`` option letters: A, B, C, ..."""
    return [chr(ord("A") + i) for i in range(n)]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1).

    rapidfuzz's C implementation (bit-parallel, about O(len(a) * len(b) / 64)), the algorithm behind the
    ``Levenshtein.distance`` that MathVista's official scorer calls: a 100k-character response against a
    choice takes milliseconds, where a pure-Python table took seconds.
    """
    return _rapidfuzz_levenshtein.distance(a, b)


def accuracy(flags: Iterable[bool]) -> float:
    """Mean of booleans; 0.0 for an empty input."""
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0


def breakdown(items: list[BenchmarkItem], correct: list[bool], key) -> dict[str, dict]:
    """{group: {"n", "correct", "accuracy"}} for ``key(item)`` (a value or a list of values per item)."""
    groups: dict[str, list[bool]] = {}
    for item, flag in zip(items, correct):
        values = key(item)
        for value in values if isinstance(values, list) else [values]:
            groups.setdefault(str(value), []).append(flag)
    return {group: {"n": len(flags), "correct": sum(flags), "accuracy": accuracy(flags)}
            for group, flags in sorted(groups.items())}
