"""Token credit: what RLSD does to each token of a response, for any checkpoint and any (image, question, response).

For a response y with sequence advantage A, RLSD's token advantage is A·((1-λ) + λ·clip(w_t, 1-ε, 1+ε)) with the
evidence weight w_t = exp(sign(A)·Δ_t), Δ_t = log P_T(y_t) - log P_S(y_t) (rlsd.algorithm). This module scores a
response under the student and the teacher prompt, returns those per-token numbers, labels the tokens of testbed
responses (decisive vs narration), summarises where the credit goes per token role with percentile-bootstrap
intervals over responses and the spread over checkpoints, and renders heatmaps like the paper's Figure 6 (PNG via
matplotlib, and HTML) with examples picked by a stated rule.

Sign convention for a single response shown out of its group: A = +1 if the verifier accepts it, -1 otherwise (as in
a group with both outcomes). The displayed credit is sign(A)·((1-λ) + λ·clip(w_t)).
"""

from __future__ import annotations

import html
import random
import re
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import torch

from rlsd import algorithm as alg
from rlsd.data import Problem
from rlsd.inputs import encode_prompts
from rlsd.prompts import student_messages, teacher_messages
from rlsd.scoring import score_responses, suppress_mask, suppressed_token_ids
from rlsd.verifier import score as verify


@dataclass
class TokenCredit:
    """Per-token view of one response."""

    tokens: list[str]
    delta: list[float]
    """Δ_t = log P_T(y_t) - log P_S(y_t)."""
    weight: list[float]
    """Evidence weight w_t = exp(sign(A)·Δ_t), unclipped."""
    credit: list[float]
    """sign(A)·((1-λ) + λ·clip(w_t)): the token's share of the sequence advantage, signed."""
    reward: float
    lam: float
    labels: list[str] | None = None


@torch.no_grad()
def token_credit(model, processor, problem: Problem, response: str, lam: float = 0.5, clip_eps: float = 0.2,
                 teacher_context=None) -> TokenCredit:
    """Score `response` under the student and the teacher prompt and return its RLSD token credits.

    `teacher_context`: a context manager that switches the model to the teacher's weights (e.g.
    `rlsd.teacher.TeacherWeights(...).active()`); default = the same weights (a self-teacher, as at step 0).
    """
    tok = processor.tokenizer
    vocab = model.config.get_text_config().vocab_size
    sup_V = suppress_mask(suppressed_token_ids(tok, vocab), vocab)
    device = next(model.parameters()).device
    ids = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids_BT = torch.tensor([ids], device=device)
    mask_BT = torch.ones_like(ids_BT)
    student = encode_prompts(processor, [student_messages(problem.question, len(problem.images))],
                             [problem.images]).to(device)
    teacher = encode_prompts(processor, [teacher_messages(problem.question, problem.answer, len(problem.images))],
                             [problem.images]).to(device)
    was_training = model.training
    model.eval()
    try:
        s = score_responses(model, student, ids_BT, mask_BT, sup_V, with_entropy=False)
        with teacher_context or nullcontext():
            t = score_responses(model, teacher, ids_BT, mask_BT, sup_V, with_entropy=False)
    finally:
        model.train(was_training)
    reward = verify(response, problem.answer).reward
    adv_B = torch.tensor([1.0 if reward > 0 else -1.0], device=device)
    w_BT, _, _ = alg.rlsd_token_weights(adv_B, t.logp_BT, s.logp_BT, mask_BT, clip_eps)
    adv_BT = alg.rlsd_token_advantages(adv_B, t.logp_BT, s.logp_BT, mask_BT, lam, clip_eps)
    tokens = [tok.decode([i]) for i in ids]
    tokens[-1] = "⏎"  # end-of-turn
    return TokenCredit(tokens=tokens, delta=(t.logp_BT - s.logp_BT)[0].tolist(), weight=w_BT[0].tolist(),
                       credit=adv_BT[0].tolist(), reward=reward, lam=lam)


# ---------------------------------------------------------------------------------------- testbed token labels

