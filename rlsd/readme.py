"""The README's numbers, written by code from the files they come from -- never typed by hand.

    python -m rlsd readme            # rewrite every generated block of README.md
    python -m rlsd readme --check    # exit 1 if any block is stale (tests/test_readme.py runs this)

A generated block sits between `<!-- NAME:begin ... -->` and `<!-- NAME:end -->`; `BLOCKS` maps each NAME to the
function that renders it from its source (the profiles table from rlsd.config/rlsd.memory, the cost tables from
data/bench/*.json). A block whose source file is missing renders as a one-line note saying which command makes it.
"""

from __future__ import annotations

import json
import statistics
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
    from rlsd.bench import pooled

    path = BENCH_DIR / f"{name}.json"
    runs = _load(path)
    if runs is None:
        return _missing(path, f"python -m rlsd bench ... --json > data/bench/{name}.json")
    r = pooled(runs)
    b = r["batch"]
    over = f"medians of {r['repeats']} repeats over {r['runs']} runs" if "runs" in r else \
        f"medians of {r['repeats']} repeats"
    lines = [f"Batch: {b['responses']} responses, {b['response_tokens']:,} response tokens, "
             f"{b['prompt_tokens']:,} prompt tokens ({b['prompt_tokens'] / b['responses']:.0f} per response"
             + (f"; RLSD's teacher prompts {b['teacher_prompt_tokens'] / b['responses']:.0f}"
                if "teacher_prompt_tokens" in b else "") + f"); {over}, 2 cores. One no-grad forward "
             f"of the batch: {r['no_grad_forward_s']:.3f} s unshared, {r['no_grad_forward_shared_s']:.3f} s with "
             f"shared prompts.", "",
             "| prompts | method | step (s) | rollout | teacher pass | update |", "|---|---|---|---|---|---|"]
    default = "shared" if r["share_prompts"] else "unshared"
    for key, mode in (("methods", default), ("methods_unshared", "unshared"), ("methods_shared", "shared")):
        for method, t in r.get(key, {}).items():
            lines.append(f"| {mode} | {method} | {t['step_s']:.3f} | {t['rollout_s']:.3f} | {t['teacher_s']:.3f} | "
                         f"{t['update_s']:.3f} |")
    peer = _load(BENCH_DIR / "trl_anchor.json") if name == "bench_anchor" else None
    if peer:
        trl_runs = peer if isinstance(peer, list) else [peer]
        trl = statistics.median(x["median_step_s"] for x in trl_runs)
        ours = r["methods"]["grpo"]["step_s"]
        text = (f"\nTRL {trl_runs[0]['trl']} `GRPOTrainer` on the same batch, same sitting ({len(trl_runs)} runs of "
                f"{trl_runs[0]['timed_steps']} timed steps, alternating with ours): median step **{trl:.3f} s** "
                f"(runs {min(x['median_step_s'] for x in trl_runs):.3f}–{max(x['median_step_s'] for x in trl_runs):.3f};"
                f" generation {statistics.median(x['median_gen_s'] for x in trl_runs):.3f} s). Our GRPO step / TRL's "
                f"= **{ours / trl:.2f}**")
        if isinstance(runs, list) and len(trl_runs) == len(runs) + 1:
            # each of our runs against the mean of the two TRL runs around it
            pair = [o["methods"]["grpo"]["step_s"] / ((a["median_step_s"] + c["median_step_s"]) / 2)
                    for o, a, c in zip(runs, trl_runs, trl_runs[1:])]
            text += f" (each run against the TRL runs on either side: {min(pair):.2f}–{max(pair):.2f})"
        lines.append(text + ".")
    for key, mode in (("", default), ("_unshared", "unshared"), ("_shared", "shared")):
        if f"rlsd_over_grpo{key}" in r:
            lines.append(f"\n{mode} prompts: RLSD / GRPO step = **{r['rlsd_over_grpo' + key]:.2f}**; RLSD's extra "
                         f"time = **{r['rlsd_overhead_over_forward' + key]:.2f}** unshared no-grad forwards.")
    return "\n".join(lines)


