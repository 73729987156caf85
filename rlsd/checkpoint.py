"""Run directories that survive a kill at any instant, and resume that never executes what it reads.

A run directory holds:

    config.json        the run's configuration: the user's record, checked on every start (`read_run_config`:
                       malformed, an unknown key or another value is refused) and rewritten only when the command
                       line changes a field a resume may change
    run.lock           the PID, host and start time of the run writing here (rlsd.files.RunLock)
    metrics.jsonl      one record per optimizer step      \
    eval.jsonl         one record per test evaluation      }  truncated to the resumed step on every start
    samples.jsonl      decoded samples per evaluation     /
    checkpoint/        the newest complete checkpoint: state.pt, config.json, COMPLETE, adapter/ or model/

Writing a checkpoint (`write_checkpoint`), with a kill possible between any two lines:

    1. checkpoint.tmp/ is filled; every file is fsynced; COMPLETE (holding the step) is written LAST
    2. checkpoint/ -> checkpoint.old/        (a kill here leaves .tmp and .old, both complete)
    3. checkpoint.tmp/ -> checkpoint/        (a kill here leaves checkpoint/ and .old, both complete)
    4. checkpoint.old/ is removed

A failure while checkpoint.tmp/ is filled (before its marker) removes it; out of space it is `DiskFullError`, one
line naming the directory and the intact checkpoint.

On start (`settle`), the newest complete directory among checkpoint/, checkpoint.tmp/ and checkpoint.old/ is
promoted to checkpoint/ and the others are removed only after that, so the only complete checkpoint is never
deleted. A directory counts as complete when it has its COMPLETE marker (checkpoints written before the marker
existed count when their state.pt is present, since they only ever reached checkpoint/ by a rename).

Loading (`load_state`): `torch.load(weights_only=True)` -- tensors, numbers, strings and containers only; a crafted
pickle cannot run code. A file that does not load is named in the error and the next-older complete checkpoint is
tried.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from rlsd.files import CheckpointError, disk_full, disk_full_error, write_text

NAMES = ("checkpoint", "checkpoint.tmp", "checkpoint.old")
MARKER = "COMPLETE"
LOG_FILES = ("metrics.jsonl", "eval.jsonl", "samples.jsonl")


def _fsync_tree(root: Path):
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def complete_step(ckpt: Path) -> int | None:
    """The step a complete checkpoint directory holds, or None if it is incomplete (or absent)."""
    marker = ckpt / MARKER
    if marker.is_file():
        try:
            return int(json.loads(marker.read_text())["step"])
        except (ValueError, KeyError, TypeError, OSError):
            return None
    if ckpt.name == "checkpoint" and (ckpt / "state.pt").is_file():
        return -1  # written before markers existed: complete (it got here by a rename), step read on load
    return None


def complete_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoint directories under `out`, newest first."""
    found = [(complete_step(out / name), i, out / name) for i, name in enumerate(NAMES)]
    found = [(step, i, path) for step, i, path in found if step is not None]
    return [path for step, i, path in sorted(found, key=lambda x: (-x[0], x[1]))]


def write_checkpoint(out: Path, step: int, state: dict, config_json: str, save_weights, hook=None):
    """Write `state` (tensors/containers only) and the weights (`save_weights(dir)`) as out/checkpoint, atomically.

    `hook(point)` is called between the stages ('files', 'written', 'moved_old', 'moved_new') -- the fault-injection tests
    kill the write there. Expects a settled directory (`settle`): checkpoint/ is the only complete one."""
    hook = hook or (lambda point: None)
    final, tmp, old = (out / n for n in NAMES)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        torch.save(state, tmp / "state.pt")
        (tmp / "config.json").write_text(config_json, encoding="utf-8")
        save_weights(tmp)
        _fsync_tree(tmp)
        hook("files")
        (tmp / MARKER).write_text(json.dumps({"step": step}))
        _fsync_tree(tmp)
    except BaseException as e:  # an incomplete checkpoint.tmp is of no use: remove it now (a kill leaves it to settle)
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(e):
            kept = complete_step(final)
            raise disk_full_error(out, f"the checkpoint of step {step}",
                                  f"{final} (step {kept}) is intact" if kept is not None else
                                  "no earlier checkpoint existed") from None
        raise
    hook("written")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    _fsync_dir(out)
    hook("moved_old")
    os.replace(tmp, final)
    _fsync_dir(out)
    hook("moved_new")
    shutil.rmtree(old, ignore_errors=True)


