"""The vLLM engine's pure parts and glue, with fake vLLM objects (vLLM itself needs a CUDA GPU)."""

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from rlsd import vllm_engine as ve
from rlsd.config import make_config
from rlsd.model import QUANT_SKIP_MODULES
from rlsd.inputs import PromptBatch, encode_prompts
from rlsd.prompts import student_messages
from rlsd.rollout import SamplingParams
from rlsd.scoring import suppressed_token_ids

# A toy vocabulary for the engine-level tests: 0 pad, 5 image pad, 7 end-of-turn, 8..9 padded vocab rows.
EOS, PAD, IMG, VOCAB = 7, 0, 5, 10
SUPPRESS = [0, 5, 6, 8, 9]


# ------------------------------------------------------------------------------------------------- fakes


class FakeSamplingParams:
    """Stands in for vllm.SamplingParams; `reject_zero_top_k` mimics vLLM < 0.9."""

    reject_zero_top_k = False

    def __init__(self, **kwargs):
        if self.reject_zero_top_k and kwargs.get("top_k") == 0:
            raise ValueError("top_k must be -1 (disable), or at least 1, got 0.")
        self.kwargs = kwargs


class OldFakeSamplingParams(FakeSamplingParams):
    reject_zero_top_k = True


def fake_lora_request(name, int_id, path):
    return SimpleNamespace(lora_name=name, lora_int_id=int_id, lora_path=path)


def completion(ids, reason):
    return SimpleNamespace(outputs=[SimpleNamespace(token_ids=list(ids), finish_reason=reason)])


def check_vllm_limits(params, vocab_size, tokenizer_len):
    """What vLLM 0.33 enforces per request (v1 input processor and v1/worker/gpu/sample/logit_bias.py)."""
    kw = params.kwargs
    allowed = kw.get("allowed_token_ids")
    if allowed:
        if len(allowed) > ve.VLLM_MAX_ALLOWED_TOKEN_IDS:
            raise ValueError(f"Too many allowed token IDs: {len(allowed)}. The max size is 1024.")
        if not all(0 <= t < tokenizer_len for t in allowed):
            raise ValueError("allowed_token_ids contains out-of-vocab token id!")
    bias = kw.get("logit_bias")
    if bias:
        if len(bias) > ve.VLLM_MAX_LOGIT_BIAS_TOKENS:
            raise ValueError(f"Too many logit bias tokens: {len(bias)}. The max size is 1024.")
        if not all(0 <= t < vocab_size for t in bias):
            raise ValueError("token_id(s) in logit_bias contain out-of-vocab token ids")
    if len(kw.get("stop_token_ids") or []) > ve.VLLM_MAX_STOP_TOKEN_IDS:
        raise ValueError("Too many stop tokens")


class FakeLLM:
    """Records calls; `generate` enforces vLLM's request limits and returns the scripted completions."""

    def __init__(self, script=None, vocab_size=VOCAB, tokenizer_len=VOCAB - 2, **kwargs):
        self.kwargs = kwargs
        self.script = list(script or [])
        self.calls = []
        self.generated = []
        self.vocab_size, self.tokenizer_len = vocab_size, tokenizer_len

    def generate(self, prompts, params, use_tqdm=True, lora_request=None):
        check_vllm_limits(params, self.vocab_size, self.tokenizer_len)
        self.calls.append("generate")
        self.generated.append(dict(prompts=prompts, params=params, lora_request=lora_request))
        return [completion(*self.script[i % len(self.script)]) for i in range(len(prompts))]

    def sleep(self, level=1):
        self.calls.append(f"sleep{level}")

    def wake_up(self):
        self.calls.append("wake_up")

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")


class FakeEngineCore:
    """vLLM 0.33's `LLM.llm_engine.engine_core`: the client whose shutdown() stops the engine-core process."""

    def __init__(self, calls):
        self.calls = calls

    def shutdown(self):
        self.calls.append("shutdown")


class FakeLLMWithCore(FakeLLM):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.llm_engine = SimpleNamespace(engine_core=FakeEngineCore(self.calls))


