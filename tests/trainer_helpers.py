"""Helpers shared by the trainer and fault-injection tests: the real CLI in process, log and checkpoint readers,
and record/state comparisons."""

import json
from pathlib import Path

import pytest
import torch

from rlsd.__main__ import main as cli_main
from rlsd.config import make_config
from rlsd.verifier import VerifyResult

UNTIMED = lambda k: not k.startswith("time_") and k != "peak_mem_mb"  # noqa: E731  (keys resume must reproduce)


def even_length_rewards(responses, answers, *args, **kwargs):
    """Stand-in verifier: reward 1 for responses of even length (deterministic, gives groups reward variance)."""
    assert len(responses) == len(answers)
    return [VerifyResult(reward=float(len(r) % 2 == 0), extracted=None, format_ok=False, timed_out=False)
            for r in responses]


def cli_train(method, out, tiny_dir, *overrides, seed=0):
    """The real entry point, in process: python -m rlsd train --method M --profile smoke ... key=value..."""
    return cli_main(["train", "--method", method, "--profile", "smoke", "--seed", str(seed), "--out", str(out),
                     f"model.path={tiny_dir}", "tensorboard=false", "weight_decay=0", *overrides])


def smoke_config(method, out, tiny_dir, *overrides, **fields):
    return make_config("smoke", [f"model.path={tiny_dir}", "tensorboard=false", "weight_decay=0", *overrides],
                       method=method, out=str(out), **fields)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def checkpoint(out):
    return torch.load(Path(out) / "checkpoint" / "state.pt", map_location="cpu", weights_only=True)


def changed(before: dict, after: dict) -> list[str]:
    return [n for n in before if not torch.equal(before[n], after[n])]


def assert_same_records(a: list[dict], b: list[dict]):
    """Same records, all fields except timings/memory equal (floats to 1e-6)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for k in filter(UNTIMED, ra):
            if isinstance(ra[k], float) and isinstance(rb[k], float):
                assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-6, nan_ok=True), (ra["step"], k)
            else:
                assert ra[k] == rb[k], (ra["step"], k)


def assert_same_state(a: dict, b: dict):
    assert a["step"] == b["step"] and a["skipped_steps"] == b["skipped_steps"]
    assert set(a["trainable"]) == set(b["trainable"])
    for n in a["trainable"]:
        torch.testing.assert_close(a["trainable"][n], b["trainable"][n], rtol=0, atol=1e-7, msg=n)
    if a["teacher"] is not None and a["teacher"]["copies"] is not None:
        for ca, cb in zip(a["teacher"]["copies"], b["teacher"]["copies"]):
            torch.testing.assert_close(ca, cb, rtol=0, atol=1e-7)
