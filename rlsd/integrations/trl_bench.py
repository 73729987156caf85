"""RLSD's extra time inside TRL: `GRPOTrainer` and `RLSDGRPOTrainer` side by side on the TRL anchor's own batch.

    python -m rlsd bench --peer path/to/trl_anchor.py     # also runs this (skip it with --no-trl-subclass)

The anchor script (`trl_anchor.py`, a plain TRL GRPOTrainer timing) supplies everything that defines the batch: its
tiny Qwen3-VL (built by its own functions, same seed), its 64 synthetic image prompts (`make_dataset`), its reward
(`count_reward`) and its step timer (`make_timer_callback`: on_step_begin -> on_step_end, generation + reward +
forward/backward + optimizer). The trainer settings below are the anchor's defaults, passed to both trainers alike.
In ONE process the two trainers alternate, GRPO, RLSD, GRPO, RLSD, ..., each a fresh trainer from the same saved
model and seed for `steps` optimizer steps (the first `warmup` dropped), so drift in machine speed hits both.

Reported: the median step of each (median over rounds of each run's median), the extra step time of RLSD, the
teacher pass alone (`_rlsd_teacher_logps`: teacher-prompt tokenization + one no-grad forward of the completions),
its tokenization alone (`teacher_tokenize_s`), the mean prompt lengths of student and teacher (the teacher prompt
carries the reference answer and the instruction: a longer sequence), and one no-grad forward of the student's batch
as the unit: `rlsd_extra_over_forward` = (RLSD - GRPO) / forward. An ideal subclass adds one no-grad forward at
the teacher's length (the teacher's) and nothing else.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

# trl_anchor.py's defaults (its argparse): 8 prompts x 8 completions x 48 tokens, LoRA r=8 on q/k/v/o of the language
# model, loss dapo, beta 0, lr 1e-5, temperature 1, no gradient checkpointing, float32, the whole batch at once.
ANCHOR = dict(prompts_per_step=8, generations=8, max_completion_length=48, lr=1e-5, lora_r=8, hidden=128, layers=4,
              vision_depth=2, vision_hidden=64, n_prompts=64, seed=0)
RLSD_SETTINGS = dict(rlsd_lam0=0.5, rlsd_decay_steps=0, rlsd_clip_eps=0.2, rlsd_teacher="snapshot",
                     rlsd_teacher_sync_steps=10)  # constant λ: the teacher pass runs at every timed step


def load_anchor(anchor_script: str):
    """The anchor script as a module (its functions only: its `main` is not run)."""
    path = Path(anchor_script)
    if not path.is_file():
        raise FileNotFoundError(f"--peer {anchor_script}: no such file (the TRL anchor script, trl_anchor.py)")
    spec = importlib.util.spec_from_file_location("trl_anchor", path)
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    for name in ("build_tokenizer", "build_processor", "build_vl_model", "make_dataset", "count_reward",
                 "make_timer_callback", "SPECIALS"):
        if not hasattr(anchor, name):
            raise AttributeError(f"--peer {anchor_script}: has no {name!r} (not the TRL anchor script?)")
    return anchor


def _trainer(anchor, cls, model_dir: str, processor, dataset, out_dir: str, steps: int, rlsd: bool):
    from peft import LoraConfig
    from trl import GRPOConfig

    from rlsd.integrations.trl import RLSDGRPOConfig

    a, tok = ANCHOR, processor.tokenizer
    suppress = [tok.convert_tokens_to_ids(t) for t in anchor.SPECIALS if t != tok.eos_token]
    fields = dict(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=a["prompts_per_step"] * a["generations"],
                  gradient_accumulation_steps=1, num_generations=a["generations"],
                  max_completion_length=a["max_completion_length"], temperature=1.0,
                  generation_kwargs={"suppress_tokens": suppress}, beta=0.0, loss_type="dapo", learning_rate=a["lr"],
                  use_vllm=False, bf16=False, fp16=False, gradient_checkpointing=False,
                  model_init_kwargs={"dtype": "float32"}, eval_strategy="no", save_strategy="no", report_to="none",
                  logging_steps=1, disable_tqdm=True, seed=a["seed"], data_seed=a["seed"],
                  use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    args = RLSDGRPOConfig(**fields, **RLSD_SETTINGS) if rlsd else GRPOConfig(**fields)
    lora = LoraConfig(r=a["lora_r"], lora_alpha=2 * a["lora_r"], lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=r"(?!.*visual).*\.layers\.\d+\.self_attn\.(q|k|v|o)_proj")
    return cls(model=model_dir, reward_funcs=anchor.count_reward, args=args, train_dataset=dataset,
               processing_class=processor, peft_config=lora)


def _no_grad_forward_s(trainer, output: dict, repeats: int = 5) -> float:
    """Median seconds of one no-grad forward of the student's batch (prompt + completions, the same image tensors)."""
    from rlsd.integrations.trl import IMAGE_FIELDS, TOKEN_FIELDS, token_fields_with_completion

    ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
    mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    kwargs = {k: output[k] for k in IMAGE_FIELDS if k in output}
    # TRL 1.16's output already holds its per-token fields over prompt + completion; a prompt-length one is extended.
    fields = {k: output[k] for k in TOKEN_FIELDS if k in output}
    kwargs.update({k: v for k, v in fields.items() if v.size(1) == ids.size(1)})
    kwargs.update(token_fields_with_completion({k: v for k, v in fields.items() if v.size(1) != ids.size(1)},
                                               output["completion_ids"]))
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, output["completion_ids"].size(1),
                                                       batch_size=ids.size(0), **kwargs)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def side_by_side(anchor_script: str, rounds: int = 3, steps: int = 12, warmup: int = 2,
                 threads: int | None = None) -> dict:
    """Alternate GRPOTrainer and RLSDGRPOTrainer `rounds` times each on the anchor's batch; see the module docstring."""
    import transformers
    import trl
    from trl import GRPOTrainer

    from rlsd.integrations.trl import RLSDGRPOTrainer

    os.environ.setdefault("WANDB_DISABLED", "true")
    transformers.logging.set_verbosity_error()
    if threads:
        torch.set_num_threads(threads)
    anchor, a = load_anchor(anchor_script), ANCHOR
    work = Path(tempfile.mkdtemp(prefix="rlsd-trl-bench-"))
    tok = anchor.build_tokenizer()
    processor = anchor.build_processor(tok)
    model = anchor.build_vl_model(tok, a["hidden"], a["layers"], a["vision_depth"], a["vision_hidden"], a["seed"])
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    del model
    dataset = anchor.make_dataset(a["n_prompts"], a["seed"], False)

    runs = {"grpo": [], "rlsd": []}
    teacher_s, forward_s, tokenize_s, lengths = [], [], [], {"teacher": [], "student": []}
    for r in range(rounds):
        for name, cls in (("grpo", GRPOTrainer), ("rlsd", RLSDGRPOTrainer)):
            torch.manual_seed(a["seed"])
            trainer = _trainer(anchor, cls, str(work / "model"), processor, dataset, str(work / f"out-{name}-{r}"),
                               steps, rlsd=name == "rlsd")
            records, captured = [], {}
            trainer.add_callback(anchor.make_timer_callback(records))
            if name == "rlsd":
                inner = trainer._rlsd_teacher_logps

                def timed_teacher(inputs, output, inner=inner, captured=captured):
                    t0 = time.perf_counter()
                    try:
                        return inner(inputs, output)
                    finally:
                        captured.setdefault("teacher_s", []).append(time.perf_counter() - t0)
                        captured["output"] = output

                trainer._rlsd_teacher_logps = timed_teacher
                tokens = trainer._rlsd_teacher_tokens

                def timed_tokens(prompts, output, tokens=tokens, captured=captured):
                    t0 = time.perf_counter()
                    ids, fields = tokens(prompts, output)
                    captured.setdefault("tokenize_s", []).append(time.perf_counter() - t0)
                    captured["teacher_prompt_tokens"] = statistics.mean(len(x) for x in ids)
                    return ids, fields

                trainer._rlsd_teacher_tokens = timed_tokens
            trainer.train()
            timed = [rec["step_s"] for rec in records[warmup:]]
            if not timed:
                raise RuntimeError(f"TRL side-by-side: {len(records)} steps ran, {warmup} warm-up: nothing timed")
            runs[name].append(statistics.median(timed))
            if name == "rlsd":
                teacher_s.append(statistics.median(captured["teacher_s"][warmup:] or captured["teacher_s"]))
                forward_s.append(_no_grad_forward_s(trainer, captured["output"]))
                tokenize_s.append(statistics.median(captured["tokenize_s"][warmup:] or captured["tokenize_s"]))
                lengths["teacher"].append(captured["teacher_prompt_tokens"])
                lengths["student"].append(float(captured["output"]["prompt_mask"].sum(1).float().mean()))
            del trainer

    grpo, rlsd = statistics.median(runs["grpo"]), statistics.median(runs["rlsd"])
    forward, teacher = statistics.median(forward_s), statistics.median(teacher_s)
    return {
        "trainers": "trl.GRPOTrainer vs rlsd.integrations.trl.RLSDGRPOTrainer, alternating in one process",
        "trl": trl.__version__, "torch_threads": torch.get_num_threads(), "rounds": rounds, "steps": steps,
        "warmup_dropped": warmup, "completions_per_step": a["prompts_per_step"] * a["generations"],
        "max_completion_length": a["max_completion_length"], "rlsd_settings": RLSD_SETTINGS,
        "grpo_step_s": round(grpo, 4), "rlsd_step_s": round(rlsd, 4),
        "grpo_step_s_per_round": [round(x, 4) for x in runs["grpo"]],
        "rlsd_step_s_per_round": [round(x, 4) for x in runs["rlsd"]],
        "rlsd_extra_s": round(rlsd - grpo, 4), "rlsd_over_grpo": round(rlsd / grpo, 4),
        "rlsd_teacher_s": round(teacher, 4), "no_grad_forward_s": round(forward, 4),
        "rlsd_extra_over_forward": round((rlsd - grpo) / forward, 3),
        "teacher_over_forward": round(teacher / forward, 3),
        "teacher_tokenize_s": round(statistics.median(tokenize_s), 4),
        "prompt_tokens_mean": {k: round(statistics.mean(v), 1) for k, v in lengths.items()},
        "completion_tokens_max": a["max_completion_length"],
    }
