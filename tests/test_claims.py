"""The paired endpoints (rlsd.runs) and the claim verdicts (rlsd.claims) on small synthetic logs whose answers are
known by construction."""

import json

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


def verdicts(summary, credit=None):
    return {r["claim"]: (r["declared"], r["revised"]) for r in C.judge(summary, credit)}


def test_a_clear_paired_gain_is_reproduced_and_none_is_not():
    rows = verdicts(summary_for(0.05))
    assert rows["RLSD > GRPO: area under the test-accuracy curve"] == ("yes", "= declared")
    assert rows["RLSD > GRPO: final test accuracy"] == ("yes", "= declared")
    rows = verdicts(summary_for(0.0))
    assert rows["RLSD > GRPO: area under the test-accuracy curve"][0] == "no"
    assert rows["RLSD > GRPO: final test accuracy"][0] == "no"


def test_few_seeds_are_undetermined_and_the_table_has_both_columns():
    rows = verdicts(summary_for(0.05, n=2))
    assert rows["RLSD > GRPO: final test accuracy"][0].startswith("undetermined")
    md = C.claims_markdown(C.judge(summary_for(0.05)))
    assert f"as declared ({C.DECLARED_COMMIT}, {C.DECLARED_DATE})" in md and "why revised" in md
    for line in md.splitlines():  # no pipe inside a cell: every row has the header's 6 separators
        assert line.count("|") == 6, line


# ---------------------------------------------------------------------------------------------------------
# Every criterion on synthetic logs built to make it say "yes", and on a negative control it must say "no".

NOISE = [0.01, -0.01, 0.02, -0.02, 0.0]
BASE = {"student/none": {"accuracy": 0.5, "majority_baseline": 0.2, "mention_prob": 0.0},
        "teacher/none": {"accuracy": 0.9, "mention_prob": 0.2}, "student/blank": {"accuracy": 0.1},
        "student/shuffled": {"accuracy": 0.1}, "ideal_observer_accuracy": 0.85}


def run(acc, steps=40, n=500, reward=0.5, entropy=(0.3, 0.3), mention=0.0, leak=0.0, rollout_leak=0.0,
        clip=0.04, e=0.0):
    """One seed: test accuracy acc(step) every 10 steps (+ noise e), per-step metrics over `steps` steps."""
    f = acc if callable(acc) else (lambda s: acc)
    evals = [{"step": s, "n": n, "accuracy": f(s) + e, "mention_prob": mention, "leak_rate": leak,
              "unsupported_answer_rate": 0.0} for s in range(10, steps + 1, 10)]
    metrics = [{"step": s, "reward_mean": reward(s) if callable(reward) else reward,
                "entropy": entropy[0] if s <= steps // 10 else entropy[1], "weight_clip_low_frac": clip / 2,
                "weight_clip_high_frac": clip / 2, "weight_clip_frac_all_tokens": clip,
                "rollout_leak_rate": rollout_leak} for s in range(1, steps + 1)]
    return {"metrics": metrics, "eval": evals, "samples": []}


def summarise(**methods):
    """methods: name -> dict of run() keyword arguments (the same for every seed; seeds differ by NOISE)."""
    runs = {name: {s: run(e=e, **kw) for s, e in enumerate(NOISE)} for name, kw in methods.items()}
    return json.loads(json.dumps(R.summarise(runs, BASE, lambda_steps=20)))  # as read back from summary.json


RISE = lambda s: 0.5 + 0.004 * s  # noqa: E731  (a curve that keeps rising)


def test_speed_criterion():
    early = lambda s: min(0.7, 0.5 + 0.02 * s)  # noqa: E731
    late = lambda s: min(0.7, 0.5 + 0.005 * s)  # noqa: E731
    claim = "RLSD > GRPO: speed (steps to the training-reward threshold)"
    assert verdicts(summarise(grpo={"acc": RISE, "reward": late}, rlsd={"acc": RISE, "reward": early}))[claim][0] == "yes"
    assert verdicts(summarise(grpo={"acc": RISE, "reward": late}, rlsd={"acc": RISE, "reward": late}))[claim][0] == "no"


def test_early_split_is_post_hoc_and_can_fail():
    early_gain = lambda s: RISE(s) + (0.05 if s <= 20 else 0.0)  # noqa: E731
    rows = verdicts(summarise(grpo={"acc": RISE}, rlsd={"acc": early_gain}))
    window = next(k for k in rows if k.startswith("RLSD > GRPO while λ > 0"))
    assert rows[window] == ("not declared", "yes")
    assert rows["RLSD > GRPO: final test accuracy"][0] == "no"  # the gain is gone by the end
    rows = verdicts(summarise(grpo={"acc": RISE}, rlsd={"acc": RISE}))
    assert rows[window] == ("not declared", "no")


