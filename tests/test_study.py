"""The study's declared runs and criteria (rlsd.study) on synthetic logs whose answers are known by construction."""

import json

import pytest

from rlsd import study as S


def test_study_runs_are_the_declared_ones():
    runs = dict(S.study_runs("confirm", "runs/study"))
    assert len(runs) == 20 and set(S.CONFIRM_SEEDS) == set(range(100, 110))
    cfg = runs["rlsd-s100"]
    assert (cfg.method, cfg.seed, cfg.eval_problems, cfg.eval_dense_every, cfg.eval_dense_until) == (
        "rlsd", 100, 500, 5, 75)
    assert cfg.rlsd_lam0 == 0.5 and cfg.rlsd_clip_eps == 0.2 and cfg.rlsd_decay_steps == 75 and cfg.log_drift_grad
    sens = dict(S.study_runs("sensitivity", "runs/study"))
    assert sens["rlsd_l1.0_e0.5-s100"].rlsd_lam0 == 1.0 and sens["rlsd_l1.0_e0.5-s100"].rlsd_clip_eps == 0.5
    assert sens["rlsd_const-s104"].rlsd_decay_steps == 0 and "rlsd_const-s105" not in sens
    with pytest.raises(ValueError, match="--part"):
        S.study_runs("everything", "runs/study")


def write_run(root, name, seed, acc, leak=0.0):
    d = root / f"{name}-s{seed}"
    d.mkdir(parents=True)
    evals = [{"step": s, "n": 500, "accuracy": acc(s), "split": "test"} for s in list(range(5, 80, 5)) + [150]]
    (d / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in evals) + "\n")
    metrics = [{"step": s, "reward_mean": 0.5, "rollout_leak_rate": leak} for s in range(1, 151)]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in metrics) + "\n")



@pytest.mark.parametrize("gain, early_only, expected", [
    (0.03, True, {"primary": "yes", "step25": "yes", "final": "no"}),   # the v2 pattern, confirmed
    (0.0, True, {"primary": "no", "step25": "no", "final": "no"}),      # negative control: nothing to confirm
    (-0.03, False, {"primary": "reversed", "step25": "reversed", "final": "reversed"})])
def test_confirmation_verdicts(tmp_path, gain, early_only, expected):
    noise = [0.004 * ((7 * s) % 5 - 2) for s in range(10)]
    for i, seed in enumerate(S.CONFIRM_SEEDS):
        write_run(tmp_path, "grpo", seed, lambda s, e=noise[i]: 0.6 + 0.001 * s + e)
        write_run(tmp_path, "rlsd", seed, lambda s, e=noise[i]: 0.6 + 0.001 * s + e + (
            gain if (s <= 75 or not early_only) else 0.0) + 0.002 * (i % 3 - 1))
    result = S.judge_study(tmp_path)
    got = {r["criterion"]: r["verdict"] for r in result["rows"]}
    primary = next(v for k, v in got.items() if k.startswith("confirm, primary"))
    step25 = next(v for k, v in got.items() if "step 25" in k)
    final = next(v for k, v in got.items() if "last step" in k)
    assert {"primary": primary, "step25": step25, "final": final} == expected
    assert next(v for k, v in got.items() if k.startswith("confirm, leakage")) == "yes"
    assert next(v for k, v in got.items() if "(1.0, 0.5)" in k) == "not run"  # sensitivity not run yet
    assert (tmp_path / "verdicts.json").exists() and "| pre-registered criterion |" in S.verdicts_markdown(result)


def test_confirmation_leak_bound_can_fail(tmp_path):
    for seed in S.CONFIRM_SEEDS:
        write_run(tmp_path, "grpo", seed, lambda s: 0.6)
        write_run(tmp_path, "rlsd", seed, lambda s: 0.6, leak=0.1 + 0.001 * seed)
    got = {r["criterion"]: r["verdict"] for r in S.judge_study(tmp_path)["rows"]}
    assert next(v for k, v in got.items() if k.startswith("confirm, leakage")) == "no"


def grid_logs(root, gains):
    """GRPO on the confirmation seeds, each grid cell (and any extra name) on seeds 100-104 with a known gain."""
    noise = [0.004 * ((7 * s) % 5 - 2) for s in range(10)]
    for i, seed in enumerate(S.CONFIRM_SEEDS):
        write_run(root, "grpo", seed, lambda s, e=noise[i]: 0.6 + 0.001 * s + e)
        if seed in S.SENSITIVITY_SEEDS:
            for name, gain in gains.items():
                write_run(root, name, seed, lambda s, e=noise[i], g=gain, j=i: 0.6 + 0.001 * s + e + (
                    g if s <= 75 else 0.0) + 0.002 * (j % 3 - 1))


def test_strongest_cell_is_the_declared_rule_and_needs_every_cell(tmp_path):
    with pytest.raises(ValueError, match="cell rlsd"):
        S.strongest_cell(tmp_path)
    grid_logs(tmp_path, {"rlsd": 0.01, "rlsd_l1.0_e0.2": 0.02, "rlsd_l0.5_e0.5": 0.005, "rlsd_l1.0_e0.5": 0.015,
                         "rlsd_const": 0.05})  # constant λ is not a grid cell: never the strongest
    assert S.strongest_cell(tmp_path) == "rlsd_l1.0_e0.2"


@pytest.mark.parametrize("shuffled, oracle, wrong, expected", [
    (0.0, 0.04, -0.02, ("yes", "yes", "no")),   # targeting matters, a better teacher helps, the answer is needed
    (0.02, 0.02, 0.02, ("no", "no", "yes")),    # negative control: every control as good as the cell
])
def test_control_verdicts(tmp_path, shuffled, oracle, wrong, expected):
    grid_logs(tmp_path, {"rlsd": 0.02, "rlsd_l1.0_e0.2": 0.0, "rlsd_l0.5_e0.5": 0.0, "rlsd_l1.0_e0.5": 0.0,
                         "ctl_shuffled": shuffled, "ctl_oracle": oracle, "ctl_wrong_answer": wrong,
                         "ctl_negative_only": 0.01})
    result = S.judge_study(tmp_path)
    assert result["strongest_cell"] == "rlsd"
    got = {r["criterion"]: r["verdict"] for r in result["rows"]}
    pick = lambda words: next(v for k, v in got.items() if words in k)  # noqa: E731
    assert (pick("targeting matters"), pick("bottleneck"), pick("does not need the answer")) == expected


def test_control_runs_are_the_strongest_cell_plus_one_switch(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "strongest_cell", lambda logs=None: "rlsd_l1.0_e0.5")
    runs = dict(S.study_runs("controls", "runs/study"))
    assert len(runs) == 4 * len(S.SENSITIVITY_SEEDS)
    oracle, shuffled = runs["ctl_oracle-s100"], runs["ctl_shuffled-s104"]
    assert (oracle.rlsd_lam0, oracle.rlsd_clip_eps, oracle.teacher_reference) == (1.0, 0.5, "oracle")
    assert shuffled.rlsd_shuffle_weights and shuffled.teacher_reference == "answer" and shuffled.rlsd_lam0 == 1.0
    assert runs["ctl_wrong_answer-s101"].teacher_reference == "wrong_answer"
    assert runs["ctl_negative_only-s102"].rlsd_negative_only and "ctl_oracle-s105" not in runs
    monkeypatch.setattr(S, "strongest_cell", lambda logs=None: "rlsd")
    assert dict(S.study_runs("controls", "runs/study"))["ctl_oracle-s100"].rlsd_lam0 == 0.5  # the paper's cell
