"""Evaluation on the testbed (or any list of `Problem`s): accuracy with a 95% interval, leakage and controls.

    leak_rate                 share of responses that mention a reference the student prompt never had
    mention_prob              mean probability the model gives to OPENING its response with the teacher format's
                              mention of the reference (testbed). Validation decoding (top-p 0.8) never samples a
                              habit below ~15% probability, so leak_rate alone is blind to a habit that is growing.
    unsupported_answer_rate   share of responses whose final answer does not follow from their own written steps
                              (a leakage signal the tiny model was never taught; testbed problems only)
    readout_accuracy_needed   share of the read-outs ("red 3") that state the true count, over the colours the
    readout_accuracy_unneeded question's answer depends on / does not depend on (testbed; `rlsd.testbed.needed_colours`).
                              For an information-only teacher format, "unneeded" equals the student's and "needed" is
                              higher -- on the pinned families (count, pair) clearly so. Also per family.
    majority_baseline         accuracy of always answering the most common answer of each task family
    control                   "blank": every image replaced by a white one; "shuffled": images permuted across
                              problems. A model that reads the image falls to about the majority baseline.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm

from rlsd.data import Problem
from rlsd.inputs import encode_prompts
from rlsd.prompts import student_messages, teacher_messages
from rlsd.rollout import VALIDATION_SAMPLING, SamplingParams, hf_generate, item_seed
from rlsd.scoring import score_responses, suppress_mask, suppressed_token_ids
from rlsd.testbed import MENTION_PREFIX, mentions_reference, readout_checks, supported_answer
from rlsd.verifier import extract_answer, format_ok, score_batch

CONTROLS = ("none", "blank", "shuffled")
FORMATS = ("student", "teacher")


def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval for a binomial proportion k/n."""
    if n == 0:
        return [0.0, 0.0]
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def majority_baseline(problems: list[Problem]) -> float:
    """Accuracy of answering, for each family, the most common answer of that family in `problems`."""
    by_family = defaultdict(Counter)
    for p in problems:
        by_family[p.meta.get("family", "all")][p.answer] += 1
    return sum(c.most_common(1)[0][1] for c in by_family.values()) / max(1, len(problems))


def apply_control(problems: list[Problem], control: str, seed: int = 0) -> list[list[Image.Image]]:
    """The images each problem is shown with under `control`."""
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
    images = [p.images for p in problems]
    if control == "blank":
        return [[Image.new("RGB", im.size, (255, 255, 255)) for im in imgs] for imgs in images]
    if control == "shuffled":
        order = list(range(len(problems)))
        random.Random(seed).shuffle(order)
        return [images[j] for j in order]
    return images


def build_messages(problems: list[Problem], fmt: str) -> list[list[dict]]:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "student":
        return [student_messages(p.question, len(p.images)) for p in problems]
    return [teacher_messages(p.question, p.answer, len(p.images)) for p in problems]


@dataclass
class EvalResult:
    summary: dict
    responses: list[str]
    rewards: list[float]


def _prefix_probs(model, prompts, tok, prefix: str, suppress: list[int]) -> list[float]:
    """P(response starts with `prefix` | prompt) for every row (one batched forward)."""
    ids = tok(prefix, add_special_tokens=False)["input_ids"]
    ids_BT = torch.tensor([ids] * prompts.batch_size, device=prompts.input_ids_BP.device)
    vocab = model.config.get_text_config().vocab_size
    scores = score_responses(model, prompts, ids_BT, torch.ones_like(ids_BT), suppress_mask(suppress, vocab),
                             with_entropy=False)
    return scores.logp_BT.sum(-1).exp().tolist()


def _thought(response: str) -> str:
    start, end = response.find("<thought>"), response.find("</thought>")
    return response[start + len("<thought>"):end] if start >= 0 and end > start else response


