"""The README's numbers, written by code from the files they come from -- never typed by hand.

    python -m rlsd readme            # rewrite every generated block of README.md
    python -m rlsd readme --check    # exit 1 if any block is stale (tests/test_readme.py runs this)

A generated block sits between `<!-- NAME:begin ... -->` and `<!-- NAME:end -->`; `BLOCKS` maps each NAME to the
function that renders it from its source (the profiles table from rlsd.config/rlsd.memory, the cost tables from
data/bench/*.json). A block whose source file is missing renders as a one-line note saying which command makes it.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "data" / "bench"


def _load(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.exists() else None


def _missing(path: Path, command: str) -> str:
    return f"*(not measured yet: `{command}` writes `{path.relative_to(REPO)}`)*"


def profiles_block() -> str:
    from rlsd.memory import profile_table

    return profile_table()


def scoring_memory_block() -> str:
    path = BENCH_DIR / "scoring_memory.json"
    report = _load(path)
    if report is None:
        return _missing(path, "python -m rlsd.bench --out data/bench/scoring_memory.json")
    rows = ["| path | vocabulary | rows x tokens | peak host memory over the model's (MB) | seconds |",
            "|---|---|---|---|---|"]
    label = {"reference": "full B×T×V logits (before)", "chunked": "chunked over positions, recomputed in backward"}
    for r in report:
        rows.append(f"| {label.get(r['path'], r['path'])} | {r['vocab_size']:,} | {r['rows']} x {r['tokens']} | "
                    f"{r['peak_over_baseline_mb']:,.0f} | {r['seconds']:.0f} |")
    return "\n".join(rows)


def bench_block(name: str) -> str:
    path = BENCH_DIR / f"{name}.json"
    r = _load(path)
    if r is None:
        return _missing(path, f"python -m rlsd bench ... --json > data/bench/{name}.json")
    b = r["batch"]
    lines = [f"Batch: {b['responses']} responses, {b['response_tokens']:,} response tokens, "
             f"{b['prompt_tokens']:,} prompt tokens; medians of {r['repeats']} repeats, 2 cores. One no-grad forward "
             f"of the batch: {r['no_grad_forward_s']:.3f} s unshared, {r['no_grad_forward_shared_s']:.3f} s with "
             f"shared prompts.", "",
             "| prompts | method | step (s) | rollout | teacher pass | update |", "|---|---|---|---|---|---|"]
    default = "shared" if r["share_prompts"] else "unshared"
    for key, mode in (("methods", default), ("methods_unshared", "unshared"), ("methods_shared", "shared")):
        for method, t in r.get(key, {}).items():
            lines.append(f"| {mode} | {method} | {t['step_s']:.3f} | {t['rollout_s']:.3f} | {t['teacher_s']:.3f} | "
                         f"{t['update_s']:.3f} |")
    for key, mode in (("", default), ("_unshared", "unshared"), ("_shared", "shared")):
        if f"rlsd_over_grpo{key}" in r:
            lines.append(f"\n{mode} prompts: RLSD / GRPO step = **{r['rlsd_over_grpo' + key]:.2f}**; RLSD's extra "
                         f"time = **{r['rlsd_overhead_over_forward' + key]:.2f}** unshared no-grad forwards.")
    return "\n".join(lines)


BLOCKS = {
    "profiles": profiles_block,
    "scoring-memory": scoring_memory_block,
    "bench-smoke": lambda: bench_block("bench_smoke"),
    "bench-anchor": lambda: bench_block("bench_anchor"),
}


def render(text: str) -> str:
    """`text` with every generated block re-rendered."""
    for name, make in BLOCKS.items():
        begin, end = f"<!-- {name}:begin", f"<!-- {name}:end -->"
        if begin not in text:
            continue
        i = text.index("\n", text.index(begin)) + 1
        j = text.index(end, i)
        text = text[:i] + make().rstrip("\n") + "\n" + text[j:]
    return text


def main(check: bool = False, path: Path = REPO / "README.md") -> int:
    text = path.read_text()
    new = render(text)
    if check:
        stale = new != text
        if stale:
            print(f"{path.name} is stale: run `python -m rlsd readme`")
        return int(stale)
    path.write_text(new)
    return 0
