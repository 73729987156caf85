"""The main job end to end under the smoke profile (shipped warm start), and the bench command."""

import json
from pathlib import Path

import pytest

from rlsd.config import SHIPPED_TINY

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / SHIPPED_TINY / "model.safetensors").exists(),
                                reason="the shipped warm start data/tiny-sft is missing")


def test_reproduce_smoke_writes_logs_table_and_figures(tmp_path, monkeypatch):
    from rlsd.reproduce import reproduce

    monkeypatch.chdir(ROOT)  # the profiles point at data/tiny-sft relative to the repository
    summary = reproduce("smoke", seeds=(0,), methods=("grpo", "rlsd", "opsd_online"), runs_dir=str(tmp_path / "runs"),
                        logs_dir=str(tmp_path / "logs"), figures_dir=str(tmp_path / "figs"))
    table = summary["table"]
    assert {"base", "grpo", "rlsd", "opsd_online"} <= set(table)
    assert 0 <= table["base"]["accuracy"] <= 1 and 0 <= table["base"]["blank"] <= 1
    for name in ("grpo", "rlsd", "opsd_online"):
        assert table[name]["final"]["n"] == 1 and table[name]["n_seeds"] == 1
        assert 0 <= table[name]["auc"]["mean"] <= 1
        logs = tmp_path / "logs" / f"{name}-s0"
        assert {p.name for p in logs.iterdir()} >= {"config.json", "metrics.jsonl", "eval.jsonl"}
        assert not (logs / "checkpoint").exists()  # only small logs are kept beside the figures
    cfg = json.loads((tmp_path / "logs" / "opsd_online-s0" / "config.json").read_text())
    assert cfg["method"] == "opsd" and cfg["opsd_teacher"] == "current"
    figs = {p.name for p in (tmp_path / "figs").iterdir()}
    assert {"03_training_dynamics_smoke.png", "02_leakage_smoke.pdf"} <= figs
    assert json.loads((tmp_path / "logs" / "summary.json").read_text())["table"] == json.loads(json.dumps(table))
    paired = summary["paired_vs_grpo"]["rlsd"]
    assert paired["auc"]["n"] == 1 and paired["final"]["per_seed"][0] == pytest.approx(
        table["rlsd"]["final"]["mean"] - table["grpo"]["final"]["mean"])
    markdown = (tmp_path / "logs" / "summary.md").read_text()
    assert "| RLSD |" in markdown and "Paired by seed against GRPO" in markdown

    # Re-running skips finished runs (resumable main job) and leaves their logs unchanged.
    before = (tmp_path / "logs" / "grpo-s0" / "metrics.jsonl").read_text()
    again = reproduce("smoke", seeds=(0,), methods=("grpo",), runs_dir=str(tmp_path / "runs"),
                      logs_dir=str(tmp_path / "logs"), make_figures=False)
    assert again["run_times_s"]["grpo-s0"] == summary["run_times_s"]["grpo-s0"]  # not retrained: the old timing
    assert (tmp_path / "logs" / "grpo-s0" / "metrics.jsonl").read_text() == before


def test_bench_reports_phase_times_and_ratios(monkeypatch):
    from rlsd.bench import run_bench

    monkeypatch.chdir(ROOT)
    result = run_bench("smoke", repeats=2, methods=("grpo", "rlsd"))
    grpo, rlsd = result["methods"]["grpo"], result["methods"]["rlsd"]
    assert grpo["teacher_s"] == 0 and rlsd["teacher_s"] > 0
    assert rlsd["rollout_s"] == grpo["rollout_s"]  # the same rollout batch for every method
    assert result["rlsd_over_grpo"] == pytest.approx(rlsd["step_s"] / grpo["step_s"])
    assert result["no_grad_forward_s"] > 0 and result["batch"]["responses"] == 8


def test_bench_on_the_trl_anchor_batch(tmp_path):
    """`bench --peer`: the anchor's own generator writes the prompts; our step runs on exactly those."""
    import rlsd.bench as B
    from rlsd.data import load_problems

    anchor = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "trl_anchor.py"
    if not anchor.exists():
        pytest.skip("../shared/bench/trl_anchor.py is not present")
    overrides = B.peer_batch(str(anchor), str(tmp_path), n=16)
    problems = load_problems(str(tmp_path / "peer.jsonl"))
    assert len(problems) == 16 and {p.question for p in problems} == {"How many red squares?"}
    assert all(p.images[0].size == (64, 64) and p.answer.isdigit() for p in problems)
    result = B.run_bench("smoke", overrides + ["n_train_problems=16"], repeats=1, methods=("grpo", "rlsd"))
    assert result["batch"]["responses"] == 8 and result["rlsd_over_grpo"] > 0


