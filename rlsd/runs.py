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

METHOD_ORDER = ("grpo", "rlsd", "opsd", "opsd_online", "sdpo", "grpo_opsd", "rlsd_const")
METHOD_LABEL = {"base": "Base", "grpo": "GRPO", "rlsd": "RLSD", "opsd": "OPSD", "opsd_online": "OPSD (online)",
                "sdpo": "SDPO", "grpo_opsd": "GRPO+OPSD", "rlsd_const": "RLSD, constant λ"}


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


# ------------------------------------------------------------------------------------------------------------------
# Analysis helpers for the notebooks (02 leakage, 03 training): pure functions of the logs above, so a claim's
# verdict is computed from data/runs/<profile> by code and can be unit-tested on small synthetic logs.


def with_base_eval(runs: dict, base_record: dict | None, step: int = 0) -> dict:
    """A copy of `runs` in which every seed's evaluation list starts with `base_record` at `step`.

    The warm start is the same model for every run, so its test evaluation (reproduce's base_eval.json,
    "student/none") is the step-0 point of every learning curve. Seeds with no evaluation of their own (a run that
    has not reached its first one), or one at or before `step` already, are left as they are; `base_record=None`
    returns an unchanged copy. The inserted record is marked `"from_base": True`.
    """
    out = {}
    for name, per_seed in runs.items():
        out[name] = {}
        for seed, logs in per_seed.items():
            evals = list(logs.get("eval", []))
            if base_record is not None and evals and evals[0]["step"] > step:
                evals.insert(0, {**base_record, "step": step, "seed": seed, "method": name, "from_base": True})
            out[name][seed] = {**logs, "eval": evals}
    return out


def _ranks(values) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation; NaN when there are fewer than 3 points or either side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"spearman: lengths differ ({len(x)} vs {len(y)})")
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def trend(per_seed: dict[int, dict], key: str, kind: str = "eval") -> list[float]:
    """Per seed: the Spearman correlation of `key` with the step (NaN where undefined)."""
    out = []
    for logs in per_seed.values():
        steps, values = curve(logs[kind], key)
        out.append(spearman(steps, values))
    return out


def window_mean(per_seed: dict[int, dict], key: str, frac: float = 0.1, kind: str = "metrics",
                first: bool = False) -> list[float]:
    """Per seed: the mean of `key` over the last (or, with `first`, the first) `frac` of its records (at least
    one record)."""
    out = []
    for logs in per_seed.values():
        _, values = curve(logs[kind], key)
        if len(values):
            k = max(1, int(np.ceil(frac * len(values))))
            out.append(float(values[:k].mean() if first else values[-k:].mean()))
    return out


def run_mean(per_seed: dict[int, dict], key: str, kind: str = "metrics") -> list[float]:
    """Per seed: the mean of `key` over all its records."""
    return window_mean(per_seed, key, frac=1.0, kind=kind)


def pooled_std(a: list[float], b: list[float]) -> float:
    """sqrt of the mean of the two sample variances (a side with fewer than 2 values contributes 0)."""
    var = [statistics.variance(v) if len(v) > 1 else 0.0 for v in (a, b)]
    return float(np.sqrt(sum(var) / 2))


def exceeds(a: list[float], b: list[float], spreads: float = 2.0) -> dict:
    """Is mean(a) > mean(b) + spreads x pooled std? Returns the numbers and `holds` (None if a side is empty)."""
    if not a or not b:
        return {"diff": None, "pooled_std": None, "margin": None, "holds": None}
    diff = statistics.fmean(a) - statistics.fmean(b)
    pooled = pooled_std(a, b)
    return {"diff": diff, "pooled_std": pooled, "margin": spreads * pooled, "holds": bool(diff > spreads * pooled)}


