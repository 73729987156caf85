"""The README's generated blocks are up to date with their sources, and nothing in the repo cites files outside it."""

import re
from pathlib import Path

from rlsd.readme import BLOCKS, render

ROOT = Path(__file__).resolve().parents[1]


def test_every_generated_block_is_current():
    text = (ROOT / "README.md").read_text()
    assert render(text) == text, "stale: run `python -m rlsd readme`"
    assert "<!-- profiles:begin" in text


def test_render_replaces_only_between_markers():
    text = "intro\n<!-- profiles:begin x -->\nold table\n<!-- profiles:end -->\noutro\n"
    out = render(text)
    assert out.startswith("intro\n<!-- profiles:begin x -->\n| profile |") and out.endswith("<!-- profiles:end -->\noutro\n")
    assert set(BLOCKS) >= {"profiles", "scoring-memory", "bench-testbed"}


def test_the_repository_does_not_cite_files_outside_it():
    offenders = []
    for path in [ROOT / "README.md", *ROOT.glob("rlsd/**/*.py"), *ROOT.glob("notebooks/*.py")]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"DESIGN\.md|\.\./shared|/work/shared", line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:80]}")
    assert offenders == []


def test_gpu_rollouts_block_renders_a_check_report(tmp_path, monkeypatch):
    import json

    import rlsd.readme as readme

    monkeypatch.setattr(readme, "REPO", tmp_path)
    assert "not measured yet" in readme.gpu_rollouts_block()  # no report: the block says what to run
    (tmp_path / "data" / "gpu_check").mkdir(parents=True)
    variants = {"nf4": dict(base="nf4", shared_prefill=False, cache="dynamic", compile=False, tokens_per_s=480.0,
                            greedy_equal_to_reference=True),
                "nf4+shared": dict(base="nf4", shared_prefill=True, cache="dynamic", compile=False, tokens_per_s=600.0,
                                   greedy_equal_to_reference=True),
                "dense+shared+static+compiled": dict(base="bfloat16", shared_prefill=True, cache="static",
                                                     compile=True, ok=False, error="RuntimeError: boom")}
    report = {"environment": {"gpu": "NVIDIA X"}, "rollouts": {
        "batch": "8 prompts x 8 samples x 128 tokens", "variants": variants,
        "fastest_exact": {"nf4": {"variant": "nf4+shared", "speedup_over_reference": 1.25}}}}
    (tmp_path / "data" / "gpu_check" / "x-rollouts.json").write_text(json.dumps(report))
    text = readme.gpu_rollouts_block()
    assert "| nf4+shared | nf4 | yes | dynamic | no | 600 | yes |" in text
    assert "failed: RuntimeError: boom" in text and "**nf4+shared**, 1.25x" in text


def test_cpu_rehearsal_block_renders_the_report_and_a_failed_stage(tmp_path, monkeypatch):
    import json

    import rlsd.readme as readme

    monkeypatch.setattr(readme, "REPO", tmp_path)
    assert "not measured yet" in readme.cpu_rehearsal_block()
    (tmp_path / "data" / "gpu_check").mkdir(parents=True)
    steps = [dict(step=k, grad_norm=0.5 * k, loss=0.1, time_rollout_s=70.0, time_teacher_s=3.0, time_update_s=10.0)
             for k in (1, 2, 3)]
    report = {"profile": "qwen3vl-2b", "max_new_tokens": 128, "ok": True, "total_s": 600.0,
              "environment": {"cpu_cores": 2, "torch": "2.13.0+cpu", "bitsandbytes": "0.50.2"},
              "build": {"parameters": 2438696960}, "build_s": 52.0,
              "lora_grads": {"lora_B_matrices": 196, "lora_B_with_gradient": 196, "ok": True}, "lora_grads_s": 150.0,
              "train_resume": {"steps": steps, "ok": True}, "train_resume_s": 400.0,
              "memory": {"peak_rss_gib_after": {"build": 5.1, "lora_grads": 7.8, "train_resume": 9.1},
                         "rss_gib_after": {"build": 1.0, "lora_grads": 3.0, "train_resume": 3.5},
                         "weights_estimate_gib": 2.59, "dtype": "bfloat16", "load_in_4bit": True}}
    path = tmp_path / "data" / "gpu_check" / readme.CPU_REHEARSAL_JSON
    path.write_text(json.dumps(report))
    text = readme.cpu_rehearsal_block()
    assert "**passed** in 10.0 min" in text and "| lora_grads | 196/196 LoRA B matrices" in text
    assert "grad norms 0.5, 1, 1.5 | 400 | 9.10 | 3.50 |" in text and "**2.59 GiB**" in text and "**9.10 GiB**" in text
    assert "One RLSD step on this CPU: 83-83 s" in text
    report.update(ok=False, lora_grads={"ok": False, "error": "RuntimeError: no gradient"})
    path.write_text(json.dumps(report))
    text = readme.cpu_rehearsal_block()
    assert "**FAILED**" in text and "| lora_grads | failed: RuntimeError: no gradient |" in text
