"""Peak GPU memory of a training configuration: a documented estimate, per phase, for the engine that will run.

    python -m rlsd profiles            # the README's table: every GPU profile, its class's memory, this estimate

An estimate, not a measurement: it counts the tensors the code keeps and nothing the allocator adds, so read it as
a lower bound with ~10-20% allocator slack on top (`HEADROOM`). Each term (bytes):

    weights        language-model linear layers at 0.516 B/param in NF4 (4 bits + double-quantised absmax) or 2 B;
                   embeddings, the LM head (untied in 8B) and the vision tower at 2 B (kept out of NF4 on purpose)
    lora           adapters in fp32 + gradient + AdamW's two moments (16 B/param), + one fp32 copy for the RLSD
                   teacher snapshot
    rollout (hf)   the KV cache of `rollout_batch_size` rows x (prompt + max_new_tokens) tokens, 2 B per value,
                   + one fp32 vocabulary row per sequence for sampling
    update         per micro-batch: the checkpointed layer inputs (L x B x T x H, 2 B), one layer's recomputed
                   activations (B x T x (10 H + 3 I), 2 B), and the chunked vocabulary projection (B x chunk x V fp32
                   x 3 live copies: logits, log-softmax, gradient)
    vllm           vLLM's own pool, `gpu_memory_utilization` x the GPU's memory, sized by `vllm_plan`: its copy of
                   the weights (NF4 packed 0.5 B/param + one fp32 absmax per 64 weights, as vLLM's bitsandbytes
                   loader stores them; 8B: 3.2 + 0.4 + 2.3 untied embedding and head + 1.1 vision = 7.0 GiB), a KV
                   cache for the rollout batch, cut to what the GPU has left (at least one `max_model_len` sequence: vLLM refuses to start with
                   less) and `VLLM_OVERHEAD_GB` for its profiling activations and CUDA graphs (an allowance)

Which engine runs decides the rollout term: `engine="vllm"` falls back to HF generate wherever vLLM is not installed
(Colab's requirements-colab.txt has none), so `estimate(cfg, gpu, engine="hf")` is what a vLLM profile costs there.
The rollout and the update do not overlap (generation's cache is freed before the forward; vLLM sleeps during the
update, its weights in CPU RAM and its KV cache dropped), so the peak is the weights, the adapters, and the larger of
the rollout (HF cache, or vLLM's pool) and the update. The prompt is one image at the profile's `max_pixels` (one
token per 32 x 32 pixels after the 2 x 2 merge) plus `PROMPT_TEXT_TOKENS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlsd.config import GPU_CLASSES, MODEL_IDS, PROFILES, TrainConfig, make_config

GB = 1024 ** 3
NF4_BYTES = 0.516
VLLM_NF4_BYTES = 0.5 + 4 / 64
"""vLLM's NF4 weights: packed 4-bit values plus one fp32 absmax per 64-weight block (no double quantisation)."""
PROMPT_TEXT_TOKENS = 256
PROMPT_TOKEN_BUDGET = 8192
"""Prompt tokens (text + expanded image pads) vLLM reserves per sequence: max_model_len = this + the response."""
LOGIT_CHUNK = 256  # positions per chunk of the vocabulary projection (rlsd.scoring)
CUDA_CONTEXT_GB = 0.6
VLLM_OVERHEAD_GB = 1.5
"""vLLM's memory besides weights and KV cache: its profiling forward (activations, sampler logits), CUDA graphs and
the non-torch allocations of its worker. An allowance, not a measurement: vLLM 0.33 reports its own split at start."""
VLLM_MAX_NUM_SEQS = 256  # rlsd.vllm_engine's cap on concurrent sequences
HEADROOM = 0.85
"""Share of the GPU the estimate may fill: the rest is the allocator's slack over this lower bound."""
GPU_MEMORY_GIB = {"t4": 15.0, "l4": 22.5, "a100": 80.0}
"""Memory of each GPU class as the driver reports it (nvidia-smi's memory.total, MiB / 1024): what
gpu_memory_utilization is a fraction of. The classes' nominal GB (rlsd.config.GPU_CLASSES) are the marketing sizes."""

SHAPES = {  # Qwen3-VL-2B/8B-Instruct's config.json values
    "2b": dict(hidden=2048, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=6144, vocab=151936,
               tied=True, vision_depth=24, vision_hidden=1024, vision_intermediate=4096, deepstack=3),
    "8b": dict(hidden=4096, layers=36, heads=32, kv_heads=8, head_dim=128, intermediate=12288, vocab=151936,
               tied=False, vision_depth=27, vision_hidden=1152, vision_intermediate=4304, deepstack=3),
}