def peak_and_final(per_seed: dict[int, dict], key: str = "accuracy", kind: str = "eval") -> dict:
    """The seed-mean curve of `key` (on the steps all seeds share): its first, peak and final points, with the
    std over seeds at each. Empty dict when there is no data."""
    curves = [curve(v[kind], key) for v in per_seed.values()]
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return {}
    n = min(len(c[0]) for c in curves)
    steps = curves[0][0][:n]
    ys = np.stack([c[1][:n] for c in curves])
    mean = ys.mean(0)
    std = ys.std(0, ddof=1) if len(ys) > 1 else np.zeros(n)
    i = int(np.argmax(mean))
    return {"steps": steps.tolist(), "mean": mean.tolist(), "std": std.tolist(), "n": len(ys),
            "first_step": int(steps[0]), "first": float(mean[0]), "first_std": float(std[0]),
            "peak_step": int(steps[i]), "peak": float(mean[i]), "peak_std": float(std[i]),
            "final_step": int(steps[-1]), "final": float(mean[-1]), "final_std": float(std[-1])}


def steps_to_threshold_table(runs: dict, threshold: float, key: str = "accuracy",
                             methods: list[str] | None = None) -> list[dict]:
    """One row per method: the first evaluated step at which each seed reaches `threshold` (None: never), how many
    seeds reach it, and the median over seeds counting "never" as infinitely late (None if the median is "never")."""
    rows = []
    for m in methods or [m for m in METHOD_ORDER if m in runs] + sorted(set(runs) - set(METHOD_ORDER)):
        if m not in runs:
            continue
        per_seed = steps_to_reach(runs[m], threshold, key)
        ordered = sorted(float("inf") if s is None else s for s in per_seed)
        median = statistics.median(ordered) if ordered else float("inf")
        rows.append({"method": m, "seeds": dict(zip(runs[m], per_seed)),
                     "reached": sum(s is not None for s in per_seed), "n": len(per_seed),
                     "median_steps": None if median == float("inf") else median})
    return rows


def leak_examples(runs: dict, methods: list[str], clean_methods: list[str] | None = None, k: int = 3,
                  is_leak=None) -> list[dict]:
    """Up to `k` leaked responses (from samples.jsonl of `methods`), latest step first, one per problem, each with a
    clean response to the SAME problem for comparison (the same step of a `clean_methods` run if there is one,
    else any non-leaking sample of that problem, latest first; None if there is none).

    `is_leak(response) -> bool` defaults to `rlsd.testbed.mentions_reference`. samples.jsonl keeps only the first
    few test problems of each evaluation, so this shows examples; rates come from eval.jsonl.
    """
    if is_leak is None:
        from rlsd.testbed import mentions_reference as is_leak

    def samples(names):
        for name in names:
            for seed, logs in runs.get(name, {}).items():
                for s in logs.get("samples", []):
                    yield {**s, "method": name, "seed": seed}

    leaked = sorted((s for s in samples(methods) if is_leak(s["response"])), key=lambda s: -s["step"])
    clean = [s for s in samples(list(clean_methods or []) + list(methods)) if not is_leak(s["response"])]
    clean_first = set(clean_methods or [])
    picked, seen = [], set()
    for s in leaked:
        if s["id"] in seen:
            continue
        same = [c for c in clean if c["id"] == s["id"]]
        same.sort(key=lambda c: (c["method"] not in clean_first, c["step"] != s["step"], -c["step"]))
        picked.append({**s, "clean": same[0] if same else None})
        seen.add(s["id"])
        if len(picked) == k:
            break
    return picked


def sample_rate(runs: dict, method: str, predicate) -> tuple[int, int]:
    """(how many, out of how many) samples.jsonl responses of `method` satisfy `predicate`."""
    responses = [s["response"] for logs in runs.get(method, {}).values() for s in logs.get("samples", [])]
    return sum(bool(predicate(r)) for r in responses), len(responses)


def format_spread(values: list[float] | dict, scale: float = 100.0, digits: int = 1) -> str:
    """'mean ± std [min–max] (n=k)' of values (or of a mean_spread dict), scaled (x100: percentages)."""
    s = values if isinstance(values, dict) else mean_spread(list(values))
    if not s["n"]:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return (f"{f.format(s['mean'] * scale)} ± {f.format(s['std'] * scale)} "
            f"[{f.format(s['min'] * scale)}–{f.format(s['max'] * scale)}] (n={s['n']})")