@torch.no_grad()
def evaluate(model, processor, problems: list[Problem], fmt: str = "student", control: str = "none",
             sampling: SamplingParams = VALIDATION_SAMPLING, seed: int = 0, batch_size: int = 64,
             progress: bool = True, per_item_seeds: bool = False) -> EvalResult:
    """Generate one response per problem and score it. Fixed seed -> same numbers.

    `per_item_seeds`: each problem is sampled from its own seed (`rlsd.rollout.item_seed(seed, problem.id)`), so the
    responses do not depend on the batch size. Off by default: the committed training logs (data/runs) were
    evaluated with one seeded stream per evaluation, and `reproduce` must reproduce them bit for bit."""
    tok = processor.tokenizer
    suppress = suppressed_token_ids(tok, model.config.get_text_config().vocab_size)
    device = next(model.parameters()).device
    messages = build_messages(problems, fmt)
    images = apply_control(problems, control, seed)
    responses, lengths, truncated, mention_probs = [], [], [], []
    is_testbed = all("family" in p.meta for p in problems)
    gen = torch.Generator().manual_seed(seed)
    cpu_state = torch.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    try:
        for start in tqdm(range(0, len(problems), batch_size), desc=f"eval {fmt}/{control}", disable=not progress,
                          leave=False):
            end = min(start + batch_size, len(problems))
            batch = encode_prompts(processor, messages[start:end], images[start:end]).to(device)
            rollout = hf_generate(model, batch, sampling, suppress, tok.eos_token_id, tok.pad_token_id,
                                  row_seeds=[item_seed(seed, p.id) for p in problems[start:end]]
                                  if per_item_seeds else None)
            for ids, mask in zip(rollout.response_ids_BT, rollout.response_mask_BT):
                responses.append(tok.decode(ids[mask.bool()], skip_special_tokens=True))
            if is_testbed:
                mention_probs += _prefix_probs(model, batch, tok, MENTION_PREFIX, suppress)
            lengths += rollout.lengths_B.tolist()
            truncated += rollout.truncated_B.tolist()
    finally:
        torch.set_rng_state(cpu_state)
    results = score_batch(responses, [p.answer for p in problems])
    rewards = [r.reward for r in results]
    unsupported = []
    for p, resp, res in zip(problems, responses, results):
        if "family" in p.meta:  # testbed problems: does the answer follow from the written steps?
            unsupported.append(res.extracted is not None and supported_answer(p, _thought(resp)) != res.extracted)
    n, k = len(problems), int(sum(rewards))
    summary = {
        "n": n,
        "format": fmt,
        "control": control,
        "accuracy": k / max(1, n),
        "accuracy_ci95": wilson_interval(k, n),
        "leak_rate": sum(mentions_reference(r) for r in responses) / max(1, n),
        "mention_prob": sum(mention_probs) / len(mention_probs) if mention_probs else None,
        "unsupported_answer_rate": sum(unsupported) / len(unsupported) if unsupported else None,
        "format_rate": sum(format_ok(r) for r in responses) / max(1, n),
        "answer_rate": sum(extract_answer(r) is not None for r in responses) / max(1, n),
        "truncated_rate": sum(truncated) / max(1, n),
        "mean_response_tokens": sum(lengths) / max(1, n),
        "majority_baseline": majority_baseline(problems),
        "seed": seed,
    }
    families = sorted({p.meta["family"] for p in problems if "family" in p.meta})
    for fam in families:
        idx = [i for i, p in enumerate(problems) if p.meta.get("family") == fam]
        summary[f"accuracy_{fam}"] = sum(rewards[i] for i in idx) / len(idx)
    if is_testbed:
        summary.update(readout_summary(problems, responses))
    return EvalResult(summary=summary, responses=responses, rewards=rewards)


def readout_summary(problems: list[Problem], responses: list[str]) -> dict:
    """readout_accuracy_{needed,unneeded} overall and per family (None where no read-out of that kind was made)."""
    tallies = defaultdict(lambda: [0, 0])  # key -> [correct, total]
    for p, resp in zip(problems, responses):
        for _, needed, correct in readout_checks(p, _thought(resp)):
            role = "needed" if needed else "unneeded"
            for key in (role, f"{role}_{p.meta['family']}"):
                tallies[key][0] += correct
                tallies[key][1] += 1
    out = {"readout_accuracy_needed": None, "readout_accuracy_unneeded": None}
    for key, (k, n) in sorted(tallies.items()):
        out[f"readout_accuracy_{key}"] = k / n
        out[f"readout_count_{key}"] = n
    return out