class FakeLoraPolicy:
    """The parts of a peft LoRA model the engine uses."""

    def __init__(self, vocab_size=VOCAB):
        self.peft_config = {"default": SimpleNamespace(peft_type="LORA", r=8)}
        self.config = SimpleNamespace(get_text_config=lambda: SimpleNamespace(vocab_size=vocab_size))
        self.saves = 0

    def save_pretrained(self, path):
        self.saves += 1
        Path(path).mkdir(parents=True)
        (Path(path) / "adapter_config.json").write_text(json.dumps({"r": 8, "save": self.saves}))


class FullParameterPolicy:
    config = SimpleNamespace(get_text_config=lambda: SimpleNamespace(vocab_size=VOCAB))

    def save_pretrained(self, path):  # a plain HF model also has save_pretrained
        raise AssertionError("must not be saved as an adapter")


def toy_batch(rows: list[list[int]], images_per_row: list[int]):
    """A left-padded PromptBatch of toy ids (no pixel values needed by the vLLM path)."""
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), PAD)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r)
        mask[i, P - len(r):] = 1
    return PromptBatch(ids, mask, torch.zeros_like(ids), None, None, images_per_row, [0] * len(rows))


def make_engine(script, sampling_cls=FakeSamplingParams, **kw):
    llm = FakeLLM(script)
    engine = ve.VLLMEngine(llm, sampling_cls, fake_lora_request, eos_id=EOS, pad_id=PAD, image_pad_id=IMG,
                           suppress_ids=SUPPRESS, vocab_size=VOCAB, max_model_len=kw.pop("max_model_len", 256),
                           **kw)
    return engine, llm


@pytest.fixture(scope="module")
def tiny_processor():
    from rlsd.tiny import build_processor

    return build_processor()


# ------------------------------------------------------------------------------------------ sampling settings


def test_sampling_kwargs_follow_hf_generate_settings():
    allowed = {0: ve.SUPPRESS_BIAS, 5: ve.SUPPRESS_BIAS}
    kw = ve.sampling_kwargs(SamplingParams(max_new_tokens=48, temperature=0.7, top_p=0.8, top_k=20), EOS, allowed)
    assert kw["temperature"] == 0.7 and kw["top_p"] == 0.8 and kw["top_k"] == 20
    assert kw["max_tokens"] == 48 and kw["n"] == 1 and kw["stop_token_ids"] == [EOS] and not kw["ignore_eos"]
    assert kw["logit_bias"] is allowed and "allowed_token_ids" not in kw and kw["detokenize"] is False
    assert kw["repetition_penalty"] == 1.0 and kw["min_p"] == 0.0 and "seed" not in kw
    # top_k = 0 (disabled in HF) -> vLLM's disabled value (0 now, -1 before 0.9).
    assert ve.sampling_kwargs(SamplingParams(top_k=0), EOS, allowed)["top_k"] == 0
    assert ve.sampling_kwargs(SamplingParams(top_k=0), EOS, allowed, disabled_top_k=-1)["top_k"] == -1
    # Greedy: like hf_generate, no top-p / top-k.
    greedy = ve.sampling_kwargs(SamplingParams(temperature=0.0, top_p=0.5, top_k=3), EOS, allowed)
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0 and greedy["top_k"] == 0
    with pytest.raises(ValueError, match="top_p"):
        ve.sampling_kwargs(SamplingParams(top_p=0.0), EOS, allowed)


def test_suppression_bias_covers_exactly_the_suppressed_ids(tiny_processor):
    tok = tiny_processor.tokenizer
    V = len(tok) + 12  # padded vocabulary rows, as in the real models
    suppress = suppressed_token_ids(tok, V)
    bias = ve.suppression_bias(suppress, V)
    assert sorted(bias) == sorted(suppress) and set(bias.values()) == {ve.SUPPRESS_BIAS}
    assert tok.eos_token_id not in bias and tok.convert_tokens_to_ids("<|image_pad|>") in bias
    assert set(range(len(tok), V)) <= set(bias)  # padded rows: vLLM samples over all V logits
    # exp(bias) underflows to exactly 0 in float32 after any real logit: probability 0, not merely small.
    logits = torch.tensor([30.0, -30.0 + ve.SUPPRESS_BIAS, 0.0])
    assert torch.softmax(logits, -1)[1].item() == 0.0
    with pytest.raises(ValueError):
        ve.suppression_bias(range(4), 4)
    with pytest.raises(ValueError, match="1024"):
        ve.suppression_bias(range(2000), 4000)
    with pytest.raises(ValueError, match="outside"):
        ve.suppression_bias([5], 4)