def verdict(holds: bool | None, n_seeds: int, min_seeds: int = 3) -> str:
    """'yes' / 'no' by a criterion, or 'undetermined' when there are too few seeds or no data."""
    if holds is None:
        return "undetermined (no data)"
    if n_seeds < min_seeds:
        return f"undetermined (n={n_seeds} < {min_seeds} seeds)"
    return "yes" if holds else "no"


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub-style Markdown table of `rows` (dicts), columns in the given order (default: the first row's)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def response_flags(problem, response: str) -> dict:
    """How evaluation classifies one testbed response: does it mention a reference (`leak`), which answer it gives,
    which answer its own written steps support, and whether the two differ (`unsupported`, as in
    `unsupported_answer_rate`)."""
    from rlsd.evaluate import _thought
    from rlsd.testbed import mentions_reference, supported_answer
    from rlsd.verifier import extract_answer

    answer = extract_answer(response)
    supported = supported_answer(problem, _thought(response)) if "family" in problem.meta else None
    return {"leak": mentions_reference(response), "answer": answer, "supported": supported,
            "unsupported": answer is not None and "family" in problem.meta and supported != answer}


# ------------------------------------------------------------------------------------------------------------------
# Paired endpoints (issue: statistics a reviewer accepts). Runs of different methods with the same seed share their
# prompts and sampling seeds, so differences are taken seed by seed and summarised by their mean and paired
# standard error -- much tighter than comparing two unpaired means.


def per_seed_auc(per_seed: dict[int, dict], key: str = "accuracy", last_step: int | None = None) -> dict[int, float]:
    """Per seed: the area under the test curve of `key` divided by its step span (trapezoids; a mean level), over
    the evaluations up to `last_step` (all by default)."""
    out = {}
    for seed, logs in per_seed.items():
        steps, values = curve(logs["eval"], key)
        if last_step is not None:
            steps, values = steps[steps <= last_step], values[steps <= last_step]
        if len(steps) >= 2:
            out[seed] = float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))
    return out


def per_seed_final(per_seed: dict[int, dict], key: str = "accuracy") -> dict[int, float]:
    return {seed: logs["eval"][-1][key] for seed, logs in per_seed.items()
            if logs["eval"] and logs["eval"][-1].get(key) is not None}


def per_seed_peak(per_seed: dict[int, dict], key: str, kind: str = "eval") -> dict[int, float]:
    out = {}
    for seed, logs in per_seed.items():
        _, values = curve(logs[kind], key)
        if len(values):
            out[seed] = float(values.max())
    return out


def per_seed_at(per_seed: dict[int, dict], step: int, key: str = "accuracy") -> dict[int, float]:
    """Per seed: `key` of the evaluation at exactly `step` (seeds without one are left out)."""
    return {seed: r[key] for seed, logs in per_seed.items() for r in logs["eval"]
            if r["step"] == step and r.get(key) is not None}


def per_seed_decline(per_seed: dict[int, dict], key: str = "accuracy") -> dict[int, float]:
    """Per seed: peak - final of the test curve. >= 0 by construction (noise alone makes it positive), so it means
    something only paired against another method's, which carries the same bias."""
    peak, final = per_seed_peak(per_seed, key), per_seed_final(per_seed, key)
    return {s: peak[s] - final[s] for s in final if s in peak}


def per_seed_peak_trailing(per_seed: dict[int, dict], key: str, window: int = 10) -> dict[int, float]:
    """Per seed: the peak of the `window`-step trailing mean of a per-step metric (a noisy rate over 64 rollouts
    is smoothed before its peak is taken; seeds that never logged `key` are left out)."""
    out = {}
    for seed, logs in per_seed.items():
        _, values = curve(logs["metrics"], key)
        if len(values) >= window:
            out[seed] = float(np.convolve(values, np.ones(window) / window, mode="valid").max())
    return out


