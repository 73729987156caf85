"""One command that checks the real-model path on a GPU, without the model hub:

    python -m rlsd.gpu_check --arch 2b --out gpu-check

It builds a randomly initialised Qwen3-VL with the shapes of the 2B (or 8B) model -- real layer counts, widths,
vision tower, deepstack and the padded 151,936-entry vocabulary, with the real Qwen tokenizer and processor files
(`tests/fixtures/qwen3vl-2b-instruct`, assembled by `qwen_files_dir`) -- and drives it
through the GPU profile's settings (`qwen3vl-2b` / `qwen3vl-8b`: NF4 base, LoRA, bf16, gradient checkpointing):

1. `lora_grads`: after a rollout (the no-grad forward that triggers bitsandbytes' weight caches), every LoRA B
   matrix of every adapted projection receives a non-zero gradient through the checkpointed 4-bit model;
2. `rollouts`: rollout tokens/s of HF generate as the profiles ran it (NF4 base, every prompt prefilled per row),
   with the shared prefill, a bf16 base, a static cache and torch.compile (`ROLLOUT_VARIANTS`), each checked for
   greedy outputs equal to its base's reference; whether transformers' continuous batching can take images;
3. `bench`: GRPO and RLSD (then the other methods, time permitting) on the same rollout batch -- phase times,
   `rlsd_over_grpo` and `rlsd_overhead_over_forward` (the paper's "one extra forward" claim) at real scale, with
   prompts shared and unshared (the update forward shares under gradient checkpointing too);
4. `train_resume`: the real training loop for two steps with checkpoints, then a resumed third step.

Random weights mean: rewards are ~0, and nearly every response runs to `max_new_tokens` (a worst case for
rollout length); `train_resume` therefore alternates each group's rewards 0, 1, 0, 1 so its updates have non-zero
advantages and a real backward. Timings and memory are real; accuracy is meaningless. The real checkpoint needs the hub or a local
copy: `python -m rlsd train --profile qwen3vl-2b` is the same code with `model.path` pointing at it.

Results go to `<out>/gpu_check.json`, rewritten after every stage, so a run cut short still reports what it did.
`--arch tiny` runs the same stages on the CPU in seconds (the test of this script).

`--gpu-class t4 --memory-cap-gib 16` is the T4 stand-in on a bigger card: the `qwen3vl-2b-t4` profile (float16,
its own micro-batches) with CUDA allocations capped at 16 GiB.

`--device cpu` is the CPU rehearsal at the real dimensions (`--arch 2b --device cpu`): the same model shapes, NF4
base through bitsandbytes' CPU path, the LoRA targets, chunked scoring over the 151,936-entry vocabulary, the
gradient-checkpointed update with shared prompts, and a resume -- on a tiny batch (`CPU_REHEARSAL`: 1 prompt x 2
samples, images of at most 65,536 pixels), stages `lora_grads` and `train_resume` only. It reports the process's peak
resident memory after each stage (and its resident memory then) beside `rlsd.memory`'s weight estimate (`memory` in
the JSON). Not part of pytest.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import gzip
import json
import math
import platform
import shutil
import time
from pathlib import Path

import torch

QWEN_FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "qwen3vl-2b-instruct"
"""Qwen3-VL-2B-Instruct's small hub files and the Qwen vocabulary (see its NOTICE.md)."""
QWEN_FILES = ("config.json", "tokenizer_config.json", "chat_template.json", "preprocessor_config.json",
              "video_preprocessor_config.json", "generation_config.json")
