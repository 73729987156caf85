"""Chunked scoring (rlsd.scoring): log-probs, entropies, divergences and their gradients equal the full-logits path,
and no tensor of B×T×V elements is ever created."""

import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from rlsd import algorithm as alg
from rlsd.inputs import encode_prompts
from rlsd.prompts import student_messages, teacher_messages
from rlsd.scoring import reference_scores, response_logits, score_responses, suppress_mask, suppressed_token_ids
from rlsd.teacher import TeacherWeights
from rlsd.tiny import build_processor, build_tiny_model

QUESTIONS = ["How many red squares are there?", "What is the sum of the red and blue counts in the picture?"]


@pytest.fixture(scope="module")
def setup():
    processor = build_processor()
    tok = processor.tokenizer
    model = build_tiny_model(tok, seed=0, deepstack=(0, 1))
    model.train()
    V = model.config.text_config.vocab_size
    suppress_V = suppress_mask(suppressed_token_ids(tok, V), V)
    images = [Image.new("RGB", (96, 96), (220, 30, 30)), Image.new("RGB", (64, 96), (40, 70, 220))]
    return processor, model, suppress_V, images


def _batch(setup, G=2, T=9, seed=0, teacher=False):
    processor, model, suppress_V, images = setup
    msgs = [teacher_messages(q, "7", 1) if teacher else student_messages(q) for q in QUESTIONS]
    prompts = encode_prompts(processor, msgs, [[im] for im in images]).repeat(G)
    g = torch.Generator().manual_seed(seed)
    allowed_A = (~suppress_V).nonzero().squeeze(-1)
    ids_BT = allowed_A[torch.randint(len(allowed_A), (prompts.batch_size, T), generator=g)]
    mask_BT = torch.ones_like(ids_BT)
    mask_BT[1, 4:] = 0
    mask_BT[2, 1:] = 0
    ids_BT = torch.where(mask_BT.bool(), ids_BT, processor.tokenizer.pad_token_id)
    return prompts, ids_BT, mask_BT


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_close_grads(a, b, rtol=1e-4, atol=1e-5):
    assert a.keys() == b.keys() and a
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=rtol, atol=atol, msg=n)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("train_entropy", [True, False])  # False: the trainer's case, entropy logged, not trained
def test_chunked_logp_entropy_and_gradients_equal_the_full_logits_path(setup, temperature, train_entropy):
    _, model, suppress_V, _ = setup
    prompts, ids_BT, mask_BT = _batch(setup)
    model.zero_grad()
    logp_ref, ent_ref, _ = reference_scores(model, prompts, ids_BT, mask_BT, suppress_V, temperature)
    (logp_ref.sum() + (0.3 * ent_ref.sum() if train_entropy else 0)).backward()
    g_ref = _grads(model)
    model.zero_grad()
    # 3 positions per chunk: many chunks, one of them partial.
    s = score_responses(model, prompts, ids_BT, mask_BT, suppress_V, temperature, chunk_size=3, share_prompts=False)
    (s.logp_BT.sum() + (0.3 * s.entropy_BT.sum() if train_entropy else 0)).backward()
    torch.testing.assert_close(s.logp_BT, logp_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(s.entropy_BT, ent_ref, rtol=0, atol=1e-5)
    assert (s.logp_BT[~mask_BT.bool()] == 0).all() and (s.entropy_BT[~mask_BT.bool()] == 0).all()
    _assert_close_grads(_grads(model), g_ref)
    assert "lm_head.weight" in g_ref  # the head's own gradient is compared too
    model.zero_grad()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_no_grad_logp_without_entropy_equals_the_reference(setup, temperature):
    """The teacher pass's path (no gradients, no entropy) gives the reference log-probs and no entropy."""
    _, model, suppress_V, _ = setup
    prompts, ids_BT, mask_BT = _batch(setup)
    with torch.no_grad():
        logp_ref, _, _ = reference_scores(model, prompts, ids_BT, mask_BT, suppress_V, temperature)
        s = score_responses(model, prompts, ids_BT, mask_BT, suppress_V, temperature, with_entropy=False,
                            chunk_size=3, share_prompts=False)
    assert s.entropy_BT is None
    torch.testing.assert_close(s.logp_BT, logp_ref, rtol=0, atol=1e-5)
    assert (s.logp_BT[~mask_BT.bool()] == 0).all()


def test_chunk_size_does_not_change_scores(setup):
    _, model, suppress_V, _ = setup
    prompts, ids_BT, mask_BT = _batch(setup)
    with torch.no_grad():
        one = score_responses(model, prompts, ids_BT, mask_BT, suppress_V, chunk_size=1)
        all_ = score_responses(model, prompts, ids_BT, mask_BT, suppress_V, chunk_size=10_000)
    torch.testing.assert_close(one.logp_BT, all_.logp_BT, rtol=0, atol=1e-5)
    torch.testing.assert_close(one.entropy_BT, all_.entropy_BT, rtol=0, atol=1e-5)


class _LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor with a vocabulary-sized axis that any aten op produces
    (forward and backward)."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size, self.largest = vocab_size, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and self.vocab_size in t.shape:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("method", ["score", "divergence"])
def test_no_tensor_of_batch_by_positions_by_vocab_is_created(setup, method):
    """The old path built float32 logits_BTV (and log-softmax copies): fails there, passes with chunking."""
    _, model, suppress_V, _ = setup
    prompts, ids_BT, mask_BT = _batch(setup, G=2, T=64)
    B, T = ids_BT.shape
    V = suppress_V.numel()
    chunk = 8
    with torch.no_grad():
        teacher = score_responses(model, prompts, ids_BT, mask_BT, suppress_V, keep_hidden=True, chunk_size=chunk)
    model.zero_grad()
    with _LargestOutput(V) as spy:
        s = score_responses(model, prompts, ids_BT, mask_BT, suppress_V, keep_hidden=method == "divergence",
                            chunk_size=chunk)
        loss = s.logp_BT.sum()
        if method == "divergence":
            loss = loss + s.divergence(teacher, mask_BT, lambda a, b, m: alg.generalized_jsd(a, b, m, 0.5),
                                       chunk_size=chunk)[0]
        loss.backward()
    model.zero_grad()
    # Only the head's weight and gradient (V×H) and one chunk of logits (chunk×V); B×T×V is larger than both.
    H = model.config.text_config.hidden_size
    assert B * T > H
    assert spy.largest <= max(V * chunk, V * H) < B * T * V, (spy.largest, B * T * V)


@pytest.mark.parametrize("name,fn", [
    ("jsd0", lambda s, t, m: alg.generalized_jsd(s, t, m, 0.0)),
    ("jsd05", lambda s, t, m: alg.generalized_jsd(s, t, m, 0.5)),
    ("jsd1", lambda s, t, m: alg.generalized_jsd(s, t, m, 1.0)),
    ("topk", lambda s, t, m: alg.topk_tail_divergence(s, t, m, top_k=5, alpha=0.5)),
])
def test_chunked_divergences_equal_the_full_logits_path(setup, name, fn):
    _, model, suppress_V, _ = setup
    prompts, ids_BT, mask_BT = _batch(setup)
    teacher_prompts, _, _ = _batch(setup, teacher=True)
    teacher = TeacherWeights(model, "snapshot", sync_every=1)
    with torch.no_grad():  # make the teacher's weights (lm_head included) differ from the student's
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    with teacher.active() as m:
        t_logits_BTV = response_logits(m, teacher_prompts, ids_BT, mask_BT, suppress_V)
        t_scores = score_responses(m, teacher_prompts, ids_BT, mask_BT, suppress_V, keep_hidden=True)
    # The teacher's head was taken with the teacher's weights, not the student's now active again.
    torch.testing.assert_close(t_scores.logits(), t_logits_BTV, rtol=0, atol=1e-5)

    model.zero_grad()
    loss_ref, per_ref = fn(response_logits(model, prompts, ids_BT, mask_BT, suppress_V), t_logits_BTV, mask_BT)
    loss_ref.backward()
    g_ref = _grads(model)
    model.zero_grad()
    s = score_responses(model, prompts, ids_BT, mask_BT, suppress_V, keep_hidden=True, share_prompts=False)
    loss, per = s.divergence(t_scores, mask_BT, fn, chunk_size=4)
    loss.backward()
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(per, per_ref, rtol=0, atol=1e-5)
    _assert_close_grads(_grads(model), g_ref)
    model.zero_grad()


def test_divergence_needs_kept_hidden_states(setup):
    _, model, suppress_V, _ = setup
    prompts, ids_BT, mask_BT = _batch(setup)
    with torch.no_grad():
        s = score_responses(model, prompts, ids_BT, mask_BT, suppress_V)
    with pytest.raises(ValueError, match="keep_hidden"):
        s.divergence(s, mask_BT, lambda a, b, m: alg.generalized_jsd(a, b, m))
