"""Rollouts with vLLM on the training GPU: same contract as `rlsd.rollout.hf_generate`, LoRA passed natively.

GPU check (run when a CUDA machine with `pip install -r requirements-gpu.txt` is available; nothing below has
run on a GPU yet). Build the tiny model once, then train the same 3 smoke steps with each engine:

    python -c "from rlsd.tiny import save_tiny; save_tiny('/tmp/tiny-vl')"
    for e in hf vllm; do RLSD_VLLM_ENFORCE_EAGER=1 python -m rlsd train --method grpo --profile smoke \\
        --out /tmp/vllm-check/$e engine=$e model.path=/tmp/tiny-vl model.lora_rank=8 model.dtype=bfloat16; done

Expected, for the vllm run: no "falling back to HF generate" line; one "vLLM engine ready" line; no exception
from `outputs_to_rollout` (it raises if vLLM emitted a suppressed id or stopped without end-of-turn);
/tmp/vllm-check/vllm/metrics.jsonl has 3 step records with `skipped` false. Compare the two metrics.jsonl
files: `response_tokens_mean`, `truncated_frac` and `entropy` (entropy is re-scored by the HF policy on the
sampled tokens) should agree within sampling noise -- they are draws from the same distribution, not the
same draws, so equality is not expected. A real-model check adds `model.path=Qwen/Qwen3-VL-2B-Instruct
model.load_in_4bit=true` (needs the weights; vLLM re-quantizes the bf16 checkpoint itself, so the NF4 weights
of the two engines are close but not bit-identical). Possible failure points not checkable on CPU: vLLM
loading the tiny model's image-only processor directory, its Qwen3-VL LoRA/bitsandbytes support, and LoRA
after sleep/wake (vLLM issue #53888: level-1 wake could silently stop applying the adapter; rerun with
RLSD_VLLM_SLEEP=0 to rule that out). This smoke check cannot show that the adapter is applied (3 steps barely
move it); that needs a greedy comparison of HF and vLLM on a policy with non-zero LoRA weights.

Design (see `make_vllm_engine` for the switches):

- Colocated: one `vllm.LLM` on the training GPU with a small `gpu_memory_utilization` (default 0.3) and sleep
  mode: the engine sleeps (level 1: weights to CPU RAM, KV cache dropped) except while it generates.
- Weights: LoRA only. `sync_weights(policy)` saves the peft adapter (`save_pretrained`) to a fresh directory
  and the next `generate` passes it as `LoRARequest(name, new_int_id, path)`; a new int id per version, because
  vLLM caches adapters by id. Nothing is merged into the (4-bit) base. Full-parameter policies are refused:
  vLLM has no stable public API to load new full weights into a running engine.
- One request per row (n=1). The trainer already repeats each prompt G times (`PromptBatch.repeat`), so row i
  of the batch is request i and the `Rollout` keeps the row order with no regrouping. vLLM implements n>1 by
  fanning out into n child requests anyway, and its prefix cache and multi-modal cache share the repeated
  prompt and image, so nothing is lost. No per-request seed (identical prompts with one seed would give
  identical samples); the engine is seeded once (`LLM(seed=cfg.seed)`).
- Suppression: `SamplingParams.logit_bias` = {suppressed id: -1e9} (~280 ids for Qwen3-VL: 13 specials and the
  267 padded vocabulary rows). vLLM 0.33's model runner adds the bias to the logits before penalties,
  temperature, top-k and top-p (`v1/worker/gpu/sample/logit_bias.py`), so in float32 the suppressed ids get
  probability exactly 0 -- the same -1e9 `rlsd.scoring` masks with. The clamp to [-100, 100] is applied only by
  `SamplingParams.from_optional` (the OpenAI server), not by the constructor used here. A whitelist
  (`allowed_token_ids`) is no option: that runner takes at most 1,024 ids (`MAX_NUM_ALLOWED_TOKEN_IDS`) and the
  whitelist would be the ~151,650 others; it takes at most 1,024 logit-bias entries and 128 stop ids, which
  `sampling_kwargs` checks. `bad_words` takes strings and cannot name ids that have no text.
- 4-bit: vLLM >= 0.28 has no built-in bitsandbytes; the `vllm-bnb-plugin` package (pinned in
  requirements-gpu.txt) registers it. The NF4 settings and skip list reach vLLM as
  `hf_overrides={"quantization_config": ...}` built from the same dict as the HF policy's
  (`rlsd.model.bnb_quantization_config`): the plugin then keeps the vision tower and head in the model dtype and
  quantizes the other linear weights of the bf16 checkpoint as it loads them (its "target module weight that
  wasn't pre-quantized" branch), as the HF policy does.
- Images: both engines resize with one pixel range (`ModelSpec.min_pixels`/`max_pixels`, default the checkpoint's):
  the HF processor's `size` is sent as `mm_processor_kwargs={"size": ...}`, and `make_vllm_engine` checks they agree.
- Failing soft: any error while importing vLLM or constructing `vllm.LLM` (unknown quantization, dtype the GPU
  cannot run, out of memory, ...) logs one line with the reason and falls back to HF generate.
- Stopping: `stop_token_ids=[eos]` (end-of-turn). The response keeps its eos (vLLM returns stop tokens in
  `token_ids`; if a version does not, `outputs_to_rollout` restores it from `stop_reason`); the mask covers tokens up to and including the first eos (`rlsd.rollout.response_mask`), and a
  response is truncated iff it has no eos -- decided from the tokens, not from `finish_reason`.
- top_k: the HF convention 0 = disabled is also vLLM's current one ("0 (or -1)"); vLLM releases before 0.9
  rejected 0, so the engine retries with -1 if `SamplingParams` refuses 0.
- Prompts: the exact token ids of each row (left padding stripped) with each run of `<|image_pad|>` collapsed to
  ONE pad per image, plus the row's PIL images as `multi_modal_data`. vLLM applies prompt updates itself to
  token prompts: its Qwen3-VL processor replaces each `<|image_pad|>` with grid_t*grid_h*grid_w/merge^2 pads,
  so an already expanded prompt would be expanded again. After vLLM's expansion the ids equal the HF ids
  (same preprocessor config, same image sizes); the pixel values come from vLLM's own run of the image
  processor on the PIL images and may differ from ours in resampling detail.
- The student/teacher forwards re-score every sampled token with the HF policy, so any small vLLM/HF numeric
  difference makes the samples slightly off-policy; it is not corrected for (no importance weight).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from rlsd.inputs import PromptBatch
from rlsd.memory import PROMPT_TOKEN_BUDGET, model_size, vllm_plan
from rlsd.rollout import Rollout, SamplingParams, response_mask

log = logging.getLogger(__name__)

NOT_INSTALLED_MESSAGE = (
    "vLLM is not installed; falling back to HF generate (the rollout engine of requirements.txt and "
    "requirements-colab.txt, Colab's included). vLLM needs a machine set up from scratch: a fresh environment, "
    "pip install -r requirements-gpu.txt (torch 2.14 for CUDA 13: NVIDIA driver R580 or newer)")
NO_CUDA_MESSAGE = "vLLM needs a CUDA GPU and none is available; falling back to HF generate."
MULTI_PROCESS_MESSAGE = ("engine=vllm supports a single training process (one GPU); WORLD_SIZE={}. "
                         "Falling back to HF generate.")
FULL_PARAMETER_MESSAGE = (
    "engine=vllm needs a LoRA policy (model.lora_rank > 0): after every optimizer step the trained weights are "
    "handed to vLLM as a LoRA adapter, and vLLM has no stable public API to load new full weights into a running "
    "engine. Use model.lora_rank=8 (or larger) with engine=vllm, or engine=hf for full-parameter training.")

# Switches (environment variables; TrainConfig stays engine-agnostic).
ENV_GPU_MEMORY_UTILIZATION = "RLSD_VLLM_GPU_MEMORY_UTILIZATION"
ENV_MAX_MODEL_LEN = "RLSD_VLLM_MAX_MODEL_LEN"
ENV_MAX_IMAGES = "RLSD_VLLM_MAX_IMAGES"
ENV_ENFORCE_EAGER = "RLSD_VLLM_ENFORCE_EAGER"
ENV_SLEEP = "RLSD_VLLM_SLEEP"

DEFAULT_GPU_MEMORY_UTILIZATION = 0.3
"""Share of the GPU for vLLM (weights + KV cache) when `rlsd.memory.vllm_plan` cannot size it (a model whose shape
it does not know); the released Qwen3-VL checkpoints get their profile's plan."""
# PROMPT_TOKEN_BUDGET (prompt tokens reserved per sequence when sizing max_model_len) lives in rlsd.memory.
DEFAULT_MAX_IMAGES = 4
"""Images per prompt vLLM accepts (limit_mm_per_prompt)."""
MAX_NUM_SEQS_CAP = 256
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""Values vLLM's LoRAConfig accepts for max_lora_rank (it must be >= the adapter's rank)."""
# Per-request limits of vLLM 0.33's GPU model runner (vllm/v1/worker/gpu/sample/logit_bias.py).
VLLM_MAX_ALLOWED_TOKEN_IDS = 1024
VLLM_MAX_LOGIT_BIAS_TOKENS = 1024
VLLM_MAX_STOP_TOKEN_IDS = 128
SUPPRESS_BIAS = -1e9
"""Logit bias of a suppressed id: exp(-1e9) is exactly 0 in float32, as `rlsd.scoring`'s -1e9 mask."""
BNB_PLUGIN = "vllm-bnb-plugin"
NO_BNB_MESSAGE = ("model.load_in_4bit needs bitsandbytes in vLLM, which vLLM >= 0.28 ships as the separate "
                  f"{BNB_PLUGIN} package (pip install -r requirements-gpu.txt); falling back to HF generate.")


