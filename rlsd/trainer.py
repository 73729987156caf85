"""One training loop for GRPO, RLSD, OPSD, SDPO and GRPO+OPSD.

Per step, read top to bottom:

    1. rollout      G responses per prompt from the student prompt (HF generate or vLLM)
    2. reward       verifier -> R in {0, 1}; group advantages A (GRPO normalisation)
    3. teacher      ONE no-grad forward of the same responses after the teacher prompt (same images), with the
                    teacher's weights (rlsd: snapshot; opsd/grpo_opsd: initial; sdpo: EMA) -- per micro-batch
    4. student      the grad forward; its detached log-probs are also the PPO "old" log-probs (one update per
                    batch, so ρ = 1 and there is no separate scoring pass)
    5. loss         grpo:      PPO surrogate with Â_t = A
                    rlsd:      PPO surrogate with Â_t = A·((1-λ) + λ·clip(w_t))            (rlsd.algorithm)
                    opsd:      full-vocabulary JSD_β(teacher ‖ student), no reward
                    grpo_opsd: GRPO + μ·OPSD
                    sdpo:      top-K+tail JSD_α to an EMA teacher shown a successful sibling
    6. update       grad-norm clip; non-finite loss/grad -> step skipped and counted; AdamW step
    7. teacher      snapshot re-sync every N steps / EMA update
    8. metrics      metrics.jsonl (+ TensorBoard), periodic test evaluation, samples, atomic checkpoint

Where the loop departs from the paper (beyond rlsd.algorithm's list):
- One optimizer step per rollout batch (the paper's default too); `old_logp` is the detached log-prob of the same
  forward, so the PPO clip is inactive by construction. Multi-epoch PPO is not implemented.
- Small-batch profiles scale the λ window K to a comparable share of training (see rlsd.config PROFILES["cpu"]).
- The token-mean is taken over all response tokens of the GLOBAL batch (all micro-batches and processes).
- SDPO: when no sibling of a group succeeded, the teacher prompt has no demonstration (the student prompt itself,
  scored with EMA weights).

Data parallel with accelerate: each process rolls out its own prompts (a prompt's whole group stays on one process)
with its own sampling seed (`step_seed`), gradients are averaged by DDP, metrics are gathered, and only the main
process writes files. Two processes on a CPU-only machine:

    accelerate launch --multi_gpu --num_processes 2 -m rlsd train --method rlsd --profile smoke ...

(`--multi_gpu` starts torchrun workers, which use gloo when no GPU exists; `accelerate launch --cpu` starts ONE
process whatever --num_processes says.)
"""

from __future__ import annotations

import json
import math
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlsd import algorithm as alg
from rlsd import checkpoint as ckpt
from rlsd import preflight
from rlsd.config import TrainConfig, prompt_token_limit, resume_conflicts
from rlsd.data import Problem, limit_prompt_lengths, load_train_and_eval
from rlsd.evaluate import evaluate
from rlsd.files import RunLock, append_text, disk_full, disk_full_error, write_text
from rlsd.inputs import PromptBatch, encode_prompts, row_chunks
from rlsd.model import load_policy
from rlsd.precision import LossScale
from rlsd.prompts import student_messages, teacher_messages
from rlsd.rollout import VALIDATION_SAMPLING, Rollout, SamplingParams, hf_generate
from rlsd.scoring import TokenScores, score_responses, suppress_mask, suppressed_token_ids
from rlsd.teacher import TeacherWeights
from rlsd.testbed import mentions_reference, oracle_delta, wrong_answer
from rlsd.verifier import extract_answer, score_batch

TEACHER_MODE = {"grpo": None, "rlsd": "snapshot", "opsd": None, "grpo_opsd": None, "sdpo": "ema"}
NEEDS_LOGITS = {"opsd", "grpo_opsd", "sdpo"}


# ------------------------------------------------------------------------------------------------------- data


def load_training_problems(cfg: TrainConfig) -> tuple[list[Problem], list[Problem]]:
    """(train, test) problems. The testbed generates both splits; a data file or `hf:` dataset gives a training set
    and a held-out slice of `eval_problems` rows never trained on (the same rows for every seed: data_split_seed)."""
    from rlsd.testbed import load_splits

    if cfg.data == "testbed":
        train, _, test = load_splits(n_train=cfg.n_train_problems, n_val=None, n_test=cfg.eval_problems)
        return train, test
    n_eval = cfg.eval_problems if (cfg.eval_every or cfg.eval_dense_every) else 0
    return load_train_and_eval(cfg.data, n_train=cfg.n_train_problems, n_eval=n_eval, seed=cfg.data_split_seed,
                               max_bad_fraction=cfg.data_max_bad_fraction)


