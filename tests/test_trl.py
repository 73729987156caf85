"""rlsd.integrations.trl against TRL's own GRPOTrainer, on the tiny Qwen3-VL with LoRA (the TRL anchor's setup:
LoRA r=8 on q/k/v/o of the language model, no vLLM, float32, CPU)."""

import runpy
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

trl = pytest.importorskip("trl")  # requirements.txt installs it (-e .[trl]); only a bare `pip install -e .` skips

from peft import LoraConfig  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from rlsd import algorithm as alg  # noqa: E402
from rlsd.integrations.trl import RLSDGRPOConfig, RLSDGRPOTrainer, teacher_prompt  # noqa: E402
from rlsd.prompts import student_messages, teacher_messages  # noqa: E402
from rlsd.teacher import TeacherWeights  # noqa: E402
from rlsd.tiny import build_processor, build_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUESTION = "How many red squares are there?"
G = 2  # completions per prompt


def alternating_reward(completions, **kwargs):
    """0, 1, 0, 1, ...: every group has both rewards, so every advantage is non-zero and every step moves LoRA."""
    return [float(i % 2) for i in range(len(completions))]


def rows(images=None):
    """Two prompts with different images, each repeated G times (as TRL's sampler lays a generation batch out)."""
    images = images or [Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (64, 64), (40, 70, 220))]
    return [{"prompt": student_messages(QUESTION, 1, format_instruction=False), "image": img, "answer": str(a)}
            for a, img in enumerate(images) for _ in range(G)]


def make_trainer(cls=RLSDGRPOTrainer, tmp_path="/tmp/rlsd-test-trl", max_steps=2, **rlsd):
    processor = build_processor()
    torch.manual_seed(0)
    model = build_tiny_model(processor.tokenizer, seed=0)
    config_cls = RLSDGRPOConfig if cls is RLSDGRPOTrainer else GRPOConfig
    args = config_cls(output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=2 * G,
                      num_generations=G, max_completion_length=6, learning_rate=1e-2, bf16=False, use_cpu=True,
                      report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
                      gradient_checkpointing=False, dataloader_num_workers=0, **rlsd)
    from datasets import Dataset

    data = rows()
    dataset = Dataset.from_dict({k: [r[k] for r in data[::G]] for k in data[0]})
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=r"(?!.*visual).*\.layers\.\d+\.self_attn\.(q|k|v|o)_proj")
    torch.manual_seed(0)
    trainer = cls(model=model, reward_funcs=alternating_reward, args=args, train_dataset=dataset,
                  processing_class=processor, peft_config=lora)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); the loss reads it outside train() too
    return trainer


def lora_params(trainer):
    return {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}


def loss_and_grads(trainer, batch=None):
    """One generation batch (seeded) and the loss + LoRA gradients of TRL's compute_loss on it."""
    torch.manual_seed(1)
    out = trainer._generate_and_score_completions(rows()) if batch is None else batch
    loss = trainer.compute_loss(trainer.model, out)
    loss.backward()
    return out, loss.detach(), {n: p.grad.clone() for n, p in lora_params(trainer).items()}


def test_lam0_zero_is_grpotrainer_exactly(tmp_path):
    grpo = make_trainer(GRPOTrainer, tmp_path)
    rlsd0 = make_trainer(RLSDGRPOTrainer, tmp_path, rlsd_lam0=0.0)
    rlsd5 = make_trainer(RLSDGRPOTrainer, tmp_path, rlsd_lam0=0.5)
    for n, p in lora_params(grpo).items():  # same start: the comparison below is meaningful
        assert torch.equal(p, lora_params(rlsd0)[n])
    out_g, loss_g, grads_g = loss_and_grads(grpo)
    out_0, loss_0, grads_0 = loss_and_grads(rlsd0)
    assert torch.equal(out_g["completion_ids"], out_0["completion_ids"])  # same seed, same batch
    assert "rlsd_teacher_logps" in out_0  # the teacher pass ran: equality is not from skipping RLSD
    assert torch.equal(loss_g, loss_0)
    assert all(torch.equal(grads_g[n], grads_0[n]) for n in grads_g)
    assert any(g.abs().sum() > 0 for g in grads_g.values())
    # negative case: λ0 = 0.5 on the same batch moves the gradient
    _, _, grads_5 = loss_and_grads(rlsd5)
    assert not all(torch.equal(grads_g[n], grads_5[n]) for n in grads_g)


