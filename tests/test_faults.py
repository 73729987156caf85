"""Fault injection: kills at every point of a checkpoint write, crafted and corrupt files, changed configurations,
NaN/inf, and bad command lines -- each asserting what is kept and what the user is told.

Runs go through the real CLI in process under the `smoke` profile (3 steps, checkpoints at steps 2 and 3, test
evaluation at step 3) with the stand-in verifier of the trainer tests, and are compared with one uninterrupted run.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import rlsd.trainer as T
from rlsd import checkpoint as ckpt
from rlsd.config import make_config
from trainer_helpers import (assert_same_records, assert_same_state, checkpoint, cli_main, cli_train,
                             even_length_rewards, read_jsonl)

REPO = Path(__file__).resolve().parents[1]


class Kill(BaseException):
    """A kill: BaseException, so no `except Exception` in the code under test can swallow it."""


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_stand_in_reward():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(T, "score_batch", even_length_rewards)
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def full(tiny_dir, tmp_path_factory):
    """The uninterrupted reference run (3 steps)."""
    out = tmp_path_factory.mktemp("full") / "run"
    assert cli_train("rlsd", out, tiny_dir) == 0
    return out


def assert_same_run(a: Path, b: Path, stopped_at: int | None = None):
    """Same logs, checkpoint and nothing beside it; a run stopped at `stopped_at` also evaluated there."""
    for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
        records = [r for r in read_jsonl(b / name) if name == "metrics.jsonl" or r["step"] != stopped_at]
        assert_same_records(read_jsonl(a / name), records)
    assert_same_state(checkpoint(a), checkpoint(b))
    assert sorted(p.name for p in b.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]


def snapshot(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------- kills during a checkpoint write


@pytest.mark.parametrize("save_index", [1, 2])
@pytest.mark.parametrize("point", ["files", "written", "moved_old", "moved_new"])
def test_kill_at_each_point_of_a_checkpoint_write_loses_nothing(point, save_index, full, tiny_dir, tmp_path,
                                                               monkeypatch):
    calls = []

    def hook(where):
        calls.append(where)
        if where == point and calls.count(point) == save_index:
            raise Kill(point)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(T.Trainer, "checkpoint_hook", staticmethod(hook))
        with pytest.raises(Kill):
            cli_train("rlsd", out, tiny_dir)
    complete = ckpt.complete_checkpoints(out)
    newest = 2 if save_index == 1 else 3
    expected_newest = newest if point != "files" else newest - 1 if save_index == 2 else None
    if expected_newest is None:
        assert complete == []  # killed inside the very first write: nothing complete yet
    else:
        assert ckpt.complete_step(complete[0]) == expected_newest

    assert cli_train("rlsd", out, tiny_dir) == 0  # the rerun continues from the newest complete checkpoint
    assert_same_run(full, out)


def test_kill_before_the_first_checkpoint_leaves_no_duplicate_records(full, tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_update = T.Trainer.update

    def update(self, batch):
        if self.step == 1:
            raise Kill("step 2")
        return real_update(self, batch)

    with monkeypatch.context() as m:
        m.setattr(T.Trainer, "update", update)
        with pytest.raises(Kill):
            cli_train("rlsd", out, tiny_dir)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1]
    assert cli_train("rlsd", out, tiny_dir) == 0  # from scratch: the stale step-1 record is dropped first
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert_same_run(full, out)


def test_a_partial_last_log_line_is_dropped_on_resume(full, tiny_dir, tmp_path):
    out = tmp_path / "run"
    assert cli_train("rlsd", out, tiny_dir, "steps=2") == 0
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "reward_mean": 0.')  # a kill in the middle of a write
    assert cli_train("rlsd", out, tiny_dir) == 0
    assert_same_run(full, out, stopped_at=2)


# -------------------------------------------------------------------------------- files a user may have received


class Payload:
    """Unpickling this calls open(path, 'w'): a stand-in for arbitrary code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_pickle_in_a_checkpoint_is_never_executed(tiny_dir, tmp_path, capsys):
    out, proof = tmp_path / "run", tmp_path / "code-ran"
    assert cli_train("rlsd", out, tiny_dir, "steps=2") == 0
    state = ckpt.load_state(out / "checkpoint")
    torch.save({**state, "payload": Payload(proof)}, out / "checkpoint" / "state.pt")
    before = snapshot(out)
    capsys.readouterr()

    assert cli_train("rlsd", out, tiny_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint/state.pt" in err[0] and "cannot be loaded safely" in err[0], err
    assert not proof.exists()
    assert snapshot(out) == before  # nothing renamed, rewritten or deleted


def test_no_unsafe_load_anywhere_in_the_package():
    offenders = []
    for path in (REPO / "rlsd").rglob("*.py"):
        text = path.read_text()
        for needle in ("weights_only=False", "import pickle", "pickle.load", "trust_remote_code=True",
                       "dill", "joblib.load", " eval(", "exec("):
            if needle in text:
                offenders.append(f"{path.relative_to(REPO)}: {needle}")
    assert offenders == []


def test_model_extra_cannot_switch_on_remote_code():
    with pytest.raises(ValueError, match="model.extra"):
        make_config("smoke", [{"model": {"extra": {"trust_remote_code": True}}}])


def test_a_corrupt_checkpoint_is_named_and_the_older_one_is_used(full, tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_train("rlsd", out, tiny_dir, "steps=2") == 0
    shutil.copytree(out / "checkpoint", tmp_path / "step2")
    assert cli_train("rlsd", out, tiny_dir) == 0
    shutil.move(tmp_path / "step2", out / "checkpoint.old")  # as a kill after step 2 of a write would leave it
    data = (out / "checkpoint" / "state.pt").read_bytes()
    (out / "checkpoint" / "state.pt").write_bytes(data[: len(data) // 2])  # torn
    capsys.readouterr()

    assert cli_train("rlsd", out, tiny_dir) == 0
    captured = capsys.readouterr().out
    assert "skipping an unusable checkpoint" in captured and "checkpoint/state.pt" in captured
    assert_same_records(read_jsonl(full / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl"))
    assert_same_records(read_jsonl(full / "eval.jsonl"), [r for r in read_jsonl(out / "eval.jsonl") if r["step"] == 3])
    assert_same_state(checkpoint(full), checkpoint(out))  # step 3 recomputed from step 2
    assert (out / "checkpoint.corrupt" / "state.pt").read_bytes() == data[: len(data) // 2]  # kept for inspection


def test_every_checkpoint_corrupt_stops_naming_them(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_train("rlsd", out, tiny_dir, "steps=2") == 0
    (out / "checkpoint" / "state.pt").write_bytes(b"not a zip file")
    before = snapshot(out)
    capsys.readouterr()
    assert cli_train("rlsd", out, tiny_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no usable checkpoint" in err[0] and "state.pt" in err[0]
    assert snapshot(out) == before  # did not restart from step 0 over the old logs


# ------------------------------------------------------------------------------------- a changed configuration


@pytest.mark.parametrize("override, field", [("lr=2e-5", "lr"), ("rlsd_lam0=0.3", "rlsd_lam0"),
                                             ("model.lora_rank=4", "model.lora_rank"), ("seed=1", "seed")])
def test_resume_refuses_a_changed_configuration_and_touches_nothing(override, field, tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_train("rlsd", out, tiny_dir, "steps=2") == 0
    before = snapshot(out)
    capsys.readouterr()
    assert cli_train("rlsd", out, tiny_dir, override, "tensorboard=true") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{field}:" in err[0], err
    assert snapshot(out) == before and not (out / "tensorboard").exists()


def test_resume_may_change_the_length_and_the_logging(full, tiny_dir, tmp_path):
    out = tmp_path / "run"
    assert cli_train("rlsd", out, tiny_dir, "steps=2", "save_every=1", "samples_per_eval=1") == 0
    assert cli_train("rlsd", out, tiny_dir) == 0
    assert_same_run(full, out, stopped_at=2)
    assert cli_train("rlsd", out, tiny_dir, "steps=4", "micro_batch_size=4", "rollout_batch_size=2") == 0


# ---------------------------------------------------------------------------------------------- NaN and inf


@pytest.mark.parametrize("override, field", [
    ("grad_clip=nan", "grad_clip"), ("grad_clip=0", "grad_clip"), ("grad_clip=-1", "grad_clip"),
    ("lr=inf", "lr"), ("lr=nan", "lr"), ("lr=-1", "lr"), ("weight_decay=nan", "weight_decay"),
    ("temperature=inf", "temperature"), ("rlsd_clip_eps=nan", "rlsd_clip_eps"), ("eps_low=1.5", "eps_low"),
    ("model.lora_dropout=nan", "model.lora_dropout"), ("grpo_opsd_mu=inf", "grpo_opsd_mu"),
])
def test_non_finite_or_out_of_range_numbers_are_refused(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make_config("smoke", [override], method="rlsd")


def test_a_non_finite_gradient_after_clipping_skips_the_step(tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_clip = None

    def clip_then_poison(self, params, max_norm):
        params = list(params)
        norm = real_clip(self, params, max_norm)
        if T_step[0] == 1:  # the second step: one gradient turns NaN after the norm was taken
            next(p for p in params if p.grad is not None).grad.view(-1)[0] = float("nan")
        T_step[0] += 1
        return norm

    from accelerate import Accelerator

    T_step = [0]
    real_clip = Accelerator.clip_grad_norm_
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", clip_then_poison)
    assert cli_train("rlsd", out, tiny_dir) == 0
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["skipped"] for r in records] == [False, True, False]
    assert [r["skipped_steps"] for r in records] == [0, 1, 1]
    state = checkpoint(out)
    assert state["skipped_steps"] == 1
    assert all(torch.isfinite(t).all() for t in state["trainable"].values())


def test_parameters_turning_non_finite_stop_the_run_before_a_checkpoint(tiny_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_step = torch.optim.AdamW.step
    calls = [0]

    def step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 2:  # the optimizer itself produces a NaN (e.g. an overflowing second moment)
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    capsys.readouterr()
    assert cli_train("rlsd", out, tiny_dir) == 2
    captured = capsys.readouterr().err
    err = [line for line in captured.splitlines() if line.startswith("error:")]  # after the progress bars
    assert len(err) == 1 and "step 2" in err[0] and "non-finite" in err[0] and "Traceback" not in captured
    assert ckpt.complete_checkpoints(out) == []  # the step-2 checkpoint was never written
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1]


# ------------------------------------------------------------------------------------------------ command line


def one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Loading weights" not in captured.err  # refused before the model loaded
    return lines[0]


@pytest.mark.parametrize("extra, needle", [
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["lrr=1e-5"], "did you mean 'lr'"),
    (["model.lora_rnak=8"], "did you mean 'lora_rank'"),
    (["steps=abc"], "'steps' expects int"),
    (["lr=-1"], "TrainConfig.lr must be in (0, 1]"),
])
def test_bad_command_lines_get_one_line(extra, needle, tmp_path, capsys):
    line = one_line_error(capsys, ["train", "--method", "rlsd", "--out", str(tmp_path / "run"),
                                   "--profile", "smoke", *extra])
    assert needle in line
    assert not (tmp_path / "run").exists()


def test_out_problems_are_reported_before_the_model_loads(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    for out in (a_file, a_file / "sub"):
        line = one_line_error(capsys, ["train", "--method", "rlsd", "--profile", "smoke", "--out", str(out)])
        assert str(a_file) in line
    assert a_file.read_text() == "keep me"


def test_help_config_prints_the_resolved_profile_and_run_directory(capsys):
    capsys.readouterr()
    assert cli_main(["train", "--profile", "smoke", "--help-config", "method=grpo", "seed=3", "lr=3e-5"]) == 0
    out = capsys.readouterr().out
    assert 'out = "runs/smoke/grpo-s3"' in out  # the resolved method and seed, not None-s0
    assert "steps = 3" in out and "lr = 3e-05" in out  # the profile's and the override's values, not the defaults
    assert "model.freeze_vision = true" in out and "model.lora_rank = 0" in out
    assert "LoRA rank" in out  # docstrings of the model fields too


def test_checkpoint_writer_never_deletes_the_only_complete_checkpoint(tmp_path):
    """The pure layer, without a model: every kill point of two consecutive writes leaves a complete newest."""
    for point in ("files", "written", "moved_old", "moved_new"):
        out = tmp_path / point
        out.mkdir()
        ckpt.write_checkpoint(out, 1, {"step": 1}, "{}", lambda d: None)

        def hook(where):
            if where == point:
                raise Kill

        with pytest.raises(Kill):
            ckpt.write_checkpoint(out, 2, {"step": 2}, "{}", lambda d: None, hook=hook)
        ckpt_dir, state, problems = ckpt.find_resumable(out)
        assert state["step"] == (1 if point == "files" else 2) and problems == []
        ckpt.settle(out, ckpt_dir)
        assert sorted(os.listdir(out)) == ["checkpoint"]
        assert json.loads((out / "checkpoint" / ckpt.MARKER).read_text())["step"] == state["step"]


@pytest.mark.parametrize("content, needle", [
    (b"", "empty"),
    (b'{"question": "q", "answer": "1"}\n\xff\xfe\n', "row 1"),
    (b'{"question": "q", "answer": NaN}\n', "answer"),
    (b'{"question": "q", "answer": "1", "images": "a.png"}\n', "images"),
])
def test_bad_training_data_is_one_line_before_the_run_directory_exists(content, needle, tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_bytes(content)
    out = tmp_path / "run"
    line = one_line_error(capsys, ["train", "--method", "rlsd", "--profile", "smoke", "--out", str(out),
                                   f"data={data}", "eval_every=0"])
    assert "train.jsonl" in line and needle in line, line
    assert not out.exists()
