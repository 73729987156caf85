"""RLSD in a TRL pipeline: TRL's GRPOTrainer with RLSD's token advantages, for a VLM (or, with --text, text only).

    python examples/trl_rlsd.py [--text]     # two steps on the CPU with the repo's tiny Qwen3-VL (seconds)
"""
import argparse
import re

import torch
from datasets import Dataset
from peft import LoraConfig

from rlsd.integrations.trl import RLSDGRPOConfig, RLSDGRPOTrainer
from rlsd.model import load_processor
from rlsd.prompts import student_messages
from rlsd.testbed import generate_split

cli = argparse.ArgumentParser()
cli.add_argument("--text", action="store_true", help="text-only prompts (no image column)")
cli.add_argument("--output-dir", default="/tmp/rlsd-trl-example")
opts = cli.parse_args()

MODEL = "data/tiny-sft"  # your model, e.g. "Qwen/Qwen3-VL-2B-Instruct" (then leave processing_class out)
processor = load_processor(MODEL)

# Your dataset: a conversational "prompt", an "image" (or "images") column for a VLM, and the reference "answer" the
# teacher is shown (RLSDGRPOConfig.rlsd_answer_column). Here: eight problems of the repo's synthetic testbed.
problems = generate_split("train", 8)
columns = {"prompt": [student_messages(p.question, n_images=0 if opts.text else 1) for p in problems],
           "answer": [p.answer for p in problems]}
if not opts.text:
    columns["image"] = [p.images[0] for p in problems]


def correct(completions, answer, **kwargs):  # your verifiable reward
    found = [re.search(r"<answer>(.*?)</answer>", c[-1]["content"]) for c in completions]
    return [float(m is not None and m.group(1).strip() == a) for m, a in zip(found, answer)]


args = RLSDGRPOConfig(
    output_dir=opts.output_dir, max_steps=2, per_device_train_batch_size=8, num_generations=4,
    max_completion_length=24, learning_rate=1e-4, report_to="none", save_strategy="no", logging_steps=1,
    use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
    rlsd_lam0=0.5,               # λ0: weight of the teacher's evidence (0 = TRL's GRPO exactly)
    rlsd_decay_steps=50,         # λ decays linearly to 0 over 50 steps (0: constant λ0)
    rlsd_teacher="snapshot",     # or "base": the model with the LoRA adapter disabled
    rlsd_teacher_sync_steps=10,  # the snapshot re-syncs to the policy every 10 optimizer steps
)
trainer = RLSDGRPOTrainer(
    model=MODEL, reward_funcs=correct, args=args, train_dataset=Dataset.from_dict(columns),
    processing_class=processor.tokenizer if opts.text else processor,
    peft_config=LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM",
                           target_modules=r"(?!.*visual).*\.layers\.\d+\.self_attn\.(q|k|v|o)_proj"),
)
trainer.train()  # logs rlsd/lambda, rlsd/clip_low_frac, rlsd/clip_high_frac, rlsd/delta_abs_mean beside TRL's metrics