def _independent_logp(model, processor, messages, image, completion_ids_T):
    """log p(completion | prompt) from a plain forward of the model (no TRL code), one row."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[image], return_tensors="pt")
    ids = torch.cat([enc["input_ids"], completion_ids_T[None]], dim=1)
    kwargs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    if "mm_token_type_ids" in enc:
        kwargs["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"],
                                                 torch.zeros_like(completion_ids_T)[None]], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs).logits
    n = completion_ids_T.numel()
    return alg.gather_token_logp(logits[0, -n - 1:-1][None].float(), completion_ids_T[None])[0]


def test_token_advantages_are_rlsd_algorithms(tmp_path, monkeypatch):
    trainer = make_trainer(RLSDGRPOTrainer, tmp_path, rlsd_lam0=0.5, rlsd_clip_eps=0.01)
    seen = {}
    original = GRPOTrainer._compute_loss

    def spy(self, model, inputs):
        loss = original(self, model, inputs)
        seen.update(inputs)  # after TRL read them: the advantages it used
        return loss

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", spy)
    data = rows()
    torch.manual_seed(1)
    out = trainer._generate_and_score_completions(data)
    trainer.compute_loss(trainer.model, out)
    mask = out["completion_mask"]
    expected = alg.rlsd_token_advantages(out["advantages"], seen["rlsd_teacher_logps"], seen["rlsd_student_logps"],
                                         mask, 0.5, 0.01)
    assert seen["advantages"].shape == mask.shape
    assert torch.equal(seen["advantages"], expected)
    assert not torch.equal(seen["advantages"], out["advantages"][:, None] * mask)  # the teacher changed something
    assert out["advantages"].dim() == 1  # TRL's buffered batch keeps its sequence advantages

    # Both log-probs are the ones a plain forward gives: the teacher's after the project's teacher prompt (same
    # image), the student's after the student prompt. Teacher weights = current ones at step 0 (snapshot).
    model, processor = trainer.model, trainer.processing_class
    for i, row in enumerate(data):
        keep = mask[i].bool()
        ids = out["completion_ids"][i][keep]
        t = _independent_logp(model, processor, teacher_messages(QUESTION, row["answer"], 1, format_instruction=False),
                              row["image"], ids)
        s = _independent_logp(model, processor, row["prompt"], row["image"], ids)
        assert torch.allclose(seen["rlsd_teacher_logps"][i][keep], t, atol=1e-4)
        assert torch.allclose(seen["rlsd_student_logps"][i][keep], s, atol=1e-4)
        assert not torch.allclose(t, s, atol=1e-4)  # the two prompts do differ for the model


def test_teacher_sees_the_students_image_tensors(tmp_path):
    trainer = make_trainer(RLSDGRPOTrainer, tmp_path)
    torch.manual_seed(1)
    data = rows()
    out = trainer._generate_and_score_completions(data)
    t_BT = out["rlsd_teacher_logps"]
    assert torch.equal(trainer._rlsd_teacher_logps(data, out), t_BT)  # deterministic: the comparisons below hold
    # other pixels in TRL's image tensors move the teacher's log-probs (hence δ) ...
    changed = trainer._rlsd_teacher_logps(data, {**out, "pixel_values": -out["pixel_values"]})
    assert not torch.allclose(changed, t_BT, atol=1e-4)
    # ... while other dataset images of the same size, with TRL's tensors kept, do not: the teacher reads TRL's tensors
    other = rows([Image.new("RGB", (64, 64), (255, 255, 255))] * 2)
    assert torch.equal(trainer._rlsd_teacher_logps(other, out), t_BT)


def test_teacher_tokens_skip_the_image_processor_and_equal_trls_tokenization(tmp_path, monkeypatch):
    """The teacher prompts' ids and mm_token_type_ids, built from TRL's image tensors, are exactly what TRL's own
    `_tokenize_prompts` (which runs the image processor) gives -- on images of two sizes (different token counts)."""
    trainer = make_trainer(RLSDGRPOTrainer, tmp_path)
    data = rows([Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (96, 64), (40, 70, 220))])
    torch.manual_seed(1)
    out = trainer._generate_and_score_completions(data)
    prompts = trainer._rlsd_teacher_prompts(data)
    expected_ids, _, expected_fields = trainer._tokenize_prompts(prompts)
    assert len({len(ids) for ids in expected_ids}) == 2  # the two image sizes do give different prompt lengths

    processor = trainer.processing_class
    calls = []
    monkeypatch.setattr(type(processor.image_processor), "__call__", lambda *a, **k: calls.append(1) or 1 / 0)
    ids, fields = trainer._rlsd_teacher_tokens(prompts, out)
    assert not calls  # the image processor did not run
    assert [list(x) for x in ids] == [list(x) for x in expected_ids]
    assert set(fields) == {k for k in expected_fields if k in ("token_type_ids", "mm_token_type_ids")} != set()
    for k in fields:
        assert [list(x) for x in fields[k]] == [list(x) for x in expected_fields[k]]
    trainer._rlsd_teacher_logps(data, out)  # the whole teacher pass takes the same path

    # negative case: other image tensors (the rows' images swapped) expand to other counts, and the pass refuses
    swapped = {**out, "prompt_ids": out["prompt_ids"].flip(0)}
    with pytest.raises(RuntimeError, match="image tokens per row"):
        trainer._rlsd_teacher_logps(data, swapped)


def test_snapshot_sync_and_metrics_through_trls_logger(tmp_path):
    from transformers import TrainerCallback

    trainer = make_trainer(RLSDGRPOTrainer, tmp_path, max_steps=3, rlsd_lam0=0.5, rlsd_decay_steps=4,
                           rlsd_teacher_sync_steps=2)
    teacher, params = trainer.rlsd_teacher, [p for p in trainer.model.parameters() if p.requires_grad]
    initial = [p.detach().clone() for p in params]
    synced = {}

    class Record(TrainerCallback):  # runs after the trainer's own _TeacherSync (added before it)
        def on_step_end(self, args, state, control, **kwargs):
            synced[state.global_step] = (all(torch.equal(c, p) for c, p in zip(teacher.copies, params)),
                                         all(torch.equal(c, p) for c, p in zip(teacher.copies, initial)))

    trainer.add_callback(Record())
    trainer.train()
    # step 1: still the initial snapshot (the weights moved); step 2: re-synced; step 3: stale again
    assert synced == {1: (False, True), 2: (True, False), 3: (False, False)}

    logs = [h for h in trainer.state.log_history if "rlsd/lambda" in h]
    assert [h["rlsd/lambda"] for h in logs] == [0.5, 0.375, 0.25]  # λ0·(1 - k/K), k = 0, 1, 2
    for h in logs:
        assert 0.0 <= h["rlsd/clip_low_frac"] <= 1.0 and 0.0 <= h["rlsd/clip_high_frac"] <= 1.0
        assert h["rlsd/delta_abs_mean"] > 0.0 and h["rlsd/teacher_s"] > 0.0


def test_base_teacher_is_the_adapter_disabled(tmp_path):
    trainer = make_trainer(RLSDGRPOTrainer, tmp_path, rlsd_teacher="base")
    lora_b = [p for n, p in lora_params(trainer).items() if "lora_B" in n]
    torch.manual_seed(2)
    with torch.no_grad():
        for p in lora_b:
            p.normal_(0, 0.5)  # an adapter that matters
    torch.manual_seed(1)
    data = rows()
    out = trainer._generate_and_score_completions(data)
    base_BT = out["rlsd_teacher_logps"]
    # negative case: the adapter's own weights as teacher give other log-probs
    trainer.rlsd_teacher = TeacherWeights(trainer.model, "snapshot")
    assert not torch.allclose(trainer._rlsd_teacher_logps(data, out), base_BT, atol=1e-4)
    # the adapter zeroed out (= the base model), as a snapshot: the same log-probs as the "base" teacher
    with torch.no_grad():
        for p in lora_b:
            p.zero_()
    trainer.rlsd_teacher.sync()
    assert torch.allclose(trainer._rlsd_teacher_logps(data, out), base_BT, atol=1e-6)


def test_teacher_pass_skipped_once_lambda_is_zero_for_good(tmp_path):
    trainer = make_trainer(RLSDGRPOTrainer, tmp_path, rlsd_decay_steps=3)
    trainer.state.global_step = 3
    torch.manual_seed(1)
    assert "rlsd_teacher_logps" not in trainer._generate_and_score_completions(rows())
    trainer.state.global_step = 2
    assert "rlsd_teacher_logps" in trainer._generate_and_score_completions(rows())


def test_default_teacher_template_is_the_projects_teacher_prompt():
    student = student_messages(QUESTION, 1, format_instruction=False)
    assert teacher_prompt(student, "3") == teacher_messages(QUESTION, "3", 1, format_instruction=False)
    assert student == student_messages(QUESTION, 1, format_instruction=False)  # not modified in place
    assert teacher_prompt("Q?", "3", "{prompt} (answer: {answer})") == "Q? (answer: 3)"
    assert teacher_prompt([{"role": "user", "content": "Q?"}], "3", "{prompt}|{answer}") == \
        [{"role": "user", "content": "Q?|3"}]


@pytest.mark.parametrize("field, value, match", [
    ("rlsd_lam0", 1.5, "rlsd_lam0"), ("rlsd_decay_steps", -1, "rlsd_decay_steps"),
    ("rlsd_clip_eps", 1.0, "rlsd_clip_eps"), ("rlsd_teacher", "ema", "rlsd_teacher"),
    ("rlsd_teacher_sync_steps", 0, "rlsd_teacher_sync_steps"),
    ("rlsd_teacher_template", "{prompt} only", "rlsd_teacher_template"),
    ("rlsd_teacher_template", "{question} {answer}", "rlsd_teacher_template")])
def test_config_rejects_bad_values(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        RLSDGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{field: value})
    RLSDGRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")  # the defaults pass


def test_missing_answer_names_the_row_and_column(tmp_path):
    trainer = make_trainer(RLSDGRPOTrainer, tmp_path, rlsd_answer_column="solution")
    with pytest.raises(ValueError, match=r"row 0 .*'solution'"):
        trainer._rlsd_teacher_prompts(rows())
    with pytest.raises(TypeError, match="RLSDGRPOConfig"):
        RLSDGRPOTrainer(model=trainer.model, reward_funcs=alternating_reward,
                        args=GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
                        train_dataset=trainer.train_dataset, processing_class=trainer.processing_class)


@pytest.mark.parametrize("variant", [[], ["--text"]], ids=["vlm", "text"])
def test_readme_example_runs_two_steps(tmp_path, monkeypatch, variant):
    """The README's example is examples/trl_rlsd.py (rendered into README by `python -m rlsd readme`), run as is."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["examples/trl_rlsd.py", *variant, "--output-dir", str(tmp_path)])
    ns = runpy.run_path(str(REPO / "examples" / "trl_rlsd.py"), run_name="__main__")
    trainer = ns["trainer"]
    assert isinstance(trainer, RLSDGRPOTrainer) and trainer.state.global_step == 2
    logs = [h for h in trainer.state.log_history if "rlsd/lambda" in h]
    assert len(logs) == 2 and logs[0]["rlsd/lambda"] == trainer.args.rlsd_lam0 > 0
    assert ("pixel_values" in trainer._buffered_inputs[0]) == (not variant)


