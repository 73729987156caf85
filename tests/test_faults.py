"""Fault injection: kills at every point of a checkpoint write, crafted and corrupt files, changed configurations,
NaN/inf, and bad command lines -- each asserting what is kept and what the user is told.

Runs go through the real CLI in process under the `smoke` profile (3 steps, checkpoints at steps 2 and 3, test
evaluation at step 3) with the stand-in verifier of the trainer tests, and are compared with one uninterrupted run.
"""

import errno
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


# ----------------------------------------------------------------- second round: adapters, interrupts, disks, locks


@pytest.fixture(scope="module")
def adapter(tiny_dir, tmp_path_factory):
    """A LoRA adapter (rank 2) of the tiny model, as `save_pretrained` writes it."""
    from rlsd.model import ModelSpec, load_policy

    model, _ = load_policy(ModelSpec(path=str(tiny_dir), lora_rank=2))
    path = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(str(path))
    return path


def spoil_adapter(path: Path, how: str):
    from safetensors.torch import load_file, save_file

    weights = path / "adapter_model.safetensors"
    if how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[:len(data) // 2])
    elif how == "rank":  # the config says one rank, the weights hold another
        config = json.loads((path / "adapter_config.json").read_text())
        (path / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))
    elif how == "base":  # trained on a model of another width: every lora_A has one more input column
        tensors = load_file(str(weights))
        save_file({k: torch.cat([v, v[:, :1]], 1) if ".lora_A." in k else v for k, v in tensors.items()},
                  str(weights))
    elif how == "targets":  # a module this model does not have
        tensors = load_file(str(weights))
        save_file({k.replace("q_proj", "qkv_fused"): v for k, v in tensors.items()}, str(weights))
    elif how == "missing":
        weights.unlink()


def evaluate_argv(model, *extra):
    return ["evaluate", "--model", str(model), "--n", "2", "--max-new-tokens", "4", "--json", *extra]


@pytest.mark.parametrize("how, needle, before_load", [
    ("truncated", "adapter_model.safetensors is incomplete or corrupt", True),
    ("missing", "adapter_model.safetensors is missing", True),
    ("rank", "r: ", False),
    ("base", "base model (in/out features)", False),
    ("targets", "target_modules", False),
])
def test_a_faulty_adapter_is_one_line_naming_it_and_what_differs(how, needle, before_load, adapter, tiny_dir,
                                                                 tmp_path, capsys):
    bad = tmp_path / "adapter"
    shutil.copytree(adapter, bad)
    spoil_adapter(bad, how)
    capsys.readouterr()
    assert cli_main(evaluate_argv(tiny_dir, "--adapter", str(bad))) == 2
    captured = capsys.readouterr().err
    assert ("Loading weights" not in captured) == before_load  # file faults: refused before the model loads
    err = [line for line in captured.strip().splitlines() if not line.startswith("Loading weights")]
    assert len(err) == 1 and err[0].startswith("error: adapter ") and str(bad) in err[0] and needle in err[0], err


def test_evaluate_takes_a_good_adapter(adapter, tiny_dir, capsys):
    capsys.readouterr()
    assert cli_main(evaluate_argv(tiny_dir, "--adapter", str(adapter))) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 2


def test_benchmark_checks_the_adapter_before_the_data(adapter, tmp_path):
    from rlsd.benchmarks.run import BenchmarkRunError, check_adapter

    bad = tmp_path / "adapter"
    shutil.copytree(adapter, bad)
    spoil_adapter(bad, "truncated")
    with pytest.raises(BenchmarkRunError, match=f"--adapter {bad}: adapter_model.safetensors is incomplete"):
        check_adapter(bad)
    assert check_adapter(adapter) == adapter


