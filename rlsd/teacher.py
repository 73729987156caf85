"""Teacher weights without a second model.

The teacher is the policy network itself, prompted with the privileged information; what differs between
methods is WHICH weights it runs with:

- `current`:  the policy as it is now (online teacher);
- `initial`:  the policy before training (OPSD's default). With LoRA this is the adapter disabled: free;
- `snapshot`: a frozen copy of the trainable weights, re-synced every `sync_every` optimizer steps (RLSD);
- `ema`:      an exponential moving average of the trainable weights (SDPO).

Copies hold only the trainable tensors (the LoRA adapter on a GPU, ~1% of the model). The teacher forward
swaps them in by pointer (`param.data = copy`), runs under no_grad, and swaps back: no weight copy per forward.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

TEACHER_MODES = ("current", "initial", "snapshot", "ema")


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class TeacherWeights:
    """Holds (or points at) the teacher's weights for one policy model."""

    def __init__(self, model, mode: str = "snapshot", sync_every: int = 10, ema_rate: float = 0.05):
        if mode not in TEACHER_MODES:
            raise ValueError(f"teacher mode must be one of {TEACHER_MODES}, got {mode!r}")
        if mode == "snapshot" and sync_every < 1:
            raise ValueError(f"teacher sync_every must be >= 1, got {sync_every}")
        if mode == "ema" and not 0 < ema_rate <= 1:
            raise ValueError(f"teacher ema_rate must be in (0, 1], got {ema_rate}")
        self.model, self.mode, self.sync_every, self.ema_rate = model, mode, sync_every, ema_rate
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.use_disabled_adapter = mode == "initial" and _is_peft(model)
        self.copies: list[torch.Tensor] | None = None
        if mode in ("snapshot", "ema") or (mode == "initial" and not self.use_disabled_adapter):
            self.copies = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def sync(self):
        """Copy the current trainable weights into the teacher."""
        if self.copies is not None:
            for c, p in zip(self.copies, self.params):
                c.copy_(p.detach())

    @torch.no_grad()
    def after_optimizer_step(self, step: int):
        """Call after optimizer step `step` (1-based count of steps done): refresh as the mode says."""
        if self.mode == "snapshot" and step % self.sync_every == 0:
            self.sync()
        elif self.mode == "ema":
            for c, p in zip(self.copies, self.params):
                c.lerp_(p.detach().to(c.dtype), self.ema_rate)

    @contextmanager
    def active(self):
        """Within this context the model computes with the teacher's weights (no gradients)."""
        if self.mode == "current":
            with torch.no_grad():
                yield self.model
            return
        if self.use_disabled_adapter:
            with torch.no_grad(), self.model.disable_adapter():
                yield self.model
            return
        originals = [p.data for p in self.params]
        try:
            with torch.no_grad():
                for p, c in zip(self.params, self.copies):
                    p.data = c
                yield self.model
        finally:
            for p, original in zip(self.params, originals):
                p.data = original

    def state_dict(self) -> dict:
        return {"mode": self.mode, "copies": None if self.copies is None else [c.clone() for c in self.copies]}

    def load_state_dict(self, state: dict):
        if state["mode"] != self.mode:
            raise ValueError(f"teacher state is for mode {state['mode']!r}, this teacher is {self.mode!r}")
        if self.copies is not None:
            for c, saved in zip(self.copies, state["copies"]):
                c.copy_(saved)

