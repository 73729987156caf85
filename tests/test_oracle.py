"""The oracle teacher (rlsd.testbed.demonstrator): its evidence is the demonstrator's exact posterior, checked against
the rejection sampler the warm start's teacher targets are drawn with; and the trainer's oracle control uses it."""

import math
import random
from collections import Counter

import pytest

from rlsd.config import make_config
from rlsd.testbed import (DELTA_CAP, answer_likelihood, careless_solution, conditioned_solution, generate_split,
                          oracle_delta, readout_distribution, solution_text)

E_DEMO = 0.5


def tokens_of(text: str) -> list[str]:
    """Word-level tokens with their leading space, as the tiny tokenizer splits a testbed response."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def problem_of(family: str, n: int = 400):
    """A problem of `family` with no empty colour whose question needs red (the first read-out written)."""
    return next(p for p in generate_split("test", n) if p.meta["family"] == family
                and min(p.meta["counts"].values()) > 0 and "red" in p.meta.get("colours", ("red",)))


def test_answer_likelihood_matches_the_demonstrators_frequency():
    """L(∅) = P(careless answer = gold), exactly: compared with 20,000 draws of the demonstrator."""
    rng = random.Random(0)
    for family in ("count", "pair", "sum", "diff", "most"):
        p = problem_of(family)
        hits = sum(careless_solution(p, rng, E_DEMO)[1] == p.answer for _ in range(20_000)) / 20_000
        exact = answer_likelihood(p, {}, E_DEMO)
        assert abs(hits - exact) < 4 * math.sqrt(exact * (1 - exact) / 20_000) + 1e-9, family
    assert sum(readout_distribution(0, E_DEMO).values()) == sum(readout_distribution(3, E_DEMO).values()) == 1.0


@pytest.mark.parametrize("family", ["sum", "most"])
def test_oracle_delta_is_the_log_ratio_of_posterior_to_prior(family):
    """exp(Δ) of the first read-out = P(read-out | answer) / P(read-out): the posterior from 4,000 exact posterior
    draws (conditioned_solution) against the prior it implies. A wrong error rate in the oracle fails it."""
    p = problem_of(family)
    first = "red"
    rng = random.Random(1)
    drawn = Counter(int(conditioned_solution(p, rng, E_DEMO)[0].split(" , ")[0].split()[1]) for _ in range(4000))
    prior = readout_distribution(p.meta["counts"][first], E_DEMO)
    for value, prob in prior.items():
        reads = dict(p.meta["counts"], **{first: value})
        thought, answer = solution_text(family, reads, p.meta)
        toks = tokens_of(f"<thought>{thought}</thought><answer>{answer}</answer>")
        delta = oracle_delta(p, toks, E_DEMO)
        value_token = next(i for i, t in enumerate(toks) if t == f" {value}")
        post = drawn[value] / 4000
        if post == 0:
            assert delta[value_token] == -DELTA_CAP or delta[value_token] < math.log(0.01)
            continue
        assert abs(math.exp(delta[value_token]) * prob - post) < 0.04, (value, post, prob)
        # negative control: the oracle of a demonstrator with another error rate does not match these draws
        wrong = readout_distribution(p.meta["counts"][first], 0.2).get(value, 0.0)
        assert abs(math.exp(oracle_delta(p, toks, 0.2)[value_token]) * wrong - post) > 0.04


def test_oracle_puts_evidence_on_the_needed_read_out_only():
    """count: the asked colour's correct read-out gets -log(1 - e) (the answer pins it), a wrong one the cap; the
    colours the question does not need, the result, the answer and the narration get exactly 0."""
    p = problem_of("count")
    asked, truth = p.meta["colour"], p.meta["counts"]
    thought, answer = solution_text("count", truth, p.meta)
    toks = tokens_of(f"<thought>{thought}</thought><answer>{answer}</answer>")
    delta = oracle_delta(p, toks, E_DEMO)
    nonzero = [(toks[i], d) for i, d in enumerate(delta) if d != 0]
    assert nonzero == [(f" {truth[asked]}", pytest.approx(-math.log(1 - E_DEMO)))]
    misread = dict(truth, **{asked: truth[asked] + 1})
    bad_thought, bad_answer = solution_text("count", misread, p.meta)
    bad = oracle_delta(p, tokens_of(f"<thought>{bad_thought}</thought><answer>{bad_answer}</answer>"), E_DEMO)
    assert sorted(d for d in bad if d != 0) == [-DELTA_CAP]
    # a response that restates nothing has no evidence; the habit's tokens carry none either
    assert set(oracle_delta(p, tokens_of("<thought>the reference answer is 3 ,</thought>"), E_DEMO)) == {0.0}


def test_oracle_control_is_refused_where_it_has_no_meaning(tmp_path):
    with pytest.raises(ValueError, match="teacher_reference"):
        make_config("smoke", ["teacher_reference=oracle"], method="grpo")
    with pytest.raises(ValueError, match="teacher_reference"):
        make_config("smoke", ["teacher_reference=oracle", f"data={tmp_path / 'rows.jsonl'}"], method="rlsd")
    with pytest.raises(ValueError, match="oracle_demo_error"):
        make_config("smoke", ["teacher_reference=oracle", "oracle_demo_error=0.7"], method="rlsd")
    assert make_config("smoke", ["teacher_reference=oracle"], method="rlsd").teacher_reference == "oracle"


def test_oracle_demo_error_is_the_shipped_warm_starts():
    import json
    from pathlib import Path

    shipped = json.loads((Path(__file__).resolve().parents[1] / "data" / "tiny-sft" / "sft_config.json").read_text())
    assert make_config("cpu", method="rlsd").oracle_demo_error == shipped["demo_error"]