# --------------------------------------------------------------------------------------------- pure parts


def _env_flag(env, name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds an adapter of `rank`."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1 for vLLM, got {rank}")
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def gpu_memory_utilization(cfg, gpu_gib: float | None, env=None) -> float:
    """vLLM's share of the GPU: the environment switch if set, else the plan of `rlsd.memory.vllm_plan` for this
    GPU (weights + the rollout batch's KV cache + overhead, within what the training model leaves), else 0.3."""
    env = os.environ if env is None else env
    if env.get(ENV_GPU_MEMORY_UTILIZATION):
        return float(env[ENV_GPU_MEMORY_UTILIZATION])
    if gpu_gib and model_size(cfg):
        return vllm_plan(cfg, gpu_gib).utilization
    return DEFAULT_GPU_MEMORY_UTILIZATION


def engine_kwargs(cfg, env=None, image_size: dict | None = None, capability=None, gpu_gib: float | None = None) -> dict:
    """Keyword arguments for `vllm.LLM(...)` from a TrainConfig (plain dict; vllm is not imported).

    `image_size` is the HF processor's pixel range ({"shortest_edge", "longest_edge"}); it is sent as
    `mm_processor_kwargs` so that vLLM resizes every image as the HF processor does. `capability` overrides the
    GPU's compute capability (tests); `gpu_gib` is the GPU's memory (sizes the pool: `gpu_memory_utilization`).
    """
    from rlsd.model import bnb_quantization_config, resolve_dtype

    env = os.environ if env is None else env
    util = gpu_memory_utilization(cfg, gpu_gib, env)
    if not 0 < util < 1:
        raise ValueError(f"{ENV_GPU_MEMORY_UTILIZATION} must be in (0, 1), got {util}")
    max_new = max(cfg.max_new_tokens, getattr(cfg, "eval_max_new_tokens", 0))
    max_model_len = int(env.get(ENV_MAX_MODEL_LEN) or (PROMPT_TOKEN_BUDGET + max_new))
    max_images = int(env.get(ENV_MAX_IMAGES) or DEFAULT_MAX_IMAGES)
    kwargs = dict(
        model=cfg.model.path,
        tokenizer=cfg.model.path,
        dtype=resolve_dtype(cfg.model.dtype, capability=capability),
        seed=cfg.seed,
        gpu_memory_utilization=util,
        max_model_len=max_model_len,
        max_num_seqs=min(MAX_NUM_SEQS_CAP, max(1, cfg.prompts_per_step * cfg.group_size)),
        enable_lora=True,
        max_lora_rank=vllm_max_lora_rank(cfg.model.lora_rank),
        max_loras=1,
        enable_prefix_caching=True,
        enable_sleep_mode=_env_flag(env, ENV_SLEEP, True),
        enforce_eager=_env_flag(env, ENV_ENFORCE_EAGER, False),
        limit_mm_per_prompt={"image": max_images, "video": 0},
    )
    if image_size is not None:
        kwargs["mm_processor_kwargs"] = {"size": dict(image_size)}
    if cfg.model.load_in_4bit:
        # NF4 of the same checkpoint with the HF policy's settings and skip list (vision tower, head unquantized).
        kwargs["quantization"] = "bitsandbytes"
        kwargs["load_format"] = "bitsandbytes"
        kwargs["hf_overrides"] = {"quantization_config": bnb_quantization_config(kwargs["dtype"])}
    return kwargs


