"""The training loop (rlsd.trainer) end to end, on a tiny random Qwen3-VL under the `smoke` profile.

A random model answers nothing correctly: every reward would be 0, every group advantage 0 and every GRPO/RLSD
gradient 0. In-process runs therefore replace the verifier the trainer calls (`rlsd.trainer.score_batch`) by a
deterministic rule -- reward 1 for responses of even character length -- so groups have reward variance and every
method really updates. `weight_decay=0` everywhere, so a parameter that moved was moved by a gradient.

Covered: all five methods through the real CLI entry point (records, artefacts, λ schedule, parameters move);
RLSD with λ0 = 0 is GRPO exactly, with λ0 > 0 it is not; exact resume (stop-and-continue and crash-and-continue);
non-finite steps are skipped; bad config values fail at start naming the field; two-process data parallel through
`accelerate launch`; the pure helpers `step_prompts`, `step_seed` and `sdpo_demonstrations`.
"""

import json
import math
import os
import random
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import rlsd.algorithm
import rlsd.trainer as T
from rlsd.__main__ import main as cli_main
from rlsd.config import make_config
from rlsd.verifier import VerifyResult
from trainer_helpers import (assert_same_records, assert_same_state, changed, checkpoint, cli_train,
                             even_length_rewards, read_jsonl, smoke_config)

REPO = Path(__file__).resolve().parents[1]
METHODS = ("grpo", "rlsd", "opsd", "sdpo", "grpo_opsd")
TEACHER_METHODS = {"rlsd", "opsd", "sdpo", "grpo_opsd"}
METRIC_KEYS = {"step", "method", "reward_mean", "accuracy", "entropy", "response_tokens_mean", "truncated_frac",
               "zero_std_group_frac", "lambda", "weight_clip_low_frac", "weight_clip_high_frac", "delta_mean", "loss",
               "grad_norm", "time_rollout_s", "time_teacher_s", "time_update_s", "peak_mem_mb", "skipped",
               "skipped_steps"}
EVAL_KEYS = {"step", "split", "accuracy", "accuracy_ci95", "leak_rate", "unsupported_answer_rate"}


# ------------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The models are tiny: on 2 shared cores, 2 torch threads oversubscribe (a step takes ~20 s instead of ~0.3 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def even_reward(monkeypatch):
    monkeypatch.setattr(T, "score_batch", even_length_rewards)


