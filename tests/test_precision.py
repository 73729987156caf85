"""float16 that learns (loss scaling, finite-logits guard) and a run that stops when nothing can be learned.

CPU float16 matmuls and their backward run in torch 2.13 (slowly, hence the tiny model)."""

import json
from types import SimpleNamespace

import pytest
import torch

from rlsd.config import make_config
from rlsd.precision import FP16_INITIAL_SCALE, FiniteLogits, LossScale
from rlsd.trainer import Trainer

TOLERANCE = 0.01
"""Relative L2 error allowed between the fp16 and fp32 LoRA gradients of one update (measured: 0.16%)."""


def _trainer(tmp_path, dtype, **fields):
    cfg = make_config("smoke", [f"model.dtype={dtype}", "model.lora_rank=8", "tensorboard=false", "eval_every=0",
                                "save_every=0"], method="grpo", out=str(tmp_path / dtype), **fields)
    return Trainer(cfg, progress=False)


def _lora_grads(trainer, batch, loss_scale=None):
    """The (unscaled) gradients the optimizer would apply for `batch`."""
    if loss_scale is not None:
        trainer.loss_scale = loss_scale
    grads = {}

    def capture(*args, **kwargs):
        grads.update({n: p.grad.detach().float().clone() for n, p in trainer.policy.named_parameters()
                      if p.requires_grad and p.grad is not None})

    trainer.optimizer.step = capture
    stats = trainer.update(batch)
    assert stats["finite"]
    return grads


def _relative_error(a, b):
    num = sum(float((a[n] - b[n]).norm() ** 2) for n in b) ** 0.5
    return num / sum(float(b[n].norm() ** 2) for n in b) ** 0.5


def test_fp16_lora_gradients_match_fp32_with_loss_scaling(tmp_path):
    t32, t16 = _trainer(tmp_path, "float32"), _trainer(tmp_path, "float16")
    assert t16.loss_scale.scale == FP16_INITIAL_SCALE and t32.loss_scale.scale == 1.0
    torch.manual_seed(0)
    batch = t32.rollout()  # one batch for both: the comparison is of the update alone
    assert batch.adv_N.abs().sum() > 0, "need a batch with a gradient"
    g32 = _lora_grads(t32, batch)
    g16 = _lora_grads(t16, batch)
    assert set(g16) == set(g32) and all("lora_" in n for n in g16)
    assert all(g.dtype == torch.float32 for g in g16.values())  # peft keeps the adapters in fp32
    assert all(bool(g.isfinite().all()) for g in g16.values())
    assert _relative_error(g16, g32) < TOLERANCE
    # The per-token loss of a 4,096x larger global batch (2**-12 of this one's): unscaled, fp16 flushes most of the
    # gradient to zero and the tolerance catches it; with the default scale on top it is recovered.
    lost = _lora_grads(t16, batch, LossScale(2.0 ** -12))
    assert _relative_error(lost, g32) > 10 * TOLERANCE
    recovered = _lora_grads(t16, batch, LossScale(2.0 ** -12 * FP16_INITIAL_SCALE))
    assert _relative_error(recovered, g32) < TOLERANCE


def test_loss_scale_halves_on_overflow_grows_after_good_steps_and_resumes():
    s = LossScale.for_dtype("float16")
    s.update(False)
    assert s.scale == FP16_INITIAL_SCALE / 2 and s.good_steps == 0
    s.growth_interval = 3
    for _ in range(3):
        s.update(True)
    assert s.scale == FP16_INITIAL_SCALE and s.good_steps == 0
    s.update(True)
    resumed = LossScale.for_dtype("float16")
    resumed.load_state_dict(s.state_dict())
    assert (resumed.scale, resumed.good_steps) == (s.scale, 1)
    off = LossScale.for_dtype("bfloat16")
    off.update(False)
    assert off.scale == 1.0  # bf16/fp32: no scaling, ever
    params = [torch.nn.Parameter(torch.ones(2))]
    params[0].grad = torch.full((2,), 8.0)
    LossScale(4.0).unscale_(params)
    assert params[0].grad.tolist() == [2.0, 2.0]


def test_finite_logits_guard_allows_suppressed_ids_and_refuses_nan():
    guard = FiniteLogits("float16")
    scores = torch.tensor([[0.0, -float("inf"), 1.0], [2.0, 0.5, -float("inf")]])
    assert guard(None, scores) is scores  # -inf: suppressed tokens
    for bad in (float("nan"), float("inf")):
        broken = scores.clone()
        broken[1, 0] = bad
        with pytest.raises(FloatingPointError, match="non-finite logits at decoding step 1 in 1 of 2 rows") as err:
            guard(None, broken)
        assert "\n" not in str(err.value) and "float16" in str(err.value)


def test_a_nan_model_stops_the_rollout_in_one_line(tiny_model_and_processor):
    from rlsd.inputs import encode_prompts
    from rlsd.prompts import student_messages
    from rlsd.rollout import SamplingParams, hf_generate
    from rlsd.testbed import generate_split

    model, processor = tiny_model_and_processor
    problem = generate_split("train", 1)[0]
    prompts = encode_prompts(processor, [student_messages(problem.question, 1)], [problem.images])
    head = model.get_output_embeddings().weight
    saved = head.detach().clone()
    with torch.no_grad():
        head[5].fill_(float("nan"))
    try:
        with pytest.raises(FloatingPointError, match="non-finite logits at decoding step 0"):
            hf_generate(model, prompts, SamplingParams(max_new_tokens=4), [], processor.tokenizer.eos_token_id,
                        processor.tokenizer.pad_token_id)
    finally:
        with torch.no_grad():
            head.copy_(saved)


@pytest.fixture
def tiny_model_and_processor():
    from rlsd.config import SHIPPED_TINY
    from rlsd.model import ModelSpec, load_policy

    return load_policy(ModelSpec(path=SHIPPED_TINY))


def _zero_rewards(monkeypatch):
    import rlsd.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "score_batch", lambda responses, answers: [SimpleNamespace(reward=0.0)
                                                                                     for _ in responses])


def test_a_run_whose_groups_all_have_equal_rewards_stops_saying_so(tmp_path, monkeypatch, capsys):
    _zero_rewards(monkeypatch)
    cfg = make_config("smoke", ["tensorboard=false", "eval_every=0", "save_every=0", "steps=4",
                                "stop_after_zero_variance_steps=2"], method="grpo", out=str(tmp_path / "run"))
    records = Trainer(cfg, progress=False).train()
    steps = [r for r in records if "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert [r["zero_std_group_frac"] for r in steps] == [1.0, 1.0] and [r["zero_variance_steps"] for r in steps] == [1, 2]
    out = capsys.readouterr().out
    assert "stopped at step 2: every group's rewards were equal for 2 consecutive steps" in out
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 2


def test_without_the_stop_a_zero_variance_run_goes_on(tmp_path, monkeypatch, capsys):
    _zero_rewards(monkeypatch)
    cfg = make_config("smoke", ["tensorboard=false", "eval_every=0", "save_every=0", "steps=3"], method="grpo",
                      out=str(tmp_path / "run"))
    assert cfg.stop_after_zero_variance_steps == 0
    records = Trainer(cfg, progress=False).train()
    assert [r["step"] for r in records if "reward_mean" in r] == [1, 2, 3]
    assert "stopped at step" not in capsys.readouterr().out
