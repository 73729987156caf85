"""MathVista (testmini, 1000): loader, prompt, extraction and scoring after lupantech/MathVista ``evaluation/``.

Local format: ``testmini.json`` (dict pid -> record) from the GitHub repo, optionally ``query.json`` (pid ->
prompt; the HF ``query`` field) and the images at ``<image_root>/images/<pid>.jpg`` (the record's ``image``).
Without ``query.json`` the prompt is rebuilt from the record with the same template (``build_query``; it
reproduces all 1000 published testmini queries, checked by the tests).  The hidden-answer ``test`` split is
not supported (no gold answers are public).

Protocol (paraphrased from ``extract_answer.py`` and ``calculate_score.py``):

* extraction: empty -> ""; an MC response equal to a choice text is kept; an integer/float-typed response that
  parses as a number is kept; the quick regex ``The answer is "(.*)"\\.``; otherwise the official script asks a
  GPT model to extract the answer.  **The GPT step is replaced here by deterministic rules**
  (``rule_extract``): the project's ``<answer>``/``\\boxed{}`` answer, else the last "answer is X" /
  "Answer: X" phrase, else (MC) a standalone option letter at the end or the choice text mentioned last,
  else (numeric) the last number, else the last line.  Responses that state their answer in one of these
  forms should extract as the GPT extractor would (not verified: no GPT here); prose without a clear final
  answer may be extracted differently (GPT can infer answers the rules miss, the rules may pick a wrong
  number), so scores are comparable to the paper's only for models that answer in a clear format.
  ``fallback="none"`` disables the rules (the official path without GPT: "").
* normalisation: MC -> the first ``(X)`` letter or a bare letter maps to that choice's text, anything else to
  the closest choice by Levenshtein distance (so MC always yields a choice); integer -> ``str(int(float(x)))``
  (truncation, as official); float -> ``str(round(float(x), precision))``; list -> ``str(x)``; failure -> None.
* score: exact string equality with the gold ``answer`` (for MC the choice TEXT); accuracy = correct / n, with
  breakdowns by question type, answer type, language, source, category, task, context, grade and skills.
  ``unit`` appears only in the prompt.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..verifier import extract_answer as tagged_or_boxed_answer
from ..verifier import parse_choice
from .common import (BenchmarkFormatError, BenchmarkItem, accuracy, breakdown, flag_missing_images, letters,
                     levenshtein, read_json, require, require_str_list)

NAME = "mathvista"
DEFAULT_SPLIT = "testmini"
HEADLINE = "accuracy"

_HINTS = {
    "multi_choice": "Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.",
    "integer": "Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
               "at the end.",
    ("float", 1): "Please answer the question requiring a floating-point number with one decimal place and provide "
                  "the final value, e.g., 1.2, 1.3, 1.4, at the end.",
    ("float", 2): "Please answer the question requiring a floating-point number with two decimal places and provide "
                  "the final value, e.g., 1.23, 1.34, 1.45, at the end.",
    "list": "Please answer the question requiring a Python list as an answer and provide the final list, e.g., "
            "[1, 2, 3], [1.2, 1.3, 1.4], at the end.",
}
_QUESTION_TYPES = ("multi_choice", "free_form")
_ANSWER_TYPES = ("text", "integer", "float", "list")
BREAKDOWN_FIELDS = ("language", "source", "category", "task", "context", "grade", "skills")


def build_query(question: str, question_type: str, answer_type: str, choices, unit, precision) -> str:
    """The published ``query`` string: ``Hint: ...\\nQuestion: ...[ (Unit: u)][\\nChoices:\\n(A) c1...]``."""
    if question_type == "multi_choice":
        hint = _HINTS["multi_choice"]
    elif answer_type == "float":
        hint = _HINTS[("float", int(precision))]
    else:
        hint = _HINTS[answer_type]
    text = f"Hint: {hint}\nQuestion: {question}"
    if unit:
        text += f" (Unit: {unit})"
    if choices:
        text += "\nChoices:\n" + "\n".join(f"({l}) {c}" for l, c in zip(letters(len(choices)), choices))
    return text.strip()


def load(root: Path, split: str | None = None, image_root: Path | None = None, image_cache=None) -> list[BenchmarkItem]:
    split = split or DEFAULT_SPLIT
    image_root = Path(image_root) if image_root else root
    path = root / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"mathvista: {path} not found (only the public testmini split has gold answers)")
    data = read_json(path)
    if not isinstance(data, dict):
        raise BenchmarkFormatError(path, f"expected an object keyed by pid, got {type(data).__name__}")
    query_path = root / "query.json"
    queries = read_json(query_path) if query_path.is_file() else {}
    items = []
    for pid, record in data.items():
        question = require(record, "question", str, path, pid)
        question_type = require(record, "question_type", str, path, pid)
        answer_type = require(record, "answer_type", str, path, pid)
        answer = require(record, "answer", str, path, pid)
        image = require(record, "image", str, path, pid)
        unit = require(record, "unit", str, path, pid, allow_none=True)
        precision = require(record, "precision", (int, float), path, pid, allow_none=True)
        choices = require_str_list(record, "choices", path, pid, allow_none=True)
        if question_type not in _QUESTION_TYPES:
            raise BenchmarkFormatError(path, f"unknown value {question_type!r}", row=pid, field_name="question_type")
        if answer_type not in _ANSWER_TYPES:
            raise BenchmarkFormatError(path, f"unknown value {answer_type!r}", row=pid, field_name="answer_type")
        if question_type == "multi_choice" and not choices:
            raise BenchmarkFormatError(path, "a multi_choice item needs choices", row=pid, field_name="choices")
        if answer_type == "float" and precision not in (1, 2):
            raise BenchmarkFormatError(path, f"float items need precision 1 or 2, got {precision!r}", row=pid,
                                       field_name="precision")
        prompt = queries.get(pid) or build_query(question, question_type, answer_type, choices, unit, precision)
        metadata = record.get("metadata") or {}
        meta = {"pid": pid, "question_type": question_type, "unit": unit, "split": split,
                "precision": int(precision) if precision is not None else None,
                **{k: metadata.get(k) for k in BREAKDOWN_FIELDS}}
        image_path = image_root / image
        items.append(BenchmarkItem(NAME, str(pid), question, prompt, [str(image_path)], answer,
                                   choices if question_type == "multi_choice" else None, answer_type, meta))
    flag_missing_images(items, NAME, image_root)
    return items


# ---------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------

_QUICK_RE = re.compile(r'The answer is "(.*)"\.')  # the official pattern; ``quick_match`` computes it linearly
_QUICK_OPEN, _QUICK_CLOSE = 'The answer is "', '".'
# "\s*(?::\s*)?" matches what "\s*:?\s*" does, with the same preference, but cannot split one whitespace run
# between two \s* in quadratically many ways before failing (e.g. "answer is" + 100k newlines).
_ANSWER_PHRASE_RE = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:)\s*(?::\s*)?(.+)", re.IGNORECASE)
# Optional e-notation, so "1e3" reads as 1000 (as float() and a GPT extractor would), not as "3".
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][+-]?\d+)?|-?\.\d+(?:[eE][+-]?\d+)?")
_LIST_RE = re.compile(r"\[\s*(-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?)*)\s*\]")
_TRAILING_LETTER_RE = re.compile(r"(?:\(([A-Z])\)|\b([A-Z])\b)[\s.)*]*$")


def _as_int(text: str) -> int | None:
    """``int(text)`` or None on any failure, as the official ``try: int(response) except Exception``.

    Python refuses to convert more than 4300 digits (ValueError), which is caught here like any other failure,
    so a 5000-digit response falls through to the next extraction step as it does officially.
    """
    try:
        return int(text)
    except (ValueError, TypeError, OverflowError):
        return None


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except (ValueError, TypeError, OverflowError):
        return None


def quick_match(response: str) -> str | None:
    """``re.search(r'The answer is "(.*)"\\.', response).group(1)`` or None, in linear time.

    ``.`` does not match a newline, so the match lies within one line: the first line on which some
    ``The answer is "`` is followed by a ``".``; the group starts after that line's first opening phrase and
    ends at the line's last ``".`` (the greedy ``.*``).  The regex itself rescans the line from every opening
    phrase, quadratic when a long line repeats the phrase without a closing quote.
    """
    for line in response.split("\n"):
        start = line.find(_QUICK_OPEN)
        if start < 0:
            continue
        begin = start + len(_QUICK_OPEN)
        end = line.rfind(_QUICK_CLOSE)
        if end >= begin:
            return line[begin:end]
    return None


def _clean_candidate(text: str) -> str:
    text = text.strip().strip("*").strip()
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", text)
    text = text.strip("$").strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def rule_extract(item: BenchmarkItem, response: str) -> str:
    """Deterministic stand-in for the GPT extractor (see the module docstring)."""
    candidate = tagged_or_boxed_answer(response)
    if candidate is None:
        last = None
        for last in _ANSWER_PHRASE_RE.finditer(response):
            pass
        if last is not None:
            candidate = last.group(1)
    if candidate is not None:
        candidate = _clean_candidate(candidate)
    if item.meta["question_type"] == "multi_choice":
        source = candidate if candidate is not None else response
        letter = parse_choice(source)
        if letter is None and candidate is None:
            tail = response.strip().splitlines()[-1] if response.strip() else ""
            match = _TRAILING_LETTER_RE.search(tail)
            letter = (match.group(1) or match.group(2)) if match else None
        if letter is not None and letter in letters(len(item.choices)):
            return letter
        if candidate is not None:
            return candidate
        # the choice text mentioned last (the longest one when several end at the same place)
        mentions = [(response.rfind(c) + len(c), len(c), c) for c in item.choices if c and c in response]
        return max(mentions)[2] if mentions else ""
    source = candidate if candidate is not None else response
    if item.answer_type == "list":
        lists = _LIST_RE.findall(source)
        if lists:
            return "[" + ", ".join(p.strip() for p in lists[-1].split(",")) + "]"
        return source.strip()
    if item.answer_type in ("integer", "float"):
        numbers = _NUMBER_RE.findall(source)
        if numbers:
            return numbers[-1].replace(",", "")
    return source.strip().splitlines()[-1] if source.strip() else ""


def extract(item: BenchmarkItem, response: str, *, quick_extract: bool = True, fallback: str = "rules") -> str:
    """The official extraction order; the GPT step is replaced by ``rule_extract`` (``fallback="rules"``)."""
    if not response:
        return ""
    if item.meta["question_type"] == "multi_choice" and response in item.choices:
        return response
    if item.answer_type == "integer" and _as_int(response) is not None:
        return str(_as_int(response))
    if item.answer_type == "float" and _as_float(response) is not None:
        return str(_as_float(response))
    if quick_extract:
        quick = quick_match(response)
        if quick is not None:
            return quick
    if fallback == "rules":
        return rule_extract(item, response)
    if fallback == "none":
        return ""
    raise ValueError(f"fallback must be 'rules' or 'none', got {fallback!r}")


def most_similar(text: str, choices: list[str]) -> str:
    """The choice with the smallest Levenshtein distance to ``text`` (the first one on ties)."""
    return min(choices, key=lambda choice: levenshtein(text, choice))


def normalize(item: BenchmarkItem, extraction) -> str | None:
    """The official ``normalize_extracted_answer`` (any failure gives None, as the official ``except Exception``)."""
    if item.meta["question_type"] == "multi_choice":
        text = extraction.strip() if isinstance(extraction, str) else str(extraction)
        bracketed = re.findall(r"\(([a-zA-Z])\)", text)
        if bracketed:
            text = bracketed[0].upper()
        options = letters(len(item.choices))
        if text in options:
            return item.choices[options.index(text)]
        return most_similar(text, item.choices)
    try:
        if item.answer_type == "integer":
            return str(int(float(extraction)))
        if item.answer_type == "float":
            return str(round(float(extraction), int(item.meta["precision"])))
        if item.answer_type == "list":
            return str(extraction)
    except (ValueError, TypeError, OverflowError, ArithmeticError):
        return None
    return str(extraction)


def score(items: list[BenchmarkItem], responses: list[str], *, quick_extract: bool = True,
          fallback: str = "rules", **_) -> tuple[list[dict], dict]:
    per_item = []
    for item, response in zip(items, responses):
        response = response if isinstance(response, str) else ""
        extraction = extract(item, response, quick_extract=quick_extract, fallback=fallback)
        pred = normalize(item, extraction)
        per_item.append({"id": item.id, "correct": pred == item.answer, "extracted": extraction, "pred": pred})
    flags = [p["correct"] for p in per_item]
    metrics = {"accuracy": accuracy(flags), "n": len(flags), "correct": sum(flags),
               "per_question_type": breakdown(items, flags, lambda it: it.meta["question_type"]),
               "per_answer_type": breakdown(items, flags, lambda it: it.answer_type)}
    for name in BREAKDOWN_FIELDS:
        metrics[f"per_{name}"] = breakdown(items, flags, lambda it, n=name: it.meta.get(n) or "")
    return per_item, metrics


def answer_as_response(item: BenchmarkItem) -> str:
    """The quick-extract form ``The answer is "X".``; for MC, X is the gold option's letter."""
    if item.meta["question_type"] == "multi_choice":
        gold = letters(len(item.choices))[item.choices.index(item.answer)]
    else:
        gold = item.answer
    return f'The answer is "{gold}".'
