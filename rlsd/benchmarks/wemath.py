"""We-Math (testmini, 1740 problems in 525 groups): loader, prompt, extraction and scoring after
We-Math/We-Math ``evaluation/accuracy.py`` and ``evaluation/four_dimensional_metrics.py``.

Local format: ``testmini.json`` (a list; ``ID`` is the group shared by a composite problem and its one-step
sub-problems, ``key`` its role: ``2steps_1/2steps_2/2steps_multi`` or ``3steps_1/2/3/3steps_multi``), images at
``<image_root>/<image_path>``.  If ``knowledge_structure_nodes.json`` is present, one-step items get
``meta["domain"]`` (the node's ``root2``) for the per-domain breakdown.  Item ids are ``"{ID}/{key}"``.

Protocol:

* prompt: the repo has no generation code; we use the template VLMEvalKit and lmms-eval use (``PROMPT``;
  not checked against the paper), with the image attached.
* extraction: the text after the LAST "Answer" (case-sensitive, as official), stripped, with ``> < : .``
  deleted; its first character if it is A-H, else no answer.  (A response without "Answer" is read from its
  start, so "After ..." reads as A: an official quirk we keep.)
* accuracies: S1 over one-step problems, S2 over two-step composites, S3 over three-step composites, plus
  ``accuracy_all`` over every problem (not an official number).
* four-dimensional metrics over the groups: IK (some sub wrong, composite wrong), IG (all subs right, composite
  wrong), CM/RM strict (composite right with all / not all subs right), CM/RM loose (composite right with some /
  no sub right).  Score = (N - 0.5 IG - RM - IK) / N with the strict or loose RM.  The official scripts
  hard-code N = 525; here **N is the number of complete groups present** (525 on the full testmini), so
  subsets score on the same scale.  Groups missing their composite or a sub-problem are left out and
  counted in ``incomplete_groups``.  Reported rates: IK, IG, CM as counts / N; RM as RM / (CM + RM).

Headline: ``score_strict``.  The paper's Table 2 gives one WeMath number per model without naming it; Score
(Strict) is the primary We-Math metric (the benchmark's paper and the VLMEvalKit/OpenCompass leaderboard lead
with it).  This is our best reading, not a confirmed fact: every other number is in the metrics as well
(``score_loose``, ``S1``-``S3``, ``accuracy_all``), and ``headline_key`` can be overridden.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from .common import (BenchmarkFormatError, BenchmarkItem, accuracy, breakdown, flag_missing_images, letters,
                     read_json, require)

NAME = "wemath"
DEFAULT_SPLIT = "testmini"
HEADLINE = "score_strict"
PROMPT = ("Now, we require you to solve a multiple-choice math question. Please briefly describe your thought process "
          "and provide the final answer(option).\nQuestion: {question}\nOption: {option}\nRegarding the format, please "
          "answer following the template below, and be sure to include two <> symbols:\n"
          "<Thought process>: <<your thought process>> <Answer>: <<your option>>")
KEYS = {"2steps_1", "2steps_2", "2steps_multi", "3steps_1", "3steps_2", "3steps_3", "3steps_multi"}
ANSWER_LETTERS = "ABCDEFGH"
_OPTION_RE = re.compile(r"(?:^|;)\s*([A-H])\.\s*")


def parse_options(option: str) -> list[str] | None:
    """Option texts in letter order from ``"A. x;B. y; C. z"``, or None if the letters are not A, B, C, ..."""
    marks = list(_OPTION_RE.finditer(option))
    if not marks or [m.group(1) for m in marks] != letters(len(marks)):
        return None
    ends = [m.start() for m in marks[1:]] + [len(option)]
    return [option[m.end():end].strip().rstrip(";").strip() for m, end in zip(marks, ends)]


def _domains(root: Path) -> dict[str, str]:
    """Knowledge concept (a node's deepest named level) -> its root2 domain."""
    path = root / "knowledge_structure_nodes.json"
    if not path.is_file():
        return {}
    nodes = read_json(path)
    if not isinstance(nodes, list):
        raise BenchmarkFormatError(path, "expected a list of nodes")
    mapping = {}
    for row, node in enumerate(nodes):
        require(node, "root2", str, path, row)
        named = [node.get(k) for k in ("root4", "root3", "root2") if node.get(k)]
        mapping[named[0]] = node["root2"]
    return mapping


def load(root: Path, split: str | None = None, image_root: Path | None = None, image_cache=None) -> list[BenchmarkItem]:
    split = split or DEFAULT_SPLIT
    image_root = Path(image_root) if image_root else root
    path = root / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"wemath: {path} not found")
    records = read_json(path)
    if not isinstance(records, list):
        raise BenchmarkFormatError(path, f"expected a list of records, got {type(records).__name__}")
    domains = _domains(root)
    items, seen = [], set()
    for row, record in enumerate(records):
        group = require(record, "ID", str, path, row)
        key = require(record, "key", str, path, row)
        question = require(record, "question", str, path, row)
        option = require(record, "option", str, path, row)
        answer = require(record, "answer", str, path, row)
        image = require(record, "image_path", str, path, row)
        concept = require(record, "knowledge concept", str, path, row)
        if key not in KEYS:
            raise BenchmarkFormatError(path, f"unknown key {key!r}", row=row, field_name="key")
        if len(answer) != 1 or answer not in ANSWER_LETTERS:
            raise BenchmarkFormatError(path, f"expected one letter A-H, got {answer!r}", row=row, field_name="answer")
        item_id = f"{group}/{key}"
        if item_id in seen:
            raise BenchmarkFormatError(path, f"duplicate ID/key pair {item_id!r}", row=row, field_name="ID")
        seen.add(item_id)
        n_steps, step = key.split("steps_")
        meta = {"group": group, "key": key, "n_steps": int(n_steps), "step": step, "option": option,
                "knowledge_concept": concept, "question_number": record.get("question number"), "split": split,
                "row": row}
        if step != "multi" and concept in domains:
            meta["domain"] = domains[concept]
        items.append(BenchmarkItem(NAME, item_id, question, PROMPT.format(question=question, option=option),
                                   [str(image_root / image)], answer, parse_options(option), "multiple-choice", meta))
    flag_missing_images(items, NAME, image_root)
    return items


