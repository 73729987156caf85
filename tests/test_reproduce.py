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
