"""Reading run logs (metrics.jsonl / eval.jsonl) and summarising them over seeds.

Run directories follow `<root>/<method>-s<seed>/`; the small logs of the reproduction live in `data/runs/<profile>/`
so every figure can be redrawn without retraining.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

METHOD_ORDER = ("grpo", "rlsd", "opsd", "opsd_online", "sdpo", "grpo_opsd")
METHOD_LABEL = {"base": "Base", "grpo": "GRPO", "rlsd": "RLSD", "opsd": "OPSD", "opsd_online": "OPSD (online)",
                "sdpo": "SDPO", "grpo_opsd": "GRPO+OPSD"}


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_runs(root: str | Path) -> dict[str, dict[int, dict[str, list[dict]]]]:
    """{run name: {seed: {"metrics": [...], "eval": [...], "samples": [...]}}} for every run directory."""
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for d in sorted(Path(root).glob("*-s*")):
        if not d.is_dir():
            continue
        name, _, seed = d.name.rpartition("-s")
        runs[name][int(seed)] = {"metrics": read_jsonl(d / "metrics.jsonl"), "eval": read_jsonl(d / "eval.jsonl"),
                                 "samples": read_jsonl(d / "samples.jsonl")}
    return dict(runs)


def curve(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts], dtype=float)


def seed_band(per_seed: dict[int, dict], kind: str, key: str, smooth: int = 1):
    """(steps, mean, min, max) of `key` over seeds, on the steps all seeds share; optional moving average."""
    curves = [curve(v[kind], key) for v in per_seed.values()]
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return np.array([]), np.array([]), np.array([]), np.array([])
    n = min(len(c[0]) for c in curves)
    steps = curves[0][0][:n]
    ys = np.stack([c[1][:n] for c in curves])
    if smooth > 1:
        kernel = np.ones(smooth) / smooth
        ys = np.stack([np.convolve(np.pad(y, (smooth - 1, 0), mode="edge"), kernel, mode="valid") for y in ys])
    return steps, ys.mean(0), ys.min(0), ys.max(0)


def final_eval(per_seed: dict[int, dict], key: str = "accuracy") -> list[float]:
    """The last evaluation's `key` of every seed."""
    return [v["eval"][-1][key] for v in per_seed.values() if v["eval"] and v["eval"][-1].get(key) is not None]


def mean_spread(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def steps_to_reach(per_seed: dict[int, dict], threshold: float, key: str = "accuracy") -> list[int | None]:
    """Per seed: the first evaluated step whose `key` is >= threshold (None if never)."""
    out = []
    for v in per_seed.values():
        hit = [r["step"] for r in v["eval"] if r.get(key) is not None and r[key] >= threshold]
        out.append(hit[0] if hit else None)
    return out