_READ = re.compile(r"(red|green|blue|yellow) (\d+)")
_OP = re.compile(r"(?<!times )(\b\d+) (plus|minus) (\d+) = (-?\d+)")
_PAIR = re.compile(r"10 times (\d+) plus (\d+) = (\d+)")
_MOST = re.compile(r"most (red|green|blue|yellow) , option ([A-D])")
_ANSWER = re.compile(r"<answer>(.*?)</answer>")
LABELS = ("relevant_readout", "other_readout", "operand", "result", "answer", "reference_mention", "narration")
DECISIVE = ("relevant_readout", "result", "answer")


def _relevant_colours(problem: Problem) -> set[str]:
    from rlsd.testbed import needed_colours

    return needed_colours(problem)


def label_tokens(problem: Problem, tokens: list[str]) -> list[str]:
    """Label each token of a testbed response by its role (see LABELS). Character spans come from the regexes of
    the solution grammar; a token takes the label of the span it overlaps (narration otherwise)."""
    text = "".join(tokens)
    spans: list[tuple[int, int, str]] = []
    relevant = _relevant_colours(problem)
    for m in _READ.finditer(text):
        spans.append((m.start(2), m.end(2), "relevant_readout" if m.group(1) in relevant else "other_readout"))
    for m in _OP.finditer(text):
        spans += [(m.start(1), m.end(1), "operand"), (m.start(3), m.end(3), "operand"), (m.start(4), m.end(4), "result")]
    for m in _PAIR.finditer(text):
        spans += [(m.start(1), m.end(1), "operand"), (m.start(2), m.end(2), "operand"), (m.start(3), m.end(3), "result")]
    for m in _MOST.finditer(text):
        spans += [(m.start(1), m.end(1), "result"), (m.start(2), m.end(2), "result")]
    for m in _ANSWER.finditer(text):
        spans.append((m.start(1), m.end(1), "answer"))
    for m in re.finditer(r"the reference answer is \S+ ,", text):
        spans.append((m.start(), m.end(), "reference_mention"))
    labels, pos = [], 0
    for tok in tokens:
        start, end = pos, pos + len(tok)
        pos = end
        label = "narration"
        for s, e, name in spans:
            if s < end and start < e and tok.strip():
                label = name  # later (more specific) spans win: operands/results over readouts
        labels.append(label)
    return labels


def credit_shares_by(credits: list[TokenCredit], keys: list[str]) -> dict:
    """`credit_shares` of each group of responses sharing a key (e.g. the problem's family)."""
    groups: dict[str, list[TokenCredit]] = {}
    for c, key in zip(credits, keys):
        groups.setdefault(key, []).append(c)
    return {key: {"n": len(cs), **credit_shares(cs)} for key, cs in sorted(groups.items())}


def credit_shares(credits: list[TokenCredit]) -> dict:
    """How the teacher's redistribution |w_t - 1| and |Δ_t| split across token roles, over many responses.

    Returns per label: share of tokens, share of Σ|clip(w)-1| (the part of the credit RLSD moves), mean |Δ|.
    """
    totals = {k: {"tokens": 0, "moved": 0.0, "abs_delta": 0.0} for k in LABELS}
    for c in credits:
        for label, w, d in zip(c.labels, c.weight, c.delta):
            clipped = min(max(w, 1 - 0.2), 1 + 0.2)
            totals[label]["tokens"] += 1
            totals[label]["moved"] += abs(clipped - 1)
            totals[label]["abs_delta"] += abs(d)
    n_tok = sum(v["tokens"] for v in totals.values()) or 1
    moved = sum(v["moved"] for v in totals.values()) or 1.0
    return {k: {"token_share": v["tokens"] / n_tok, "credit_moved_share": v["moved"] / moved,
                "mean_abs_delta": v["abs_delta"] / v["tokens"] if v["tokens"] else None}
            for k, v in totals.items()}


# ------------------------------------------------------------------------- roles, the mention habit, intervals

ROLES = ("readout_needed", "result_answer", "readout_unneeded", "operand", "narration", "habit")
"""The partition every statistic reports: each token has exactly one role. `readout_needed` / `readout_unneeded`:
counts of the colours the answer does / does not depend on; `result_answer`: the computed result and the answer
(which the reference pins trivially, so they are kept apart from the read-outs); `habit`: the tokens where the
teacher's mention habit acts (`habit_mask`)."""
_ROLE_OF_LABEL = {"relevant_readout": "readout_needed", "result": "result_answer", "answer": "result_answer",
                  "other_readout": "readout_unneeded", "operand": "operand", "narration": "narration",
                  "reference_mention": "habit"}
