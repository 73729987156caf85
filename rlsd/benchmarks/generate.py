"""Responses to benchmark items from a local model, with the project's HF engine.

    items = load_benchmark("mathvista", "/data/mathvista")
    responses = generate_responses(model, processor, items, max_new_tokens=1024)
    score_responses("mathvista", items, responses)["headline"]

One response per item, batched, sampled with ``rlsd.rollout.hf_generate`` under the same special-token suppression
as training and ``rlsd.evaluate`` (``rlsd.scoring.suppressed_token_ids``), from the messages of
``build_messages(item)`` and the images listed in ``item.images``.

Seeding follows ``rlsd.evaluate.evaluate`` exactly (each item sampled from its own seed,
``rlsd.rollout.item_seed(seed, item.id)``; the caller's RNG state is left as it was), so an item's response does not
depend on its batch, and for the testbed, with the same sampling settings, the responses are the ones
``rlsd.evaluate`` produces, token for token.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from rlsd.inputs import encode_prompts
from rlsd.rollout import VALIDATION_SAMPLING, SamplingParams, hf_generate, item_seed
from rlsd.scoring import suppressed_token_ids

from .common import BenchmarkItem


class ImagesMissingError(ValueError):
    """Some items cannot be sent to a model: their image files are not on disk (annotation-only checkout)."""

    def __init__(self, items: Sequence[BenchmarkItem]):
        self.item_ids = [f"{item.benchmark}/{item.id}" for item in items]
        shown = ", ".join(self.item_ids[:5]) + (f" and {len(self.item_ids) - 5} more" if len(self.item_ids) > 5 else "")
        super().__init__(
            f"cannot generate for {len(self.item_ids)} item(s) whose image files are missing: {shown}. "
            "Their annotations can be scored but not answered; load the benchmark with its images "
            "(load_benchmark(..., image_root=...)), or keep only the answerable items: "
            "[item for item in items if not item.images_missing]")


def check_generatable(items: Sequence[BenchmarkItem]) -> None:
    """Raise ``ImagesMissingError`` (naming the items) if any item lacks its images, ``ValueError`` if any lacks
    question text (MMMU answer-dict-only mode)."""
    missing = [item for item in items if item.images_missing]
    if missing:
        raise ImagesMissingError(missing)
    no_text = [f"{item.benchmark}/{item.id}" for item in items if not item.prompt]
    if no_text:
        raise ValueError(f"cannot generate for {len(no_text)} item(s) without question text, e.g. {no_text[:5]}; "
                         "load the full release (with questions) to generate responses")


def open_images(item: BenchmarkItem) -> list[Image.Image]:
    """The item's images as RGB PIL images, in protocol order."""
    images = []
    for path in item.images:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except FileNotFoundError:
            raise ImagesMissingError([item]) from None
    return images


@torch.no_grad()
def generate_responses(model, processor, items: Sequence[BenchmarkItem],
                       sampling: SamplingParams = VALIDATION_SAMPLING, batch_size: int = 8,
                       max_new_tokens: int | None = None, seed: int = 0, progress: bool = True) -> list[str]:
    """One decoded response per item (aligned with ``items``), for ``score_responses``.

    ``sampling`` defaults to the paper's validation settings (T 0.7, top-p 0.8, top-k 20); ``max_new_tokens``, if
    given, replaces ``sampling.max_new_tokens``.  A fixed ``seed`` gives the same responses at any ``batch_size``
    (one seed per item); the global RNG state is left as it was.  Items whose images are missing raise
    ``ImagesMissingError`` before anything is generated.
    """
    items = list(items)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_generatable(items)
    if max_new_tokens is not None:
        sampling = dataclasses.replace(sampling, max_new_tokens=max_new_tokens)
    sampling.validate()
    tokenizer = processor.tokenizer
    suppress = suppressed_token_ids(tokenizer, model.config.get_text_config().vocab_size)
    device = next(model.parameters()).device
    from . import build_messages

    responses: list[str] = []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        for start in tqdm(range(0, len(items), batch_size), desc="generate", disable=not progress, leave=False):
            chunk = items[start:start + batch_size]
            batch = encode_prompts(processor, [build_messages(item) for item in chunk],
                                   [open_images(item) for item in chunk]).to(device)
            rollout = hf_generate(model, batch, sampling, suppress, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                  row_seeds=[item_seed(seed, item.id) for item in chunk])
            for ids, mask in zip(rollout.response_ids_BT, rollout.response_mask_BT):
                responses.append(tokenizer.decode(ids[mask.bool()], skip_special_tokens=True))
    return responses


def run_benchmark(name: str, model, processor, root=None, split: str | None = None, *, limit: int | None = None,
                  skip_missing: bool = False, load_options: dict | None = None, score_options: dict | None = None,
                  **generate_options) -> dict:
    """Load ``name``, generate one response per item and score it by the benchmark's protocol.

    ``limit`` keeps the first items only (for a quick look; a headline on a prefix is not the benchmark's number).
    With ``skip_missing=True`` items that cannot be answered (missing images or question text) are left out and
    listed in ``"skipped"``; otherwise they raise.  ``generate_options`` go to ``generate_responses``.  Returns
    ``score_responses``'s dict plus ``"items"``, ``"responses"``, ``"skipped"`` (ids) and ``"n_loaded"``.
    """
    from . import load_benchmark, score_responses

    load_options = dict(load_options or {})
    items = load_benchmark(name, root, split, **load_options)
    n_loaded = len(items)
    skipped = []
    if skip_missing:
        skipped = [item.id for item in items if item.images_missing or not item.prompt]
        items = [item for item in items if not (item.images_missing or not item.prompt)]
    if limit is not None:
        items = items[:limit]
    responses = generate_responses(model, processor, items, **generate_options) if items else []
    result = score_responses(name, items, responses, **(score_options or {})) if items else {
        "benchmark": name, "n": 0, "correct": [], "per_item": [], "metrics": {}, "headline_key": None,
        "headline": None}
    return {**result, "items": items, "responses": responses, "skipped": skipped, "n_loaded": n_loaded}
