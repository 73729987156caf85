"""Token credit (notebook 05's helper): numbers agree with rlsd.algorithm, labels follow the solution grammar."""

import math

import pytest
import torch

from rlsd.credit import DECISIVE, LABELS, TokenCredit, credit_html, credit_shares, label_tokens, plot_credit, \
    token_credit
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
