"""Peak GPU memory of a training configuration: a documented estimate, per phase.

    python -m rlsd profiles            # the README's table: every GPU profile, its class's memory, this estimate

An estimate, not a measurement: it counts the tensors the code keeps and nothing the allocator adds, so read it as
a lower bound with ~10-20% allocator slack on top. Each term (bytes):

    weights        language-model linear layers at 0.516 B/param in NF4 (4 bits + double-quantised absmax) or 2 B;
                   embeddings, the LM head (untied in 8B) and the vision tower at 2 B (kept out of NF4 on purpose)
    lora           adapters in fp32 + gradient + AdamW's two moments (16 B/param), + one fp32 copy for the RLSD
                   teacher snapshot
    rollout (hf)   the KV cache of `rollout_batch_size` rows x (prompt + max_new_tokens) tokens, 2 B per value,
                   + one fp32 vocabulary row per sequence for sampling
    update         per micro-batch: the checkpointed layer inputs (L x B x T x H, 2 B), one layer's recomputed
                   activations (B x T x (10 H + 3 I), 2 B), and the chunked vocabulary projection (B x chunk x V fp32
                   x 3 live copies: logits, log-softmax, gradient)
    vllm           vLLM's own pool: `gpu_memory_utilization` x the GPU's memory (its weights, KV cache, activations)

The rollout and the update do not overlap (generation's cache is freed before the forward), so the peak is the
weights, the adapters, and the larger of the two, plus the vLLM pool when vLLM rolls out. The prompt is one image
at the profile's `max_pixels` (one token per 32 x 32 pixels after the 2 x 2 merge) plus `PROMPT_TEXT_TOKENS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlsd.config import GPU_CLASSES, MODEL_IDS, PROFILES, TrainConfig, make_config

GB = 1024 ** 3
NF4_BYTES = 0.516
PROMPT_TEXT_TOKENS = 256
LOGIT_CHUNK = 256  # positions per chunk of the vocabulary projection (rlsd.scoring)
VLLM_UTILIZATION = 0.3  # rlsd.vllm_engine's default gpu_memory_utilization
CUDA_CONTEXT_GB = 0.6

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


def _size_of(cfg: TrainConfig) -> str:
    for size, model_id in MODEL_IDS.items():
        if cfg.model.path == model_id:
            return size
    raise ValueError(f"no shape known for model {cfg.model.path!r} (known: {sorted(MODEL_IDS.values())})")


def estimate(cfg: TrainConfig, gpu_gb: float) -> MemoryEstimate:
    s = SHAPES[_size_of(cfg)]
    H, L, I, V, kv = s["hidden"], s["layers"], s["intermediate"], s["vocab"], s["kv_heads"] * s["head_dim"]
    linear = L * (2 * H * H + 2 * H * kv + 3 * H * I)
    embed = V * H * (1 if s["tied"] else 2)
    vh, vi = s["vision_hidden"], s["vision_intermediate"]
    vision = s["vision_depth"] * (4 * vh * vh + 2 * vh * vi) + (1 + s["deepstack"]) * (16 * vh * vh + 4 * vh * H)
    weights = linear * (NF4_BYTES if cfg.model.load_in_4bit else 2) + 2 * (embed + vision)

    r = cfg.model.lora_rank
    lora_params = L * r * ((H + H) * 2 + (H + kv) * 2 + (H + I) * 2 + (I + H))
    lora = lora_params * (16 + (4 if cfg.method == "rlsd" else 0))

    prompt = PROMPT_TEXT_TOKENS + (cfg.model.max_pixels or 1_048_576) // (32 * 32)
    T = prompt + cfg.max_new_tokens
    rows = cfg.rollout_batch_size or cfg.prompts_per_step * cfg.group_size
    rollout = 0.0 if cfg.engine == "vllm" else rows * T * L * 2 * kv * 2 + rows * V * 4
    B = cfg.micro_batch_size
    update = L * B * T * H * 2 + B * T * (10 * H + 3 * I) * 2 + B * min(LOGIT_CHUNK, T) * V * 4 * 3
    vllm = VLLM_UTILIZATION * gpu_gb * GB if cfg.engine == "vllm" else 0.0
    peak = weights + lora + max(rollout, update) + vllm + CUDA_CONTEXT_GB * GB
    return MemoryEstimate(*(x / GB for x in (weights, lora, rollout, update, vllm, peak)))


def profile_table() -> str:
    """Markdown table of every GPU profile's memory estimate (the README includes it)."""
    rows = ["| profile | GPU class | GPU memory (GB) | est. peak (GB) | weights | adapters+Adam | rollout KV (HF) "
            "| update micro-batch | vLLM pool |", "|---|---|---|---|---|---|---|---|---|"]
    for name in PROFILES:
        if not name.startswith("qwen3vl-") or name.count("-") != 2:
            continue
        gpu = name.rsplit("-", 1)[1]
        gpu_gb = GPU_CLASSES[gpu][0]
        e = estimate(make_config(name, method="rlsd"), gpu_gb)
        rows.append(f"| `{name}` | {gpu} | {gpu_gb} | {e.peak:.1f} | {e.weights:.1f} | {e.lora:.2f} | "
                    f"{e.rollout:.1f} | {e.update:.1f} | {e.vllm:.1f} |")
    return "\n".join(rows)

