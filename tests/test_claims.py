"""The paired endpoints (rlsd.runs) and the claim verdicts (rlsd.claims) on small synthetic logs whose answers are
known by construction."""

import pytest

from rlsd import claims as C
from rlsd import runs as R


def logs(acc_by_step, reward=0.5, mention=0.0, entropy=(0.3, 0.3)):
    """One seed's logs: eval accuracy at the given steps, constant training reward over 20 steps."""
    evals = [{"step": s, "accuracy": a, "mention_prob": mention, "leak_rate": 0.0, "unsupported_answer_rate": 0.0}
             for s, a in acc_by_step.items()]
    metrics = [{"step": s, "reward_mean": reward if callable(reward) is False else reward(s),
                "entropy": entropy[0] if s <= 10 else entropy[1], "weight_clip_low_frac": 0.02,
                "weight_clip_high_frac": 0.03, "weight_clip_frac_all_tokens": 0.04} for s in range(1, 21)]
    return {"metrics": metrics, "eval": evals, "samples": []}


def test_paired_difference_and_auc():
    a, b = {0: 0.5, 1: 0.7, 2: 0.6}, {0: 0.4, 1: 0.5, 2: 0.6}
    d = R.paired_difference(a, b)
    assert d["mean"] == pytest.approx(0.1) and d["n"] == 3 and d["positive"] == 2
    assert d["se"] == pytest.approx(0.1 / 3 ** 0.5)  # stdev of (0.1, 0.2, 0.0) / sqrt(3)
    auc = R.per_seed_auc({0: logs({0: 0.0, 10: 1.0, 20: 1.0})})
    assert auc[0] == pytest.approx(0.75)  # trapezoids: (0.5 * 10 + 1.0 * 10) / 20


def test_steps_to_threshold_is_censored_when_never_reached():
    ramp = R.per_seed_steps_to({0: logs({0: 0.5}, reward=lambda s: s / 20)}, threshold=0.5, window=4)
    assert ramp[0] == 12.0  # trailing mean of steps 9..12 = (9+10+11+12)/80 = 0.525 first reaches 0.5 at step 12
    flat = R.per_seed_steps_to({0: logs({0: 0.5}, reward=0.1)}, threshold=0.5, window=4)
    assert flat[0] == 24.0  # never: last step + window


def summary_for(rlsd_gain: float, n: int = 5, mention_gain: float = 0.0):
    base = {"student/none": {"accuracy": 0.5, "majority_baseline": 0.2, "mention_prob": 0.0},
            "teacher/none": {"accuracy": 0.9, "mention_prob": 0.2}, "student/blank": {"accuracy": 0.1},
            "student/shuffled": {"accuracy": 0.1}, "ideal_observer_accuracy": 0.85}
    noise = [0.01, -0.01, 0.02, -0.02, 0.0][:n]
    runs = {"grpo": {s: logs({10: 0.6 + e, 20: 0.65 + e}) for s, e in enumerate(noise)},
            "rlsd": {s: logs({10: 0.6 + e + rlsd_gain, 20: 0.65 + e + rlsd_gain}, mention=mention_gain,
                             entropy=(0.3, 0.3 + rlsd_gain)) for s, e in enumerate(noise)}}
    return R.summarise(runs, base, lambda_steps=10)


def test_a_clear_paired_gain_is_reproduced_and_none_is_not():
    rows = {r["claim"]: r["reproduced"] for r in C.judge(summary_for(0.05))}
    assert rows["RLSD > GRPO: area under the test-accuracy curve"] == "yes"
    assert rows["RLSD > GRPO: final test accuracy"] == "yes"
    rows = {r["claim"]: r["reproduced"] for r in C.judge(summary_for(0.0))}
    assert rows["RLSD > GRPO: area under the test-accuracy curve"] == "no"
    assert rows["RLSD leaks no more than GRPO (peak P(mention) over the trajectory)"] == "yes"


def test_leakage_is_judged_on_the_peak_and_few_seeds_are_undetermined():
    rows = {r["claim"]: r["reproduced"] for r in C.judge(summary_for(0.0, mention_gain=0.1))}
    assert rows["RLSD leaks no more than GRPO (peak P(mention) over the trajectory)"] == "no"
    rows = {r["claim"]: r["reproduced"] for r in C.judge(summary_for(0.05, n=2))}
    assert rows["RLSD > GRPO: final test accuracy"].startswith("undetermined")
    assert "| claim | measured | reproduced |" in C.claims_markdown(C.judge(summary_for(0.05)))
