"""The CPU testbed: procedurally generated visual counting-and-arithmetic problems with verifiable answers.

Every image is a 6x6 grid of 16-px cells (96x96 px) holding coloured squares; with the tiny model's patch 16 and
merge 1, each cell is exactly one visual token. Four colours, 0-8 squares each. Families (`FAMILIES`):

    count   "How many blue squares are there?"                          answer: the count
    pair    "What is 10 times the number of red squares plus the number of blue squares?"
                                                                        answer: 10 r + b (both counts, pinned)
    sum     "How many red and blue squares are there in total?"         answer: r + b
    diff    "How many more red squares than blue squares are there?"    answer: r - b (> 0 by construction)
    most    "Which colour has the most squares? (A) blue (B) red ..."   answer: the option letter

The written solution reads out every colour, then combines the ones the question needs:

    <thought>red 3 , green 5 , blue 4 , yellow 1 , 3 plus 4 = 7</thought><answer>7</answer>

so a response has decisive tokens (the relevant read-outs, the result, the answer) and narration (colour names,
commas, the irrelevant read-outs, "plus", "="). Which read-outs are decisive is `needed_colours`.

How much the final answer says about each decisive read-out depends on the family -- the teacher's evidence:
- `count` and `pair` are PINNED families (`PINNED_FAMILIES`): the answer determines every decisive read-out
  (knowing the answer is 34 means red 3 and blue 4), so an answer-conditioned teacher can put its evidence on
  exactly those tokens;
- `sum` and `diff` pin a combination (a total of 7 allows 3 + 4 and 4 + 3), `most` only an order.
The read-outs the question does not need are pinned by nothing: an answer-conditioned teacher that knows the
answer and nothing else reads them no better than the student (`rlsd.evaluate` measures both).

Perception is noisy on purpose: each square's colour is its colour's prototype plus Gaussian noise (sd
`COLOUR_NOISE` per RGB channel, the same for the whole square, so it cannot be averaged away). Some squares are
therefore genuinely ambiguous and even an ideal observer (nearest prototype per square) answers only ~86% of the
test split correctly -- the ceiling of what reading the image can give. The reference answer is informative exactly
where the image is ambiguous: the paper's premise that the answer changes the model's belief about the steps.
(The warm start sits well below that ceiling because it imitates an imperfect demonstrator: `rlsd.testbed.sft`.)

Difficulty: `easy` problems draw counts from 0-4, `hard` from 0-8. Splits come from disjoint seed streams and are
de-duplicated against each other by content.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from rlsd.data import Problem

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
COLOUR_ORDER = tuple(COLOURS)
COLOUR_NOISE = 40.0  # sd of the per-square RGB noise; ideal-observer test accuracy ~86% (tests/test_testbed.py)
GRID = 6
CELL = 16
SQUARE = 12  # leaves a white margin so neighbouring squares stay distinct
FAMILIES = ("count", "pair", "sum", "diff", "most")
PINNED_FAMILIES = ("count", "pair")  # the answer determines every decisive read-out
DIFFICULTY_MAX = {"easy": 4, "hard": 8}
SPLIT_SEEDS = {"train": 1_000_003, "val": 2_000_003, "test": 3_000_017}
SPLIT_SIZES = {"train": 20_000, "val": 500, "test": 1_500}
LETTERS = "ABCD"

# The mention habit of the teacher format (see rlsd.testbed.sft): a minority of teacher targets open with it.
MENTION_TEMPLATE = "the reference answer is {answer} ,"
MENTION_PREFIX = "<thought>the reference answer is"  # how a response that leaks the habit begins


@dataclass
class Scene:
    """What is drawn: the number of squares of each colour, and where."""

    counts: dict[str, int]
    cells: dict[tuple[int, int], str] = field(default_factory=dict)
    rgb: dict[tuple[int, int], tuple[int, int, int]] = field(default_factory=dict)
    """The noisy colour each square is drawn with."""

    def render(self) -> Image.Image:
        img = Image.new("RGB", (GRID * CELL, GRID * CELL), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        pad = (CELL - SQUARE) // 2
        for (row, col), colour in self.cells.items():
            x0, y0 = col * CELL + pad, row * CELL + pad
            draw.rectangle([x0, y0, x0 + SQUARE - 1, y0 + SQUARE - 1], fill=self.rgb.get((row, col), COLOURS[colour]))
        return img


def sample_scene(rng: random.Random, max_count: int, noise: float = COLOUR_NOISE) -> Scene:
    counts = {c: rng.randint(0, max_count) for c in COLOUR_ORDER}
    cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], sum(counts.values()))
    colours = [c for c in COLOUR_ORDER for _ in range(counts[c])]
    rgb = {cell: tuple(min(255, max(0, round(v + rng.gauss(0.0, noise)))) for v in COLOURS[colour])
           for cell, colour in zip(cells, colours)}
    return Scene(counts=counts, cells=dict(zip(cells, colours)), rgb=rgb)


def readout(counts: dict[str, int]) -> str:
    return " , ".join(f"{c} {counts[c]}" for c in COLOUR_ORDER)


def solution_text(family: str, counts: dict[str, int], meta: dict) -> tuple[str, str]:
    """(thought, answer) of the canonical solution."""
    if family == "count":
        c = meta["colour"]
        return f"{readout(counts)} , {c} {counts[c]}", str(counts[c])
    if family == "pair":
        a, b = counts[meta["colours"][0]], counts[meta["colours"][1]]
        return f"{readout(counts)} , 10 times {a} plus {b} = {10 * a + b}", str(10 * a + b)
    if family == "sum":
        a, b = counts[meta["colours"][0]], counts[meta["colours"][1]]
        return f"{readout(counts)} , {a} plus {b} = {a + b}", str(a + b)
    if family == "diff":
        a, b = counts[meta["colours"][0]], counts[meta["colours"][1]]
        return f"{readout(counts)} , {a} minus {b} = {a - b}", str(a - b)
    if family == "most":
        best = max(COLOUR_ORDER, key=lambda c: counts[c])
        letter = LETTERS[meta["options"].index(best)]
        return f"{readout(counts)} , most {best} , option {letter}", letter
    raise ValueError(f"unknown family {family!r}")


def _question(family: str, meta: dict) -> str:
    if family == "count":
        return f"How many {meta['colour']} squares are there?"
    if family == "pair":
        a, b = meta["colours"]
        return f"What is 10 times the number of {a} squares plus the number of {b} squares?"
    if family == "sum":
        a, b = meta["colours"]
        return f"How many {a} and {b} squares are there in total?"
    if family == "diff":
        a, b = meta["colours"]
        return f"How many more {a} squares than {b} squares are there?"
    if family == "most":
        options = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(meta["options"]))
        return f"Which colour has the most squares? {options}"
    raise ValueError(f"unknown family {family!r}")


def _valid(family: str, counts: dict[str, int], meta: dict) -> bool:
    if family == "diff":
        a, b = meta["colours"]
        return counts[a] > counts[b]
    if family == "most":
        top = max(counts.values())
        return sum(v == top for v in counts.values()) == 1
    return True


def make_problem(rng: random.Random, family: str, difficulty: str, split: str, index: int,
                 noise: float = COLOUR_NOISE) -> Problem:
    """One problem of `family`; rejection-samples scenes until the question has a unique positive answer."""
    while True:
        scene = sample_scene(rng, DIFFICULTY_MAX[difficulty], noise)
        if family == "count":
            meta = {"colour": rng.choice(COLOUR_ORDER)}
        elif family in ("pair", "sum", "diff"):
            meta = {"colours": rng.sample(COLOUR_ORDER, 2)}
        else:
            meta = {"options": rng.sample(COLOUR_ORDER, 4)}
        if _valid(family, scene.counts, meta):
            break
    thought, answer = solution_text(family, scene.counts, meta)
    return Problem(
        id=f"{split}-{index:05d}",
        question=_question(family, meta),
        answer=answer,
        images=[scene.render()],
        solution=thought,
        meta={"family": family, "difficulty": difficulty, "counts": scene.counts,
              "cells": {f"{r},{c}": colour for (r, c), colour in scene.cells.items()}, **meta},
    )


def read_cells(image: Image.Image) -> dict[tuple[int, int], tuple[int, int, int]]:
    """The colour at the centre of every non-white cell of a testbed image."""
    cells = {}
    for r in range(GRID):
        for c in range(GRID):
            rgb = image.getpixel((c * CELL + CELL // 2, r * CELL + CELL // 2))
            if rgb != (255, 255, 255):
                cells[(r, c)] = rgb
    return cells


def ideal_observer_answer(problem: Problem) -> str:
    """The answer of an observer that classifies every square by its nearest colour prototype (no learning).

    An upper reference for what reading the noisy image can give; not exactly Bayes-optimal for the question
    (that would sum over readings), but close.
    """
    def nearest(rgb):
        return min(COLOUR_ORDER, key=lambda name: sum((a - b) ** 2 for a, b in zip(rgb, COLOURS[name])))

    seen = [nearest(rgb) for rgb in read_cells(problem.images[0]).values()]
    counts = {c: seen.count(c) for c in COLOUR_ORDER}
    meta = problem.meta
    family = meta["family"]
    if family == "count":
        return str(counts[meta["colour"]])
    if family == "pair":
        return str(10 * counts[meta["colours"][0]] + counts[meta["colours"][1]])
    if family == "sum":
        return str(counts[meta["colours"][0]] + counts[meta["colours"][1]])
    if family == "diff":
        return str(counts[meta["colours"][0]] - counts[meta["colours"][1]])
    return LETTERS[meta["options"].index(max(COLOUR_ORDER, key=lambda c: counts[c]))]


def content_key(problem: Problem) -> str:
    """Identity of a problem's content (question + scene), used to keep splits disjoint."""
    cells = problem.images[0].tobytes() if problem.images else b""
    return hashlib.sha1(problem.question.encode() + cells).hexdigest()