# Qwen2/Qwen3's pre-tokenizer split (the same pattern as the vocabulary's tiktoken definition).
QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def qwen_tokenizer_json(ranks_file: Path, added_tokens: dict) -> str:
    """A tokenizers `tokenizer.json` for Qwen's byte-level BPE from its tiktoken rank file (base64 token, rank).

    BPE merges are not stored in a rank file; each token of rank r is the merge of the two lower-ranked pieces
    that byte-pair encoding would join last, which is the split whose parts have the lowest ranks.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    opener = gzip.open if ranks_file.suffix == ".gz" else open
    ranks: dict[bytes, int] = {}
    with opener(ranks_file, "rb") as f:
        for line_no, line in enumerate(f, 1):
            token, _, rank = line.strip().partition(b" ")
            if not token or not rank.isdigit():
                raise ValueError(f"{ranks_file}:{line_no}: expected '<base64 token> <rank>'")
            ranks[base64.b64decode(token)] = int(rank)
    table = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(table[x] for x in b)

    vocab, merges = {}, []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[text(token)] = rank
        if len(token) > 1:
            splits = [(token[:i], token[i:]) for i in range(1, len(token))
                      if token[:i] in ranks and token[i:] in ranks]
            if not splits:
                raise ValueError(f"{ranks_file}: token of rank {rank} is not a merge of two lower-ranked tokens")
            left, right = min(splits, key=lambda lr: max(ranks[lr[0]], ranks[lr[1]]))
            merges.append((text(left), text(right)))
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    core.decoder = decoders.ByteLevel()
    for idx, entry in sorted(added_tokens.items(), key=lambda kv: int(kv[0])):
        if int(idx) != core.get_vocab_size(with_added_tokens=True):
            raise ValueError(f"added token {entry['content']!r}: id {idx} does not follow the vocabulary")
        core.add_tokens([AddedToken(entry["content"], special=entry["special"], normalized=False)])
    return core.to_str()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE's alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def qwen_files_dir(dst: str | Path, src: Path = QWEN_FIXTURE) -> Path:
    """A directory laid out as the hub's Qwen3-VL-2B-Instruct, minus the weights: its configuration files and a
    `tokenizer.json` built from the vocabulary (built once; reused when present)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in QWEN_FILES:
        shutil.copyfile(src / name, dst / name)
    if not (dst / "tokenizer.json").exists():
        added = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))["added_tokens_decoder"]
        tmp = dst / "tokenizer.json.tmp"
        tmp.write_text(qwen_tokenizer_json(src / "qwen.tiktoken.gz", added), encoding="utf-8")
        tmp.replace(dst / "tokenizer.json")
    return dst

# Shapes of the released models' configs (language model and vision tower). Word embeddings are untied here
# (the 2B model ties them): ~0.3B more trainable-free parameters, a slightly larger memory footprint.
ARCHS = {
    "tiny": dict(),
    "2b": dict(hidden=2048, layers=28, heads=16, kv_heads=8, intermediate=6144, vision_depth=24, vision_hidden=1024,
               vision_intermediate=4096, vision_heads=16, merge_size=2, vocab_size=151936, deepstack=(5, 11, 17),
               vision_positions=2304),
    "8b": dict(hidden=4096, layers=36, heads=32, kv_heads=8, intermediate=12288, vision_depth=27,
               vision_hidden=1152, vision_intermediate=4304, vision_heads=16, merge_size=2, vocab_size=151936,
               deepstack=(8, 16, 24), vision_positions=2304),
}
PROFILE_OF_ARCH = {"tiny": "smoke", "2b": "qwen3vl-2b", "8b": "qwen3vl-8b"}
CPU_REHEARSAL = ["prompts_per_step=1", "group_size=2", "micro_batch_size=2", "rollout_batch_size=0",
                 "score_batch_size=0", "model.min_pixels=16384", "model.max_pixels=65536", "device=cpu"]
"""The CPU rehearsal's batch: real shapes, a batch a 2-core machine finishes in minutes."""
CPU_STAGES = ("lora_grads", "train_resume")