PINNED = ("count", "pair")
"""Families whose answer determines each needed read-out (count: the count itself; pair: its two digits)."""
_THOUGHT = "<thought>"


def has_habit(c: TokenCredit) -> bool:
    """The response itself shows the mention habit: its thought opens with "the reference answer is", or it holds a
    reference_mention token anywhere."""
    text = "".join(c.tokens)
    start = text.find(_THOUGHT)
    opens = start >= 0 and text[start + len(_THOUGHT):].lstrip().startswith("the reference answer is")
    return opens or "reference_mention" in (c.labels or [])


def habit_mask(c: TokenCredit) -> list[bool]:
    """Tokens whose Δ comes from the teacher's mention habit: the mention itself (reference_mention) and the
    thought's first token. A minority of teacher-format targets open their thought with "the reference answer is N ,"
    (rlsd.testbed.sft), so at that position the teacher gives any other opening (log) probability lower by about
    log(1 - P_T(mention)) whatever the response says -- a weight that says nothing about the image."""
    labels = c.labels or ["narration"] * len(c.tokens)
    mask = [label == "reference_mention" for label in labels]
    pos, after = 0, None
    text = "".join(c.tokens)
    start = text.find(_THOUGHT)
    if start >= 0:
        after = start + len(_THOUGHT)
    for i, tok in enumerate(c.tokens):
        if after is not None and pos >= after and tok.strip():
            mask[i] = True
            break
        pos += len(tok)
    return mask


def token_roles(c: TokenCredit) -> list[str]:
    """Each token's role (see ROLES): its label mapped onto the partition, the habit positions taking `habit`."""
    if c.labels is None:
        raise ValueError("token_roles: the TokenCredit has no labels (set c.labels = label_tokens(problem, c.tokens))")
    return ["habit" if h else _ROLE_OF_LABEL[label] for label, h in zip(c.labels, habit_mask(c))]


def shuffle_readout_labels(c: TokenCredit, rng: random.Random) -> TokenCredit:
    """A copy of `c` whose needed / unneeded read-out labels are permuted among its read-out tokens: the negative
    control for a needed-vs-unneeded difference (any difference left is noise)."""
    labels = list(c.labels)
    at = [i for i, label in enumerate(labels) if label in ("relevant_readout", "other_readout")]
    values = [labels[i] for i in at]
    rng.shuffle(values)
    for i, v in zip(at, values):
        labels[i] = v
    return replace(c, labels=labels)


@dataclass
class RoleTotals:
    """Per-response sums by role (N responses, R = len(ROLES)), the unit the bootstrap resamples."""

    tokens_NR: np.ndarray
    """Number of tokens of each role in each response."""
    moved_NR: np.ndarray
    """Σ |clip(w_t) - 1| over the response's tokens of each role: the credit RLSD moves there (before λ)."""
    abs_delta_NR: np.ndarray
    """Σ |Δ_t| (nats) over the response's tokens of each role."""
    checkpoint_N: np.ndarray
    """Which checkpoint scored each response."""
    family_N: np.ndarray
    """Each response's problem family."""
    habit_N: np.ndarray
    """Whether the response itself shows the mention habit (`has_habit`)."""


def role_totals(credits: list[TokenCredit], families: list[str], checkpoints: list[str],
                clip_eps: float = 0.2) -> RoleTotals:
    """Sum each labelled response's tokens, moved credit and |Δ| by role (one row per response)."""
    if not (len(credits) == len(families) == len(checkpoints)):
        raise ValueError(f"role_totals: {len(credits)} credits, {len(families)} families, {len(checkpoints)} "
                         f"checkpoint names: one of each per response")
    n, col = len(credits), {r: j for j, r in enumerate(ROLES)}
    tokens, moved, abs_delta = np.zeros((n, len(ROLES))), np.zeros((n, len(ROLES))), np.zeros((n, len(ROLES)))
    for i, c in enumerate(credits):
        for role, w, d in zip(token_roles(c), c.weight, c.delta):
            j = col[role]
            tokens[i, j] += 1
            moved[i, j] += abs(min(max(w, 1 - clip_eps), 1 + clip_eps) - 1)
            abs_delta[i, j] += abs(d)
    return RoleTotals(tokens, moved, abs_delta, np.array(checkpoints), np.array(families),
                      np.array([has_habit(c) for c in credits], dtype=bool))


