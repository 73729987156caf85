"""The main job: every method of Table 2 x 3 seeds on the testbed, evaluation, and every figure.

    python -m rlsd reproduce --profile cpu      # the CPU reproduction (wall time in the README)
    python -m rlsd reproduce --profile smoke    # minutes; part of CI

Steps:
  1. warm start: the shipped checkpoint `data/tiny-sft` (or train it with `python -m rlsd sft` if it is missing);
  2. the base model's test evaluation (Table 2's "Base" row, and the controls: blank and shuffled images);
  3. GRPO, RLSD, OPSD, SDPO, GRPO+OPSD (+ OPSD with an online teacher, for the trilemma) x seeds, through the
     same trainer, each run resumable (re-running the command continues unfinished runs, skips finished ones);
  4. small logs copied to `data/runs/<profile>/` (metrics, eval, samples, config: enough to redraw every figure);
  5. figures into `figures/` and a summary table (JSON + Markdown) of final test accuracy, mean and spread.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rlsd.config import SHIPPED_TINY, make_config
from rlsd.testbed.evaluation import evaluate_base

REPO = Path(__file__).resolve().parent.parent
LOG_FILES = ("config.json", "metrics.jsonl", "eval.jsonl", "samples.jsonl")
RUN_METHODS = ("grpo", "rlsd", "opsd", "sdpo", "grpo_opsd", "opsd_online")  # the main job
ABLATIONS = ("rlsd_const",)  # separate: python -m rlsd reproduce --profile cpu --methods rlsd_const
# Seeds per run type: the three methods the headline claims compare get 5, the others 3 (seeds 0..n-1; the same
# seed means the same prompts and sampling seeds in every method, so differences are paired by seed).
RUN_SEEDS = {"grpo": 5, "rlsd": 5, "opsd": 5, "sdpo": 3, "grpo_opsd": 3, "opsd_online": 3, "rlsd_const": 3}
# Named variants: (trainer method, extra overrides).
VARIANTS = {"opsd_online": ("opsd", ["opsd_teacher=current"]),  # the trilemma's online teacher
            "rlsd_const": ("rlsd", ["rlsd_decay_steps=0"])}  # the constant-λ ablation


def run_name_config(name: str) -> tuple[str, list[str]]:
    """(trainer method, extra overrides) of a named run variant."""
    method, extra = VARIANTS.get(name, (name, []))
    return method, list(extra)


def seeds_of(name: str, seeds: tuple[int, ...] | None) -> tuple[int, ...]:
    return tuple(seeds) if seeds is not None else tuple(range(RUN_SEEDS.get(name, 3)))


def _train_one(cfg_json: str, threads: int) -> float:
    """One run in a worker process (`--jobs`): a fresh process, `threads` torch threads, the run's wall time."""
    import torch

    from rlsd.config import TrainConfig
    from rlsd.trainer import train

    from rlsd.verifier import default_verifier

    torch.set_num_threads(threads)
    cfg = TrainConfig.from_dict(json.loads(cfg_json))
    t0 = time.time()
    try:
        train(cfg, progress=False)
    finally:  # the verifier's worker processes would otherwise keep this worker, and the pool's shutdown, waiting
        default_verifier.close()
    return time.time() - t0


def run_all(todo: list[tuple[str, object]], jobs: int) -> dict[str, float]:
    """Train every (name, config) in `todo`; jobs > 1: that many single-thread processes side by side.

    Small models on few cores run faster as several 1-thread processes than as one multi-thread process (their
    matrices are too small to keep several threads busy; measured in the README). Results do not depend on it:
    a run's numbers are a function of its config and seed only (tested)."""
    from rlsd.trainer import train

    timings = {}
    if jobs <= 1:
        for name, cfg in todo:
            t0 = time.time()
            train(cfg)
            timings[name] = time.time() - t0
        return timings
    import concurrent.futures
    import multiprocessing

    from tqdm.auto import tqdm

    # spawn, not fork: a forked child would inherit this process's torch thread pool and the verifier's workers
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_one, cfg.to_json(), 1): name for name, cfg in todo}
        for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc=f"runs ({jobs} jobs)"):
            timings[futures[future]] = future.result()
    return timings