def per_seed_window(per_seed: dict[int, dict], key: str, first_step: int, last_step: int,
                    kind: str = "metrics") -> dict[int, float]:
    """Per seed: the mean of `key` over the records with first_step <= step <= last_step."""
    out = {}
    for seed, logs in per_seed.items():
        steps, values = curve(logs[kind], key)
        sel = (steps >= first_step) & (steps <= last_step)
        if sel.any():
            out[seed] = float(values[sel].mean())
    return out


def per_seed_steps_to(per_seed: dict[int, dict], threshold: float, key: str = "reward_mean",
                      window: int = 10) -> dict[int, float]:
    """Per seed: the first step at which the `window`-step trailing mean of `key` reaches `threshold`.

    A seed that never reaches it gets its last step + `window` (censored: "later than the run"), so a paired
    difference stays defined and conservative."""
    out = {}
    for seed, logs in per_seed.items():
        steps, values = curve(logs["metrics"], key)
        if not len(values):
            continue
        trailing = np.convolve(values, np.ones(window) / window, mode="valid")
        hit = np.nonzero(trailing >= threshold)[0]
        out[seed] = float(steps[hit[0] + window - 1]) if len(hit) else float(steps[-1] + window)
    return out


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict:
    """a - b seed by seed over the seeds both have: mean, paired standard error, n, and the per-seed values."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if not diffs:
        return {"mean": None, "se": None, "n": 0, "per_seed": {}}
    se = statistics.stdev(diffs) / np.sqrt(len(diffs)) if len(diffs) > 1 else None
    return {"mean": statistics.fmean(diffs), "se": None if se is None else float(se), "n": len(diffs),
            "positive": sum(d > 0 for d in diffs), "per_seed": dict(zip(seeds, diffs))}


# ------------------------------------------------------------------------------------------------------------------
# The reproduction's summary: computed from the logs by code, written to data/runs/<profile>/summary.{json,md}; the
# README and the notebooks show these numbers, never hand-typed ones.

REWARD_THRESHOLD_MARGIN = 0.05
"""Steps-to-threshold endpoint, declared before running: the first step at which a run's 10-step trailing training
reward reaches GRPO's mean training reward over steps 1-10 (pooled over seeds) + this margin."""


def _spread(values: dict[int, float] | list[float]) -> dict:
    return mean_spread(list(values.values()) if isinstance(values, dict) else list(values))


