"""The CPU testbed as a sixth "benchmark": the same harness (load -> generate -> score) on the project's own
synthetic problems (``rlsd.testbed``), so that the pipeline used for the paper's benchmarks can be run, and checked
against ``rlsd.evaluate``, on a machine without a GPU or benchmark images.

This is NOT one of the paper's benchmarks; numbers measured on it are never put in a column of the paper's Table 2.

* source: ``rlsd.testbed.load_splits`` (generated, deterministic; ``n`` takes a prefix of the split, the same prefix
  ``rlsd.evaluate`` / ``rlsd.reproduce`` evaluate on).  There is no file to read: ``root`` may be None.
* images: each problem's in-memory image is written once as a lossless PNG (content-hashed name) under
  ``image_cache`` (else ``root``, else a folder under the system temp dir), so ``BenchmarkItem.images`` are file
  paths as for every other benchmark and the pixels the model sees are identical to the in-memory ones.
* prompt: the project's student prompt text (question + format instruction, ``rlsd.prompts.student_messages``).
* score: the training reward (``rlsd.verifier``: the last ``<answer>`` or ``\\boxed{}``; letters for the "most"
  family, exact numbers otherwise).  Metrics mirror ``rlsd.evaluate``: accuracy, leak rate, unsupported-answer
  rate, format and answer rates, accuracy per task family.
"""

from __future__ import annotations

import io
from pathlib import Path

from .common import BenchmarkItem, accuracy, breakdown, default_image_cache, flag_missing_images, materialise_image

NAME = "testbed"
DEFAULT_SPLIT = "test"
HEADLINE = "accuracy"
SPLITS = ("train", "val", "test")
NEEDS_ROOT = False


def student_prompt(question: str) -> str:
    """The text part of the project's student prompt (exactly what ``rlsd.evaluate`` sends)."""
    from rlsd.prompts import student_messages

    (message,) = student_messages(question, n_images=0)
    return message["content"][-1]["text"]


def load(root: Path | None, split: str | None = None, image_root: Path | None = None,
         image_cache: Path | None = None, n: int | None = None) -> list[BenchmarkItem]:
    """The first ``n`` problems of a testbed split (all of it when ``n`` is None) as benchmark items."""
    from rlsd.testbed import load_splits

    split = split or DEFAULT_SPLIT
    if split not in SPLITS:
        raise ValueError(f"testbed split must be one of {SPLITS}, got {split!r}")
    if n is not None and n < 0:
        raise ValueError(f"testbed: n must be >= 0, got {n}")
    # load_splits de-duplicates train against val+test and val against test, so those need the full later splits.
    sizes = {"train": (n, None, None), "val": (0, n, None), "test": (0, 0, n)}[split]
    train, val, test = load_splits(*sizes)
    problems = {"train": train, "val": val, "test": test}[split]
    cache = Path(image_cache or root or default_image_cache(NAME, split))
    items = []
    for problem in problems:
        paths = []
        for k, image in enumerate(problem.images):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            paths.append(materialise_image({"bytes": buffer.getvalue(), "path": "image.png"}, cache, cache,
                                           f"{problem.id}_{k}"))
        meta = {key: value for key, value in problem.meta.items() if key != "cells"}
        meta.update(split=split, solution=problem.solution)
        options = problem.meta.get("options")
        items.append(BenchmarkItem(NAME, problem.id, problem.question, student_prompt(problem.question), paths,
                                   problem.answer, list(options) if options else None,
                                   "multiple-choice" if options else "integer", meta))
    flag_missing_images(items, NAME, cache)
    return items


def _problem(item: BenchmarkItem):
    """A ``rlsd.data.Problem`` carrying what ``rlsd.testbed.supported_answer`` reads (question, answer, meta)."""
    from rlsd.data import Problem

    return Problem(id=item.id, question=item.question, answer=str(item.answer), images=[], meta=item.meta)


def _thought(response: str) -> str:
    start, end = response.find("<thought>"), response.find("</thought>")
    return response[start + len("<thought>"):end] if start >= 0 and end > start else response


def score(items: list[BenchmarkItem], responses: list[str], *, verifier=None, **_) -> tuple[list[dict], dict]:
    """The training reward per item, and the evaluation metrics of ``rlsd.evaluate`` over the items."""
    from rlsd.testbed import mentions_reference, supported_answer

    if verifier is None:
        from rlsd.verifier import default_verifier as verifier  # time-bounded worker process
    responses = [r if isinstance(r, str) else "" for r in responses]
    results = verifier.score_batch(responses, [str(item.answer) for item in items])
    per_item, unsupported = [], []
    for item, response, result in zip(items, responses, results):
        entry = {"id": item.id, "correct": result.reward > 0, "pred": result.extracted, "format_ok": result.format_ok,
                 "leak": mentions_reference(response), "unsupported": None}
        if "family" in item.meta:
            entry["unsupported"] = (result.extracted is not None
                                    and supported_answer(_problem(item), _thought(response)) != result.extracted)
            unsupported.append(entry["unsupported"])
        per_item.append(entry)
    flags = [entry["correct"] for entry in per_item]
    n = len(per_item)
    metrics = {
        "accuracy": accuracy(flags),
        "n": n,
        "correct": sum(flags),
        "leak_rate": sum(entry["leak"] for entry in per_item) / max(1, n),
        "unsupported_answer_rate": sum(unsupported) / len(unsupported) if unsupported else None,
        "format_rate": sum(entry["format_ok"] for entry in per_item) / max(1, n),
        "answer_rate": sum(entry["pred"] is not None for entry in per_item) / max(1, n),
        "by_family": breakdown(items, flags, lambda item: item.meta.get("family", "all")),
        "by_difficulty": breakdown(items, flags, lambda item: item.meta.get("difficulty", "all")),
    }
    return per_item, metrics


def answer_as_response(item: BenchmarkItem) -> str:
    """The canonical written solution with the gold answer (the SFT target format)."""
    return f"<thought>{item.meta.get('solution') or ''}</thought><answer>{item.answer}</answer>"