def test_fake_llm_enforces_vllm_request_limits():
    """Guards the guard: the old whitelist of a real-size vocabulary is refused as vLLM 0.33 refuses it."""
    llm = FakeLLM([([EOS], "stop")], vocab_size=151936, tokenizer_len=151669)
    whitelist = FakeSamplingParams(allowed_token_ids=list(range(151389)), stop_token_ids=[EOS])
    with pytest.raises(ValueError, match="Too many allowed token IDs"):
        llm.generate([{"prompt_token_ids": [1]}], whitelist)
    with pytest.raises(ValueError, match="out-of-vocab"):
        llm.generate([{"prompt_token_ids": [1]}], FakeSamplingParams(logit_bias={151936: -1.0}))
    assert llm.generate([{"prompt_token_ids": [1]}], FakeSamplingParams(logit_bias={151935: -1.0}))


def test_engine_kwargs_from_config(monkeypatch):
    cfg = make_config("smoke", ["model.lora_rank=12", "model.load_in_4bit=true", "model.dtype=bfloat16"])
    kw = ve.engine_kwargs(cfg, env={})
    assert kw["model"] == cfg.model.path and kw["tokenizer"] == cfg.model.path and kw["dtype"] == "bfloat16"
    assert kw["quantization"] == "bitsandbytes" and kw["load_format"] == "bitsandbytes"
    q = kw["hf_overrides"]["quantization_config"]
    assert q["quant_method"] == "bitsandbytes" and q["bnb_4bit_quant_type"] == "nf4" and q["load_in_4bit"]
    assert q["bnb_4bit_use_double_quant"] and q["bnb_4bit_compute_dtype"] == "bfloat16"
    assert "visual" in q["llm_int8_skip_modules"] and "lm_head" in q["llm_int8_skip_modules"]
    assert kw["enable_lora"] and kw["max_lora_rank"] == 16 and kw["max_loras"] == 1
    assert kw["gpu_memory_utilization"] == ve.DEFAULT_GPU_MEMORY_UTILIZATION == 0.3
    assert kw["enable_sleep_mode"] and not kw["enforce_eager"]
    assert kw["max_model_len"] == ve.PROMPT_TOKEN_BUDGET + max(cfg.max_new_tokens, cfg.eval_max_new_tokens)
    assert kw["limit_mm_per_prompt"] == {"image": ve.DEFAULT_MAX_IMAGES, "video": 0}
    assert kw["max_num_seqs"] == cfg.prompts_per_step * cfg.group_size and kw["seed"] == cfg.seed
    env = {ve.ENV_GPU_MEMORY_UTILIZATION: "0.45", ve.ENV_MAX_MODEL_LEN: "3000", ve.ENV_SLEEP: "0",
           ve.ENV_ENFORCE_EAGER: "1", ve.ENV_MAX_IMAGES: "2"}
    kw = ve.engine_kwargs(make_config("smoke", ["model.lora_rank=8"]), env=env)
    assert "quantization" not in kw and "hf_overrides" not in kw and kw["max_lora_rank"] == 8
    assert (kw["gpu_memory_utilization"], kw["max_model_len"], kw["enable_sleep_mode"], kw["enforce_eager"],
            kw["limit_mm_per_prompt"]["image"]) == (0.45, 3000, False, True, 2)
    with pytest.raises(ValueError, match=ve.ENV_GPU_MEMORY_UTILIZATION):
        ve.engine_kwargs(cfg, env={ve.ENV_GPU_MEMORY_UTILIZATION: "1.5"})
    assert [ve.vllm_max_lora_rank(r) for r in (1, 8, 9, 64, 65)] == [8, 8, 16, 64, 128]
    with pytest.raises(ValueError):
        ve.vllm_max_lora_rank(0)


# ---------------------------------------------------------------------------------------------- prompts