def bnb_available() -> bool:
    """Whether vLLM can load bitsandbytes: the plugin package, or the in-tree module of vLLM < 0.28."""
    import importlib.util

    for name in ("vllm_bnb_plugin", "vllm.model_executor.layers.quantization.bitsandbytes"):
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


def max_image_tokens(image_size: dict, patch: int = 16, merge: int = 2) -> int:
    """Visual tokens of the largest image the pixel range allows (one token per (patch*merge)^2 pixels)."""
    return int(image_size["longest_edge"]) // (patch * merge) ** 2


def suppression_bias(suppress_ids, vocab_size: int) -> dict[int, float]:
    """{suppressed id: SUPPRESS_BIAS}: vLLM's logit_bias that gives the suppressed ids probability 0."""
    banned = sorted(set(int(i) for i in suppress_ids))
    if len(banned) >= vocab_size:
        raise ValueError("every token id is suppressed")
    bad = [i for i in banned if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"suppressed ids {bad[:5]} are outside the vocabulary of {vocab_size}")
    if len(banned) > VLLM_MAX_LOGIT_BIAS_TOKENS:
        raise ValueError(f"{len(banned)} suppressed ids exceed vLLM's limit of {VLLM_MAX_LOGIT_BIAS_TOKENS} "
                         "logit-bias entries per request; use engine=hf")
    return {i: SUPPRESS_BIAS for i in banned}


