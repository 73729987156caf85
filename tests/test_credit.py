"""Token credit (notebook 05's helper): numbers agree with rlsd.algorithm, labels follow the solution grammar."""

import math
import random

import numpy as np
import pytest
import torch

from rlsd.credit import DECISIVE, LABELS, ROLES, TokenCredit, bootstrap_ci, credit_html, credit_shares, habit_mask, \
    has_habit, label_tokens, needed_minus_unneeded, pick_examples, plot_credit, plot_role_credit, role_statistics, \
    role_totals, shuffle_readout_labels, summarise_credit, token_credit, token_roles
from rlsd.data import Problem
from rlsd.testbed import generate_split
from rlsd.tiny import build_processor, build_tiny_model


@pytest.fixture(scope="module")
def setup():
    processor = build_processor()
    model = build_tiny_model(processor.tokenizer, seed=0)
    problems = generate_split("test", 8)
    return model, processor, problems


def _response(p, answer=None):
    return f"<thought>{p.solution}</thought><answer>{answer or p.answer}</answer>"


def test_token_credit_matches_the_formula(setup):
    model, processor, problems = setup
    p = problems[1]
    c = token_credit(model, processor, p, _response(p), lam=0.5)
    assert c.reward == 1.0
    assert len(c.tokens) == len(c.delta) == len(c.weight) == len(c.credit)
    assert "".join(c.tokens[:-1]) == _response(p) and c.tokens[-1] == "⏎"
    for d, w, a in zip(c.delta, c.weight, c.credit):
        assert math.isclose(w, math.exp(d), rel_tol=1e-4)  # A > 0: w = exp(+Δ)
        assert math.isclose(a, 0.5 + 0.5 * min(max(w, 0.8), 1.2), rel_tol=1e-5)
    assert any(abs(d) > 1e-4 for d in c.delta)  # the reference in the teacher prompt changes the scores

    wrong = token_credit(model, processor, p, _response(p, answer="99"), lam=0.5)
    assert wrong.reward == 0.0
    assert all(a < 0 for a in wrong.credit)  # the reward decides the direction of every token
    for d, w in zip(wrong.delta, wrong.weight):
        assert math.isclose(w, math.exp(-d), rel_tol=1e-4)  # A < 0: w = exp(-Δ)
    lam0 = token_credit(model, processor, p, _response(p), lam=0.0)
    assert all(a == pytest.approx(1.0) for a in lam0.credit)  # λ = 0 is GRPO: uniform credit


def test_label_tokens_follow_the_solution_grammar(setup):
    _, processor, problems = setup
    tok = processor.tokenizer
    by_family = {p.meta["family"]: p for p in problems}
    p = by_family["sum"]
    text = _response(p)
    tokens = [tok.decode([i]) for i in tok(text, add_special_tokens=False)["input_ids"]]
    labels = label_tokens(p, tokens)
    assert set(labels) <= set(LABELS)
    a, b = (p.meta["colours"])
    pairs = list(zip(tokens, labels))
    assert labels.count("relevant_readout") == 2 and labels.count("other_readout") == 2
    assert labels.count("operand") == 2 and labels.count("result") == 1 and labels.count("answer") == 1
    assert pairs[tokens.index("<thought>")][1] == "narration"
    assert all(lab == "narration" for t, lab in pairs if t.strip() in ("red", "green", "blue", "yellow", ",", "plus",
                                                                          "minus", "="))

    q = by_family["most"]
    tokens = [tok.decode([i]) for i in tok(_response(q), add_special_tokens=False)["input_ids"]]
    labels = label_tokens(q, tokens)
    assert labels.count("relevant_readout") == 4 and labels.count("result") == 2  # colour + option letter
    mention = "<thought>the reference answer is 7 , red 1 , green 2 , blue 3 , yellow 4 , 1 plus 3 = 4</thought>"
    tokens = [tok.decode([i]) for i in tok(mention, add_special_tokens=False)["input_ids"]]
    assert "reference_mention" in label_tokens(p, tokens)


