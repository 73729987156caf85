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
    assert set(report["bench_distillation"]["methods"]) == {"opsd", "sdpo"}
    assert json.loads((tmp_path / "gpu_check.json").read_text())["ok"]
