"""The two requirement files stay consistent: same pins except torch, vLLM and its bitsandbytes plugin."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(name):
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            package, _, version = line.partition("==")
            assert version, f"{name}: {line!r} is not pinned exactly"
            pins[package.lower()] = version
    return pins


GPU_ONLY = ("torch", "vllm", "vllm-bnb-plugin")


def test_gpu_requirements_differ_only_in_torch_and_vllm():
    cpu, gpu = _pins("requirements.txt"), _pins("requirements-gpu.txt")
    assert "vllm" not in cpu  # vLLM pins its own torch; never in the base (CI) environment
    assert cpu["torch"] == "2.13.0" and gpu["torch"] == "2.14.0"
    assert {k: v for k, v in gpu.items() if k not in GPU_ONLY} == {k: v for k, v in cpu.items() if k != "torch"}


def test_gpu_requirements_pin_what_4bit_vllm_rollouts_need():
    # vLLM >= 0.28 moved bitsandbytes out of tree: without the plugin, quantization="bitsandbytes" is unknown.
    gpu = _pins("requirements-gpu.txt")
    assert gpu["vllm"] == "0.33.0" and gpu["vllm-bnb-plugin"] == "0.0.3"
    major, minor, _ = (int(x) for x in gpu["bitsandbytes"].split("."))
    assert (major, minor) >= (0, 48), "vllm-bnb-plugin 0.0.3 needs bitsandbytes>=0.48.1"
    major, minor, _ = (int(x) for x in gpu["transformers"].split("."))
    assert (5, 16) <= (major, minor) < (5, 21), "vLLM 0.33 needs transformers>=5.16.1,<5.21"


RUNTIME_OWNED = ("torch", "torchvision", "numpy", "pillow", "matplotlib")  # a live Colab kernel has imported these
NEEDED_ON_A_GPU = ("transformers", "tokenizers", "safetensors", "peft", "accelerate", "bitsandbytes", "math-verify",
                   "datasets", "rapidfuzz")


def test_colab_requirements_keep_the_runtimes_torch_and_match_the_base_pins():
    cpu, colab = _pins("requirements.txt"), _pins("requirements-colab.txt")
    assert not set(colab) & set(RUNTIME_OWNED)  # never replaced under a running kernel
    assert set(NEEDED_ON_A_GPU) <= set(colab)
    assert {k: cpu[k] for k in colab} == colab  # same versions as the tested CPU environment
    assert "vllm" not in colab