def sampling_kwargs(sampling: SamplingParams, eos_id: int, logit_bias: dict[int, float],
                    disabled_top_k: int = 0) -> dict:
    """Keyword arguments for `vllm.SamplingParams(...)` matching `hf_generate` (plain dict), within vLLM's
    per-request limits."""
    sampling.validate()
    if len(logit_bias) > VLLM_MAX_LOGIT_BIAS_TOKENS:
        raise ValueError(f"{len(logit_bias)} logit-bias entries > vLLM's limit {VLLM_MAX_LOGIT_BIAS_TOKENS}")
    greedy = sampling.temperature == 0
    return dict(
        n=1,
        temperature=float(sampling.temperature),
        top_p=1.0 if greedy else float(sampling.top_p),
        top_k=disabled_top_k if greedy or sampling.top_k == 0 else int(sampling.top_k),
        min_p=0.0,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        max_tokens=int(sampling.max_new_tokens),
        min_tokens=0,
        stop_token_ids=[int(eos_id)],
        ignore_eos=False,
        logit_bias=logit_bias,
        detokenize=False,  # the trainer decodes itself; token ids are the output
    )


def collapse_image_pads(ids: list[int], image_pad_id: int) -> list[int]:
    """Each run of consecutive image pads -> a single pad (the unexpanded placeholder vLLM expects)."""
    out = []
    for t in ids:
        if t == image_pad_id and out and out[-1] == image_pad_id:
            continue
        out.append(t)
    return out