def warm_start_block() -> str:
    path = REPO / "data" / "tiny-sft" / "base_eval.json"
    base = _load(path)
    if base is None:
        return _missing(path, "python -m rlsd sft --out data/tiny-sft")
    st, te = base["student/none"], base["teacher/none"]

    def pct(d, key):
        v = d.get(key)
        return "—" if v is None else f"{100 * v:.1f}"

    lines = [f"Test split, {st['n']:,} problems, the paper's validation decoding (T 0.7, top-p 0.8, top-k 20), seed "
             f"{st['seed']} (`data/tiny-sft/base_eval.json`):", "",
             "| | accuracy % [95% CI] |", "|---|---|"]
    for label, key in (("student prompt", "student/none"), ("student prompt, greedy decoding", "student_greedy/none"),
                       ("teacher prompt (question + reference answer)", "teacher/none"),
                       ("student prompt, blank images", "student/blank"),
                       ("student prompt, images shuffled across problems", "student/shuffled")):
        if key in base:
            r = base[key]
            lo, hi = r["accuracy_ci95"]
            lines.append(f"| {label} | {100 * r['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] |")
    lines += [f"| most-common-answer-per-family baseline | {100 * st['majority_baseline']:.1f} |",
              f"| ideal observer (nearest colour prototype per square, no learning) | "
              f"{100 * base['ideal_observer_accuracy']:.1f} |", "",
              "Read-out accuracy (% of \"colour N\" statements that state the true count), student vs teacher prompt "
              "— the teacher should read better only where the answer pins the read-out:", "",
              "| read-outs | student % | teacher % | teacher − student, points |", "|---|---|---|---|"]
    for label, key in (("needed, pinned family `count`", "needed_count"), ("needed, pinned family `pair`", "needed_pair"),
                       ("needed, `sum`", "needed_sum"), ("needed, `diff`", "needed_diff"), ("needed, `most`", "needed_most"),
                       ("not needed (all families)", "unneeded"), ("needed (all families)", "needed")):
        a, b = st.get(f"readout_accuracy_{key}"), te.get(f"readout_accuracy_{key}")
        diff = "—" if a is None or b is None else f"{100 * (b - a):+.1f}"
        lines.append(f"| {label} | {pct(st, 'readout_accuracy_' + key)} | {pct(te, 'readout_accuracy_' + key)} | {diff} |")
    lines += ["", f"P(a response opens with the mention of the reference): teacher prompt "
              f"{pct(te, 'mention_prob')}%, student prompt {100 * st['mention_prob']:.2f}%. Answers that do not follow "
              f"from the response's own steps: student {pct(st, 'unsupported_answer_rate')}%, teacher "
              f"{pct(te, 'unsupported_answer_rate')}%."]
    return "\n".join(lines)


def lr_probe_block() -> str:
    """Training reward per 10-step window of each learning-rate probe (seed 0: every run draws the same prompts and
    sampling seeds at each step, so the windows are paired across rates)."""
    import statistics

    root = REPO / "data" / "runs" / "lr-probe"
    if not root.exists():
        return _missing(root, "the probes in rlsd/config.py's cpu profile comment")
    lines = ["| method | lr | steps 1–10 | 11–20 | 21–30 | 31–40 | mean of 11–40 |", "|---|---|---|---|---|---|---|"]
    for d in sorted(root.iterdir(), key=lambda d: (d.name.split("-")[0], float(d.name.split("-", 1)[1]))):
        cfg = json.loads((d / "config.json").read_text())
        recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
        win = [statistics.fmean(r["reward_mean"] for r in recs if lo <= r["step"] < lo + 10) for lo in (1, 11, 21, 31)]
        lines.append(f"| {cfg['method']} | {cfg['lr']:g} | " + " | ".join(f"{100 * w:.1f}" for w in win) +
                     f" | **{100 * statistics.fmean(win[1:]):.1f}** |")
    return "\n".join(lines)


def reproduction_block() -> str:
    path = REPO / "data" / "runs" / "cpu" / "summary.json"
    summary = _load(path)
    if summary is None or "paired_vs_grpo" not in summary:
        return _missing(path, "python -m rlsd reproduce --profile cpu")
    from rlsd.runs import summary_markdown

    wall = summary.get("main_job_wall_time_s")
    head = f"Wall time of the main job: **{wall / 60:.0f} min** on 2 cores.\n\n" if wall else ""
    return head + summary_markdown(summary)


def claims_block() -> str:
    path = REPO / "data" / "runs" / "cpu" / "summary.json"
    summary = _load(path)
    if summary is None or "paired_vs_grpo" not in summary:
        return _missing(path, "python -m rlsd reproduce --profile cpu")
    from rlsd.claims import claims_markdown, judge
    from rlsd.study import LOGS, judge_study

    study = judge_study(LOGS) if LOGS.exists() else None
    return claims_markdown(judge(summary, _load(REPO / "figures" / "05_credit_shares.json"), study))