@dataclass
class MemoryEstimate:
    """GB per term; `peak` is what the GPU must hold at the busiest moment."""

    weights: float
    lora: float
    rollout: float
    update: float
    vllm: float
    peak: float
    engine: str = "hf"
    """The rollout engine counted: 'hf' (its KV cache is `rollout`) or 'vllm' (its pool is `vllm`)."""


@dataclass
class VllmPlan:
    """vLLM's pool on one GPU (GiB): what it must hold, what is left for it beside the training model, and the
    `gpu_memory_utilization` that asks for that."""

    weights: float
    """vLLM's own copy of the weights."""
    kv_min: float
    """KV cache of one `max_model_len` sequence: vLLM refuses to start with less."""
    kv_batch: float
    """KV cache of the rollout batch's concurrent sequences (prompt + max_new_tokens each)."""
    overhead: float
    """`VLLM_OVERHEAD_GB`."""
    available: float
    """`HEADROOM` x the GPU's memory minus the training side resident during the rollout (HF weights, adapters,
    CUDA context)."""
    pool: float
    """What vLLM is given: weights + the batch's KV cache + overhead, cut to `available`."""
    utilization: float
    """`pool` as a share of the GPU: vLLM's gpu_memory_utilization."""
    fits: bool
    """Whether weights + kv_min + overhead fit in `available`."""

    def why_not(self, gpu_gib: float) -> str:
        return (f"vLLM needs {self.weights + self.kv_min + self.overhead:.1f} GiB (weights {self.weights:.1f}, one "
                f"max_model_len sequence of KV cache {self.kv_min:.1f}, overhead {self.overhead:.1f}) but only "
                f"{self.available:.1f} of the GPU's {gpu_gib:.1f} GiB are left beside the training model")


def model_size(cfg: TrainConfig) -> str | None:
    """'2b' / '8b' for the released Qwen3-VL checkpoints (whose shapes are known here), else None."""
    return next((size for size, model_id in MODEL_IDS.items() if cfg.model.path == model_id), None)


def _size_of(cfg: TrainConfig) -> str:
    size = model_size(cfg)
    if size is not None:
        return size
    raise ValueError(f"no shape known for model {cfg.model.path!r} (known: {sorted(MODEL_IDS.values())})")


def _parameters(s: dict) -> tuple[int, int, int]:
    """(language-model linear, embedding + head, vision tower) parameter counts of shape `s`."""
    H, L, I, kv = s["hidden"], s["layers"], s["intermediate"], s["kv_heads"] * s["head_dim"]
    linear = L * (2 * H * H + 2 * H * kv + 3 * H * I)
    embed = s["vocab"] * H * (1 if s["tied"] else 2)
    vh, vi = s["vision_hidden"], s["vision_intermediate"]
    vision = s["vision_depth"] * (4 * vh * vh + 2 * vh * vi) + (1 + s["deepstack"]) * (16 * vh * vh + 4 * vh * H)
    return linear, embed, vision


def weights_gib(shape: dict, load_in_4bit: bool, tied: bool | None = None, dtype_bytes: int = 2) -> float:
    """The HF policy's weights (GiB) for a model of `shape` (`SHAPES`): NF4 or `dtype_bytes` linear layers, the
    rest at `dtype_bytes`. `tied` overrides the shape's embedding tying (a random model may untie them)."""
    s = dict(shape, tied=shape["tied"] if tied is None else tied)
    linear, embed, vision = _parameters(s)
    return (linear * (NF4_BYTES if load_in_4bit else dtype_bytes) + dtype_bytes * (embed + vision)) / GB


def _prompt_tokens(cfg: TrainConfig) -> int:
    return PROMPT_TEXT_TOKENS + (cfg.model.max_pixels or 1_048_576) // (32 * 32)


def _kv_bytes_per_token(s: dict) -> int:
    return s["layers"] * 2 * s["kv_heads"] * s["head_dim"] * 2


def _training_side(cfg: TrainConfig) -> tuple[float, float]:
    """(HF weights, adapters) in bytes."""
    s = SHAPES[_size_of(cfg)]
    linear, embed, vision = _parameters(s)
    weights = linear * (NF4_BYTES if cfg.model.load_in_4bit else 2) + 2 * (embed + vision)
    H, L, I, kv = s["hidden"], s["layers"], s["intermediate"], s["kv_heads"] * s["head_dim"]
    r = cfg.model.lora_rank
    lora_params = L * r * ((H + H) * 2 + (H + kv) * 2 + (H + I) * 2 + (I + H))
    return weights, lora_params * (16 + (4 if cfg.method == "rlsd" else 0))


def vllm_max_model_len(cfg: TrainConfig) -> int:
    """The max_model_len rlsd.vllm_engine starts vLLM with: the prompt budget + the larger response budget."""
    return PROMPT_TOKEN_BUDGET + max(cfg.max_new_tokens, cfg.eval_max_new_tokens)


