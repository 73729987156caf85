"""Rollouts (rlsd.rollout): the shared prefill and the static KV cache change speed only. Every decoding step's
logits equal the unshared, dynamic-cache `generate` (the reference): prompts of different lengths (left padding),
Qwen3-VL multimodal rotary positions and deepstack features, text-only prompts, and groups split across calls."""

import pytest
import torch
from PIL import Image

from rlsd.inputs import encode_prompts
from rlsd.prompts import student_messages
from rlsd.rollout import NEUTRAL_GENERATION, SamplingParams, hf_generate, shared_prefill
from rlsd.scoring import hf_model, suppressed_token_ids
from rlsd.tiny import build_processor, build_tiny_model

QUESTIONS = ["How many red squares are there?", "What is the sum of the red and blue counts in the picture?",
             "Which colour is most common?"]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def setup():
    processor = build_processor()
    model = build_tiny_model(processor.tokenizer, seed=0, deepstack=(0, 1))
    model.eval()
    suppress_ids = suppressed_token_ids(processor.tokenizer, model.config.text_config.vocab_size)
    # 36, 24 and 16 visual tokens: three prompt lengths, so rows are left-padded by different amounts.
    images = [Image.new("RGB", (96, 96), (220, 30, 30)), Image.new("RGB", (64, 96), (40, 70, 220)),
              Image.new("RGB", (64, 64), (30, 200, 30))]
    return processor, model, suppress_ids, images


def _prompts(setup, G, with_images=True):
    processor, _, _, images = setup
    n_img = 1 if with_images else 0
    return encode_prompts(processor, [student_messages(q, n_img) for q in QUESTIONS],
                          [[im] for im in images] if with_images else None).repeat(G)


def _step_logits(setup, inputs, cache="dynamic"):
    """Greedy `generate` from `inputs`; the raw logits of every step, stacked (B, steps, V), and the tokens."""
    processor, model, suppress_ids, _ = setup
    tok = processor.tokenizer
    extra = {"cache_implementation": "static"} if cache == "static" and "past_key_values" not in inputs else {}
    with torch.no_grad():
        out = model.generate(**inputs, **extra, max_new_tokens=NEW_TOKENS, do_sample=False, temperature=None,
                             top_p=None, top_k=None, suppress_tokens=suppress_ids, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, output_logits=True, return_dict_in_generate=True,
                             disable_compile=True, **NEUTRAL_GENERATION)
    P = inputs["input_ids"].shape[1]
    return torch.stack(out.logits, dim=1), out.sequences[:, P:]


@pytest.mark.parametrize("with_images", [True, False])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_shared_prefill_gives_the_unshared_logits_at_every_step(setup, with_images, cache):
    prompts = _prompts(setup, G=4, with_images=with_images)
    assert len(set(prompts.attention_mask_BP.sum(1).tolist())) == (3 if with_images else 3)  # left padding
    ref_logits, ref_tokens = _step_logits(setup, prompts.model_inputs())
    shared_inputs = shared_prefill(setup[1], prompts, cache, NEW_TOKENS)
    assert shared_inputs is not None and "pixel_values" not in shared_inputs  # images were encoded in the prefill
    logits, tokens = _step_logits(setup, shared_inputs, cache)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    assert torch.equal(tokens, ref_tokens)


def test_the_rope_deltas_matter_here(setup):
    """Negative control: the logits test above can fail. Decoding with the deltas of a text-only prompt (zeros)
    moves every row's positions, and the logits change well beyond the tolerance."""
    prompts = _prompts(setup, G=2)
    ref_logits, _ = _step_logits(setup, prompts.model_inputs())
    inputs = shared_prefill(setup[1], prompts)
    base = hf_model(setup[1])
    base.model.rope_deltas = torch.zeros_like(base.model.rope_deltas)
    logits, _ = _step_logits(setup, inputs)
    assert (logits - ref_logits).abs().max() > 1e-2


def test_nothing_to_share_returns_none(setup):
    assert shared_prefill(setup[1], _prompts(setup, G=1)) is None  # every row its own prompt


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("micro", [None, 5])
def test_sampled_rollouts_are_identical_with_the_same_seed(setup, cache, micro):
    """Sampling (T=1, top-k, top-p) from equal logits with the same generator state draws the same tokens, also when
    a micro-batch boundary (5 rows) splits a group."""
    processor, model, suppress_ids, _ = setup
    tok = processor.tokenizer
    prompts = _prompts(setup, G=4)
    sampling = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=0.9, top_k=50)
    outs = []
    for share, kv in ((False, "dynamic"), (True, cache)):
        torch.manual_seed(123)
        outs.append(hf_generate(model, prompts, sampling, suppress_ids, tok.eos_token_id, tok.pad_token_id,
                                micro_batch_size=micro, share_prompts=share, cache=kv))
    assert torch.equal(outs[0].response_ids_BT, outs[1].response_ids_BT)
    assert torch.equal(outs[0].response_mask_BT, outs[1].response_mask_BT)
    # Not degenerate: a group's samples differ from each other.
    assert len({tuple(r.tolist()) for r in outs[1].response_ids_BT[:4]}) > 1


def test_bad_cache_settings_are_named(setup):
    processor, model, suppress_ids, _ = setup
    tok = processor.tokenizer
    prompts = _prompts(setup, G=1)
    with pytest.raises(ValueError, match="cache must be one of"):
        hf_generate(model, prompts, SamplingParams(max_new_tokens=2), suppress_ids, tok.eos_token_id,
                    tok.pad_token_id, cache="paged")
    with pytest.raises(ValueError, match="compile=True needs cache='static'"):
        hf_generate(model, prompts, SamplingParams(max_new_tokens=2), suppress_ids, tok.eos_token_id,
                    tok.pad_token_id, compile=True)
