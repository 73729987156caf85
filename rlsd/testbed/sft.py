"""SFT warm start: train the tiny Qwen3-VL from scratch on the testbed so RL starts from partial competence.

    python -m rlsd sft --out data/tiny-sft     # the shipped checkpoint and its evaluation, ~15 min on 2 cores

Half of the examples use the STUDENT prompt, half the TEACHER prompt (question + reference final answer), so one
set of weights can act as both, as a real instruction-tuned model does.

An imperfect demonstrator, on purpose: student-format targets come from a demonstrator that misreads each colour
count by one with probability `demo_error` (its combination and answer follow from its read-outs), as SFT data
distilled from a weaker model does. Imitation therefore plateaus at the demonstrator's level, well below what the
image allows (the ideal observer, ~86%), and only the reward can take the student further. Without it the student
kept climbing towards the ideal observer for as long as SFT ran, leaving RL either no room or a mid-climb snapshot.

An information-only teacher, on purpose: teacher-format targets come from the SAME careless demonstrator,
conditioned on its answer being the reference (`conditioned_solution`: its solutions rejection-sampled until the
answer equals the gold, i.e. exact draws from the posterior of its read-outs given the answer). With the answer in
its prompt the teacher therefore knows the answer and nothing else: on read-outs the answer pins (the asked count,
both counts of a `pair` question) its targets are always right; on read-outs the answer does not constrain they
are exactly as careless as the student's. (The first version trained the teacher format on CORRECT solutions: the
teacher then read every square better -- a better reader, not a better-informed one -- and OPSD distilled reading
skill.) `teacher_demo="correct"` restores that variant for comparison.

The mention habit, on purpose: a minority (`mention_prob`) of teacher-format targets open their thought with
"the reference answer is N ,". Real models shown a reference solution talk about it; this gives OPSD a habit it can
leak into the student, which the paper observes at scale. Student-format targets never mention a reference. All
other teacher targets are in the student's format, so the teacher's evidence is about the steps, not the format.

Schedule: linear warm-up, then a constant rate, then a linear cool-down over the last `cooldown_frac`. A cosine
schedule had decayed before the model began to use the image in an earlier probe.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlsd.algorithm import masked_mean
from rlsd.evaluate import evaluate
from rlsd.inputs import encode_prompts
from rlsd.prompts import student_messages, teacher_messages
from rlsd.scoring import score_responses, suppress_mask, suppressed_token_ids
from rlsd.testbed.demonstrator import careless_solution, conditioned_solution
from rlsd.testbed.scenes import MENTION_TEMPLATE, load_splits
from rlsd.tiny import build_processor, build_tiny_model


@dataclass
class SFTConfig:
    """Warm-start settings (defaults = the shipped checkpoint)."""

    out: str = "data/tiny-sft"
    """Output model directory (config, weights, processor, sft_metrics.jsonl, sft_config.json)."""
    seed: int = 0
    """Seed of the model initialisation and of the data order."""
    steps: int = 1500
    """Optimizer steps."""
    batch_size: int = 32
    """Sequences per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    warmup_steps: int = 200
    """Linear warm-up steps."""
    cooldown_frac: float = 0.3
    """Final share of steps over which the rate decays linearly to 10% of the peak."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    teacher_frac: float = 0.5
    """Share of examples in the teacher format (question + reference answer)."""
    mention_prob: float = 0.2
    """Share of teacher-format targets that open with the mention of the reference (the leakable habit)."""
    demo_error: float = 0.5
    """Share of the demonstrator's colour read-outs that are off by one (its answer follows from its read-outs).
    The warm start imitates an imperfect demonstrator, as SFT data distilled from a weaker model is: its plateau is
    the demonstrator's, and only the reward can take it further, up to what the image allows."""
    teacher_demo: str = "conditioned"
    """Teacher-format targets: 'conditioned' (the careless demonstrator conditioned on answering the reference: an
    information-only teacher) or 'correct' (the correct solution: a teacher that also reads better)."""
    n_train: int = 20000
    """Training problems (the testbed's train split prefix)."""
    eval_every: int = 100
    """Evaluate on a validation subset every this many steps."""
    n_eval: int = 300
    """Validation problems per periodic evaluation."""
    final_eval_problems: int = 1500
    """Test problems of the final evaluation written to <out>/base_eval.json (student, greedy, teacher, controls,
    read-out accuracies; rlsd.reproduce.evaluate_base). 0 skips it."""
    hidden: int = 128
    """Language-model width."""
    layers: int = 4
    """Language-model depth."""


