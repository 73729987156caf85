"""The requirement files stay consistent (same pins except what vLLM forces) and each resolves from wheels.

The resolver tests run pip itself (`pip install --dry-run`, nothing installed) over each file for CPython 3.11 and
3.12 on manylinux x86-64 up to glibc 2.35 (Colab's Ubuntu 22.04), from PyPI alone (`--isolated`: no local
indexes, caches or constraint files of this machine). They need the package index; without it they are skipped,
saying so.
"""

import json
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENT_FILES = ("requirements.txt", "requirements-colab.txt", "requirements-gpu.txt")
PYTHONS = ("3.11", "3.12")
GLIBC_MINORS = range(35, 16, -1)  # manylinux_2_35 (Colab) down to manylinux_2_17 (manylinux2014)
INDEX = "https://pypi.org/simple/"


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
FORCED_BY_VLLM = ("numpy",)  # vllm 0.33 -> mistral_common>=1.11.6 -> numpy<2.4 on Python <= 3.12


def test_gpu_requirements_differ_only_in_torch_vllm_and_what_vllm_forces():
    cpu, gpu = _pins("requirements.txt"), _pins("requirements-gpu.txt")
    assert "vllm" not in cpu  # vLLM pins its own torch; never in the base (CI) environment
    assert cpu["torch"] == "2.13.0" and gpu["torch"] == "2.14.0"
    assert cpu["transformers"] == gpu["transformers"] == "5.20.2"
    same = set(GPU_ONLY) | set(FORCED_BY_VLLM)
    assert {k: v for k, v in gpu.items() if k not in same} == {k: v for k, v in cpu.items() if k not in same}
    assert tuple(int(x) for x in gpu["numpy"].split(".")[:2]) < (2, 4), "mistral_common needs numpy<2.4 on <=3.12"


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


# ----------------------------------------------------------------------------------- pip's resolver, dry run


def _index_reachable() -> bool:
    try:
        with urllib.request.urlopen(INDEX + "pip/", timeout=15) as r:
            return r.status == 200
    except OSError:
        return False


def _installable_lines(name: str) -> list[str]:
    """The file's requirement lines without `-e .` (the project itself: it is not on the index and has no
    dependencies of its own, which pyproject.toml must keep true for the dry run to cover everything)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not project.get("dependencies"), "pyproject.toml declares dependencies: resolve them here too"
    lines = [line.strip() for line in (ROOT / name).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#") and not line.startswith("-e")]


def resolve(name: str, python: str, tmp_path: Path) -> subprocess.CompletedProcess:
    req = tmp_path / f"{Path(name).stem}-{python}.txt"
    req.write_text("\n".join(_installable_lines(name)) + "\n")
    platforms = [a for m in GLIBC_MINORS for a in ("--platform", f"manylinux_2_{m}_x86_64")]
    cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed",
           "--only-binary=:all:", "--target", str(tmp_path / "target"), "--python-version", python,
           "--implementation", "cp", *platforms, "--platform", "manylinux2014_x86_64", "--index-url", INDEX,
           "--quiet", "--report", str(tmp_path / "report.json"), "-r", str(req)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_dry_run_input_keeps_every_pin_but_the_project_itself():
    lines = _installable_lines("requirements.txt")
    assert not any(line.startswith("-") for line in lines)
    assert {line.partition("==")[0].lower() for line in lines} == set(_pins("requirements.txt"))


@pytest.mark.slow
@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("name", REQUIREMENT_FILES)
def test_requirements_resolve_from_wheels(name, python, tmp_path):
    if not _index_reachable():
        pytest.skip(f"{INDEX} is unreachable: pip's resolver cannot be run without the package index")
    result = resolve(name, python, tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert result.returncode == 0, f"{name} on CPython {python}: " + " | ".join(errors or [result.stderr[-800:]])
    report = json.loads((tmp_path / "report.json").read_text())
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in report["install"]}
    for package, version in _pins(name).items():
        assert resolved.get(package.replace("_", "-")) == version, (name, python, package)


@pytest.mark.slow
def test_resolver_check_catches_the_numpy_conflict(tmp_path, monkeypatch):
    """The check fails on the combination that broke requirements-gpu.txt (vllm 0.33 with numpy 2.4.6)."""
    if not _index_reachable():
        pytest.skip(f"{INDEX} is unreachable: pip's resolver cannot be run without the package index")
    bad = tmp_path / "bad.txt"
    bad.write_text("vllm==0.33.0\nnumpy==2.4.6\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    result = resolve("bad.txt", "3.12", tmp_path)
    assert result.returncode != 0 and "numpy" in result.stderr
