"""The Colab / single-GPU front door of notebooks 03 and 04: the first cell (find or clone the repository, install only
on Colab or into a fresh clone with a CUDA torch), the GPU profile picker, the testbed written in the hub layout,
the synthetic benchmark fixtures, and the Table-2 comparison the notebooks draw."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from rlsd import colab  # noqa: E402
from rlsd.benchmarks import answer_as_response, score_responses  # noqa: E402
from rlsd.benchmarks.fixtures import SPLITS, write_fixtures  # noqa: E402
from rlsd.benchmarks.hub import HUB_SOURCES, load_hub_items  # noqa: E402
from rlsd.config import PROFILES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("0[1-6]_*.py"))  # every notebook opens with the same set-up cell
TINY_SFT = REPO / "data" / "tiny-sft"
needs_tiny = pytest.mark.skipif(not (TINY_SFT / "model.safetensors").is_file(), reason="data/tiny-sft not built")


# ---------------------------------------------------------------------------
# The profile picker
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("memory, expected", [
    (14.6, "t4"),  # a T4 reports 14.6 GiB
    (20.0, "t4"), (20.01, "l4"), (22.0, "l4"),  # L4 / A10: ~22 GiB
    (39.4, "l4"), (40.0, "l4"),  # a 40 GB A100 reports 39.4 GiB
    (40.01, "a100"), (79.2, "a100"), (139.8, "a100")])
def test_profile_by_memory(memory, expected):
    assert colab.gpu_class(memory) == expected
    assert colab.pick_gpu_profile(memory) == f"qwen3vl-2b-{expected}"
    assert colab.pick_gpu_profile(memory, "8b") == f"qwen3vl-8b-{expected}"
    assert colab.pick_gpu_profile(memory) in PROFILES


def test_a_gpu_without_bf16_gets_the_fp16_hf_profile():
    name = colab.pick_gpu_profile(31.7, bf16=False)  # a 32 GB V100 (compute capability 7.0)
    assert name == "qwen3vl-2b-t4"
    assert PROFILES[name]["model"]["dtype"] == "float16" and PROFILES[name]["engine"] == "hf"


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "16", None, True])
def test_bad_memory_is_refused(bad):
    with pytest.raises(ValueError, match="GPU memory must be a positive number"):
        colab.gpu_class(bad)


def test_unknown_model_size_is_refused():
    with pytest.raises(ValueError, match="model size must be one of"):
        colab.pick_gpu_profile(16, "4b")


def test_visible_gpu_is_none_without_cuda():
    import torch

    if torch.cuda.is_available():
        info = colab.visible_gpu()
        assert info.memory_gib > 0 and colab.pick_gpu_profile(info.memory_gib, bf16=info.bf16) in PROFILES
    else:
        assert colab.visible_gpu() is None


# ---------------------------------------------------------------------------
# The testbed in the hub's layout
# ---------------------------------------------------------------------------


def test_testbed_hub_dataset_loads_back_unchanged(tmp_path):
    from rlsd.data import load_train_and_eval
    from rlsd.testbed import generate_split

    data = colab.write_testbed_hub_dataset(tmp_path / "set", n=12)
    assert data == f"hf:{tmp_path / 'set'}" and (tmp_path / "set" / colab.HUB_SHARD).is_file()
    train, held_out = load_train_and_eval(data, n_train=100, n_eval=3, seed=0)
    assert len(train) == 9 and len(held_out) == 3
    reference = {p.id: p for p in generate_split("train", 12)}
    assert {p.id for p in train + held_out} == set(reference)
    for problem in train + held_out:
        ref = reference[problem.id]
        assert (problem.question, problem.answer, problem.solution) == (ref.question, ref.answer, ref.solution)
        assert [im.tobytes() for im in problem.images] == [im.tobytes() for im in ref.images]  # PNG: lossless
        assert "family" not in problem.meta  # seen as any hub dataset: no testbed-only metrics
    again = load_train_and_eval(data, n_train=100, n_eval=3, seed=0)
    assert [p.id for p in again[1]] == [p.id for p in held_out]  # the held-out slice is fixed by the seed


def test_testbed_hub_dataset_refuses_a_path_hf_cannot_name(tmp_path):
    with pytest.raises(ValueError, match="cannot be named in hf:"):
        colab.write_testbed_hub_dataset(tmp_path / "a:b", n=2)
    with pytest.raises(ValueError, match="need n >= 1"):
        colab.write_testbed_hub_dataset(tmp_path / "set", n=0)


# ---------------------------------------------------------------------------
# Benchmark fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixtures")
    return write_fixtures(root / "data"), root / "cache"


def test_fixtures_cover_every_scored_split():
    assert {n: s.splits for n, s in HUB_SOURCES.items()} == SPLITS


@pytest.mark.parametrize("name", list(SPLITS))
def test_fixtures_load_through_the_hub_loaders_and_score_their_golds(fixtures, name):
    data_dir, cache = fixtures
    for split in SPLITS[name]:
        items = load_hub_items(name, split, data_dir=data_dir, cache_dir=cache)
        assert len(items) >= 2 and not any(item.images_missing for item in items)
        assert all(item.prompt and item.images and Path(item.images[0]).is_file() for item in items)
        gold = [answer_as_response(name, item) for item in items]
        assert score_responses(name, items, gold)["headline"] == 1.0
        assert score_responses(name, items, gold[1:] + gold[:1])["headline"] < 0.5  # the golds differ


def test_fixture_layouts(fixtures):
    data_dir, cache = fixtures
    assert sorted(p.name for p in (data_dir / "mmmu").iterdir()) == ["Math", "Physics"]  # one folder per subject
    wemath = load_hub_items("wemath", data_dir=data_dir, cache_dir=cache)
    groups = {item.meta["group"]: [] for item in wemath}
    for item in wemath:
        groups[item.meta["group"]].append(item.meta["step"])
    assert groups == {"2steps_1": ["1", "2", "multi"], "3steps_1": ["1", "2", "3", "multi"]}  # complete groups
    multi = load_hub_items("zerobench", "zerobench", data_dir=data_dir, cache_dir=cache)
    assert [len(item.images) for item in multi] == [2, 1]


# ---------------------------------------------------------------------------
# Benchmarks through the notebooks' path, the comparison table and figure
# ---------------------------------------------------------------------------


def fake_result(label: str, scores: dict) -> dict:
    benchmarks = {name: {"score": s, "ci95": None if s is None else [max(0.0, s - 0.1), min(1.0, s + 0.1)],
                         "n_scored": 10} for name, s in scores.items()}
    complete = len(scores) == 5 and None not in scores.values()
    row = {"Avg.": 100 * sum(scores.values()) / 5 if complete else None}
    return {"label": label, "benchmarks": benchmarks, "row": row}


def test_comparison_rows_put_measured_beside_the_paper():
    results = {"base": fake_result("m (base)", {"mmmu": 0.5, "mathvista": 0.25})}
    rows = colab.comparison_rows(results)
    assert [r["Row"] for r in rows] == ["measured: m (base)", "paper: Base LLM", "paper: GRPO", "paper: RLSD"]
    assert list(rows[0]) == ["Row", "MMMU", "MathVista", "Avg."]  # only the benchmarks measured
    assert rows[0]["MMMU"] == "50.0 [40.0–60.0] (n=10)" and rows[0]["Avg."] == ""
    assert rows[3]["MathVista"] == "78.10" and rows[3]["Avg."] == "56.18"


def test_comparison_figure_is_labelled_with_error_bars():
    import matplotlib

    matplotlib.use("Agg")
    full = {"mmmu": 0.5, "mathvista": 0.6, "mathvision": 0.3, "zerobench": 0.1, "wemath": None}
    fig = colab.plot_table2_comparison({"base": fake_result("m (base)", full), "rlsd": fake_result("m + RLSD", full)},
                                       title="t")
    (ax,) = fig.axes
    assert ax.get_ylabel() == "accuracy (%)" and ax.get_title() == "t"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["MMMU", "MathVista", "MathVision", "ZeroBench", "WeMath",
                                                            "Avg."]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["measured: m (base)", "measured: m + RLSD"] and len(legend) == 5
    from matplotlib.container import BarContainer

    bar_sets = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bar_sets) == 5 and [c.errorbar is not None for c in bar_sets] == [True, True, False, False, False]
    assert math.isclose(bar_sets[0].patches[0].get_height(), 50.0)  # measured, in %
    assert math.isclose(bar_sets[4].patches[-1].get_height(), 56.18)  # the paper's RLSD Avg.


@needs_tiny
def test_benchmark_models_on_the_fixtures_with_and_without_an_adapter(fixtures, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from rlsd.model import ModelSpec, load_policy, lora_target_regex

    base, _ = load_policy(ModelSpec(path=str(TINY_SFT)))
    with torch.no_grad():
        peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=lora_target_regex()))
    adapter = tmp_path / "rlsd-s0" / "checkpoint" / "adapter"
    peft_model.save_pretrained(str(adapter))
    assert colab.find_adapters(tmp_path, ("grpo", "rlsd")) == {"rlsd": adapter}

    data_dir, cache = fixtures
    results = colab.benchmark_models(str(TINY_SFT), {"base": None, "rlsd": adapter}, tmp_path / "bench",
                                     labels={"base": "tiny (base)"}, data_dir=str(data_dir), cache_dir=str(cache),
                                     benchmarks=("mathvista", "wemath"), limit=1, max_new_tokens=2, batch_size=2,
                                     progress=False, device="cpu")
    assert list(results) == ["base", "rlsd"]
    assert results["base"]["label"] == "tiny (base)" and results["rlsd"]["label"] == "RLSD"
    assert results["rlsd"]["adapter"] == str(adapter) and results["base"]["adapter"] is None
    assert (tmp_path / "bench" / "rlsd" / "table2_row.json").is_file()
    assert {n: e["n_scored"] for n, e in results["base"]["benchmarks"].items()} == {"mathvista": 1, "wemath": 3}


# ---------------------------------------------------------------------------
# The notebooks' first cell
# ---------------------------------------------------------------------------


def first_cell(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index("# %%\n")
    end = text.index("\n# %%", start + 1)
    return text[start:end] + "\n"


def test_every_notebook_shares_the_same_first_cell():
    cells = [first_cell(path) for path in NOTEBOOKS]
    assert len(cells) == 6 and all(c == cells[0] for c in cells)
    assert "REPO_URL" in cells[0] and "requirements-colab.txt" in cells[0]


RUNNER = textwrap.dedent("""
    import json, os, runpy, subprocess, sys, types
    calls = []
    real_run = subprocess.run
    def run(cmd, *args, **kwargs):
        calls.append(cmd[:2] if cmd[0] == "git" else cmd[1:])
        if cmd[0] == "git":
            return real_run(cmd, *args, **kwargs)
        return subprocess.CompletedProcess(cmd, 0)  # pip: recorded, never run
    subprocess.run = run
    if os.environ.get("FAKE_COLAB"):
        sys.modules["google.colab"] = types.ModuleType("google.colab")
    if os.environ.get("FAKE_CUDA_TORCH"):
        import torch
        torch.version.cuda = "12.4"
    try:
        runpy.run_path(sys.argv[1], run_name="__main__")
    finally:
        print("RESULT " + json.dumps({"calls": calls, "cwd": os.getcwd(), "path0": sys.path[0]}))
