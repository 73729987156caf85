"""GPU profiles: one per model size and GPU class, each fitting its class by the documented memory estimate."""

import pytest

from rlsd.config import GPU_CLASSES, PROFILES, make_config
from rlsd.memory import estimate, profile_table

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
    assert estimate(cfg, gpu_gb).peak <= 0.85 * gpu_gb  # allocator slack on top of a lower-bound estimate


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

