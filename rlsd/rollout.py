"""Rollouts with Hugging Face `generate`: G samples per prompt, special tokens suppressed.

The vLLM engine (GPU) lives beside this one and follows the same contract: same sampling settings, same
suppressed ids, and a `Rollout` whose tensors use the response layout of `rlsd.inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlsd.inputs import PromptBatch, row_chunks


@dataclass
class SamplingParams:
    """Decoding settings (the paper: rollouts T=1.0, top-p 1.0; validation T=0.7, top-p 0.8, top-k 20)."""

    max_new_tokens: int = 64
    """Response budget; a response without end-of-turn within it is truncated (and still scored)."""
    temperature: float = 1.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Sample among the k most likely tokens; 0 disables."""

    def validate(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0, got {self.top_k}")


VALIDATION_SAMPLING = SamplingParams(temperature=0.7, top_p=0.8, top_k=20)


@dataclass
class Rollout:
    """Sampled responses, right-padded; the mask covers tokens up to and including end-of-turn."""

    response_ids_BT: torch.Tensor
    response_mask_BT: torch.Tensor
    truncated_B: torch.Tensor
    """True where the response hit max_new_tokens without an end-of-turn token."""

    @property
    def lengths_B(self) -> torch.Tensor:
        return self.response_mask_BT.sum(-1)


def response_mask(response_ids_BT: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask_BT, truncated_B): mask up to and including the first eos; truncated if there is none."""
    is_eos_BT = response_ids_BT == eos_id
    # eos_seen_before_BT[t] = an eos occurred strictly before t.
    eos_seen_before_BT = (is_eos_BT.long().cumsum(-1) - is_eos_BT.long()) > 0
    mask_BT = ~eos_seen_before_BT
    truncated_B = ~is_eos_BT.any(-1)
    return mask_BT.long(), truncated_B


# `generate` fills every setting left unset from the checkpoint's generation_config.json (Qwen3-VL's hub file sets
# sampling values; fine-tunes often add repetition_penalty etc.). The rollout distribution must be the policy's own
# (what the trainer re-scores), so every other logits processor is pinned off here.
# (Settings whose "off" is None -- bad_words_ids, sequence_bias -- cannot be pinned this way; Qwen's files set none.)
NEUTRAL_GENERATION = dict(repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
                          min_new_tokens=0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0,
                          eta_cutoff=0.0, num_beams=1, renormalize_logits=False)


@torch.no_grad()
def hf_generate(model, prompts: PromptBatch, sampling: SamplingParams, suppress_ids: list[int], eos_id: int,
                pad_id: int, micro_batch_size: int | None = None) -> Rollout:
    """Sample one response per row of `prompts` (repeat the batch G times first for groups)."""
    sampling.validate()
    was_training = model.training
    model.eval()  # no dropout while sampling
    gen_kwargs = dict(
        max_new_tokens=sampling.max_new_tokens,
        do_sample=sampling.temperature > 0,
        suppress_tokens=suppress_ids or None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
        **NEUTRAL_GENERATION,
    )
    if sampling.temperature > 0:
        gen_kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    chunks = []
    try:
        for rows in row_chunks(prompts.batch_size, micro_batch_size or 0):
            part = prompts.select(rows)
            out = model.generate(**part.model_inputs(), **gen_kwargs)
            chunks.append(out[:, part.input_ids_BP.shape[1]:])
    finally:
        model.train(was_training)
    T = max(c.shape[1] for c in chunks)
    response_ids_BT = torch.cat([torch.nn.functional.pad(c, (0, T - c.shape[1]), value=pad_id) for c in chunks])
    mask_BT, truncated_B = response_mask(response_ids_BT, eos_id)
    response_ids_BT = response_ids_BT.masked_fill(mask_BT == 0, pad_id)
    return Rollout(response_ids_BT=response_ids_BT, response_mask_BT=mask_BT, truncated_B=truncated_B)