""")


def run_first_cell(tmp_path: Path, cwd: Path, **env) -> tuple[subprocess.CompletedProcess, dict | None]:
    import os

    cell = tmp_path / "cell.py"
    cell.write_text(first_cell(NOTEBOOKS[0]), encoding="utf-8")
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if k not in ("RLSD_REPO_URL", "RLSD_CLONE_DIR")} | env
    proc = subprocess.run([sys.executable, str(runner), str(cell)], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=120)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    return proc, None if line is None else json.loads(line[len("RESULT "):])


def test_first_cell_in_the_repository_changes_directory_and_installs_nothing(tmp_path):
    proc, result = run_first_cell(tmp_path, REPO / "notebooks")
    assert proc.returncode == 0, proc.stderr
    assert result["calls"] == [] and Path(result["cwd"]) == REPO and Path(result["path0"]) == REPO
    assert "found at .. (now the working directory); nothing installed" in proc.stdout
    cell_output = proc.stdout.split("RESULT ")[0]
    assert str(REPO) not in cell_output  # the committed outputs show no machine paths


def test_first_cell_on_colab_installs_the_colab_requirements(tmp_path):
    proc, result = run_first_cell(tmp_path, REPO, FAKE_COLAB="1")
    assert proc.returncode == 0, proc.stderr
    assert result["calls"] == [["-m", "pip", "install", "-q", "-r", "requirements-colab.txt"]]


def test_first_cell_without_a_repository_or_url_says_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    proc, result = run_first_cell(tmp_path, tmp_path / "empty")
    assert proc.returncode == 1 and result["calls"] == []
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "set REPO_URL" in lines[0] and "Traceback" not in proc.stderr


def fake_repository(root: Path) -> Path:
    (root / "rlsd").mkdir(parents=True)
    (root / "rlsd" / "__init__.py").write_text("")
    (root / "requirements-colab.txt").write_text("rapidfuzz\n")
    for args in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


@pytest.mark.parametrize("cuda", [False, True])
def test_first_cell_clones_then_installs_only_with_a_cuda_torch(tmp_path, cuda):
    source = fake_repository(tmp_path / "source")
    (tmp_path / "work").mkdir()
    env = {"RLSD_REPO_URL": str(source)} | ({"FAKE_CUDA_TORCH": "1"} if cuda else {})
    proc, result = run_first_cell(tmp_path, tmp_path / "work", **env)
    assert proc.returncode == 0, proc.stderr
    clone = tmp_path / "work" / "rlsd"
    assert (clone / "rlsd" / "__init__.py").is_file() and Path(result["cwd"]) == clone == Path(result["path0"])
    pip = [["-m", "pip", "install", "-q", "-r", "requirements-colab.txt"]]
    assert result["calls"] == [["git", "clone"]] + (pip if cuda else [])
    assert "cloned into" in proc.stdout and ("requirements.txt" in proc.stdout) != cuda
    # run again (a kernel restart in the same folder): the clone is found, nothing is cloned twice
    proc, result = run_first_cell(tmp_path, tmp_path / "work", **env)
    assert proc.returncode == 0 and result["calls"] == [] and "found at" in proc.stdout
