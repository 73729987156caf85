"""The testbed's demonstrator: the careless solutions the warm start imitates, the answer-conditioned solutions its
teacher format imitates, and their exact posterior -- the ORACLE teacher's evidence.

    careless_solution(problem, rng, e)     misreads each colour count by one with probability e; the combination and
                                           the answer follow from the (mis)read counts
    conditioned_solution(problem, rng, e)  the same, conditioned on answering the gold: exact posterior draws
    answer_likelihood(problem, reads, e)   L(S) = P(answer = gold | the read-outs S), the unread colours summed out
    oracle_delta(problem, tokens, e)       per token: the evidence an ideal answer-conditioned teacher has

**The oracle.** RLSD's self-teacher scores a token by Δ_t = log P(y_t | x, a, y_<t) - log P(y_t | x, y_<t): how much
knowing the answer a changes the model's belief in the token. For the demonstrator the model imitates, that quantity
is computable exactly. Its read-outs are independent given the true counts, and everything after them (the
combination, the result, the answer) follows from them, so by Bayes' rule the only tokens with evidence are the
read-out values, and for the read-out of colour c after the read-outs S already written

    Δ_c = log P(r_c = v | r_S, a) - log P(r_c = v | r_S) = log L(S ∪ {c}) - log L(S),   L(S) = P(a | r_S),

with the unread colours' misreadings summed out (at most 3^4 = 81 terms). Δ_c = 0 for a read-out the answer does not
constrain (it cannot change P(a)), > 0 for one that makes the answer more likely, and -∞ (capped at -`DELTA_CAP`,
which RLSD's clip makes equivalent) for one that rules it out. Every other token gets 0: the narration, the
combination and the answer follow deterministically from the read-outs (for the demonstrator, P(y_t | ..., a) =
P(y_t | ...) = 1 there), and once the written read-outs have ruled the answer out (L(S) = 0) nothing further is
evidence. The self-teacher estimates the same Δ with its learnt weights, on whatever the student wrote; the oracle
is what it would give if it had learnt the demonstrator exactly (`TrainConfig.teacher_reference="oracle"`).
"""

from __future__ import annotations

import itertools
import math
import random
import re

from rlsd.testbed.scenes import COLOUR_ORDER, solution_text

DELTA_CAP = 20.0
"""|Δ| cap for read-outs that rule the answer out: exp(-20) is far below any clip RLSD uses (ε_w < 1)."""
_READ_RE = re.compile(r"(red|green|blue|yellow) (\d+)")


def careless_solution(problem, rng: random.Random, error: float) -> tuple[str, str]:
    """(thought, answer) of a demonstrator who misreads each colour count by one with probability `error`.

    The misreading is +1 or -1 with equal odds (a count of 0 read as -1 stays 0), so the true count stays the most
    likely reading for any `error` < 2/3. The solution is self-consistent: the combination and the answer follow
    from the (mis)read counts.
    """
    counts = dict(problem.meta["counts"])
    for colour in COLOUR_ORDER:
        if rng.random() < error:
            counts[colour] = max(0, counts[colour] + (1 if rng.random() < 0.5 else -1))
    return solution_text(problem.meta["family"], counts, problem.meta)


MAX_REJECTION_TRIES = 10_000


def conditioned_solution(problem, rng: random.Random, error: float) -> tuple[str, str, bool]:
    """(thought, answer, exact) of the careless demonstrator conditioned on its answer being the gold answer.

    Rejection sampling: exact draws from the demonstrator's posterior given the answer. The acceptance rate is at
    least (1 - error)^4 (all four read-outs right), so `MAX_REJECTION_TRIES` is never reached for error <= 0.9;
    if it were, the correct solution is returned with exact=False (counted by the caller)."""
    for _ in range(MAX_REJECTION_TRIES):
        thought, answer = careless_solution(problem, rng, error)
        if answer == problem.answer:
            return thought, answer, True
    return problem.solution, problem.answer, False


def readout_distribution(true_count: int, error: float) -> dict[int, float]:
    """P(read-out = v) of the careless demonstrator for a colour with `true_count` squares (`careless_solution`:
    off by one with probability `error`, +1 or -1 with equal odds, a read-out of -1 stays 0)."""
    if true_count == 0:
        return {0: 1.0 - error / 2, 1: error / 2}
    return {true_count - 1: error / 2, true_count: 1.0 - error, true_count + 1: error / 2}


def answer_likelihood(problem, reads: dict[str, int], error: float) -> float:
    """L(S) = P(the demonstrator's answer is the gold | its read-outs of the colours in `reads` are these values):
    the other colours' read-outs are summed out over their misreading distributions."""
    truth, meta = problem.meta["counts"], problem.meta
    free = [c for c in COLOUR_ORDER if c not in reads]
    dists = [readout_distribution(truth[c], error) for c in free]
    total = 0.0
    for values in itertools.product(*(d.items() for d in dists)):
        counts = dict(reads)
        p = 1.0
        for colour, (v, pv) in zip(free, values):
            counts[colour] = v
            p *= pv
        if solution_text(meta["family"], counts, meta)[1] == problem.answer:
            total += p
    return total


def oracle_delta(problem, tokens: list[str], error: float) -> list[float]:
    """The oracle teacher's Δ for each token of a response (the tokens' decoded strings, in order; see the module
    docstring): non-zero only on the value token of each colour's FIRST read-out."""
    text = "".join(tokens)
    starts, pos = [], 0
    for tok in tokens:
        starts.append(pos)
        pos += len(tok)
    delta = [0.0] * len(tokens)
    reads: dict[str, int] = {}
    likelihood = answer_likelihood(problem, reads, error)
    for m in _READ_RE.finditer(text):
        colour = m.group(1)
        if colour in reads:
            continue  # later mentions restate a read-out (e.g. count's "red 3" at the end): no new evidence
        reads[colour] = int(m.group(2))
        new = answer_likelihood(problem, reads, error)
        if likelihood > 0:
            d = -DELTA_CAP if new == 0 else max(-DELTA_CAP, min(DELTA_CAP, math.log(new) - math.log(likelihood)))
            t = next(i for i in range(len(tokens)) if starts[i] <= m.start(2) < starts[i] + len(tokens[i]))
            delta[t] = d
        likelihood = new
    return delta
