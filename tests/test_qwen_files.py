"""The prompt, processor and vLLM settings checked against Qwen3-VL-2B-Instruct's own files (tests/fixtures).

The tiny testbed tokenizer (688 ids, one image pad per 16 px) cannot show what the real vocabulary and processor do:
a 151,936-row vocabulary, 13 specials to suppress plus 267 padded rows, one image pad per 32x32 pixels.
"""

import hashlib
import json

import pytest
import torch
from PIL import Image

from rlsd import vllm_engine as ve
from rlsd.config import make_config
from rlsd.gpu_check import QWEN_FIXTURE, qwen_files_dir
from rlsd.inputs import encode_prompts
from rlsd.model import load_processor
from rlsd.prompts import FORMAT_INSTRUCTION, REFERENCE_INSTRUCTION, student_messages, teacher_messages
from rlsd.scoring import suppressed_token_ids

VOCAB = 151936  # the model's (padded) vocabulary
TEMPLATE_SHA256 = "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return qwen_files_dir(tmp_path_factory.mktemp("qwen") / "Qwen3-VL-2B-Instruct")


@pytest.fixture(scope="module")
def processor(qwen_dir):
    return load_processor(qwen_dir)


def test_fixture_is_small_and_the_template_is_the_published_one():
    size = sum(f.stat().st_size for f in QWEN_FIXTURE.iterdir())
    assert size < 3 * 2**20, size
    template = json.loads((QWEN_FIXTURE / "chat_template.json").read_text())["chat_template"]
    assert hashlib.sha256(template.encode()).hexdigest() == TEMPLATE_SHA256
    assert "chat_template" not in json.loads((QWEN_FIXTURE / "tokenizer_config.json").read_text())


def test_the_vocabulary_is_qwens(processor):
    tok = processor.tokenizer
    assert len(tok) == 151669  # 151,643 ranks + 26 added tokens
    assert tok("Hello world!")["input_ids"] == [9707, 1879, 0]
    text = "<thought>3 red + 14 blue = 17</thought><answer>17</answer> 漢字 \\frac{1}{2}"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_load_processor_finds_the_processor_level_template(qwen_dir, processor):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(qwen_dir).chat_template is None  # what the old code used
    assert hashlib.sha256(processor.chat_template.encode()).hexdigest() == TEMPLATE_SHA256


def test_load_processor_refuses_a_model_without_any_template(qwen_dir, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "config.json"):
        (tmp_path / name).write_bytes((qwen_dir / name).read_bytes())
    with pytest.raises(ValueError, match="no chat template"):
        load_processor(tmp_path)


def test_student_and_teacher_prompts_are_exact(processor):
    student = processor.apply_chat_template(student_messages("How many red squares?"), add_generation_prompt=True,
                                            tokenize=False)
    teacher = processor.apply_chat_template(teacher_messages("How many red squares?", "7"),
                                            add_generation_prompt=True, tokenize=False)
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    assert student == (f"<|im_start|>user\n{image}How many red squares?\n{FORMAT_INSTRUCTION}<|im_end|>\n"
                       "<|im_start|>assistant\n")
    assert teacher == (f"<|im_start|>user\n{image}How many red squares?\nHere is a reference solution: 7\n"
                       f"{REFERENCE_INSTRUCTION}\n{FORMAT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")
    # The Instruct template adds no system prompt and no <think> block.
    assert "system" not in student and "<think>" not in student
    bare = processor.apply_chat_template(student_messages("Q?", 0, format_instruction=False),
                                         add_generation_prompt=True, tokenize=False)
    assert bare == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"


def test_end_of_turn_pad_and_suppressed_ids(processor):
    tok = processor.tokenizer
    assert tok.eos_token_id == 151645 == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.pad_token_id == 151643 == tok.convert_tokens_to_ids("<|endoftext|>")
    suppress = suppressed_token_ids(tok, VOCAB)
    specials = list(range(151643, 151657))
    specials.remove(151645)
    assert suppress == specials + list(range(151669, VOCAB))
    assert len(suppress) == 280
    # <think>, <tool_call> etc. are ordinary added tokens in Qwen3: the model may write them; they are not masked.
    assert tok.convert_tokens_to_ids("<think>") not in suppress