def test_entropy_both_ways_and_the_collapse():
    above, below = "RLSD's entropy stays above GRPO's", "... or RLSD's entropy ends BELOW GRPO's (against the paper)"
    collapse = "GRPO's entropy collapses"
    rows = verdicts(summarise(grpo={"acc": RISE, "entropy": (0.3, 0.2)}, rlsd={"acc": RISE, "entropy": (0.3, 0.25)}))
    assert rows[above][0] == "yes" and rows[below][1] == "no" and rows[collapse][0] == "yes"
    rows = verdicts(summarise(grpo={"acc": RISE, "entropy": (0.3, 0.3)}, rlsd={"acc": RISE, "entropy": (0.3, 0.2)}))
    assert rows[above][0] == "no" and rows[below][1] == "yes"
    assert rows[collapse][0] == "no"  # negative control: a flat entropy does not collapse


def test_rlsd_leak_bound_counts_sampled_leaks_too():
    claim = "RLSD leaks no more than GRPO (peaks over the trajectory)"
    assert verdicts(summarise(grpo={"acc": RISE}, rlsd={"acc": RISE}))[claim] == ("yes", "yes")
    assert verdicts(summarise(grpo={"acc": RISE}, rlsd={"acc": RISE, "mention": 0.1}))[claim] == ("no", "no")
    # a leak in the T = 1 rollouts alone: the declared P(mention) test passes it, the revised one does not
    assert verdicts(summarise(grpo={"acc": RISE}, rlsd={"acc": RISE, "rollout_leak": 0.1}))[claim] == ("yes", "no")
    # logs without the rollout metric: the revised verdict is not run, never a silent pass
    old = summarise(grpo={"acc": RISE}, rlsd={"acc": RISE})
    for name in ("grpo", "rlsd"):
        old["paired_vs_grpo"].get(name, {}).pop("peak_rollout_leak_rate", None)
    assert verdicts(old)[claim] == ("yes", "not run")


def test_constant_lambda_gets_its_own_leak_row():
    claim = "RLSD with constant λ (the authors' and ms-swift's decay 0) leaks no more than GRPO"
    rows = verdicts(summarise(grpo={"acc": RISE}, rlsd={"acc": RISE}, rlsd_const={"acc": RISE, "leak": 0.3}))
    assert rows[claim] == ("not declared", "no")
    rows = verdicts(summarise(grpo={"acc": RISE}, rlsd={"acc": RISE}, rlsd_const={"acc": RISE}))
    assert rows[claim] == ("not declared", "yes")


def test_opsd_leak_is_counted_in_sampled_outputs():
    claim = "OPSD leaks (as the paper counts: sampled outputs at validation)"
    rollouts = "OPSD's T = 1 training rollouts leak more than GRPO's"
    # the v2 situation: a habit's probability rises, no validation sample shows it, T = 1 rollouts do
    habit = verdicts(summarise(grpo={"acc": RISE}, opsd={"acc": RISE, "mention": 0.19, "rollout_leak": 0.19}))
    assert habit[claim] == ("yes", "no") and habit[rollouts] == ("not declared", "yes")
    leaks = verdicts(summarise(grpo={"acc": RISE}, opsd={"acc": RISE, "mention": 0.3, "leak": 0.3}))
    assert leaks[claim] == ("yes", "yes")
    clean = verdicts(summarise(grpo={"acc": RISE}, opsd={"acc": RISE}))
    assert clean[claim] == ("no", "no") and clean[rollouts] == ("not declared", "no")


def test_decline_is_paired_against_grpo():
    claim = "OPSD's test accuracy peaks, then declines"
    bumpy = lambda s: RISE(s) + (0.05 if s == 30 else 0.0)  # noqa: E731  (noise: one high evaluation, then lower)
    # both methods carry the same peak-minus-final bias: the declared test passes it, the paired one does not
    assert verdicts(summarise(grpo={"acc": bumpy}, opsd={"acc": bumpy}))[claim] == ("yes", "no")
    falls = lambda s: 0.5 + 0.1 * min(s, 20) / 20 - 0.004 * max(0, s - 20)  # noqa: E731
    assert verdicts(summarise(grpo={"acc": RISE}, opsd={"acc": falls}))[claim] == ("yes", "yes")
    # negative control: a rising OPSD curve does not decline
    assert verdicts(summarise(grpo={"acc": bumpy}, opsd={"acc": RISE}))[claim][1] == "no"