def reproduce(profile: str = "cpu", seeds: tuple[int, ...] | None = None, methods: tuple[str, ...] = RUN_METHODS,
              runs_dir: str = "runs", logs_dir: str | None = None, overrides: list[str] | None = None,
              make_figures: bool = True, figures_dir: str | None = None, jobs: int = 1) -> dict:
    from rlsd.runs import load_runs, summarise, summary_markdown

    t_start = time.time()
    logs = Path(logs_dir) if logs_dir else REPO / "data" / "runs" / profile
    model_path = make_config(profile, overrides).model.path
    if not Path(model_path).exists():
        if model_path != SHIPPED_TINY:
            raise FileNotFoundError(f"model {model_path} not found")
        from rlsd.testbed.sft import SFTConfig, train_sft

        print(f"{model_path} missing: training the warm start (python -m rlsd sft)")
        train_sft(SFTConfig(out=model_path))

    probe = make_config(profile, overrides)
    base = evaluate_base(model_path, probe.eval_problems, probe.eval_max_new_tokens, logs)
    todo = []
    for name in methods:
        method, extra = run_name_config(name)
        for seed in seeds_of(name, seeds):
            out = Path(runs_dir) / profile / f"{name}-s{seed}"
            if (out / "checkpoint" / "state.pt").exists() and _finished(out, probe.steps):
                print(f"{name} seed {seed}: finished earlier, skipped")
            else:
                todo.append((f"{name}-s{seed}", make_config(profile, list(overrides or []) + extra, method=method,
                                                            seed=seed, out=str(out))))
    timings = run_all(todo, jobs)
    for name in methods:
        for seed in seeds_of(name, seeds):
            out = Path(runs_dir) / profile / f"{name}-s{seed}"
            dest = logs / f"{name}-s{seed}"
            dest.mkdir(parents=True, exist_ok=True)
            for f in LOG_FILES:
                if (out / f).exists():
                    shutil.copy2(out / f, dest / f)

    # The summary covers every run type logged so far (the main job and any ablation run separately).
    runs = {name: per_seed for name, per_seed in load_runs(logs).items() if name in RUN_METHODS + ABLATIONS}
    previous = json.loads((logs / "summary.json").read_text()) if (logs / "summary.json").exists() else {}
    wall = time.time() - t_start
    main_job = previous.get("main_job_wall_time_s") if tuple(methods) != RUN_METHODS or not timings else wall
    summary = {"profile": profile, "seeds": {name: sorted(per_seed) for name, per_seed in runs.items()},
               "wall_time_s": wall, "main_job_wall_time_s": main_job, "jobs": jobs,
               "run_times_s": {**previous.get("run_times_s", {}), **timings},
               **summarise(runs, base, lambda_steps=probe.rlsd_decay_steps)}
    (logs / "summary.json").write_text(json.dumps(summary, indent=2))
    (logs / "summary.md").write_text(summary_markdown(summary))
    if make_figures:
        draw_figures(logs, suffix="" if profile == "cpu" else f"_{profile}", directory=figures_dir)
    return summary


def resummarise(profile: str = "cpu", logs_dir: str | None = None, make_figures: bool = True,
                figures_dir: str | None = None) -> dict:
    """Recompute summary.json / summary.md (and the figures) from the logs alone, without training."""
    from rlsd.runs import load_runs, summarise, summary_markdown

    logs = Path(logs_dir) if logs_dir else REPO / "data" / "runs" / profile
    previous = json.loads((logs / "summary.json").read_text()) if (logs / "summary.json").exists() else {}
    base = json.loads((logs / "base_eval.json").read_text())
    runs = {name: per_seed for name, per_seed in load_runs(logs).items() if name in RUN_METHODS + ABLATIONS}
    lambda_steps = json.loads((logs / f"rlsd-s{min(runs['rlsd'])}" / "config.json").read_text())["rlsd_decay_steps"] \
        if "rlsd" in runs else make_config(profile).rlsd_decay_steps
    keep = {k: previous[k] for k in ("wall_time_s", "main_job_wall_time_s", "run_times_s") if k in previous}
    summary = {"profile": profile, "seeds": {name: sorted(per_seed) for name, per_seed in runs.items()}, **keep,
               **summarise(runs, base, lambda_steps=lambda_steps)}
    (logs / "summary.json").write_text(json.dumps(summary, indent=2))
    (logs / "summary.md").write_text(summary_markdown(summary))
    if make_figures:
        draw_figures(logs, suffix="" if profile == "cpu" else f"_{profile}", directory=figures_dir)
    return summary


