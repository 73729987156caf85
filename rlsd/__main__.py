"""Command line: `python -m rlsd <command> ...`.

    reproduce  THE main job: all methods x seeds on the testbed, evaluation, figures  (rlsd.reproduce)
    train      one training run: --method grpo|rlsd|opsd|sdpo|grpo_opsd  (rlsd.trainer)
    study      the RLSD study: pre-registered confirmation, sensitivity   (rlsd.study)
    bench      step time by phase for every method on the same batch      (rlsd.bench)
    sft        train the tiny model's warm start on the testbed          (rlsd.testbed.sft)
    evaluate   accuracy, leakage and controls of a model on the testbed  (rlsd.evaluate)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One `--field` option per dataclass field, typed by its default, help = the field's docstring."""
    # argparse %-formats help strings; docstrings say "10%" freely.
    docs = {k: v.replace("%", "%%") for k, v in _field_docs(cls).items()}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        name = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(name, type=_parse_bool, default=None, metavar="BOOL", help=docs.get(f.name))
        else:
            parser.add_argument(name, type=type(default) if default is not None else str, default=None,
                                help=docs.get(f.name))


def dataclass_from_args(cls, args: argparse.Namespace, base=None):
    """`base` (or the defaults) with every option given on the command line applied."""
    obj = base if base is not None else cls()
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return dataclasses.replace(obj, **changes)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _field_docs(cls) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass, read from its source."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs, body = {}, tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def cmd_sft(args):
    from rlsd.testbed.sft import SFTConfig, train_sft

    cfg = dataclass_from_args(SFTConfig, args)
    print(json.dumps(train_sft(cfg)))


def cmd_train(args):
    from rlsd.config import TrainConfig, make_config
    from rlsd.trainer import train

    from rlsd.model import ModelSpec

    fields = {k: v for k, v in dict(method=args.method, seed=args.seed, out=args.out).items() if v is not None}
    cfg = make_config(args.profile, args.overrides, **fields)
    if args.out is None and not any(str(o).startswith("out=") for o in args.overrides):
        # named after the RESOLVED method and seed (they may come from overrides or the profile)
        cfg = dataclasses.replace(cfg, out=f"runs/{args.profile}/{cfg.method}-s{cfg.seed}")
    if args.help_config:
        print(f"# profile {args.profile!r} with the given overrides: field = value  (docstring)")
        docs = {**_field_docs(TrainConfig), **{f"model.{k}": v for k, v in _field_docs(ModelSpec).items()}}
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "model"}
        values.update({f"model.{f.name}": getattr(cfg.model, f.name) for f in dataclasses.fields(cfg.model)})
        for name, value in values.items():
            print(f"{name} = {json.dumps(value)}\n    {docs.get(name, '')}")
        return
    records = train(cfg)
    evals = [r for r in records if "split" in r]
    if evals:
        print(json.dumps({k: evals[-1][k] for k in ("step", "method", "seed", "accuracy", "accuracy_ci95",
                                                     "leak_rate", "unsupported_answer_rate")}))


def cmd_reproduce(args):
    from rlsd.reproduce import ABLATIONS, RUN_METHODS, reproduce, resummarise
    from rlsd.runs import summary_markdown

    if args.summary_only:
        print(summary_markdown(resummarise(args.profile, logs_dir=args.logs_dir)))
        return

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None
    methods = tuple(args.methods.split(",")) if args.methods else RUN_METHODS
    unknown = set(methods) - set(RUN_METHODS + ABLATIONS)
    if unknown:
        raise ValueError(f"--methods: unknown run type(s) {sorted(unknown)}; choose from {RUN_METHODS + ABLATIONS}")
    summary = reproduce(args.profile, seeds=seeds, methods=methods, runs_dir=args.runs_dir, logs_dir=args.logs_dir,
                        overrides=args.overrides, jobs=args.jobs)
    print(summary_markdown(summary))
    print(f"wall time: {summary['wall_time_s'] / 60:.1f} min")


def cmd_study(args):
    from rlsd.study import LOGS, judge_study, run_study, verdicts_markdown

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    logs = args.logs_dir or LOGS
    result = judge_study(logs) if args.summary_only else run_study(args.part, args.runs_dir, logs, args.jobs)
    print(verdicts_markdown(result))


