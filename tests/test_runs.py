"""The run-log analysis helpers used by notebooks 02 and 03, on small synthetic logs (no training)."""

import math

import pytest

from rlsd import runs as R
from rlsd.reproduce import notebook_logs


def fake_run(evals, metrics=(), samples=()):
    """evals: [(step, {key: value})] -> one seed's logs."""
    return {"eval": [{"step": s, **v} for s, v in evals],
            "metrics": [{"step": s, **v} for s, v in metrics],
            "samples": list(samples)}


@pytest.fixture
def runs():
    return {
        "grpo": {0: fake_run([(10, {"accuracy": 0.40, "leak_rate": 0.0}), (20, {"accuracy": 0.50, "leak_rate": 0.0})]),
                 1: fake_run([(10, {"accuracy": 0.44, "leak_rate": 0.0}), (20, {"accuracy": 0.52, "leak_rate": 0.01})]),
                 2: fake_run([(10, {"accuracy": 0.42, "leak_rate": 0.0}), (20, {"accuracy": 0.48, "leak_rate": 0.0})])},
        "opsd": {0: fake_run([(10, {"accuracy": 0.55, "leak_rate": 0.1}), (20, {"accuracy": 0.30, "leak_rate": 0.3})]),
                 1: fake_run([(10, {"accuracy": 0.50, "leak_rate": 0.2}), (20, {"accuracy": 0.35, "leak_rate": 0.4})])},
    }


def test_with_base_eval_prepends_step0_once(runs):
    base = {"accuracy": 0.3, "leak_rate": 0.0, "n": 300}
    out = R.with_base_eval(runs, base)
    ev = out["opsd"][1]["eval"]
    assert [r["step"] for r in ev] == [0, 10, 20]
    assert ev[0]["accuracy"] == 0.3 and ev[0]["from_base"] and ev[0]["seed"] == 1 and ev[0]["method"] == "opsd"
    assert [r["step"] for r in runs["opsd"][1]["eval"]] == [10, 20]  # input untouched
    again = R.with_base_eval(out, base)
    assert [r["step"] for r in again["opsd"][1]["eval"]] == [0, 10, 20]
    assert R.with_base_eval(runs, None)["grpo"][0]["eval"] == runs["grpo"][0]["eval"]
    assert R.with_base_eval({"rlsd": {0: fake_run([])}}, base)["rlsd"][0]["eval"] == []  # no eval yet: no "final"


def test_spearman_ranks_ties_and_degenerate_cases():
    assert R.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert R.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert R.spearman([1, 2, 3, 4], [1, 9, 100, 1000]) == pytest.approx(1.0)  # monotone, not linear
    # ties get average ranks: y ranks (1.5, 1.5, 3, 4) against x ranks (1, 2, 3, 4)
    assert R.spearman([1, 2, 3, 4], [0, 0, 1, 2]) == pytest.approx(0.9486833, abs=1e-6)
    assert math.isnan(R.spearman([1, 2, 3], [5, 5, 5]))
    assert math.isnan(R.spearman([1, 2], [1, 2]))
    with pytest.raises(ValueError):
        R.spearman([1, 2, 3], [1, 2])


def test_trend_window_and_run_means():
    per_seed = {0: fake_run([(0, {"leak_rate": 0.0}), (5, {"leak_rate": 0.1}), (9, {"leak_rate": 0.3})],
                            metrics=[(s, {"entropy": float(s)}) for s in range(1, 11)])}
    assert R.trend(per_seed, "leak_rate") == [pytest.approx(1.0)]
    assert R.window_mean(per_seed, "entropy", frac=0.2) == [pytest.approx(9.5)]  # last 2 of 10
    assert R.window_mean(per_seed, "entropy", frac=0.01) == [pytest.approx(10.0)]  # at least one record
    assert R.window_mean(per_seed, "entropy", frac=0.2, first=True) == [pytest.approx(1.5)]
    assert R.run_mean(per_seed, "entropy") == [pytest.approx(5.5)]


def test_exceeds_uses_pooled_sample_std():
    a, b = [0.5, 0.7], [0.1, 0.1, 0.1]
    res = R.exceeds(a, b, spreads=2.0)
    assert res["diff"] == pytest.approx(0.5)
    assert res["pooled_std"] == pytest.approx(math.sqrt(0.02 / 2))  # var(a) = 0.02, var(b) = 0
    assert res["holds"] is True
    assert R.exceeds([0.5, 0.7], [0.4, 0.4], spreads=2.0)["holds"] is False
    assert R.exceeds([], b)["holds"] is None


def test_peak_and_final(runs):
    pf = R.peak_and_final(runs["opsd"])
    assert pf["peak_step"] == 10 and pf["peak"] == pytest.approx(0.525)
    assert pf["final_step"] == 20 and pf["final"] == pytest.approx(0.325)
    assert pf["final_std"] == pytest.approx(0.0353553, abs=1e-6) and pf["n"] == 2
    assert R.peak_and_final({0: fake_run([])}) == {}


