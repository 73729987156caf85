"""Step-time benchmark: every method on the SAME rollout batch, split by phase.

    python -m rlsd bench --profile smoke --json

The paper's cost claim is "one extra forward pass": RLSD's step should cost GRPO's plus one no-grad forward of the
batch under the teacher prompt. We report

    rlsd_over_grpo              RLSD step time / GRPO step time (rollout + update)
    rlsd_overhead_over_forward  (RLSD step - GRPO step) / one no-grad forward of the batch  (target <= 1.1)

Methods are timed in alternating order over `repeats` rounds (medians reported), so drift in machine speed hits all
methods alike. The rollout is generated once and shared: its time is the same for every method by construction.
"""

from __future__ import annotations

import statistics

import torch

from rlsd.config import METHODS, make_config
from rlsd.inputs import row_chunks
from rlsd.scoring import score_responses


def _median(xs):
    return statistics.median(xs) if xs else 0.0


def run_bench(profile: str = "smoke", overrides: list[str] | None = None, repeats: int = 5,
              methods=METHODS) -> dict:
    from rlsd.trainer import StepBatch, Trainer, clock

    trainers = {}
    for method in methods:
        cfg = make_config(profile, overrides, method=method, out=f"/tmp/rlsd-bench/{method}", tensorboard=False,
                          eval_every=0, save_every=0)
        trainers[method] = Trainer(cfg, progress=False)
    first = trainers[methods[0]]
    torch.manual_seed(0)
    rollout_times, batches = [], []
    for _ in range(repeats):
        t0 = clock()
        batches.append(first.rollout())
        rollout_times.append(clock() - t0)
    base = batches[0]

    # One no-grad forward of the batch (the unit of the paper's "one extra forward").
    # Chunked as the trainer chunks its teacher pass (`score_batch_size`), so the unit and the overhead compare.
    forward_times = []
    for _ in range(repeats):
        t0 = clock()
        with torch.no_grad():
            for rows in row_chunks(base.rewards_N.numel(), first.cfg.score_batch_size):
                score_responses(first.policy, base.student.select(rows), base.rollout.response_ids_BT[rows],
                                base.rollout.response_mask_BT[rows], first.suppress_V, with_entropy=False)
        forward_times.append(clock() - t0)

    phases = {m: {"teacher_s": [], "update_s": [], "total_update_s": []} for m in methods}
    for r in range(repeats):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        for method in order:
            trainer = trainers[method]
            teacher = trainer.teacher_prompts(base.problems, base.responses, base.rewards_N)
            batch = StepBatch(base.problems, base.student, base.rollout, base.responses, base.rewards_N, base.adv_N,
                              teacher)
            t0 = clock()
            stats = trainer.update(batch)
            total = clock() - t0
            phases[method]["teacher_s"].append(stats["teacher_s"])
            phases[method]["update_s"].append(total - stats["teacher_s"])
            phases[method]["total_update_s"].append(total)

    rollout_s, forward_s = _median(rollout_times), _median(forward_times)
    result = {"profile": profile, "repeats": repeats, "batch": {
        "responses": int(base.rewards_N.numel()), "response_tokens": int(base.rollout.response_mask_BT.sum()),
        "prompt_tokens": int(base.student.attention_mask_BP.sum())},
        "rollout_s": rollout_s, "no_grad_forward_s": forward_s, "methods": {}}
    for method in methods:
        upd = _median(phases[method]["total_update_s"])
        result["methods"][method] = {"rollout_s": rollout_s, "teacher_s": _median(phases[method]["teacher_s"]),
                                     "update_s": _median(phases[method]["update_s"]), "step_s": rollout_s + upd}
    if "rlsd" in methods and "grpo" in methods:
        rlsd, grpo = result["methods"]["rlsd"]["step_s"], result["methods"]["grpo"]["step_s"]
        result["rlsd_over_grpo"] = rlsd / grpo
        result["rlsd_overhead_over_forward"] = (rlsd - grpo) / forward_s
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
