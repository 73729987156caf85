"""ZeroBench (sub-questions, 334): loader, prompt, extraction and scoring after the HF dataset card snippet.

No ZeroBench annotation file is public outside the gated HF dataset ``jonathan-roberts1/zerobench``; this
module implements its published schema: ``question_id, question_text, question_answer, question_images``
(file names), ``question_images_decoded`` (embedded images) and ``image_attribution``.  Local formats:

* HF parquet: any ``<split>-*.parquet`` below ``root`` (splits ``zerobench`` with 100 questions and
  ``zerobench_subquestions`` with 334); embedded images are written to ``image_cache``.
* JSONL: ``<root>/<split>.jsonl``, one record per line with the same fields, ``question_images`` being paths
  relative to ``image_root`` (``tests/fixtures/zerobench/`` holds a small example).

Protocol (the card's snippet as ported by VLMEvalKit / inspect_evals; not checked against the card itself):

* prompt: ``{question_text}\\n\\n\\nLet's think step by step and give the final answer in curly braces, like
  this: {final answer}``, all question images attached in order.
* extraction: lower-case the stripped response, take the LAST non-greedy ``{...}`` match (no newlines inside),
  "" if none.
* score: ``match="exact"`` (default, the card's rule): stripped, case-insensitive equality with
  ``question_answer``; ``match="substring"``: VLMEvalKit's more lenient gold-in-prediction test.  The metric is
  accuracy (pass@1) over the items; the paper's sub-question number is this accuracy on the 334 items.
  pass@k / k-of-k reliability over 5 samples are not implemented (one response per item).
"""

from __future__ import annotations

import re
from pathlib import Path

from .common import (BenchmarkFormatError, BenchmarkItem, accuracy, default_image_cache, flag_missing_images,
                     materialise_image, read_jsonl, read_parquet_rows, require)

NAME = "zerobench"
DEFAULT_SPLIT = "zerobench_subquestions"
HEADLINE = "accuracy"
SPLITS = ("zerobench", "zerobench_subquestions")
INSTRUCTION = "Let's think step by step and give the final answer in curly braces, like this: {final answer}"
_BRACES_RE = re.compile(r"\{(.*?)\}")


def build_prompt(question_text: str) -> str:
    return f"{question_text}\n\n\n{INSTRUCTION}"


def load(root: Path, split: str | None = None, image_root: Path | None = None,
         image_cache: Path | None = None) -> list[BenchmarkItem]:
    split = split or DEFAULT_SPLIT
    image_root = Path(image_root) if image_root else root
    cache = Path(image_cache or default_image_cache(NAME, split))
    parquet = sorted(root.rglob(f"{split}-*.parquet"))
    jsonl = root / f"{split}.jsonl"
    if parquet:
        rows = ((path, row, record) for path, row, record in read_parquet_rows(parquet))
    elif jsonl.is_file():
        rows = ((jsonl, line, record) for line, record in read_jsonl(jsonl))
    else:
        raise FileNotFoundError(f"zerobench: neither {split}-*.parquet files nor {jsonl} under {root}")
    items = []
    for path, row, record in rows:
        item_id = str(require(record, "question_id", (str, int), path, row))
        question = require(record, "question_text", str, path, row)
        answer = require(record, "question_answer", (str, int, float), path, row)
        images = []
        decoded = record.get("question_images_decoded")
        cells = decoded if decoded else require(record, "question_images", list, path, row)
        if not isinstance(cells, list):
            raise BenchmarkFormatError(path, "expected a list", row=row, field_name="question_images_decoded")
        for k, cell in enumerate(cells):
            try:
                image = materialise_image(cell, image_root, cache, f"{item_id}_{k}")
            except TypeError as error:
                raise BenchmarkFormatError(path, str(error), row=row, field_name="question_images")
            if image:
                images.append(image)
        meta = {"split": split, "parent_id": item_id.split("_")[0], "image_attribution":
                record.get("image_attribution"), "source_file": str(path), "row": row}
        items.append(BenchmarkItem(NAME, item_id, question, build_prompt(question), images, str(answer).strip(),
                                   None, "open", meta))
    flag_missing_images(items, NAME, image_root)
    return items


def extract(response: str) -> str:
    """The last ``{...}`` of the lower-cased response, or "".

    The same result as the protocol's ``re.findall(r"\\{(.*?)\\}", text)[-1]`` (``_BRACES_RE``), computed in
    one linear pass: that regex rescans to the end of the line from every unclosed "{", which is quadratic on
    e.g. 100k unclosed braces.  Per line (``.`` does not match a newline), a match runs from a "{" to the
    first "}" after it, and the scan resumes after that "}"; a "{" without a later "}" on its line ends the
    line's matches (every later "{" on it lacks one too).
    """
    if not isinstance(response, str):
        return ""
    last = None
    for line in response.strip().lower().split("\n"):
        position = line.find("{")
        while position >= 0:
            close = line.find("}", position + 1)
            if close < 0:
                break
            last = line[position + 1 : close]
            position = line.find("{", close + 1)
    return last if last is not None else ""


def score(items: list[BenchmarkItem], responses: list[str], *, match: str = "exact", **_) -> tuple[list[dict], dict]:
    if match not in ("exact", "substring"):
        raise ValueError(f"zerobench match must be 'exact' or 'substring', got {match!r}")
    per_item = []
    for item, response in zip(items, responses):
        pred = extract(response if isinstance(response, str) else "").strip()
        gold = str(item.answer).strip().lower()
        correct = (pred == gold) if match == "exact" else (gold in pred)
        per_item.append({"id": item.id, "correct": bool(correct), "pred": pred})
    flags = [p["correct"] for p in per_item]
    return per_item, {"accuracy": accuracy(flags), "n": len(flags), "correct": sum(flags), "match": match}


def answer_as_response(item: BenchmarkItem) -> str:
    return f"Let's think step by step. Counting carefully gives the result.\nFinal answer: {{{item.answer}}}"
