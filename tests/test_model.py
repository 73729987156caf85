"""The model layer on the tiny offline Qwen3-VL: tokenizer, processor, generation, scoring, LoRA, 4-bit, save/load."""

import pytest
import torch

from rlsd.inputs import encode_prompts
from rlsd.model import ModelSpec, load_policy
from rlsd.prompts import student_messages, teacher_messages
from rlsd.rollout import SamplingParams, hf_generate, response_mask
from rlsd.scoring import score_responses, suppress_mask, suppressed_token_ids
from rlsd.teacher import TeacherWeights
from rlsd.tiny import build_processor, build_tiny_model, build_tokenizer

QUESTIONS = ["How many red squares are there?", "What is the sum of the red and blue counts?"]


def _setup(model, processor):
    tok = processor.tokenizer
    V = model.config.text_config.vocab_size
    ids = suppressed_token_ids(tok, V)
    return tok, ids, suppress_mask(ids, V)


def _generate(model, processor, prompts, n_tokens=24, **kw):
    tok, ids, _ = _setup(model, processor)
    return hf_generate(model, prompts, SamplingParams(max_new_tokens=n_tokens, **kw), ids, tok.eos_token_id,
                       tok.pad_token_id)


# ---------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_is_compact_and_round_trips():
    tok = build_tokenizer()
    text = "<thought>I see 3 red squares and 14 blue squares, so 3 plus 14 = 17</thought><answer>17</answer>"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    # Tags, words, numbers < 100 and punctuation are single tokens: 4 tags + 17 pieces.
    assert len(ids) == 21, [tok.decode([i]) for i in ids]
    odd = "Zebras 123456 é ü 漢字 \\frac{1}{2} 🙂"  # anything falls back to bytes and round-trips
    assert tok.decode(tok(odd)["input_ids"]) == odd


def test_tokenizer_is_deterministic():
    assert build_tokenizer().get_vocab() == build_tokenizer().get_vocab()