def test_online_teacher_must_improve_before_it_collapses():
    claim = "The online teacher improves, then is unstable (the trilemma)"
    diverges = lambda s: 0.0  # noqa: E731  (the v2 runs: degenerate before the first evaluation)
    assert verdicts(summarise(grpo={"acc": RISE}, opsd_online={"acc": diverges}))[claim] == ("yes", "no")
    gains_then_falls = lambda s: 0.62 if s <= 20 else 0.3  # noqa: E731
    assert verdicts(summarise(grpo={"acc": RISE}, opsd_online={"acc": gains_then_falls}))[claim] == ("yes", "yes")
    stable = lambda s: 0.62  # noqa: E731  (improves and stays: stable, no collapse)
    assert verdicts(summarise(grpo={"acc": RISE}, opsd_online={"acc": stable}))[claim] == ("no", "no")


@pytest.mark.parametrize("clip, expected", [(0.089, ("yes", "no")), (0.045, ("yes", "yes")), (0.2, ("no", "no"))])
def test_clip_range_as_the_paper_states_it(clip, expected):
    rows = verdicts(summarise(grpo={"acc": RISE}, rlsd={"acc": RISE, "clip": clip}))
    assert rows["The evidence-weight clip fires on ~3-6% of tokens"] == expected


def credit_json(moved=(0.3, 0.3, 0.3), ci=(0.25, 0.35), diff_ci=(0.05, 0.2), diffs=(0.1, 0.1, 0.1)):
    names = [f"ckpt{i}" for i in range(len(moved))]
    fam = {"relevant_readout": {"mean_abs_delta": 0.3}, "other_readout": {"mean_abs_delta": 0.1}}
    return {"shares": {"all": {"n": 600, "decisive_token_share": 0.2, "decisive_moved_share": 0.42}},
            "per_family": {"count": fam, "pair": fam}, "checkpoints": names,
            "roles": {"readout_needed": {"token_share": 0.1, "moved_share": sum(moved) / len(moved),
                                         "moved_share_ci95": list(ci),
                                         "per_checkpoint_moved_share": dict(zip(names, moved))},
                      "result_answer": {"token_share": 0.09, "moved_share": 0.13}},
            "pinned": {f: {"needed_minus_unneeded_abs_delta": 0.1, "ci95": list(diff_ci),
                           "per_checkpoint": dict(zip(names, diffs))} for f in ("count", "pair")}}


def test_credit_criteria_need_intervals_and_every_checkpoint():
    s = summarise(grpo={"acc": RISE}, rlsd={"acc": RISE})
    decisive, pinned = "Credit lands on decisive tokens", ("... and, where the answer pins them, on the read-outs it "
                                                            "needs rather than the others")
    rows = verdicts(s, credit_json())
    assert rows[decisive] == ("yes", "yes") and rows[pinned] == ("yes", "yes")
    rows = verdicts(s, credit_json(moved=(0.3, 0.3, 0.12)))  # one checkpoint below 1.5 x its token share
    assert rows[decisive][1] == "no"
    rows = verdicts(s, credit_json(ci=(0.14, 0.35)))  # the interval reaches below 1.5 x the token share
    assert rows[decisive][1] == "no"
    rows = verdicts(s, credit_json(diff_ci=(-0.02, 0.2)))  # needed - unneeded within noise
    assert rows[pinned] == ("yes", "no")
    rows = verdicts(s, credit_json(moved=(0.3, 0.3), diffs=(0.1, 0.1)))  # two checkpoints: too few
    assert rows[decisive][1].startswith("undetermined")


def test_other_distillation_methods_get_leak_rows():
    claim = "SDPO leaks more than GRPO (sampled outputs at validation)"
    assert verdicts(summarise(grpo={"acc": RISE}, sdpo={"acc": RISE, "leak": 0.3}))[claim] == ("not declared", "yes")
    assert verdicts(summarise(grpo={"acc": RISE}, sdpo={"acc": RISE}))[claim] == ("not declared", "no")


def test_the_study_confirmation_joins_the_table_only_when_run():
    s = summarise(grpo={"acc": RISE}, rlsd={"acc": RISE})
    study = {"rows": [{"criterion": "confirm, primary: RLSD - GRPO, area", "mean": 1.2, "se": 0.2, "n": 10,
                       "positive": 10, "verdict": "yes"},
                      {"criterion": "confirm, secondary: step 25", "mean": None, "se": None, "n": 0,
                       "positive": None, "verdict": "not run"}]}
    rows = [r for r in C.judge(s, None, study) if r["claim"].startswith("Pre-registered")]
    assert [(r["declared"], r["revised"]) for r in rows] == [("yes", "= declared")]  # the unrun one is left out
    assert not [r for r in C.judge(s) if r["claim"].startswith("Pre-registered")]
