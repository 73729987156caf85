"""Loading the policy: a Qwen3-VL (real, by hub id or local path, or the tiny one), LoRA, optional NF4 base.

One function, `load_policy`, serves both scales: on a GPU it loads Qwen3-VL-2B/8B-Instruct (optionally 4-bit
NF4 via bitsandbytes) and wraps the language model's attention and MLP projections in LoRA adapters (peft);
on CPU the same call loads the tiny model saved by `rlsd.tiny.save_tiny`.

CPU trap fixed here (found while building this repository): bitsandbytes' `Linear4bit` repacks its weight for an avx512-bf16 CPU
kernel after any no-grad forward (e.g. `generate`); afterwards the LoRA adapters receive ZERO gradients.
`disable_cpu_bf16_repacking` turns that path off on every `Linear4bit`.

One configuration reaches both engines (HF policy and vLLM rollouts): the 4-bit skip list (`QUANT_SKIP_MODULES`,
`bnb_quantization_config`), the image pixel range (`ModelSpec.min_pixels`/`max_pixels`, `image_size`) and the dtype
the GPU can run (`resolve_dtype`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Qwen3VLProcessor

log = logging.getLogger(__name__)

# Modules that stay in full precision in the 4-bit base (the vision tower is small and precision-sensitive, the head
# is tied to the embeddings). Both spellings are needed: transformers matches an entry as an anchored regex prefix of
# its own module names ("model.visual.blocks.0..."), vLLM's bitsandbytes plugin (vllm_bnb_plugin 0.0.3,
# quantization/utils.py::is_layer_skipped_bnb) as a dotted component of vLLM's names ("visual.blocks.0...",
# after Qwen3-VL's hf_to_vllm_mapper "model.visual." -> "visual."). `tests/test_model.py` checks both rules.
QUANT_SKIP_MODULES = ("model.visual", "visual", "lm_head")
FORBIDDEN_EXTRA = ("trust_remote_code",)

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


def processor_chat_template(path: str | Path) -> str | None:
    """The processor-level chat template of a model directory or hub id (chat_template.jinja, then
    chat_template.json's "chat_template"), or None. Qwen3-VL ships its template there, not only in the tokenizer."""
    import json

    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            file = cached_file(str(path), name, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        except OSError:
            file = None
        if not file:
            continue
        text = Path(file).read_text(encoding="utf-8")
        if name.endswith(".jinja"):
            return text
        try:
            template = json.loads(text).get("chat_template")
        except (json.JSONDecodeError, AttributeError):
            raise ValueError(f"{file}: not a JSON object with a 'chat_template' string") from None
        if isinstance(template, str) and template:
            return template
    return None


def load_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """Tokenizer + PIL image processor from a model directory or hub id (image-only; no torchvision).

    `min_pixels`/`max_pixels` override the checkpoint's image pixel range (None keeps it). The chat template is the
    tokenizer's, else the processor-level one (`processor_chat_template`); a model with neither is refused.
    """
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>"
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    size = image_size(image_processor.size, min_pixels, max_pixels, source=str(path))
    image_processor.size = type(image_processor.size)(**size) if not isinstance(image_processor.size, dict) else size
    template = tokenizer.chat_template or processor_chat_template(path)
    if not template:
        raise ValueError(f"{path}: no chat template (tokenizer_config.json, chat_template.jinja or "
                         "chat_template.json)")
    return ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def image_size(size, min_pixels: int | None = None, max_pixels: int | None = None, source: str = "") -> dict:
    """The image processor's pixel range as {"shortest_edge": min, "longest_edge": max} with overrides applied.

    (Qwen2-VL's processors name the pixel COUNT bounds shortest_edge/longest_edge.) The same dict goes to vLLM as
    `mm_processor_kwargs={"size": ...}`, so both engines resize every image to the same grid.
    """
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    lo = int(min_pixels) if min_pixels is not None else get("shortest_edge")
    hi = int(max_pixels) if max_pixels is not None else get("longest_edge")
    if lo is None or hi is None:
        raise ValueError(f"{source}: the image processor has no pixel range (size={size!r})")
    if not 0 < lo <= hi:
        raise ValueError(f"ModelSpec.min_pixels/max_pixels: need 0 < min_pixels <= max_pixels, got {lo}, {hi}")
    return {"shortest_edge": int(lo), "longest_edge": int(hi)}


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
    min_pixels: int | None = None
    """Smallest image, in pixels, after resizing (HF processor and vLLM alike); None keeps the checkpoint's value
    (Qwen3-VL: 65,536; the tiny model: 1,024). The paper's authors used 262,144."""
    max_pixels: int | None = None
    """Largest image, in pixels, after resizing (HF processor and vLLM alike); None keeps the checkpoint's value
    (Qwen3-VL: 16,777,216 = up to 16,384 visual tokens; the tiny model: 16,384). The authors used 1,048,576."""
    extra: dict = field(default_factory=dict)
    """Extra keyword arguments for from_pretrained (never trust_remote_code)."""


def resolve_dtype(name: str, device=None, capability=None) -> str:
    """The dtype to load in: `name`, except bfloat16 on a CUDA GPU below compute capability 8.0 (T4, V100), which
    has no bf16 (vLLM refuses it) -- converted to float16 with a warning. `capability` overrides the query (tests)."""
    torch_dtype(name)  # validate
    if name != "bfloat16":
        return name
    if capability is None:
        if device is not None and torch.device(device).type != "cuda":
            return name
        if not torch.cuda.is_available():
            return name
        capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < (8, 0):
        log.warning("model.dtype=bfloat16 is not supported on a GPU of compute capability %d.%d; using float16",
                    *tuple(capability)[:2])
        return "float16"
    return name


def bnb_quantization_config(compute_dtype: str) -> dict:
    """The NF4 settings of the 4-bit base as a plain dict: the HF `BitsAndBytesConfig` and vLLM's
    `hf_overrides["quantization_config"]` are both built from it, so both engines quantize the same modules."""
    return dict(quant_method="bitsandbytes", load_in_4bit=True, load_in_8bit=False, bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype,
                bnb_4bit_quant_storage="uint8", llm_int8_skip_modules=list(QUANT_SKIP_MODULES))


def check_extra(extra: dict):
    """Refuse ModelSpec.extra keys that would run code from a model directory."""
    for key in FORBIDDEN_EXTRA:
        if key in (extra or {}):
            raise ValueError(f"ModelSpec.extra may not set {key!r}: a model directory must not run code on load")


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


PICKLED_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_weight_files(path: str | Path):
    """A local model directory must hold safetensors weights: pickled ones (pytorch_model.bin, ...) are refused
    naming the file, since loading a pickle can run code. Hub ids are loaded with use_safetensors=True."""
    path = Path(path)
    if not path.is_dir():
        return
    pickled = sorted(f for pattern in PICKLED_WEIGHTS for f in path.glob(pattern))
    if pickled and not any(path.glob("*.safetensors")):
        raise ValueError(f"{pickled[0]}: pickled weights are refused (loading them can run code); convert the "
                         "model to safetensors (model.save_pretrained(dir) writes model.safetensors)")


def load_policy(spec: ModelSpec, device: str | torch.device | None = None, trainable: bool = True):
    """Load (model, processor) as `spec` says. The model is in train mode, trainable params set.

    `trainable=False` (evaluation: benchmarks): a 4-bit base needs no LoRA, and no parameter requires a gradient."""
    from transformers import Qwen3VLForConditionalGeneration

    if spec.load_in_4bit and spec.lora_rank <= 0 and trainable:
        raise ValueError("ModelSpec.load_in_4bit needs ModelSpec.lora_rank > 0 (4-bit weights cannot be trained)")
    check_extra(spec.extra)
    check_weight_files(spec.path)
    dtype_name = resolve_dtype(spec.dtype, device)
    dtype = torch_dtype(dtype_name)
    kwargs = {"use_safetensors": True, **spec.extra}  # never a pickle, also from the hub
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    if spec.load_in_4bit:
        from transformers import BitsAndBytesConfig

        q = bnb_quantization_config(dtype_name)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q["bnb_4bit_quant_type"],
            bnb_4bit_use_double_quant=q["bnb_4bit_use_double_quant"], bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=q["llm_int8_skip_modules"],
        )
        if device is not None and str(device) != "cpu":
            kwargs["device_map"] = {"": device}
    model = Qwen3VLForConditionalGeneration.from_pretrained(spec.path, dtype=dtype, **kwargs)
    processor = load_processor(spec.path, spec.min_pixels, spec.max_pixels)
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
    if not trainable:
        model.requires_grad_(False)
        model.eval()
        return model, processor
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


ADAPTER_PREFIX = "base_model.model."


def check_adapter_files(adapter: str | Path) -> tuple[dict, dict[str, list[int]]]:
    """(adapter_config.json, {tensor name: shape}) of a peft LoRA adapter directory, read without loading weights.

    Raises CheckpointError naming the directory: not a folder, a file missing, a config that is not a LoRA config,
    a safetensors file cut short or corrupt."""
    import json

    from safetensors import safe_open

    from rlsd.files import CheckpointError

    path = Path(adapter)
    if not path.is_dir():
        raise CheckpointError(f"adapter {path}: not a directory (expected a peft adapter folder)")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (path / name).is_file():
            found = " (adapter_model.bin is a pickle: refused)" if (path / "adapter_model.bin").is_file() else ""
            raise CheckpointError(f"adapter {path}: {name} is missing{found}")
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"adapter {path}: adapter_config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA" or not isinstance(config.get("r"), int):
        raise CheckpointError(f"adapter {path}: adapter_config.json is not a LoRA config (peft_type "
                              f"{config.get('peft_type') if isinstance(config, dict) else None!r}, integer r)")
    try:  # safetensors checks the header against the file size: a truncated file fails here, before any load
        with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"adapter {path}: adapter_model.safetensors is incomplete or corrupt "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if not any(".lora_A." in k for k in shapes):
        raise CheckpointError(f"adapter {path}: adapter_model.safetensors holds no LoRA weights")
    return config, shapes


def check_adapter_fits(adapter: str | Path, model):
    """The adapter matches the loaded (base) model: every target module exists, rank and in/out features agree.

    Raises CheckpointError naming the adapter directory and the first field that differs."""
    from rlsd.files import CheckpointError

    path = Path(adapter)
    config, shapes = check_adapter_files(path)
    modules = dict(model.named_modules())
    ranks = config.get("rank_pattern") or {}
    for key in sorted(shapes):
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        name, kind = key.removeprefix(ADAPTER_PREFIX).rsplit(".lora_", 1)
        module = modules.get(name)
        if module is None or not hasattr(module, "in_features"):
            raise CheckpointError(f"adapter {path}: target_modules: {name} is not a linear layer of the model "
                                  f"({'absent' if module is None else type(module).__name__}); trained on another "
                                  "base model?")
        r = next((v for k, v in ranks.items() if name.endswith(k)), config["r"])
        shape = shapes[key]
        want = [r, module.in_features] if kind.startswith("A") else [module.out_features, r]
        if shape != want:
            field_name = "r" if (shape[0] if kind.startswith("A") else shape[1]) != r else \
                "base model (in/out features)"
            raise CheckpointError(f"adapter {path}: {field_name}: {key} is {shape}, this model and "
                                  f"adapter_config.json (r={r}) need {want}")


def load_adapter(model, adapter: str | Path, device=None):
    """The base `model` with the LoRA adapter put on it (frozen), after `check_adapter_fits`."""
    from peft import PeftModel

    check_adapter_fits(adapter, model)
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    return model.to(device) if device is not None else model


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