def test_credit_shares_and_rendering(setup, tmp_path):
    model, processor, problems = setup
    tok = processor.tokenizer
    credits = []
    for p in problems:
        c = token_credit(model, processor, p, _response(p))
        c.labels = label_tokens(p, c.tokens)
        credits.append(c)
    shares = credit_shares(credits)
    assert sum(v["token_share"] for v in shares.values()) == pytest.approx(1.0)
    assert sum(v["credit_moved_share"] for v in shares.values()) == pytest.approx(1.0)
    assert set(DECISIVE) <= set(shares)
    html = credit_html(credits[0], "example")
    assert html.count("<span") == len(credits[0].tokens) and "example" in html
    fig = plot_credit([("correct", credits[0]), ("another", credits[1])])
    fig.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_credit_shares_hand_built():
    c = TokenCredit(tokens=["a", "b", "c", "d"], delta=[0.0, 1.0, -1.0, 0.0], weight=[1.0, 1.5, 1.0, 0.5],
                    credit=[1, 1, 1, 1], reward=1.0, lam=0.5, labels=["narration", "result", "answer", "narration"])
    shares = credit_shares([c])
    # moved: |clip(w) - 1| = 0, 0.2, 0, 0.2 -> result 0.5, narration 0.5
    assert shares["result"]["credit_moved_share"] == pytest.approx(0.5)
    assert shares["narration"]["credit_moved_share"] == pytest.approx(0.5)
    assert shares["narration"]["token_share"] == pytest.approx(0.5)
    assert shares["answer"]["mean_abs_delta"] == pytest.approx(1.0)
    assert shares["operand"]["mean_abs_delta"] is None


# ------------------------------------------------------------------------ roles, habit, bootstrap intervals