def test_processor_expands_image_tokens(images):
    processor = build_processor()
    batch = encode_prompts(processor, [student_messages(q) for q in QUESTIONS], [[im] for im in images])
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = processor.image_processor.merge_size
    n_pads = (batch.input_ids_BP == image_pad).sum(-1).tolist()
    assert batch.image_grid_thw.tolist() == [[1, 6, 6], [1, 6, 4]]
    assert n_pads == [36 // merge**2, 24 // merge**2]
    assert batch.patches_per_row == [36, 24]
    assert batch.pixel_values.shape[0] == 60
    assert (batch.mm_token_type_ids_BP == 1).sum(-1).tolist() == n_pads
    assert batch.attention_mask_BP[:, -1].all()  # left padding: every prompt ends in the last column


def test_prompt_batch_select_repeat_keeps_images_aligned(images):
    processor = build_processor()
    batch = encode_prompts(processor, [student_messages(q) for q in QUESTIONS], [[im] for im in images])
    grouped = batch.repeat(3)
    assert grouped.batch_size == 6
    assert grouped.image_grid_thw.tolist() == [[1, 6, 6]] * 3 + [[1, 6, 4]] * 3
    assert torch.equal(grouped.pixel_values[:36], batch.pixel_values[:36])
    assert torch.equal(grouped.pixel_values[-24:], batch.pixel_values[36:])
    second = batch.select([1])
    assert second.input_ids_BP.shape[1] < batch.input_ids_BP.shape[1]  # shared left padding trimmed
    assert torch.equal(second.pixel_values, batch.pixel_values[36:])


def test_encode_prompts_rejects_image_count_mismatch(images):
    processor = build_processor()
    with pytest.raises(ValueError, match="row 0 has 1 image placeholders but 2 images"):
        encode_prompts(processor, [student_messages(QUESTIONS[0])], [images])


# --------------------------------------------------------------------------------------- generate / score


def test_generation_never_emits_suppressed_tokens(images):
    processor = build_processor()
    model = build_tiny_model(processor.tokenizer, seed=1)
    tok, ids, _ = _setup(model, processor)
    prompts = encode_prompts(processor, [student_messages(q) for q in QUESTIONS], [[im] for im in images])
    rollout = _generate(model, processor, prompts.repeat(8), n_tokens=64)
    emitted = rollout.response_ids_BT[rollout.response_mask_BT.bool()]
    assert emitted.numel() > 500  # a random model rarely stops early: there is plenty to check
    assert not torch.isin(emitted, torch.tensor([i for i in ids])).any()
    # A random tiny model gives special tokens real mass, so suppression is doing work here.
    assert len(ids) >= 5


def test_chunked_generation_equals_whole_batch_generation(images):
    """`micro_batch_size` (the trainer's rollout_batch_size) changes speed only: greedy outputs are identical."""
    processor = build_processor()
    model = build_tiny_model(processor.tokenizer, seed=1)
    tok, ids, _ = _setup(model, processor)
    prompts = encode_prompts(processor, [student_messages(q) for q in QUESTIONS], [[im] for im in images]).repeat(3)
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    whole = hf_generate(model, prompts, greedy, ids, tok.eos_token_id, tok.pad_token_id)
    chunked = hf_generate(model, prompts, greedy, ids, tok.eos_token_id, tok.pad_token_id, micro_batch_size=4)
    assert whole.response_ids_BT.shape[0] == 6
    assert torch.equal(whole.response_ids_BT, chunked.response_ids_BT)
    assert torch.equal(whole.response_mask_BT, chunked.response_mask_BT)


def test_generate_then_score_reproduces_sampling_logprobs(images):
    processor = build_processor()
    model = build_tiny_model(processor.tokenizer, seed=0)
    tok, ids, sup_V = _setup(model, processor)
    prompts = encode_prompts(processor, [student_messages(q) for q in QUESTIONS], [[im] for im in images]).repeat(3)
    out = model.generate(**prompts.model_inputs(), do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                         max_new_tokens=20, suppress_tokens=ids, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, output_scores=True, return_dict_in_generate=True)
    response_BT = out.sequences[:, prompts.input_ids_BP.shape[1]:]
    mask_BT, _ = response_mask(response_BT, tok.eos_token_id)
    sampled_logp_BT = torch.log_softmax(torch.stack(out.scores, 1).float(), -1).gather(
        -1, response_BT.unsqueeze(-1)).squeeze(-1)
    model.eval()
    with torch.no_grad():
        scores = score_responses(model, prompts, response_BT.masked_fill(mask_BT == 0, tok.pad_token_id), mask_BT,
                                 sup_V)
    valid = mask_BT.bool()
    assert valid.sum() > 40
    torch.testing.assert_close(scores.logp_BT[valid], sampled_logp_BT[valid], atol=2e-5, rtol=0)
    assert (scores.logp_BT[~valid] == 0).all() and (scores.entropy_BT[~valid] == 0).all()
    assert (scores.entropy_BT[valid] > 0).all()


def test_batched_scoring_matches_row_by_row(images):
    """Left padding, M-RoPE positions and image slicing do not change any row's scores."""
    processor = build_processor()
    model = build_tiny_model(processor.tokenizer, seed=0).eval()
    _, _, sup_V = _setup(model, processor)
    prompts = encode_prompts(processor, [student_messages(q) for q in QUESTIONS], [[im] for im in images])
    rollout = _generate(model, processor, prompts, n_tokens=16)
    with torch.no_grad():
        both = score_responses(model, prompts, rollout.response_ids_BT, rollout.response_mask_BT, sup_V)
        for row in range(2):
            one = score_responses(model, prompts.select([row]), rollout.response_ids_BT[row:row + 1],
                                  rollout.response_mask_BT[row:row + 1], sup_V)
            torch.testing.assert_close(one.logp_BT[0], both.logp_BT[row], atol=1e-5, rtol=0)


def test_teacher_prompt_changes_scores_and_sees_the_same_images(images):
    processor = build_processor()
    model = build_tiny_model(processor.tokenizer, seed=0).eval()
    _, _, sup_V = _setup(model, processor)
    student = encode_prompts(processor, [student_messages(q) for q in QUESTIONS], [[im] for im in images])
    teacher = encode_prompts(processor, [teacher_messages(q, "7") for q in QUESTIONS], [[im] for im in images])
    assert torch.equal(student.pixel_values, teacher.pixel_values)
    rollout = _generate(model, processor, student, n_tokens=16)
    with torch.no_grad():
        s = score_responses(model, student, rollout.response_ids_BT, rollout.response_mask_BT, sup_V)
        t = score_responses(model, teacher, rollout.response_ids_BT, rollout.response_mask_BT, sup_V)
        t_again = score_responses(model, teacher, rollout.response_ids_BT, rollout.response_mask_BT, sup_V)
    valid = rollout.response_mask_BT.bool()
    assert (t.logp_BT - s.logp_BT)[valid].abs().mean() > 1e-3
    torch.testing.assert_close(t.logp_BT, t_again.logp_BT)  # deterministic forward


def test_teacher_messages_require_a_reference():
    with pytest.raises(ValueError, match="reference answer is empty"):
        teacher_messages("q", "  ")


def test_response_mask_and_truncation():
    ids = torch.tensor([[5, 6, 9, 0, 0], [5, 9, 9, 0, 0], [5, 6, 7, 8, 4]])
    mask, truncated = response_mask(ids, eos_id=9)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]


