"""Training configuration: one dataclass, named profiles, command-line overrides.

    python -m rlsd train --method rlsd --profile cpu --seed 1 --out runs/rlsd-s1 lr=2e-5 model.lora_rank=8

Every field has a docstring (the string under it); `python -m rlsd train --help-config` prints them all.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field

from rlsd.model import ModelSpec

METHODS = ("grpo", "rlsd", "opsd", "sdpo", "grpo_opsd")
SHIPPED_TINY = "data/tiny-sft"


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as config.json in the run directory."""

    method: str = "rlsd"
    """grpo | rlsd | opsd | sdpo | grpo_opsd (the formula table of rlsd/algorithm.py)."""
    seed: int = 0
    """Seed of rollouts, prompt order and evaluation."""
    out: str = "runs/rlsd"
    """Run directory: config.json, metrics.jsonl, samples.jsonl, checkpoint/, tensorboard/."""
    model: ModelSpec = field(default_factory=lambda: ModelSpec(path=SHIPPED_TINY))
    """The policy: path or hub id, LoRA rank, 4-bit base, dtype, gradient checkpointing."""
    data: str = "testbed"
    """'testbed' (synthetic, generated), a path to an MMFineReason-style JSONL/parquet file, or
    hf:<dataset id>[:<split>[:<config>]] (a hub dataset, or a local hub-layout / save_to_disk directory), e.g.
    hf:iieycx/rlsd-train-MMFineReason-123K (rlsd.data documents the column mapping)."""
    n_train_problems: int = 20000
    """Training problems drawn from `data` (testbed: the train split prefix)."""
    data_split_seed: int = 0
    """Order of a data file's rows: the first `eval_problems` usable rows are the held-out test slice, the next
    `n_train_problems` the training set. Fixed across seeds, so every run is evaluated on the same rows."""
    data_max_bad_fraction: float = 0.01
    """A hub dataset's unusable rows (missing answer, unreadable image, ...) are skipped and counted; more than
    this share of the rows examined fails the run at start."""
    max_prompt_tokens: int = 0
    """Longest question, in tokens, a training or test row may have (0: the model's context less the response
    budget and one image at `model.max_pixels`). Checked at load, before the model loads."""
    long_prompts: str = "refuse"
    """A row whose question is over `max_prompt_tokens`: 'refuse' (the load fails naming the row) or 'truncate'
    (its question is cut to the limit; one line says how many rows were cut)."""

    # --- rollouts
    steps: int = 200
    """Optimizer steps (one rollout batch each)."""
    prompts_per_step: int = 8
    """Prompts per step on EACH process; the global batch is this x number of processes."""
    group_size: int = 8
    """G: responses sampled per prompt."""
    max_new_tokens: int = 64
    """Response budget per rollout."""
    temperature: float = 1.0
    """Rollout temperature (paper: 1.0)."""
    top_p: float = 1.0
    """Rollout nucleus mass (paper: 1.0)."""
    engine: str = "hf"
    """Rollout engine: 'hf' (transformers generate) or 'vllm' (GPU, falls back to hf if vLLM is missing)."""
    device: str = "auto"
    """'auto' (CUDA when visible, else CPU), 'cuda' (refused at start when no CUDA device is visible; the GPU
    profiles set it) or 'cpu' (run on the CPU even where a profile asks for CUDA)."""
    micro_batch_size: int = 64
    """Sequences per forward/backward micro-batch of the update (student forwards, and the teacher forwards of the
    methods that need its full-vocabulary logits: opsd, grpo_opsd, sdpo)."""
    format_instruction: bool = True
    """Append the paper's format instruction (<thought>/<answer> tags) to student and teacher prompts. false: the
    bare question -- only for timing against a peer whose prompts have none (`rlsd.bench.peer_batch`)."""
    rollout_batch_size: int = 0
    """Sequences per `generate` call (0: the whole local batch in one call). Decoding is latency-bound: on an H200 a
    2B-shaped model took 75 s for 64 x 128 tokens in chunks of 8 -- one token step costs nearly the same for 8 rows
    as for 64 -- so keep this as large as the KV cache allows."""
    rollout_cache: str = "dynamic"
    """KV cache of HF-generate rollouts: 'dynamic' (grows by concatenation, transformers' default) or 'static'
    (preallocated prompt + max_new_tokens). Same numbers either way; which is faster depends on the machine."""
    rollout_compile: bool = False
    """torch.compile the decoding step through `generate`'s auto-compile (needs rollout_cache='static'; CUDA)."""
    score_batch_size: int = 0
    """Sequences per no-grad teacher forward for RLSD, which needs only the teacher's log-prob of each sampled token
    (0: the whole local batch at once). The teacher pass runs before the update as one batched pass."""

    # --- optimisation
    lr: float = 1e-5
    """AdamW learning rate, constant after warm-up (paper: 1e-6 GRPO/RLSD/GRPO+OPSD, 1e-5 OPSD/SDPO at 8B full
    fine-tune)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up over the first N optimizer steps (0: none, the paper's setting). The rate is a
    pure function of the step, so resuming needs no scheduler state."""
    weight_decay: float = 0.01
    """AdamW weight decay (paper: 0.01)."""
    grad_clip: float = 1.0
    """Gradient-norm clip (paper: 1.0)."""
    eps_low: float = 0.2
    """PPO ratio clip below 1."""
    eps_high: float = 0.28
    """PPO ratio clip above 1 (clip-higher)."""
    dual_clip: float = 3.0
    """Dual-clip bound C for negative advantages."""

    # --- RLSD
    rlsd_lam0: float = 0.5
    """λ0: initial weight of the teacher's evidence in the token advantage."""
    rlsd_decay_steps: int = 50
    """K: λ decays linearly to 0 over K optimizer steps (paper: 50 steps of 256 prompts). 0: λ stays λ0 for the
    whole run (the authors' convention); to turn RLSD's evidence off, set rlsd_lam0=0."""
    rlsd_clip_eps: float = 0.2
    """ε_w: evidence weights are clipped to [1-ε_w, 1+ε_w]."""
    rlsd_negative_only: bool = False
    """The authors' rlsd_negative_only: evidence weights only on responses with A < 0 (the rest keep weight 1)."""
    rlsd_thought_only: bool = False
    """The authors' rlsd_thought_only: evidence weights only on the tokens before the closing thought tag."""
    rlsd_shuffle_weights: bool = False
    """A control: each response's evidence weights permuted among its own tokens (same magnitudes, no targeting)."""
    teacher_sync_every: int = 10
    """N: the RLSD teacher snapshot is re-synced to the policy every N steps."""
    teacher_reference: str = "answer"
    """What the teacher prompt reveals: 'answer' (the final answer; RLSD) or 'solution' (a reference solution, if
    the data has one; OPSD's original setting). The testbed's teacher format was trained with the answer.
    'wrong_answer': a control -- the teacher is told a plausible wrong answer (rlsd.testbed.wrong_answer).
    'oracle': a control (RLSD, testbed) -- no teacher pass; Δ_t is the demonstrator's exact evidence
    (rlsd.testbed.oracle_delta), what a self-teacher that had learnt the demonstrator exactly would give."""
    oracle_demo_error: float = 0.5
    """The oracle's demonstrator misreading rate: the shipped warm start's `demo_error` (its sft_config.json)."""

    # --- OPSD / GRPO+OPSD / SDPO
    opsd_beta: float = 0.5
    """β of the generalized JSD (0.5: symmetric)."""
    opsd_teacher: str = "initial"
    """Teacher weights for OPSD and GRPO+OPSD: 'initial' (paper default, frozen) or 'current' (online)."""
    grpo_opsd_mu: float = 0.1
    """μ: weight of the OPSD loss added to the GRPO loss. The JSD per token is O(0.1-1) nats while the
    policy-gradient term is O(|A|)=O(1) per token; μ=0.1 keeps the reward term dominant, so the hybrid is GRPO
    with a distillation regulariser rather than OPSD with a reward bonus."""
    sdpo_top_k: int = 100
    """SDPO distills over the teacher's top-K tokens plus one tail bucket."""
    sdpo_alpha: float = 0.5
    """SDPO's JSD mixing weight α."""
    sdpo_ema_rate: float = 0.05
    """SDPO teacher = EMA of the policy with this rate per step."""
    sdpo_demo: str = "answer"
    """What an SDPO teacher is shown of a successful sibling: 'answer' (its final answer -- lasgroup/SDPO removes
    the reasoning from demonstrations) or 'full' (the whole response)."""

    # --- evaluation and artefacts
    eval_every: int = 25
    """Evaluate on the test split every this many steps (and at the end); 0 disables periodic evaluation."""
    eval_dense_every: int = 0
    """Also evaluate every this many steps up to step `eval_dense_until` (dense early evaluation, e.g. in RLSD's λ
    window); 0: off."""
    eval_dense_until: int = 0
    """Last step of the dense evaluation schedule (see eval_dense_every)."""
    eval_decoding: str = "validation"
    """'validation': the paper's validation decoding (T 0.7, top-p 0.8, top-k 20), one sample per problem;
    'greedy': the most likely response (no sampling noise: paired differences show only policy differences)."""
    eval_problems: int = 300
    """Test problems per periodic evaluation."""
    eval_max_new_tokens: int = 64
    """Response budget at evaluation."""
    save_every: int = 25
    """Write a resumable checkpoint every this many steps (and at the end)."""
    samples_per_eval: int = 4
    """Decoded responses (with rewards and token credits) written to samples.jsonl per evaluation."""
    tensorboard: bool = True
    """Also log scalars to <out>/tensorboard."""
    log_drift_grad: bool = False
    """RLSD: also take the gradient of the drift term Â_t - A alone each step (one extra backward, the update is
    unchanged) and log its norm, share and projection on the policy gradient (single process only)."""
    stop_after_zero_variance_steps: int = 0
    """Stop the run (checkpoint saved, one line printed) after this many consecutive steps in which every group's
    rewards were equal: zero advantages, so loss and gradient are 0 and nothing is learned (0: never stop)."""

    def validate(self) -> "TrainConfig":
        """Fail at start, naming the field, on values that would fail (or silently mislead) later."""
        def bad(name, why):
            raise ValueError(f"TrainConfig.{name} {why}")

        if self.method not in METHODS:
            bad("method", f"must be one of {METHODS}, got {self.method!r}")
        for f in dataclasses.fields(self):  # e.g. steps=2.5 would otherwise run 3 steps
            default = f.default if f.default is not dataclasses.MISSING else None
            value = getattr(self, f.name)
            if isinstance(default, bool) and not isinstance(value, bool):
                bad(f.name, f"must be true or false, got {value!r}")
            if isinstance(default, int) and not isinstance(default, bool) and (
                    isinstance(value, bool) or not isinstance(value, int)):
                bad(f.name, f"must be an integer, got {value!r}")
        for f in dataclasses.fields(self):  # lr=inf or grad_clip=nan would corrupt the weights silently
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                bad(f.name, f"must be a finite number, got {value!r}")
        for f in dataclasses.fields(self.model):
            value = getattr(self.model, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                bad(f"model.{f.name}", f"must be a finite number, got {value!r}")
        if "trust_remote_code" in self.model.extra:
            bad("model.extra", "may not set trust_remote_code (a model directory must not run code on load)")
        if self.model.lora_rank < 0:
            bad("model.lora_rank", f"must be >= 0 (0 trains all parameters), got {self.model.lora_rank}")
        if self.model.load_in_4bit and self.model.lora_rank == 0:
            bad("model.load_in_4bit", "needs model.lora_rank > 0 (4-bit weights cannot be trained)")
        if self.model.dtype not in ("float32", "bfloat16", "float16"):
            bad("model.dtype", f"must be float32, bfloat16 or float16, got {self.model.dtype!r}")
        if self.model.dtype == "float16" and self.model.lora_rank == 0:
            bad("model.dtype", "float16 needs model.lora_rank > 0: full fine-tuning keeps fp16 weights and AdamW "
                "states, which overflow or underflow within a few steps (use bfloat16, float32, or LoRA)")
        if self.device not in ("auto", "cuda", "cpu"):
            bad("device", f"must be 'auto', 'cuda' or 'cpu', got {self.device!r}")
        for name in ("steps", "prompts_per_step", "max_new_tokens", "micro_batch_size", "eval_problems",
                     "eval_max_new_tokens", "teacher_sync_every"):
            if getattr(self, name) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2 and self.method in ("grpo", "rlsd", "grpo_opsd", "sdpo"):
            bad("group_size", f"must be >= 2 for group advantages, got {self.group_size}")
        for name in ("eval_every", "eval_dense_every", "eval_dense_until", "save_every", "samples_per_eval",
                     "rlsd_decay_steps", "warmup_steps", "rollout_batch_size", "score_batch_size",
                     "stop_after_zero_variance_steps"):
            if getattr(self, name) < 0:
                bad(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0 < self.lr <= 1:
            bad("lr", f"must be in (0, 1], got {self.lr}")
        if not self.grad_clip > 0:
            bad("grad_clip", f"must be > 0 (a norm bound; <= 0 would zero or flip gradients), got {self.grad_clip}")
        if self.weight_decay < 0:
            bad("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not 0 < self.eps_low < 1:
            bad("eps_low", f"must be in (0, 1), got {self.eps_low}")
        if not self.eps_high > 0:
            bad("eps_high", f"must be > 0, got {self.eps_high}")
        if not 0 <= self.data_max_bad_fraction < 1:
            bad("data_max_bad_fraction", f"must be in [0, 1), got {self.data_max_bad_fraction}")
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self.model, name, None)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                bad(f"model.{name}", f"must be a positive integer or null, got {value!r}")
        if None not in (getattr(self.model, "min_pixels", None), getattr(self.model, "max_pixels", None)) and \
                self.model.min_pixels > self.model.max_pixels:
            bad("model.min_pixels", f"must be <= model.max_pixels, got {self.model.min_pixels} > {self.model.max_pixels}")
        if self.model.lora_alpha <= 0:
            bad("model.lora_alpha", f"must be > 0, got {self.model.lora_alpha}")
        if not 0 <= self.model.lora_dropout < 1:
            bad("model.lora_dropout", f"must be in [0, 1), got {self.model.lora_dropout}")
        if not 0 <= self.rlsd_lam0 <= 1:
            bad("rlsd_lam0", f"must be in [0, 1], got {self.rlsd_lam0}")
        if not 0 < self.rlsd_clip_eps < 1:
            bad("rlsd_clip_eps", f"must be in (0, 1), got {self.rlsd_clip_eps}")
        if not 0 <= self.opsd_beta <= 1:
            bad("opsd_beta", f"must be in [0, 1], got {self.opsd_beta}")
        if self.opsd_teacher not in ("initial", "current"):
            bad("opsd_teacher", f"must be 'initial' or 'current', got {self.opsd_teacher!r}")
        if self.eval_decoding not in ("validation", "greedy"):
            bad("eval_decoding", f"must be 'validation' or 'greedy', got {self.eval_decoding!r}")
        if self.eval_dense_every and not self.eval_dense_until:
            bad("eval_dense_until", "must be > 0 when eval_dense_every is set")
        if self.teacher_reference not in ("answer", "solution", "wrong_answer", "oracle"):
            bad("teacher_reference",
                f"must be 'answer', 'solution', 'wrong_answer' or 'oracle', got {self.teacher_reference!r}")
        if self.teacher_reference in ("wrong_answer", "oracle") and self.data != "testbed":
            bad("teacher_reference", f"{self.teacher_reference!r} (a control) needs data=testbed, where "
                f"{'a wrong answer' if self.teacher_reference == 'wrong_answer' else 'the exact posterior'} is known")
        if self.teacher_reference == "oracle" and self.method != "rlsd":
            bad("teacher_reference", f"'oracle' replaces RLSD's evidence Δ_t; method {self.method!r} has none")
        if not 0.0 <= self.oracle_demo_error < 2 / 3:
            bad("oracle_demo_error", f"must be in [0, 2/3) (the true count the likeliest read-out), "
                f"got {self.oracle_demo_error}")
        if self.rollout_cache not in ("dynamic", "static"):
            bad("rollout_cache", f"must be 'dynamic' or 'static', got {self.rollout_cache!r}")
        if self.rollout_compile and self.rollout_cache != "static":
            bad("rollout_compile", "needs rollout_cache='static' (transformers compiles static caches only)")
        if self.engine not in ("hf", "vllm"):
            bad("engine", f"must be 'hf' or 'vllm', got {self.engine!r}")
        if self.temperature <= 0:
            bad("temperature", f"must be > 0 for on-policy sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.dual_clip <= 1:
            bad("dual_clip", f"must be > 1, got {self.dual_clip}")
        if self.sdpo_top_k < 1:
            bad("sdpo_top_k", f"must be >= 1, got {self.sdpo_top_k}")
        if not 0 < self.sdpo_ema_rate <= 1:
            bad("sdpo_ema_rate", f"must be in (0, 1], got {self.sdpo_ema_rate}")
        if self.sdpo_demo not in ("answer", "full"):
            bad("sdpo_demo", f"must be 'answer' or 'full', got {self.sdpo_demo!r}")
        if self.grpo_opsd_mu < 0:
            bad("grpo_opsd_mu", f"must be >= 0, got {self.grpo_opsd_mu}")
        if self.max_prompt_tokens < 0:
            bad("max_prompt_tokens", f"must be >= 0 (0: from the model's context), got {self.max_prompt_tokens}")
        if self.long_prompts not in ("refuse", "truncate"):
            bad("long_prompts", f"must be 'refuse' or 'truncate', got {self.long_prompts!r}")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["model"] = ModelSpec(**d.get("model", {}))
        return cls(**d)


# Named profiles: partial overrides of the defaults. GPU profiles follow the paper's settings where one GPU allows.
PROFILES: dict[str, dict] = {
    # CI: seconds. A handful of tiny steps through every phase of the loop.
    "smoke": dict(model=dict(path=SHIPPED_TINY, freeze_vision=True), steps=3, prompts_per_step=2, group_size=4,
                  max_new_tokens=32, eval_every=3, eval_problems=16, eval_max_new_tokens=32, save_every=2,
                  samples_per_eval=2, micro_batch_size=8, n_train_problems=200, rlsd_decay_steps=3,
                  teacher_sync_every=2),
    # The default reproduction on the testbed: full-parameter RL on the ~1M-parameter warm start, sized so that
    # 5 seeds of GRPO/RLSD/OPSD and 3 of SDPO, GRPO+OPSD and online OPSD fit in an hour on 2 cores.
    # 150 steps: GRPO's test curve was still rising at step 100 in a probe. Tested every 25 steps on 500 problems.
    # λ window: the paper decays λ over its first 50 steps of 256 prompts; at 8 prompts per step we keep the same
    # SHARE of training (K = steps / 2) rather than the same step count -- a documented departure.
    # Vision encoder frozen: its backward (each image encoded once per sample) was 75% of a full-parameter step.
    # lr 1e-4 for the reward-driven methods, 3e-4 for OPSD and SDPO (METHOD_SETTINGS below), each the best of a
    # 40-step probe paired by step on the training reward (data/runs/lr-probe; README "How the learning rates were
    # chosen"). The paper's 10x (1e-3) was the worst of the distillation rates probed: a documented departure.
    "cpu": dict(model=dict(path=SHIPPED_TINY, freeze_vision=True), steps=150, prompts_per_step=8, group_size=8,
                max_new_tokens=40, lr=1e-4, rlsd_decay_steps=75, teacher_sync_every=10, eval_every=25,
                eval_problems=500, eval_max_new_tokens=40, save_every=25),
}


# GPU profiles: one per model size and GPU class, `qwen3vl-<size>-<gpu>`. What differs between classes is only what
# memory forces (`rlsd.memory.estimate` gives each one's peak; the README's table is printed by
# `python -m rlsd profiles`). All: LoRA on the language model, gradient checkpointing, the authors' image pixel range
# (262,144-1,048,576 pixels: at most 1,024 visual tokens per image), the authors' training set from the hub.
GPU_CLASSES = {
    # name: (memory GB, dtype, rollout engine). T4: no bf16 (compute capability 7.5), and vLLM refuses it.
    "t4": (16, "float16", "hf"),
    "l4": (24, "bfloat16", "vllm"),  # also A10 / RTX 4090 / 3090
    "a100": (80, "bfloat16", "vllm"),  # also H100; a 40 GB A100 runs the l4 profile with room to spare
}
GPU_SETTINGS = {
    # (size, gpu): lora_rank, 4-bit base, prompts/step, max_new_tokens, micro_batch, rollout_batch, score_batch
    ("2b", "t4"): (16, True, 4, 512, 2, 16, 4),
    ("2b", "l4"): (16, True, 8, 1024, 4, 32, 8),
    ("2b", "a100"): (32, False, 16, 2048, 8, 128, 16),
    ("8b", "t4"): (16, True, 2, 512, 1, 8, 2),
    ("8b", "l4"): (16, True, 4, 1024, 2, 16, 4),
    ("8b", "a100"): (32, True, 16, 2048, 4, 64, 8),
}
MODEL_IDS = {"2b": "Qwen/Qwen3-VL-2B-Instruct", "8b": "Qwen/Qwen3-VL-8B-Instruct"}
HUB_TRAIN_SET = "hf:iieycx/rlsd-train-MMFineReason-123K"


GPU_PROFILE_STEPS = 100


def gpu_profile(size: str, gpu: str) -> dict:
    """A GPU profile. CUDA required (device=cpu to override); the training set is steps x prompts rows (what the
    run reads; the 20,000-row default would fetch and check 12-50x more rows before step 1); a run whose every group
    has equal rewards for 10 steps in a row stops (a set too hard for the response budget learns nothing)."""
    rank, nf4, prompts, new_tokens, micro, rollout, score = GPU_SETTINGS[(size, gpu)]
    _, dtype, engine = GPU_CLASSES[gpu]
    return dict(device="cuda", n_train_problems=GPU_PROFILE_STEPS * prompts, stop_after_zero_variance_steps=10,
                model=dict(path=MODEL_IDS[size], lora_rank=rank, lora_alpha=2 * rank, load_in_4bit=nf4, dtype=dtype,
                           gradient_checkpointing=True, min_pixels=262_144, max_pixels=1_048_576),
                data=HUB_TRAIN_SET, steps=GPU_PROFILE_STEPS, prompts_per_step=prompts, group_size=8,
                max_new_tokens=new_tokens, micro_batch_size=micro, rollout_batch_size=rollout, score_batch_size=score,
                lr=1e-5, rlsd_decay_steps=50, eval_every=25, eval_problems=200, eval_max_new_tokens=new_tokens, engine=engine)


PROFILES.update({f"qwen3vl-{size}-{gpu}": gpu_profile(size, gpu) for size, gpu in GPU_SETTINGS})
PROFILES["qwen3vl-2b"] = PROFILES["qwen3vl-2b-l4"]  # the names of earlier versions
PROFILES["qwen3vl-8b"] = PROFILES["qwen3vl-8b-a100"]


def apply_overrides(cfg, overrides: dict):
    """Return a copy of (nested) dataclass `cfg` with `overrides` applied; nested dicts update nested dataclasses."""
    changes = {}
    names = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in overrides.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{type(cfg).__name__} has no field {key!r}{hint}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = apply_overrides(current, value)
        else:
            changes[key] = value
    return dataclasses.replace(cfg, **changes)


def parse_override(text: str) -> dict:
    """'a.b=3' -> {'a': {'b': 3}}; values are parsed as JSON when possible (numbers, true/false), else strings."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like field=value (e.g. lr=2e-5 or model.lora_rank=8)")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    for part in reversed(key.split(".")[1:]):
        value = {part: value}
    return {key.split(".")[0]: value}


def _coerce(cfg, overrides: dict) -> dict:
    """Cast override values to the type of the field they replace (e.g. '1e-5' -> float, 3 -> 3.0)."""
    out = {}
    for key, value in overrides.items():
        current = getattr(cfg, key, None)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            out[key] = _coerce(current, value)
        elif isinstance(current, bool):
            text = str(value).lower()
            if not isinstance(value, bool) and text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(f"field {key!r} expects true/false, got {value!r}")
            out[key] = value if isinstance(value, bool) else text in ("1", "true", "yes", "on")
        elif isinstance(current, (int, float)) and not isinstance(current, bool) and not isinstance(value, bool):
            try:
                out[key] = type(current)(value) if not (isinstance(current, int) and isinstance(value, float)
                                                        and not value.is_integer()) else value
            except (TypeError, ValueError):
                raise ValueError(f"field {key!r} expects {type(current).__name__}, got {value!r}") from None
        else:
            out[key] = value
    return out


# Per-method settings of a profile (applied after the profile, before the caller's fields and overrides): the
# paper trains the distillation methods at a higher learning rate than the reward-driven ones (10x at 8B).
METHOD_SETTINGS: dict[str, dict[str, dict]] = {
    "cpu": {"opsd": dict(lr=3e-4), "sdpo": dict(lr=3e-4)},
}


def make_config(profile: str = "cpu", overrides: list[str] | dict | None = None, **fields) -> TrainConfig:
    """Defaults <- profile <- the profile's per-method settings <- keyword fields <- 'key=value' overrides; validated."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {tuple(PROFILES)}")
    if isinstance(overrides, dict):
        overrides = [overrides]
    items = [parse_override(item) if isinstance(item, str) else item for item in overrides or []]
    cfg = apply_overrides(TrainConfig(), PROFILES[profile])
    method = next((item["method"] for item in reversed(items) if "method" in item), fields.get("method", cfg.method))
    cfg = apply_overrides(cfg, _coerce(cfg, METHOD_SETTINGS.get(profile, {}).get(method, {})))
    cfg = apply_overrides(cfg, _coerce(cfg, fields))
    for item in items:
        cfg = apply_overrides(cfg, _coerce(cfg, item))
    return cfg.validate()


# Fields a resumed run may change: where it writes, how long it runs, how often it logs, and how it batches work
# (micro-batch sizes and the rollout's KV cache change float summation order only). Every other field changes what
# is computed.
RESUME_MAY_CHANGE = {"out", "steps", "save_every", "eval_every", "eval_dense_every", "eval_dense_until",
                     "samples_per_eval", "tensorboard", "log_drift_grad", "device", "stop_after_zero_variance_steps",
                     "micro_batch_size", "rollout_batch_size", "score_batch_size", "rollout_cache", "rollout_compile"}


def prompt_token_limit(cfg: TrainConfig, model_config) -> int:
    """Default `max_prompt_tokens`: the model's context less the response budget, one image at `model.max_pixels`
    (one token per 32 x 32 pixels) and the chat template's own tokens."""
    context = model_config.get_text_config().max_position_embeddings
    image = (cfg.model.max_pixels or 1024 * 1024) // (32 * 32)
    limit = context - max(cfg.max_new_tokens, cfg.eval_max_new_tokens) - image - 64
    if limit < 1:
        raise ValueError(f"TrainConfig.max_new_tokens: {cfg.max_new_tokens} response tokens and a {image}-token image "
                         f"leave no room for a question in the model's {context}-token context")
    return limit


def flat_fields(d: dict, prefix: str = "") -> dict:
    """{'model': {'lora_rank': 8}} -> {'model.lora_rank': 8}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "extra":
            out.update(flat_fields(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_conflicts(saved: dict, cfg: TrainConfig) -> list[str]:
    """'field: saved -> now' for every field that differs from the checkpoint's and changes what is computed."""
    now = flat_fields(json.loads(cfg.to_json()))
    before = flat_fields(saved)
    defaults = flat_fields(json.loads(TrainConfig().to_json()))
    conflicts = []
    for k in sorted(set(now) | set(before)):
        if k in RESUME_MAY_CHANGE or before.get(k) == now.get(k):
            continue
        if k not in before and now.get(k) == defaults.get(k):
            continue  # a field added after the checkpoint was written, left at its default
        conflicts.append(f"{k}: {before.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}")
    return conflicts