def study_block() -> str:
    """The study's pre-registered verdicts (data/runs/study/verdicts.json, written by python -m rlsd study)."""
    from rlsd.study import LOGS, judge_study, verdicts_markdown

    if not LOGS.exists():
        return _missing(LOGS, "python -m rlsd study --part confirm --jobs 2")
    from rlsd.study import CELLS, LAMBDA_WINDOW, SENSITIVITY_SEEDS

    result = judge_study(LOGS)
    runs = ", ".join(f"{name} x {len(seeds)}" for name, seeds in sorted(result["runs"].items()))
    lines = [f"Runs logged: {runs or 'none'}.", "", verdicts_markdown(result)]
    times = _load(LOGS / "run_times.json") or {}
    walls = {k.removeprefix("wall_").split("_jobs")[0]: v for k, v in times.items() if k.startswith("wall_")}
    parts = [f"{part} {v / 60:.0f} min" for part, v in walls.items()]
    if parts:
        lines.append(f"\nWall time, two single-thread processes on 2 cores (`run_times.json`): {', '.join(parts)}; "
                     f"{sum(walls.values()) / 60:.0f} min in all.")
    if all(c in result["runs"] for c in CELLS) and "grpo" in result["runs"]:
        from rlsd.credit import spearman
        from rlsd.runs import load_runs, paired_difference, per_seed_auc, with_base_eval

        logged = with_base_eval(load_runs(LOGS), _load(LOGS / "base_eval.json")["student/none"])
        five = {n: {k: v for k, v in ps.items() if k in SENSITIVITY_SEEDS} for n, ps in logged.items()}
        gain = {c: paired_difference(per_seed_auc(five[c], last_step=LAMBDA_WINDOW),
                                     per_seed_auc(five["grpo"], last_step=LAMBDA_WINDOW))["mean"] for c in CELLS}
        rho = spearman([lam * eps for lam, eps in CELLS.values()], [gain[c] for c in CELLS])
        lines.append(f"Dose-response over the four grid cells (seeds {SENSITIVITY_SEEDS[0]}-{SENSITIVITY_SEEDS[-1]}): "
                     f"Spearman ρ of λ0·ε_w with the mean paired gain = {rho:+.2f}; strongest cell by the declared "
                     f"rule: `{result['strongest_cell']}` (the controls' cell).")
    speed = _load(REPO / "data" / "bench" / "jobs_speedup.json")
    if speed:
        lines.append(f"`--jobs 2` on this machine: {speed['runs']} runs of {speed['steps']} steps took "
                     f"{speed['median_sequential_s']:.0f} s as one 2-thread process after another and "
                     f"{speed['median_parallel_s']:.0f} s as two 1-thread processes side by side (x{speed['speedup']:.2f}, "
                     f"median of {speed['rounds']} alternating rounds; `python -m rlsd bench --jobs-side-by-side`).")
    return "\n".join(lines)


def trl_block() -> str:
    """RLSDGRPOTrainer beside TRL's GRPOTrainer (data/bench/trl_subclass.json, python -m rlsd bench --peer ...)."""
    path = REPO / "data" / "bench" / "trl_subclass.json"
    t = _load(path)
    if t is None:
        return _missing(path, "python -m rlsd bench --peer PATH/trl_anchor.py --methods grpo,rlsd")
    return (f"On the TRL anchor's batch ({t['completions_per_step']} completions x {t['max_completion_length']} "
            f"tokens, tiny Qwen3-VL, LoRA r=8, CPU, {t['torch_threads']} threads, TRL {t['trl']}; {t['rounds']} "
            f"alternating rounds of {t['steps']} steps, first {t['warmup_dropped']} dropped): GRPOTrainer step "
            f"**{t['grpo_step_s']:.2f} s**, RLSDGRPOTrainer **{t['rlsd_step_s']:.2f} s** "
            f"(x{t['rlsd_over_grpo']:.2f}). RLSD's extra time is **{t['rlsd_extra_over_forward']:.2f} no-grad "
            f"forwards** of the batch ({t['no_grad_forward_s']:.2f} s each); the teacher pass alone (teacher-prompt "
            f"tokenization + one no-grad forward) is {t['teacher_over_forward']:.2f} forwards." + _trl_lengths(t))