def _finished(out: Path, steps: int) -> bool:
    from rlsd.runs import read_jsonl

    metrics = read_jsonl(out / "metrics.jsonl")
    return bool(metrics) and metrics[-1]["step"] >= steps


def draw_figures(logs: Path, suffix: str = "", directory: str | None = None) -> list[Path]:
    """Training dynamics (Figure 5 style, with the paired run − GRPO difference) and the three leakage measures
    from the logs in `logs` (rlsd.plots.training_dynamics_figure, leakage_figure; notebooks 03 and 02 draw the
    same figures with the same functions)."""
    from rlsd.plots import leakage_figure, save_figure, training_dynamics_figure
    from rlsd.runs import load_runs, with_base_eval

    runs = load_runs(logs)
    base_path = Path(logs) / "base_eval.json"
    base = json.loads(base_path.read_text()) if base_path.exists() else None
    if base is not None:  # the warm start's evaluation is every curve's step-0 point
        runs = with_base_eval(runs, base["student/none"])
    paths = []
    configs = [json.loads(p.read_text()) for p in sorted(Path(logs).glob("rlsd-s*/config.json"))]
    lam_zero = configs[0]["rlsd_decay_steps"] if configs and configs[0]["rlsd_decay_steps"] else None
    items = configs[0]["eval_problems"] if configs else None
    paths += save_figure(training_dynamics_figure(runs, lam_zero, items), f"03_training_dynamics{suffix}", directory)
    paths += save_figure(leakage_figure(runs, base, lam_zero), f"02_leakage{suffix}", directory)
    return list(paths)


def notebook_logs(profile: str, smoke_methods: tuple[str, ...], smoke_seeds: tuple[int, ...] = (0,),
                  root: str | Path | None = None) -> Path | None:
    """The directory of run logs a notebook analyses, or None (with one printed instruction) if there is none.

    `smoke` (CI): runs the real pipeline -- `rlsd.reproduce.reproduce` with the shipped warm start, base evaluation,
    training and log copying -- for `smoke_methods` x `smoke_seeds` at the smoke profile's few steps, into a fresh
    temporary directory, and returns its logs directory (the full runs, with their checkpoints, are deleted at once;
    the small logs at a normal interpreter exit). It runs on ONE torch thread (restored afterwards): the tiny
    model's matrices are too small for a second thread to pay, and when the other core is busy two threads made a
    3-step run ~50x slower (59 s instead of 1.2 s, measured on the 2-core development machine).
    Any other profile: never trains; returns `<root>/data/runs/<profile>` as written by
    `python -m rlsd reproduce --profile <profile>`.
    """
    import atexit
    import shutil
    import tempfile

    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    if profile == "smoke":
        model = root / SHIPPED_TINY
        if not model.exists():
            print(f"The warm start {model} is missing, so the smoke runs are skipped. Train it with "
                  f"`python -m rlsd sft --out {SHIPPED_TINY}` (from the repository root), then re-run this notebook.")
            return None
        import torch

        tmp = Path(tempfile.mkdtemp(prefix="rlsd-smoke-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            reproduce("smoke", seeds=tuple(smoke_seeds), methods=tuple(smoke_methods), runs_dir=str(tmp / "runs"),
                      logs_dir=str(tmp / "logs"), overrides=[f"model.path={model}"], make_figures=False,
                      figures_dir=str(tmp / "figures"))
        finally:
            torch.set_num_threads(threads)
            shutil.rmtree(tmp / "runs", ignore_errors=True)
        return tmp / "logs"
    logs = root / "data" / "runs" / profile
    if not any((d / "metrics.jsonl").exists() for d in logs.glob("*-s*")):
        print(f"No run logs in {logs}. Run the reproduction first (from the repository root):\n\n"
              f"    python -m rlsd reproduce --profile {profile}\n\n"
              f"then re-run this notebook. The analysis cells below are skipped.")
        return None
    if not (logs / "summary.json").exists():
        print(f"{logs}/summary.json is missing: the reproduction has not finished; analysing the runs present.")
    return logs


# ------------------------------------------------------------------------------------------------------------------
# Paired endpoints (issue: statistics a reviewer accepts). Runs of different methods with the same seed share their
# prompts and sampling seeds, so differences are taken seed by seed and summarised by their mean and paired
# standard error -- much tighter than comparing two unpaired means.