def test_collapse_image_pads():
    P = IMG
    assert ve.collapse_image_pads([1, P, P, P, 2, 3, P, P, 4], P) == [1, P, 2, 3, P, 4]
    assert ve.collapse_image_pads([P, P, 1, P], P) == [P, 1, P]
    assert ve.collapse_image_pads([1, 2, 3], P) == [1, 2, 3]
    assert ve.collapse_image_pads([], P) == []


def test_vllm_prompts_are_the_hf_ids_with_one_pad_per_image(tiny_processor):
    proc = tiny_processor
    red, blue = Image.new("RGB", (96, 96), (220, 30, 30)), Image.new("RGB", (64, 96), (40, 70, 220))
    images = [[red], [red, blue], []]
    batch = encode_prompts(proc, [student_messages("How many red squares?", 1),
                                  student_messages("What is the sum of both counts?", 2),
                                  student_messages("No image here.", 0)], images)
    pad_id = proc.tokenizer.convert_tokens_to_ids(proc.image_token)
    prompts = ve.build_vllm_prompts(batch, images, pad_id)
    assert [p["prompt_token_ids"].count(pad_id) for p in prompts] == [1, 2, 0]
    assert prompts[1]["multi_modal_data"]["image"] == [red, blue] and "multi_modal_data" not in prompts[2]
    # vLLM's Qwen3-VL rule: each single <|image_pad|> becomes grid_t*grid_h*grid_w / merge^2 pads. Applying it
    # must give back exactly the HF token ids of the row (left padding removed).
    merge2 = proc.image_processor.merge_size ** 2
    sizes = iter(int(g.prod()) // merge2 for g in batch.image_grid_thw)
    for i, p in enumerate(prompts):
        expanded = []
        for t in p["prompt_token_ids"]:
            expanded += [pad_id] * next(sizes) if t == pad_id else [t]
        assert expanded == batch.input_ids_BP[i][batch.attention_mask_BP[i].bool()].tolist()
        assert p["prompt_token_ids"][0] != proc.tokenizer.pad_token_id  # left padding stripped
    with pytest.raises(ValueError, match="row 1"):
        ve.build_vllm_prompts(batch, [[red], [red], []], pad_id)
    with pytest.raises(ValueError, match=ve.ENV_MAX_IMAGES):
        ve.build_vllm_prompts(batch, images, pad_id, max_images=1)


# ---------------------------------------------------------------------------------------------- outputs


def test_outputs_become_a_right_padded_rollout():
    r = ve.outputs_to_rollout([[1, 2, EOS], [1, 2, 3, 4], [EOS]], ["stop", "length", "stop"], EOS, PAD,
                              max_new_tokens=4)
    assert r.response_ids_BT.tolist() == [[1, 2, EOS, PAD], [1, 2, 3, 4], [EOS, PAD, PAD, PAD]]
    assert r.response_mask_BT.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert r.truncated_B.tolist() == [False, True, False]
    assert r.lengths_B.tolist() == [3, 4, 1]
    # The truncation flag comes from the tokens: an eos that is also the max_tokens-th token is not truncated,
    # even if vLLM reports "length" for it.
    r = ve.outputs_to_rollout([[1, 2, EOS]], ["length"], EOS, PAD, max_new_tokens=3)
    assert r.truncated_B.tolist() == [False] and r.lengths_B.tolist() == [3]


def test_short_length_capped_row_does_not_count_its_padding():
    # A row cut by max_model_len ends early without eos: its right padding must stay outside the mask.
    r = ve.outputs_to_rollout([[1, 2], [1, 2, 3, EOS]], ["length", "stop"], EOS, PAD, max_new_tokens=8)
    assert r.response_mask_BT.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert r.truncated_B.tolist() == [True, False]


@pytest.mark.parametrize("ids, reason, match", [
    ([1, IMG, EOS], "stop", "suppressed"),
    ([1, 2, 3], "stop", "not on the end-of-turn"),
    ([1, 2], "abort", "abort"),
    ([1, 2, 3, 4, 1], "length", "max_new_tokens"),
])
def test_outputs_that_break_the_contract_raise(ids, reason, match):
    stop_reason = ids[-1] if reason == "stop" else None  # a stop on a token that is not eos
    with pytest.raises(RuntimeError, match=match):
        ve.outputs_to_rollout([ids], [reason], EOS, PAD, max_new_tokens=4, suppress_ids=SUPPRESS,
                              stop_reasons=[stop_reason])


def test_an_eos_stop_without_the_eos_token_gets_it_back():
    # stop_reason None = stopped on the tokenizer's eos; the eos id = stopped on stop_token_ids=[eos].
    r = ve.outputs_to_rollout([[1, 2], [3]], ["stop", "stop"], EOS, PAD, max_new_tokens=4, stop_reasons=[None, EOS])
    assert r.response_ids_BT.tolist() == [[1, 2, EOS], [3, EOS, PAD]]
    assert r.truncated_B.tolist() == [False, False] and r.lengths_B.tolist() == [3, 2]


# ---------------------------------------------------------------------------------------------- adapters


def test_adapter_versions_get_new_ids_and_old_versions_are_removed(tmp_path):
    store = ve.AdapterStore(tmp_path)
    policy = FakeLoraPolicy()
    v1 = store.save(policy)
    v2 = store.save(policy)
    assert (v1.int_id, v2.int_id) == (1, 2) and v1.name != v2.name and v1.path != v2.path
    assert json.loads((Path(v2.path) / "adapter_config.json").read_text())["save"] == 2
    assert not Path(v1.path).exists() and [p.name for p in tmp_path.iterdir()] == [Path(v2.path).name]
    with pytest.raises(ValueError, match="lora_rank"):
        store.save(FullParameterPolicy())


def test_temporary_adapter_directory_is_removed_on_close():
    store = ve.AdapterStore()
    store.save(FakeLoraPolicy())
    root = store.root
    assert root.exists()
    store.close()
    assert not root.exists()


def test_peft_adapter_of_the_policy_is_what_vllm_loads(tmp_path, tiny_processor):
    """The saved adapter holds only language-model projections (vLLM loads no vision-tower LoRA by default)."""
    from safetensors import safe_open

    from rlsd.model import ModelSpec, add_lora
    from rlsd.tiny import build_tiny_model

    model = build_tiny_model(tiny_processor.tokenizer, seed=0)
    assert not ve.is_lora_policy(model)  # a plain HF model (full-parameter training)
    policy = add_lora(model, ModelSpec(lora_rank=8))
    assert ve.is_lora_policy(policy)
    version = ve.AdapterStore(tmp_path).save(policy)
    config = json.loads((Path(version.path) / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"
    with safe_open(str(Path(version.path) / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("base_model.model.model.language_model.layers.") for k in keys)
    assert {k.split(".")[-3] for k in keys} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"}


# ---------------------------------------------------------------------------------------------- engine glue


def test_engine_generates_with_the_latest_adapter_and_sleeps_between_rollouts():
    engine, llm = make_engine([([1, 2, EOS], "stop"), ([3, 4, 1, 2], "length")])
    batch = toy_batch([[1, IMG, IMG, IMG, 2], [3, 4]], [1, 0])
    img = Image.new("RGB", (8, 8))
    problems = [SimpleNamespace(images=[img]), SimpleNamespace(images=[])]
    with pytest.raises(RuntimeError, match="sync_weights"):
        engine.generate(batch, problems, SamplingParams(max_new_tokens=4))
    policy = FakeLoraPolicy()
    engine.sync_weights(policy)
    engine.sleep()
    r = engine.generate(batch, problems, SamplingParams(max_new_tokens=4, temperature=1.0))
    call = llm.generated[-1]
    assert call["prompts"] == [{"prompt_token_ids": [1, IMG, 2], "multi_modal_data": {"image": [img]}},
                               {"prompt_token_ids": [3, 4]}]
    assert call["lora_request"].lora_int_id == 1 and Path(call["lora_request"].lora_path).exists()
    assert call["params"].kwargs["logit_bias"] == {i: ve.SUPPRESS_BIAS for i in SUPPRESS}
    assert llm.calls == ["reset_prefix_cache", "sleep1", "wake_up", "generate", "reset_prefix_cache", "sleep1"]
    assert r.response_ids_BT.tolist() == [[1, 2, EOS, PAD], [3, 4, 1, 2]]
    assert r.truncated_B.tolist() == [False, True]
    engine.sync_weights(policy)  # after the optimizer step
    engine.generate(batch, problems, SamplingParams(max_new_tokens=4))
    assert llm.generated[-1]["lora_request"].lora_int_id == 2 and policy.saves == 2
    engine.close()


def test_engine_retries_with_minus_one_when_vllm_rejects_top_k_zero():
    engine, llm = make_engine([([EOS], "stop")], sampling_cls=OldFakeSamplingParams)
    engine.sync_weights(FakeLoraPolicy())
    engine.generate(toy_batch([[1, 2]], [0]), [SimpleNamespace(images=[])], SamplingParams(top_k=0))
    assert llm.generated[-1]["params"].kwargs["top_k"] == -1
    engine.generate(toy_batch([[1, 2]], [0]), [SimpleNamespace(images=[])], SamplingParams(top_k=20))
    assert llm.generated[-1]["params"].kwargs["top_k"] == 20
    engine.close()


def test_engine_refuses_prompts_longer_than_max_model_len():
    engine, llm = make_engine([([EOS], "stop")], max_model_len=6, sleep=False)
    engine.sync_weights(FakeLoraPolicy())
    with pytest.raises(ValueError, match=ve.ENV_MAX_MODEL_LEN):
        engine.generate(toy_batch([[1, 2, 3]], [0]), [SimpleNamespace(images=[])], SamplingParams(max_new_tokens=4))
    assert llm.calls == []
    engine.close()


# ---------------------------------------------------------------------------------------------- factory


def fake_vllm_module(monkeypatch, created, bnb_plugin=True, fail=None):
    """A stand-in `vllm` package. Without `bnb_plugin`, `quantization="bitsandbytes"` fails as in vLLM 0.33 core;
    `fail` makes the constructor raise that exception."""
    class LLM(FakeLLM):
        def __init__(self, **kwargs):
            if fail is not None:
                raise fail
            if kwargs.get("quantization") == "bitsandbytes" and not bnb_plugin:
                raise ValueError("Unknown quantization method: bitsandbytes. Must be one of ['awq', 'fp8', ...].")
            super().__init__(**kwargs)
            created.append(self)

    monkeypatch.setattr(ve, "bnb_available", lambda: bnb_plugin)

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams, vllm.__version__ = LLM, FakeSamplingParams, "0.33.0-fake"
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = fake_lora_request
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)


def fake_processor(size=None):
    tok = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD, convert_tokens_to_ids=lambda t: IMG)
    image_processor = SimpleNamespace(size=size or {"shortest_edge": 1024, "longest_edge": 16384}, merge_size=1,
                                      patch_size=16)
    return SimpleNamespace(tokenizer=tok, image_token="<|image_pad|>", image_processor=image_processor)


def _gpu_env(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: SimpleNamespace(total_memory=80 * 2**30))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for name in (ve.ENV_GPU_MEMORY_UTILIZATION, ve.ENV_MAX_MODEL_LEN, ve.ENV_SLEEP, ve.ENV_ENFORCE_EAGER,
                 ve.ENV_MAX_IMAGES):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("error", [ValueError("Unknown quantization method: bitsandbytes."),
                                   RuntimeError("CUDA out of memory\nsecond line"),
                                   ValueError("Bfloat16 is only supported on GPUs with compute capability >= 8.0")])
def test_any_vllm_construction_error_falls_back_with_one_line(monkeypatch, caplog, error):
    created = []
    fake_vllm_module(monkeypatch, created, fail=error)
    _gpu_env(monkeypatch)
    cfg = make_config("smoke", ["engine=vllm", "model.lora_rank=8"])
    with caplog.at_level("WARNING", logger="rlsd.vllm_engine"):
        assert ve.make_vllm_engine(cfg, FakeLoraPolicy(), fake_processor(), SUPPRESS) is None
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and "falling back to HF generate" in lines[0] and "\n" not in lines[0]
    assert type(error).__name__ in lines[0] and str(error).splitlines()[0] in lines[0]


def test_4bit_without_the_bnb_plugin_falls_back_naming_the_plugin(monkeypatch, caplog):
    created = []
    fake_vllm_module(monkeypatch, created, bnb_plugin=False)
    _gpu_env(monkeypatch)
    cfg = make_config("smoke", ["engine=vllm", "model.lora_rank=8", "model.load_in_4bit=true"])
    with caplog.at_level("WARNING", logger="rlsd.vllm_engine"):
        assert ve.make_vllm_engine(cfg, FakeLoraPolicy(), fake_processor(), SUPPRESS) is None
    assert ve.BNB_PLUGIN in caplog.text and "falling back" in caplog.text and created == []


def test_vllm_gets_the_hf_processors_pixel_range(monkeypatch, tiny_dir):
    """One pixel range for both engines, from ModelSpec.min_pixels / max_pixels (None: the checkpoint's)."""
    from rlsd.model import load_processor

    created = []
    fake_vllm_module(monkeypatch, created)
    _gpu_env(monkeypatch)
    for overrides, expected in (([], {"shortest_edge": 1024, "longest_edge": 16384}),
                                (["model.min_pixels=2048", "model.max_pixels=8192"],
                                 {"shortest_edge": 2048, "longest_edge": 8192})):
        cfg = make_config("smoke", ["engine=vllm", "model.lora_rank=8", f"model.path={tiny_dir}", *overrides])
        processor = load_processor(cfg.model.path, cfg.model.min_pixels, cfg.model.max_pixels)
        size = processor.image_processor.size
        assert (size.shortest_edge, size.longest_edge) == (expected["shortest_edge"], expected["longest_edge"])
        engine = ve.make_vllm_engine(cfg, FakeLoraPolicy(), processor, SUPPRESS)
        assert created[-1].kwargs["mm_processor_kwargs"] == {"size": expected}
        engine.close()


def test_bf16_on_an_old_gpu_goes_to_vllm_as_float16(caplog):
    cfg = make_config("smoke", ["model.lora_rank=8", "model.dtype=bfloat16"])
    with caplog.at_level("WARNING", logger="rlsd.model"):
        assert ve.engine_kwargs(cfg, env={}, capability=(7, 5))["dtype"] == "float16"
    assert "compute capability 7.5" in caplog.text
    assert ve.engine_kwargs(cfg, env={}, capability=(8, 0))["dtype"] == "bfloat16"


def test_make_vllm_engine_without_vllm_falls_back_with_a_message(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    cfg = make_config("smoke", ["engine=vllm", "model.lora_rank=8"])
    with caplog.at_level("WARNING", logger="rlsd.vllm_engine"):
        assert ve.make_vllm_engine(cfg, FakeLoraPolicy(), fake_processor(), SUPPRESS) is None
    assert "vLLM is not installed; falling back to HF generate" in caplog.text
    assert "requirements-gpu.txt" in caplog.text


def test_make_vllm_engine_without_cuda_falls_back_with_a_message(monkeypatch, caplog):
    created = []
    fake_vllm_module(monkeypatch, created)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = make_config("smoke", ["engine=vllm", "model.lora_rank=8"])
    with caplog.at_level("WARNING", logger="rlsd.vllm_engine"):
        assert ve.make_vllm_engine(cfg, FakeLoraPolicy(), fake_processor(), SUPPRESS) is None
    assert "CUDA" in caplog.text and created == []


def test_make_vllm_engine_refuses_a_full_parameter_policy(monkeypatch):
    created = []
    fake_vllm_module(monkeypatch, created)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = make_config("smoke", ["engine=vllm"])  # lora_rank 0: full-parameter training
    with pytest.raises(ValueError, match="needs a LoRA policy") as err:
        ve.make_vllm_engine(cfg, FullParameterPolicy(), fake_processor(), SUPPRESS)
    assert "engine=hf" in str(err.value) and created == []  # refused before vLLM allocates the GPU


def test_make_vllm_engine_starts_a_sleeping_engine_with_the_adapter(monkeypatch, capsys):
    created = []
    fake_vllm_module(monkeypatch, created)
    _gpu_env(monkeypatch)
    cfg = make_config("smoke", ["engine=vllm", "model.lora_rank=8", "model.load_in_4bit=true"])
    engine = ve.make_vllm_engine(cfg, FakeLoraPolicy(), fake_processor(), SUPPRESS)
    assert isinstance(engine, ve.VLLMEngine) and len(created) == 1
    llm = created[0]
    assert llm.kwargs["quantization"] == "bitsandbytes" and llm.kwargs["enable_lora"]
    assert llm.kwargs["gpu_memory_utilization"] == 0.3 and llm.kwargs["enable_sleep_mode"]
    assert engine.lora_request.lora_int_id == 1 and engine.asleep and llm.calls[-1] == "sleep1"
    assert engine.image_pad_id == IMG and engine.logit_bias == {i: ve.SUPPRESS_BIAS for i in SUPPRESS}
    assert llm.kwargs["hf_overrides"]["quantization_config"]["llm_int8_skip_modules"] == list(QUANT_SKIP_MODULES)
    assert "vLLM engine ready" in capsys.readouterr().err
    engine.close()


def test_close_shuts_the_engine_down_once(tmp_path):
    llm = FakeLLMWithCore(script=[([3, EOS], "stop")])
    engine = ve.VLLMEngine(llm, FakeSamplingParams, fake_lora_request, eos_id=EOS, pad_id=PAD, image_pad_id=IMG,
                           suppress_ids=SUPPRESS, vocab_size=VOCAB, max_model_len=64, adapter_root=tmp_path / "a")
    engine.close()
    assert llm.calls.count("shutdown") == 1 and engine.llm is None and engine.lora_request is None
    engine.close()  # idempotent: nothing left to shut down
    assert llm.calls.count("shutdown") == 1
    # An engine without engine_core (older vLLM) is still dropped.
    old = ve.VLLMEngine(FakeLLM(), FakeSamplingParams, fake_lora_request, eos_id=EOS, pad_id=PAD, image_pad_id=IMG,
                        suppress_ids=SUPPRESS, vocab_size=VOCAB, max_model_len=64)
    old_llm = old.llm
    old.close()
    assert old.llm is None and "shutdown" not in old_llm.calls


def test_trainer_close_shuts_its_engine(tmp_path):
    from rlsd.trainer import Trainer

    llm = FakeLLMWithCore()
    trainer = Trainer.__new__(Trainer)  # close() needs only the engine
    trainer.engine = ve.VLLMEngine(llm, FakeSamplingParams, fake_lora_request, eos_id=EOS, pad_id=PAD,
                                   image_pad_id=IMG, suppress_ids=SUPPRESS, vocab_size=VOCAB, max_model_len=64)
    trainer.close()
    assert llm.calls == ["shutdown"] and trainer.engine is None


def test_gpu_memory_utilization_follows_the_memory_plan():
    from rlsd.memory import vllm_plan

    cfg = make_config("qwen3vl-8b-l4", method="rlsd")
    plan = vllm_plan(cfg, 22.5)
    util = ve.engine_kwargs(cfg, env={}, capability=(8, 9), gpu_gib=22.5)["gpu_memory_utilization"]
    assert util == plan.utilization and util * 22.5 >= plan.weights + plan.kv_min + plan.overhead
    assert util > ve.DEFAULT_GPU_MEMORY_UTILIZATION  # 0.3 of an L4 (6.75 GiB) cannot hold 8B NF4 (~7.0 GiB)
    env = {ve.ENV_GPU_MEMORY_UTILIZATION: "0.55"}
    assert ve.engine_kwargs(cfg, env=env, capability=(8, 9), gpu_gib=22.5)["gpu_memory_utilization"] == 0.55
    # A model whose shape rlsd.memory does not know keeps the default share.
    tiny = make_config("smoke", ["model.lora_rank=8"])
    assert ve.engine_kwargs(tiny, env={}, gpu_gib=22.5)["gpu_memory_utilization"] == 0.3


def test_not_installed_message_names_colabs_engine_and_the_cuda_vllm_needs():
    assert "requirements-colab.txt" in ve.NOT_INSTALLED_MESSAGE and "HF generate" in ve.NOT_INSTALLED_MESSAGE
    assert "CUDA 13" in ve.NOT_INSTALLED_MESSAGE and "R580" in ve.NOT_INSTALLED_MESSAGE
