"""What cannot run is refused in one line before any download (the CUDA state is mocked: this machine has none)."""

import pytest

from rlsd import preflight
from rlsd.__main__ import main as cli_main
from rlsd.config import make_config
from rlsd.preflight import DeviceState, PreflightError, check

NO_GPU = DeviceState(cuda=False)
T4 = DeviceState(cuda=True, name="Tesla T4", memory_gib=15.0, capability=(7, 5))
L4_VLLM = DeviceState(cuda=True, name="NVIDIA L4", memory_gib=22.5, capability=(8, 9), vllm_installed=True)


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_gpu_profile_without_cuda_is_refused_unless_device_is_cpu():
    cfg = make_config("qwen3vl-2b-t4", method="grpo")
    assert cfg.device == "cuda"
    with pytest.raises(PreflightError, match="no CUDA device") as err:
        check(cfg, NO_GPU)
    assert "device=cpu" in _one_line(err)
    check(make_config("qwen3vl-2b-t4", ["device=cpu"], method="grpo"), NO_GPU)  # the user said so
    check(cfg, T4)  # the profile on its GPU
    check(make_config("smoke"), NO_GPU)  # CPU profiles: device=auto


def test_bf16_below_compute_capability_8_is_refused():
    cfg = make_config("qwen3vl-2b-l4", ["engine=hf"], method="grpo")
    with pytest.raises(PreflightError, match=r"compute capability 7\.5") as err:
        check(cfg, T4)
    assert "model.dtype=float16" in _one_line(err)
    check(make_config("qwen3vl-2b-t4", method="grpo"), T4)  # float16: fine
    check(cfg, L4_VLLM)  # 8.9 has bf16
    check(make_config("qwen3vl-2b-l4", ["engine=hf", "device=cpu"], method="grpo"), T4)  # not on the GPU at all


def test_fp16_full_fine_tuning_is_refused_by_the_config():
    with pytest.raises(ValueError, match="model.dtype") as err:
        make_config("smoke", ["model.dtype=float16"])  # smoke trains all parameters (lora_rank=0)
    assert "lora_rank" in _one_line(err)
    assert make_config("smoke", ["model.dtype=float16", "model.lora_rank=8"]).model.dtype == "float16"
    assert make_config("smoke", ["model.dtype=bfloat16"]).model.lora_rank == 0


def test_a_vllm_pool_that_cannot_hold_the_weights_is_refused():
    cfg = make_config("qwen3vl-8b-l4", method="rlsd")
    check(cfg, L4_VLLM)  # the profile's own plan fits
    small = DeviceState(cuda=True, name="16 GiB bf16 GPU", memory_gib=16.0, capability=(8, 6), vllm_installed=True)
    with pytest.raises(PreflightError, match="vLLM needs") as err:
        check(cfg, small)
    assert "engine=hf" in _one_line(err)
    check(make_config("qwen3vl-8b-l4", ["engine=hf"], method="rlsd"), small)  # HF generate has no pool
    # Without vLLM installed the trainer falls back to HF generate: nothing to refuse.
    check(cfg, DeviceState(cuda=True, memory_gib=16.0, capability=(8, 6), vllm_installed=False))


def test_a_hand_set_vllm_share_too_small_for_the_weights_is_refused():
    cfg = make_config("qwen3vl-8b-l4", method="rlsd")
    env = {preflight.ENV_GPU_MEMORY_UTILIZATION: "0.3"}  # the old default: 6.75 GiB of an L4
    with pytest.raises(PreflightError, match="RLSD_VLLM_GPU_MEMORY_UTILIZATION=0.3") as err:
        check(cfg, L4_VLLM, env=env)
    assert "weights (7.0 GiB)" in _one_line(err)
    check(cfg, L4_VLLM, env={preflight.ENV_GPU_MEMORY_UTILIZATION: "0.6"})


def test_the_cli_refuses_in_one_line_before_loading_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(preflight, "visible_device", lambda: NO_GPU)

    def no_download(*a, **k):
        raise AssertionError("data or model loaded before the refusal")

    monkeypatch.setattr("rlsd.trainer.load_training_problems", no_download)
    monkeypatch.setattr("rlsd.trainer.load_policy", no_download)
    code = cli_main(["train", "--method", "grpo", "--profile", "qwen3vl-2b-t4", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no CUDA device" in err[0]
    assert not (tmp_path / "run").exists()
