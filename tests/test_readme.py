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
    assert set(BLOCKS) >= {"profiles", "scoring-memory", "bench-smoke"}


def test_the_repository_does_not_cite_files_outside_it():
    offenders = []
    for path in [ROOT / "README.md", *ROOT.glob("rlsd/**/*.py"), *ROOT.glob("notebooks/*.py")]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"DESIGN\.md|\.\./shared|/work/shared", line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:80]}")
    assert offenders == []