@pytest.fixture(scope="module")
def initial_params(tiny_dir):
    import dataclasses

    from rlsd.config import make_config
    from rlsd.model import load_policy

    # The smoke profile's model spec (e.g. a frozen vision tower), pointed at the test's tiny model.
    model, _ = load_policy(dataclasses.replace(make_config("smoke").model, path=str(tiny_dir)))
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- 1. every method, real entry point


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_end_to_end_through_cli(method, tiny_dir, initial_params, tmp_path, even_reward):
    out = tmp_path / method
    overrides = ["tensorboard=true", "rlsd_decay_steps=2"]
    cli_train(method, out, tiny_dir, *overrides)
    cfg = smoke_config(method, out, tiny_dir, *overrides, seed=0)

    # config.json is the resolved config
    assert json.loads((out / "config.json").read_text()) == json.loads(cfg.to_json())

    metrics = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == list(range(1, cfg.steps + 1))  # one record per step
    for r in metrics:
        assert METRIC_KEYS <= set(r), METRIC_KEYS - set(r)
        assert r["method"] == method and r["skipped"] is False and r["skipped_steps"] == 0
        assert 0 <= r["reward_mean"] <= 1 and 0 <= r["truncated_frac"] <= 1 and 0 <= r["zero_std_group_frac"] <= 1
        assert 0 < r["response_tokens_mean"] <= cfg.max_new_tokens
        assert 0 <= r["weight_clip_low_frac"] <= 1 and 0 <= r["weight_clip_high_frac"] <= 1
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["entropy"] > 0
        assert r["time_rollout_s"] > 0 and r["time_update_s"] > 0 and r["peak_mem_mb"] > 0
        if method in TEACHER_METHODS:
            assert r["time_teacher_s"] > 0
        else:
            assert r["time_teacher_s"] == 0 and r["delta_mean"] == 0
    if method in TEACHER_METHODS:  # the teacher forward ran and saw something the student did not
        assert any(r["delta_mean"] != 0 for r in metrics)
    # the stand-in reward gives the groups variance: the reward-driven methods see a policy gradient
    assert any(r["zero_std_group_frac"] < 1 for r in metrics)
    assert any(r["grad_norm"] > 0 for r in metrics)

    # λ_k = λ0·max(0, 1 - k/K) with K = rlsd_decay_steps and k = 0 at the first step; 0 for the other methods
    expected_lam = [rlsd.algorithm.rlsd_lambda(k, cfg.rlsd_lam0, cfg.rlsd_decay_steps) if method == "rlsd" else 0.0
                    for k in range(cfg.steps)]
    assert [r["lambda"] for r in metrics] == pytest.approx(expected_lam)
    if method == "rlsd":
        assert expected_lam == pytest.approx([0.5, 0.25, 0.0])

    evals = read_jsonl(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [cfg.steps]
    for e in evals:
        assert EVAL_KEYS <= set(e), EVAL_KEYS - set(e)
        lo, hi = e["accuracy_ci95"]
        assert e["split"] == "test" and e["n"] == cfg.eval_problems and lo <= e["accuracy"] <= hi
        assert 0 <= e["leak_rate"] <= 1
    assert len(read_jsonl(out / "samples.jsonl")) == cfg.samples_per_eval
    assert (out / "checkpoint" / "state.pt").exists() and (out / "checkpoint" / "model").is_dir()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    # parameters moved (weight_decay=0: by gradients), and the checkpoint is the final step
    state = checkpoint(out)
    assert state["step"] == cfg.steps
    assert changed(initial_params, state["trainable"])


def test_real_verifier_and_tensorboard_scalars(tiny_dir, tmp_path):
    """The one run with the real verifier in the loop (a random model: rewards 0, so no policy gradient)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    cli_train("rlsd", out, tiny_dir, "tensorboard=true", "steps=2", "eval_every=2")
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2] and all(0 <= r["reward_mean"] <= 1 for r in metrics)
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/reward_mean", "train/lambda", "train/loss", "eval_student/accuracy"} <= tags
    lam = [(e.step, e.value) for e in acc.Scalars("train/lambda")]
    assert lam == [(1, pytest.approx(0.5)), (2, pytest.approx(0.5 * (1 - 1 / 3)))]


# ----------------------------------------------------------------------------------------- 2. RLSD specifics


def one_step(name, method, tmp_path, tiny_dir, *overrides):
    cfg = smoke_config(method, tmp_path / name, tiny_dir, "steps=1", "eval_every=0", "save_every=0", *overrides)
    trainer = T.Trainer(cfg, progress=False)
    (record,) = trainer.train()
    return record, {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}


def test_rlsd_with_zero_lambda_is_grpo_and_nonzero_lambda_is_not(tiny_dir, initial_params, tmp_path, even_reward):
    grpo, grpo_params = one_step("grpo", "grpo", tmp_path, tiny_dir)
    rlsd0, rlsd0_params = one_step("lam0", "rlsd", tmp_path, tiny_dir, "rlsd_lam0=0")
    rlsd1, rlsd1_params = one_step("lam1", "rlsd", tmp_path, tiny_dir, "rlsd_lam0=1")

    assert grpo["grad_norm"] > 0 and changed(initial_params, grpo_params)  # a real update, not 0 == 0
    # same seed -> same batch; λ = 0 -> Â_t = A exactly: identical update
    assert rlsd0["reward_mean"] == grpo["reward_mean"] and rlsd0["lambda"] == 0.0
    assert rlsd0["loss"] == grpo["loss"] and rlsd0["grad_norm"] == grpo["grad_norm"]
    assert not changed(grpo_params, rlsd0_params)
    # λ = 1: the teacher (reference in its prompt) disagrees with the student, so the token weights move the update
    assert rlsd1["reward_mean"] == grpo["reward_mean"] and rlsd1["lambda"] == 1.0
    assert rlsd1["delta_mean"] != 0
    assert rlsd1["grad_norm"] != grpo["grad_norm"]
    assert changed(grpo_params, rlsd1_params)


# ------------------------------------------------------------------------------------------- 3. exact resume


def test_resume_rlsd_after_stop_equals_uninterrupted(tiny_dir, tmp_path, even_reward):
    # λ decays over 4 steps and the teacher re-syncs every 2, so steps 4-5 depend on state carried across the stop
    ov = ("rlsd_decay_steps=4", "teacher_sync_every=2")
    cli_train("rlsd", tmp_path / "full", tiny_dir, "steps=5", *ov)
    cli_train("rlsd", tmp_path / "split", tiny_dir, "steps=3", *ov)
    assert checkpoint(tmp_path / "split")["step"] == 3
    cli_train("rlsd", tmp_path / "split", tiny_dir, "steps=5", *ov)

    full = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert any(r["grad_norm"] > 0 and r["lambda"] > 0 for r in full[3:])
    assert_same_records(full, read_jsonl(tmp_path / "split" / "metrics.jsonl"))
    assert_same_records(read_jsonl(tmp_path / "full" / "eval.jsonl"), read_jsonl(tmp_path / "split" / "eval.jsonl"))
    assert_same_state(checkpoint(tmp_path / "full"), checkpoint(tmp_path / "split"))


class Crash(Exception):
    pass


@pytest.mark.parametrize("method", ["opsd", "sdpo"])
def test_resume_after_crash_equals_uninterrupted(method, tiny_dir, tmp_path, even_reward, monkeypatch):
    cli_train(method, tmp_path / "full", tiny_dir, "steps=4")

    # crash at step 3 after its metrics record is written (checkpoint from step 2: save_every=2, eval_every=3)
    def crash(self):
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(T.Trainer, "run_eval", crash)
        with pytest.raises(Crash):
            cli_train(method, tmp_path / "crashed", tiny_dir, "steps=4")
    assert [r["step"] for r in read_jsonl(tmp_path / "crashed" / "metrics.jsonl")] == [1, 2, 3]
    assert checkpoint(tmp_path / "crashed")["step"] == 2
    cli_train(method, tmp_path / "crashed", tiny_dir, "steps=4")  # resumes; the stale step-3 record is dropped

    full = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert any(r["grad_norm"] > 0 for r in full[2:])  # the resumed steps really update
    assert_same_records(full, read_jsonl(tmp_path / "crashed" / "metrics.jsonl"))
    assert_same_records(read_jsonl(tmp_path / "full" / "eval.jsonl"),
                        read_jsonl(tmp_path / "crashed" / "eval.jsonl"))
    assert_same_state(checkpoint(tmp_path / "full"), checkpoint(tmp_path / "crashed"))


def test_lora_opsd_trains_adapters_only_and_resumes(tiny_dir, tmp_path, even_reward):
    # the GPU path: LoRA adapters, OPSD teacher = the adapter disabled; stop after 2 steps, continue to 3
    cli_train("opsd", tmp_path / "full", tiny_dir, "model.lora_rank=4", "eval_every=0")
    cli_train("opsd", tmp_path / "split", tiny_dir, "model.lora_rank=4", "eval_every=0", "steps=2")
    cli_train("opsd", tmp_path / "split", tiny_dir, "model.lora_rank=4", "eval_every=0", "steps=3")
    full = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert all(r["grad_norm"] > 0 and r["time_teacher_s"] > 0 for r in full)
    assert full[0]["delta_mean"] != 0  # teacher prompt differs: real distillation signal from step 1
    assert_same_records(full, read_jsonl(tmp_path / "split" / "metrics.jsonl"))
    state = checkpoint(tmp_path / "full")
    assert_same_state(state, checkpoint(tmp_path / "split"))
    assert state["trainable"] and all("lora_" in n for n in state["trainable"])
    assert (tmp_path / "full" / "checkpoint" / "adapter").is_dir()
    lora_B = [t for n, t in state["trainable"].items() if "lora_B" in n]
    assert any(t.abs().sum() > 0 for t in lora_B)  # B starts at 0: non-zero means the adapters were trained


def test_resume_refuses_another_method(tiny_dir, tmp_path, even_reward, capsys):
    assert cli_train("grpo", tmp_path / "run", tiny_dir, "steps=2", "eval_every=0") == 0
    capsys.readouterr()
    assert cli_train("rlsd", tmp_path / "run", tiny_dir, "steps=3", "eval_every=0") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method: 'grpo' -> 'rlsd'" in err[0]


# -------------------------------------------------------------------------------------- 4. non-finite steps


def test_non_finite_loss_skips_the_step(tiny_dir, tmp_path, even_reward, monkeypatch):
    cfg = smoke_config("rlsd", tmp_path / "nan", tiny_dir, "eval_every=0", "save_every=0")
    trainer = T.Trainer(cfg, progress=False)
    real_loss = rlsd.algorithm.policy_loss

    def nan_on_second_step(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        return (loss * float("nan") if trainer.step == 1 else loss), stats

    monkeypatch.setattr(rlsd.algorithm, "policy_loss", nan_on_second_step)
    snapshots = []
    real_update = trainer.update

    def update(batch):
        before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
        stats = real_update(batch)
        after = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
        snapshots.append((before, after))
        return stats

    monkeypatch.setattr(trainer, "update", update)
    records = trainer.train()

    assert [r["step"] for r in records] == [1, 2, 3]  # training continued past the bad step
    assert [r["skipped"] for r in records] == [False, True, False]
    assert [r["skipped_steps"] for r in records] == [0, 1, 1]
    assert math.isnan(records[1]["loss"])
    assert changed(*snapshots[0]) and changed(*snapshots[2])
    assert not changed(*snapshots[1])  # the non-finite update was never applied
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())
    assert [r["skipped"] for r in read_jsonl(tmp_path / "nan" / "metrics.jsonl")] == [False, True, False]


# -------------------------------------------------------------------------------------- 5. bad config values


@pytest.mark.parametrize("fields, overrides, field", [
    (dict(method="foo"), [], "method"),
    (dict(method="grpo", group_size=1), [], "group_size"),
    (dict(method="rlsd"), ["lr=0"], "lr"),
    (dict(method="opsd", opsd_teacher="x"), [], "opsd_teacher"),
    (dict(method="rlsd"), ["no_such_field=1"], "no_such_field"),
    (dict(method="rlsd"), ["model.no_such_field=1"], "no_such_field"),
    (dict(method="rlsd"), ["lr=fast"], "lr"),
    (dict(method="rlsd"), ["steps=2.5"], "steps"),
    (dict(method="rlsd"), ["tensorboard=maybe"], "tensorboard"),
    (dict(method="rlsd"), ["rlsd_lam0=1.5"], "rlsd_lam0"),
    (dict(method="rlsd"), ["model.lora_rank=-1"], "model.lora_rank"),
    (dict(method="rlsd"), ["model.dtype=float64"], "model.dtype"),
])
def test_bad_config_fails_naming_the_field(fields, overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make_config("smoke", overrides, **fields)


def test_bad_profile_and_good_profiles():
    with pytest.raises(ValueError, match="profile"):
        make_config("nope")
    for profile in ("smoke", "cpu", "qwen3vl-2b", "qwen3vl-8b"):
        for method in METHODS:
            assert make_config(profile, method=method).method == method


def test_cli_rejects_bad_values_before_training(tiny_dir, tmp_path, capsys):
    out = tmp_path / "never"
    with pytest.raises(SystemExit):
        cli_main(["train", "--method", "foo", "--profile", "smoke", "--out", str(out)])
    assert "--method" in capsys.readouterr().err
    for override, field in (("group_size=1", "group_size"), ("opsd_teacher=x", "opsd_teacher"),
                            ("no_such_field=3", "no_such_field")):
        method = "opsd" if field == "opsd_teacher" else "grpo"
        assert cli_train(method, out, tiny_dir, override) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and field in err[0], err  # one line naming the field, no traceback
    assert not out.exists()  # failed at start: no run directory


def test_cli_subprocess_exits_nonzero_naming_the_field(tmp_path):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "rlsd", "train", "--method", "rlsd", "--profile", "smoke",
                           "--out", str(out), "lr=0"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: TrainConfig.lr must be in (0, 1], got 0.0"]  # no traceback
    assert not out.exists()


# ------------------------------------------------------------------------- 6. accelerate data parallel (2 ranks)

# Installed in the launched processes through PYTHONPATH (sitecustomize runs at interpreter start-up): the entry
# point stays the real `-m rlsd train`; the hook only wraps step_prompts and score_batch (logging what each rank
# rolled out, with the stand-in reward) and logs each rank's final parameters.
HOOK = textwrap.dedent('''
    import os
    if os.environ.get("RLSD_TEST_HOOK") and os.environ.get("LOCAL_RANK") is not None:
        log_dir = os.environ.pop("RLSD_TEST_HOOK")
        import json
        import torch
        import rlsd.trainer as T
        from rlsd.verifier import VerifyResult

        path = os.path.join(log_dir, "rank%s.jsonl" % os.environ["RANK"])
        def write(**record):
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\\n")

        real_step_prompts, real_train = T.step_prompts, T.Trainer.train
        def step_prompts(n, step, seed, per_process, rank, world):
            idx = real_step_prompts(n, step, seed, per_process, rank, world)
            write(kind="prompts", n=n, step=step, seed=seed, per_process=per_process, rank=rank, world=world,
                  idx=idx, torch_seed=torch.initial_seed())
            return idx
        def score_batch(responses, answers, *args, **kwargs):
            rewards = [float(len(r) % 2 == 0) for r in responses]
            write(kind="scores", rewards=rewards, answers=list(answers))
            return [VerifyResult(reward=r, extracted=None, format_ok=False, timed_out=False) for r in rewards]
        def train(self):
            out = real_train(self)
            write(kind="final", sums={n: float(p.double().sum()) for n, p in self.policy.named_parameters()})
            return out
        T.step_prompts, T.score_batch, T.Trainer.train = step_prompts, score_batch, train
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_two_processes(tiny_dir, initial_params, tmp_path):
    hook_dir, log_dir, out = tmp_path / "hook", tmp_path / "logs", tmp_path / "ddp"
    hook_dir.mkdir()
    log_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, "RLSD_TEST_HOOK": str(log_dir), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(hook_dir), str(REPO), os.environ.get("PYTHONPATH", "")])}
    # `--multi_gpu` starts torchrun workers (gloo on a CPU-only machine); `--cpu` would start ONE process.
    overrides = [f"model.path={tiny_dir}", "tensorboard=false", "weight_decay=0", "micro_batch_size=4"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--num_cpu_threads_per_process", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "rlsd", "train", "--method", "rlsd", "--profile", "smoke", "--seed", "0", "--out", str(out),
           *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]

    cfg = make_config("smoke", overrides, method="rlsd", seed=0, out=str(out))
    G, per = cfg.group_size, cfg.prompts_per_step
    logs = {r: read_jsonl(log_dir / f"rank{r}.jsonl") for r in (0, 1)}  # both ranks ran
    prompts = {r: [x for x in logs[r] if x["kind"] == "prompts"] for r in (0, 1)}
    scores = {r: [x for x in logs[r] if x["kind"] == "scores"] for r in (0, 1)}
    train_problems, _ = T.load_training_problems(cfg)

    metrics = read_jsonl(out / "metrics.jsonl")  # written by the main process only: one record per step
    assert [m["step"] for m in metrics] == list(range(1, cfg.steps + 1))
    assert [e["step"] for e in read_jsonl(out / "eval.jsonl")] == [cfg.steps]
    assert checkpoint(out)["step"] == cfg.steps and (out / "samples.jsonl").exists()

    for step, record in enumerate(metrics):
        p0, p1 = prompts[0][step], prompts[1][step]
        assert (p0["rank"], p1["rank"], p0["world"], p1["world"]) == (0, 1, 2, 2) and p0["step"] == step
        # different prompts per rank: the two slices of one global draw
        assert not set(p0["idx"]) & set(p1["idx"])
        assert p0["idx"] + p1["idx"] == T.step_prompts(len(train_problems), step, cfg.seed, 2 * per, 0, 1)
        # independent sampling streams per rank
        assert p0["torch_seed"] == T.step_seed(cfg.seed, step, 0) != p1["torch_seed"] == T.step_seed(cfg.seed, step, 1)
        rewards = []
        for r, p in ((0, p0), (1, p1)):
            s = scores[r][step]
            # each rank scored its own prompts' whole groups: G consecutive responses per prompt
            assert s["answers"] == [train_problems[i].answer for i in p["idx"] for _ in range(G)]
            rewards.append(s["rewards"])
        # metrics are gathered over both ranks: 2 x prompts_per_step x G responses
        everything = rewards[0] + rewards[1]
        assert len(everything) == 2 * per * G
        assert record["reward_mean"] == pytest.approx(sum(everything) / len(everything))
        groups = [everything[i:i + G] for i in range(0, len(everything), G)]
        assert record["zero_std_group_frac"] == pytest.approx(sum(len(set(g)) == 1 for g in groups) / len(groups))

    finals = {r: [x for x in logs[r] if x["kind"] == "final"][0]["sums"] for r in (0, 1)}
    assert finals[0] == finals[1]  # DDP kept the replicas identical
    assert any(finals[0][n] != pytest.approx(float(p.double().sum()), abs=1e-9) for n, p in initial_params.items())
    saved = checkpoint(out)["trainable"]
    assert set(saved) == set(initial_params)  # the checkpoint holds exactly the trainable tensors
    assert all(float(t.double().sum()) == pytest.approx(finals[0][n], abs=1e-6) for n, t in saved.items())


# ------------------------------------------------------------------------------------------ 7. pure helpers


def test_step_prompts_is_pure_and_rank_slices_are_disjoint():
    state = random.getstate()
    a = T.step_prompts(100, 7, 3, 4, 1, 2)
    assert random.getstate() == state  # no global RNG use
    assert a == T.step_prompts(100, 7, 3, 4, 1, 2)
    assert a != T.step_prompts(100, 8, 3, 4, 1, 2) and a != T.step_prompts(100, 7, 4, 4, 1, 2)
    for world in (1, 2, 4):
        slices = [T.step_prompts(100, 7, 3, 4, r, world) for r in range(world)]
        assert all(len(s) == 4 and all(0 <= i < 100 for i in s) for s in slices)
        flat = [i for s in slices for i in s]
        assert len(set(flat)) == len(flat)  # disjoint across ranks (and no repeats within a step)
        assert flat == T.step_prompts(100, 7, 3, 4 * world, 0, 1)  # the same global draw, cut into slices
    # fewer problems than prompts: still valid indices, still deterministic
    small = T.step_prompts(3, 0, 0, 4, 0, 2)
    assert len(small) == 4 and all(0 <= i < 3 for i in small) and small == T.step_prompts(3, 0, 0, 4, 0, 2)


def test_step_seed_is_pure_and_distinct():
    seeds = {(s, k, r): T.step_seed(s, k, r) for s in range(3) for k in range(20) for r in range(4)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v < 2**63 for v in seeds.values())
    assert T.step_seed(1, 2, 3) == T.step_seed(1, 2, 3)


def test_sdpo_demonstrations_as_lasgroup_sdpo():
    G = 4
    responses = ["<thought>a0</thought><answer>0</answer>", "<thought>x</thought><answer>5</answer>", "a2",
                 "<thought>y</thought><answer>5</answer>", "b0", "b1", "b2", "b3", "c0", "c1", "c2", "c3"]
    rewards = [0, 1, 0, 1,  # two winners
               1, 0, 0, 0,  # one winner
               0, 0, 0, 0]  # failed group
    demos = T.sdpo_demonstrations(responses, rewards, G)
    assert len(demos) == len(responses)
    assert demos[:4] == ["5", "5", "5", "5"]  # the sibling's final answer, its reasoning removed
    full = T.sdpo_demonstrations(responses, rewards, G, content="full")
    assert full[1] == responses[3] and full[3] == responses[1]  # a winner is shown ANOTHER winner
    assert demos[4] is None  # the only winner: no demonstration (never itself)
    assert full[5:8] == ["b0", "b0", "b0"]
    assert demos[8:] == [None] * 4  # nobody succeeded: no demonstration


def test_sdpo_distils_only_responses_with_a_demonstration(tiny_dir, tmp_path, monkeypatch):
    """Rows without a demonstration get no distillation gradient: with every group failing, nothing moves."""
    monkeypatch.setattr(T, "score_batch", lambda responses, answers, *a, **k: [
        VerifyResult(reward=0.0, extracted=None, format_ok=False, timed_out=False) for _ in responses])
    cfg = smoke_config("sdpo", tmp_path / "run", tiny_dir, "eval_every=0", "save_every=0", "steps=1")
    trainer = T.Trainer(cfg, progress=False)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    records = trainer.train()
    assert records[0]["distill_loss"] == 0.0 and records[0]["grad_norm"] == 0.0
    assert not changed(before, {n: p.detach() for n, p in trainer.policy.named_parameters() if p.requires_grad})


def test_learning_rate_warmup_is_a_function_of_the_step(tiny_dir, tmp_path, even_reward):
    from rlsd.config import make_config

    cfg = make_config("smoke", [f"model.path={tiny_dir}"], method="grpo", out=str(tmp_path / "w"), steps=3,
                      warmup_steps=2, lr=1e-4, tensorboard=False, eval_every=0, save_every=0)
    records = T.Trainer(cfg, progress=False).train()
    assert [r["lr"] for r in records] == pytest.approx([5e-5, 1e-4, 1e-4])
    with pytest.raises(ValueError, match="warmup_steps"):
        make_config("smoke", warmup_steps=-1)


# ------------------------------------------------------------------------------------- 6. batching is numerics-free


def test_chunking_the_rlsd_teacher_pass_does_not_change_the_update(tiny_dir, tmp_path, even_reward):
    """One batched teacher pass vs chunks of 3 rows (update micro-batches of 2): the same step, to float tolerance."""
    common = ("micro_batch_size=2", "rlsd_lam0=1")
    whole, whole_params = one_step("whole", "rlsd", tmp_path, tiny_dir, *common, "score_batch_size=0")
    chunked, chunked_params = one_step("chunk", "rlsd", tmp_path, tiny_dir, *common, "score_batch_size=3")
    assert whole["time_teacher_s"] > 0 and chunked["time_teacher_s"] > 0 and whole["delta_mean"] != 0
    for key in ("reward_mean", "response_tokens_mean", "delta_mean", "loss", "grad_norm", "weight_clip_high_frac"):
        assert whole[key] == pytest.approx(chunked[key], rel=1e-4, abs=1e-6), key
    for name in whole_params:
        torch.testing.assert_close(whole_params[name], chunked_params[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rollout_batch_size, expected", [(0, None), (3, 3)])
def test_rollout_batch_size_reaches_generate(tiny_dir, tmp_path, monkeypatch, rollout_batch_size, expected):
    seen = []
    real = T.hf_generate

    def recording(*args, micro_batch_size=None, **kwargs):
        seen.append(micro_batch_size)
        return real(*args, micro_batch_size=micro_batch_size, **kwargs)

    monkeypatch.setattr(T, "hf_generate", recording)
    cfg = smoke_config("grpo", tmp_path, tiny_dir, "micro_batch_size=2", f"rollout_batch_size={rollout_batch_size}")
    batch = T.Trainer(cfg, progress=False).rollout()
    assert seen == [expected] and batch.rewards_N.numel() == cfg.prompts_per_step * cfg.group_size


def test_prompts_without_the_format_instruction(tiny_dir, tmp_path):
    from rlsd.prompts import FORMAT_INSTRUCTION, student_messages, teacher_messages

    assert FORMAT_INSTRUCTION in student_messages("q?")[0]["content"][-1]["text"]
    assert student_messages("q?", 1, False)[0]["content"][-1]["text"] == "q?"
    assert FORMAT_INSTRUCTION not in teacher_messages("q?", "7", 1, False)[0]["content"][-1]["text"]
    with_fmt = T.Trainer(smoke_config("grpo", tmp_path / "a", tiny_dir), progress=False).rollout()
    bare = T.Trainer(smoke_config("grpo", tmp_path / "b", tiny_dir, "format_instruction=false"),
                     progress=False).rollout()
    assert bare.student.attention_mask_BP.sum() < with_fmt.student.attention_mask_BP.sum()


def test_every_method_has_its_loss_terms():
    from rlsd.config import METHODS
    from rlsd.trainer import LOSS_TERMS, grpo_term, sdpo_term

    assert set(LOSS_TERMS) == set(METHODS)
    assert LOSS_TERMS["grpo_opsd"][0] is grpo_term and LOSS_TERMS["sdpo"] == (sdpo_term,)


# ------------------------------------------------------------------------------- 7. RLSD's drift term, instrumented


def _step_with_raw_grads(name, method, tmp_path, tiny_dir, *overrides):
    """One step; also the raw (pre-clip) gradients, flattened."""
    cfg = smoke_config(method, tmp_path / name, tiny_dir, "steps=1", "eval_every=0", "save_every=0", *overrides)
    trainer = T.Trainer(cfg, progress=False)
    seen = {}
    clip = trainer.acc.clip_grad_norm_

    def record_then_clip(params, max_norm):
        params = list(params)
        seen["g"] = torch.cat([p.grad.reshape(-1).double() for p in params])
        return clip(params, max_norm)

    trainer.acc.clip_grad_norm_ = record_then_clip
    (record,) = trainer.train()
    params = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    return record, seen["g"], params


def test_drift_gradient_is_rlsd_minus_grpo_and_leaves_the_update_alone(tiny_dir, tmp_path, even_reward):
    grpo, g_grpo, _ = _step_with_raw_grads("grpo", "grpo", tmp_path, tiny_dir)
    rlsd, g_rlsd, p_logged = _step_with_raw_grads("rlsd", "rlsd", tmp_path, tiny_dir, "rlsd_lam0=1",
                                                  "log_drift_grad=true")
    _, p_plain = one_step("plain", "rlsd", tmp_path, tiny_dir, "rlsd_lam0=1")
    assert not changed(p_plain, p_logged)  # the extra gradient does not touch the update
    # Â_t = A + drift_t and the surrogate is linear in Â at ρ = 1: g_rlsd - g_grpo is the drift's gradient
    d = g_rlsd - g_grpo
    assert float(d.norm()) > 0 and rlsd["drift_adv_share"] > 0
    assert rlsd["drift_grad_norm"] == pytest.approx(float(d.norm()), rel=1e-4)
    assert rlsd["drift_grad_projection"] == pytest.approx(float(d @ g_rlsd) / float(g_rlsd @ g_rlsd), rel=1e-3,
                                                          abs=1e-6)
    assert rlsd["drift_grad_share"] == pytest.approx(float(d.norm() / g_rlsd.norm()), rel=1e-4)
    # negative controls: no drift without evidence (λ = 0) and in GRPO
    lam0, _, _ = _step_with_raw_grads("lam0", "rlsd", tmp_path, tiny_dir, "rlsd_lam0=0", "log_drift_grad=true")
    assert lam0["drift_adv_share"] == 0 and lam0["drift_grad_norm"] == 0
    assert grpo["drift_adv_share"] == 0 and "drift_grad_norm" not in grpo


def test_rollout_leak_rate_counts_mentions_in_the_training_rollouts(tiny_dir, tmp_path, even_reward, monkeypatch):
    decode = T.Trainer.rollout

    def rollout_with(leaky):
        def rollout(self):  # the tiny random model may sample the word itself: set every response's status
            batch = decode(self)
            batch.responses = [("the reference answer is 3 " if leaky(i) else "") + r.replace("reference", "")
                               for i, r in enumerate(batch.responses)]
            return batch
        return rollout

    monkeypatch.setattr(T.Trainer, "rollout", rollout_with(lambda i: False))
    assert one_step("clean", "grpo", tmp_path, tiny_dir)[0]["rollout_leak_rate"] == 0.0
    monkeypatch.setattr(T.Trainer, "rollout", rollout_with(lambda i: i % 4 == 0))
    assert one_step("leaky", "grpo", tmp_path, tiny_dir)[0]["rollout_leak_rate"] == 0.25


def test_drift_gradient_stats_on_known_vectors():
    g = [torch.tensor([3.0, 4.0])]
    assert T.drift_gradient_stats(g, g) == {"drift_grad_norm": 5.0, "drift_grad_share": 1.0,
                                            "drift_grad_projection": 1.0}
    s = T.drift_gradient_stats([torch.tensor([0.0, 1.0])], [torch.tensor([2.0, 0.0])])
    assert s["drift_grad_projection"] == 0.0 and s["drift_grad_share"] == 0.5


def test_dense_early_evaluation_and_greedy_decoding(tiny_dir, tmp_path, even_reward):
    cfg = smoke_config("grpo", tmp_path / "dense", tiny_dir, "steps=6", "eval_every=3", "eval_dense_every=1",
                       "eval_dense_until=2", "save_every=0", "eval_decoding=greedy")
    T.Trainer(cfg, progress=False).train()
    evals = read_jsonl(tmp_path / "dense" / "eval.jsonl")
    assert [r["step"] for r in evals] == [1, 2, 3, 6]  # dense to step 2, then every 3 and the end
    again = smoke_config("grpo", tmp_path / "again", tiny_dir, "steps=1", "eval_every=1", "save_every=0",
                         "eval_decoding=greedy")
    T.Trainer(again, progress=False).train()
    # greedy evaluation is reproducible: the same weights at step 1 give the same responses
    first = read_jsonl(tmp_path / "again" / "samples.jsonl")
    assert first == [s for s in read_jsonl(tmp_path / "dense" / "samples.jsonl") if s["step"] == 1]
    with pytest.raises(ValueError, match="eval_decoding"):
        smoke_config("grpo", tmp_path / "bad", tiny_dir, "eval_decoding=beam")


def test_wrong_answer_teacher_is_told_the_wrong_answer(tmp_path):
    from rlsd.testbed import generate_split, wrong_answer

    problem = generate_split("test", 1)[0]
    cfg = make_config("smoke", ["teacher_reference=wrong_answer"])
    assert T.reference_text(problem, cfg) == wrong_answer(problem) != problem.answer
    assert T.reference_text(problem, make_config("smoke")) == problem.answer
    with pytest.raises(ValueError, match="teacher_reference"):
        make_config("smoke", ["teacher_reference=wrong_answer", f"data={tmp_path / 'rows.jsonl'}"])


@pytest.mark.parametrize("switch", ["rlsd_negative_only=true", "rlsd_thought_only=true", "rlsd_shuffle_weights=true"])
def test_rlsd_switches_change_the_update_and_default_off_is_rlsd(switch, tiny_dir, tmp_path, even_reward):
    plain, p_plain = one_step("plain", "rlsd", tmp_path, tiny_dir, "rlsd_lam0=1")
    on, p_on = one_step(switch.split("=")[0], "rlsd", tmp_path, tiny_dir, "rlsd_lam0=1", switch)
    off, p_off = one_step("off", "rlsd", tmp_path, tiny_dir, "rlsd_lam0=1", switch.replace("true", "false"))
    assert not changed(p_plain, p_off)  # the switch off is RLSD exactly
    assert on["reward_mean"] == plain["reward_mean"]  # the same batch ...
    assert changed(p_plain, p_on)  # ... and another update
    assert on["drift_adv_share"] != plain["drift_adv_share"]


def test_thought_mask_stops_at_the_closing_tag(tiny_dir, tmp_path):
    cfg = smoke_config("rlsd", tmp_path / "t", tiny_dir, "steps=1", "eval_every=0", "save_every=0")
    trainer = T.Trainer(cfg, progress=False)
    tok = trainer.tok
    ids = [tok("<thought>red 3</thought><answer>3</answer>", add_special_tokens=False)["input_ids"],
           tok("<thought>red 3 , green", add_special_tokens=False)["input_ids"]]
    T_ = max(map(len, ids))
    ids_BT = torch.tensor([r + [0] * (T_ - len(r)) for r in ids])
    mask_BT = torch.tensor([[1] * len(r) + [0] * (T_ - len(r)) for r in ids])
    thought_BT = trainer.thought_mask(ids_BT, mask_BT)
    close = tok("</thought>", add_special_tokens=False)["input_ids"]
    start = next(t for t in range(len(ids[0])) if ids[0][t:t + len(close)] == close)
    assert thought_BT[0].tolist() == [True] * start + [False] * (T_ - start)
    assert thought_BT[1].tolist() == mask_BT[1].bool().tolist()  # no closing tag: all of it (truncated)


def test_oracle_control_uses_the_demonstrators_evidence_without_a_teacher_pass(tiny_dir, tmp_path):
    from types import SimpleNamespace

    from rlsd.testbed import generate_split, oracle_delta, solution_text

    cfg = smoke_config("rlsd", tmp_path / "o", tiny_dir, "steps=1", "eval_every=0", "save_every=0",
                       "teacher_reference=oracle")
    trainer = T.Trainer(cfg, progress=False)
    tok, G = trainer.tok, cfg.group_size
    problem = next(p for p in generate_split("test", 50) if p.meta["family"] == "count")
    misread = dict(problem.meta["counts"], **{problem.meta["colour"]: problem.meta["counts"][problem.meta["colour"]] + 1})
    texts = [f"<thought>{t}</thought><answer>{a}</answer>" for t, a in (
        solution_text("count", problem.meta["counts"], problem.meta), solution_text("count", misread, problem.meta))]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts] * (G // 2)
    width = max(map(len, ids)) + 2  # padding after every row
    ids_NT = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in ids])
    mask_NT = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
    batch = SimpleNamespace(problems=[problem], rollout=SimpleNamespace(response_ids_BT=ids_NT, response_mask_BT=mask_NT))
    delta_NT = trainer.oracle_deltas(batch)
    for n, row in enumerate(ids):
        expected = oracle_delta(problem, [tok.decode([i]) for i in row], cfg.oracle_demo_error)
        assert delta_NT[n, :len(row)].tolist() == pytest.approx(expected)
        assert delta_NT[n, len(row):].abs().sum() == 0
    assert delta_NT[0].max() > 0 and delta_NT[1].min() < 0  # the right read-out credited, the misread blamed
    (record,) = trainer.train()  # a whole step: no teacher forward at all
    assert record["time_teacher_s"] == 0.0 and record["lambda"] > 0


def test_oracle_delta_reaches_the_update(tiny_dir, tmp_path, even_reward):
    """The oracle's Δ is what RLSD's weights read: a non-zero Δ changes the update, Δ = 0 gives the plain one."""
    def run(name, value):
        cfg = smoke_config("rlsd", tmp_path / name, tiny_dir, "steps=1", "eval_every=0", "save_every=0",
                           "teacher_reference=oracle", "rlsd_lam0=1")
        trainer = T.Trainer(cfg, progress=False)
        if value is not None:
            trainer.oracle_deltas = lambda b: torch.full(b.rollout.response_ids_BT.shape, value) * \
                b.rollout.response_mask_BT
        (record,) = trainer.train()
        return record, {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}

    zero, p_zero = run("zero", 0.0)
    pushed, p_pushed = run("pushed", 1.0)
    assert pushed["reward_mean"] == zero["reward_mean"]  # the same batch ...
    assert changed(p_zero, p_pushed) and pushed["delta_mean"] == pytest.approx(1.0)  # ... another update
    assert zero["delta_mean"] == 0.0 and zero["drift_adv_share"] == 0.0