def _ratio(num, den):
    return float(num / den) if den > 0 else float("nan")


def role_statistics(t: RoleTotals, idx: np.ndarray) -> np.ndarray:
    """(3, R) for the responses `idx` (repeats allowed): token share, moved share, mean |Δ| of each role."""
    tok, mov, dlt = t.tokens_NR[idx].sum(0), t.moved_NR[idx].sum(0), t.abs_delta_NR[idx].sum(0)
    mean_delta = np.divide(dlt, tok, out=np.full_like(dlt, np.nan), where=tok > 0)
    return np.stack([tok / max(tok.sum(), 1), mov / mov.sum() if mov.sum() > 0 else mov * np.nan, mean_delta])


def needed_minus_unneeded(t: RoleTotals, idx: np.ndarray) -> np.ndarray:
    """(3,) for the responses `idx`: mean |Δ| on needed read-outs - on unneeded ones, and the two means."""
    a, b = ROLES.index("readout_needed"), ROLES.index("readout_unneeded")
    tok, dlt = t.tokens_NR[idx].sum(0), t.abs_delta_NR[idx].sum(0)
    needed, unneeded = _ratio(dlt[a], tok[a]), _ratio(dlt[b], tok[b])
    return np.array([needed - unneeded, needed, unneeded])


def bootstrap_ci(statistic, strata: list[np.ndarray], resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap: resample the responses of each stratum (a checkpoint) with replacement, `resamples`
    times from a fixed seed, and return the (lo, hi) quantiles of `statistic(indices)` (any array shape)."""
    if resamples < 1 or not strata or any(len(s) == 0 for s in strata):
        raise ValueError(f"bootstrap_ci: needs resamples >= 1 and non-empty strata (got {resamples}, "
                         f"{[len(s) for s in strata]})")
    rng = np.random.default_rng(seed)
    draws = np.stack([statistic(np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata]))
                      for _ in range(resamples)])
    alpha = (1 - level) / 2
    with warnings.catch_warnings():  # a role with no tokens is NaN in every draw: its interval is NaN (None in JSON)
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(draws, alpha, axis=0), np.nanquantile(draws, 1 - alpha, axis=0)


def _num(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def summarise_credit(t: RoleTotals, resamples: int = 2000, seed: int = 0, pinned: tuple[str, ...] = PINNED,
                     shuffled: RoleTotals | None = None) -> dict:
    """Per role (pooled over checkpoints, 95% percentile-bootstrap interval over responses stratified by checkpoint,
    and each checkpoint alone), the pinned families' needed - unneeded |Δ| the same way, and the habit's own weight.
    `shuffled`: the same responses with read-out labels permuted (`shuffle_readout_labels`), reported as the
    negative control of the pinned difference. `per_family_roles`: the role statistics of each family (pooled, no
    interval)."""
    names = list(dict.fromkeys(t.checkpoint_N.tolist()))
    every = np.arange(len(t.checkpoint_N))
    strata = [every[t.checkpoint_N == name] for name in names]
    point = role_statistics(t, every)
    lo, hi = bootstrap_ci(lambda idx: role_statistics(t, idx), strata, resamples, seed)
    per = {name: role_statistics(t, s) for name, s in zip(names, strata)}
    roles = {}
    for j, role in enumerate(ROLES):
        roles[role] = {"token_share": _num(point[0, j]), "moved_share": _num(point[1, j]),
                       "moved_share_ci95": [_num(lo[1, j]), _num(hi[1, j])],
                       "per_checkpoint_moved_share": {n: _num(per[n][1, j]) for n in names},
                       "mean_abs_delta": _num(point[2, j]),
                       "mean_abs_delta_ci95": [_num(lo[2, j]), _num(hi[2, j])],
                       "per_checkpoint_mean_abs_delta": {n: _num(per[n][2, j]) for n in names}}

    def pinned_block(totals: RoleTotals) -> dict:
        out = {}
        for fam in pinned:
            fam_strata = [s[totals.family_N[s] == fam] for s in strata]
            if any(len(s) == 0 for s in fam_strata):
                continue
            d = needed_minus_unneeded(totals, np.concatenate(fam_strata))
            dlo, dhi = bootstrap_ci(lambda idx: needed_minus_unneeded(totals, idx)[:1], fam_strata, resamples, seed)
            out[fam] = {"needed_minus_unneeded_abs_delta": _num(d[0]), "ci95": [_num(dlo[0]), _num(dhi[0])],
                        "per_checkpoint": {n: _num(needed_minus_unneeded(totals, s)[0])
                                           for n, s in zip(names, fam_strata)},
                        "needed": _num(d[1]), "unneeded": _num(d[2]), "n": int(sum(len(s) for s in fam_strata))}
        return out

    per_family = {}
    for fam in sorted(set(t.family_N.tolist())):
        idx = every[t.family_N == fam]
        s = role_statistics(t, idx)
        per_family[fam] = {"n": int(len(idx)), **{role: {"token_share": _num(s[0, j]), "moved_share": _num(s[1, j]),
                                                         "mean_abs_delta": _num(s[2, j])}
                                                  for j, role in enumerate(ROLES)}}
    h = ROLES.index("habit")
    habit_tokens = t.tokens_NR[:, h].sum()
    summary = {
        "checkpoints": names, "n_responses": int(len(every)),
        "n_responses_per_checkpoint": {n: int(len(s)) for n, s in zip(names, strata)},
        "bootstrap": {"resamples": int(resamples), "seed": int(seed), "level": 0.95, "method":
                      "percentile, responses resampled with replacement within each checkpoint"},
        "roles": roles, "pinned": pinned_block(t), "per_family_roles": per_family,
        "habit": {"responses_with_habit": int(t.habit_N.sum()), "responses": int(len(every)),
                  "mean_weight_on_habit_tokens": _ratio(t.moved_NR[:, h].sum(), habit_tokens),
                  "mean_weight_on_all_tokens": _ratio(t.moved_NR.sum(), t.tokens_NR.sum()),
                  "mean_abs_delta_on_habit_tokens": _ratio(t.abs_delta_NR[:, h].sum(), habit_tokens),
                  "weight_is": "mean |clip(w_t) - 1| per token: the credit RLSD moves there, before the factor λ"},
    }
    if shuffled is not None:
        summary["pinned_label_shuffle"] = pinned_block(shuffled)
    return summary


def pick_examples(problems: list[Problem], credits: list[TokenCredit], family: str = "count") -> list[dict]:
    """The heatmap examples, by a stated rule (no hand-picking): among the responses to `family` problems that do not
    show the mention habit (`has_habit`), the correct and the incorrect response with the median mean |Δ| (the
    lower median when the count is even). Returns one dict per outcome found: problem, credit, pool size, rule."""
    chosen = []
    for correct in (True, False):
        pool = [(p, c) for p, c in zip(problems, credits)
                if p.meta["family"] == family and (c.reward > 0) == correct and not has_habit(c)]
        if not pool:
            continue
        pool.sort(key=lambda pc: (float(np.mean(np.abs(pc[1].delta))), pc[0].id))
        p, c = pool[(len(pool) - 1) // 2]
        chosen.append({"problem": p, "credit": c, "pool": len(pool), "correct": correct,
                       "rule": f"median mean |Δ| of {len(pool)} {'correct' if correct else 'incorrect'} "
                               f"'{family}' responses without the mention habit"})
    return chosen


# ------------------------------------------------------------------------------------------------- rendering


def _rgb(value: float, scale: float) -> tuple[float, float, float]:
    """Blue for blame (<0), red for credit (>0), white at 0 of the deviation from the uniform share."""
    x = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    if x >= 0:
        return (1.0, 1 - 0.65 * x, 1 - 0.65 * x)
    return (1 + 0.65 * x, 1 + 0.65 * x, 1.0)


def _deviation(c: TokenCredit) -> list[float]:
    """Each token's weight relative to GRPO's uniform advantage, minus 1: credit_t / sign(A) - 1, in
    [-λε, +λε]. Positive: more of the advantage than uniform (more credit, or more blame on a failed response)."""
    sign = 1.0 if c.reward > 0 else -1.0
    return [v / sign - 1.0 for v in c.credit]


ROLE_TAGS = {"relevant_readout": "need", "other_readout": "other", "operand": "op", "result": "res",
             "answer": "ans", "reference_mention": "ref", "narration": ""}


def credit_html(c: TokenCredit, title: str = "", clip_eps: float = 0.2) -> str:
    dev = _deviation(c)
    scale = c.lam * clip_eps or 1.0  # the largest deviation the clip allows: one scale for every response
    spans = []
    for tok, v, w in zip(c.tokens, dev, c.weight):
        r, g, b = _rgb(v, scale)
        spans.append(f'<span title="w={w:.3f}, weight/uniform={1 + v:.3f}" style="background: rgb({int(255*r)},'
                     f'{int(255*g)},{int(255*b)}); padding: 1px 0">{html.escape(tok)}</span>')
    head = f"<b>{html.escape(title)}</b> reward={c.reward:.0f} λ={c.lam}<br>"
    return f'<div style="font-family: monospace; line-height: 1.8">{head}{"".join(spans)}</div>'


def plot_credit(credits: list[tuple[str, TokenCredit]], width: int = 10, clip_eps: float = 0.2, note: str = ""):
    """A Figure-6-style heatmap, the responses side by side (e.g. a correct and an incorrect one): each token in a
    grid cell coloured by its weight relative to GRPO's uniform advantage, on ONE scale fixed by the clip
    (1 ± λε, so nothing saturates and colours compare across responses), with its role under it, and a colour key.
    The habit positions (`habit_mask`) are outlined and tagged "habit"; `note` is printed under the panels (say n and
    how the examples were chosen)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    lam = max((c.lam for _, c in credits), default=0.5)
    scale = lam * clip_eps or 1.0
    nrows = max((-(-len(c.tokens) // width) for _, c in credits), default=1)
    fig = Figure(figsize=(5.6 * len(credits) + 1.2, 0.62 * nrows + 1.7 + 0.25 * note.count("\n")),
                 layout="constrained")
    axes = fig.subplots(1, len(credits), squeeze=False)[0]
    for ax, (title, c) in zip(axes, credits):
        ax.set_xlim(0, width)
        ax.set_ylim(nrows, 0)
        ax.axis("off")
        ax.set_title(f"{title}\n(reward {c.reward:.0f}: {'credit' if c.reward > 0 else 'blame'}, λ = {c.lam})",
                     fontsize=9)
        labels = c.labels or [""] * len(c.tokens)
        habit = habit_mask(c) if c.labels else [False] * len(c.tokens)
        for i, (tok, v, role, h) in enumerate(zip(c.tokens, _deviation(c), labels, habit)):
            r, col = divmod(i, width)
            ax.add_patch(Rectangle((col, r), 0.97, 0.92, facecolor=_rgb(v, scale),
                                   edgecolor="0.15" if h else "none", linewidth=1.2, linestyle="--"))
            ax.text(col + 0.48, r + 0.38, tok.strip() or "␣", ha="center", va="center", fontsize=8, family="monospace")
            ax.text(col + 0.48, r + 0.78, "habit" if h else ROLE_TAGS.get(role, ""), ha="center", va="center",
                    fontsize=6, color="0.1")
    cmap = LinearSegmentedColormap.from_list("credit", [_rgb(-scale, scale), (1, 1, 1), _rgb(scale, scale)])
    bar = fig.colorbar(ScalarMappable(Normalize(1 - scale, 1 + scale), cmap), ax=list(axes), shrink=0.8, pad=0.01)
    bar.set_label("token weight / uniform advantage\n(1 ± λε: the clip's range)", fontsize=8)
    fig.suptitle("RLSD token weights. Roles: need = read-out the answer depends on, other = read-out it does not, "
                 "op = operand, res/ans = result/answer;\nhabit (dashed) = the thought's opening token, whose weight "
                 "comes from the teacher format's habit of opening with \"the reference answer is N ,\"", fontsize=8)
    if note:
        fig.supxlabel(note, fontsize=7.5, color="0.25")
    return fig


ROLE_NAMES = {"readout_needed": "needed\nread-outs", "result_answer": "result +\nanswer",
              "readout_unneeded": "unneeded\nread-outs", "operand": "operands", "narration": "narration",
              "habit": "habit\n(opening)"}


def plot_role_credit(summary: dict):
    """Where the moved credit goes, per token role, from `summarise_credit`'s dict: (a) share of tokens vs share of
    the moved credit, (b) mean |Δ| per role, (c) needed - unneeded mean |Δ| in the pinned families beside its
    label-shuffled control. Bars: pooled over checkpoints with 95% bootstrap intervals; dots: each checkpoint."""
    from matplotlib.figure import Figure

    names, roles = summary["checkpoints"], summary["roles"]
    b = summary["bootstrap"]
    markers = dict(zip(names, "osD^vP*X"))
    fig = Figure(figsize=(13, 4.3), layout="constrained")
    ax_share, ax_delta, ax_pin = fig.subplots(1, 3, gridspec_kw={"width_ratios": [3, 3, 1.6]})
    x = np.arange(len(ROLES))

    def dots(ax, xs, per_key, scale=1.0):
        for k, name in enumerate(names):
            ys = [(roles[r][per_key][name] or np.nan) * scale for r in ROLES]
            ax.scatter(xs + (k - (len(names) - 1) / 2) * 0.05, ys, s=12, marker=markers[name], color="0.1",
                       zorder=3, label=name)

    tok = [100 * roles[r]["token_share"] for r in ROLES]
    mov = np.array([100 * roles[r]["moved_share"] for r in ROLES])
    ci = np.array([[100 * v for v in roles[r]["moved_share_ci95"]] for r in ROLES])
    ax_share.bar(x - 0.2, tok, 0.38, color="0.8", label="share of tokens")
    ax_share.bar(x + 0.2, mov, 0.38, color="tab:red", alpha=0.75, label="share of moved credit (95% CI)",
                 yerr=[mov - ci[:, 0], ci[:, 1] - mov], capsize=3)
    dots(ax_share, x + 0.2, "per_checkpoint_moved_share", 100)
    tops = [max([ci[j, 1], mov[j]] + [100 * (v or 0) for v in roles[r]["per_checkpoint_moved_share"].values()])
            for j, r in enumerate(ROLES)]
    for xi, top, m, t in zip(x, tops, mov, tok):
        ax_share.text(xi + 0.2, top + 1.5, f"×{m / t:.1f}" if t else "", ha="center", fontsize=7)
    ax_share.set_xticks(x, [ROLE_NAMES[r] for r in ROLES], fontsize=8)
    ax_share.set_ylabel("% of all tokens / of Σ|clip(w)−1|")
    ax_share.set_title("(a) share of tokens vs share of the credit RLSD moves\n(×: moved share ÷ token share)",
                       fontsize=9)
    ax_share.legend(fontsize=7, loc="upper left")

    md = np.array([roles[r]["mean_abs_delta"] or np.nan for r in ROLES])
    dci = np.array([[v if v is not None else np.nan for v in roles[r]["mean_abs_delta_ci95"]] for r in ROLES])
    ax_delta.bar(x, md, 0.6, color="tab:blue", alpha=0.7, yerr=[md - dci[:, 0], dci[:, 1] - md], capsize=3,
                 label="pooled (95% CI)")
    dots(ax_delta, x, "per_checkpoint_mean_abs_delta")
    ax_delta.set_yscale("log")
    ax_delta.set_ylim(top=30)  # room for the legend above the bars
    ax_delta.set_xticks(x, [ROLE_NAMES[r] for r in ROLES], fontsize=8)
    ax_delta.set_ylabel("mean |Δ_t| per token (nats, log scale)")
    ax_delta.set_title("(b) how far the reference moves the log-probability", fontsize=9)
    ax_delta.legend(fontsize=7, loc="upper left", ncol=3)

    pinned, control = summary.get("pinned", {}), summary.get("pinned_label_shuffle", {})
    fams = list(pinned)
    for k, fam in enumerate(fams):
        for off, block, colour, label in ((-0.15, pinned, "tab:green", "needed − unneeded"),
                                          (0.15, control, "0.6", "same, read-out labels shuffled")):
            if fam not in block:
                continue
            v, (lo, hi) = block[fam]["needed_minus_unneeded_abs_delta"], block[fam]["ci95"]
            ax_pin.errorbar(k + off, v, yerr=[[v - lo], [hi - v]], fmt="s", color=colour, capsize=3,
                            label=label if k == 0 else None)
            if block is pinned:
                for j, name in enumerate(names):
                    ax_pin.scatter(k + off + 0.08, block[fam]["per_checkpoint"][name], s=12, marker=markers[name],
                                   color="0.1", zorder=3)
    ax_pin.axhline(0, color="0.3", lw=0.8)
    ax_pin.set_xticks(range(len(fams)), [f"{f}\n(n={pinned[f]['n']})" for f in fams], fontsize=8)
    ax_pin.set_xlim(-0.6, len(fams) - 0.4)
    ax_pin.set_ylabel("Δ mean |Δ_t|, needed − unneeded (nats)")
    ax_pin.set_title("(c) pinned families\n(dots: checkpoints, as in (a))", fontsize=9)
    ax_pin.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    per_n = summary.get("n_responses_per_checkpoint", {})
    fig.suptitle(f"Token credit by role (λ = {summary.get('lambda', 0.5)}, ε_w = 0.2): {summary['n_responses']} "
                 f"responses from {len(names)} checkpoint(s) ("
                 + ", ".join(f"{n}: {per_n.get(n, '?')}" for n in names) + ")\nbars/squares: checkpoints pooled, "
                 f"95% percentile-bootstrap interval over responses ({b['resamples']} resamples, seed {b['seed']}); "
                 "dots: each checkpoint alone", fontsize=9)
    return fig


# ------------------------------------------------------------------------------------ the self-teacher vs the oracle


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for value in np.unique(x):  # ties share their mean rank
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None with fewer than 3 points or no variation."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return None
    rx, ry = _average_ranks(x), _average_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def teacher_vs_oracle(credits: list[TokenCredit], problems: list[Problem], error: float, resamples: int = 1000,
                      seed: int = 0) -> dict:
    """How the self-teacher's Δ_t compares with the oracle's (rlsd.testbed.oracle_delta: the demonstrator's exact
    evidence) on the same tokens, per token role. Per role: tokens, the teacher's mean Δ, the shares of tokens the
    oracle credits (Δ > 0) and blames (Δ < 0), Spearman's ρ between the two Δs
    with a 95% percentile-bootstrap interval over responses, and -- on the tokens where the oracle has evidence --
    how often the teacher's Δ has the oracle's sign. Labels are set on `credits` if missing."""
    from rlsd.testbed import oracle_delta

    per_role: dict[str, list[tuple[int, float, float]]] = {r: [] for r in ROLES}
    for i, (c, p) in enumerate(zip(credits, problems)):
        if c.labels is None:
            c.labels = label_tokens(p, c.tokens)
        oracle = oracle_delta(p, c.tokens, error)
        for role, d_teacher, d_oracle in zip(token_roles(c), c.delta, oracle):
            per_role[role].append((i, d_teacher, d_oracle))
    rng = np.random.default_rng(seed)
    out = {}
    for role, rows in per_role.items():
        if not rows:
            continue
        resp, teacher, oracle = (np.array(col) for col in zip(*rows))
        evidence = oracle != 0
        rho = spearman(teacher, oracle)
        boot = []
        if rho is not None:
            ids = np.unique(resp)
            index = {r: np.flatnonzero(resp == r) for r in ids}
            for _ in range(resamples):
                pick = np.concatenate([index[r] for r in rng.choice(ids, len(ids))])
                value = spearman(teacher[pick], oracle[pick])
                if value is not None:
                    boot.append(value)
        out[role] = {"tokens": int(len(rows)), "teacher_delta_mean": float(teacher.mean()),
                     "oracle_positive_share": float((oracle > 0).mean()),
                     "oracle_negative_share": float((oracle < 0).mean()),
                     "spearman": rho, "spearman_ci95": [float(np.percentile(boot, 2.5)),
                                                        float(np.percentile(boot, 97.5))] if boot else None,
                     "sign_agreement": float((np.sign(teacher[evidence]) == np.sign(oracle[evidence])).mean())
                     if evidence.any() else None}
    return out