ANCHOR_SCRIPT = REPO.parent / "shared" / "bench" / "trl_anchor.py"


def test_trl_side_by_side_times_both_trainers_on_the_anchor_batch(monkeypatch):
    """`bench --peer`: GRPOTrainer and RLSDGRPOTrainer alternate on the anchor's batch; RLSD's teacher pass is timed
    inside the subclass and the unit (one no-grad forward of the same batch) beside it."""
    from rlsd.integrations import trl_bench

    if not ANCHOR_SCRIPT.exists():
        pytest.skip("../shared/bench/trl_anchor.py is not present")
    monkeypatch.setitem(trl_bench.ANCHOR, "n_prompts", 16)
    monkeypatch.setitem(trl_bench.ANCHOR, "prompts_per_step", 2)
    monkeypatch.setitem(trl_bench.ANCHOR, "generations", 4)
    monkeypatch.setitem(trl_bench.ANCHOR, "max_completion_length", 8)
    threads = torch.get_num_threads()
    try:
        r = trl_bench.side_by_side(str(ANCHOR_SCRIPT), rounds=1, steps=3, warmup=1, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert r["completions_per_step"] == 8 and len(r["grpo_step_s_per_round"]) == len(r["rlsd_step_s_per_round"]) == 1
    assert r["rlsd_teacher_s"] > 0 and r["no_grad_forward_s"] > 0 and r["grpo_step_s"] > 0
    assert r["rlsd_extra_s"] == pytest.approx(r["rlsd_step_s"] - r["grpo_step_s"], abs=1e-3)
    assert r["rlsd_extra_over_forward"] == pytest.approx(r["rlsd_extra_s"] / r["no_grad_forward_s"], rel=0.01)
    # the teacher prompt carries the reference and the instruction: longer than the student's; tokenizing it is a
    # part of the teacher pass
    assert r["prompt_tokens_mean"]["teacher"] > r["prompt_tokens_mean"]["student"] > 0
    assert 0 < r["teacher_tokenize_s"] < r["rlsd_teacher_s"]


def test_trl_side_by_side_refuses_a_file_that_is_not_the_anchor(tmp_path):
    from rlsd.integrations.trl_bench import load_anchor

    with pytest.raises(FileNotFoundError, match="no such file"):
        load_anchor(str(tmp_path / "missing.py"))
    (tmp_path / "other.py").write_text("def build_tokenizer():\n    pass\n")
    with pytest.raises(AttributeError, match="build_processor"):
        load_anchor(str(tmp_path / "other.py"))
