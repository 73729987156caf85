"""float16 that learns: dynamic loss scaling for the update, and a finite-logits guard for the rollout.

Why (T4-class GPUs have no bf16, so their profiles compute in float16):

- The loss is a token SUM divided by the global token count (~1e-4 of it per token); its gradient through the
  fp16 base reaches values far below float16's smallest subnormal (6e-8) and flushes to zero, so the LoRA adapters
  (fp32 in peft) receive a gradient with most of its entries lost. `LossScale` multiplies the loss by a large
  power of two before the backward and divides the gradients by it afterwards (exact: powers of two), halving
  the scale after a step whose gradients overflowed (that step is skipped, as every non-finite step is) and
  doubling it after `growth_interval` good steps -- `torch.amp.GradScaler`'s rule, kept here because the trainer
  already owns the finite check, the skip and the checkpoint.
- Qwen3-VL's modelling code has no fp16 clamp: an activation over 65,504 becomes inf, the logits NaN, and
  `torch.multinomial` then raises a device-side assert that kills a CUDA runtime (a notebook loses its kernel).
  `FiniteLogits` checks each decoding step's scores and raises one line first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

FP16_INITIAL_SCALE = 2.0 ** 16
"""GradScaler's default initial scale."""
FP16_GROWTH_INTERVAL = 200
"""Good steps between doublings (GradScaler: 2000 optimizer steps; RL runs are ~100-200 steps long)."""


@dataclass
class LossScale:
    """The factor the loss is multiplied by before the backward (1.0 = off, exact for float32/bfloat16)."""

    scale: float = 1.0
    """Current factor (a power of two)."""
    dynamic: bool = False
    """Halve after an overflow, double after `growth_interval` good steps."""
    growth_interval: int = FP16_GROWTH_INTERVAL
    """Good steps between doublings."""
    good_steps: int = 0
    """Finite steps since the last change."""

    @classmethod
    def for_dtype(cls, dtype: str) -> LossScale:
        return cls(FP16_INITIAL_SCALE, dynamic=True) if dtype == "float16" else cls()

    def unscale_(self, params) -> None:
        """Divide every gradient by the scale (before clipping and the finite check)."""
        if self.scale == 1.0:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale)

    def update(self, finite: bool) -> None:
        if not self.dynamic:
            return
        if not finite:
            self.scale, self.good_steps = max(self.scale / 2, 1.0), 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale, self.good_steps = self.scale * 2, 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict | None) -> None:
        if state:  # checkpoints written before loss scaling existed carry none: keep the initial values
            self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])


class FiniteLogits(LogitsProcessor):
    """Raise FloatingPointError (one line) when a decoding step's scores hold NaN or +inf, before sampling.

    -inf is allowed: suppressed tokens are set to -inf on purpose. One device sync per decoding step."""

    def __init__(self, dtype_name: str = ""):
        self.dtype_name = dtype_name
        self.step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        bad_B = (scores.isnan() | scores.isposinf()).any(-1)
        if bool(bad_B.any()):
            rows = bad_B.nonzero().flatten().tolist()
            hint = " (float16 overflow: Qwen3-VL has no fp16 clamp; use bfloat16 on a GPU of compute capability " \
                   ">= 8.0, or float32)" if self.dtype_name == "float16" else ""
            raise FloatingPointError(f"rollout: non-finite logits at decoding step {self.step} in {len(rows)} of "
                                     f"{scores.shape[0]} rows (first: row {rows[0]}){hint}; no sample was drawn")
        self.step += 1
        return scores