def test_steps_to_threshold_table(runs):
    rows = {r["method"]: r for r in R.steps_to_threshold_table(runs, threshold=0.5)}
    assert rows["grpo"]["seeds"] == {0: 20, 1: 20, 2: None}
    assert rows["grpo"]["reached"] == 2 and rows["grpo"]["median_steps"] == 20
    assert rows["opsd"]["seeds"] == {0: 10, 1: 10} and rows["opsd"]["median_steps"] == 10
    never = R.steps_to_threshold_table(runs, threshold=0.9, methods=["grpo", "missing"])
    assert len(never) == 1 and never[0]["median_steps"] is None and never[0]["reached"] == 0


def test_leak_examples_pairs_the_same_problem():
    def sample(step, pid, text):
        return {"step": step, "id": pid, "question": "q", "answer": "3", "response": text, "reward": 0.0}

    runs = {
        "opsd": {0: fake_run([], samples=[sample(10, "p1", "the reference answer is 3 , red 3"),
                                          sample(20, "p1", "the reference answer is 3 , red 2"),
                                          sample(20, "p2", "red 1"),
                                          sample(20, "p3", "Reference: 4")])},
        "grpo": {0: fake_run([], samples=[sample(10, "p1", "red 3"), sample(20, "p1", "red 4")])},
    }
    picked = R.leak_examples(runs, ["opsd"], clean_methods=["grpo"], k=5)
    assert [(p["id"], p["step"]) for p in picked] == [("p1", 20), ("p3", 20)]  # latest first, one per problem
    assert picked[0]["clean"]["method"] == "grpo" and picked[0]["clean"]["step"] == 20
    assert picked[0]["clean"]["response"] == "red 4"
    assert picked[1]["clean"] is None
    assert len(R.leak_examples(runs, ["opsd"], k=1)) == 1
    assert R.leak_examples(runs, ["grpo"]) == []
    assert R.sample_rate(runs, "opsd", lambda r: "reference" in r.lower()) == (3, 4)


def test_format_verdict_and_markdown():
    assert R.format_spread([0.5, 0.7]) == "60.0 ± 14.1 [50.0–70.0] (n=2)"
    assert R.format_spread([]) == "n/a"
    assert R.format_spread(R.mean_spread([0.25]), digits=0) == "25 ± 0 [25–25] (n=1)"
    assert R.verdict(True, 3) == "yes" and R.verdict(False, 5) == "no"
    assert R.verdict(True, 1).startswith("undetermined") and R.verdict(None, 3).startswith("undetermined")
    table = R.markdown_table([{"a": 1, "b": "x|y"}, {"a": 2}], ["a", "b"])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |", "| 2 |  |"]
    assert R.markdown_table([]) == "(no rows)"


def test_notebook_logs_never_trains_outside_smoke(tmp_path, capsys):
    assert notebook_logs("cpu", ("grpo",), root=tmp_path) is None
    assert "python -m rlsd reproduce --profile cpu" in capsys.readouterr().out
    run = tmp_path / "data" / "runs" / "cpu" / "grpo-s0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert notebook_logs("cpu", ("grpo",), root=tmp_path) == tmp_path / "data" / "runs" / "cpu"
    assert "has not finished" in capsys.readouterr().out
    assert notebook_logs("smoke", ("grpo",), root=tmp_path) is None  # no warm start there: skipped, not trained
    assert "python -m rlsd sft" in capsys.readouterr().out


def test_response_flags_on_a_testbed_problem():
    from rlsd.testbed import load_splits

    problem = load_splits(n_train=0, n_val=None, n_test=1)[2][0]
    assert problem.meta["family"] == "count"
    colour = problem.meta["colour"]
    own = R.response_flags(problem, f"<thought>{colour} 2 , red 1</thought><answer>2</answer>")
    assert own == {"leak": False, "answer": "2", "supported": "2", "unsupported": False}
    copied = R.response_flags(problem, f"<thought>the reference answer is 0 , {colour} 2</thought><answer>0</answer>")
    assert copied["leak"] and copied["unsupported"] and copied["supported"] == "2"
    assert R.response_flags(problem, "no answer")["unsupported"] is False


def test_panels_smooth_measurements_but_draw_schedules_exactly():
    from rlsd.plots import plot_panels

    lam = [max(0.0, 0.5 * (1 - s / 5)) for s in range(10)]
    noisy = [float(s % 2) for s in range(10)]
    metrics = [(s, {"lambda": lam[s], "reward_mean": noisy[s]}) for s in range(10)]
    runs = {"rlsd": {0: fake_run([], metrics)}}
    fig = plot_panels(runs, [("metrics", "lambda", "λ"), ("metrics", "reward_mean", "reward")], smooth=4, ncols=2)
    lam_line, reward_line = (ax.get_lines()[0] for ax in fig.axes[:2])
    assert list(lam_line.get_ydata()) == pytest.approx(lam)  # the schedule, as set
    assert max(reward_line.get_ydata()) < 1.0  # the 0/1 alternation is averaged
