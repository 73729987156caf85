"""Per-token scores of responses: log-probs (and entropies) under a prompt, without B×T×V logits.

The student forward scores responses after the student prompt; the teacher forward scores the SAME response
tokens after the teacher prompt (question + reference answer), with the same image inputs. Both return
`*_BT` tensors aligned on the response columns (see `rlsd.inputs`).

Tokens that generation never emits (image/vision specials, ids past the tokenizer) are masked out of the
distribution here exactly as during sampling, so a re-scored sample has the log-prob it was drawn with.

Two costs are avoided, each behind one function, with the plain path kept as the reference the tests compare against:

- Vocabulary memory (`score_responses`). The model body gives the final hidden states; the vocabulary projection,
  log-softmax and entropy then run chunk by chunk over the response positions (`chunk_positions`, ~64 MiB of float32
  logits per chunk) and are recomputed chunk by chunk in backward (`_ChunkedTokenScores`), so no B×T×V tensor exists
  at any time. With the real 151,936-entry vocabulary a float32 B×T×V tensor is 0.6 MB per token. Distillation
  divergences (OPSD, SDPO) go through `chunked_divergence` (per-chunk `torch.utils.checkpoint`). Reference:
  `response_logits` + `reference_scores`.
- Shared prompts (`response_hidden`). The G rows of a group carry the same prompt (`PromptBatch.source_B`): each
  distinct prompt runs once (its images encoded once), and its G continuations are scored against its KV cache,
  expanded by indexing, so the gradient reaches the prompt once, summed over the group. Positions (Qwen3-VL's
  multimodal rotary positions included) are those the unshared forward computes; deepstack visual features enter at
  the image tokens, which are all in the prompt. Reference: `response_hidden(..., share_prompts=False)`.
  Under gradient checkpointing (the GPU profiles) too: transformers drops the cache of a checkpointed layer because
  its backward replay would append to it twice; here the prompt's cache layers replace and the continuations' never
  store, so a replay is harmless and the cache is kept (`_cache_through_checkpoints`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

from rlsd.algorithm import gather_token_logp, masked_mean, token_entropy
from rlsd.inputs import PromptBatch

SUPPRESSED_LOGIT = -1e9
"""Logit given to suppressed ids: a large finite value rather than -inf keeps p*log(p) = 0 (not NaN) in entropies."""

CHUNK_BYTES = 64 * 2**20
"""float32 logits per chunk of positions (a few such buffers are alive at once: logits, probabilities, gradient)."""

SHARE_PROMPTS = True
"""Default of `share_prompts`: run a group's shared prompt once (exact; see the module docstring)."""


def suppressed_token_ids(tokenizer, vocab_size: int) -> list[int]:
    """Ids that must never be generated: every special token except end-of-turn, and padded vocab rows.

    A random or tiny model can sample `<|image_pad|>`; re-scoring such a response then fails with
    "Image features and image tokens do not match".
    """
    eos = {tokenizer.eos_token_id}
    specials = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special} | set(tokenizer.all_special_ids)
    return sorted((specials - eos) | set(range(len(tokenizer), vocab_size)))


def suppress_mask(suppress_ids: list[int], vocab_size: int) -> torch.Tensor:
    """Boolean (V,) mask of the suppressed ids."""
    mask_V = torch.zeros(vocab_size, dtype=torch.bool)
    mask_V[torch.as_tensor(suppress_ids, dtype=torch.long)] = True
    return mask_V


