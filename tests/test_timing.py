"""rlsd.timing: the GPU section's estimate from measured costs, and the sizes shrunk to fit a budget."""

import pytest

from rlsd.timing import Costs, Session, estimate_minutes, fit_session, plan_markdown

T4_LIKE = Costs(step_s=150.0, decode_step_s=0.2, device="a T4-like GPU")  # 2B, 32 x 512 tokens, HF generate


def test_estimate_adds_up_by_hand():
    s = Session(steps=20, eval_problems=200, eval_batch=16, eval_max_new_tokens=512, bench_limit=20,
                bench_batch=8, bench_max_new_tokens=2048)
    e = estimate_minutes(T4_LIKE, s)
    assert e["training"] == pytest.approx(20 * 2 * 150 / 60)
    assert e["evaluation"] == pytest.approx(2 * 2 * 13 * 512 * 0.2 / 60)  # ceil(200 / 16) = 13 calls
    assert e["benchmarks"] == pytest.approx(3 * 5 * 3 * 2048 * 0.2 / 60)  # ceil(20 / 8) = 3 calls per split
    assert e["total"] == pytest.approx(e["training"] + e["evaluation"] + e["benchmarks"])
    with pytest.raises(ValueError, match="positive"):
        estimate_minutes(Costs(step_s=0.0, decode_step_s=0.1), s)


def test_fit_shrinks_steps_then_items_then_budget_until_it_fits():
    asked = Session(steps=20)
    plan = fit_session(T4_LIKE, asked, budget_min=60)
    assert plan["asked_estimate"]["total"] > 60  # the paper-shaped default does not fit a T4 hour ...
    assert plan["fits"] and plan["estimate"]["total"] <= 60  # ... the chosen sizes do
    assert plan["chosen"].steps < asked.steps and plan["changes"][0].startswith("steps per method")
    assert "| total |" in plan_markdown(plan) and "To fit 60 minutes" in plan_markdown(plan)
    fast = fit_session(Costs(step_s=5.0, decode_step_s=0.01), asked, budget_min=60)  # an H100: nothing to shrink
    assert fast["chosen"] == asked and fast["changes"] == [] and fast["fits"]


def test_fit_says_when_even_the_smallest_sizes_do_not_fit():
    plan = fit_session(Costs(step_s=3000.0, decode_step_s=5.0), Session(steps=20), budget_min=60)
    assert not plan["fits"] and plan["chosen"].steps == 2 and plan["chosen"].bench_limit == 2
    assert plan["chosen"].eval_problems == 32
    assert plan["chosen"].bench_max_new_tokens == 512 and "more than the 60-minute budget" in plan_markdown(plan)
