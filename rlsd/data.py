"""The problem record shared by the testbed and real data, and the loader for MMFineReason-style files.

A real training file is JSONL or parquet with one problem per row:

    question   str                      required
    answer     str | number             required (the verifiable final answer; also the teacher's reference)
    image      path | bytes | {"bytes": ..., "path": ...}     or
    images     list of those            (paths are relative to the file's directory)
    solution   str                      optional (a reference solution, used by OPSD-style teachers)
    id         str                      optional (defaults to "<file>:<row>")

Every image is opened and verified at load time, so a missing or unreadable image fails immediately with the
file, row and field named, instead of hours into a run.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image


@dataclass
class Problem:
    """One verifiable problem: question + images + gold answer (+ optional reference solution)."""

    id: str
    question: str
    answer: str
    images: list[Image.Image]
    solution: str | None = None
    meta: dict = field(default_factory=dict)


class DataError(ValueError):
    """Bad input data; the message names the file, the row and the field."""


def _open_image(value, base: Path, where: str) -> Image.Image:
    try:
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            img = Image.open(io.BytesIO(value))
        elif isinstance(value, str):
            path = Path(value) if Path(value).is_absolute() else base / value
            if not path.exists():
                raise DataError(f"{where}: image file not found: {path}")
            img = Image.open(path)
        else:
            raise DataError(f"{where}: expected an image path or bytes, got {type(value).__name__}")
        img.load()
        return img.convert("RGB")
    except DataError:
        raise
    except Exception as e:  # PIL raises several types for corrupt data
        raise DataError(f"{where}: unreadable image ({type(e).__name__}: {e})") from e


def _rows(path: Path):
    if path.suffix == ".jsonl":
        with path.open() as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: row {i}: invalid JSON ({e.msg})") from e
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield i, row
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl or .parquet)")


def load_problems(path: str | Path, limit: int | None = None) -> list[Problem]:
    """Read an MMFineReason-style JSONL/parquet file into `Problem`s (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    problems = []
    for i, row in _rows(path):
        if limit is not None and len(problems) >= limit:
            break
        where = f"{path}: row {i}"
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: field 'question' is missing or empty")
        answer = row.get("answer")
        if answer is None or str(answer).strip() == "":
            raise DataError(f"{where}: field 'answer' is missing or empty")
        if "images" in row and row["images"] is not None:
            raw, name = list(row["images"]), "images"
        elif row.get("image") is not None:
            raw, name = [row["image"]], "image"
        else:
            raw, name = [], "images"
        images = [_open_image(v, path.parent, f"{where}: field '{name}'[{k}]") for k, v in enumerate(raw)]
        problems.append(Problem(id=str(row.get("id", f"{path.name}:{i}")), question=question.strip(),
                                answer=str(answer).strip(), images=images, solution=row.get("solution"),
                                meta={k: v for k, v in row.items()
                                      if k not in ("question", "answer", "image", "images", "solution", "id")}))
    return problems
