"""Loading the policy: a Qwen3-VL (real, by hub id or local path, or the tiny one), LoRA, optional NF4 base.

One function, `load_policy`, serves both scales: on a GPU it loads Qwen3-VL-2B/8B-Instruct (optionally 4-bit
NF4 via bitsandbytes) and wraps the language model's attention and MLP projections in LoRA adapters (peft);
on CPU the same call loads the tiny model saved by `rlsd.tiny.save_tiny`.

CPU trap fixed here (DESIGN.md §5): bitsandbytes' `Linear4bit` repacks its weight for an avx512-bf16 CPU
kernel after any no-grad forward (e.g. `generate`); afterwards the LoRA adapters receive ZERO gradients.
`disable_cpu_bf16_repacking` turns that path off on every `Linear4bit`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Qwen3VLProcessor

log = logging.getLogger(__name__)

# The language model's attention and MLP projections. The vision tower names its layers differently
# (qkv, proj, linear_fc1/2), so the regex keeps LoRA off the vision encoder and the merger.
LORA_PROJECTIONS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def lora_target_regex(projections: str = LORA_PROJECTIONS) -> str:
    """peft target regex: the named projections of the language model only."""
    names = [p.strip() for p in projections.split(",") if p.strip()]
    if not names:
        raise ValueError("ModelSpec.lora_projections names no projection")
    return r".*language_model.*\.(" + "|".join(names) + ")"




class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """`Qwen3VLProcessor` without the video processor, which needs torchvision (unusable beside the CPU torch)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


def load_processor(path: str | Path):
    """Tokenizer + PIL image processor from a model directory or hub id (image-only; no torchvision)."""
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    return ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=tokenizer.chat_template)


@dataclass
class ModelSpec:
    """How to load the policy."""

    path: str = "data/tiny-init"
    """Hub id (e.g. Qwen/Qwen3-VL-2B-Instruct) or local directory holding config, weights and processor."""
    lora_rank: int = 0
    """LoRA rank on the language model's attention + MLP projections; 0 trains all parameters."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / rank)."""
    lora_projections: str = LORA_PROJECTIONS
    """Comma-separated language-model projections that get LoRA adapters (attention and MLP by default)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input; 0 keeps the student and teacher forwards deterministic."""
    load_in_4bit: bool = False
    """Quantise the base language-model weights to NF4 with bitsandbytes (needs lora_rank > 0)."""
    dtype: str = "float32"
    """Compute/parameter dtype of the non-quantised weights: float32, bfloat16 or float16."""
    freeze_vision: bool = False
    """Train the language model only (vision encoder and merger frozen). The vision backward dominates a
    full-parameter CPU step (each prompt's image is encoded once per sample of its group)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (GPU memory); works with peft via input grads."""
    attn_implementation: str | None = None
    """Passed to from_pretrained (e.g. 'sdpa', 'flash_attention_2'); None = the library default."""
    extra: dict = field(default_factory=dict)
    """Extra keyword arguments for from_pretrained."""


def torch_dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {name!r}") from None


def disable_cpu_bf16_repacking(model) -> int:
    """Turn off bitsandbytes' CPU avx512-bf16 weight repacking on every Linear4bit; returns how many."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_policy(spec: ModelSpec, device: str | torch.device | None = None):
    """Load (model, processor) as `spec` says. The model is in train mode, trainable params set."""
    from transformers import Qwen3VLForConditionalGeneration

    if spec.load_in_4bit and spec.lora_rank <= 0:
        raise ValueError("ModelSpec.load_in_4bit needs ModelSpec.lora_rank > 0 (4-bit weights cannot be trained)")
    dtype = torch_dtype(spec.dtype)
    kwargs = dict(spec.extra)
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if spec.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.float32,
            # The vision tower is small and precision-sensitive; keep it (and the head) in full precision.
            llm_int8_skip_modules=["model.visual", "lm_head"],
        )
        if device is not None and str(device) != "cpu":
            kwargs["device_map"] = {"": device}
    model = Qwen3VLForConditionalGeneration.from_pretrained(spec.path, dtype=dtype, **kwargs)
    processor = load_processor(spec.path)
    if device is not None and not spec.load_in_4bit:
        model.to(device)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id

    if spec.load_in_4bit:
        n = disable_cpu_bf16_repacking(model)
        log.info("4-bit base: %d Linear4bit layers", n)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # only during training forwards; generate() passes use_cache itself
    if spec.freeze_vision:
        for p in model.model.visual.parameters():
            p.requires_grad_(False)
    if spec.lora_rank > 0:
        model = add_lora(model, spec)
    elif spec.gradient_checkpointing:
        model.enable_input_require_grads()
    model.train()
    return model, processor


def add_lora(model, spec: ModelSpec):
    """Wrap the language model's projections in LoRA adapters; everything else is frozen."""
    from peft import LoraConfig, get_peft_model

    if spec.gradient_checkpointing:
        # Frozen embeddings give inputs without grad; checkpointed blocks then lose the LoRA gradient path.
        model.enable_input_require_grads()
    config = LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                        target_modules=lora_target_regex(spec.lora_projections), bias="none")
    return get_peft_model(model, config)


def trainable_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as stored elements x 2."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