# ------------------------------------------------------------------------------------ LoRA, 4-bit, save/load


def _lora_grads_after_generate(tiny_dir, images, load_in_4bit):
    model, processor = load_policy(ModelSpec(path=str(tiny_dir), lora_rank=8, load_in_4bit=load_in_4bit))
    _, _, sup_V = _setup(model, processor)
    prompts = encode_prompts(processor, [student_messages(QUESTIONS[0])], [images[:1]]).repeat(4)
    rollout = _generate(model, processor, prompts, n_tokens=12)  # a no-grad forward: the bnb trap trigger
    scores = score_responses(model, prompts, rollout.response_ids_BT, rollout.response_mask_BT, sup_V)
    (-scores.logp_BT.sum()).backward()
    # At init LoRA B = 0, so only B receives gradient; every B of every adapted projection must.
    return model, {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}


@pytest.mark.parametrize("load_in_4bit", [False, True], ids=["fp32", "nf4"])
def test_lora_gets_gradients_after_generate(tiny_dir, images, load_in_4bit):
    model, grads = _lora_grads_after_generate(tiny_dir, images, load_in_4bit)
    n_layers = model.config.text_config.num_hidden_layers
    assert len(grads) == 7 * n_layers  # q, k, v, o, gate, up, down in every language-model layer
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert not any("visual" in n for n, p in model.named_parameters() if p.requires_grad)


def test_nf4_trap_is_real_without_the_fix(tiny_dir, images, monkeypatch):
    """Guards the guard: with bitsandbytes' CPU bf16 repacking left on, some LoRA grads vanish."""
    from bitsandbytes.nn.modules import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no avx512_bf16: the trap does not exist here")
    monkeypatch.setattr("rlsd.model.disable_cpu_bf16_repacking", lambda model: 0)
    _, grads = _lora_grads_after_generate(tiny_dir, images, load_in_4bit=True)
    assert any(g is None or g.abs().sum() == 0 for g in grads.values())


def test_nf4_quantises_language_model_only(tiny_dir):
    from bitsandbytes.nn import Linear4bit

    model, _ = load_policy(ModelSpec(path=str(tiny_dir), lora_rank=4, load_in_4bit=True))
    quantised = [n for n, m in model.named_modules() if isinstance(m, Linear4bit)]
    assert quantised and all("language_model" in n for n in quantised)


def test_load_policy_rejects_4bit_without_lora(tiny_dir):
    with pytest.raises(ValueError, match="lora_rank"):
        load_policy(ModelSpec(path=str(tiny_dir), load_in_4bit=True))


