"""The GPU check script, run end to end on the CPU with the tiny shape (the device run uses --arch 2b)."""

import json

import pytest

from rlsd.gpu_check import ARCHS, main
from rlsd.tiny import build_processor, tiny_config


def test_real_shapes_build_the_released_sizes():
    # Config only (no weights): the 2B shape must be a ~2B model, the 8B one ~8B.
    from transformers import Qwen3VLForConditionalGeneration
    import torch

    tok = build_processor().tokenizer
    for arch, (low, high) in {"2b": (1.9e9, 2.5e9), "8b": (8.0e9, 9.2e9)}.items():
        with torch.device("meta"):
            model = Qwen3VLForConditionalGeneration(tiny_config(tok, **ARCHS[arch]))
        n = sum(p.numel() for p in model.parameters())
        assert low < n < high, (arch, n)


@pytest.mark.slow
def test_gpu_check_runs_every_stage_on_cpu(tmp_path):
    report = main(["--arch", "tiny", "--out", str(tmp_path), "--work-dir", str(tmp_path / "work"), "--repeats", "1", "--max-new-tokens", "8"])
    assert report["ok"], json.dumps(report, default=str)[:2000]
    assert report["lora_grads"]["lora_B_with_gradient"] == report["lora_grads"]["lora_B_matrices"] > 0
    assert report["bench"]["rlsd_over_grpo"] > 0
    assert [s["step"] for s in report["train_resume"]["steps"]] == [1, 2, 3]
    assert report["train_resume"]["gradient_every_step"]  # alternating rewards: the update really moved LoRA
    assert all(s["grad_norm"] > 0 for s in report["train_resume"]["steps"])
    assert set(report["bench_distillation"]["methods"]) == {"opsd", "sdpo"}
    assert json.loads((tmp_path / "gpu_check.json").read_text())["ok"]


def test_rollout_variants_on_cpu(tmp_path):
    """The rollouts stage on the tiny shape: every variant runs, the shared prefill and the static cache reproduce
    their base's greedy outputs, and the verdict on continuous batching is recorded with its reason."""
    from rlsd.gpu_check import build_model, overrides_for, rollout_variants

    model_dir = tmp_path / "tiny"
    build_model("tiny", model_dir)
    r = rollout_variants("smoke", overrides_for("tiny", model_dir, 8), prompts_per_step=2, group_size=3,
                         max_new_tokens=6, greedy_rows=6, greedy_tokens=6)
    assert r["ok"], r
    assert set(r["variants"]) == {"nf4", "nf4+shared", "dense", "dense+shared", "dense+shared+static",
                                  "dense+shared+static+compiled"}
    ran = {n: v for n, v in r["variants"].items() if "skipped" not in v}
    assert set(r["variants"]) - set(ran) == {"dense+shared+static+compiled"}  # no CUDA here: not compiled
    assert all(v["greedy_equal_to_reference"] for v in ran.values()), r["variants"]
    assert all(v["tokens"] > 0 and v["tokens_per_s"] > 0 for v in ran.values())
    assert set(r["fastest_exact"]) == {"nf4", "float32"}
    assert r["continuous_batching"]["available"] is False and "token ids only" in r["continuous_batching"]["reason"]


def test_cpu_rehearsal_runs_only_its_stages_and_reports_peak_memory(tmp_path):
    """`--device cpu` on the tiny shape: the CPU rehearsal's stages (the 2B run is `--arch 2b --device cpu`)."""
    from rlsd.gpu_check import CPU_REHEARSAL, overrides_for

    report = main(["--arch", "tiny", "--device", "cpu", "--out", str(tmp_path), "--work-dir", str(tmp_path / "w"),
                   "--max-new-tokens", "6"])
    assert report["ok"], json.dumps(report, default=str)[:2000]
    assert "rollouts" not in report and "bench" not in report and "bench_distillation" not in report
    assert [s["step"] for s in report["train_resume"]["steps"]] == [1, 2, 3]
    peaks = report["memory"]["peak_rss_gib_after"]
    assert set(peaks) >= {"build", "lora_grads", "train_resume"} and all(v > 0 for v in peaks.values())
    now = report["memory"]["rss_gib_after"]
    assert set(now) == set(peaks) and all(0 < now[k] <= peaks[k] + 0.01 for k in now)
    assert report["environment"]["cpu_cores"] >= 1 and "load_average_at_end" in report["environment"]
    # The 2B rehearsal's batch and device: real shapes, a tiny batch, on the CPU whatever the profile says.
    two_b = overrides_for("2b", tmp_path, 4, "cpu")
    assert set(CPU_REHEARSAL) <= set(two_b) and "device=cpu" in two_b


def test_weights_estimate_of_the_cpu_rehearsal():
    from rlsd.gpu_check import CPU_REHEARSAL, weights_estimate

    est = weights_estimate("2b", "qwen3vl-2b", ["model.path=/nowhere", *CPU_REHEARSAL])
    # NF4 language model + untied bf16 embedding and head + bf16 vision tower of the random 2B model.
    assert est["load_in_4bit"] and est["dtype"] == "bfloat16"
    assert 2.4 < est["weights_estimate_gib"] < 2.8
    assert weights_estimate("tiny", "smoke", []) == {}


def test_t4_stand_in_selects_the_class_profile_and_refuses_without_cuda(tmp_path):
    """`--gpu-class t4 --memory-cap-gib 16`: the T4 profile (float16, its own micro-batches); the cap needs CUDA and
    the refusal comes before anything is written."""
    from rlsd.config import make_config
    from rlsd.gpu_check import overrides_for, profile_for

    assert profile_for("2b") == "qwen3vl-2b" and profile_for("2b", "t4") == "qwen3vl-2b-t4"
    with pytest.raises(ValueError, match="--gpu-class"):
        profile_for("tiny", "t4")
    cfg = make_config("qwen3vl-2b-t4", overrides_for("2b", tmp_path / "m", 64, gpu_class="t4"), method="rlsd")
    assert cfg.model.dtype == "float16" and cfg.micro_batch_size == 2 and cfg.max_new_tokens == 64
    big = make_config("qwen3vl-2b", overrides_for("2b", tmp_path / "m", 64), method="rlsd")
    assert big.micro_batch_size == 8  # negative case: without the class, the big-GPU batch
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        main(["--arch", "2b", "--gpu-class", "t4", "--memory-cap-gib", "16", "--out", str(out)])
    assert not out.exists()
