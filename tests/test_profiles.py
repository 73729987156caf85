"""GPU profiles: one per model size and GPU class, each fitting its class by the documented memory estimate."""

import pytest

from rlsd.config import GPU_CLASSES, PROFILES, make_config
from rlsd.memory import GPU_MEMORY_GIB, HEADROOM, VLLM_OVERHEAD_GB, estimate, profile_table, vllm_plan

GPU_PROFILES = [name for name in PROFILES if name.count("-") == 2 and name.startswith("qwen3vl-")]


def test_every_size_has_a_profile_per_gpu_class():
    assert sorted(GPU_PROFILES) == sorted(f"qwen3vl-{s}-{g}" for s in ("2b", "8b") for g in GPU_CLASSES)


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_profile_fits_its_gpu_class_with_headroom(name):
    gpu = name.rsplit("-", 1)[1]
    gpu_gb, dtype, engine = GPU_CLASSES[gpu]
    cfg = make_config(name, method="rlsd")
    assert (cfg.model.dtype, cfg.engine) == (dtype, engine)
    assert (cfg.model.min_pixels, cfg.model.max_pixels) == (262_144, 1_048_576)
    gib = GPU_MEMORY_GIB[gpu]
    # Allocator slack on top of a lower-bound estimate, with the profile's engine AND with HF generate (what runs
    # where vLLM is not installed: Colab).
    assert estimate(cfg, gib).peak <= HEADROOM * gib
    assert estimate(cfg, gib, engine="hf").peak <= HEADROOM * gib
    if engine == "vllm":
        plan = vllm_plan(cfg, gib)
        assert plan.fits and plan.utilization * gib >= plan.weights + plan.kv_min + plan.overhead
    assert cfg.device == "cuda" and cfg.n_train_problems == cfg.steps * cfg.prompts_per_step
    assert cfg.stop_after_zero_variance_steps > 0


def test_vllm_weights_of_8b_nf4_and_why_0_3_of_an_l4_cannot_hold_them():
    cfg = make_config("qwen3vl-8b-l4", method="rlsd")
    plan = vllm_plan(cfg, GPU_MEMORY_GIB["l4"])
    # packed 4-bit 3.2 + absmax 0.4 + untied embedding and head in bf16 2.3 + vision tower 1.1 GiB
    assert plan.weights == pytest.approx(7.0, abs=0.1)
    assert 0.3 * GPU_MEMORY_GIB["l4"] < plan.weights  # the old default share: "No available memory for the cache"
    assert plan.utilization > 0.3 and plan.overhead == VLLM_OVERHEAD_GB
    small = vllm_plan(cfg, 16.0)  # a 16 GiB bf16 card: the 8B training side leaves too little for vLLM
    assert not small.fits and "vLLM needs" in small.why_not(16.0)


def test_the_hf_fallback_counts_its_kv_cache():
    # vLLM absent (Colab): the L4/A100 profiles roll out with HF generate, whose cache the table must show.
    for name, kv_gib in (("qwen3vl-2b-l4", 7.9), ("qwen3vl-2b-a100", 45.5)):
        cfg = make_config(name, method="rlsd")
        gib = GPU_MEMORY_GIB[name.rsplit("-", 1)[1]]
        hf, vllm = estimate(cfg, gib, engine="hf"), estimate(cfg, gib)
        assert hf.rollout == pytest.approx(kv_gib, abs=0.15) and vllm.rollout == 0.0
        assert hf.engine == "hf" and vllm.engine == "vllm" and vllm.vllm > 0 == hf.vllm
    with pytest.raises(ValueError, match="engine"):
        estimate(make_config("qwen3vl-2b-l4"), 22.5, engine="trt")


def test_t4_profiles_avoid_bf16_and_vllm():
    for size in ("2b", "8b"):
        cfg = make_config(f"qwen3vl-{size}-t4", method="grpo")
        assert cfg.model.dtype == "float16" and cfg.engine == "hf"


def test_estimate_terms_grow_with_what_they_count():
    base = make_config("qwen3vl-2b-t4", method="grpo")
    e = estimate(base, 16)
    longer = estimate(make_config("qwen3vl-2b-t4", ["max_new_tokens=1024"], method="grpo"), 16)
    bigger = estimate(make_config("qwen3vl-2b-t4", ["micro_batch_size=4"], method="grpo"), 16)
    bf16_base = estimate(make_config("qwen3vl-2b-t4", ["model.load_in_4bit=false"], method="grpo"), 16)
    assert longer.rollout > e.rollout and longer.update > e.update
    assert bigger.update > e.update and bigger.rollout == e.rollout
    assert bf16_base.weights > 1.5 * e.weights
    with pytest.raises(ValueError, match="no shape known"):
        estimate(make_config("smoke"), 16)


def test_profile_table_lists_every_gpu_profile():
    table = profile_table()
    assert all(f"`{name}`" in table for name in GPU_PROFILES)
    assert "with HF generate" in table and "gpu_memory_utilization" in table