def _trl_lengths(t: dict) -> str:
    """Why the teacher pass costs what it does: its sequence length beside the student's (older reports lack it)."""
    if "prompt_tokens_mean" not in t:
        return ""
    n, c = t["prompt_tokens_mean"], t["completion_tokens_max"]
    ratio = (n["teacher"] + c) / (n["student"] + c)
    return (f" Its tokenization takes {t['teacher_tokenize_s'] * 1000:.0f} ms (the image placeholders are expanded "
            f"from TRL's image tensors; the image processor does not run again); the rest is the forward, whose "
            f"sequence is {ratio:.2f}x the student's: the teacher prompt is {n['teacher']:.0f} tokens against "
            f"{n['student']:.0f} (the anchor's byte-level tokenizer spells the reference answer and the instruction "
            f"one byte per token), plus up to {c} completion tokens. Per token of sequence, the teacher pass is "
            f"{t['teacher_over_forward'] / ratio:.2f} forwards.")


def gpu_check_block() -> str:
    """The H200 check of the 2B-shaped path (data/gpu_check/*.json, written by python -m rlsd.gpu_check)."""
    main = _load(REPO / "data" / "gpu_check" / "h200-qwen3vl-2b-shape.json")
    chunked = _load(REPO / "data" / "gpu_check" / "h200-qwen3vl-2b-shape-chunked-rollout.json")
    if main is None:
        return _missing(REPO / "data" / "gpu_check", "python -m rlsd.gpu_check --arch 2b --out data/gpu_check")
    env, b = main["environment"], main["bench"]
    peak = max(r["peak_mem_mb"] for r in main["train_resume"]["steps"]) / 1024
    lines = [f"{env['gpu']}, torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
             f"bitsandbytes {env['bitsandbytes']}; a random Qwen3-VL with the 2B model's shapes "
             f"({main['build']['parameters'] / 1e9:.2f} B parameters), profile `{main['profile']}` (NF4 base, LoRA, "
             f"gradient checkpointing), {b['batch']['responses']} responses x {main['max_new_tokens']} tokens:", "",
             "| method | rollout (s) | teacher pass (s) | update (s) | step (s) |", "|---|---|---|---|---|"]
    methods = {**b["methods"], **main.get("bench_distillation", {}).get("methods", {})}
    for m, t in methods.items():
        lines.append(f"| {m} | {t['rollout_s']:.1f} | {t['teacher_s']:.2f} | {t['update_s']:.2f} | {t['step_s']:.1f} |")
    lines += ["", f"RLSD / GRPO step = {b['rlsd_over_grpo']:.2f}; RLSD's extra time = "
              f"{b['rlsd_overhead_over_forward']:.2f} no-grad forwards ({b['no_grad_forward_s']:.2f} s each). `train` "
              f"ran RLSD with checkpoints and resumed; its peak memory was {peak:.1f} GiB (full-vocabulary logits, "
              f"before the projection was chunked)."]
    if chunked:
        lines.append(f"The same check with the rollout generated in update-sized chunks took "
                     f"{chunked['bench']['rollout_s']:.0f} s per rollout instead of {b['rollout_s']:.0f} s: decoding "
                     f"costs nearly the same per token step for 8 rows as for 64, so generation has its own "
                     f"`rollout_batch_size`.")
    return "\n".join(lines)


CPU_REHEARSAL_JSON = "cpu-qwen3vl-2b-rehearsal.json"