def extract(response: str) -> str | None:
    """The official letter extraction (see the module docstring); linear in the response length."""
    if not isinstance(response, str):
        return None
    text = response.rpartition("Answer")[2].strip()  # == split("Answer")[-1], without the list
    for char in "><:.":
        text = text.replace(char, "")
    text = text.strip()
    return text[0] if text and text[0] in ANSWER_LETTERS else None


def four_dimensional(items: list[BenchmarkItem], correct: list[bool]) -> dict:
    """IK / IG / CM / RM counts and rates, strict and loose scores (N = complete groups present)."""
    groups: dict[str, dict] = defaultdict(lambda: {"subs": {}, "comp": None, "n_steps": None})
    for item, flag in zip(items, correct):
        group = groups[item.meta["group"]]
        group["n_steps"] = item.meta["n_steps"]
        if item.meta["step"] == "multi":
            group["comp"] = flag
        else:
            group["subs"][item.meta["step"]] = flag
    counts = dict.fromkeys(("IK", "IG", "CM_strict", "RM_strict", "CM_loose", "RM_loose"), 0)
    complete = incomplete = 0
    for group in groups.values():
        if group["comp"] is None or len(group["subs"]) != group["n_steps"]:
            incomplete += 1
            continue
        complete += 1
        subs, comp = list(group["subs"].values()), group["comp"]
        if not comp:
            counts["IG" if all(subs) else "IK"] += 1
        else:
            counts["CM_strict" if all(subs) else "RM_strict"] += 1
            counts["CM_loose" if any(subs) else "RM_loose"] += 1
    n = complete

    def rate(count):
        return count / n if n else None

    def rm_rate(rm, cm):
        return rm / (rm + cm) if rm + cm else None

    return {
        "n_groups": n, "incomplete_groups": incomplete, "counts": counts,
        "IK": rate(counts["IK"]), "IG": rate(counts["IG"]),
        "CM_strict": rate(counts["CM_strict"]), "CM_loose": rate(counts["CM_loose"]),
        "RM_strict": rm_rate(counts["RM_strict"], counts["CM_strict"]),
        "RM_loose": rm_rate(counts["RM_loose"], counts["CM_loose"]),
        "score_strict": (n - 0.5 * counts["IG"] - counts["RM_strict"] - counts["IK"]) / n if n else None,
        "score_loose": (n - 0.5 * counts["IG"] - counts["RM_loose"] - counts["IK"]) / n if n else None,
    }


def score(items: list[BenchmarkItem], responses: list[str], **_) -> tuple[list[dict], dict]:
    per_item = []
    for item, response in zip(items, responses):
        pred = extract(response if isinstance(response, str) else "")
        per_item.append({"id": item.id, "correct": pred == item.answer, "pred": pred})
    flags = [p["correct"] for p in per_item]

    def acc(select):
        return accuracy(f for it, f in zip(items, flags) if select(it.meta))

    one_step = [(it, f) for it, f in zip(items, flags) if it.meta["step"] != "multi"]
    metrics = {
        "S1": acc(lambda m: m["step"] != "multi"),
        "S2": acc(lambda m: m["step"] == "multi" and m["n_steps"] == 2),
        "S3": acc(lambda m: m["step"] == "multi" and m["n_steps"] == 3),
        "accuracy_all": accuracy(flags), "n": len(flags), "correct": sum(flags),
        **four_dimensional(items, flags),
        "per_domain": breakdown([it for it, _ in one_step], [f for _, f in one_step],
                                lambda it: it.meta.get("domain", "")),
    }
    return per_item, metrics


def answer_as_response(item: BenchmarkItem) -> str:
    return f"<Thought process>: <Reading the figure and applying the concept.> <Answer>: <{item.answer}>"