def cmd_bench(args):
    from pathlib import Path

    from rlsd.bench import peer_batch, peer_sitting, run_bench

    if args.jobs_side_by_side:
        from rlsd.bench import jobs_side_by_side

        result = jobs_side_by_side()
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "jobs_speedup.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"{result['runs']} runs of {result['steps']} steps: one 2-thread process after another "
              f"{result['median_sequential_s']:.1f} s, side by side {result['median_parallel_s']:.1f} s "
              f"(x{result['speedup']:.2f}); written to {out}/jobs_speedup.json")
        return
    if args.sitting:
        if not args.peer:
            raise ValueError("--sitting needs --peer TRL_ANCHOR_PY")
        trl_runs, our_runs = peer_sitting(args.peer, rounds=args.sitting, repeats=args.repeats,
                                          trl_path=args.trl_path)
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "trl_anchor.json").write_text(json.dumps(trl_runs, indent=1) + "\n")
        (out / "bench_anchor.json").write_text(json.dumps(our_runs) + "\n")
        grpo = sorted(r["methods"]["grpo"]["step_s"] for r in our_runs)
        trl = sorted(r["median_step_s"] for r in trl_runs)
        print(f"our GRPO step {grpo} s; TRL {trl} s; written to {out}/bench_anchor.json, trl_anchor.json")
        return
    overrides = list(args.overrides)
    if args.peer:
        overrides = peer_batch(args.peer, "/tmp/rlsd-peer-batch") + overrides
    methods = tuple(args.methods.split(",")) if args.methods else None
    result = run_bench(args.profile, overrides, repeats=args.repeats, compare_sharing=args.compare_sharing,
                       **({"methods": methods} if methods else {}))
    if args.peer and not args.no_trl_subclass:  # RLSD inside TRL, on the same anchor batch
        from rlsd.integrations.trl_bench import side_by_side

        result["trl_subclass"] = trl = side_by_side(args.peer, rounds=args.trl_rounds)
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "trl_subclass.json").write_text(json.dumps(trl, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    if "trl_subclass" in result:
        t = result["trl_subclass"]
        print(f"TRL: GRPOTrainer step {t['grpo_step_s']:.3f} s, RLSDGRPOTrainer {t['rlsd_step_s']:.3f} s "
              f"(teacher pass {t['rlsd_teacher_s']:.3f} s); extra / no-grad forward = {t['rlsd_extra_over_forward']:.2f}")
    print(f"batch: {result['batch']}  one no-grad forward: {result['no_grad_forward_s']:.3f} s")
    for method, t in result["methods"].items():
        print(f"{method:10s} step {t['step_s']:.3f} s = rollout {t['rollout_s']:.3f} + teacher {t['teacher_s']:.3f}"
              f" + update {t['update_s']:.3f}")
    if "rlsd_over_grpo" in result:
        print(f"rlsd/grpo = {result['rlsd_over_grpo']:.3f}; "
              f"overhead / forward = {result['rlsd_overhead_over_forward']:.2f}")


def cmd_profiles(args):
    from rlsd.memory import profile_table

    print(profile_table())


def cmd_readme(args):
    from rlsd.readme import main as readme_main

    return readme_main(check=args.check)


def cmd_evaluate(args):
    import torch

    from rlsd.evaluate import evaluate
    from rlsd.model import ModelSpec, check_adapter_files, load_adapter, load_policy
    from rlsd.rollout import VALIDATION_SAMPLING
    from rlsd.testbed import load_splits

    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.adapter:
        check_adapter_files(args.adapter)  # before the model loads
    model, processor = load_policy(ModelSpec(path=args.model))
    if args.adapter:
        model = load_adapter(model, args.adapter)
    model.eval()
    _, val, test = load_splits(n_train=0, n_val=args.n if args.split == "val" else None,
                               n_test=args.n if args.split == "test" else None)
    problems = val if args.split == "val" else test
    sampling = dataclasses.replace(VALIDATION_SAMPLING, max_new_tokens=args.max_new_tokens)
    if args.greedy:
        sampling = dataclasses.replace(sampling, temperature=0.0)
    result = evaluate(model, processor, problems, fmt=args.format, control=args.control, sampling=sampling,
                      seed=args.seed, progress=not args.json)
    print(json.dumps(result.summary, indent=None if args.json else 2))


def cmd_benchmark(args):
    from rlsd.benchmarks import BenchmarkFormatError
    from rlsd.benchmarks.hub import BenchmarkDataError
    from rlsd.benchmarks.run import (BenchmarkRunConfig, BenchmarkRunError, parse_benchmarks, readable_table,
                                     run_benchmarks)

    try:
        cfg = BenchmarkRunConfig(
            model=args.model, adapter=args.adapter, benchmarks=parse_benchmarks(args.benchmarks), limit=args.limit,
            data_dir=args.data_dir, out=args.out, cache_dir=args.cache_dir, batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, max_pixels=args.max_pixels, seed=args.seed, device=args.device,
            dtype=args.dtype, load_in_4bit=args.load_in_4bit, label=args.label, progress=not args.no_progress)
        result = run_benchmarks(cfg)
    except (BenchmarkDataError, BenchmarkFormatError, BenchmarkRunError) as error:
        print(f"rlsd benchmark: error: {error}", file=sys.stderr)  # one line, no traceback: a user-facing problem
        raise SystemExit(2) from None
    print(json.dumps(result) if args.json else readable_table(result))


def main(argv=None):
    from rlsd.testbed.sft import SFTConfig

    parser = argparse.ArgumentParser(prog="python -m rlsd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train with one method (any config field: key=value overrides)")
    p.add_argument("--method", choices=["grpo", "rlsd", "opsd", "sdpo", "grpo_opsd"], default=None)
    p.add_argument("--profile", default="cpu",
                   help="smoke | cpu | qwen3vl-{2b,8b}-{t4,l4,a100} (python -m rlsd profiles lists their memory)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="run directory (default runs/<profile>/<method>-s<seed>)")
    p.add_argument("--help-config", action="store_true", help="list every config field with its docstring")
    p.add_argument("overrides", nargs="*", help="field=value, e.g. lr=2e-5 model.lora_rank=8")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reproduce", help="the CPU reproduction: all methods x seeds, evaluation, figures")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds for every run type (default: rlsd.reproduce.RUN_SEEDS, 5 or 3 each)")
    p.add_argument("--methods", default=None,
                   help="comma-separated run types (default: the main job, rlsd.reproduce.RUN_METHODS; the ablation: "
                        "rlsd_const)")
    p.add_argument("--runs-dir", default="runs", help="where full runs (with checkpoints) go")
    p.add_argument("--logs-dir", default=None, help="where the small logs go (default data/runs/<profile>)")
    p.add_argument("--summary-only", action="store_true",
                   help="recompute summary.json/.md and the figures from the logs, without training")
    p.add_argument("overrides", nargs="*", help="field=value config overrides for every run")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs side by side, one thread each (small models on few cores: faster than one "
                        "multi-thread process; the numbers are the same)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("study", help="the RLSD study: pre-registered confirmation, sensitivity and controls (rlsd.study)")
    p.add_argument("--part", default="confirm", help="confirm | sensitivity | controls (after sensitivity)")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side, one thread each")
    p.add_argument("--runs-dir", default="runs/study", help="where full runs (with checkpoints) go")
    p.add_argument("--logs-dir", default=None, help="where the small logs go (default data/runs/study)")
    p.add_argument("--summary-only", action="store_true", help="judge the logs present, without training")
    p.set_defaults(func=cmd_study)
    p = sub.add_parser("bench", help="step time by phase for every method on the same batch")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--methods", default=None, help="comma-separated subset, e.g. grpo,rlsd (default: all)")
    p.add_argument("--peer", default=None, metavar="TRL_ANCHOR_PY",
                   help="run on the TRL anchor's exact prompts and images (see rlsd.bench.peer_batch)")
    p.add_argument("--compare-sharing", action="store_true",
                   help="also time every method with prompts unshared, alternating with the shared runs")
    p.add_argument("--json", action="store_true")
    p.add_argument("--sitting", type=int, default=0, metavar="ROUNDS",
                   help="with --peer: ROUNDS runs of ours between ROUNDS+1 runs of TRL's anchor, alternating, each a "
                        "fresh process; writes --out-dir/bench_anchor.json and trl_anchor.json")
    p.add_argument("--trl-path", default=None, help="put this directory on the anchor's PYTHONPATH (TRL not installed)")
    p.add_argument("--no-trl-subclass", action="store_true",
                   help="with --peer: skip timing TRL's GRPOTrainer against rlsd.integrations.trl.RLSDGRPOTrainer "
                        "(rlsd.integrations.trl_bench; written to --out-dir/trl_subclass.json)")
    p.add_argument("--trl-rounds", type=int, default=3, help="with --peer: rounds of the TRL side by side")
    p.add_argument("--jobs-side-by-side", action="store_true",
                   help="time short cpu runs as one 2-thread process after another vs two 1-thread processes side by "
                        "side (what reproduce/study --jobs 2 buys); writes --out-dir/jobs_speedup.json")
    p.add_argument("--out-dir", default="data/bench")
    p.add_argument("overrides", nargs="*", help="field=value config overrides")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("sft", help="train the tiny model's SFT warm start")
    add_dataclass_arguments(p, SFTConfig)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("profiles", help="the GPU profiles and their estimated peak memory (Markdown table)")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("readme", help="rewrite the README's generated blocks from their sources (rlsd.readme)")
    p.add_argument("--check", action="store_true", help="only check: exit 1 if a block is stale")
    p.set_defaults(func=cmd_readme)

    p = sub.add_parser("evaluate", help="evaluate a model directory on the testbed")
    p.add_argument("--model", default="data/tiny-sft", help="model directory")
    p.add_argument("--adapter", default=None, help="peft LoRA adapter directory (safetensors) to put on the model")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--format", choices=["student", "teacher"], default="student")
    p.add_argument("--control", choices=["none", "blank", "shuffled"], default="none")
    p.add_argument("--n", type=int, default=None, help="first n problems of the split (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of the paper's validation sampling")
    p.add_argument("--json", action="store_true", help="print one JSON object, no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("benchmark", help="a model (+ adapter) on the paper's five benchmarks: one Table-2 row",
                       description="Generate (resumably) and score MMMU, MathVista, MATH-Vision, ZeroBench and "
                                   "We-Math from the Hugging Face hub or a save_to_disk copy (rlsd.benchmarks.run).")
    p.add_argument("--model", required=True, help="hub id or local directory of the base model")
    p.add_argument("--adapter", default=None, help="peft LoRA adapter directory (safetensors) to put on the model")
    p.add_argument("--benchmarks", default="all", help="all, or comma-separated: mmmu,mathvista,mathvision,"
                                                       "zerobench,wemath")
    p.add_argument("--limit", type=int, default=None, help="first N items per split (a quick look)")
    p.add_argument("--data-dir", default=None, help="offline: read DIR/<benchmark> written by "
                                                    "DatasetDict.save_to_disk (hub split names)")
    p.add_argument("--out", default="runs/benchmark", help="predictions (resumable), run.json, table2_row.*")
    p.add_argument("--cache-dir", default=None, help="where splits are exported for the loaders "
                                                     "(default ~/.cache/rlsd/benchmarks)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=4096, help="response budget (the paper: 4k)")
    p.add_argument("--max-pixels", type=int, default=1024 * 1024, help="pixel budget per image (lowered only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="default: bfloat16 (float16 on GPUs without bf16) on a GPU, float32 on CPU")
    p.add_argument("--load-in-4bit", action="store_true",
                   help="load the base in NF4 (bitsandbytes), as the GPU training profiles do (8B on a T4/L4)")
    p.add_argument("--label", default=None, help="row name in the table")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_benchmark)

    # key=value overrides may sit anywhere among the options; argparse hands the late ones back as unknown.
    args, unknown = parser.parse_known_args(argv)
    late = [u for u in unknown if "=" in u and not u.startswith("-")]
    if len(late) != len(unknown) or (late and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(u for u in unknown if u not in late or not hasattr(args, 'overrides'))}")
    if late:
        args.overrides = list(args.overrides) + late
    previous = _sigterm_as_interrupt()
    try:
        code = args.func(args)
    except KeyboardInterrupt as e:
        # Ctrl-C and SIGTERM end alike: one line (the trainer's names the step), the files as a kill leaves them.
        if os.environ.get("RLSD_DEBUG"):
            raise
        print(f"error: {e.args[0] if e.args else 'interrupted; the same command resumes'}", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, FloatingPointError) as e:
        # Bad input (DataError, CheckpointError and config errors are ValueError/RuntimeError subclasses) and path
        # problems: one line, exit code 2. RLSD_DEBUG=1 shows the traceback.
        if os.environ.get("RLSD_DEBUG") or not _is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        _restore_sigterm(previous)
    return code or 0


def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does (main thread only); returns the handler it replaced."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _restore_sigterm(previous):
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _is_user_error(e: BaseException) -> bool:
    """Errors that describe the user's input (a file, a path, a config value), as opposed to bugs."""
    from rlsd.checkpoint import CheckpointError
    from rlsd.data import DataError
    from rlsd.files import RunLockedError
    from rlsd.preflight import PreflightError

    if isinstance(e, (DataError, CheckpointError, PreflightError, RunLockedError, OSError, FloatingPointError)):
        return True
    return type(e) is ValueError  # config validation raises plain ValueError naming the field


if __name__ == "__main__":
    sys.exit(main())
