"""MMMU (validation, 900 questions): loader, prompt, parsing and scoring after MMMU-Benchmark/MMMU ``mmmu/``.

Local formats (``root`` is a directory):

* **HF parquet release** (``MMMU/MMMU``): any ``<split>-*.parquet`` below ``root`` (the hub layout is
  ``<Subject>/validation-00000-of-00001.parquet``), columns ``id, question, options, answer, image_1..image_7,
  question_type, subfield, topic_difficulty, img_type``.  Everything is supported: question text, prompt,
  option texts, images (embedded bytes are written to ``image_cache``).  ``options`` is a Python-literal
  string; it is read with ``ast.literal_eval`` (literals only; the official code uses ``eval``).
* **Answer-dict-only** (the GitHub file ``answer_dict_val.json``): gold answers and question types only.
  Items have ``question == prompt == ""`` and no images, so they can be SCORED (responses computed elsewhere)
  but not generated.  If the repo's ``example_outputs*/<Subject>/output.json`` files are present as well,
  their ``all_choices``/``index2ans`` supply the option letters and texts; without them a multiple-choice
  item's letters default to A..I (MMMU's maximum of 9 options), which only matters for the random fallback
  and for option-text matching.

Protocol (paraphrased from ``utils/data_utils.py`` / ``utils/eval_utils.py``):

* prompt (llava1.5 config): MC ``{q}\\n(A) o1\\n(B) o2\\n\\nAnswer with the option's letter from the given
  choices directly.``; open ``{q}\\nAnswer the question using a single word or phrase.``  ``<image n>`` tags
  stay inline.  We attach ALL images of the item (the LLaVA reference runner passes only ``image_1``).
* MC parsing with the official order (``(X)`` > `` X `` > option text in responses longer than 5 words >
  random letter), the random fallback drawn from ONE ``random.Random(42)`` per scoring call in item order
  (the official script seeds the global RNG with 42 once; identical when items are scored in the same order).
* Open parsing: key sub-responses after indicator words, plus every number, normalised (numbers -> float
  rounded to 2 decimals, strings lower-cased, single characters space-padded).  The official sentence split
  ``\\.\\s(?=[A-Z])`` runs after lower-casing, so it never fires and only newlines split; we keep that.
* Score: per-item correctness; accuracy per subject, per discipline and overall, all example-weighted
  (overall = correct / n, the number MMMU and the paper report).
"""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path

from .common import (BenchmarkFormatError, BenchmarkItem, accuracy, breakdown, default_image_cache,
                     flag_missing_images, letters, materialise_image, read_json, read_parquet_rows, require)

NAME = "mmmu"
DEFAULT_SPLIT = "validation"
HEADLINE = "accuracy"
MAX_OPTIONS = 9

DISCIPLINES = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": ["Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": ["Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"],
}
SUBJECT_TO_DISCIPLINE = {s: d for d, subjects in DISCIPLINES.items() for s in subjects}

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."
_ID_RE = re.compile(r"(dev|validation|test)_(.+)_(\d+)")
_SPLIT_FILE = {"validation": "answer_dict_val.json"}


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def subject_of(item_id: str) -> str:
    match = _ID_RE.fullmatch(item_id)
    return match.group(2) if match else ""


def build_prompt(question: str, choices: list[str] | None) -> str:
    if choices is None:
        return f"{question}\n{OPEN_INSTRUCTION}"
    block = "".join(f"({letter}) {text}\n" for letter, text in zip(letters(len(choices)), choices))
    return f"{question}\n{block}\n{MC_INSTRUCTION}"


def _answer_type(raw: str, file: Path, row) -> str:
    if raw == "multiple-choice":
        return "multiple-choice"
    if raw in ("open", "short-answer"):
        return "open"
    raise BenchmarkFormatError(file, f"unknown question type {raw!r}", row=row, field_name="question_type")