def test_pickled_model_weights_are_refused_naming_the_file(tiny_dir, tmp_path, capsys):
    model, proof = tmp_path / "model", tmp_path / "code-ran"
    shutil.copytree(tiny_dir, model)
    for f in model.glob("*.safetensors"):
        f.unlink()
    torch.save({"payload": Payload(proof)}, model / "pytorch_model.bin")
    line = one_line_error(capsys, evaluate_argv(model))
    assert str(model / "pytorch_model.bin") in line and "pickled weights are refused" in line
    assert not proof.exists()


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_end_in_one_line_and_resume(signum, full, tiny_dir, tmp_path, monkeypatch, capsys):
    import signal

    out = tmp_path / "run"
    real_update = T.Trainer.update

    def update(self, batch):
        if self.step == 2:  # after the checkpoint of step 2
            os.kill(os.getpid(), getattr(signal, signum))
        return real_update(self, batch)

    def unexpected(*args):
        raise Kill("SIGTERM reached the test's handler: the CLI did not handle it")

    previous = signal.signal(signal.SIGTERM, unexpected)
    try:
        with monkeypatch.context() as m:
            m.setattr(T.Trainer, "update", update)
            capsys.readouterr()
            assert cli_train("rlsd", out, tiny_dir) == 130
        assert signal.getsignal(signal.SIGTERM) is unexpected  # the CLI puts the caller's handler back
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [line for line in err.splitlines() if line.startswith("error")] == [
        f"error: {out}: interrupted at step 3 (last checkpoint: step 2); the same command resumes"], err
    assert err.rstrip().endswith("the same command resumes")  # the last line printed
    assert [ckpt.complete_step(c) for c in ckpt.complete_checkpoints(out)] == [2]
    assert not (out / "run.lock").exists()
    assert cli_train("rlsd", out, tiny_dir) == 0
    assert_same_run(full, out)


