"""Step-time benchmark: every method on the SAME rollout batch, split by phase.

    python -m rlsd bench --profile smoke --json

The paper's cost claim is "one extra forward pass": RLSD's step should cost GRPO's plus one no-grad forward of the
batch under the teacher prompt. We report

    rlsd_over_grpo              RLSD step time / GRPO step time (rollout + update)
    rlsd_overhead_over_forward  (RLSD step - GRPO step) / one no-grad forward of the batch  (paper: ~1;
                                this project targets <= 0.6 with shared prompts)

The unit forward runs every row's prompt + response (unshared); `no_grad_forward_shared_s` is the same forward with
each group's prompt run once (`rlsd.scoring.SHARE_PROMPTS`, which the trainer uses).

Methods are timed in alternating order over `repeats` rounds (medians reported), so drift in machine speed hits all
methods alike. The rollout is the same for every method (the update phases all run on the first rollout batch), so
its time is too; with `compare_sharing` it is timed with and without the shared prefill (`rlsd.rollout`).
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from rlsd.config import METHODS, make_config
from rlsd.inputs import row_chunks
from rlsd import scoring
from rlsd.scoring import score_responses


def _median(xs):
    return statistics.median(xs) if xs else 0.0


def run_bench(profile: str = "smoke", overrides: list[str] | None = None, repeats: int = 5,
              methods=METHODS, compare_sharing: bool = False) -> dict:
    """The phase split and ratios above; `compare_sharing` also times every method with prompts unshared
    (alternating with the shared runs), reported under keys ending in `_unshared` (or `_shared`)."""
    from rlsd.trainer import Trainer

    trainers = {}
    try:
        for method in methods:
            cfg = make_config(profile, overrides, method=method, out=f"/tmp/rlsd-bench/{method}", tensorboard=False,
                              eval_every=0, save_every=0)
            trainers[method] = Trainer(cfg, progress=False)
        return _time_phases(trainers, profile, repeats, methods, compare_sharing)
    finally:  # a vLLM engine holds GPU memory and a worker process until it is shut down
        for trainer in trainers.values():
            trainer.close()


def _time_phases(trainers: dict, profile: str, repeats: int, methods, compare_sharing: bool) -> dict:
    from rlsd.trainer import StepBatch, clock

    first = trainers[methods[0]]
    # compare_sharing: every phase also with prompts unshared (rollout prefill included), alternating, to measure
    # what sharing saves.
    default_share = scoring.SHARE_PROMPTS
    modes = (True, False) if compare_sharing else (default_share,)
    torch.manual_seed(0)
    rollout_times, batches = {share: [] for share in modes}, []
    try:
        for r in range(repeats):
            for share in (modes if r % 2 == 0 else modes[::-1]):
                scoring.SHARE_PROMPTS = share
                t0 = clock()
                batches.append(first.rollout())
                rollout_times[share].append(clock() - t0)
    finally:
        scoring.SHARE_PROMPTS = default_share
    base = batches[0]

    # One no-grad forward of the batch (the unit of the paper's "one extra forward"): every row's prompt + response,
    # unshared, so the unit does not shrink when the trainer shares prompts. Chunked as the trainer chunks its
    # teacher pass (`score_batch_size`), so the unit and the overhead compare. The shared-prompt forward is timed too.
    forward_times, shared_forward_times = [], []
    for r in range(repeats):
        for share in ((False, True) if r % 2 == 0 else (True, False)):
            t0 = clock()
            with torch.no_grad():
                for rows in row_chunks(base.rewards_N.numel(), first.cfg.score_batch_size):
                    score_responses(first.policy, base.student.select(rows), base.rollout.response_ids_BT[rows],
                                    base.rollout.response_mask_BT[rows], first.suppress_V, with_entropy=False,
                                    share_prompts=share)
            (shared_forward_times if share else forward_times).append(clock() - t0)

    phases = {(m, share): {"teacher_s": [], "update_s": [], "total_update_s": []} for m in methods for share in modes}
    try:
        for r in range(repeats):
            order = [(m, share) for m in methods for share in modes]
            for method, share in (order if r % 2 == 0 else list(reversed(order))):
                scoring.SHARE_PROMPTS = share
                trainer = trainers[method]
                teacher = trainer.teacher_prompts(base.problems, base.responses, base.rewards_N)
                batch = StepBatch(base.problems, base.student, base.rollout, base.responses, base.rewards_N,
                                  base.adv_N, teacher)
                t0 = clock()
                stats = trainer.update(batch)
                total = clock() - t0
                phases[method, share]["teacher_s"].append(stats["teacher_s"])
                phases[method, share]["update_s"].append(total - stats["teacher_s"])
                phases[method, share]["total_update_s"].append(total)
    finally:
        scoring.SHARE_PROMPTS = default_share

    rollout_s, forward_s = _median(rollout_times[default_share]), _median(forward_times)
    if "rlsd" in methods:  # RLSD's teacher prompts (question + reference + instruction): their length sets its cost
        teacher = trainers["rlsd"].teacher_prompts(base.problems, base.responses, base.rewards_N)
        teacher_tokens = int(teacher.attention_mask_BP.sum())
    result = {"profile": profile, "repeats": repeats, "batch": {
        "responses": int(base.rewards_N.numel()), "response_tokens": int(base.rollout.response_mask_BT.sum()),
        "prompt_tokens": int(base.student.attention_mask_BP.sum()),
        **({"teacher_prompt_tokens": teacher_tokens} if "rlsd" in methods else {})},
        "rollout_s": rollout_s, "no_grad_forward_s": forward_s,
        "no_grad_forward_shared_s": _median(shared_forward_times), "share_prompts": default_share}
    for share in modes:
        key = "" if share == default_share else ("_shared" if share else "_unshared")
        per_method = result["methods" + key] = {}
        mode_rollout_s = _median(rollout_times[share])
        for method in methods:
            ph = phases[method, share]
            per_method[method] = {"rollout_s": mode_rollout_s, "teacher_s": _median(ph["teacher_s"]),
                                  "update_s": _median(ph["update_s"]),
                                  "step_s": mode_rollout_s + _median(ph["total_update_s"])}
        if "rlsd" in methods and "grpo" in methods:
            rlsd, grpo = per_method["rlsd"]["step_s"], per_method["grpo"]["step_s"]
            result["rlsd_over_grpo" + key] = rlsd / grpo
            result["rlsd_overhead_over_forward" + key] = (rlsd - grpo) / forward_s
    return result


def peer_batch(anchor_script: str, out_dir: str, n: int = 64, seed: int = 0) -> list[str]:
    """Overrides that make our step run on the TRL anchor's exact batch: its prompts and images, no format instruction.

    The anchor's own generator (`make_dataset` in `anchor_script`) writes the data, so the prompts are identical, not
    re-implemented; its model directory must exist (run the anchor once with `--model-dir DIR`, then pass
    `model.path=DIR` too). Returns the `key=value` overrides for `run_bench`.
    """
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("trl_anchor", anchor_script)
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    rows = anchor.make_dataset(n, seed, text_only=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "peer.jsonl").open("w") as f:
        for i, row in enumerate(rows):
            image_path = out / f"{i}.png"
            row["image"].save(image_path)
            question = next(c["text"] for c in row["prompt"][0]["content"] if c["type"] == "text")
            f.write(json.dumps({"id": str(i), "question": question, "answer": str(row["answer"]),
                                "image": str(image_path)}) + "\n")
    return [f"data={out / 'peer.jsonl'}", "format_instruction=false", f"n_train_problems={n}"]


# TRL anchor's training settings (`trl_anchor.py`'s defaults): LoRA r=8 (alpha 16) on q/k/v/o of the language model,
# 8 prompts x 8 samples x 48 tokens, the whole batch in one forward/backward.
ANCHOR_OVERRIDES = ["model.lora_rank=8", "model.lora_alpha=16", "model.lora_projections=q_proj,k_proj,v_proj,o_proj",
                    "prompts_per_step=8", "group_size=8", "max_new_tokens=48", "micro_batch_size=64"]


def peer_sitting(anchor_script: str, rounds: int = 3, repeats: int = 8, trl_path: str | None = None,
                 model_dir: str = "/tmp/rlsd-anchor/model") -> tuple[list[dict], list[dict]]:
    """TRL's anchor and our bench on its batch in ONE sitting, each run in a fresh process, alternating
    TRL, ours, TRL, ..., TRL: `rounds` runs of ours bracketed by `rounds + 1` of TRL's, so drift in machine speed hits
    both. `trl_path` is put on PYTHONPATH for the anchor (e.g. an unpacked TRL wheel). Returns (trl_runs, our_runs).
    """
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    work = Path(model_dir).parent
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if trl_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [trl_path, env.get("PYTHONPATH")]))
    trl_runs, our_runs = [], []

    def run(cmd, env_=None) -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env_)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}): {tail[0]}")
        return proc.stdout

    def trl():
        jsonl = work / "trl.jsonl"
        jsonl.unlink(missing_ok=True)
        run([sys.executable, anchor_script, "--steps", "12", "--warmup", "2", "--model-dir", model_dir,
             "--json-out", str(jsonl)], env)
        row = json.loads(jsonl.read_text().strip().splitlines()[-1])
        row.pop("per_step", None)
        trl_runs.append(row)

    def ours():
        out = run([sys.executable, "-m", "rlsd", "bench", "--peer", anchor_script, "--profile", "smoke",
                   "--methods", "grpo,rlsd", "--repeats", str(repeats), "--compare-sharing", "--json", "--no-trl-subclass",
                   f"model.path={model_dir}", *ANCHOR_OVERRIDES])
        our_runs.append(json.loads(out.strip().splitlines()[-1]))

    trl()  # first: it also writes the anchor's model directory, which our runs load
    for _ in range(rounds):
        ours()
        trl()
    return trl_runs, our_runs


def pooled(runs: list[dict]) -> dict:
    """Several bench results as one: every number the median over runs, repeats summed, `runs` counted."""
    if isinstance(runs, dict):
        return runs

    def merge(values):
        first = values[0]
        if isinstance(first, dict):
            return {k: merge([v[k] for v in values]) for k in first}
        if isinstance(first, bool) or not isinstance(first, (int, float)):
            return first
        return statistics.median(values)

    result = merge(runs)
    result["repeats"] = sum(r["repeats"] for r in runs)
    result["runs"] = len(runs)
    return result


# ------------------------------------------------------------------------------------------ scoring memory


def _rss_peak_reset():
    """Reset this process's peak resident set (Linux: VmHWM) so the next reading measures what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def scoring_memory(path: str = "chunked", vocab_size: int = 151_936, rows: int = 2, tokens: int = 1024,
                   share_prompts: bool = False) -> dict:
    """Peak host memory (MB) of scoring + backward of `rows` × `tokens` response tokens on the tiny CPU model with a
    `vocab_size` vocabulary, over the memory held before scoring (model, its gradients' first allocation excluded).

    path: "chunked" (`score_responses`) or "reference" (full float32 logits, `reference_scores`). Run each in a fresh
    process (`memory_report` does) so one path's freed pages do not lower the other's reading. Linux only.
    """
    import gc

    from PIL import Image

    from rlsd.inputs import encode_prompts
    from rlsd.prompts import student_messages
    from rlsd.scoring import reference_scores, suppress_mask, suppressed_token_ids
    from rlsd.tiny import build_processor, build_tiny_model

    torch.manual_seed(0)
    processor = build_processor()
    tok = processor.tokenizer
    model = build_tiny_model(tok, seed=0, vocab_size=vocab_size)
    model.train()
    suppress_V = suppress_mask(suppressed_token_ids(tok, vocab_size), vocab_size)
    prompts = encode_prompts(processor, [student_messages("How many red squares are there?")],
                             [[Image.new("RGB", (96, 96), (220, 30, 30))]]).repeat(rows)
    allowed_A = (~suppress_V).nonzero().squeeze(-1)
    ids_BT = allowed_A[torch.randint(len(allowed_A), (rows, tokens))]
    mask_BT = torch.ones_like(ids_BT)
    params = [p for p in model.parameters() if p.requires_grad]
    model_mb = sum(p.numel() * p.element_size() for p in params) / 2**20
    for p in params:  # gradients are the model's own memory too: allocate them before the baseline
        p.grad = torch.zeros_like(p)
    gc.collect()
    base_mb = _rss_mb("VmRSS")
    _rss_peak_reset()
    t0 = time.perf_counter()
    if path == "reference":
        logp_BT, entropy_BT, _ = reference_scores(model, prompts, ids_BT, mask_BT, suppress_V)
    elif path == "chunked":
        s = score_responses(model, prompts, ids_BT, mask_BT, suppress_V, share_prompts=share_prompts)
        logp_BT, entropy_BT = s.logp_BT, s.entropy_BT
    else:
        raise ValueError(f"path must be 'chunked' or 'reference', got {path!r}")
    logp_BT.sum().backward()
    seconds = time.perf_counter() - t0
    peak_mb = _rss_mb("VmHWM")
    return {"path": path, "vocab_size": vocab_size, "rows": rows, "tokens": tokens, "model_params_mb": model_mb,
            "baseline_rss_mb": base_mb, "peak_rss_mb": peak_mb, "peak_over_baseline_mb": peak_mb - base_mb,
            "seconds": seconds, "entropy_mean": float(entropy_BT.detach().mean())}


