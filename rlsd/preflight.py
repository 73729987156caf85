"""Refuse, in one line and before anything is downloaded or loaded, a configuration this machine cannot run.

    check(cfg, visible_device())     # raises PreflightError naming the field to change

What is refused (each found by running it, or by reading what would fail minutes later):

- `device=cuda` (every `qwen3vl-*` profile) without a visible CUDA device: the run would otherwise load an 8B model
  on the CPU and take hours per step. `device=cpu` says "on the CPU anyway".
- bfloat16 on a GPU below compute capability 8.0 (T4, V100): no bf16 units (vLLM refuses it outright). The
  `qwen3vl-*-t4` profiles compute in float16.
- `engine=vllm` where vLLM is installed but its pool cannot hold its own copy of the weights, one `max_model_len`
  sequence of KV cache and its overhead beside the training model (`rlsd.memory.vllm_plan`): vLLM would fail with
  "No available memory for the cache blocks" after minutes of loading. Also a pool set by hand
  (RLSD_VLLM_GPU_MEMORY_UTILIZATION) that is too small for the same.
- float16 full fine-tuning is refused by `TrainConfig.validate` (a config error, whatever the machine).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from rlsd.config import TrainConfig
from rlsd.memory import model_size, vllm_plan
from rlsd.vllm_engine import ENV_GPU_MEMORY_UTILIZATION


class PreflightError(ValueError):
    """A configuration this machine cannot run; the message is one line naming what to change."""


@dataclass(frozen=True)
class DeviceState:
    """What the checks need to know about the machine."""

    cuda: bool
    """Whether torch sees a CUDA device."""
    name: str | None = None
    """The device's name (e.g. 'Tesla T4')."""
    memory_gib: float | None = None
    """Its total memory in GiB."""
    capability: tuple[int, int] | None = None
    """Its compute capability, e.g. (7, 5)."""
    vllm_installed: bool = False
    """Whether `import vllm` would find a package."""


def visible_device() -> DeviceState:
    import torch

    vllm = importlib.util.find_spec("vllm") is not None
    if not torch.cuda.is_available():
        return DeviceState(cuda=False, vllm_installed=vllm)
    props = torch.cuda.get_device_properties(0)
    return DeviceState(cuda=True, name=props.name, memory_gib=props.total_memory / 2**30,
                       capability=tuple(torch.cuda.get_device_capability(0)), vllm_installed=vllm)


def _why_no_cuda() -> str:
    """The likely reason, from torch's own build."""
    import torch

    if torch.version.cuda is None:
        return "this torch is a CPU-only build: install a CUDA one"
    return f"if nvidia-smi lists a GPU, its driver is older than this torch's CUDA {torch.version.cuda} build needs"


def check(cfg: TrainConfig, device: DeviceState, env=None) -> None:
    """Raise PreflightError (one line) if `cfg` cannot run on `device`; return None if it can."""
    env = os.environ if env is None else env
    if cfg.device == "cuda" and not device.cuda:
        raise PreflightError(
            f"device=cuda (model.path={cfg.model.path}): no CUDA device is visible to torch; run on a GPU (on Colab: "
            f"Runtime > Change runtime type > GPU; {_why_no_cuda()}), or set device=cpu to run on the CPU anyway (hours per step at 2B/8B)")
    on_gpu = device.cuda and cfg.device != "cpu"
    if not on_gpu:
        return
    if cfg.model.dtype == "bfloat16" and device.capability is not None and tuple(device.capability) < (8, 0):
        major, minor = device.capability
        raise PreflightError(
            f"model.dtype=bfloat16: {device.name or 'this GPU'} (compute capability {major}.{minor}) has no bfloat16; "
            "set model.dtype=float16 (the qwen3vl-*-t4 profiles do)")
    if cfg.engine == "vllm" and device.vllm_installed and model_size(cfg) and device.memory_gib:
        plan = vllm_plan(cfg, device.memory_gib)
        if not plan.fits:
            raise PreflightError(f"engine=vllm: {plan.why_not(device.memory_gib)}; use engine=hf, a smaller "
                                 "response budget, or a larger GPU")
        raw = env.get(ENV_GPU_MEMORY_UTILIZATION)
        if raw:
            pool = float(raw) * device.memory_gib
            need = plan.weights + plan.kv_min + plan.overhead
            if pool < need:
                raise PreflightError(
                    f"{ENV_GPU_MEMORY_UTILIZATION}={raw}: {pool:.1f} of {device.memory_gib:.1f} GiB cannot hold "
                    f"vLLM's weights ({plan.weights:.1f} GiB), one max_model_len sequence of KV cache "
                    f"({plan.kv_min:.1f}) and its overhead ({plan.overhead:.1f}); unset it (the profile's plan asks "
                    f"for {plan.utilization:.2f}) or raise it to {need / device.memory_gib:.2f}")