def step_prompts(n_problems: int, step: int, seed: int, per_process: int, rank: int, world: int) -> list[int]:
    """Problem indices of `step` for process `rank`: a pure function of (seed, step), so resume needs no state."""
    rng = random.Random(f"{seed}:{step}")
    idx = rng.sample(range(n_problems), per_process * world) if n_problems >= per_process * world else \
        [rng.randrange(n_problems) for _ in range(per_process * world)]
    return idx[rank * per_process:(rank + 1) * per_process]


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the sampling RNG of `step` on process `rank`. Reseeding every step makes a rollout a pure function of
    (seed, step, rank) and the weights: processes draw independent samples (one shared stream made different
    prompts' samples nearly identical token for token), and an exact resume needs no per-process RNG state."""
    return random.Random(f"rollout:{seed}:{step}:{rank}").getrandbits(63)


def reference_text(problem: Problem, cfg: TrainConfig) -> str:
    if cfg.teacher_reference == "wrong_answer":  # the study's control: the teacher told a wrong answer
        return wrong_answer(problem)
    if cfg.teacher_reference == "solution" and problem.solution:
        return f"{problem.solution} The final answer is {problem.answer}."
    return problem.answer


def sdpo_demonstrations(responses: list[str], rewards: list[float], group_size: int,
                        content: str = "answer") -> list[str | None]:
    """For each response, the demonstration its SDPO teacher is shown: a successful sibling, or None.

    As in lasgroup/SDPO: never the response itself (`dont_reprompt_on_self_success`: the only success of its group
    gets none), and without the sibling's reasoning (`remove_thinking_from_demonstration`; content="answer": what is
    left of a <thought>...<answer> response is its final answer; "full": the whole response). A response with no
    demonstration is masked out of the distillation loss (`Trainer.update`)."""
    demos = []
    for i in range(len(responses)):
        g0 = (i // group_size) * group_size
        others = [j for j in range(g0, g0 + group_size) if rewards[j] > 0 and j != i]
        if not others:
            demos.append(None)
        elif content == "full":
            demos.append(responses[others[0]])
        else:
            demos.append(extract_answer(responses[others[0]]) or responses[others[0]])
    return demos


# --------------------------------------------------------------------------------------- loss terms per method


@dataclass
class MicroBatch:
    """What a micro-batch's loss terms read: the student's scores (grad) and the detached teacher side."""

    student: TokenScores
    """Student log-probs / entropies of the sampled tokens (with hidden states for the distillation methods)."""
    mask_BT: torch.Tensor
    """Response-token mask."""
    adv_B: torch.Tensor
    """Group advantages A of the responses."""
    teacher_logp_BT: torch.Tensor | None
    """Teacher log-probs of the sampled tokens (methods with a teacher)."""
    teacher: TokenScores | None
    """Teacher scores with hidden states (distillation methods)."""
    distill_mask_BT: torch.Tensor
    """Tokens the distillation term covers (SDPO: only responses shown a demonstration)."""
    distill_weight: float
    """Global-batch token count of `mask_BT` over that of `distill_mask_BT` (1 unless SDPO masks responses out)."""
    lam: float
    """RLSD's λ at this step."""
    thought_mask_BT: torch.Tensor | None = None
    """RLSD thought_only: the tokens before the response's closing thought tag (None: the switch is off)."""
    shuffle_generator: torch.Generator | None = None
    """RLSD's shuffled-weights control: permutes each response's weights among its tokens (None: off)."""


def _surrogate(cfg, mb: MicroBatch, adv_BT, stats) -> torch.Tensor:
    logp_BT, n_tok = mb.student.logp_BT, mb.mask_BT.sum()
    pg, _ = alg.policy_loss(logp_BT, logp_BT.detach(), adv_BT, mb.mask_BT, cfg.eps_low, cfg.eps_high, cfg.dual_clip)
    stats["pg_loss"] += float(pg.detach()) * float(n_tok)
    return pg * n_tok


def grpo_term(cfg, mb: MicroBatch, stats) -> torch.Tensor:
    """PPO surrogate with Â_t = A (token sum; the caller divides by the global token count)."""
    mask_f = mb.mask_BT.to(mb.student.logp_BT.device).float()
    return _surrogate(cfg, mb, mb.adv_B.unsqueeze(-1) * mask_f, stats)


def rlsd_term(cfg, mb: MicroBatch, stats) -> torch.Tensor:
    """PPO surrogate with Â_t = A·((1-λ) + λ·clip(w_t)); also counts the clipped weights."""
    student_logp_BT = mb.student.logp_BT.detach()
    scope = dict(negative_only=cfg.rlsd_negative_only, thought_mask_BT=mb.thought_mask_BT)
    adv_BT = alg.rlsd_token_advantages(mb.adv_B, mb.teacher_logp_BT, student_logp_BT, mb.mask_BT, mb.lam,
                                       cfg.rlsd_clip_eps, shuffle_generator=mb.shuffle_generator, **scope)
    _, _, w = alg.rlsd_token_weights(mb.adv_B, mb.teacher_logp_BT, student_logp_BT, mb.mask_BT, cfg.rlsd_clip_eps,
                                     **scope)
    # the clip fractions are over the tokens the weights apply to (all of them with the switches off)
    scope_BT = alg.rlsd_weight_scope(mb.adv_B, mb.mask_BT, **scope)
    weighted = float((scope_BT.float() * (mb.adv_B != 0).float().unsqueeze(-1)).sum())
    stats["clip_low"] += w["weight_clip_low_frac"] * weighted
    stats["clip_high"] += w["weight_clip_high_frac"] * weighted
    stats["weighted_tokens"] += weighted
    # RLSD = GRPO + a reward-sign-independent drift: Â_t - A = λ|A|·φ_{sign A}(Δ_t), with the sign of Δ_t
    # (rlsd.theory). Logged as its share of the advantage mass and, when asked, of the gradient.
    mask_f = mb.mask_BT.to(adv_BT.dtype)
    drift_BT = adv_BT - mb.adv_B.to(adv_BT.dtype).unsqueeze(-1) * mask_f
    stats["drift_abs_sum"] += float(drift_BT.abs().sum())
    stats["adv_abs_sum"] += float(adv_BT.abs().sum())
    if cfg.log_drift_grad:  # the drift part's surrogate alone; Trainer.update takes its gradient
        logp_BT = mb.student.logp_BT
        drift_pg, _ = alg.policy_loss(logp_BT, logp_BT.detach(), drift_BT, mb.mask_BT, cfg.eps_low, cfg.eps_high,
                                      cfg.dual_clip)
        stats["drift_loss"] = drift_pg * mb.mask_BT.sum()
    return _surrogate(cfg, mb, adv_BT, stats)


def _distill(mb: MicroBatch, divergence, weight: float, stats) -> torch.Tensor:
    n = mb.distill_mask_BT.sum()
    if n == 0:  # nothing to distill in this micro-batch: a zero loss that still reaches every parameter
        return mb.student.logp_BT.sum() * 0.0
    div, _ = mb.student.divergence(mb.teacher, mb.distill_mask_BT, divergence)
    stats["distill_loss"] += float(div.detach()) * float(n)
    return weight * div * n


def opsd_term(cfg, mb: MicroBatch, stats) -> torch.Tensor:
    """Full-vocabulary JSD_β(teacher ‖ student) on every response token."""
    return _distill(mb, lambda s_, t_, m_: alg.generalized_jsd(s_, t_, m_, cfg.opsd_beta), 1.0, stats)


def grpo_opsd_distill_term(cfg, mb: MicroBatch, stats) -> torch.Tensor:
    """μ · OPSD's JSD (added to the GRPO surrogate)."""
    return _distill(mb, lambda s_, t_, m_: alg.generalized_jsd(s_, t_, m_, cfg.opsd_beta), cfg.grpo_opsd_mu, stats)


def sdpo_term(cfg, mb: MicroBatch, stats) -> torch.Tensor:
    """Top-K + tail JSD_α on the responses shown a demonstration, token-mean over those tokens of the global batch."""
    return _distill(mb, lambda s_, t_, m_: alg.topk_tail_divergence(s_, t_, m_, cfg.sdpo_top_k, cfg.sdpo_alpha),
                    mb.distill_weight, stats)


# Each method's loss: the sum of its terms (each a token SUM over the micro-batch; see `Trainer.update`).
LOSS_TERMS = {"grpo": (grpo_term,), "rlsd": (rlsd_term,), "opsd": (opsd_term,),
              "grpo_opsd": (grpo_term, grpo_opsd_distill_term), "sdpo": (sdpo_term,)}


def drift_gradient_stats(drift_grads, total_grads) -> dict:
    """The drift term's gradient against the whole policy gradient (both before clipping):
    drift_grad_norm ‖g_d‖, drift_grad_share ‖g_d‖/‖g‖, drift_grad_projection <g_d, g>/‖g‖² (the part of the
    update along itself that the drift supplies; the GRPO part supplies 1 minus it)."""
    d = torch.cat([g.reshape(-1).double() for g in drift_grads])
    t = torch.cat([torch.zeros_like(g).reshape(-1).double() if tg is None else tg.reshape(-1).double()
                   for g, tg in zip(drift_grads, total_grads)])
    t_sq = float(t @ t)
    return {"drift_grad_norm": float(d.norm()), "drift_grad_share": float(d.norm()) / math.sqrt(t_sq) if t_sq else 0.0,
            "drift_grad_projection": float(d @ t) / t_sq if t_sq else 0.0}


# ---------------------------------------------------------------------------------------------- the trainer


def clock() -> float:
    """Wall time after the GPU's queued work is done (CUDA calls return early; phase times would be wrong)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


@dataclass
class StepBatch:
    """Everything one optimizer step works on, laid out [prompt0 x G, prompt1 x G, ...]."""

    problems: list[Problem]
    student: PromptBatch
    rollout: Rollout
    responses: list[str]
    rewards_N: torch.Tensor
    adv_N: torch.Tensor
    teacher: PromptBatch | None


class Trainer:
    def __init__(self, cfg: TrainConfig, accelerator=None, progress: bool = True):
        from accelerate import Accelerator

        self.cfg = cfg.validate()
        preflight.check(self.cfg, preflight.visible_device())  # what this machine cannot run: before any download
        self.out = Path(cfg.out)
        # Before anything heavy loads or anything is written: the run directory must be usable, and a checkpoint
        # in it must be loadable (weights_only) and written by this same configuration.
        ckpt.check_run_dir(self.out)
        self.lock = RunLock(self.out, "train")
        self.lock.check()  # another live run writes here: refused now (the lock is taken when writing starts)
        self.run_config = ckpt.read_run_config(self.out / "config.json")
        self.resume_dir, self.resume_state, problems = ckpt.find_resumable(self.out)
        for problem in problems:
            print(f"warning: skipping an unusable checkpoint: {problem}")
        if self.resume_state is not None:
            saved = self.resume_state.get("config") or {}
            conflicts = resume_conflicts(saved, cfg)
            if conflicts:
                raise ValueError(f"{self.resume_dir}: this run directory holds a run with another configuration "
                                 f"({'; '.join(conflicts)}); resume with the same values or choose another --out")
        conflicts = resume_conflicts(self.run_config, cfg) if self.run_config is not None else []
        if conflicts:
            raise ValueError(f"{self.out / 'config.json'}: records another configuration ({'; '.join(conflicts)}); "
                             "rerun with those values, or choose another --out")
        # The data next (seconds; a bad row or an offline hub id is reported before the model loads).
        self.train_problems, self.test_problems = load_training_problems(cfg)
        if cfg.data != "testbed":  # the testbed's questions are generated, and short
            self.limit_prompts()
        self.acc = accelerator or Accelerator(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
        if cfg.log_drift_grad and self.acc.num_processes > 1:
            raise ValueError("TrainConfig.log_drift_grad works in a single process only (it takes a second gradient "
                             "outside DDP's reducer)")
        self.progress = progress and self.acc.is_main_process
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)

        model, self.processor = load_policy(cfg.model, device=self.acc.device)
        self.tok = self.processor.tokenizer
        vocab = model.config.get_text_config().vocab_size
        self.suppress_ids = suppressed_token_ids(self.tok, vocab)
        self.suppress_V = suppress_mask(self.suppress_ids, vocab).to(self.acc.device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.policy = self.acc.unwrap_model(self.model)

        mode = TEACHER_MODE[cfg.method]
        if cfg.method in ("opsd", "grpo_opsd"):
            mode = cfg.opsd_teacher
        self.teacher = None if mode is None else TeacherWeights(
            self.policy, mode, sync_every=cfg.teacher_sync_every, ema_rate=cfg.sdpo_ema_rate)

        self.sampling = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                       top_p=cfg.top_p, top_k=0)
        self.engine = self._make_engine()
        self.step = 0
        self.skipped_steps = 0
        self.loss_scale = LossScale.for_dtype(cfg.model.dtype)  # fp16: gradients would underflow unscaled
        self.zero_variance_steps = 0  # consecutive steps whose every group had equal rewards
        self.writer = None

    # -------------------------------------------------------------------------------------------- set-up

    def close(self):
        """Shut the vLLM engine down (its GPU memory and worker process); HF generate holds nothing to close."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def _make_engine(self):
        if self.cfg.engine == "vllm":
            from rlsd.vllm_engine import make_vllm_engine

            engine = make_vllm_engine(self.cfg, self.policy, self.processor, self.suppress_ids)
            if engine is not None:
                return engine
        return None  # HF generate

    def limit_prompts(self):
        """Questions over the prompt limit are refused (or cut) now: before the model loads and any rollout."""
        from transformers import AutoConfig, AutoTokenizer

        cfg = self.cfg
        limit = cfg.max_prompt_tokens or prompt_token_limit(cfg, AutoConfig.from_pretrained(cfg.model.path))
        tok = AutoTokenizer.from_pretrained(cfg.model.path)
        cut = sum(limit_prompt_lengths(problems, tok, limit, cfg.long_prompts, where=cfg.data)
                  for problems in (self.train_problems, self.test_problems))
        if cut:
            print(f"{cfg.data}: {cut} questions cut to max_prompt_tokens={limit} (long_prompts=truncate)")

    def _open_logs(self):
        """Settle the checkpoints (the chosen one becomes checkpoint/), cut the logs back to its step, write config."""
        if not self.acc.is_main_process:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt.settle(self.out, self.resume_dir)
        self.resume_dir = None if self.resume_dir is None else self.out / "checkpoint"
        start = 0 if self.resume_state is None else int(self.resume_state["step"])
        dropped = ckpt.truncate_logs(self.out, start)
        if any(dropped.values()):
            print(f"{self.out}: dropped log records after step {start}: {dropped}")
        record = json.loads(self.cfg.to_json())
        if self.run_config != record:  # absent, or a field the command line may change (steps, out, ...): say so
            if self.run_config is not None:
                changed = sorted(k for k in set(record) | set(self.run_config)
                                 if record.get(k) != self.run_config.get(k))
                print(f"{self.out / 'config.json'}: updated as the command line asks ({', '.join(changed)})")
            self.write_log_file("config.json", self.cfg.to_json(), append=False)
        if self.cfg.tensorboard and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))

    # ------------------------------------------------------------------------------------------- rollout

    def rollout(self) -> StepBatch:
        cfg, G = self.cfg, self.cfg.group_size
        idx = step_prompts(len(self.train_problems), self.step, cfg.seed, cfg.prompts_per_step,
                           self.acc.process_index, self.acc.num_processes)
        problems = [self.train_problems[i] for i in idx]
        fmt = cfg.format_instruction
        student = encode_prompts(self.processor, [student_messages(p.question, len(p.images), fmt) for p in problems],
                                 [p.images for p in problems]).to(self.acc.device).repeat(G)
        if self.engine is not None:
            rollout = self.engine.generate(student, [p for p in problems for _ in range(G)], self.sampling)
        else:
            rollout = hf_generate(self.policy, student, self.sampling, self.suppress_ids, self.tok.eos_token_id,
                                  self.tok.pad_token_id, micro_batch_size=cfg.rollout_batch_size or None,
                                  cache=cfg.rollout_cache, compile=cfg.rollout_compile)
        responses = [self.tok.decode(ids[m.bool()], skip_special_tokens=True)
                     for ids, m in zip(rollout.response_ids_BT, rollout.response_mask_BT)]
        grouped = [p for p in problems for _ in range(G)]
        rewards_N = torch.tensor([r.reward for r in score_batch(responses, [p.answer for p in grouped])])
        adv_N = alg.group_advantages(rewards_N, G)

        teacher = self.teacher_prompts(problems, responses, rewards_N)
        return StepBatch(problems, student, rollout, responses, rewards_N, adv_N, teacher)

    def teacher_prompts(self, problems: list[Problem], responses: list[str], rewards_N: torch.Tensor):
        """The teacher's prompts for each response (None for GRPO): same images as the student's."""
        cfg, G = self.cfg, self.cfg.group_size
        grouped = [p for p in problems for _ in range(G)]
        if cfg.method == "grpo" or cfg.teacher_reference == "oracle":  # the oracle needs no teacher pass
            return None
        if cfg.method == "sdpo":
            demos = sdpo_demonstrations(responses, rewards_N.tolist(), G, cfg.sdpo_demo)
            messages = [teacher_messages(p.question, d, len(p.images), cfg.format_instruction) if d else
                        student_messages(p.question, len(p.images), cfg.format_instruction)
                        for p, d in zip(grouped, demos)]
            return encode_prompts(self.processor, messages, [p.images for p in grouped]).to(self.acc.device)
        messages = [teacher_messages(p.question, reference_text(p, cfg), len(p.images), cfg.format_instruction)
                    for p in problems]
        return encode_prompts(self.processor, messages, [p.images for p in problems]).to(self.acc.device).repeat(G)

    # -------------------------------------------------------------------------------------------- update

    def teacher_scores(self, batch: StepBatch, rows: list[int]):
        """No-grad teacher forward on a micro-batch: (logp_BT, scores or None).

        For the distillation methods the scores keep the teacher's hidden states and vocabulary head (its weights
        as they are now), from which `chunked_divergence` projects logits chunk by chunk.
        """
        ids_BT, mask_BT = batch.rollout.response_ids_BT[rows], batch.rollout.response_mask_BT[rows]
        keep = self.cfg.method in NEEDS_LOGITS
        with self.teacher_context() as model:
            s = score_responses(model, batch.teacher.select(rows), ids_BT, mask_BT, self.suppress_V,
                                with_entropy=False, keep_hidden=keep)
        return s.logp_BT.detach(), s if keep else None

    def oracle_deltas(self, batch: StepBatch) -> torch.Tensor:
        """The oracle control's Δ_NT (`teacher_reference="oracle"`): the demonstrator's exact evidence for each
        sampled token given the reference answer (rlsd.testbed.oracle_delta), 0 on padding."""
        G, ids_NT, mask_NT = self.cfg.group_size, batch.rollout.response_ids_BT, batch.rollout.response_mask_BT
        delta_NT = torch.zeros(ids_NT.shape, dtype=torch.float32)
        for n, (ids, m) in enumerate(zip(ids_NT.tolist(), mask_NT.tolist())):
            tokens = [self.tok.decode([i]) for i, keep in zip(ids, m) if keep]
            d = oracle_delta(batch.problems[n // G], tokens, self.cfg.oracle_demo_error)
            delta_NT[n, [t for t, keep in enumerate(m) if keep]] = torch.tensor(d, dtype=torch.float32)
        return delta_NT.to(self.acc.device)

    def thought_mask(self, ids_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
        """thought_only's scope: each response's tokens before its first closing thought tag (all of it if it has
        none, e.g. a truncated response)."""
        tag = self.tok("</thought>", add_special_tokens=False)["input_ids"]
        out_BT = mask_BT.clone().bool()
        for b, row in enumerate(ids_BT.tolist()):
            for t in range(len(row) - len(tag) + 1):
                if row[t:t + len(tag)] == tag:
                    out_BT[b, t:] = False
                    break
        return out_BT

    def teacher_context(self):
        if self.teacher is None:
            raise RuntimeError(f"method {self.cfg.method} has no teacher")
        return self.teacher.active()

    def learning_rate(self) -> float:
        """The rate of the current step: linear warm-up over `warmup_steps`, then constant."""
        cfg = self.cfg
        if cfg.warmup_steps and self.step < cfg.warmup_steps:
            return cfg.lr * (self.step + 1) / cfg.warmup_steps
        return cfg.lr

    def update(self, batch: StepBatch) -> dict:
        cfg = self.cfg
        N = batch.rewards_N.numel()
        mask_NT = batch.rollout.response_mask_BT
        # Token-mean over the global batch: every micro-batch's sum is divided by the global token count; DDP
        # averages gradients over processes, so the local loss is scaled by the number of processes.
        local_tokens = mask_NT.sum().float().to(self.acc.device)
        global_tokens = self.acc.reduce(local_tokens.clone(), reduction="sum").clamp(min=1)
        scale = self.acc.num_processes / global_tokens
        # The responses a distillation term covers: SDPO distills only those shown a demonstration (lasgroup/SDPO).
        distilled_N, distill_weight = torch.ones(N, dtype=torch.long), 1.0
        if cfg.method == "sdpo":
            distilled_N = torch.tensor([d is not None for d in sdpo_demonstrations(
                batch.responses, batch.rewards_N.tolist(), cfg.group_size, cfg.sdpo_demo)], dtype=torch.long)
            distilled = (mask_NT * distilled_N.to(mask_NT.device).unsqueeze(-1)).sum().float().to(self.acc.device)
            distill_weight = float(global_tokens / self.acc.reduce(distilled.clone(), reduction="sum").clamp(min=1))
        lam = alg.rlsd_lambda(self.step, cfg.rlsd_lam0, cfg.rlsd_decay_steps) if cfg.method == "rlsd" else 0.0
        # the shuffled-weights control draws its permutations from the step's own seed: resumable, reproducible
        shuffle_generator = torch.Generator().manual_seed(step_seed(cfg.seed, self.step, self.acc.process_index)) \
            if cfg.rlsd_shuffle_weights else None

        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        stats = {"loss_sum": 0.0, "pg_loss": 0.0, "distill_loss": 0.0, "entropy_sum": 0.0, "delta_sum": 0.0,
                 "clip_low": 0.0, "clip_high": 0.0, "weighted_tokens": 0.0, "teacher_s": 0.0, "student_s": 0.0,
                 "kl_teacher_sum": 0.0, "drift_abs_sum": 0.0, "adv_abs_sum": 0.0}
        params = [p for p in self.model.parameters() if p.requires_grad]
        drift_grads = None
        self.optimizer.zero_grad(set_to_none=True)
        teacher_logp_NT = None
        oracle_NT = self.oracle_deltas(batch) if cfg.teacher_reference == "oracle" and cfg.method == "rlsd" else None
        if batch.teacher is not None and cfg.method not in NEEDS_LOGITS:
            # RLSD needs only sampled-token log-probs: one batched no-grad pass, the paper's "one extra forward".
            t0 = clock()
            teacher_logp_NT = torch.cat([self.teacher_scores(batch, rows)[0]
                                         for rows in row_chunks(N, cfg.score_batch_size)])
            stats["teacher_s"] += clock() - t0
        for rows in row_chunks(N, cfg.micro_batch_size):
            ids_BT, mask_BT = batch.rollout.response_ids_BT[rows], mask_NT[rows]
            teacher_logp_BT = teacher_s = None
            if teacher_logp_NT is not None:
                teacher_logp_BT = teacher_logp_NT[rows]
            elif batch.teacher is not None:  # hidden states for the divergence: per micro-batch
                t0 = clock()
                teacher_logp_BT, teacher_s = self.teacher_scores(batch, rows)
                stats["teacher_s"] += clock() - t0  # exactly 0 for GRPO (no teacher)
            t1 = clock()
            s = score_responses(self.model, batch.student.select(rows), ids_BT, mask_BT, self.suppress_V,
                                with_entropy=True, keep_hidden=cfg.method in NEEDS_LOGITS)
            mask_BT = mask_BT.to(s.logp_BT.device)
            if oracle_NT is not None:  # a "teacher" whose log-prob differs from the student's by exactly the oracle Δ
                teacher_logp_BT = s.logp_BT.detach() + oracle_NT[rows]
            mb = MicroBatch(student=s, mask_BT=mask_BT, adv_B=batch.adv_N[rows].to(self.acc.device),
                            teacher_logp_BT=teacher_logp_BT, teacher=teacher_s,
                            distill_mask_BT=mask_BT * distilled_N[rows].to(mask_BT.device).unsqueeze(-1),
                            distill_weight=distill_weight, lam=lam,
                            thought_mask_BT=self.thought_mask(ids_BT, mask_BT) if cfg.rlsd_thought_only else None,
                            shuffle_generator=shuffle_generator)
            loss_sum = sum(term(cfg, mb, stats) for term in LOSS_TERMS[cfg.method])
            if "drift_loss" in stats:  # autograd.grad leaves .grad alone: the update itself is unchanged
                g = torch.autograd.grad(stats.pop("drift_loss") * scale, params, retain_graph=True,
                                        allow_unused=True)
                g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)]
                drift_grads = g if drift_grads is None else [a + b for a, b in zip(drift_grads, g)]
            self.acc.backward(loss_sum * (scale * self.loss_scale.scale))
            mask_f = mask_BT.float()
            stats["loss_sum"] += float(loss_sum.detach())
            stats["entropy_sum"] += float((s.entropy_BT.detach() * mask_f).sum())
            if teacher_logp_BT is not None:
                delta_BT = (teacher_logp_BT - s.logp_BT.detach()) * mask_f
                stats["delta_sum"] += float(delta_BT.sum())
                # Sampled-token estimate of KL(student ‖ teacher) on the student's own responses.
                stats["kl_teacher_sum"] += float((-delta_BT).sum())
            stats["student_s"] += clock() - t1

        self.loss_scale.unscale_(params)
        if drift_grads is not None:  # before clipping: the drift's share of the raw (unscaled) policy gradient
            stats.update(drift_gradient_stats(drift_grads, [p.grad for p in params]))
        grad_norm = self.acc.clip_grad_norm_(params, cfg.grad_clip)
        # Checked AFTER clipping, on the gradients that would be applied, and agreed by every process.
        grads = [p.grad for p in params if p.grad is not None]
        finite_local = math.isfinite(stats["loss_sum"]) and bool(torch.isfinite(torch.as_tensor(grad_norm))) and (
            not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all()))  # one device sync, not one per tensor
        flag = torch.tensor(float(finite_local), device=self.acc.device)
        finite = bool(self.acc.reduce(flag, reduction="sum") == self.acc.num_processes)
        if finite:
            self.optimizer.step()
            trained = [(n, p) for n, p in self.policy.named_parameters() if p.requires_grad]
            ok_P = torch.stack([p.isfinite().all() for _, p in trained])  # one device sync per step
            bad = [] if bool(ok_P.all()) else [n for (n, _), ok in zip(trained, ok_P.tolist()) if not ok]
            if bad:
                raise FloatingPointError(
                    f"step {self.step + 1}: {len(bad)} parameter tensors became non-finite after the optimizer step "
                    f"(first: {bad[0]}); stopped before writing a checkpoint -- {self.out / 'checkpoint'} holds the "
                    f"last good state")
        else:
            self.skipped_steps += 1  # never apply a non-finite update
        self.loss_scale.update(finite)
        self.optimizer.zero_grad(set_to_none=True)
        stats.update(lr=self.optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm), lam=lam, finite=finite,
                     local_tokens=float(local_tokens))
        return stats

    # ---------------------------------------------------------------------------------------------- loop

    def train(self) -> list[dict]:
        if self.acc.is_main_process:
            self.lock.acquire()  # released on any exit; a kill -9 leaves it to be taken over by the next run
        try:
            return self._train()
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into this): one line, no traceback
            last = ckpt.complete_step(self.out / "checkpoint")
            raise KeyboardInterrupt(f"{self.out}: interrupted at step {self.step + 1} (last checkpoint: "
                                    f"{'none' if last is None else f'step {last}'}); the same command resumes") \
                from None
        finally:
            self.lock.release()

    def _train(self) -> list[dict]:
        cfg = self.cfg
        self._open_logs()
        self.maybe_resume()
        records = []
        with tqdm(total=cfg.steps, initial=self.step, desc=f"{cfg.method} s{cfg.seed}",
                  disable=not self.progress) as bar:  # closed on any exit, so an error prints on its own line
            while self.step < cfg.steps:
                torch.manual_seed(step_seed(cfg.seed, self.step, self.acc.process_index))
                t0 = clock()
                batch = self.rollout()
                t1 = clock()
                stats = self.update(batch)
                t2 = clock()
                self.step += 1
                if self.teacher is not None and stats["finite"]:
                    self.teacher.after_optimizer_step(self.step)
                if self.engine is not None:
                    self.engine.sync_weights(self.policy)
                record = self.step_record(batch, stats, t1 - t0, t2 - t1)
                records.append(record)
                self.log(record)
                bar.update(1)
                bar.set_postfix(reward=f"{record['reward_mean']:.2f}", ent=f"{record['entropy']:.2f}",
                                lam=f"{record['lambda']:.2f}")
                if self.eval_due():
                    records.append(self.run_eval())
                if cfg.save_every and (self.step % cfg.save_every == 0 or self.step == cfg.steps):
                    self.save_checkpoint()
                if self.stalled(record):
                    break
        if self.writer is not None:
            self.writer.flush()
        return records

    def eval_due(self) -> bool:
        """Evaluate now? Every `eval_every` steps and at the end, plus the dense early schedule."""
        cfg, k = self.cfg, self.step
        dense = cfg.eval_dense_every and k <= cfg.eval_dense_until and k % cfg.eval_dense_every == 0
        return bool(cfg.eval_every and (k % cfg.eval_every == 0 or k == cfg.steps) or dense)

    def stalled(self, record: dict) -> bool:
        """True (checkpoint saved, one line printed) after `stop_after_zero_variance_steps` consecutive steps whose
        every group had equal rewards: zero advantages, a zero loss and gradient -- the run learns nothing."""
        n = self.cfg.stop_after_zero_variance_steps
        self.zero_variance_steps = record["zero_variance_steps"]
        if not n or self.zero_variance_steps < n:
            return False
        if self.cfg.save_every and self.step % self.cfg.save_every:
            self.save_checkpoint()  # not just written by the loop
        if self.acc.is_main_process:
            print(f"stopped at step {self.step}: every group's rewards were equal for {n} consecutive steps "
                  f"(reward_mean {record['reward_mean']:.2f}: zero advantages, nothing to learn); the data is too "
                  f"hard (or too easy) for max_new_tokens={self.cfg.max_new_tokens} -- raise it, use easier data, "
                  f"or set stop_after_zero_variance_steps=0", flush=True)
        return True

    def step_record(self, batch: StepBatch, stats: dict, rollout_s: float, update_s: float) -> dict:
        cfg, G = self.cfg, self.cfg.group_size
        acc = self.acc
        mask_NT = batch.rollout.response_mask_BT
        local = torch.tensor([
            float(batch.rewards_N.sum()), float(batch.rewards_N.numel()), float(mask_NT.sum()),
            float(batch.rollout.truncated_B.sum()),
            float((batch.rewards_N.view(-1, G).std(1) == 0).sum()), float(batch.rewards_N.numel() // G),
            stats["entropy_sum"], stats["delta_sum"], stats["kl_teacher_sum"], stats["clip_low"], stats["clip_high"],
            stats["weighted_tokens"], stats["pg_loss"], stats["distill_loss"], stats["loss_sum"],
            float(sum(mentions_reference(r) for r in batch.responses)), stats["drift_abs_sum"], stats["adv_abs_sum"],
        ], device=acc.device, dtype=torch.float64)
        tot = acc.reduce(local, reduction="sum").tolist()
        (r_sum, n, tokens, trunc, zero_std, groups, ent, delta, kl_t, clo, chi, wtok, pg, dist, loss_sum,
         leaks, drift_abs, adv_abs) = tot
        if torch.cuda.is_available():
            peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        teacher_used = batch.teacher is not None or self.cfg.teacher_reference == "oracle"
        return {
            "step": self.step, "method": cfg.method, "seed": cfg.seed,
            "reward_mean": r_sum / n, "accuracy": r_sum / n,
            "entropy": ent / max(tokens, 1), "response_tokens_mean": tokens / n, "truncated_frac": trunc / n,
            "zero_std_group_frac": zero_std / groups, "zero_variance_steps": self.zero_variance_steps + 1 if
            zero_std == groups else 0, "lambda": stats["lam"],
            "weight_clip_low_frac": clo / wtok if wtok else 0.0, "weight_clip_high_frac": chi / wtok if wtok else 0.0,
            # the authors' convention: clipped tokens over ALL response tokens (ours: over tokens with A != 0)
            "weight_clip_frac_all_tokens": (clo + chi) / max(tokens, 1),
            "delta_mean": delta / max(tokens, 1) if teacher_used else 0.0,
            "kl_student_teacher": kl_t / max(tokens, 1) if teacher_used else 0.0,
            "loss": loss_sum / max(tokens, 1), "pg_loss": pg / max(tokens, 1), "distill_loss": dist / max(tokens, 1),
            # leakage in the T = 1 training rollouts themselves (the paper counts leaks in sampled outputs)
            "rollout_leak_rate": leaks / n,
            # RLSD's drift term Â_t - A: its share of Σ|Â_t| (0 for the other methods and once λ = 0)
            "drift_adv_share": drift_abs / adv_abs if adv_abs else 0.0,
            **{k: stats[k] for k in ("drift_grad_norm", "drift_grad_share", "drift_grad_projection") if k in stats},
            "grad_norm": stats["grad_norm"], "lr": stats["lr"], "skipped": not stats["finite"],
            "skipped_steps": self.skipped_steps, "loss_scale": self.loss_scale.scale,
            "time_rollout_s": rollout_s, "time_teacher_s": stats["teacher_s"],
            "time_update_s": update_s - stats["teacher_s"], "peak_mem_mb": peak_mb,
        }

    def log(self, record: dict):
        if not self.acc.is_main_process:
            return
        name = "eval.jsonl" if "split" in record else "metrics.jsonl"
        self.write_log_file(name, json.dumps(record) + "\n")
        if self.writer is not None:
            prefix = f"eval_{record.get('format', '')}/" if "split" in record else "train/"
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.writer.add_scalar(prefix + k, v, record["step"])

    # ------------------------------------------------------------------------------------------ evaluation

    def run_eval(self) -> dict:
        """Test-split evaluation on the main process (student format), plus a few decoded samples with credits."""
        record = {}
        if self.acc.is_main_process and self.test_problems:
            cfg = self.cfg
            sampling = SamplingParams(max_new_tokens=cfg.eval_max_new_tokens, temperature=VALIDATION_SAMPLING.temperature,
                                      top_p=VALIDATION_SAMPLING.top_p, top_k=VALIDATION_SAMPLING.top_k)
            if cfg.eval_decoding == "greedy":
                sampling = SamplingParams(max_new_tokens=cfg.eval_max_new_tokens, temperature=0.0)
            rng_state = torch.get_rng_state()
            res = evaluate(self.policy, self.processor, self.test_problems, fmt="student", sampling=sampling,
                           seed=cfg.seed, batch_size=cfg.rollout_batch_size or cfg.micro_batch_size,
                           progress=False)
            torch.set_rng_state(rng_state)  # evaluation must not shift the training RNG stream
            record = {"step": self.step, "method": cfg.method, "seed": cfg.seed, "split": "test", **res.summary}
            self.log(record)
            self.write_samples(res)
        self.acc.wait_for_everyone()
        return record

    def write_samples(self, res):
        n = self.cfg.samples_per_eval
        if n == 0:
            return
        self.write_log_file("samples.jsonl", "".join(
            json.dumps({"step": self.step, "id": p.id, "question": p.question, "answer": p.answer, "response": resp,
                        "reward": reward}) + "\n"
            for p, resp, reward in list(zip(self.test_problems, res.responses, res.rewards))[:n]))

    def write_log_file(self, name: str, text: str, append: bool = True):
        """Append to (or replace) a log; out of space: no partial line left, one line naming the directory."""
        try:
            (append_text if append else write_text)(self.out / name, text)
        except OSError as e:
            if not disk_full(e):
                raise
            last = ckpt.complete_step(self.out / "checkpoint")
            raise disk_full_error(self.out, name, f"{self.out / 'checkpoint'} (step {last}) is intact"
                                  if last is not None else "no checkpoint was written yet") from None

    # ---------------------------------------------------------------------------------------- checkpoints

    def checkpoint_state(self) -> dict:
        return {
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "loss_scale": self.loss_scale.state_dict(),
            "zero_variance_steps": self.zero_variance_steps,
            "trainable": {n: p.detach().cpu() for n, p in self.policy.named_parameters() if p.requires_grad},
            "optimizer": self.optimizer.state_dict(),
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "rng_python": random.getstate(),
            "config": json.loads(self.cfg.to_json()),
        }

    checkpoint_hook = None
    """Called between the stages of a checkpoint write (rlsd.checkpoint.write_checkpoint); fault-injection tests."""

    def save_checkpoint(self):
        """Write <out>/checkpoint so that a kill at any instant leaves a complete one (rlsd.checkpoint)."""
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return

        def save_weights(tmp: Path):  # safetensors: loadable by peft / transformers without unpickling
            if hasattr(self.policy, "peft_config"):
                self.policy.save_pretrained(tmp / "adapter")
            else:
                self.policy.save_pretrained(tmp / "model")
                self.processor.save_pretrained(tmp / "model")

        ckpt.write_checkpoint(self.out, self.step, self.checkpoint_state(), self.cfg.to_json(), save_weights,
                              hook=self.checkpoint_hook)

    def maybe_resume(self):
        """Continue from the checkpoint found at start (the logs were already cut back to its step)."""
        state = self.resume_state
        if state is None:
            return
        self.resume_state = {"step": state["step"]}  # free the tensors once applied
        params = dict(self.policy.named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        if set(state["trainable"]) != trainable or any(
                state["trainable"][n].shape != params[n].shape for n in trainable):
            raise ckpt.CheckpointError(f"{self.resume_dir / 'state.pt'}: its trainable tensors do not match this "
                                       f"model's ({len(state['trainable'])} saved, {len(trainable)} here)")
        with torch.no_grad():
            for n, t in state["trainable"].items():
                params[n].copy_(t.to(params[n].device))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        torch.set_rng_state(state["rng_torch"])
        if state["rng_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        random.setstate(state["rng_python"])
        self.step, self.skipped_steps = state["step"], state["skipped_steps"]
        self.loss_scale.load_state_dict(state.get("loss_scale"))
        self.zero_variance_steps = int(state.get("zero_variance_steps", 0))
        if self.engine is not None:
            self.engine.sync_weights(self.policy)


def train(cfg: TrainConfig, progress: bool = True) -> list[dict]:
    """Build a Trainer and run it (resuming from <out>/checkpoint when present); its rollout engine is shut down
    after, so a second run in the same process (notebook 03's next method) starts on a free GPU."""
    trainer = Trainer(cfg, progress=progress)
    try:
        return trainer.train()
    finally:
        trainer.close()