def chunk_positions(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Positions per chunk so that one chunk's float32 logits take about `chunk_bytes`."""
    return max(1, chunk_bytes // (4 * vocab_size))


# ------------------------------------------------------------------------------------------ the model's parts


def hf_model(model):
    """The transformers model inside DDP / peft wrappers (LoRA layers live inside it, so they still apply)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()
    return model


def _final_norm(base) -> torch.nn.Module:
    try:
        return base.model.language_model.norm
    except AttributeError:
        raise TypeError(f"{type(base).__name__}: scoring needs a Qwen3-VL-style model (model.language_model.norm)")\
            from None


@dataclass
class VocabHead:
    """The output projection followed by generation's processing: logits/temperature, suppressed ids -> -1e9."""

    weight_VH: torch.Tensor
    """lm_head weight (a parameter for the student; a detached copy for a teacher)."""
    bias_V: torch.Tensor | None = None
    """lm_head bias (Qwen3-VL has none)."""
    suppress_V: torch.Tensor | None = None
    """Boolean mask of ids generation never emits."""
    temperature: float = 1.0
    """Sampling temperature the logits are divided by."""

    @classmethod
    def of(cls, model, suppress_V=None, temperature: float = 1.0, detach: bool = False) -> VocabHead:
        """The head of `model` with the weights active NOW (inside a teacher context: the teacher's)."""
        head = hf_model(model).get_output_embeddings()
        if not isinstance(head, torch.nn.Linear):
            raise TypeError(f"scoring needs an nn.Linear lm_head, got {type(head).__name__}")
        weight, bias = head.weight, head.bias
        if detach:
            weight, bias = weight.detach(), None if bias is None else bias.detach()
        suppress_V = None if suppress_V is None else suppress_V.to(weight.device)
        return cls(weight, bias, suppress_V, temperature)

    def logits(self, hidden_XH: torch.Tensor) -> torch.Tensor:
        """float32 processed logits_XV (exactly what the reference path computes for these positions)."""
        logits_XV = F.linear(hidden_XH, self.weight_VH, self.bias_V).float()
        if self.temperature != 1.0:
            logits_XV = logits_XV / self.temperature
        if self.suppress_V is not None:
            logits_XV = logits_XV.masked_fill(self.suppress_V, SUPPRESSED_LOGIT)
        return logits_XV


# --------------------------------------------------------------------------- hidden states (shared prompts)


@contextlib.contextmanager
def _capture_final_hidden(base, store: list):
    handle = _final_norm(base).register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        yield
    finally:
        handle.remove()


# `logits_to_keep` as an empty index: the model projects no position to the vocabulary.
def no_logits(device) -> torch.Tensor:
    return torch.zeros(0, dtype=torch.long, device=device)


class _PromptLayer(DynamicLayer):
    """KV cache layer of the shared prompt's forward (one forward from an empty cache): `update` REPLACES rather than
    appends, so when gradient checkpointing replays a layer in backward, the replay gets what the first pass got."""

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class _PrefixLayer(DynamicLayer):
    """KV cache layer of the continuations: the prompt's states (expanded to the rows) + the new ones, never stored,
    so a checkpoint replay reads the same states the first pass did."""

    def __init__(self, keys, values):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


@contextlib.contextmanager
def _cache_through_checkpoints(base):
    """Let checkpointed layers keep the KV cache for the call. transformers drops it by default, since a replay would
    append to an ordinary cache a second time; the two layer kinds above make a replay harmless."""
    layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    before = [m.__dict__.get("_can_checkpoint_with_cache") for m in layers]
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m, value in zip(layers, before):
            if value is None:
                del m._can_checkpoint_with_cache  # back to the class default
            else:
                m._can_checkpoint_with_cache = value


def prompt_position_ids(base, inputs: dict) -> torch.Tensor:
    """The rotary positions the unshared forward of `inputs` uses, made explicit.

    With images: Qwen3-VL's (3, B, L) multimodal positions. Without: plain column positions as the text model builds
    them, (4, B, L) (text + 3 rotary rows). Explicit positions also keep the continuation forward off the model's
    cached `rope_deltas`, which a previous forward may have left stale.
    """
    if inputs.get("image_grid_thw") is not None:
        position_ids_XBL, _ = base.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                        image_grid_thw=inputs["image_grid_thw"],
                                                        attention_mask=inputs["attention_mask"])
        return position_ids_XBL
    B, L = inputs["input_ids"].shape
    return torch.arange(L, device=inputs["input_ids"].device).view(1, 1, L).expand(4, B, L)


def group_rows(prompts: PromptBatch) -> tuple[list[int], list[int]]:
    """(first row of each distinct prompt, per row the index of its distinct prompt)."""
    index_of, first_rows, inverse = {}, [], []
    for row, source in enumerate(prompts.sources()):
        if source not in index_of:
            index_of[source] = len(first_rows)
            first_rows.append(row)
        inverse.append(index_of[source])
    return first_rows, inverse


def response_hidden(model, prompts: PromptBatch, response_ids_BT: torch.Tensor, response_mask_BT: torch.Tensor,
                    share_prompts: bool | None = None) -> torch.Tensor:
    """Final hidden states hidden_BTH predicting each response token (columns P-1 .. P+T-2). Differentiable.

    `share_prompts` (default `SHARE_PROMPTS`): run each distinct prompt of the batch once and its rows'
    continuations against its KV cache. False: one forward of every row's prompt + response (the reference).
    """
    share_prompts = SHARE_PROMPTS if share_prompts is None else share_prompts
    base = hf_model(model)
    P, T = prompts.input_ids_BP.shape[1], response_ids_BT.shape[1]
    device = prompts.input_ids_BP.device
    distinct_rows, inverse = group_rows(prompts)
    if not share_prompts or len(distinct_rows) == prompts.batch_size or T == 0:
        store = []
        with _capture_final_hidden(base, store):
            model(**prompts.with_responses(response_ids_BT, response_mask_BT), logits_to_keep=no_logits(device),
                  use_cache=False)
        return store[-1][:, P - 1:P + T - 1]

    distinct = prompts.select(distinct_rows, trim=False)
    inverse_B = torch.tensor(inverse, device=device)
    prompt_inputs = distinct.model_inputs()
    # Positions of the distinct prompts only (transformers computes M-RoPE positions row by row in Python). A response
    # continues its prompt's text positions: continuation token j sits at (last prompt position) + 1 + j in every
    # rotary row, as in the unshared forward -- whose padding columns are 0 with images (get_rope_index) and plain
    # column numbers without.
    prompt_pos_XDP = prompt_position_ids(base, prompt_inputs)
    cont_pos_XBT = prompt_pos_XDP[:, inverse_B, -1:] + torch.arange(1, T, device=device)
    if prompt_inputs.get("image_grid_thw") is not None:
        cont_pos_XBT = cont_pos_XBT * response_mask_BT.to(device)[:, :T - 1].bool()
    store = []
    with _cache_through_checkpoints(base), _capture_final_hidden(base, store):
        prompt_inputs["position_ids"] = prompt_pos_XDP
        prompt_cache = Cache(layer_class_to_replicate=_PromptLayer)
        model(**prompt_inputs, past_key_values=prompt_cache, logits_to_keep=no_logits(device), use_cache=True)
        last_prompt_BH = store[-1][:, P - 1][inverse_B]
        if T == 1:
            return last_prompt_BH.unsqueeze(1)
        # Indexing expands each prompt's states to its rows; its backward sums the group's gradient into the prompt.
        rows_cache = Cache(layers=[_PrefixLayer(layer.keys[inverse_B], layer.values[inverse_B])
                                   for layer in prompt_cache.layers])
        response_mask_BT = response_mask_BT.to(device, prompts.attention_mask_BP.dtype)
        cont_inputs = dict(input_ids=response_ids_BT.to(device)[:, :T - 1],
                           attention_mask=torch.cat([prompts.attention_mask_BP, response_mask_BT[:, :T - 1]], dim=1),
                           position_ids=cont_pos_XBT)
        model(**cont_inputs, past_key_values=rows_cache, logits_to_keep=no_logits(device), use_cache=True)
    return torch.cat([last_prompt_BH.unsqueeze(1), store[-1]], dim=1)


# ------------------------------------------------------------------------------ chunked log-probs / entropy


class _ChunkedTokenScores(torch.autograd.Function):
    """(log p(token), entropy) of N positions from hidden_NH and the head, chunk by chunk; backward recomputes the
    logits of each chunk, so memory is a few chunk×V buffers whatever N is.

    z = processed logits, log p = z - logsumexp(z):  d log p(y)/dz = onehot(y) - p,  dH/dz = -p·(log p + H).
    Suppressed ids get zero gradient (their logit is a constant, as the reference's masked_fill makes it).
    """

    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, bias_V, tokens_N, suppress_V, temperature, chunk):
        head = VocabHead(weight_VH, bias_V, suppress_V, temperature)
        logp_N = hidden_NH.new_empty(hidden_NH.shape[0], dtype=torch.float32)
        entropy_N, lse_N = torch.empty_like(logp_N), torch.empty_like(logp_N)
        for a in range(0, hidden_NH.shape[0], chunk):
            z_XV = head.logits(hidden_NH[a:a + chunk])
            lse_X1 = torch.logsumexp(z_XV, dim=-1, keepdim=True)
            logp_N[a:a + chunk] = (z_XV.gather(-1, tokens_N[a:a + chunk, None]) - lse_X1).squeeze(-1)
            logp_XV = z_XV.sub_(lse_X1)
            entropy_N[a:a + chunk] = -(logp_XV.exp() * logp_XV).sum(-1)
            lse_N[a:a + chunk] = lse_X1.squeeze(-1)
        ctx.save_for_backward(hidden_NH, weight_VH, bias_V, tokens_N, suppress_V, entropy_N, lse_N)
        ctx.temperature, ctx.chunk = temperature, chunk
        return logp_N, entropy_N

    @staticmethod
    def backward(ctx, grad_logp_N, grad_entropy_N):
        hidden_NH, weight_VH, bias_V, tokens_N, suppress_V, entropy_N, lse_N = ctx.saved_tensors
        head = VocabHead(weight_VH, bias_V, suppress_V, ctx.temperature)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden_NH) if need_h else None
        grad_w = torch.zeros_like(weight_VH, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias_V, dtype=torch.float32) if need_b else None
        grad_logp_N = torch.zeros_like(lse_N) if grad_logp_N is None else grad_logp_N
        entropy_has_grad = grad_entropy_N is not None  # the trainer logs the entropy but does not train on it
        for a in range(0, hidden_NH.shape[0], ctx.chunk):
            s = slice(a, a + ctx.chunk)
            h_XH = hidden_NH[s]
            with torch.no_grad():
                logp_XV = head.logits(h_XH).sub_(lse_N[s, None])
                g_lp_X1 = grad_logp_N[s, None]
                if entropy_has_grad:
                    # grad_z = -g_H·p·(log p + H) - g_logp·p + g_logp·onehot(y)
                    p_XV = logp_XV.exp()
                    grad_z_XV = logp_XV.add_(entropy_N[s, None]).mul_(-grad_entropy_N[s, None]).sub_(g_lp_X1)
                    grad_z_XV.mul_(p_XV)
                    del p_XV
                else:  # grad_z = -g_logp·p + g_logp·onehot(y)
                    grad_z_XV = logp_XV.exp_().mul_(-g_lp_X1)
                grad_z_XV.scatter_add_(-1, tokens_N[s, None], g_lp_X1)
                if suppress_V is not None:
                    grad_z_XV.masked_fill_(suppress_V, 0.0)
                if ctx.temperature != 1.0:
                    grad_z_XV.div_(ctx.temperature)
                grad_z_XV = grad_z_XV.to(weight_VH.dtype)
                if need_h:
                    grad_h[s] = (grad_z_XV @ weight_VH).to(hidden_NH.dtype)
                if need_w:
                    grad_w.add_(grad_z_XV.T.float() @ h_XH.float())
                if need_b:
                    grad_b.add_(grad_z_XV.float().sum(0))
        grad_w = None if grad_w is None else grad_w.to(weight_VH.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias_V.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


@torch.no_grad()
def _chunked_logp(hidden_NH, head: VocabHead, tokens_N, chunk: int) -> torch.Tensor:
    """log p(token) alone, chunk by chunk (a no-grad pass that needs no entropy: RLSD's teacher)."""
    logp_N = hidden_NH.new_empty(hidden_NH.shape[0], dtype=torch.float32)
    for a in range(0, hidden_NH.shape[0], chunk):
        z_XV = head.logits(hidden_NH[a:a + chunk])
        logp_N[a:a + chunk] = z_XV.gather(-1, tokens_N[a:a + chunk, None]).squeeze(-1) - torch.logsumexp(z_XV, -1)
    return logp_N


def token_scores_from_hidden(hidden_BTH, head: VocabHead, response_ids_BT, response_mask_BT,
                             chunk_size: int | None = None,
                             with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logp_BT, entropy_BT) of the response tokens, 0 on masked positions; only unmasked positions are projected.
    Without gradients, `with_entropy=False` skips the entropy (a full pass over each chunk's probabilities)."""
    mask_BT = response_mask_BT.to(hidden_BTH.device).bool()
    chunk = chunk_size or chunk_positions(head.weight_VH.shape[0])
    tokens_N = response_ids_BT.to(hidden_BTH.device)[mask_BT].long()
    zeros_BT = torch.zeros(mask_BT.shape, dtype=torch.float32, device=hidden_BTH.device)
    if not with_entropy and not torch.is_grad_enabled():
        return zeros_BT.masked_scatter(mask_BT, _chunked_logp(hidden_BTH[mask_BT], head, tokens_N, chunk)), None
    logp_N, entropy_N = _ChunkedTokenScores.apply(hidden_BTH[mask_BT], head.weight_VH, head.bias_V, tokens_N,
                                                  head.suppress_V, float(head.temperature), int(chunk))
    return zeros_BT.masked_scatter(mask_BT, logp_N), zeros_BT.masked_scatter(mask_BT, entropy_N)


@dataclass
class TokenScores:
    """Scores of the response tokens; zero on masked positions."""

    logp_BT: torch.Tensor
    """log pi(y_t | prompt, y_<t) of each response token."""
    entropy_BT: torch.Tensor | None = None
    """Entropy of the next-token distribution at each response position (nats)."""
    hidden_BTH: torch.Tensor | None = None
    """Final hidden states predicting each response token (for distillation divergences; `keep_hidden`)."""
    head: VocabHead | None = None
    """The vocabulary head these scores were computed with (its weights as they were then)."""

    def logits(self) -> torch.Tensor:
        """The full float32 logits_BTV (B×T×V: for small vocabularies and tests only)."""
        return self.head.logits(self.hidden_BTH)

    def divergence(self, teacher: TokenScores, mask_BT: torch.Tensor, divergence,
                   chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`chunked_divergence(divergence, self, teacher, mask_BT)`: these scores are the student's."""
        return chunked_divergence(divergence, self, teacher, mask_BT, chunk_size)


def score_responses(model, prompts: PromptBatch, response_ids_BT: torch.Tensor, response_mask_BT: torch.Tensor,
                    suppress_V: torch.Tensor | None = None, temperature: float = 1.0, with_entropy: bool = True,
                    keep_hidden: bool = False, share_prompts: bool | None = None,
                    chunk_size: int | None = None) -> TokenScores:
    """Log-probs (+ entropies) of the response tokens under `prompts`. Differentiable; never holds B×T×V logits.

    `keep_hidden` also returns the hidden states and the head (taken with the weights active now), which
    `chunked_divergence` needs. `chunk_size`: positions per vocabulary chunk (default from `CHUNK_BYTES`).
    """
    hidden_BTH = response_hidden(model, prompts, response_ids_BT, response_mask_BT, share_prompts)
    head = VocabHead.of(model, suppress_V, temperature, detach=not torch.is_grad_enabled())
    logp_BT, entropy_BT = token_scores_from_hidden(hidden_BTH, head, response_ids_BT, response_mask_BT, chunk_size,
                                                   with_entropy)
    return TokenScores(logp_BT=logp_BT, entropy_BT=entropy_BT if with_entropy else None,
                       hidden_BTH=hidden_BTH if keep_hidden else None, head=head if keep_hidden else None)


def chunked_divergence(divergence, student: TokenScores, teacher: TokenScores, mask_BT: torch.Tensor,
                       chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-position distillation divergence (e.g. `rlsd.algorithm.generalized_jsd` with its β bound), computed
    over chunks of unmasked positions from both sides' hidden states; each chunk is recomputed in backward.

    `divergence(student_logits_BTV, teacher_logits_BTV, mask_BT) -> (loss, per_token_BT)`; the teacher is detached.
    Returns (masked token-mean, per_token_BT) exactly as `divergence` on the full logits would.
    """
    if student.hidden_BTH is None or teacher.hidden_BTH is None:
        raise ValueError("chunked_divergence needs scores computed with keep_hidden=True")
    mask_BT = mask_BT.to(student.hidden_BTH.device).bool()
    chunk = chunk_size or chunk_positions(student.head.weight_VH.shape[0])
    student_NH = student.hidden_BTH[mask_BT]
    teacher_NH = teacher.hidden_BTH.detach().to(student_NH.device)[mask_BT]

    def one_chunk(student_XH, teacher_XH):
        with torch.no_grad():
            teacher_1XV = teacher.head.logits(teacher_XH).unsqueeze(0)
        student_1XV = student.head.logits(student_XH).unsqueeze(0)
        ones_1X = torch.ones(student_1XV.shape[:2], device=student_1XV.device)
        return divergence(student_1XV, teacher_1XV, ones_1X)[1].squeeze(0)

    parts = []
    for a in range(0, student_NH.shape[0], chunk):
        args = (student_NH[a:a + chunk], teacher_NH[a:a + chunk])
        parts.append(checkpoint(one_chunk, *args, use_reentrant=False) if torch.is_grad_enabled() else
                     one_chunk(*args))
    per_token_N = torch.cat(parts) if parts else student_NH.new_zeros(0, dtype=torch.float32)
    per_token_BT = torch.zeros(mask_BT.shape, dtype=per_token_N.dtype, device=mask_BT.device)
    per_token_BT = per_token_BT.masked_scatter(mask_BT, per_token_N)
    return masked_mean(per_token_BT, mask_BT), per_token_BT


# ------------------------------------------------------------------------- the reference (unchunked) path


def response_logits(model, prompts: PromptBatch, response_ids_BT: torch.Tensor, response_mask_BT: torch.Tensor,
                    suppress_V: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Reference: float32 logits_BTV predicting each response token, from one unshared forward (B×T×V memory)."""
    T = response_ids_BT.shape[1]
    inputs = prompts.with_responses(response_ids_BT, response_mask_BT)
    out = model(**inputs, logits_to_keep=T + 1, use_cache=False)
    logits_BTV = out.logits[:, :T].float()
    if temperature != 1.0:
        logits_BTV = logits_BTV / temperature
    if suppress_V is not None:
        logits_BTV = logits_BTV.masked_fill(suppress_V.to(logits_BTV.device), SUPPRESSED_LOGIT)
    return logits_BTV


def reference_scores(model, prompts: PromptBatch, response_ids_BT: torch.Tensor, response_mask_BT: torch.Tensor,
                     suppress_V: torch.Tensor | None = None, temperature: float = 1.0) -> tuple[torch.Tensor, ...]:
    """Reference: (logp_BT, entropy_BT, logits_BTV) from full logits and autograd (what `score_responses` equals)."""
    logits_BTV = response_logits(model, prompts, response_ids_BT, response_mask_BT, suppress_V, temperature)
    mask_BT = response_mask_BT.to(logits_BTV.device).bool()
    logp_BT = gather_token_logp(logits_BTV, response_ids_BT.to(logits_BTV.device)).masked_fill(~mask_BT, 0.0)
    entropy_BT = token_entropy(logits_BTV).masked_fill(~mask_BT, 0.0)
    return logp_BT, entropy_BT, logits_BTV
