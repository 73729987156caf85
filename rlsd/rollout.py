"""Rollouts with Hugging Face `generate`: G samples per prompt, special tokens suppressed.

The vLLM engine (GPU) lives beside this one and follows the same contract: same sampling settings, same
suppressed ids, and a `Rollout` whose tensors use the response layout of `rlsd.inputs`.

Shared prefill (`share_prompts`, default `rlsd.scoring.SHARE_PROMPTS`): the G rows of a group carry the same prompt,
so each distinct prompt's first P-1 tokens run once (its images encoded once) and the KV cache is expanded to its
rows; `generate` then starts from that cache with the last prompt token. The rotary positions and Qwen3-VL's rope
deltas are those the unshared `generate` computes, so the logits of every step -- hence greedy outputs and, with the
same seed, sampled ones -- equal the unshared path's (tests/test_rollout.py).

KV cache (`cache`): "dynamic" grows by concatenation (transformers' default); "static" preallocates P + max_new_tokens
positions, which on a GPU lets transformers compile the decoding step (`compile=True`: torch.compile through
`generate`'s auto-compile). Neither changes the numbers; which is faster is measured per profile (`rlsd.gpu_check`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from transformers import DynamicCache, LogitsProcessorList, StaticCache

from rlsd import scoring
from rlsd.inputs import PromptBatch, row_chunks
from rlsd.precision import FiniteLogits
from rlsd.scoring import group_rows, hf_model, no_logits

CACHES = ("dynamic", "static")


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


def item_seed(seed: int, key: str) -> int:
    """Sampling seed of one item (evaluation, benchmarks): a pure function of (seed, the item's id), so an item's
    response does not depend on which batch it is in, or on where a resumed run starts."""
    return zlib.crc32(f"{seed}:{key}".encode("utf-8"))


class RowSampler:
    """Sampling as a logits processor, one torch.Generator per row: temperature, top-k, top-p (transformers'
    warpers, same order and ties), then one draw per row from its own generator. Returns scores with only the drawn
    token finite, so `generate` run greedily emits exactly it. A row's draws depend on its seed alone, never on
    its batch (a batched multinomial draws every row from one stream)."""

    def __init__(self, sampling: SamplingParams, seeds: list[int], device):
        self.sampling = sampling
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids, scores_BV: torch.Tensor) -> torch.Tensor:
        s = self.sampling
        scores_BV = scores_BV.float() / s.temperature
        if s.top_k:
            kth_B1 = torch.topk(scores_BV, min(s.top_k, scores_BV.shape[-1]))[0][..., -1, None]
            scores_BV = scores_BV.masked_fill(scores_BV < kth_B1, -float("inf"))
        if s.top_p < 1.0:
            sorted_BV, order_BV = torch.sort(scores_BV, descending=False)
            cum_BV = sorted_BV.softmax(-1).cumsum(-1)
            remove_BV = cum_BV <= (1 - s.top_p)
            remove_BV[..., -1:] = False  # keep at least one token
            scores_BV = scores_BV.masked_fill(remove_BV.scatter(1, order_BV, remove_BV), -float("inf"))
        probs_BV = scores_BV.softmax(-1)
        token_B = torch.cat([torch.multinomial(probs_BV[i], 1, generator=g) for i, g in enumerate(self.generators)])
        out_BV = torch.full_like(scores_BV, -float("inf"))
        return out_BV.scatter(1, token_B[:, None], 0.0)


def generation_position_ids(base, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(position_ids_4BP, rope_deltas_B1) as `generate` computes them for a prompt batch (transformers 5.x, Qwen3-VL).

    Row 0 holds the text positions (attention-mask cumsum, so left padding does not shift them), rows 1-3 the
    multimodal rotary positions (text-only: the text positions again, deltas 0). Scoring's plain forward numbers
    columns instead; a rollout must match `generate`, whose decoding steps add the deltas to the text positions.
    """
    mask_BP = inputs["attention_mask"]
    text_BP = (mask_BP.long().cumsum(-1) - 1).masked_fill(mask_BP == 0, 0)
    if inputs.get("image_grid_thw") is not None:
        vision_3BP, rope_deltas_B1 = base.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
            attention_mask=mask_BP)
    else:
        vision_3BP = text_BP.unsqueeze(0).expand(3, -1, -1)
        rope_deltas_B1 = torch.zeros(mask_BP.shape[0], 1, dtype=torch.long, device=mask_BP.device)
    return torch.cat([text_BP.unsqueeze(0), vision_3BP], dim=0), rope_deltas_B1