def cpu_rehearsal_block() -> str:
    """The 2B-shaped path rehearsed on this machine's CPU (python -m rlsd.gpu_check --arch 2b --device cpu)."""
    path = REPO / "data" / "gpu_check" / CPU_REHEARSAL_JSON
    r = _load(path)
    if r is None:
        return _missing(path, "python -m rlsd.gpu_check --arch 2b --device cpu --out DIR; copy DIR/gpu_check.json")
    env, mem = r["environment"], r["memory"]
    peak, now = mem["peak_rss_gib_after"], mem.get("rss_gib_after", {})

    def row(stage: str, label: str, result: str) -> str:
        done = r.get(stage, {})
        result = f"failed: {done['error'][:80]}" if "error" in done else result
        after = f"{now[stage]:.2f}" if now.get(stage) is not None else "—"
        return f"| {label} | {result} | {r[stage + '_s']:.0f} | {peak[stage]:.2f} | {after} |"

    grads, run = r["lora_grads"], r["train_resume"]
    steps = run.get("steps", [])
    norms = ", ".join(f"{s['grad_norm']:.3g}" for s in steps)
    lines = [f"{env['cpu_cores']} CPU cores, torch {env['torch']}, bitsandbytes {env['bitsandbytes']}; a random "
             f"Qwen3-VL with the 2B model's shapes ({r['build']['parameters'] / 1e9:.2f} B parameters), profile "
             f"`{r['profile']}` on the CPU, 1 prompt x 2 responses x {r['max_new_tokens']} tokens "
             f"(`{path.relative_to(REPO)}`). Overall: **{'passed' if r['ok'] else 'FAILED'}** in "
             f"{r['total_s'] / 60:.1f} min.", "",
             "| stage | result | wall (s) | peak RSS so far (GiB) | RSS after (GiB) |", "|---|---|---|---|---|",
             row("build", "build (bf16 checkpoint written)", f"{r['build']['parameters']:,} parameters"),
             row("lora_grads", "lora_grads", f"{grads.get('lora_B_with_gradient')}/{grads.get('lora_B_matrices')} "
                                            f"LoRA B matrices with a non-zero gradient"),
             row("train_resume", "train_resume",
                 f"steps {[s['step'] for s in steps]} (3 resumed from the step-2 checkpoint); grad norms {norms}")]
    lines += ["", f"`rlsd.memory`'s weight estimate for this model: **{mem['weights_estimate_gib']:.2f} GiB** "
                  f"({'NF4' if mem['load_in_4bit'] else mem['dtype']} layers, {mem['dtype']} for the rest); the "
                  f"process's peak resident memory: **{max(peak.values()):.2f} GiB**, which also holds the Python "
                  f"runtime, torch, the bf16 checkpoint as it is read and quantised, and the batch's activations."]
    if steps:
        per = [s.get("time_rollout_s", 0) + s.get("time_teacher_s", 0) + s.get("time_update_s", 0) for s in steps]
        lines.append(f"One RLSD step on this CPU: {min(per):.0f}-{max(per):.0f} s (rollout + teacher pass + update; "
                     f"the rollout is {min(s['time_rollout_s'] for s in steps):.0f}-"
                     f"{max(s['time_rollout_s'] for s in steps):.0f} s of it).")
    return "\n".join(lines)


def gpu_rollouts_block() -> str:
    """The `rollouts` stage of a GPU check (data/gpu_check/*-rollouts.json): tokens/s per rollout configuration."""
    found = sorted((REPO / "data" / "gpu_check").glob("*-rollouts.json"))
    if not found:
        return _missing(REPO / "data" / "gpu_check" / "h200-qwen3vl-2b-rollouts.json",
                        "python -m rlsd.gpu_check --arch 2b --out DIR; copy DIR/gpu_check.json")
    return rollouts_table(found[-1])


def cpu_rollouts_block() -> str:
    """The same stage on this machine's CPU, tiny random model (data/bench/rollouts_cpu.json)."""
    path = BENCH_DIR / "rollouts_cpu.json"
    if not path.exists():
        return _missing(path, "python -m rlsd.gpu_check --arch tiny --skip lora_grads,bench,train_resume --budget-s 0 "
                              "--max-new-tokens 48 --rollout-runs 5 --out DIR; copy DIR/gpu_check.json")
    return rollouts_table(path)


def rollouts_table(path: Path) -> str:
    report = _load(path)
    r = report["rollouts"]
    device = report["environment"].get("gpu") or f"CPU ({report['arch']} random model)"
    lines = [f"{device}, {r['batch']} (`{path.relative_to(REPO)}`):", "",
             "| configuration | base | shared prefill | KV cache | compiled | tokens/s | greedy = reference |",
             "|---|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        if "skipped" in v:
            speed, same = f"skipped: {v['skipped']}", "—"
        elif "tokens_per_s" in v:
            speed, same = f"{v['tokens_per_s']:,.0f}", "yes" if v.get("greedy_equal_to_reference") else "no"
        else:
            speed, same = f"failed: {v.get('error', '?')[:60]}", "—"
        lines.append(f"| {name} | {v['base']} | {'yes' if v['shared_prefill'] else 'no'} | {v['cache']} | "
                     f"{'yes' if v['compile'] else 'no'} | {speed} | {same} |")
    for base, best in r.get("fastest_exact", {}).items():
        lines.append(f"\nFastest exact configuration on the {base} base: **{best['variant']}**, "
                     f"{best['speedup_over_reference']}x its reference.")
    return "\n".join(lines)


BLOCKS = {
    "gpu-check": gpu_check_block,
    "cpu-rehearsal": cpu_rehearsal_block,
    "gpu-rollouts": gpu_rollouts_block,
    "cpu-rollouts": cpu_rollouts_block,
    "reproduction": reproduction_block,
    "claims": claims_block,
    "study": study_block,
    "lr-probe": lr_probe_block,
    "warm-start": warm_start_block,
    "profiles": profiles_block,
    "scoring-memory": scoring_memory_block,
    "bench-testbed": lambda: bench_block("bench_testbed"),
    "bench-anchor": lambda: bench_block("bench_anchor"),
    "trl": trl_block,
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
