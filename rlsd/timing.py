"""How long a notebook's GPU section will take, from costs measured on the GPU it runs on, and sizes that fit a budget.

    costs = measure_costs(profile, overrides)            # one RLSD step on the real batch (rlsd.bench), ~1 step
    plan = fit_session(costs, steps=20, bench_limit=20, budget_min=60)
    print(plan_markdown(plan))                            # the estimate, part by part, and what was shrunk

Why: a free Colab session ends after a few hours, and HF generate on a T4 decodes ~0.1-0.3 s per token step at 2B,
so the paper-shaped defaults (two methods x 20 steps, evaluations, three models x five benchmarks x 2,048 tokens)
would run past it. The notebook measures before it commits, prints the estimate, and (by default) shrinks the
steps, then the benchmark items, until the estimate fits.

The model, all upper bounds on purpose:
    training     steps x methods x the measured RLSD step (GRPO's is shorter: no teacher pass)
    evaluation   evaluations x ceil(problems / batch) x max_new_tokens x decode step
    benchmarks   models x benchmarks x ceil(items / batch) x max_new_tokens x decode step
Decoding a step costs nearly the same for 8 rows as for 64 at these sizes (memory-bound; measured on an H200 in
data/gpu_check), so a generate call costs max_new_tokens decode steps whatever its batch; every response is
assumed to run to its budget (most stop earlier, so the real time is lower).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Costs:
    """What one GPU measured (seconds)."""

    step_s: float
    """One RLSD optimizer step of the profile: rollout + teacher pass + update."""
    decode_step_s: float
    """One decode step of a generate call (the rollout's time / its max_new_tokens)."""
    device: str = ""
    """The device the costs were measured on (printed beside the estimate)."""


@dataclass(frozen=True)
class Session:
    """The sizes of a notebook's GPU section."""

    steps: int
    """Optimizer steps per method."""
    methods: int = 2
    """Methods trained (GRPO and RLSD)."""
    evaluations: int = 2
    """Held-out evaluations per method."""
    eval_problems: int = 200
    """Problems per evaluation."""
    eval_max_new_tokens: int = 512
    """Response budget of an evaluation."""
    eval_batch: int = 16
    """Problems per generate call in an evaluation."""
    bench_models: int = 3
    """Models benchmarked (the base and each adapter)."""
    bench_splits: int = 5
    """Benchmark splits (the paper's five benchmarks)."""
    bench_limit: int | None = 20
    """Items per split (None: the full split; `bench_full_items` then)."""
    bench_full_items: int = 1000
    """Items assumed for a full split in the estimate."""
    bench_max_new_tokens: int = 2048
    """Response budget of the benchmark pass."""
    bench_batch: int = 8
    """Benchmark items per generate call."""


def estimate_minutes(costs: Costs, s: Session) -> dict[str, float]:
    """Upper-bound minutes of each part and the total."""
    if costs.step_s <= 0 or costs.decode_step_s <= 0:
        raise ValueError(f"measured costs must be positive, got {asdict(costs)}")
    items = s.bench_full_items if s.bench_limit is None else s.bench_limit
    parts = {
        "training": s.steps * s.methods * costs.step_s,
        "evaluation": s.methods * s.evaluations * math.ceil(s.eval_problems / s.eval_batch) * s.eval_max_new_tokens
        * costs.decode_step_s,
        "benchmarks": s.bench_models * s.bench_splits * math.ceil(items / s.bench_batch) * s.bench_max_new_tokens
        * costs.decode_step_s,
    }
    out = {k: v / 60 for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def fit_session(costs: Costs, session: Session, budget_min: float = 60.0, min_steps: int = 2,
                min_eval_problems: int = 32, min_bench_limit: int = 2) -> dict:
    """The session as asked if it fits `budget_min`; otherwise, until it fits, halved in this order: the steps (down
    to `min_steps`), the evaluation problems (down to `min_eval_problems`), the benchmark items (down to
    `min_bench_limit`), the benchmark response budget (down to 512 tokens). Returns {asked, chosen, estimate (minutes), asked_estimate, fits, changes}."""
    asked, s = session, session
    while estimate_minutes(costs, s)["total"] > budget_min:
        if s.steps > min_steps:
            s = replace(s, steps=max(min_steps, s.steps // 2))
        elif s.eval_problems > min_eval_problems:
            s = replace(s, eval_problems=max(min_eval_problems, s.eval_problems // 2))
        elif s.bench_limit is None or s.bench_limit > min_bench_limit:
            limit = s.bench_full_items if s.bench_limit is None else s.bench_limit
            s = replace(s, bench_limit=max(min_bench_limit, limit // 2))
        elif s.bench_max_new_tokens > 512:
            s = replace(s, bench_max_new_tokens=max(512, s.bench_max_new_tokens // 2))
        else:
            break
    names = {"steps": "steps per method", "eval_problems": "evaluation problems", "bench_limit": "benchmark items per "
             "split", "bench_max_new_tokens": "benchmark response budget (tokens)"}
    changes = [f"{label} {getattr(asked, f)} -> {getattr(s, f)}" for f, label in names.items()
               if getattr(asked, f) != getattr(s, f)]
    estimate = estimate_minutes(costs, s)
    return {"asked": asked, "chosen": s, "estimate": estimate, "asked_estimate": estimate_minutes(costs, asked),
            "fits": estimate["total"] <= budget_min, "budget_min": budget_min, "changes": changes, "costs": costs}


def plan_markdown(plan: dict) -> str:
    """The estimate as a short table, and what was shrunk to fit."""
    c, e, a = plan["costs"], plan["estimate"], plan["asked_estimate"]
    lines = [f"Measured{' on ' + c.device if c.device else ''}: one RLSD step {c.step_s:.1f} s, one decode step "
             f"{c.decode_step_s * 1000:.0f} ms. Estimated minutes (upper bounds: every response runs to its budget):",
             "", "| part | as asked | chosen |", "|---|---|---|"]
    for part in ("training", "evaluation", "benchmarks", "total"):
        lines.append(f"| {part} | {a[part]:.0f} | {e[part]:.0f} |")
    if plan["changes"]:
        lines.append(f"\nTo fit {plan['budget_min']:.0f} minutes: " + "; ".join(plan["changes"]) + ".")
    if not plan["fits"]:
        lines.append(f"\nEven the smallest sizes need about {e['total']:.0f} minutes: more than the "
                     f"{plan['budget_min']:.0f}-minute budget.")
    return "\n".join(lines)


def measure_costs(profile: str, overrides: list[str] | None = None) -> Costs:
    """One RLSD step of `profile` on its real batch (rlsd.bench.run_bench, one repeat), and its decode-step cost."""
    import torch

    from rlsd.bench import run_bench
    from rlsd.config import make_config

    cfg = make_config(profile, overrides, method="rlsd")
    t = run_bench(profile, overrides, repeats=1, methods=("rlsd",))["methods"]["rlsd"]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return Costs(step_s=t["step_s"], decode_step_s=t["rollout_s"] / cfg.max_new_tokens, device=device)