def find_resumable(out: Path) -> tuple[Path | None, dict | None, list[str]]:
    """(directory, state, problems) of the newest complete checkpoint whose state loads; reads, changes nothing.

    `problems` names every newer checkpoint that was skipped because it did not load. If complete checkpoints
    exist but none loads, CheckpointError names them all (the run stops rather than restarting from step 0)."""
    problems = []
    for ckpt in complete_checkpoints(Path(out)):
        try:
            return ckpt, load_state(ckpt), problems
        except CheckpointError as e:
            problems.append(str(e))
    if problems:
        raise CheckpointError("no usable checkpoint: " + "; ".join(problems))
    return None, None, problems


def settle(out: Path, keep: Path | None):
    """Make `keep` (a complete checkpoint, or None) out/checkpoint, with nothing else beside it.

    Newer checkpoints that failed to load are moved to checkpoint.corrupt/ (kept for inspection); incomplete
    ones are removed. Each step is a rename, so a kill in between leaves `keep` findable by `find_resumable`."""
    out = Path(out)
    final = out / "checkpoint"
    if keep is not None and keep != final:
        if final.exists():
            final_step, keep_step = complete_step(final), complete_step(keep)
            newer = final_step is not None and keep_step is not None and final_step > keep_step
            spare = out / ("checkpoint.corrupt" if newer else "checkpoint.stale")  # newer but passed over: unusable
            shutil.rmtree(spare, ignore_errors=True)
            os.replace(final, spare)
        os.replace(keep, final)
        _fsync_dir(out)
    keep_step = complete_step(final) if keep is not None else None
    for name in NAMES[1:] + ("checkpoint.stale",):
        path = out / name
        if not path.exists():
            continue
        step = complete_step(path)
        if step is not None and keep_step is not None and step > keep_step:  # newer, yet not chosen: unloadable
            corrupt = out / "checkpoint.corrupt"
            shutil.rmtree(corrupt, ignore_errors=True)
            os.replace(path, corrupt)
        else:
            shutil.rmtree(path, ignore_errors=True)
    if keep is None and final.exists() and complete_step(final) is None:
        shutil.rmtree(final, ignore_errors=True)


def read_saved_config(ckpt: Path) -> dict | None:
    """The configuration a checkpoint was written with (JSON; None if it predates config.json in checkpoints)."""
    path = ckpt / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable config ({e})") from None


def read_run_config(path: Path) -> dict | None:
    """A run directory's config.json (the user's record of the run), checked: None if absent; CheckpointError
    naming the file if it is not a JSON object or has a key TrainConfig does not know."""
    import dataclasses

    from rlsd.config import TrainConfig
    from rlsd.model import ModelSpec

    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); restore it or choose another --out") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(record).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    known_model = {f.name for f in dataclasses.fields(ModelSpec)}
    unknown = sorted(set(record) - known) + sorted(f"model.{k}" for k in set(
        record.get("model") if isinstance(record.get("model"), dict) else {}) - known_model)
    if unknown:
        raise CheckpointError(f"{path}: unknown key {unknown[0]!r} (not a TrainConfig field); restore the file or "
                              "choose another --out")
    return record


def load_state(ckpt: Path) -> dict:
    """state.pt of a checkpoint, loaded without unpickling arbitrary objects."""
    path = ckpt / "state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, a pickle asking for a global: all mean "not usable"
        raise CheckpointError(f"{path}: cannot be loaded safely ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a training state (no 'step')")
    return state


def truncate_logs(out: Path, step: int, names: tuple[str, ...] = LOG_FILES) -> dict[str, int]:
    """Keep only records with record['step'] <= step in each log; a partial or corrupt line is dropped.

    Rewritten atomically (temp file + rename). Returns the number of lines dropped per file."""
    dropped = {}
    for name in names:
        path = out / name
        if not path.exists():
            continue
        keep, n_drop = [], 0
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                ok = isinstance(record, dict) and int(record["step"]) <= step
            except (ValueError, KeyError, TypeError):
                ok = False  # a line cut by a kill mid-write
            if ok:
                keep.append(line)
            else:
                n_drop += 1
        if n_drop:
            write_text(path, "".join(line + "\n" for line in keep))
        dropped[name] = n_drop
    return dropped


def check_run_dir(out: Path):
    """Fail now (OSError naming the path) if `out` cannot be a run directory; creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: --out exists and is not a directory")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise NotADirectoryError(f"{out}: cannot create the run directory, {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{out}: cannot write the run directory ({probe} is not writable)")