def summarise(runs: dict, base: dict, lambda_steps: int) -> dict:
    """Per run type: endpoints over seeds; per run type vs GRPO: paired differences (mean, paired SE, n)."""
    student = base["student/none"]
    runs = with_base_eval(runs, student)  # the warm start is every test curve's step-0 point
    table = {"base": {
        "accuracy": student["accuracy"], "teacher_format": base["teacher/none"]["accuracy"],
        "blank": base["student/blank"]["accuracy"], "shuffled": base["student/shuffled"]["accuracy"],
        "majority": student["majority_baseline"], "ideal_observer": base["ideal_observer_accuracy"],
        **{f"{fmt}_{k}": base[f"{fmt}/none"].get(k) for fmt in ("student", "teacher")
           for k in ("readout_accuracy_needed", "readout_accuracy_unneeded", "mention_prob")}}}
    grpo = runs.get("grpo", {})
    first = [r["reward_mean"] for logs in grpo.values() for r in logs["metrics"] if r["step"] <= 10]
    threshold = (statistics.fmean(first) + REWARD_THRESHOLD_MARGIN) if first else None
    last_step = max((r["step"] for per_seed in runs.values() for logs in per_seed.values()
                     for r in logs["metrics"]), default=0)
    endpoints = {}
    for name, per_seed in runs.items():
        e = {"auc": per_seed_auc(per_seed), "final": per_seed_final(per_seed),
             "peak_mention_prob": per_seed_peak(per_seed, "mention_prob"),
             "peak_leak_rate": per_seed_peak(per_seed, "leak_rate"),
             "peak_unsupported": per_seed_peak(per_seed, "unsupported_answer_rate"),
             "final_unsupported": per_seed_final(per_seed, "unsupported_answer_rate"),
             "reward_lambda_window": per_seed_window(per_seed, "reward_mean", 1, lambda_steps),
             "reward_after": per_seed_window(per_seed, "reward_mean", lambda_steps + 1, last_step),
             "final_entropy": {s: v for s, v in zip(per_seed, window_mean(per_seed, "entropy"))},
             "clip_frac_ours": {s: v for s, v in zip(per_seed, run_mean(per_seed, "weight_clip_low_frac"))},
             "clip_frac_ours_high": {s: v for s, v in zip(per_seed, run_mean(per_seed, "weight_clip_high_frac"))},
             "clip_frac_authors": {s: v for s, v in zip(per_seed, run_mean(per_seed, "weight_clip_frac_all_tokens"))}}
        e.update({"decline": per_seed_decline(per_seed), "auc_lambda_window": per_seed_auc(per_seed,
                                                                                            last_step=lambda_steps),
                  "acc_step25": per_seed_at(per_seed, 25),
                  "peak_rollout_leak_rate": per_seed_peak_trailing(per_seed, "rollout_leak_rate"),
                  "late_rollout_leak_rate": per_seed_window(per_seed, "rollout_leak_rate",
                                                            last_step - last_step // 4 + 1, last_step),
                  "drift_grad_share_lambda_window": per_seed_window(per_seed, "drift_grad_share", 1, lambda_steps),
                  "drift_grad_projection_lambda_window": per_seed_window(per_seed, "drift_grad_projection", 1,
                                                                         lambda_steps)})
        e = {k: v for k, v in e.items() if v}  # metrics a run never logged (older logs) are left out
        if threshold is not None:
            e["steps_to_reward"] = per_seed_steps_to(per_seed, threshold)
        mention = peak_and_final(per_seed, "mention_prob")
        endpoints[name] = e
        table[name] = {**{k: _spread(v) for k, v in e.items()}, "n_seeds": len(per_seed),
                       # final-evaluation spreads under the names notebook 04's Table-2-style rows read
                       **{k: mean_spread(final_eval(per_seed, k))
                          for k in ("accuracy", "leak_rate", "mention_prob", "unsupported_answer_rate")},
                       "mention_peak_step": mention.get("peak_step"), "accuracy_curve": peak_and_final(per_seed)}
        table[name]["clip_frac_ours"] = _spread({s: e["clip_frac_ours"][s] + e["clip_frac_ours_high"].get(s, 0.0)
                                                 for s in e["clip_frac_ours"]})
        table[name]["final_per_seed"] = [e["final"][s] for s in sorted(e["final"])]
        table[name]["accuracy_per_seed"] = {str(s): [[r["step"], r["accuracy"]] for r in logs["eval"]]
                                            for s, logs in sorted(per_seed.items())}
        peak = per_seed_peak(per_seed, "accuracy")
        drops = [peak[s] - e["final"][s] for s in sorted(e["final"]) if s in peak]
        table[name]["peak_minus_final"] = {
            "mean": statistics.fmean(drops) if drops else None, "n": len(drops),
            "se": statistics.stdev(drops) / np.sqrt(len(drops)) if len(drops) > 1 else None}
    paired = {name: {k: paired_difference(e[k], endpoints["grpo"][k]) for k in
                     ("auc", "final", "steps_to_reward", "reward_lambda_window", "reward_after", "final_entropy",
                      "peak_mention_prob", "peak_leak_rate", "peak_rollout_leak_rate", "late_rollout_leak_rate",
                      "decline", "auc_lambda_window", "acc_step25")
                     if k in e and "grpo" in endpoints and k in endpoints["grpo"]}
              for name, e in endpoints.items() if name != "grpo"}
    entropy = {name: list(zip(window_mean(per_seed, "entropy", first=True), window_mean(per_seed, "entropy")))
               for name, per_seed in runs.items()}
    items = [r["n"] for per_seed in runs.values() for logs in per_seed.values() for r in logs["eval"]
             if not r.get("from_base") and r.get("n")]
    return {"table": table, "paired_vs_grpo": paired, "entropy_first_last": entropy,
            "eval_items": max(items) if items else None, "declared": {
        "reward_threshold": threshold, "lambda_steps": lambda_steps,
        "reward_threshold_rule": f"GRPO's mean training reward over steps 1-10 + {REWARD_THRESHOLD_MARGIN}"}}


def _pm(d: dict | None, scale: float = 100.0, digits: int = 1, se: bool = False) -> str:
    if not d or d.get("mean") is None:
        return "—"
    spread = d.get("se") if se else d.get("std")
    text = f"{d['mean'] * scale:+.{digits}f}" if se else f"{d['mean'] * scale:.{digits}f}"
    if spread is not None:
        text += f" ± {spread * scale:.{digits}f}"
    if se:
        text += f" ({d.get('positive', 0)}/{d['n']})"
    return text


def summary_markdown(summary: dict) -> str:
    """The two tables the README and notebook 03 show: endpoints per run type, and paired differences vs GRPO."""
    t, paired = summary["table"], summary["paired_vs_grpo"]
    names = [m for m in METHOD_ORDER if m in t] + sorted(set(t) - set(METHOD_ORDER) - {"base"})
    label = METHOD_LABEL
    items = summary.get("eval_items")
    lines = [f"Warm start{f' on the runs’ evaluation slice (the first {items:,} test problems)' if items else ''}: student "
             f"{t['base']['accuracy'] * 100:.1f}%, teacher format "
             f"{t['base']['teacher_format'] * 100:.1f}%, blank images {t['base']['blank'] * 100:.1f}%, shuffled "
             f"{t['base']['shuffled'] * 100:.1f}%, majority {t['base']['majority'] * 100:.1f}%, ideal observer "
             f"{t['base']['ideal_observer'] * 100:.1f}%.", "",
             "| run | seeds | test accuracy, final % | area under test curve % | peak P(mention) % (step) "
             "| peak unsupported % | final entropy (nats) | clip % (ours / authors') |",
             "|---|---|---|---|---|---|---|---|"]
    for n in names:
        r = t[n]
        lines.append(f"| {label.get(n, n)} | {r['n_seeds']} | {_pm(r['final'])} | {_pm(r['auc'])} | "
                     f"{_pm(r['peak_mention_prob'], digits=2)} ({r['mention_peak_step']}) | "
                     f"{_pm(r['peak_unsupported'])} | {_pm(r['final_entropy'], 1.0, 3)} | "
                     f"{_pm(r['clip_frac_ours'])} / {_pm(r['clip_frac_authors'])} |")
    d = summary["declared"]
    lines += ["", f"Paired by seed against GRPO (mean difference ± paired standard error, (seeds with a positive "
              f"difference / seeds)); steps to a training reward of {d['reward_threshold'] * 100:.1f}% "
              f"({d['reward_threshold_rule']}); λ window = steps 1–{d['lambda_steps']}:" if d["reward_threshold"]
              is not None else "", "",
              "| run − GRPO | Δ area under test curve, points | Δ final accuracy, points | Δ steps to threshold "
              "| Δ training reward while λ > 0, points | Δ training reward after, points | Δ final entropy (nats) |",
              "|---|---|---|---|---|---|---|"]
    for n in names:
        if n == "grpo" or n not in paired:
            continue
        p = paired[n]
        lines.append(f"| {label.get(n, n)} | {_pm(p.get('auc'), se=True)} | {_pm(p.get('final'), se=True)} | "
                     f"{_pm(p.get('steps_to_reward'), 1.0, 0, se=True)} | {_pm(p.get('reward_lambda_window'), se=True)} "
                     f"| {_pm(p.get('reward_after'), se=True)} | {_pm(p.get('final_entropy'), 1.0, 3, se=True)} |")
    return "\n".join(lines) + "\n"
