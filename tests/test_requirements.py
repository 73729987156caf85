"""The two requirement files stay consistent: same pins except torch and vLLM (DESIGN.md §5)."""

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


def test_gpu_requirements_differ_only_in_torch_and_vllm():
    cpu, gpu = _pins("requirements.txt"), _pins("requirements-gpu.txt")
    assert "vllm" not in cpu  # vLLM pins its own torch; never in the base (CI) environment
    assert cpu["torch"] == "2.13.0" and gpu["torch"] == "2.14.0"
    assert {k: v for k, v in gpu.items() if k not in ("torch", "vllm")} == {k: v for k, v in cpu.items() if k != "torch"}
    major, minor, _ = (int(x) for x in gpu["transformers"].split("."))
    assert (5, 16) <= (major, minor) < (5, 21), "vLLM 0.33 needs transformers>=5.16.1,<5.21"