def vllm_plan(cfg: TrainConfig, gpu_gib: float) -> VllmPlan:
    """Size vLLM's pool for `cfg` on a GPU of `gpu_gib` GiB (see the module docstring)."""
    s = SHAPES[_size_of(cfg)]
    linear, embed, vision = _parameters(s)
    weights = linear * (VLLM_NF4_BYTES if cfg.model.load_in_4bit else 2) + 2 * (embed + vision)
    per_token = _kv_bytes_per_token(s)
    kv_min = vllm_max_model_len(cfg) * per_token
    rows = min(VLLM_MAX_NUM_SEQS, cfg.prompts_per_step * cfg.group_size)
    kv_batch = max(kv_min, rows * (_prompt_tokens(cfg) + cfg.max_new_tokens) * per_token)
    hf_weights, lora = _training_side(cfg)
    available = HEADROOM * gpu_gib * GB - hf_weights - lora - CUDA_CONTEXT_GB * GB
    overhead = VLLM_OVERHEAD_GB * GB
    need, want = weights + kv_min + overhead, weights + kv_batch + overhead
    fits = need <= available
    pool = max(need, min(want, available)) if fits else need
    utilization = math.ceil(100 * pool / (gpu_gib * GB)) / 100  # vLLM takes the share; round up to whole percent
    if fits and utilization * gpu_gib * GB > available:  # the rounding must not ask for more than is free
        utilization = math.floor(100 * available / (gpu_gib * GB)) / 100
    return VllmPlan(*(x / GB for x in (weights, kv_min, kv_batch, overhead, available, pool)),
                    utilization=utilization, fits=fits)


def estimate(cfg: TrainConfig, gpu_gb: float, engine: str | None = None) -> MemoryEstimate:
    """Peak memory of `cfg` on a GPU of `gpu_gb` GiB with rollouts by `engine` (default `cfg.engine`; pass 'hf' for
    a vLLM profile where vLLM is not installed: it falls back to HF generate)."""
    engine = engine or cfg.engine
    if engine not in ("hf", "vllm"):
        raise ValueError(f"engine must be 'hf' or 'vllm', got {engine!r}")
    s = SHAPES[_size_of(cfg)]
    H, L, I, V, kv = s["hidden"], s["layers"], s["intermediate"], s["vocab"], s["kv_heads"] * s["head_dim"]
    weights, lora = _training_side(cfg)
    T = _prompt_tokens(cfg) + cfg.max_new_tokens
    rows = cfg.rollout_batch_size or cfg.prompts_per_step * cfg.group_size
    rollout = 0.0 if engine == "vllm" else rows * T * L * 2 * kv * 2 + rows * V * 4
    B = cfg.micro_batch_size
    update = L * B * T * H * 2 + B * T * (10 * H + 3 * I) * 2 + B * min(LOGIT_CHUNK, T) * V * 4 * 3
    vllm = vllm_plan(cfg, gpu_gb).pool * GB if engine == "vllm" else 0.0
    peak = weights + lora + max(rollout, update, vllm) + CUDA_CONTEXT_GB * GB
    return MemoryEstimate(*(x / GB for x in (weights, lora, rollout, update, vllm, peak)), engine=engine)


def profile_table() -> str:
    """Markdown table of every GPU profile's memory estimate (the README includes it): the peak with the profile's
    engine and, for the vLLM profiles, with HF generate (where vLLM is not installed, e.g. Colab)."""
    rows = ["| profile | GPU class | GPU memory (GiB) | engine | est. peak (GiB) | est. peak with HF generate "
            "(no vLLM, e.g. Colab) | weights | adapters+Adam | rollout KV (HF) | update micro-batch | vLLM pool "
            "(weights + KV + overhead) | vLLM gpu_memory_utilization |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in PROFILES:
        if not name.startswith("qwen3vl-") or name.count("-") != 2:
            continue
        gpu = name.rsplit("-", 1)[1]
        gpu_gib = GPU_MEMORY_GIB[gpu]
        cfg = make_config(name, method="rlsd")
        e, hf = estimate(cfg, gpu_gib), estimate(cfg, gpu_gib, engine="hf")
        if cfg.engine == "vllm":
            plan = vllm_plan(cfg, gpu_gib)
            pool = f"{plan.pool:.1f} ({plan.weights:.1f} + {plan.pool - plan.weights - plan.overhead:.1f} + " \
                   f"{plan.overhead:.1f})"
            util = f"{plan.utilization:.2f}" if plan.fits else "does not fit"
        else:
            pool, util = "—", "—"
        rows.append(f"| `{name}` | {gpu} | {gpu_gib:g} | {cfg.engine} | {e.peak:.1f} | {hf.peak:.1f} | "
                    f"{e.weights:.1f} | {e.lora:.2f} | {hf.rollout:.1f} | {e.update:.1f} | {pool} | {util} |")
    return "\n".join(rows)