def _parse_gold(value, file: Path, row):
    """Gold answer: a string, or a list of acceptable strings (also when stored as a list-literal string)."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                parsed = None
            if isinstance(parsed, list) and parsed and all(isinstance(v, str) for v in parsed):
                return parsed
        return value
    raise BenchmarkFormatError(file, f"expected a string or a list of strings, got {value!r:.60}", row=row,
                               field_name="answer")


def load(root: Path, split: str | None = None, image_root: Path | None = None,
         image_cache: Path | None = None) -> list[BenchmarkItem]:
    split = split or DEFAULT_SPLIT
    image_root = Path(image_root) if image_root else root
    parquet = sorted(root.rglob(f"{split}-*.parquet"))
    if parquet:
        items = _load_parquet(parquet, split, image_root, Path(image_cache or default_image_cache(NAME, split)))
    else:
        answer_file = root / _SPLIT_FILE.get(split, f"answer_dict_{split}.json")
        if not answer_file.is_file():
            raise FileNotFoundError(f"mmmu: neither {split}-*.parquet files nor {answer_file} under {root}")
        items = _load_answer_dict(answer_file, split)
    flag_missing_images(items, NAME, image_root)
    return items


def _load_parquet(paths: list[Path], split: str, image_root: Path, cache: Path) -> list[BenchmarkItem]:
    items = []
    for path, row, record in read_parquet_rows(paths):
        item_id = require(record, "id", str, path, row)
        question = require(record, "question", str, path, row)
        answer_type = _answer_type(require(record, "question_type", str, path, row), path, row)
        gold = _parse_gold(require(record, "answer", (str, list), path, row), path, row)
        choices = None
        if answer_type == "multiple-choice":
            raw = require(record, "options", (str, list), path, row)
            try:
                choices = ast.literal_eval(raw) if isinstance(raw, str) else raw
            except (ValueError, SyntaxError):
                raise BenchmarkFormatError(path, f"not a list literal: {raw!r:.80}", row=row, field_name="options")
            if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                raise BenchmarkFormatError(path, "expected a list of strings", row=row, field_name="options")
            if not isinstance(gold, str) or gold not in letters(len(choices)):
                raise BenchmarkFormatError(path, f"gold {gold!r} is not one of the {len(choices)} option letters",
                                           row=row, field_name="answer")
        images = []
        for k in range(1, 8):
            try:
                path_k = materialise_image(record.get(f"image_{k}"), image_root, cache, f"{item_id}_{k}")
            except TypeError as error:
                raise BenchmarkFormatError(path, str(error), row=row, field_name=f"image_{k}")
            if path_k:
                images.append(path_k)
        subject = subject_of(item_id) or path.parent.name
        meta = {"subject": subject, "discipline": SUBJECT_TO_DISCIPLINE.get(subject, ""), "split": split,
                "subfield": record.get("subfield"), "topic_difficulty": record.get("topic_difficulty"),
                "img_type": record.get("img_type"), "source_file": str(path)}
        items.append(BenchmarkItem(NAME, item_id, question, build_prompt(question, choices), images, gold,
                                   choices, answer_type, meta))
    return items


def _example_choices(root: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """id -> (all_choices, index2ans) from the repo's example outputs, when they are present."""
    found = {}
    for path in sorted(root.glob("example_outputs*/*/output.json")):
        records = read_json(path)
        if not isinstance(records, list):
            raise BenchmarkFormatError(path, "expected a list of records")
        for row, record in enumerate(records):
            if require(record, "question_type", str, path, row) != "multiple-choice":
                continue
            item_id = require(record, "id", str, path, row)
            all_choices = require(record, "all_choices", list, path, row)
            index2ans = require(record, "index2ans", dict, path, row)
            if all_choices != letters(len(all_choices)) or set(index2ans) != set(all_choices):
                raise BenchmarkFormatError(path, "all_choices/index2ans are not consecutive letters A..",
                                           row=row, field_name="all_choices")
            found[item_id] = (all_choices, index2ans)
    return found


def _load_answer_dict(path: Path, split: str) -> list[BenchmarkItem]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise BenchmarkFormatError(path, f"expected an object keyed by id, got {type(data).__name__}")
    options = _example_choices(path.parent)
    items = []
    for item_id, record in data.items():
        answer_type = _answer_type(require(record, "question_type", str, path, item_id), path, item_id)
        gold = _parse_gold(require(record, "ground_truth", (str, list), path, item_id), path, item_id)
        choices = None
        meta = {"subject": subject_of(item_id), "split": split, "source_file": str(path), "expects_images": True}
        meta["discipline"] = SUBJECT_TO_DISCIPLINE.get(meta["subject"], "")
        if answer_type == "multiple-choice":
            if item_id in options:
                all_choices, index2ans = options[item_id]
                choices = [index2ans[letter] for letter in all_choices]
            else:
                meta["all_choices"] = letters(MAX_OPTIONS)  # option count unknown
            valid = meta.get("all_choices") or letters(len(choices))
            if gold not in valid:
                raise BenchmarkFormatError(path, f"gold {gold!r} is not an option letter", row=item_id,
                                           field_name="ground_truth")
        items.append(BenchmarkItem(NAME, item_id, "", "", [], gold, choices, answer_type, meta))
    return items


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def parse_multi_choice(response: str, all_choices: list[str], index2ans: dict[str, str],
                       rng: random.Random) -> str:
    """The official MC parser: bracketed letter, bare letter, option text, else a random letter."""
    for char in ",.!?;:'":  # stripped one after another, as the reference does
        response = response.strip(char)
    padded = f" {response} "
    candidates = [c for c in all_choices if f"({c})" in padded]
    position = lambda c: padded.rfind(f"({c})")  # noqa: E731
    if not candidates:
        candidates = [c for c in all_choices if f" {c} " in padded]
        position = lambda c: padded.rfind(f" {c} ")  # noqa: E731
    if not candidates and len(padded.split()) > 5:
        lowered = padded.lower()
        candidates = [c for c, text in index2ans.items() if text.lower() in lowered]
        position = lambda c: lowered.rfind(index2ans[c].lower())  # noqa: E731
    if not candidates:
        return rng.choice(all_choices)
    return max(candidates, key=position)  # latest last occurrence; ties keep the earlier candidate