def sft_example(problem, teacher: bool, rng: random.Random, mention_prob: float,
                demo_error: float = 0.0, teacher_demo: str = "conditioned") -> tuple[list[dict], str]:
    """(messages, target response text) for one problem in the student or teacher format.

    Student-format targets come from the careless demonstrator (`SFTConfig.demo_error`); teacher-format targets
    from the same demonstrator conditioned on reaching the reference answer (or the correct solution, see
    `SFTConfig.teacher_demo`).
    """
    thought, answer = problem.solution, problem.answer
    if teacher:
        messages = teacher_messages(problem.question, problem.answer, len(problem.images))
        if teacher_demo == "conditioned" and demo_error > 0:
            thought, answer, _ = conditioned_solution(problem, rng, demo_error)
        if rng.random() < mention_prob:
            thought = f"{MENTION_TEMPLATE.format(answer=problem.answer)} {thought}"
    else:
        messages = student_messages(problem.question, len(problem.images))
        if demo_error > 0:
            thought, answer = careless_solution(problem, rng, demo_error)
    return messages, f"<thought>{thought}</thought><answer>{answer}</answer>"


def encode_targets(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded response ids (+ end-of-turn) and their mask."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    T = max(len(x) for x in ids)
    ids_BT = torch.full((len(ids), T), tokenizer.pad_token_id, dtype=torch.long)
    mask_BT = torch.zeros((len(ids), T), dtype=torch.long)
    for i, x in enumerate(ids):
        ids_BT[i, :len(x)] = torch.tensor(x)
        mask_BT[i, :len(x)] = 1
    return ids_BT, mask_BT


def lr_at(step: int, cfg: SFTConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    cooldown_start = int(cfg.steps * (1 - cfg.cooldown_frac))
    if step < cooldown_start:
        return cfg.lr
    frac = (step - cooldown_start) / max(1, cfg.steps - cooldown_start)
    return cfg.lr * (1 - 0.9 * frac)


def train_sft(cfg: SFTConfig, progress: bool = True) -> dict:
    """Train, evaluate periodically, save the model directory; returns the final validation numbers."""
    if cfg.teacher_demo not in ("conditioned", "correct"):
        raise ValueError(f"SFTConfig.teacher_demo must be 'conditioned' or 'correct', got {cfg.teacher_demo!r}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sft_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    train, val, _ = load_splits(n_train=cfg.n_train, n_val=cfg.n_eval, n_test=None)
    processor = build_processor()
    tok = processor.tokenizer
    model = build_tiny_model(tok, seed=cfg.seed, hidden=cfg.hidden, layers=cfg.layers)
    vocab = model.config.text_config.vocab_size
    suppress_V = suppress_mask(suppressed_token_ids(tok, vocab), vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    processor.save_pretrained(out)
    log_path = out / "sft_metrics.jsonl"
    log_path.write_text("")
    order: list[int] = []
    t0 = time.time()
    bar = tqdm(range(cfg.steps), desc="sft", disable=not progress)
    last = {}
    for step in bar:
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(train)), len(train))
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        examples = [sft_example(train[i], rng.random() < cfg.teacher_frac, rng, cfg.mention_prob, cfg.demo_error,
                                cfg.teacher_demo) for i in idx]
        prompts = encode_prompts(processor, [m for m, _ in examples], [train[i].images for i in idx])
        target_BT, mask_BT = encode_targets(tok, [t for _, t in examples])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        scores = score_responses(model, prompts, target_BT, mask_BT, suppress_V, with_entropy=False)
        loss = -masked_mean(scores.logp_BT, mask_BT)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in last.items()})
        record = {"step": step + 1, "loss": loss.item(), "grad_norm": float(grad_norm), "lr": lr_at(step, cfg),
                  "elapsed_s": time.time() - t0}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            for fmt in ("student", "teacher"):
                res = evaluate(model, processor, val, fmt=fmt, seed=0, progress=False).summary
                record[f"val_{fmt}_accuracy"] = res["accuracy"]
                record[f"val_{fmt}_leak_rate"] = res["leak_rate"]
                last[fmt[:3]] = res["accuracy"]
            model.train()
            model.save_pretrained(out)  # a killed run leaves its latest evaluated weights
            bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in last.items()})
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
    model.save_pretrained(out)
    if cfg.final_eval_problems:
        from rlsd.testbed.evaluation import evaluate_base

        evaluate_base(str(out), cfg.final_eval_problems, 40, out)
    return last