def rss_gib() -> float | None:
    """This process's resident memory now (Linux /proc; None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def environment() -> dict:
    import accelerate
    import peft
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "accelerate": accelerate.__version__, "cuda": torch.cuda.is_available()}
    for name in ("bitsandbytes", "vllm"):
        try:
            env[name] = __import__(name).__version__
        except Exception as err:  # noqa: BLE001 -- report whatever stops the import
            env[name] = f"unavailable ({type(err).__name__})"
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_mem_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    import os

    env["cpu_cores"] = os.cpu_count()
    env["torch_threads"] = torch.get_num_threads()
    env["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]  # a shared machine runs slower
    return env


def arch_processor(arch: str, work: Path):
    """The processor a random model of `arch` is saved with: the real Qwen3-VL tokenizer, chat template and image
    processor for the released shapes, None (the tiny model's own) for `tiny`."""
    if arch == "tiny":
        return None
    from rlsd.model import load_processor

    return load_processor(qwen_files_dir(Path(work) / "qwen3vl-files"))


def build_model(arch: str, path: Path, use_cuda: bool | None = None) -> dict:
    """Save a random model of `arch`'s shape (bf16, built on the GPU when there is one and `use_cuda` allows): the
    tiny model with its tokenizer, the released shapes with Qwen's tokenizer and processor files. The released
    shapes are built in bf16 on the CPU too (half the memory of float32: 2B is 4.6 GB)."""
    from safetensors import safe_open

    from rlsd.tiny import build_tiny_model, save_tiny

    cuda = torch.cuda.is_available() if use_cuda is None else use_cuda and torch.cuda.is_available()
    device, dtype = ("cuda" if cuda else None), (torch.bfloat16 if cuda else None)
    processor = arch_processor(arch, Path(path).parent)
    if processor is None:
        save_tiny(path, seed=0, device=device, dtype=dtype, **ARCHS[arch])
    else:
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: no float32 copy of a 2B model in RAM
        try:
            model = build_tiny_model(processor.tokenizer, seed=0, device=device, **ARCHS[arch])
        finally:
            torch.set_default_dtype(default)
        model.save_pretrained(path)
        processor.save_pretrained(path)
        del model
    if cuda:
        torch.cuda.empty_cache()
    n_params = 0
    for shard in path.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            n_params += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return {"parameters": n_params}


def profile_for(arch: str, gpu_class: str | None = None) -> str:
    """The profile a check runs: `qwen3vl-<arch>-<gpu_class>` (that class's own batch settings) or the arch's
    default (the big-GPU batch of `overrides_for`)."""
    if gpu_class is None:
        return PROFILE_OF_ARCH[arch]
    if arch == "tiny":
        raise ValueError("--gpu-class: only the released shapes (--arch 2b or 8b) have per-class profiles")
    return f"qwen3vl-{arch}-{gpu_class}"


def cap_gpu_memory(cap_gib: float) -> float:
    """Limit this process's CUDA allocations to `cap_gib` (the stand-in for a smaller card); returns the fraction."""
    if not torch.cuda.is_available():
        raise SystemExit(f"--memory-cap-gib {cap_gib:g}: needs a CUDA device (torch.cuda.is_available() is False)")
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = min(1.0, cap_gib * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    return fraction


def overrides_for(arch: str, model_dir: Path, max_new_tokens: int, device: str = "auto",
                  gpu_class: str | None = None) -> list[str]:
    base = [f"model.path={model_dir}", "data=testbed", "engine=hf", "eval_every=0", "tensorboard=false",
            f"max_new_tokens={max_new_tokens}", "n_train_problems=200"]
    if arch == "tiny":  # the smoke profile is full-parameter; take the GPU profiles' model path instead
        return base + ["model.lora_rank=8", "model.load_in_4bit=true", "model.gradient_checkpointing=true"] + (
            ["device=cpu"] if device == "cpu" else [])
    if device == "cpu":
        return base + CPU_REHEARSAL
    if gpu_class is not None:  # the class profile's own micro-batches: what that card runs
        return base
    # A big GPU: whole-batch generation and teacher pass; update micro-batches of 8 (activations with a backward).
    return base + ["prompts_per_step=8", "group_size=8", "micro_batch_size=8", "rollout_batch_size=0",
                   "score_batch_size=0"]


def weights_estimate(arch: str, profile: str, overrides: list[str]) -> dict:
    """`rlsd.memory`'s weight term for this run's model (the random model's embeddings are untied, and the CPU
    rehearsal's compute dtype sets the bytes of the unquantized parts), to read beside the measured peak RSS."""
    from rlsd.config import make_config
    from rlsd.memory import SHAPES, weights_gib

    if arch not in SHAPES:
        return {}
    cfg = make_config(profile, overrides, method="rlsd")
    dtype_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}[cfg.model.dtype]
    return {"weights_estimate_gib": round(weights_gib(SHAPES[arch], cfg.model.load_in_4bit, tied=False,
                                                      dtype_bytes=dtype_bytes), 2),
            "dtype": cfg.model.dtype, "load_in_4bit": cfg.model.load_in_4bit,
            "note": "peak RSS also holds the Python runtime, torch, the tokenizer and the (small) batch's "
                    "activations; the NF4 load quantises layer by layer from the bf16 checkpoint"}


def lora_gradient_check(profile: str, overrides: list[str], out: Path) -> dict:
    from rlsd.config import make_config
    from rlsd.scoring import score_responses
    from rlsd.trainer import Trainer

    cfg = make_config(profile, overrides, method="grpo", out=str(out), save_every=0)
    trainer = Trainer(cfg, progress=False)
    torch.manual_seed(0)
    batch = trainer.rollout()
    rows = list(range(min(4, batch.rewards_N.numel())))
    scores = score_responses(trainer.model, batch.student.select(rows), batch.rollout.response_ids_BT[rows],
                             batch.rollout.response_mask_BT[rows], trainer.suppress_V)
    (-scores.logp_BT.sum()).backward()
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if "lora_B" in n}
    nonzero = sum(g is not None and bool(g.abs().sum() > 0) for g in grads.values())
    result = {"lora_B_matrices": len(grads), "lora_B_with_gradient": nonzero,
              "ok": len(grads) > 0 and nonzero == len(grads),
              "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}
    del trainer
    return result


# Rollout configurations measured by `rollout_variants`: (name, 4-bit base, shared prefill, KV cache, compile).
# The first of each base is its reference: greedy outputs of the others must equal it to be adopted.
# "dense" is the profile's own dtype unquantized (bf16 on the GPU profiles, fp16 on T4).
ROLLOUT_VARIANTS = (
    ("nf4", True, False, "dynamic", False),  # the GPU profiles' HF path before this stage existed
    ("nf4+shared", True, True, "dynamic", False),
    ("dense", False, False, "dynamic", False),
    ("dense+shared", False, True, "dynamic", False),
    ("dense+shared+static", False, True, "static", False),
    ("dense+shared+static+compiled", False, True, "static", True),
)


def continuous_batching_status() -> dict:
    """Whether the pinned transformers' continuous batching can run these rollouts: it must take images."""
    import inspect

    from transformers import GenerationMixin

    fn = getattr(GenerationMixin, "generate_batch", None)
    if fn is None:
        return {"available": False, "reason": "no GenerationMixin.generate_batch in this transformers"}
    params = list(inspect.signature(fn).parameters)
    takes_images = any(k in params for k in ("pixel_values", "images"))
    return {"available": takes_images, "signature": params,
            "reason": None if takes_images else "generate_batch takes token ids only (no pixel_values): Qwen3-VL "
                                                "prompts with images cannot be batched this way"}


def rollout_variants(profile: str, overrides: list[str], prompts_per_step: int = 8, group_size: int = 8,
                     max_new_tokens: int = 128, greedy_rows: int = 16, greedy_tokens: int = 32,
                     timed_runs: int = 1) -> dict:
    """Rollout tokens/s of each `ROLLOUT_VARIANTS` configuration on one batch of training prompts (sampled, T=1,
    the seed fixed; the median of `timed_runs`), and whether its greedy outputs equal its base's reference.
    `fastest_exact` per base is the configuration to adopt in that profile."""
    from rlsd.config import make_config
    from rlsd.inputs import encode_prompts
    from rlsd.model import load_policy
    from rlsd.prompts import student_messages
    from rlsd.rollout import SamplingParams, hf_generate
    from rlsd.scoring import suppressed_token_ids
    from rlsd.trainer import clock, load_training_problems

    cfg = make_config(profile, overrides, method="grpo", prompts_per_step=prompts_per_step, group_size=group_size)
    problems = load_training_problems(cfg)[0][:prompts_per_step]
    device = "cuda" if torch.cuda.is_available() else None
    result = {"batch": f"{prompts_per_step} prompts x {group_size} samples x {max_new_tokens} tokens",
              "continuous_batching": continuous_batching_status(), "variants": {}}
    loaded, references = {}, {}
    for name, nf4, share, cache, compile_ in ROLLOUT_VARIANTS:
        if nf4 not in loaded:
            loaded.clear()  # one base in memory at a time
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            spec = dataclasses.replace(cfg.model, load_in_4bit=nf4)
            model, processor = load_policy(spec, device=device)
            tok = processor.tokenizer
            prompts = encode_prompts(processor, [student_messages(p.question, len(p.images)) for p in problems],
                                     [p.images for p in problems])
            if device:
                prompts = prompts.to(device)
            batch = prompts.repeat(group_size)
            suppress = suppressed_token_ids(tok, model.config.get_text_config().vocab_size)
            loaded[nf4] = (model, tok, batch, suppress)
        model, tok, batch, suppress = loaded[nf4]

        def run(rows, sampling):
            return hf_generate(model, batch.select(rows), sampling, suppress, tok.eos_token_id, tok.pad_token_id,
                               share_prompts=share, cache=cache, compile=compile_)

        row = {"base": "nf4" if nf4 else cfg.model.dtype, "shared_prefill": share, "cache": cache,
               "compile": compile_}
        if compile_ and not torch.cuda.is_available():
            row["skipped"] = "generate compiles only on CUDA"
            result["variants"][name] = row
            continue
        try:
            greedy_rows_ = list(range(min(greedy_rows, batch.batch_size)))
            greedy = run(greedy_rows_, SamplingParams(max_new_tokens=greedy_tokens, temperature=0.0))
            reference = references.setdefault(nf4, greedy.response_ids_BT)  # the base's first variant
            row["greedy_equal_to_reference"] = bool(torch.equal(greedy.response_ids_BT, reference))
            sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0)
            torch.manual_seed(0)
            # Warm-up: CUDA kernels, bitsandbytes' caches; a compiled step needs the timed run's exact shapes.
            run(list(range(batch.batch_size)),
                sampling if compile_ else SamplingParams(max_new_tokens=min(8, max_new_tokens), temperature=1.0))
            times = []
            for _ in range(timed_runs):
                torch.manual_seed(0)  # the same samples every run: the same work
                t0 = clock()
                sampled = run(list(range(batch.batch_size)), sampling)
                times.append(clock() - t0)
            seconds = sorted(times)[len(times) // 2]
            tokens = int(sampled.response_mask_BT.sum())
            row.update(seconds=round(seconds, 3), timed_runs=timed_runs, tokens=tokens,
                       tokens_per_s=round(tokens / seconds, 1),
                       peak_mem_mb=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None)
        except Exception as err:  # noqa: BLE001 -- a failing variant is a result; the others still run
            row.update(ok=False, error=f"{type(err).__name__}: {err}"[:400])
        result["variants"][name] = row
    loaded.clear()
    for base in dict.fromkeys(row["base"] for row in result["variants"].values()):  # in variant order
        exact = {n: r for n, r in result["variants"].items() if r["base"] == base and r.get("greedy_equal_to_reference")
                 and "tokens_per_s" in r}
        if exact:
            best = max(exact, key=lambda n: exact[n]["tokens_per_s"])
            ref = next(n for n, r in result["variants"].items() if r["base"] == base)
            result.setdefault("fastest_exact", {})[base] = {
                "variant": best, "speedup_over_reference": round(exact[best]["tokens_per_s"] /
                                                                 result["variants"][ref]["tokens_per_s"], 2)
                if "tokens_per_s" in result["variants"][ref] else None}
    result["ok"] = all(r.get("ok", True) for r in result["variants"].values())
    return result


def train_resume_check(profile: str, overrides: list[str], out: Path) -> dict:
    """The real training loop (RLSD) for two steps with checkpoints, then a resumed third step. A random model earns
    no reward, so every group's advantages would be 0 and the update a no-op: here each group's rewards alternate
    0, 1, 0, 1 (`rewards` in the result) so the update's backward and optimizer step really run."""
    from rlsd import algorithm as alg
    from rlsd.config import make_config
    from rlsd.trainer import Trainer

    class AlternatingRewards(Trainer):
        def rollout(self):
            batch = super().rollout()
            rewards_N = (torch.arange(batch.rewards_N.numel()) % 2).to(batch.rewards_N.dtype)
            return dataclasses.replace(batch, rewards_N=rewards_N,
                                       adv_N=alg.group_advantages(rewards_N, self.cfg.group_size))

    shutil.rmtree(out, ignore_errors=True)
    common = dict(method="rlsd", out=str(out), save_every=1, rlsd_decay_steps=2, teacher_sync_every=1)
    first = AlternatingRewards(make_config(profile, overrides, steps=2, **common), progress=False).train()
    resumed_trainer = AlternatingRewards(make_config(profile, overrides, steps=3, **common), progress=False)
    resumed = resumed_trainer.train()
    keys = ("step", "reward_mean", "response_tokens_mean", "truncated_frac", "lambda", "loss", "grad_norm",
            "time_rollout_s", "time_teacher_s", "time_update_s", "peak_mem_mb")
    steps = [r for r in first + resumed if "reward_mean" in r]
    learned = all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in steps)
    return {"steps": [{k: r.get(k) for k in keys} for r in steps], "rewards": "alternating 0/1 within each group",
            "resumed_from": 2, "gradient_every_step": learned,
            "ok": [r["step"] for r in steps] == [1, 2, 3] and learned}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=tuple(ARCHS), default="2b")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto",
                        help="cpu: the CPU rehearsal (tiny batch, stages lora_grads and train_resume, peak RSS)")
    parser.add_argument("--out", default="gpu-check")
    parser.add_argument("--work-dir", default="/tmp/rlsd-gpu-check", help="random model and run checkpoints")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="bench rounds (medians reported)")
    parser.add_argument("--rollout-runs", type=int, default=1, help="timed rollouts per configuration (median)")
    parser.add_argument("--skip", default="",
                        help="comma-separated stages to skip (lora_grads, rollouts, bench, train_resume)")
    parser.add_argument("--gpu-class", choices=("t4", "l4", "a100"), default=None,
                        help="run the qwen3vl-<arch>-<class> profile with its own batch settings (t4: float16)")
    parser.add_argument("--memory-cap-gib", type=float, default=None,
                        help="cap CUDA memory (torch.cuda.set_per_process_memory_fraction): 16 = a T4 stand-in")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="skip the optional stages (extra bench methods) once this much time has passed")
    args = parser.parse_args(argv)

    try:  # refusals first: nothing is built or written before them
        profile = profile_for(args.arch, args.gpu_class)
    except ValueError as err:
        parser.error(str(err))
    cap = cap_gpu_memory(args.memory_cap_gib) if args.memory_cap_gib else None

    from rlsd.bench import run_bench

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"arch": args.arch, "profile": profile, "max_new_tokens": args.max_new_tokens,
                    "device": args.device}
    if cap is not None:
        report["memory_cap"] = {"gib": args.memory_cap_gib, "fraction": round(cap, 4)}
    cpu = args.device == "cpu"

    def stage(name, fn, *a):
        t0 = time.perf_counter()
        try:
            report[name] = fn(*a)
        except Exception as err:  # noqa: BLE001 -- a failed stage is a result; the next stages still run
            report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        report[name + "_s"] = round(time.perf_counter() - t0, 1)
        if cpu:
            memory = report.setdefault("memory", {})
            memory.setdefault("peak_rss_gib_after", {})[name] = round(peak_rss_gib(), 2)
            now = rss_gib()
            memory.setdefault("rss_gib_after", {})[name] = None if now is None else round(now, 2)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        print(f"[{time.perf_counter() - t_start:6.0f}s] {name}: {json.dumps(report[name], default=str)[:600]}",
              flush=True)

    work = Path(args.work_dir)
    model_dir = work / f"qwen3vl-{args.arch}-random"
    overrides = overrides_for(args.arch, model_dir, args.max_new_tokens, args.device, args.gpu_class)
    if cpu:
        report["overrides"] = [o.replace(str(work), "<work-dir>") for o in overrides]  # no machine paths in reports
    stage("environment", environment)
    stage("build", build_model, args.arch, model_dir, not cpu)
    skip = set(filter(None, args.skip.split(",")))
    if cpu:
        skip |= {"rollouts", "bench"} - set(CPU_STAGES)
        report["memory"].update(weights_estimate(args.arch, profile, overrides))
    if "lora_grads" not in skip:
        stage("lora_grads", lora_gradient_check, profile, overrides, work / "grads")
    if "rollouts" not in skip:
        stage("rollouts", rollout_variants, profile, overrides, 8, 8, args.max_new_tokens, 16, 32, args.rollout_runs)
    if "bench" not in skip:
        stage("bench", run_bench, profile, overrides, args.repeats, ("grpo", "rlsd"), True)
    if "train_resume" not in skip:
        stage("train_resume", train_resume_check, profile, overrides, work / "run")
    if not cpu and time.perf_counter() - t_start < args.budget_s:
        stage("bench_distillation", run_bench, profile, overrides, max(1, args.repeats - 1), ("opsd", "sdpo"))
    report["ok"] = all(report.get(k, {}).get("ok", True) is not False for k in
                       ("build", "lora_grads", "rollouts", "bench", "train_resume", "bench_distillation"))
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    import os

    report["environment"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({"ok": report["ok"], "total_s": report["total_s"]}))
    return report


if __name__ == "__main__":
    main()