def test_image_pads_and_mm_token_types_for_a_1000x700_image(processor):
    batch = encode_prompts(processor, [student_messages("How many?")], [[Image.new("RGB", (1000, 700))]])
    # Resized to multiples of 32 (patch 16 x merge 2): 992 x 704 -> a 44 x 62 patch grid -> 682 merged tokens.
    assert batch.image_grid_thw.tolist() == [[1, 44, 62]]
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    is_pad = batch.input_ids_BP[0] == pad
    assert int(is_pad.sum()) == 44 * 62 // 4 == 682
    assert torch.equal(batch.mm_token_type_ids_BP[0] == 1, is_pad)  # type 1 exactly on the image pads
    assert batch.pixel_values.shape == (44 * 62, 3 * 2 * 16 * 16)
    # vLLM is sent one pad per image and expands it itself.
    prompts = ve.build_vllm_prompts(batch, [[Image.new("RGB", (1000, 700))]], pad)
    assert prompts[0]["prompt_token_ids"].count(pad) == 1
    assert len(prompts[0]["prompt_token_ids"]) == int(batch.attention_mask_BP.sum()) - 681


def test_authors_pixel_range_reaches_both_engines(qwen_dir):
    spec = dict(min_pixels=262144, max_pixels=1048576)
    processor = load_processor(qwen_dir, **spec)
    size = processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (262144, 1048576)
    small = encode_prompts(processor, [student_messages("Q?")], [[Image.new("RGB", (100, 100))]])
    big = encode_prompts(processor, [student_messages("Q?")], [[Image.new("RGB", (4000, 3000))]])
    assert small.image_grid_thw.prod() * 16 * 16 >= 262144 and big.image_grid_thw.prod() * 16 * 16 <= 1048576
    cfg = make_config("qwen3vl-2b", [f"model.path={qwen_dir}", "model.min_pixels=262144",
                                     "model.max_pixels=1048576"])
    kw = ve.engine_kwargs(cfg, env={}, image_size={"shortest_edge": 262144, "longest_edge": 1048576},
                          capability=(8, 9))
    assert kw["mm_processor_kwargs"] == {"size": {"shortest_edge": 262144, "longest_edge": 1048576}}
    assert ve.max_image_tokens(kw["mm_processor_kwargs"]["size"]) == 1024 <= ve.PROMPT_TOKEN_BUDGET
    # The checkpoint's own range allows 16,384 visual tokens per image: more than the engine's prompt budget.
    assert ve.max_image_tokens({"shortest_edge": 65536, "longest_edge": 16777216}) > ve.PROMPT_TOKEN_BUDGET


def test_settings_sent_to_vllm_respect_its_limits(processor, qwen_dir):
    tok = processor.tokenizer
    suppress = suppressed_token_ids(tok, VOCAB)
    bias = ve.suppression_bias(suppress, VOCAB)
    kw = ve.sampling_kwargs(ve.SamplingParams(max_new_tokens=1024), tok.eos_token_id, bias)
    assert len(kw["logit_bias"]) == 280 <= ve.VLLM_MAX_LOGIT_BIAS_TOKENS
    assert all(0 <= i < VOCAB for i in kw["logit_bias"]) and "allowed_token_ids" not in kw
    assert len(kw["stop_token_ids"]) <= ve.VLLM_MAX_STOP_TOKEN_IDS
    # What the old whitelist would have sent: the vocabulary minus the suppressed ids, ~148x over the limit.
    assert len(tok) - len([i for i in suppress if i < len(tok)]) == 151656 > 100 * ve.VLLM_MAX_ALLOWED_TOKEN_IDS
    cfg = make_config("qwen3vl-2b", [f"model.path={qwen_dir}"])
    engine_kw = ve.engine_kwargs(cfg, env={}, capability=(8, 9))
    assert engine_kw["max_lora_rank"] in ve.VLLM_LORA_RANKS and engine_kw["max_lora_rank"] >= cfg.model.lora_rank
    assert engine_kw["max_model_len"] >= ve.PROMPT_TOKEN_BUDGET + cfg.max_new_tokens


def test_gpu_check_uses_the_qwen_tokenizer_at_2b_shape(tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    from rlsd.gpu_check import ARCHS, arch_processor
    from rlsd.tiny import tiny_config

    processor = arch_processor("2b", tmp_path)
    assert len(processor.tokenizer) == 151669 and processor.image_processor.merge_size == ARCHS["2b"]["merge_size"]
    config = tiny_config(processor.tokenizer, **ARCHS["2b"])
    assert (config.image_token_id, config.vision_start_token_id, config.text_config.eos_token_id) == (
        151655, 151652, 151645)
    assert config.text_config.vocab_size == VOCAB
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    assert 1.9e9 < sum(p.numel() for p in model.parameters()) < 2.5e9
    assert arch_processor("tiny", tmp_path) is None
