"""Token credit: what RLSD does to each token of a response, for any checkpoint and any (image, question, response).

For a response y with sequence advantage A, RLSD's token advantage is A·((1-λ) + λ·clip(w_t, 1-ε, 1+ε)) with the
evidence weight w_t = exp(sign(A)·Δ_t), Δ_t = log P_T(y_t) - log P_S(y_t) (rlsd.algorithm). This module scores a
response under the student and the teacher prompt, returns those per-token numbers, labels the tokens of testbed
responses (decisive vs narration), and renders heatmaps like the paper's Figure 6 (PNG via matplotlib, and HTML).

Sign convention for a single response shown out of its group: A = +1 if the verifier accepts it, -1 otherwise (as in
a group with both outcomes). The displayed credit is sign(A)·((1-λ) + λ·clip(w_t)).
"""

from __future__ import annotations

import html
import re
from contextlib import nullcontext
from dataclasses import dataclass

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


# ------------------------------------------------------------------------------------------------- rendering


def _rgb(value: float, scale: float) -> tuple[float, float, float]:
    """Blue for blame (<0), red for credit (>0), white at 0 of the deviation from the uniform share."""
    x = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    if x >= 0:
        return (1.0, 1 - 0.75 * x, 1 - 0.75 * x)
    return (1 + 0.75 * x, 1 + 0.75 * x, 1.0)


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


def plot_credit(credits: list[tuple[str, TokenCredit]], width: int = 10, clip_eps: float = 0.2):
    """A Figure-6-style heatmap, the responses side by side (e.g. a correct and an incorrect one): each token in a
    grid cell coloured by its weight relative to GRPO's uniform advantage, on ONE scale fixed by the clip
    (1 ± λε, so nothing saturates and colours compare across responses), with its role under it, and a colour key."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    lam = max((c.lam for _, c in credits), default=0.5)
    scale = lam * clip_eps or 1.0
    nrows = max((-(-len(c.tokens) // width) for _, c in credits), default=1)
    fig = Figure(figsize=(5.6 * len(credits) + 1.2, 0.62 * nrows + 1.4), layout="constrained")
    axes = fig.subplots(1, len(credits), squeeze=False)[0]
    for ax, (title, c) in zip(axes, credits):
        ax.set_xlim(0, width)
        ax.set_ylim(nrows, 0)
        ax.axis("off")
        ax.set_title(f"{title}\n(reward {c.reward:.0f}: {'credit' if c.reward > 0 else 'blame'}, λ = {c.lam})",
                     fontsize=9)
        labels = c.labels or [""] * len(c.tokens)
        for i, (tok, v, role) in enumerate(zip(c.tokens, _deviation(c), labels)):
            r, col = divmod(i, width)
            ax.add_patch(Rectangle((col, r), 0.97, 0.92, color=_rgb(v, scale)))
            ax.text(col + 0.48, r + 0.38, tok.strip() or "␣", ha="center", va="center", fontsize=8, family="monospace")
            ax.text(col + 0.48, r + 0.78, ROLE_TAGS.get(role, ""), ha="center", va="center", fontsize=5.5,
                    color="0.35")
    cmap = LinearSegmentedColormap.from_list("credit", [_rgb(-scale, scale), (1, 1, 1), _rgb(scale, scale)])
    bar = fig.colorbar(ScalarMappable(Normalize(1 - scale, 1 + scale), cmap), ax=list(axes), shrink=0.8, pad=0.01)
    bar.set_label("token weight / uniform advantage", fontsize=8)
    fig.suptitle("RLSD token weights (roles: need = read-out the answer depends on, other = read-out it does not, "
                 "op/res = operands/result, ans = answer)", fontsize=8)
    return fig
