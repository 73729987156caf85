"""Shared prompts (rlsd.scoring.response_hidden): each distinct prompt runs once and its continuations are scored
against its KV cache. Log-probs and gradients must equal the unshared path (the reference): prompts of different
lengths (left padding), Qwen3-VL multimodal rotary positions, deepstack features, LoRA, groups split across
micro-batches, and a model whose cached rope deltas are stale."""

import pytest
import torch
from PIL import Image

from rlsd.inputs import encode_prompts
from rlsd.model import ModelSpec, load_policy
from rlsd.prompts import student_messages, teacher_messages
from rlsd.scoring import score_responses, suppress_mask, suppressed_token_ids
from rlsd.teacher import TeacherWeights
from rlsd.tiny import build_processor, build_tiny_model

QUESTIONS = ["How many red squares are there?", "What is the sum of the red and blue counts in the picture?",
             "Which colour is most common?"]


@pytest.fixture(scope="module")
def setup():
    processor = build_processor()
    model = build_tiny_model(processor.tokenizer, seed=0, deepstack=(0, 1))  # deepstack into two layers
    model.train()
    V = model.config.text_config.vocab_size
    suppress_V = suppress_mask(suppressed_token_ids(processor.tokenizer, V), V)
    # Three sizes: 36, 24 and 16 visual tokens, so the prompts have different lengths and positions.
    images = [Image.new("RGB", (96, 96), (220, 30, 30)), Image.new("RGB", (64, 96), (40, 70, 220)),
              Image.new("RGB", (64, 64), (30, 200, 30))]
    return processor, model, suppress_V, images


def _responses(processor, suppress_V, B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    allowed_A = (~suppress_V).nonzero().squeeze(-1)
    ids_BT = allowed_A[torch.randint(len(allowed_A), (B, T), generator=g)]
    lengths_B = torch.randint(1, T + 1, (B,), generator=g)
    lengths_B[0] = T
    mask_BT = (torch.arange(T)[None] < lengths_B[:, None]).long()
    return torch.where(mask_BT.bool(), ids_BT, processor.tokenizer.pad_token_id), mask_BT


def _prompts(setup, G, with_images=True, teacher=False):
    processor, _, _, images = setup
    n_img = 1 if with_images else 0
    msgs = [teacher_messages(q, "12", n_img) if teacher else student_messages(q, n_img) for q in QUESTIONS]
    return encode_prompts(processor, msgs, [[im] for im in images] if with_images else None).repeat(G)


def _scores_and_grads(model, prompts, ids_BT, mask_BT, suppress_V, share):
    model.zero_grad()
    s = score_responses(model, prompts, ids_BT, mask_BT, suppress_V, share_prompts=share)
    (s.logp_BT.sum() + 0.5 * s.entropy_BT.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return s.logp_BT.detach(), s.entropy_BT.detach(), grads


def _assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-5)
    assert a[2].keys() == b[2].keys() and a[2]
    for n in a[2]:
        torch.testing.assert_close(a[2][n], b[2][n], rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("with_images", [True, False])
def test_shared_prompt_equals_unshared_scores_and_gradients(setup, with_images):
    processor, model, suppress_V, _ = setup
    prompts = _prompts(setup, G=3, with_images=with_images)
    assert len(set(prompts.attention_mask_BP.sum(1).tolist())) == 3  # three prompt lengths: left padding
    ids_BT, mask_BT = _responses(processor, suppress_V, prompts.batch_size, T=10)
    ref = _scores_and_grads(model, prompts, ids_BT, mask_BT, suppress_V, share=False)
    shared = _scores_and_grads(model, prompts, ids_BT, mask_BT, suppress_V, share=True)
    _assert_same(shared, ref)
    # The vision tower and the prompt's K/V projections receive gradient (it flows through the shared prefix).
    if with_images:
        assert any(n.startswith("model.visual") for n in shared[2])


def test_groups_split_across_micro_batches_and_scattered_rows(setup):
    processor, model, suppress_V, _ = setup
    full = _prompts(setup, G=4)
    for rows in ([0, 1, 2, 3, 4, 5], [3, 4, 9, 0, 10, 5, 11]):  # a group cut in two; duplicates not adjacent
        prompts = full.select(rows)
        ids_BT, mask_BT = _responses(processor, suppress_V, len(rows), T=6, seed=len(rows))
        _assert_same(_scores_and_grads(model, prompts, ids_BT, mask_BT, suppress_V, share=True),
                     _scores_and_grads(model, prompts, ids_BT, mask_BT, suppress_V, share=False))


def test_single_token_responses(setup):
    processor, model, suppress_V, _ = setup
    prompts = _prompts(setup, G=2)
    ids_BT, mask_BT = _responses(processor, suppress_V, prompts.batch_size, T=1)
    _assert_same(_scores_and_grads(model, prompts, ids_BT, mask_BT, suppress_V, share=True),
                 _scores_and_grads(model, prompts, ids_BT, mask_BT, suppress_V, share=False))


def test_stale_rope_deltas_do_not_leak_into_the_continuation(setup):
    """A forward on another batch leaves `rope_deltas` cached in the model; positions must not come from them."""
    processor, model, suppress_V, _ = setup
    other = _prompts(setup, G=1, teacher=True)
    with torch.no_grad():
        model(**other.model_inputs(), use_cache=True)
    assert model.model.rope_deltas is not None
    for with_images in (True, False):
        prompts = _prompts(setup, G=2, with_images=with_images)
        ids_BT, mask_BT = _responses(processor, suppress_V, prompts.batch_size, T=5)
        with torch.no_grad():
            ref = score_responses(model, prompts, ids_BT, mask_BT, suppress_V, share_prompts=False)
            model(**other.model_inputs(), use_cache=True)
            shared = score_responses(model, prompts, ids_BT, mask_BT, suppress_V, share_prompts=True)
        torch.testing.assert_close(shared.logp_BT, ref.logp_BT, rtol=0, atol=1e-5)


def test_each_distinct_image_is_encoded_once(setup):
    """The unshared path encodes every row's image (G per prompt); shared encodes each distinct prompt's once."""
    processor, model, suppress_V, _ = setup
    prompts = _prompts(setup, G=4)
    ids_BT, mask_BT = _responses(processor, suppress_V, prompts.batch_size, T=4)
    seen = []  # images per call of the vision tower
    pre = model.model.visual.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["grid_thw"].shape[0]), with_kwargs=True)
    try:
        with torch.no_grad():
            score_responses(model, prompts, ids_BT, mask_BT, suppress_V, share_prompts=True)
            score_responses(model, prompts, ids_BT, mask_BT, suppress_V, share_prompts=False)
    finally:
        pre.remove()
    assert seen == [3, 12]