def test_save_load_round_trip(tiny_dir, images, tmp_path):
    processor = build_processor()
    built = build_tiny_model(processor.tokenizer, seed=0).eval()
    loaded, loaded_processor = load_policy(ModelSpec(path=str(tiny_dir)))
    loaded.eval()
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    prompts = encode_prompts(loaded_processor, [student_messages(q) for q in QUESTIONS], [[im] for im in images])
    reference = encode_prompts(processor, [student_messages(q) for q in QUESTIONS], [[im] for im in images])
    assert torch.equal(prompts.input_ids_BP, reference.input_ids_BP)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**prompts.model_inputs()).logits, built(**prompts.model_inputs()).logits)

    # A trained LoRA adapter survives save_pretrained / from_pretrained.
    from peft import PeftModel

    model, _ = load_policy(ModelSpec(path=str(tiny_dir), lora_rank=4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
        expected = model(**prompts.model_inputs()).logits
    model.save_pretrained(tmp_path / "adapter")
    base, _ = load_policy(ModelSpec(path=str(tiny_dir)))
    restored = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(**prompts.model_inputs()).logits, expected)


# -------------------------------------------------------------------------------------------- teachers


def _logits(model, prompts):
    with torch.no_grad():
        return model(**prompts.model_inputs()).logits


@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora"])
def test_teacher_weights_modes(tiny_dir, images, lora):
    model, processor = load_policy(ModelSpec(path=str(tiny_dir), lora_rank=lora))
    model.eval()
    prompts = encode_prompts(processor, [student_messages(QUESTIONS[0])], [images[:1]])
    before = _logits(model, prompts)
    teachers = {m: TeacherWeights(model, m, sync_every=2, ema_rate=0.5)
                for m in ("current", "initial", "snapshot", "ema")}
    params = [p for p in model.parameters() if p.requires_grad]
    initial_params = [p.detach().clone() for p in params]
    with torch.no_grad():  # one "optimizer step": perturb the trainable weights
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    after = _logits(model, prompts)
    assert (after - before).abs().max() > 1e-3
    for t in teachers.values():
        t.after_optimizer_step(1)
    with teachers["initial"].active():
        torch.testing.assert_close(_logits(model, prompts), before)
    with teachers["snapshot"].active():  # step 1: not yet re-synced
        torch.testing.assert_close(_logits(model, prompts), before)
    with teachers["current"].active():
        torch.testing.assert_close(_logits(model, prompts), after)
    torch.testing.assert_close(_logits(model, prompts), after)  # swapped back
    teachers["snapshot"].after_optimizer_step(2)
    with teachers["snapshot"].active():
        torch.testing.assert_close(_logits(model, prompts), after)
    # EMA with rate 0.5 after one step: halfway between the initial and the current weights.
    for e, p, p0 in zip(teachers["ema"].copies, params, initial_params):
        torch.testing.assert_close(e, 0.5 * (p0 + p.detach()))
    assert all(p.grad is None for p in params)


def test_teacher_state_round_trip(tiny_dir):
    model, _ = load_policy(ModelSpec(path=str(tiny_dir), lora_rank=4))
    t = TeacherWeights(model, "snapshot", sync_every=5)
    state = t.state_dict()
    with torch.no_grad():
        for p in t.params:
            p.add_(1.0)
    t.sync()
    t.load_state_dict(state)
    assert all(torch.equal(c, s) for c, s in zip(t.copies, state["copies"]))
    with pytest.raises(ValueError, match="mode"):
        TeacherWeights(model, "ema").load_state_dict(state)


def test_lora_projections_are_configurable(tiny_dir):
    model, _ = load_policy(ModelSpec(path=str(tiny_dir), lora_rank=4, lora_projections="q_proj, v_proj"))
    adapted = {n.split(".")[-4] for n, p in model.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="lora_projections"):
        load_policy(ModelSpec(path=str(tiny_dir), lora_rank=4, lora_projections=" , "))


# ------------------------------------------------------------------- one configuration for HF and vLLM


def _is_layer_skipped_by_vllm_bnb(prefix: str, skip: list[str]) -> bool:
    """vllm_bnb_plugin 0.0.3 (quantization/utils.py::is_layer_skipped_bnb): a skip entry matches a dotted
    component of vLLM's module name, or one of its dotted prefixes."""
    parts = prefix.split(".")
    return any(s in parts for s in skip) or bool(set(skip) & {".".join(parts[:i + 1]) for i in range(len(parts))})


def _vllm_name(hf_name: str) -> str:
    """Qwen3-VL's hf_to_vllm_mapper in vLLM (model.visual. -> visual., model.language_model. -> language_model.model.)."""
    for old, new in (("model.visual.", "visual."), ("model.language_model.", "language_model.model."),
                     ("lm_head", "language_model.lm_head")):
        if hf_name.startswith(old):
            return new + hf_name[len(old):]
    return hf_name


def test_both_engines_quantize_the_same_modules(tiny_dir):
    """The skip list that reaches vLLM keeps the vision tower (and head) unquantized, as in the HF policy."""
    from bitsandbytes.nn import Linear4bit

    from rlsd import vllm_engine as ve
    from rlsd.config import make_config

    model, _ = load_policy(ModelSpec(path=str(tiny_dir), lora_rank=4, load_in_4bit=True))
    base = model.get_base_model()
    # The base layers under peft's LoRA wrappers, by their checkpoint names.
    linears = {n.replace(".base_layer", ""): m for n, m in base.named_modules()
               if isinstance(m, torch.nn.Linear) and ".lora_" not in n}
    hf_quantized = {n for n, m in linears.items() if isinstance(m, Linear4bit)}
    cfg = make_config("smoke", ["model.lora_rank=4", "model.load_in_4bit=true", f"model.path={tiny_dir}"])
    skip = ve.engine_kwargs(cfg, env={})["hf_overrides"]["quantization_config"]["llm_int8_skip_modules"]
    # vLLM's head is a ParallelLMHead, never a bitsandbytes linear; every other linear follows the skip list.
    vllm_quantized = {n for n in linears if not n.startswith("lm_head")
                      and not _is_layer_skipped_by_vllm_bnb(_vllm_name(n), skip)}
    assert any(n.startswith("model.visual.") for n in linears)  # the vision tower has linears to get wrong
    assert hf_quantized == vllm_quantized
    assert hf_quantized and all(n.startswith("model.language_model.") for n in hf_quantized)


def test_model_extra_cannot_enable_trust_remote_code(tiny_dir):
    with pytest.raises(ValueError, match="ModelSpec.extra.*trust_remote_code"):
        load_policy(ModelSpec(path=str(tiny_dir), extra={"trust_remote_code": True}))


def test_bf16_is_converted_on_gpus_without_it(caplog):
    from rlsd.model import resolve_dtype

    with caplog.at_level("WARNING", logger="rlsd.model"):
        assert resolve_dtype("bfloat16", capability=(7, 5)) == "float16"
    assert "compute capability 7.5" in caplog.text
    assert resolve_dtype("bfloat16", capability=(8, 0)) == "bfloat16"
    assert resolve_dtype("float32", capability=(7, 0)) == "float32"
    assert resolve_dtype("bfloat16", device="cpu") == "bfloat16"
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8")


def test_hf_generate_ignores_the_checkpoints_sampling_settings(images):
    """A hub generation_config (repetition_penalty, no_repeat_ngram_size, min_new_tokens...) must not change the
    rollout distribution: the trainer re-scores samples under the plain policy."""
    processor = build_processor()
    model = build_tiny_model(processor.tokenizer, seed=1)
    tok, ids, _ = _setup(model, processor)
    prompts = encode_prompts(processor, [student_messages(q) for q in QUESTIONS], [[im] for im in images])
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    clean = hf_generate(model, prompts, greedy, ids, tok.eos_token_id, tok.pad_token_id)
    model.generation_config.update(repetition_penalty=50.0, no_repeat_ngram_size=1, min_new_tokens=16,
                                   typical_p=0.2)
    dirty = hf_generate(model, prompts, greedy, ids, tok.eos_token_id, tok.pad_token_id)
    assert torch.equal(clean.response_ids_BT, dirty.response_ids_BT)


def test_load_processor_falls_back_to_the_processor_chat_template(tiny_dir, tmp_path):
    import json
    import shutil

    from rlsd.model import load_processor

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_dir, model_dir)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    template = config.pop("chat_template", None) or build_processor().tokenizer.chat_template
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    for name in ("chat_template.jinja", "chat_template.json"):
        (model_dir / name).unlink(missing_ok=True)
    (model_dir / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    processor = load_processor(model_dir)
    assert processor.tokenizer.chat_template is None and processor.chat_template == template
    text = processor.apply_chat_template(student_messages("Q?"), add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?")


def test_tiny_model_keeps_its_pixel_range(tiny_dir, images):
    from rlsd.model import load_processor

    spec = ModelSpec()
    assert spec.min_pixels is None and spec.max_pixels is None  # None: the checkpoint's own range
    processor = load_processor(tiny_dir, spec.min_pixels, spec.max_pixels)
    size = processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (32 * 32, 128 * 128)
    batch = encode_prompts(processor, [student_messages(q) for q in QUESTIONS], [[im] for im in images])
    assert batch.image_grid_thw.tolist() == [[1, 6, 6], [1, 6, 4]]
    with pytest.raises(ValueError, match="min_pixels"):
        load_processor(tiny_dir, 4096, 1024)