@pytest.fixture(scope="module")
def two_steps(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    assert cli_train("rlsd", out, tiny_dir, "steps=2") == 0
    return out


@pytest.mark.parametrize("edit, needle", [
    (lambda d: '{"method": "rlsd", "steps": ', "not valid JSON"),
    (lambda d: json.dumps({**d, "stepz": 3}), "unknown key 'stepz'"),
    (lambda d: json.dumps({**d, "model": {**d["model"], "lora_rnak": 8}}), "unknown key 'model.lora_rnak'"),
    (lambda d: json.dumps([d]), "expected a JSON object"),
    (lambda d: json.dumps({**d, "lr": 0.5}), "records another configuration (lr: 0.5 -> 1e-05)"),
])
def test_an_edited_run_config_is_refused_and_left_as_it_is(edit, needle, two_steps, tmp_path, tiny_dir, capsys):
    out = tmp_path / "run"
    shutil.copytree(two_steps, out)
    (out / "config.json").write_text(edit(json.loads((out / "config.json").read_text())))
    before = snapshot(out)
    line = one_line_error(capsys, ["train", "--method", "rlsd", "--profile", "smoke", "--seed", "0", "--out",
                                   str(out), f"model.path={tiny_dir}", "tensorboard=false", "weight_decay=0",
                                   "steps=2"])
    assert str(out / "config.json") in line and needle in line, line
    assert snapshot(out) == before


def test_the_run_config_is_not_rewritten_unless_the_command_line_changes_it(two_steps, tmp_path, tiny_dir, capsys):
    out = tmp_path / "run"
    shutil.copytree(two_steps, out)
    mine = json.dumps({**json.loads((out / "config.json").read_text()), "out": str(out)}, indent=4)  # own format
    (out / "config.json").write_text(mine)
    assert cli_train("rlsd", out, tiny_dir, "steps=2") == 0
    assert (out / "config.json").read_text() == mine
    capsys.readouterr()
    assert cli_train("rlsd", out, tiny_dir, "steps=3") == 0  # asked for: the record follows, and says so
    assert json.loads((out / "config.json").read_text())["steps"] == 3
    assert f"{out / 'config.json'}: updated as the command line asks (steps)" in capsys.readouterr().out


def error_after_progress(capsys, argv, code=2) -> str:
    """Run the CLI: exit `code`, no traceback, one error line and it is the last printed (progress bars before it)."""
    capsys.readouterr()
    assert cli_main(argv) == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert "Traceback" not in err and len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    return errors[0]


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_a_checkpoint_is_one_line_and_loses_nothing(full, tiny_dir, tmp_path, monkeypatch,
                                                                       capsys):
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):  # the second checkpoint (step 3) finds the disk full half-way
        calls.append(f)
        if len(calls) == 2:
            Path(f).write_bytes(b"partial")
            enospc()
        return real_save(obj, f, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(ckpt.torch, "save", save)
        line = error_after_progress(capsys, ["train", "--method", "rlsd", "--profile", "smoke", "--seed", "0", "--out",
                                       str(out), f"model.path={tiny_dir}", "tensorboard=false", "weight_decay=0"])
    assert line == (f"error: {out}: no space left on device while writing the checkpoint of step 3; "
                    f"{out / 'checkpoint'} (step 2) is intact; free space and rerun the same command")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    assert not (out / "run.lock").exists()
    assert cli_train("rlsd", out, tiny_dir) == 0
    assert_same_run(full, out, stopped_at=None)


class HalfWrite:
    """open() whose files write half of what they are given, then report a full disk."""

    def __init__(self, names):
        self.names, self.real = names, open

    def __call__(self, path, mode="r", *args, **kwargs):
        handle = self.real(path, mode, *args, **kwargs)
        if Path(path).name not in self.names or "r" in mode:
            return handle
        real_write = handle.write

        def write(text):
            real_write(text[:len(text) // 2])
            handle.flush()
            enospc()

        handle.write = write
        return handle


def test_a_full_disk_during_a_log_write_leaves_no_partial_line(two_steps, tmp_path, tiny_dir, monkeypatch, capsys):
    import rlsd.files

    out = tmp_path / "run"
    shutil.copytree(two_steps, out)
    metrics = (out / "metrics.jsonl").read_bytes()
    with monkeypatch.context() as m:
        m.setattr(rlsd.files, "open", HalfWrite({"metrics.jsonl"}), raising=False)
        line = error_after_progress(capsys, ["train", "--method", "rlsd", "--profile", "smoke", "--seed", "0", "--out",
                                       str(out), f"model.path={tiny_dir}", "tensorboard=false", "weight_decay=0"])
    assert line.startswith(f"error: {out}: no space left on device while writing metrics.jsonl; "
                           f"{out / 'checkpoint'} (step 2) is intact"), line
    assert (out / "metrics.jsonl").read_bytes() == metrics  # cut back: steps 1 and 2, no torn step-3 line
    assert ckpt.complete_step(out / "checkpoint") == 2


def test_a_full_disk_while_writing_benchmark_results_keeps_every_finished_one(tmp_path, monkeypatch):
    import rlsd.files
    from rlsd.benchmarks import run as R

    path = tmp_path / "predictions.jsonl"
    R.append_predictions(path, [{"id": "a", "response": "1"}])
    R._write_outputs(tmp_path, {"label": "x", "note": "n", "benchmarks": {}, "row": {"Method": "x", "Avg.": None}})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with monkeypatch.context() as m:
        m.setattr(rlsd.files, "open", HalfWrite({"predictions.jsonl", "table2_row.json.tmp"}), raising=False)
        with pytest.raises(rlsd.files.DiskFullError, match=f"{tmp_path}: no space left on device while writing "
                                                           "predictions.jsonl"):
            R.append_predictions(path, [{"id": "b", "response": "2"}])
        with pytest.raises(rlsd.files.DiskFullError, match="while writing the Table-2 row"):
            R._write_outputs(tmp_path, {"label": "y", "note": "n", "benchmarks": {},
                                        "row": {"Method": "y", "Avg.": None}})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # intact, and no temp file left
    assert R.read_predictions(path) == {"a": "1"}


@pytest.fixture
def live_pid():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def write_lock(out: Path, pid: int):
    import socket

    out.mkdir(parents=True, exist_ok=True)
    (out / "run.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": 0.0,
                                              "command": "train"}))


def test_a_second_run_on_a_directory_is_refused_naming_the_holder(live_pid, two_steps, tmp_path, tiny_dir, capsys):
    out = tmp_path / "run"
    shutil.copytree(two_steps, out)
    write_lock(out, live_pid)
    before = snapshot(out)
    line = one_line_error(capsys, ["train", "--method", "rlsd", "--profile", "smoke", "--seed", "0", "--out",
                                   str(out), f"model.path={tiny_dir}", "tensorboard=false", "weight_decay=0"])
    assert f"{out}: in use by another train (PID {live_pid} on " in line, line
    assert snapshot(out) == before


def test_a_lock_left_by_a_killed_run_is_taken_over(two_steps, tmp_path, tiny_dir):
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its PID now names no process: the holder was kill -9'd
    out = tmp_path / "run"
    shutil.copytree(two_steps, out)
    write_lock(out, gone.pid)
    assert cli_train("rlsd", out, tiny_dir) == 0
    assert ckpt.complete_step(out / "checkpoint") == 3 and not (out / "run.lock").exists()


def test_the_lock_is_exclusive_and_released(tmp_path, live_pid):
    from rlsd.files import RunLock, RunLockedError

    with RunLock(tmp_path / "d", "benchmark") as lock:
        record = json.loads(lock.path.read_text())
        assert record["pid"] == os.getpid() and record["command"] == "benchmark"
    assert not (tmp_path / "d" / "run.lock").exists()
    write_lock(tmp_path / "d", live_pid)
    with pytest.raises(RunLockedError, match=f"PID {live_pid}"):
        RunLock(tmp_path / "d", "benchmark").acquire()
    (tmp_path / "d" / "run.lock").write_text('{"pid": ')  # torn by a kill while written: taken over
    with RunLock(tmp_path / "d", "train"):
        pass


def long_row_data(tmp_path: Path, n_chars: int) -> Path:
    data = tmp_path / "train.jsonl"
    rows = [{"id": f"r{i}", "question": f"What is {i} plus 1?", "answer": str(i + 1)} for i in range(6)]
    rows[3]["question"] = "How many? " + "word " * (n_chars // 5)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def test_a_too_long_prompt_is_refused_by_row_with_bounded_work(tmp_path, tiny_dir, capsys, monkeypatch):
    import transformers

    data, out = long_row_data(tmp_path, 200_000), tmp_path / "run"
    real, seen = transformers.AutoTokenizer.from_pretrained, []

    def spy_tokenizer(*args, **kwargs):  # records the length of every text tokenized
        tok = real(*args, **kwargs)
        call = type(tok).__call__
        type(tok).__call__ = lambda self, text, *a, **k: (seen.append(len(text)), call(self, text, *a, **k))[1]
        monkeypatch.setattr(type(tok), "__call__", type(tok).__call__)
        return tok

    with monkeypatch.context() as m:
        m.setattr(transformers.AutoTokenizer, "from_pretrained", spy_tokenizer)
        line = one_line_error(capsys, ["train", "--method", "rlsd", "--profile", "smoke", "--out", str(out),
                                       f"model.path={tiny_dir}", f"data={data}", "eval_problems=2",
                                       "max_prompt_tokens=100"])
    assert f"{data}: problem 'r3': the question is at least" in line and "over max_prompt_tokens=100" in line, line
    assert max(seen) <= 100 * 16 + 1  # never the whole 200,000 characters
    assert not out.exists()


def test_the_default_prompt_limit_comes_from_the_context_and_truncation_is_opt_in(tmp_path, tiny_dir, capsys):
    data = long_row_data(tmp_path, 200_000)
    line = one_line_error(capsys, ["train", "--method", "rlsd", "--profile", "smoke", "--out", str(tmp_path / "a"),
                                   f"model.path={tiny_dir}", f"data={data}", "eval_problems=2"])
    # the tiny model: 4,096 positions - 32 response tokens - a 1,024-token image - 64 for the template
    assert "problem 'r3'" in line and "over max_prompt_tokens=2976" in line, line
    problems = [T.Problem(id="x", question="word " * 10_000, answer="1", images=[])]
    from transformers import AutoTokenizer

    from rlsd.data import limit_prompt_lengths

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    assert limit_prompt_lengths(problems, tok, 50, "truncate") == 1
    assert len(tok(problems[0].question, add_special_tokens=False)["input_ids"]) <= 50


def test_sampling_is_seeded_per_item_so_any_batch_size_gives_the_same_responses(tiny_dir):
    import dataclasses

    from rlsd.evaluate import evaluate
    from rlsd.model import ModelSpec, load_policy
    from rlsd.rollout import VALIDATION_SAMPLING
    from rlsd.testbed import load_splits

    model, processor = load_policy(ModelSpec(path=str(tiny_dir)))
    _, _, test = load_splits(n_train=0, n_val=None, n_test=8)
    sampling = dataclasses.replace(VALIDATION_SAMPLING, max_new_tokens=12)
    kw = dict(sampling=sampling, progress=False, per_item_seeds=True)
    runs = {b: evaluate(model, processor, test, seed=0, batch_size=b, **kw).responses for b in (1, 3, 8)}
    assert runs[1] == runs[3] == runs[8]
    # a resumed run (the last 5 items only) draws what the whole run drew for them
    assert evaluate(model, processor, test[3:], seed=0, batch_size=2, **kw).responses == runs[8][3:]
    other = evaluate(model, processor, test, seed=1, batch_size=8, **kw).responses
    assert other != runs[8]  # the seed still matters
    # the default keeps the committed logs' one-stream sampling: its responses DO depend on the batch size
    default = {b: evaluate(model, processor, test, sampling=sampling, seed=0, batch_size=b, progress=False).responses
               for b in (1, 8)}
    assert default[1] != default[8]


def test_a_resumed_benchmark_reproduces_its_responses_at_any_batch_size(tmp_path, monkeypatch, live_pid):
    from test_benchmark_cli import build_data_dir, tiny_config
    from test_benchmarks import SHARED

    from rlsd.benchmarks import run as R
    from rlsd.files import RunLockedError

    if not SHARED.is_dir():  # build_data_dir copies real annotation rows from there, as the other benchmark tests
        pytest.skip(f"real benchmark files not found at {SHARED}")

    data_dir, cache = build_data_dir(tmp_path / "data"), tmp_path / "cache"
    options = dict(benchmarks=("mathvista",), limit=3, max_new_tokens=12)
    whole, out = tmp_path / "whole", tmp_path / "resumed"
    R.run_benchmarks(tiny_config(data_dir, cache, whole, batch_size=3, **options))
    real, calls = R.append_predictions, []

    def append_then_interrupt(path, records):  # Ctrl-C after the first batch was written
        real(path, records)
        calls.append(path)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(R, "append_predictions", append_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            R.run_benchmarks(tiny_config(data_dir, cache, out, batch_size=1, **options))
    assert not (out / "run.lock").exists()
    resumed = R.run_benchmarks(tiny_config(data_dir, cache, out, batch_size=2, **options))
    assert resumed["generated"]["mathvista/testmini"] == 2
    name = "predictions/mathvista.testmini.jsonl"
    assert R.read_predictions(out / name) == R.read_predictions(whole / name)

    write_lock(out, live_pid)  # a second benchmark on a directory in use
    with pytest.raises(RunLockedError, match=f"{out}: in use by another train \\(PID {live_pid} "):
        R.run_benchmarks(tiny_config(data_dir, cache, out, batch_size=2, **options))