def test_lora_gradient_checkpointing_and_teacher_weights(setup, tiny_dir):
    """LoRA through peft with gradient checkpointing on (the GPU profiles): the no-grad teacher pass and the grad
    forward both share the prompt -- each image encoded once, every decoder layer checkpointed -- and equal
    the unshared path."""
    processor, _, suppress_V, _ = setup
    spec = ModelSpec(path=str(tiny_dir), lora_rank=4, gradient_checkpointing=True)
    model, proc = load_policy(spec)
    V = model.config.get_text_config().vocab_size
    sup_V = suppress_mask(suppressed_token_ids(proc.tokenizer, V), V)
    teacher = TeacherWeights(model, "snapshot", sync_every=1)
    with torch.no_grad():
        for p in teacher.params:
            p.add_(0.05 * torch.randn_like(p))  # student != teacher (LoRA B starts at zero)
    prompts = _prompts(setup, G=3, teacher=True)
    ids_BT, mask_BT = _responses(processor, sup_V, prompts.batch_size, T=6)
    with teacher.active() as m:
        ref = score_responses(m, prompts, ids_BT, mask_BT, sup_V, share_prompts=False)
        shared = score_responses(m, prompts, ids_BT, mask_BT, sup_V, share_prompts=True)
    torch.testing.assert_close(shared.logp_BT, ref.logp_BT, rtol=0, atol=1e-5)
    layers = [mod for mod in model.modules() if getattr(mod, "gradient_checkpointing", False)]
    assert layers  # still on after the call
    base = model.get_base_model()
    images_seen, checkpointed = [], []
    hooks = [base.model.visual.register_forward_pre_hook(
        lambda m, args, kwargs: images_seen.append(kwargs["grid_thw"].shape[0]), with_kwargs=True)]
    decoder = base.model.language_model.layers
    real_ckpt = decoder[0]._gradient_checkpointing_func

    def counting_checkpoint(fn, *args, **kwargs):
        checkpointed.append(1)
        return real_ckpt(fn, *args, **kwargs)

    for layer in decoder:
        layer._gradient_checkpointing_func = counting_checkpoint
    try:
        shared = _scores_and_grads(model, prompts, ids_BT, mask_BT, sup_V, share=True)
    finally:
        for layer in decoder:
            layer._gradient_checkpointing_func = real_ckpt
        for h in hooks:
            h.remove()
    assert images_seen == [3]  # three distinct prompts of nine rows: shared
    assert len(checkpointed) == 2 * len(decoder)  # prompt and continuation forwards: every layer checkpointed
    assert not any("_can_checkpoint_with_cache" in vars(mod) for mod in model.modules())  # restored
    _assert_same(shared, _scores_and_grads(model, prompts, ids_BT, mask_BT, sup_V, share=False))


def test_lora_shared_gradients_without_checkpointing(setup, tiny_dir):
    processor, _, _, _ = setup
    model, proc = load_policy(ModelSpec(path=str(tiny_dir), lora_rank=4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    V = model.config.get_text_config().vocab_size
    sup_V = suppress_mask(suppressed_token_ids(proc.tokenizer, V), V)
    prompts = _prompts(setup, G=3)
    ids_BT, mask_BT = _responses(processor, sup_V, prompts.batch_size, T=6)
    shared = _scores_and_grads(model, prompts, ids_BT, mask_BT, sup_V, share=True)
    _assert_same(shared, _scores_and_grads(model, prompts, ids_BT, mask_BT, sup_V, share=False))
    assert all("lora" in n for n in shared[2])


def test_prompt_batch_tracks_sources():
    processor = build_processor()
    batch = encode_prompts(processor, [student_messages(q, 0) for q in QUESTIONS[:2]], None)
    assert batch.source_B == [0, 1]
    g = batch.repeat(3)
    assert g.source_B == [0, 0, 0, 1, 1, 1]
    assert g.select([5, 0, 3]).source_B == [1, 0, 1]
    assert g.to("cpu").source_B == g.source_B
    untracked = g.select([0, 1])
    untracked.source_B = None
    assert untracked.sources() == [0, 1]  # unknown: every row its own prompt