def shared_prefill(model, prompts: PromptBatch, cache: str = "dynamic", max_new_tokens: int = 0) -> dict | None:
    """`generate` inputs whose KV cache already holds every row's first P-1 prompt tokens, computed once per distinct
    prompt and expanded to its rows. None when no two rows share a prompt (nothing to save).

    Sets the model's cached rope deltas to what the unshared `generate` derives from the whole prompt, expanded to
    the rows: decoding steps read them (Qwen3-VL's `compute_3d_position_ids`).
    """
    first_rows, inverse = group_rows(prompts)
    P = prompts.input_ids_BP.shape[1]
    if len(first_rows) == prompts.batch_size or P < 2:
        return None
    base = hf_model(model)
    device = prompts.input_ids_BP.device
    inverse_B = torch.tensor(inverse, device=device)
    distinct = prompts.select(first_rows, trim=False)
    inputs = distinct.model_inputs()
    position_ids_XDP, rope_deltas_D1 = generation_position_ids(base, inputs)
    prefix = {k: inputs[k][:, :P - 1] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    prefix_cache = DynamicCache()
    model(**(inputs | prefix), position_ids=position_ids_XDP[:, :, :P - 1], past_key_values=prefix_cache,
          use_cache=True, logits_to_keep=no_logits(device))
    base.model.rope_deltas = rope_deltas_D1[inverse_B]
    if cache == "static":
        kv = StaticCache(config=base.config, max_cache_len=P + max_new_tokens)
        for layer_idx, layer in enumerate(prefix_cache.layers):
            kv.update(layer.keys[inverse_B], layer.values[inverse_B], layer_idx)
    else:
        prefix_cache.batch_select_indices(inverse_B)
        kv = prefix_cache
    full = prompts.model_inputs()
    return dict(input_ids=full["input_ids"], attention_mask=full["attention_mask"],
                mm_token_type_ids=full["mm_token_type_ids"], past_key_values=kv)


@torch.no_grad()
def hf_generate(model, prompts: PromptBatch, sampling: SamplingParams, suppress_ids: list[int], eos_id: int,
                pad_id: int, micro_batch_size: int | None = None, share_prompts: bool | None = None,
                cache: str = "dynamic", compile: bool = False, row_seeds: list[int] | None = None) -> Rollout:
    """Sample one response per row of `prompts` (repeat the batch G times first for groups).

    `row_seeds`: one sampling seed per row (`RowSampler`), so a row's response does not depend on its batch;
    None draws the batch from the global RNG (training rollouts, seeded per step).

    `share_prompts`: prefill each distinct prompt once (`shared_prefill`; default `rlsd.scoring.SHARE_PROMPTS`).
    `cache`: "dynamic" or "static" KV cache; `compile`: let `generate` compile the decoding step (static cache, GPU).
    """
    sampling.validate()
    if cache not in CACHES:
        raise ValueError(f"hf_generate: cache must be one of {CACHES}, got {cache!r}")
    if compile and cache != "static":
        raise ValueError("hf_generate: compile=True needs cache='static' (transformers compiles static caches only)")
    share_prompts = scoring.SHARE_PROMPTS if share_prompts is None else share_prompts
    was_training = model.training
    model.eval()  # no dropout while sampling
    gen_kwargs = dict(
        max_new_tokens=sampling.max_new_tokens,
        do_sample=sampling.temperature > 0,
        suppress_tokens=suppress_ids or None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
        disable_compile=not compile,
        # NaN/+inf scores would make multinomial raise a device-side assert (CUDA runtime lost): one line instead.
        logits_processor=LogitsProcessorList([FiniteLogits(str(getattr(model, "dtype", "")).replace("torch.", ""))]),
        **NEUTRAL_GENERATION,
    )
    if sampling.temperature > 0:
        gen_kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    per_row = row_seeds is not None and sampling.temperature > 0
    if row_seeds is not None and len(row_seeds) != prompts.batch_size:
        raise ValueError(f"hf_generate: {len(row_seeds)} row_seeds for {prompts.batch_size} rows")
    if per_row:  # RowSampler draws; generate only takes its (single finite) token
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        for name in ("min_p", "typical_p", "epsilon_cutoff", "eta_cutoff"):  # sampling-only: greedy warns on them
            gen_kwargs.pop(name)
    chunks = []
    try:
        for rows in row_chunks(prompts.batch_size, micro_batch_size or 0):
            part = prompts.select(rows)
            inputs = shared_prefill(model, part, cache, sampling.max_new_tokens) if share_prompts else None
            if inputs is None:
                inputs = part.model_inputs() | ({"cache_implementation": "static"} if cache == "static" else {})
            kwargs = gen_kwargs
            if per_row:  # after the finite-logits guard: the row sampler draws from checked scores
                sampler = RowSampler(sampling, [row_seeds[i] for i in rows], part.input_ids_BP.device)
                kwargs = {**gen_kwargs, "logits_processor": LogitsProcessorList([*gen_kwargs["logits_processor"],
                                                                                 sampler])}
            out = model.generate(**inputs, **kwargs)
            chunks.append(out[:, part.input_ids_BP.shape[1]:])
    finally:
        model.train(was_training)
    T = max(c.shape[1] for c in chunks)
    response_ids_BT = torch.cat([torch.nn.functional.pad(c, (0, T - c.shape[1]), value=pad_id) for c in chunks])
    mask_BT, truncated_B = response_mask(response_ids_BT, eos_id)
    response_ids_BT = response_ids_BT.masked_fill(mask_BT == 0, pad_id)
    return Rollout(response_ids_BT=response_ids_BT, response_mask_BT=mask_BT, truncated_B=truncated_B)