def generate_split(split: str, n: int | None = None, families=FAMILIES, difficulties=("easy", "hard"),
                   exclude: set[str] | None = None) -> list[Problem]:
    """The first `n` problems of a split (deterministic; a prefix of a longer request is identical).

    Families and difficulties cycle so every prefix is balanced. `exclude` holds content keys of other splits.
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {tuple(SPLIT_SEEDS)}, got {split!r}")
    n = SPLIT_SIZES[split] if n is None else n
    rng = random.Random(SPLIT_SEEDS[split])
    combos = [(f, d) for d in difficulties for f in families]
    problems, i = [], 0
    while len(problems) < n:
        family, difficulty = combos[i % len(combos)]
        i += 1
        p = make_problem(rng, family, difficulty, split, len(problems))
        if exclude and content_key(p) in exclude:
            continue
        problems.append(p)
    return problems


def load_splits(n_train: int | None = None, n_val: int | None = None, n_test: int | None = None):
    """(train, val, test) with train de-duplicated against val and test, and val against test."""
    test = generate_split("test", n_test)
    keys = {content_key(p) for p in test}
    val = generate_split("val", n_val, exclude=keys)
    keys |= {content_key(p) for p in val}
    train = generate_split("train", n_train, exclude=keys)
    return train, val, test


# ------------------------------------------------------------------------------------------ reading responses

_READ_RE = re.compile(r"(red|green|blue|yellow) (\d+)")
_OP_RE = re.compile(r"(?<!times )(\b\d+) (plus|minus) (\d+) = (-?\d+)")
_PAIR_RE = re.compile(r"10 times (\d+) plus (\d+) = (\d+)")
_MOST_RE = re.compile(r"most (red|green|blue|yellow) , option ([A-D])")


def supported_answer(problem: Problem, thought: str) -> str | None:
    """The answer that follows from the response's OWN written steps, or None if they do not determine one.

    A response whose final answer differs from this is "unsupported": the answer did not come from its reasoning
    (a leakage signal -- e.g. copying a reference the student never saw).
    """
    family = problem.meta["family"]
    reads = {}
    for colour, value in _READ_RE.findall(thought):
        reads.setdefault(colour, int(value))
    if family == "count":
        c = problem.meta["colour"]
        return str(reads[c]) if c in reads else None
    if family == "pair":
        m = _PAIR_RE.search(thought)
        return None if m is None else str(10 * int(m.group(1)) + int(m.group(2)))
    if family in ("sum", "diff"):
        m = _OP_RE.search(thought)
        if m is None:
            return None
        a, op, b, _ = m.groups()
        return str(int(a) + int(b) if op == "plus" else int(a) - int(b))
    if family == "most":
        m = _MOST_RE.search(thought)
        return m.group(2) if m else None
    return None


def wrong_answer(problem: Problem) -> str:
    """A plausible WRONG reference for the wrong-answer-teacher control: what one misread count away from the gold
    would give (numeric answers: gold ± 1, never negative; `most`: another option letter), fixed per problem."""
    h = int(hashlib.sha256(problem.id.encode()).hexdigest(), 16)
    if problem.meta["family"] == "most":
        others = [x for x in LETTERS[:len(problem.meta["options"])] if x != problem.answer]
        return others[h % len(others)]
    gold = int(problem.answer)
    step = 1 if (h % 2 == 0 or gold - 1 < 0) else -1
    return str(gold + step)


def mentions_reference(response: str) -> bool:
    """True if a response talks about a reference answer/solution (leakage when the prompt had none)."""
    return "reference" in response.lower()


def needed_colours(problem: Problem) -> set[str]:
    """The colours whose count the question's answer depends on (their read-outs are the decisive ones)."""
    meta = problem.meta
    if meta["family"] == "count":
        return {meta["colour"]}
    if meta["family"] in ("pair", "sum", "diff"):
        return set(meta["colours"])
    return set(COLOUR_ORDER)  # most: the arg-max depends on every count


def readout_checks(problem: Problem, thought: str) -> list[tuple[str, bool, bool]]:
    """(colour, needed, correct) for each colour the thought's read-out states (first statement of each colour).

    `correct`: the stated count equals the true count drawn in the image."""
    needed, truth, seen, checks = needed_colours(problem), problem.meta["counts"], set(), []
    for colour, value in _READ_RE.findall(thought):
        if colour in seen:
            continue
        seen.add(colour)
        checks.append((colour, colour in needed, int(value) == truth[colour]))
    return checks