FAKE_ANCHOR = '''"""A stand-in for TRL's anchor script: same command line, same JSON line, our tiny model as its model."""
import argparse, json, sys
from PIL import Image


def make_dataset(n, seed, text_only=False):
    return [{"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}],
             "image": Image.new("RGB", (32, 32), (200, 0, 0)), "answer": i % 3} for i in range(n)]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    for flag in ("--steps", "--warmup", "--model-dir", "--json-out"):
        p.add_argument(flag)
    a = p.parse_args()
    from rlsd.tiny import save_tiny
    save_tiny(a.model_dir, seed=0)
    with open(a.json_out, "a") as f:
        f.write(json.dumps({"trl": "fake", "median_step_s": 1.0, "median_gen_s": 0.5, "timed_steps": 10,
                            "per_step": [1.0]}) + "\\n")
'''


def test_peer_sitting_alternates_fresh_processes_and_pools(tmp_path):
    """`bench --peer A --sitting 1`: TRL's run, ours, TRL's again, each a fresh process; the README pools them."""
    import rlsd.bench as B

    anchor = tmp_path / "fake_anchor.py"
    anchor.write_text(FAKE_ANCHOR)
    trl_runs, our_runs = B.peer_sitting(str(anchor), rounds=1, repeats=1, model_dir=str(tmp_path / "m" / "model"))
    assert [r["trl"] for r in trl_runs] == ["fake", "fake"] and all("per_step" not in r for r in trl_runs)
    assert len(our_runs) == 1 and our_runs[0]["batch"]["responses"] == 64  # the anchor's 8 x 8
    assert our_runs[0]["batch"]["teacher_prompt_tokens"] > our_runs[0]["batch"]["prompt_tokens"]
    assert set(our_runs[0]["methods"]) == set(our_runs[0]["methods_unshared"]) == {"grpo", "rlsd"}
    two = [our_runs[0], {**our_runs[0], "rollout_s": our_runs[0]["rollout_s"] + 2.0}]
    pooled = B.pooled(two)
    assert pooled["runs"] == 2 and pooled["repeats"] == 2
    assert pooled["rollout_s"] == our_runs[0]["rollout_s"] + 1.0  # the median of two runs
    assert B.pooled(our_runs[0]) is our_runs[0]  # a single result stays as it is


def test_base_evaluation_is_reused_only_for_the_same_weights_and_settings(tmp_path, monkeypatch):
    import shutil
    from types import SimpleNamespace

    import rlsd.evaluate as E
    from rlsd.testbed.evaluation import evaluate_base

    calls = []
    monkeypatch.setattr(E, "evaluate", lambda *a, **k: calls.append(k.get("fmt")) or SimpleNamespace(
        summary={"accuracy": 0.5}))
    model = tmp_path / "model"
    shutil.copytree(ROOT / SHIPPED_TINY, model)
    first = evaluate_base(str(model), 4, 8, tmp_path / "logs")
    per_eval = len(calls)
    assert per_eval == 5 and first["key"]["n_test"] == 4
    assert evaluate_base(str(model), 4, 8, tmp_path / "logs") == first and len(calls) == per_eval  # reused
    evaluate_base(str(model), 4, 16, tmp_path / "logs")  # another setting: evaluated again
    assert len(calls) == 2 * per_eval
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # other weights (the last byte of the last tensor)
    weights.write_bytes(bytes(data))
    evaluate_base(str(model), 4, 16, tmp_path / "logs")
    assert len(calls) == 3 * per_eval


def test_jobs_side_by_side_give_the_same_logs_as_one_after_the_other(tmp_path, monkeypatch):
    from rlsd.reproduce import reproduce

    monkeypatch.chdir(ROOT)
    kw = dict(seeds=(0, 1), methods=("rlsd",), make_figures=False)
    serial = reproduce("smoke", runs_dir=str(tmp_path / "r1"), logs_dir=str(tmp_path / "l1"), **kw)
    parallel = reproduce("smoke", runs_dir=str(tmp_path / "r2"), logs_dir=str(tmp_path / "l2"), jobs=2, **kw)
    assert parallel["jobs"] == 2 and set(parallel["run_times_s"]) == {"rlsd-s0", "rlsd-s1"}
    for run in ("rlsd-s0", "rlsd-s1"):
        for name in ("eval.jsonl", "samples.jsonl"):
            assert (tmp_path / "l1" / run / name).read_text() == (tmp_path / "l2" / run / name).read_text()
        strip = lambda path: [{k: v for k, v in json.loads(line).items() if not k.startswith("time_")  # noqa: E731
                               and k != "peak_mem_mb"} for line in path.read_text().splitlines()]
        assert strip(tmp_path / "l1" / run / "metrics.jsonl") == strip(tmp_path / "l2" / run / "metrics.jsonl")
    assert serial["table"]["rlsd"]["final"] == parallel["table"]["rlsd"]["final"]


def test_jobs_side_by_side_times_both_ways(tmp_path):
    from rlsd.bench import jobs_side_by_side

    r = jobs_side_by_side(runs=2, steps=1, rounds=1, work=str(tmp_path / "w"),
                          overrides=["n_train_problems=32", "max_new_tokens=8"])
    assert len(r["wall_s"]["sequential"]) == len(r["wall_s"]["parallel"]) == 1
    assert r["speedup"] == pytest.approx(r["median_sequential_s"] / r["median_parallel_s"], rel=0.01)
    assert not (tmp_path / "w").exists()  # the runs are deleted
