"""Per-token scores of responses: log-probs (and entropies, logits) under a prompt, in one batched forward.

The student forward scores responses after the student prompt; the teacher forward scores the SAME response
tokens after the teacher prompt (question + reference answer), with the same image inputs. Both return
`*_BT` tensors aligned on the response columns (see `rlsd.inputs`).

Tokens that generation never emits (image/vision specials, ids past the tokenizer) are masked out of the
distribution here exactly as during sampling, so a re-scored sample has the log-prob it was drawn with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlsd.algorithm import gather_token_logp, token_entropy
from rlsd.inputs import PromptBatch


def suppressed_token_ids(tokenizer, vocab_size: int) -> list[int]:
    """Ids that must never be generated: every special token except end-of-turn, and padded vocab rows.

    A random or tiny model can sample `<|image_pad|>`; re-scoring such a response then fails with
    "Image features and image tokens do not match" (DESIGN.md §5).
    """
    eos = {tokenizer.eos_token_id}
    specials = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special} | set(tokenizer.all_special_ids)
    return sorted((specials - eos) | set(range(len(tokenizer), vocab_size)))


@dataclass
class TokenScores:
    """Scores of the response tokens; zero on masked positions."""

    logp_BT: torch.Tensor
    """log pi(y_t | prompt, y_<t) of each response token."""
    entropy_BT: torch.Tensor | None = None
    """Entropy of the next-token distribution at each response position (nats)."""
    logits_BTV: torch.Tensor | None = None
    """Processed logits (temperature, suppression) at each response position, float32."""


def response_logits(model, prompts: PromptBatch, response_ids_BT: torch.Tensor, response_mask_BT: torch.Tensor,
                    suppress_V: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """float32 logits_BTV predicting each response token (only T+1 positions are projected to the vocab)."""
    T = response_ids_BT.shape[1]
    inputs = prompts.with_responses(response_ids_BT, response_mask_BT)
    out = model(**inputs, logits_to_keep=T + 1, use_cache=False)
    logits_BTV = out.logits[:, :T].float()
    if temperature != 1.0:
        logits_BTV = logits_BTV / temperature
    if suppress_V is not None:
        # A large finite value rather than -inf keeps p*log(p) = 0 (not NaN) in entropies.
        logits_BTV = logits_BTV.masked_fill(suppress_V.to(logits_BTV.device), -1e9)
    return logits_BTV


def score_responses(model, prompts: PromptBatch, response_ids_BT: torch.Tensor, response_mask_BT: torch.Tensor,
                    suppress_V: torch.Tensor | None = None, temperature: float = 1.0, with_entropy: bool = True,
                    keep_logits: bool = False) -> TokenScores:
    """Log-probs (+ entropies, + logits) of the response tokens under `prompts`. Differentiable."""
    logits_BTV = response_logits(model, prompts, response_ids_BT, response_mask_BT, suppress_V, temperature)
    mask_BT = response_mask_BT.to(logits_BTV.device).bool()
    logp_BT = gather_token_logp(logits_BTV, response_ids_BT.to(logits_BTV.device)).masked_fill(~mask_BT, 0.0)
    entropy_BT = token_entropy(logits_BTV).masked_fill(~mask_BT, 0.0) if with_entropy else None
    return TokenScores(logp_BT=logp_BT, entropy_BT=entropy_BT, logits_BTV=logits_BTV if keep_logits else None)


def suppress_mask(suppress_ids: list[int], vocab_size: int) -> torch.Tensor:
    """Boolean (V,) mask of the suppressed ids."""
    mask_V = torch.zeros(vocab_size, dtype=torch.bool)
    mask_V[torch.as_tensor(suppress_ids, dtype=torch.long)] = True
    return mask_V