def build_vllm_prompts(prompts: PromptBatch, images: list[list], image_pad_id: int,
                       max_images: int | None = None) -> list[dict]:
    """One vLLM prompt dict per row: unpadded ids with one pad per image, and that row's PIL images."""
    if len(images) != prompts.batch_size:
        raise ValueError(f"build_vllm_prompts: {prompts.batch_size} rows but {len(images)} image lists")
    out = []
    for i in range(prompts.batch_size):
        ids = prompts.input_ids_BP[i][prompts.attention_mask_BP[i].bool()].tolist()
        ids = collapse_image_pads(ids, image_pad_id)
        imgs = list(images[i] or [])
        n_pads = ids.count(image_pad_id)
        if not n_pads == len(imgs) == prompts.images_per_row[i]:
            raise ValueError(f"build_vllm_prompts: row {i} has {n_pads} image placeholders, "
                             f"{prompts.images_per_row[i]} encoded images and {len(imgs)} PIL images")
        if max_images is not None and len(imgs) > max_images:
            raise ValueError(f"build_vllm_prompts: row {i} has {len(imgs)} images; vLLM was started with at most "
                             f"{max_images} per prompt (set {ENV_MAX_IMAGES})")
        prompt = {"prompt_token_ids": ids}
        if imgs:
            prompt["multi_modal_data"] = {"image": imgs}
        out.append(prompt)
    return out