def _synthetic(needed_delta: float, n: int, seed: int, family: str = "count", habit: bool = False,
               reward: float = 1.0) -> list[TokenCredit]:
    """n hand-built responses: <thought> red(opening) N , green U ... with |Δ| ~ needed_delta on the needed read-out
    and ~0.1 on the unneeded one (noise sd 0.05), 0 on narration."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if habit:
            tokens = ["<thought>", "the", " reference", " answer", " is", " 3", " ,", " red", " 3", "</thought>"]
            labels = ["narration"] + ["reference_mention"] * 6 + ["narration", "relevant_readout", "narration"]
            delta = [0.0, 0.5, 0.1, 0.1, 0.1, 0.3, 0.1, 0.0, needed_delta, 0.0]
        else:
            tokens = ["<thought>", "red", " 3", " ,", " green", " 2", "</thought>", "<answer>", "3", "</answer>"]
            labels = ["narration", "narration", "relevant_readout", "narration", "narration", "other_readout",
                      "narration", "narration", "answer", "narration"]
            delta = [0.0, -0.22, needed_delta + rng.gauss(0, 0.05), 0.0, 0.0, 0.1 + rng.gauss(0, 0.05), 0.0, 0.0,
                     0.01, 0.0]
        sign = 1.0 if reward > 0 else -1.0
        weight = [math.exp(sign * d) for d in delta]
        out.append(TokenCredit(tokens=tokens, delta=delta, weight=weight, credit=[sign] * len(tokens),
                               reward=reward, lam=0.5, labels=labels))
    return out


def _totals(credits, checkpoints=None, family="count"):
    checkpoints = checkpoints or ["a"] * len(credits)
    return role_totals(credits, [family] * len(credits), checkpoints)


def test_role_split_partitions_every_token():
    credits = _synthetic(0.3, 5, seed=0) + _synthetic(0.3, 2, seed=1, habit=True)
    t = _totals(credits)
    assert t.tokens_NR.sum() == sum(len(c.tokens) for c in credits)  # every token has exactly one role
    point = role_statistics(t, np.arange(len(credits)))
    assert point[0].sum() == pytest.approx(1.0) and point[1].sum() == pytest.approx(1.0)
    roles = dict(zip(ROLES, t.tokens_NR.sum(0)))
    # 5 plain responses: one opening habit token each; 2 mention responses: 6 mention tokens each (their opening
    # token is the mention's first token, already habit)
    assert roles["habit"] == 5 + 2 * 6
    assert roles["readout_needed"] == 7 and roles["readout_unneeded"] == 5 and roles["result_answer"] == 5
    assert "habit" not in [r for c in _synthetic(0.3, 1, 0) for r, lab in zip(token_roles(c), c.labels)
                           if lab != "narration"]
    summary = summarise_credit(t, resamples=50, seed=0)
    assert sum(r["token_share"] for r in summary["roles"].values()) == pytest.approx(1.0)
    assert sum(r["moved_share"] for r in summary["roles"].values()) == pytest.approx(1.0)
    assert summary["habit"]["responses_with_habit"] == 2 and summary["habit"]["responses"] == 7
    # moved credit per habit token: clip(exp(±0.22)) and the mention tokens' |clip(exp(Δ)) - 1|
    assert summary["habit"]["mean_weight_on_habit_tokens"] > summary["habit"]["mean_weight_on_all_tokens"]


def test_habit_mask_marks_the_opening_token_and_the_mention(setup):
    _, processor, problems = setup
    tok = processor.tokenizer
    p = problems[0]
    text = "<thought>the reference answer is 7 , red 1 , green 2</thought><answer>7</answer>"
    tokens = [tok.decode([i]) for i in tok(text, add_special_tokens=False)["input_ids"]]
    c = TokenCredit(tokens=tokens, delta=[0.0] * len(tokens), weight=[1.0] * len(tokens), credit=[1.0] * len(tokens),
                    reward=1.0, lam=0.5, labels=label_tokens(p, tokens))
    assert has_habit(c)
    mask = habit_mask(c)
    assert "".join(t for t, m in zip(tokens, mask) if m).strip() == "the reference answer is 7 ,"
    plain = _response(p)
    tokens = [tok.decode([i]) for i in tok(plain, add_special_tokens=False)["input_ids"]]
    c = TokenCredit(tokens=tokens, delta=[0.0] * len(tokens), weight=[1.0] * len(tokens), credit=[1.0] * len(tokens),
                    reward=1.0, lam=0.5, labels=label_tokens(p, tokens))
    assert not has_habit(c)
    assert [t for t, m in zip(tokens, habit_mask(c)) if m] == [tokens[1]] and tokens[0] == "<thought>"


def test_bootstrap_interval_covers_the_estimate_and_shrinks_with_n():
    def ci_of(n):
        t = _totals(_synthetic(0.3, n, seed=n))
        point = needed_minus_unneeded(t, np.arange(n))[0]
        lo, hi = bootstrap_ci(lambda idx: needed_minus_unneeded(t, idx)[:1], [np.arange(n)], 500, seed=0)
        return point, lo[0], hi[0]

    small, large = ci_of(20), ci_of(500)
    for point, lo, hi in (small, large):
        assert lo <= point <= hi
        assert lo > 0  # the needed read-outs really carry more |Δ| (0.3 vs 0.1)
    assert (large[2] - large[1]) < 0.5 * (small[2] - small[1])  # ~1/sqrt(n): 25x the data, ~1/5 the width
    # a fixed seed gives the same interval; another seed a different one
    t = _totals(_synthetic(0.3, 30, seed=3))
    a = bootstrap_ci(lambda idx: needed_minus_unneeded(t, idx)[:1], [np.arange(30)], 200, seed=0)
    b = bootstrap_ci(lambda idx: needed_minus_unneeded(t, idx)[:1], [np.arange(30)], 200, seed=0)
    c = bootstrap_ci(lambda idx: needed_minus_unneeded(t, idx)[:1], [np.arange(30)], 200, seed=1)
    assert a[0][0] == b[0][0] and a[0][0] != c[0][0]
    with pytest.raises(ValueError, match="non-empty strata"):
        bootstrap_ci(lambda idx: idx[:1], [np.arange(0)], 10)


def test_shuffled_labels_give_an_interval_that_includes_zero():
    credits = _synthetic(0.3, 300, seed=0) + _synthetic(0.3, 300, seed=1)
    names = ["a"] * 300 + ["b"] * 300
    rng = random.Random(0)
    summary = summarise_credit(_totals(credits, names), resamples=500, seed=0,
                               shuffled=_totals([shuffle_readout_labels(c, rng) for c in credits], names))
    real, control = summary["pinned"]["count"], summary["pinned_label_shuffle"]["count"]
    assert real["ci95"][0] > 0.1  # 0.3 - 0.1 = 0.2 nats
    assert set(real["per_checkpoint"]) == {"a", "b"} and all(v > 0.1 for v in real["per_checkpoint"].values())
    assert control["ci95"][0] < 0 < control["ci95"][1]  # the negative control: no difference left
    assert real["needed"] == pytest.approx(0.3, abs=0.02) and real["unneeded"] == pytest.approx(0.1, abs=0.02)
    # and no difference at all when there is none to find
    flat = summarise_credit(_totals(_synthetic(0.1, 300, seed=2)), resamples=500, seed=0)
    assert flat["pinned"]["count"]["ci95"][0] < 0 < flat["pinned"]["count"]["ci95"][1]


def test_summary_has_the_keys_the_claims_read():
    credits = _synthetic(0.3, 10, seed=0) + _synthetic(0.3, 10, seed=1, reward=0.0)
    names = ["warm start"] * 10 + ["grpo-s0"] * 10
    t = role_totals(credits, ["count"] * 10 + ["pair"] * 10, names)
    s = summarise_credit(t, resamples=20, seed=3)
    assert s["checkpoints"] == ["warm start", "grpo-s0"] and s["n_responses"] == 20
    assert s["bootstrap"]["resamples"] == 20 and s["bootstrap"]["seed"] == 3
    for role in ("readout_needed", "result_answer", "readout_unneeded", "narration", "habit"):
        r = s["roles"][role]
        assert set(r) >= {"token_share", "moved_share", "moved_share_ci95", "per_checkpoint_moved_share",
                          "mean_abs_delta", "mean_abs_delta_ci95", "per_checkpoint_mean_abs_delta"}
        assert list(r["per_checkpoint_moved_share"]) == names[::10]
    # each pinned family is judged on its own responses: count only in "warm start", pair only in "grpo-s0"
    assert s["pinned"] == {}  # neither family is present in every checkpoint: no pooled claim is made
    t = role_totals(credits, ["count", "pair"] * 10, names)
    s = summarise_credit(t, resamples=20, seed=3)
    assert set(s["pinned"]) == {"count", "pair"} and s["pinned"]["count"]["n"] == 10
    fams = s["per_family_roles"]
    assert set(fams) == {"count", "pair"} and fams["count"]["n"] == 10
    assert sum(fams["pair"][r]["token_share"] for r in ROLES) == pytest.approx(1.0)
    assert set(s["pinned"]["pair"]) >= {"needed_minus_unneeded_abs_delta", "ci95", "per_checkpoint", "needed",
                                        "unneeded"}
    with pytest.raises(ValueError, match="no labels"):
        token_roles(TokenCredit(tokens=["a"], delta=[0.0], weight=[1.0], credit=[1.0], reward=1.0, lam=0.5))
    with pytest.raises(ValueError, match="one of each per response"):
        role_totals(credits, ["count"], names)


def _problem(pid, family="count"):
    return Problem(id=pid, question="q", answer="3", images=[], meta={"family": family})


def test_examples_follow_the_rule_and_never_show_the_habit():
    plain = _synthetic(0.3, 5, seed=0)
    for k, c in enumerate(plain):  # mean |Δ| rises with k: the median (k = 2) is the chosen one
        c.delta = [d + 0.01 * k for d in c.delta]
    wrong = _synthetic(0.3, 2, seed=1, reward=0.0)
    habit = _synthetic(0.3, 4, seed=2, habit=True)  # larger |Δ| throughout: they would be the median if kept
    habit_wrong = _synthetic(0.3, 3, seed=3, habit=True, reward=0.0)
    credits = plain + wrong + habit + habit_wrong
    problems = [_problem(f"p{i}") for i in range(len(credits))]
    chosen = pick_examples(problems, credits, family="count")
    assert [e["correct"] for e in chosen] == [True, False]
    assert chosen[0]["credit"] is plain[2] and chosen[0]["pool"] == 5
    assert chosen[1]["pool"] == 2 and chosen[1]["credit"] in wrong  # the lower median of two
    assert all(not has_habit(e["credit"]) for e in chosen)
    # negative case: with only habit responses there is nothing to show, rather than a habit example
    assert pick_examples(problems[7:], habit + habit_wrong, family="count") == []
    assert "median" in chosen[0]["rule"] and "5 correct" in chosen[0]["rule"]


def test_role_figure_renders(tmp_path):
    credits = _synthetic(0.3, 20, seed=0) + _synthetic(0.3, 20, seed=1, reward=0.0)
    t = role_totals(credits, ["count", "pair"] * 20, ["warm start"] * 20 + ["grpo-s0"] * 20)
    fig = plot_role_credit(summarise_credit(t, resamples=20, seed=0))
    fig.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_spearman_and_teacher_vs_oracle_agreement():
    from rlsd.credit import TokenCredit, spearman, teacher_vs_oracle
    from rlsd.testbed import generate_split, oracle_delta, solution_text

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [1, 2]) is None
    problems = [p for p in generate_split("test", 200) if p.meta["family"] in ("count", "sum")][:20]
    credits, rng = [], np.random.default_rng(0)
    for i, p in enumerate(problems):
        counts = dict(p.meta["counts"])
        if i % 2:  # every other response misreads a needed colour
            c = p.meta.get("colour") or p.meta["colours"][0]
            counts[c] += 1
        thought, answer = solution_text(p.meta["family"], counts, p.meta)
        words = f"<thought>{thought}</thought><answer>{answer}</answer>".split(" ")
        tokens = [words[0]] + [" " + w for w in words[1:]]
        credits.append(TokenCredit(tokens=tokens, delta=[], weight=[], credit=[], reward=0.0, lam=0.5))
    for sign in (+1, -1):  # a teacher that agrees with the oracle, and one that contradicts it (negative control)
        for c, p in zip(credits, problems):
            c.delta = [sign * d + 0.01 * rng.standard_normal() for d in oracle_delta(p, c.tokens, 0.5)]
            c.labels = None
        got = teacher_vs_oracle(credits, problems, 0.5, resamples=200)["readout_needed"]
        assert got["tokens"] > 20 and got["oracle_positive_share"] > 0 and got["oracle_negative_share"] > 0
        assert got["sign_agreement"] == (1.0 if sign > 0 else 0.0)
        assert sign * got["spearman"] > 0.5 and got["spearman_ci95"][0] <= got["spearman"] <= got["spearman_ci95"][1]