def memory_report(paths=("reference", "chunked"), **kwargs) -> list[dict]:
    """`scoring_memory` of each path, each in its own fresh Python process."""
    import json
    import subprocess
    import sys

    results = []
    for path in paths:
        code = ("import json, sys; from rlsd.bench import scoring_memory; "
                f"print(json.dumps(scoring_memory({path!r}, **json.loads(sys.argv[1]))))")
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True,
                              check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


if __name__ == "__main__":  # python -m rlsd.bench [--out FILE]: the scoring-memory benchmark
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m rlsd.bench", description="scoring + backward peak memory")
    parser.add_argument("--out", default=None, help="also write the JSON report here")
    args = parser.parse_args()
    text = json.dumps(memory_report(), indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


# ------------------------------------------------------------------------------------------ --jobs, side by side


def jobs_side_by_side(runs: int = 2, steps: int = 10, rounds: int = 2, work: str = "/tmp/rlsd-jobs-bench",
                      overrides: list[str] | None = None) -> dict:
    """What `reproduce --jobs 2` buys on this machine: `runs` short cpu-profile GRPO runs (no evaluation, no
    checkpoint) as ONE process after another with 2 torch threads each, and as `runs` single-thread processes side
    by side, alternating the two ways `rounds` times (fresh processes both ways, so start-up costs the same).
    Returns the wall times and the median speed-up."""
    import concurrent.futures
    import multiprocessing
    import shutil
    from pathlib import Path

    from rlsd.reproduce import _train_one

    def batch(mode: str, r: int) -> float:
        extra = [f"steps={steps}", "eval_every=0", "save_every=0", *(overrides or [])]
        cfgs = [make_config("cpu", extra, method="grpo", seed=s, out=str(Path(work) / f"{mode}-{r}-s{s}"),
                            tensorboard=False) for s in range(runs)]
        workers, threads = (1, 2) if mode == "sequential" else (runs, 1)
        t0 = time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_train_one, [c.to_json() for c in cfgs], [threads] * runs))
        wall = time.perf_counter() - t0
        shutil.rmtree(work, ignore_errors=True)
        return wall

    walls = {"sequential": [], "parallel": []}
    for r in range(rounds):
        for mode in (("sequential", "parallel") if r % 2 == 0 else ("parallel", "sequential")):
            walls[mode].append(round(batch(mode, r), 2))
    seq, par = statistics.median(walls["sequential"]), statistics.median(walls["parallel"])
    return {"runs": runs, "steps": steps, "rounds": rounds, "profile": "cpu", "method": "grpo",
            "sequential": "one process at a time, 2 torch threads", "parallel": f"{runs} processes, 1 thread each",
            "wall_s": walls, "median_sequential_s": seq, "median_parallel_s": par, "speedup": round(seq / par, 3),
            "cpus": os.cpu_count()}