# The official patterns, each with one addition that changes no match but keeps findall linear: a match may
# not start at a digit that follows a digit, i.e. inside a digit run ((?<!\d) after the optional "-").  Such a
# start can never succeed when the start at the head of the run failed (its greedy \d+ reaches the same run
# end), yet the official patterns retry it from every digit, which is quadratic on a 100k-digit run.  The
# integer alternative of the simple pattern ends in \b, as official: a number glued to a unit ("5kg") yields
# no plain number, while "5.5kg" does.
_NUMBER_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUMBER_SCIENTIFIC = re.compile(r"-?(?<!\d)\d+(?:\.\d+)?[eE][+-]?\d+")
_NUMBER_SIMPLE = re.compile(r"-?(?:(?<!\d)\d+\.\d+|\.\d+|(?<!\d)\d+\b)(?![eE][+-]?\d+)(?![,\d])")
_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


def extract_numbers(text: str) -> list[str]:
    """Numbers written with thousands separators (commas dropped), in scientific notation, and plain."""
    found = [m.replace(",", "") for m in _NUMBER_WITH_COMMAS.findall(text)]
    found += _NUMBER_SCIENTIFIC.findall(text)
    found += _NUMBER_SIMPLE.findall(text)
    return found


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def normalize_answer(text: str) -> list:
    """Numbers -> [float rounded to 2 decimals]; strings -> [lower-cased] (single chars -> space-padded)."""
    text = text.strip()
    number = _as_number(text)
    if number is not None:
        return [round(number, 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


_TRIVIAL_KEYS = (":", ",", ".", "!", "?", ";", "'")


def _key_subresponses(response: str) -> list[str]:
    """The official ``get_key_subresponses``: per piece, the shortest tail after an indicator word."""
    response = response.strip().strip(".").lower()
    pieces = re.split(r"\.\s(?=[A-Z])|\n", response)  # after lower(): only newlines split (kept as official)
    keys = []
    for index, piece in enumerate(pieces):
        indicators = _INDICATORS + (("=",) if index == len(pieces) - 1 else ())
        shortest = None
        for indicator in indicators:
            if indicator in piece:
                tail = piece.rpartition(indicator)[2].strip()  # == split(indicator)[-1]
                # As official: an empty first tail is replaced by the next one found, and an empty
                # shortest tail (also one found after a non-empty one) yields no key for the piece.
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL_KEYS:
            keys.append(shortest)
    return keys or [response]


def parse_open(response: str) -> list:
    """Normalised candidate answers of an open-question response (strings and floats), duplicates removed."""
    keys = _key_subresponses(response)
    candidates = list(keys)
    for key in keys:
        candidates.extend(extract_numbers(key))
    # dict keys: linear de-duplication in first-seen order (the official set() is order-free; eval_open is too)
    return list(dict.fromkeys(value for candidate in candidates for value in normalize_answer(candidate)))


def eval_open(gold, predictions: list) -> bool:
    golds = gold if isinstance(gold, list) else [gold]
    norm_golds = [n for g in golds for n in normalize_answer(g)]
    for prediction in predictions:
        if isinstance(prediction, str):
            if any(isinstance(g, str) and g in prediction for g in norm_golds):
                return True
        elif prediction in norm_golds:
            return True
    return False


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def _mc_options(item: BenchmarkItem) -> tuple[list[str], dict[str, str]]:
    if item.choices is not None:
        all_choices = letters(len(item.choices))
        return all_choices, dict(zip(all_choices, item.choices))
    return list(item.meta.get("all_choices") or letters(MAX_OPTIONS)), {}


def score(items: list[BenchmarkItem], responses: list[str], *, seed: int = 42, **_) -> tuple[list[dict], dict]:
    rng = random.Random(seed)
    per_item = []
    for item, response in zip(items, responses):
        response = response if isinstance(response, str) else ""
        if item.answer_type == "multiple-choice":
            all_choices, index2ans = _mc_options(item)
            pred = parse_multi_choice(response, all_choices, index2ans, rng)
            gold = item.answer
            correct = pred in gold if isinstance(gold, list) else pred == gold
        else:
            pred = parse_open(response)
            correct = eval_open(item.answer, pred)
        per_item.append({"id": item.id, "correct": bool(correct), "pred": pred})
    flags = [p["correct"] for p in per_item]
    metrics = {
        "accuracy": accuracy(flags),
        "n": len(flags),
        "correct": sum(flags),
        "per_subject": breakdown(items, flags, lambda it: it.meta.get("subject", "")),
        "per_discipline": breakdown(items, flags, lambda it: it.meta.get("discipline", "")),
        "per_answer_type": breakdown(items, flags, lambda it: it.answer_type),
    }
    return per_item, metrics


def answer_as_response(item: BenchmarkItem) -> str:
    """MC: the gold letter (what the prompt asks for); open: the (first acceptable) gold answer."""
    gold = item.answer[0] if isinstance(item.answer, list) else item.answer
    return str(gold)