def outputs_to_rollout(token_ids: list[list[int]], finish_reasons: list[str | None], eos_id: int, pad_id: int,
                       max_new_tokens: int, suppress_ids=(), device=None,
                       stop_reasons: list | None = None) -> Rollout:
    """vLLM completions (one per row) -> `Rollout` in the layout of `hf_generate`.

    Right-padded with `pad_id`; mask up to and including the first eos; truncated = no eos. vLLM returns the
    stop token in `token_ids`; should a version leave it out, a row that stopped on eos (`stop_reason` None, or
    the eos id) gets it back. Raises on anything that breaks the contract (a suppressed id, a stop on something
    other than eos, an aborted request, an overlong response).
    """
    if len(token_ids) != len(finish_reasons):
        raise ValueError(f"{len(token_ids)} completions but {len(finish_reasons)} finish reasons")
    if not token_ids:
        raise ValueError("no completions")
    stop_reasons = [None] * len(token_ids) if stop_reasons is None else list(stop_reasons)
    banned = set(int(i) for i in suppress_ids)
    rows = []
    for i, (ids, reason, stop_reason) in enumerate(zip(token_ids, finish_reasons, stop_reasons)):
        ids = [int(t) for t in ids]
        if reason == "stop" and eos_id not in ids and stop_reason in (None, eos_id):
            ids.append(eos_id)  # stopped on eos but the stop token was not returned
        if len(ids) > max_new_tokens:
            raise RuntimeError(f"vLLM row {i}: {len(ids)} tokens > max_new_tokens={max_new_tokens}")
        bad = sorted(set(ids) & banned)
        if bad:
            raise RuntimeError(f"vLLM row {i} generated suppressed token ids {bad[:10]}: the suppression "
                               "logit_bias was not applied")
        if reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM row {i} finished with {reason!r} (expected 'stop' or 'length')")
        if reason == "stop" and eos_id not in ids:
            raise RuntimeError(f"vLLM row {i} stopped on {stop_reason!r}, not on the end-of-turn id {eos_id} "
                               f"(last ids {ids[-5:]}): another stop condition is active")
        rows.append(ids)
    T = max(1, max(len(r) for r in rows))
    ids_BT = torch.full((len(rows), T), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids_BT[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    lengths_B = torch.tensor([len(r) for r in rows])
    mask_BT, _ = response_mask(ids_BT, eos_id)
    mask_BT = mask_BT * (torch.arange(T)[None, :] < lengths_B[:, None]).long()  # never count right padding
    truncated_B = torch.tensor([eos_id not in r for r in rows])
    ids_BT = ids_BT.masked_fill(mask_BT == 0, pad_id)
    if device is not None:
        ids_BT, mask_BT, truncated_B = ids_BT.to(device), mask_BT.to(device), truncated_B.to(device)
    return Rollout(response_ids_BT=ids_BT, response_mask_BT=mask_BT, truncated_B=truncated_B)


def is_lora_policy(policy) -> bool:
    """A peft model whose active adapter is LoRA (what vLLM can load natively)."""
    peft_config = getattr(policy, "peft_config", None)
    if not isinstance(peft_config, dict) or not peft_config or not callable(getattr(policy, "save_pretrained", None)):
        return False
    return all("LORA" in str(getattr(c, "peft_type", "")).upper() for c in peft_config.values())


@dataclass
class AdapterVersion:
    name: str
    int_id: int
    path: str


class AdapterStore:
    """Successive versions of the policy's LoRA adapter on disk; version k has int id k (vLLM needs ids > 0)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="rlsd-vllm-lora-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.version = 0
        self.current: AdapterVersion | None = None
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.root), True) if root is None else None

    def save(self, policy) -> AdapterVersion:
        """Save the current adapter as a new version; older versions are deleted (vLLM reads only the newest)."""
        if not is_lora_policy(policy):
            raise ValueError(FULL_PARAMETER_MESSAGE)
        version = self.version + 1
        path = self.root / f"v{version:06d}"
        policy.save_pretrained(str(path))
        if not (path / "adapter_config.json").exists():
            raise RuntimeError(f"{path}: save_pretrained wrote no adapter_config.json (is the policy a peft model?)")
        for old in self.root.glob("v*"):
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
        self.version = version
        self.current = AdapterVersion(name=f"rlsd-policy-v{version}", int_id=version, path=str(path))
        return self.current

    def close(self):
        if self._cleanup is not None:
            self._cleanup()


# ------------------------------------------------------------------------------------------------- engine


class VLLMEngine:
    """Generates `Rollout`s with a colocated `vllm.LLM` and the latest LoRA adapter of the policy.

    `llm`, `make_sampling_params` (vllm.SamplingParams) and `make_lora_request` (vllm LoRARequest) are injected
    so that the glue can be tested without vLLM.
    """

    def __init__(self, llm, make_sampling_params, make_lora_request, *, eos_id: int, pad_id: int,
                 image_pad_id: int, suppress_ids, vocab_size: int, max_model_len: int, max_images: int | None = None,
                 sleep: bool = True, adapter_root: str | Path | None = None):
        self.llm = llm
        self._make_sampling_params = make_sampling_params
        self._make_lora_request = make_lora_request
        self.eos_id, self.pad_id, self.image_pad_id = int(eos_id), int(pad_id), int(image_pad_id)
        self.suppress_ids = sorted(set(int(i) for i in suppress_ids))
        self.logit_bias = suppression_bias(self.suppress_ids, vocab_size)
        if self.eos_id in set(self.suppress_ids):
            raise ValueError(f"the end-of-turn id {self.eos_id} is suppressed; generation could never stop")
        self.max_model_len = int(max_model_len)
        self.max_images = max_images
        self.adapters = AdapterStore(adapter_root)
        self.lora_request = None
        self._disabled_top_k = 0
        self.sleep_enabled = sleep
        self.asleep = False

    # --- memory: the engine only holds GPU memory while it generates

    def sleep(self):
        if not self.sleep_enabled or self.asleep:
            return
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if callable(reset):
            reset()  # cached blocks do not survive sleep
        self.llm.sleep(level=1)
        self.asleep = True

    def wake_up(self):
        if not self.asleep:
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the trainer's cached blocks back to the driver first
        self.llm.wake_up()
        self.asleep = False

    # --- weights

    def sync_weights(self, policy):
        """Save the policy's current LoRA adapter; the next `generate` uses it under a new int id."""
        version = self.adapters.save(policy)
        self.lora_request = self._make_lora_request(version.name, version.int_id, version.path)
        log.info("vLLM engine: adapter version %d at %s", version.int_id, version.path)

    # --- generation

    def sampling_params(self, sampling: SamplingParams):
        kwargs = sampling_kwargs(sampling, self.eos_id, self.logit_bias, self._disabled_top_k)
        try:
            return self._make_sampling_params(**kwargs)
        except Exception as e:  # vLLM's validation error class has moved between versions
            # vLLM < 0.9 wants -1 for "top-k disabled" and rejects 0.
            if kwargs["top_k"] == 0 and "top_k" in str(e):
                self._disabled_top_k = -1
                return self._make_sampling_params(**{**kwargs, "top_k": -1})
            raise

    def generate(self, student: PromptBatch, problems: list, sampling: SamplingParams) -> Rollout:
        """One response per row of `student` (already repeated G times); `problems[i]` holds row i's images."""
        if len(problems) != student.batch_size:
            raise ValueError(f"generate: {student.batch_size} prompt rows but {len(problems)} problems")
        if self.lora_request is None:
            raise RuntimeError("generate before sync_weights: vLLM has no adapter of the policy yet")
        params = self.sampling_params(sampling)
        prompts = build_vllm_prompts(student, [p.images for p in problems], self.image_pad_id, self.max_images)
        longest = int(student.attention_mask_BP.sum(-1).max())
        if longest + sampling.max_new_tokens > self.max_model_len:
            raise ValueError(f"prompt ({longest} tokens with expanded images) + max_new_tokens "
                             f"({sampling.max_new_tokens}) > vLLM max_model_len={self.max_model_len}; "
                             f"set {ENV_MAX_MODEL_LEN}")
        self.wake_up()
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request)
        finally:
            self.sleep()
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        completions = [o.outputs[0] for o in outputs]
        return outputs_to_rollout([list(c.token_ids) for c in completions], [c.finish_reason for c in completions],
                                  self.eos_id, self.pad_id, sampling.max_new_tokens, self.suppress_ids,
                                  device=student.input_ids_BP.device,
                                  stop_reasons=[getattr(c, "stop_reason", None) for c in completions])

    def close(self):
        """Shut the engine down: its worker process and GPU memory (weights, KV cache, CUDA graphs) are released
        now, not when garbage collection gets to it -- a second run in the same process needs that memory.
        Idempotent."""
        llm, self.llm = self.llm, None
        if llm is not None:
            # vLLM 0.33: LLM.llm_engine.engine_core is the client of the engine-core process; its shutdown() stops
            # the process and frees its memory. Older versions had neither; deleting the LLM is then all there is.
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            shutdown = getattr(core, "shutdown", None) or getattr(llm, "shutdown", None)
            if callable(shutdown):
                shutdown()
            del llm
            import gc

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.lora_request = None
        self.adapters.close()


def make_vllm_engine(cfg, policy, processor, suppress_ids) -> VLLMEngine | None:
    """A colocated vLLM engine for `cfg`, or None (with a logged reason) to fall back to HF generate.

    Raises ValueError for a full-parameter (non-LoRA) policy; any error of vLLM itself falls back with one line.
    Switches: RLSD_VLLM_GPU_MEMORY_UTILIZATION (0.3), RLSD_VLLM_MAX_MODEL_LEN (8192 + the larger response budget),
    RLSD_VLLM_MAX_IMAGES (4), RLSD_VLLM_SLEEP (1), RLSD_VLLM_ENFORCE_EAGER (0).
    """
    try:
        import vllm
    except ImportError:
        log.warning(NOT_INSTALLED_MESSAGE)
        return None
    except Exception as err:  # noqa: BLE001 -- a broken install (CUDA/torch mismatch) must not stop training
        log.warning("vLLM could not be imported (%s: %s); falling back to HF generate.", type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "")
        return None
    try:
        from vllm.lora.request import LoRARequest
    except ImportError:  # defensive: the long-standing location, re-exported at the top level by some versions
        LoRARequest = vllm.LoRARequest
    if not torch.cuda.is_available():
        log.warning(NO_CUDA_MESSAGE)
        return None
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        log.warning(MULTI_PROCESS_MESSAGE.format(world))
        return None
    if cfg.model.lora_rank <= 0 or not is_lora_policy(policy):
        raise ValueError(FULL_PARAMETER_MESSAGE)
    if cfg.model.load_in_4bit and not bnb_available():
        log.warning(NO_BNB_MESSAGE)
        return None

    tok = processor.tokenizer
    image_pad_id = getattr(processor, "image_token_id", None)
    if image_pad_id is None:
        image_pad_id = tok.convert_tokens_to_ids(processor.image_token)
    vocab_size = policy.config.get_text_config().vocab_size
    from rlsd.model import image_size

    hf_size = image_size(processor.image_processor.size, source=cfg.model.path)
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    kwargs = engine_kwargs(cfg, image_size=hf_size, gpu_gib=gpu_gib)
    if kwargs["mm_processor_kwargs"]["size"] != hf_size:  # one pixel range for both engines
        raise RuntimeError(f"vLLM would resize images to {kwargs['mm_processor_kwargs']['size']}, "
                           f"the HF processor to {hf_size}")
    merge = getattr(processor.image_processor, "merge_size", 2)
    patch = getattr(processor.image_processor, "patch_size", 16)
    if max_image_tokens(hf_size, patch, merge) > PROMPT_TOKEN_BUDGET:
        log.warning("an image of up to %d pixels is %d visual tokens, more than the prompt budget of %d the vLLM "
                    "engine is sized for; set model.max_pixels (the authors used 1048576)", hf_size["longest_edge"],
                    max_image_tokens(hf_size, patch, merge), PROMPT_TOKEN_BUDGET)
    log.info("starting vLLM %s: %s", getattr(vllm, "__version__", "?"),
             {k: v for k, v in kwargs.items() if k not in ("model", "tokenizer")})
    try:
        llm = vllm.LLM(**kwargs)
    except Exception as err:  # noqa: BLE001 -- any construction error: fall back, saying why, in one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        log.warning("vLLM could not start (%s: %s); falling back to HF generate.", type(err).__name__, first[:300])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # whatever the failed engine allocated
        return None
    engine = VLLMEngine(llm, vllm.SamplingParams, LoRARequest, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                        image_pad_id=image_pad_id, suppress_ids=suppress_ids, vocab_size=vocab_size,
                        max_model_len=kwargs["max_model_len"], max_images=kwargs["limit_mm_per_prompt"]["image"],
                        sleep=kwargs["enable_sleep_mode"])
    engine.sync_weights(policy)
    engine.sleep()  # free the GPU for training until the first rollout
    # A status line, not a warning: logging is not configured by the trainer, so print it.
    print(f"vLLM engine ready (gpu_memory_utilization={kwargs['gpu_memory_utilization']}, "
          f"max_model_len={kwargs['max_model_len']}, sleep mode {'on' if engine.sleep_enabled else 'off'})",
          file=sys.stderr, flush=True)
    return engine
