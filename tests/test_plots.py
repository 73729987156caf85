"""The figures' contents: paired differences, reference lines, keys that fit, n and smoothing stated on the figure."""

import math

import numpy as np
import pytest

from rlsd import plots as P


def seed_logs(evals=(), metrics=()):
    """evals / metrics: [(step, {key: value})] -> one seed's logs."""
    return {"eval": [{"step": s, **v} for s, v in evals], "metrics": [{"step": s, **v} for s, v in metrics],
            "samples": []}


def acc_run(per_seed: dict[int, list[float]], steps=(0, 25, 50), **extra):
    return {seed: seed_logs([(s, {"accuracy": a, **extra}) for s, a in zip(steps, accs)])
            for seed, accs in per_seed.items()}


def test_paired_curve_takes_differences_seed_by_seed():
    grpo = acc_run({0: [0.5, 0.6, 0.7], 1: [0.5, 0.4, 0.5], 2: [0.5, 0.8, 0.6]})
    rlsd = acc_run({0: [0.5, 0.62, 0.71], 1: [0.5, 0.42, 0.51], 2: [0.5, 0.82, 0.61], 7: [0.5, 0.0, 0.0]})
    steps, mean, se, n = P.paired_curve(rlsd, grpo)
    assert list(steps) == [0, 25, 50] and n == 3  # seed 7 has no GRPO partner: left out
    assert mean == pytest.approx([0.0, 0.02, 0.01])
    assert se == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)  # the same offset in every seed: no paired noise
    # Unpaired, the same runs would look noisy: the seed-to-seed spread is large. Shuffling the seed labels of
    # one side (breaking the pairing) must change the SE -- an implementation that ignored seeds would not notice.
    shuffled = {0: grpo[1], 1: grpo[2], 2: grpo[0]}
    _, mean_s, se_s, _ = P.paired_curve(rlsd, shuffled)
    assert mean_s == pytest.approx(mean)  # the mean of differences is the difference of means either way
    assert se_s[1] > 0.05


def test_paired_curve_one_seed_has_no_standard_error_and_unshared_steps_are_dropped():
    a = acc_run({0: [0.5, 0.6, 0.7]})
    b = acc_run({0: [0.5, 0.5]}, steps=(0, 50))
    steps, mean, se, n = P.paired_curve(a, b)
    assert list(steps) == [0, 50] and n == 1 and mean == pytest.approx([0.0, 0.2])
    assert all(math.isnan(x) for x in se)
    assert P.paired_curve(a, {})[3] == 0


def _training_runs(with_online=True):
    runs = {"grpo": acc_run({s: [0.5, 0.6, 0.7] for s in range(3)}),
            "rlsd": acc_run({s: [0.5, 0.62 + 0.01 * s, 0.7] for s in range(3)})}
    for name in runs:
        for logs in runs[name].values():
            logs["metrics"] = [{"step": k, "reward_mean": 0.5, "entropy": 0.2, "lambda": 0.5} for k in range(1, 51)]
    if with_online:
        runs["opsd_online"] = acc_run({s: [0.5, 0.0, 0.0] for s in range(3)})
    return runs


def test_training_figure_has_the_paired_panel_states_n_and_smoothing_and_names_what_it_leaves_out():
    fig = P.training_dynamics_figure(_training_runs(), lambda_zero_step=25, eval_items=100)
    paired_ax = next(ax for ax in fig.axes if ax.get_title().startswith("test accuracy, paired"))
    lines = [ln for ln in paired_ax.get_lines() if ln.get_label().startswith("RLSD")]
    assert [ln.get_label() for ln in lines] == ["RLSD − GRPO (n=3 paired seeds)"]
    assert list(lines[0].get_ydata()) == pytest.approx([0.0, 3.0, 0.0])  # points
    assert paired_ax.collections  # the ±1 paired SE band
    caption = fig._suptitle.get_text()
    assert "trailing 10-step moving average" in caption and "not smoothed" in caption
    assert "OPSD (online) (n=3 seeds) is not drawn" in caption and "at most 0.0%" in caption
    keys = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "GRPO (n=3 seeds)" in keys and not any(k.startswith("OPSD (online)") for k in keys)
    # without the degenerate run there is nothing to explain
    assert "not drawn" not in P.training_dynamics_figure(_training_runs(False), 25, 100)._suptitle.get_text()


def test_leakage_figure_three_measures_with_the_teachers_habit_and_lambda_only_with_rlsd():
    base = {"teacher/none": {"mention_prob": 0.194, "leak_rate": 0.0}}
    metrics = [{"step": k, "rollout_leak_rate": 0.1} for k in range(1, 31)]
    runs = {"grpo": acc_run({0: [0.5, 0.6, 0.7]}, leak_rate=0.0, mention_prob=0.001),
            "opsd": acc_run({0: [0.5, 0.6, 0.7]}, leak_rate=0.0, mention_prob=0.19),
            "rlsd": acc_run({0: [0.5, 0.6, 0.7]}, leak_rate=0.0, mention_prob=0.001)}
    runs["opsd"][0]["metrics"] = metrics
    fig = P.leakage_figure(runs, base, lambda_zero_step=25)
    leak_ax, rollout_ax, mention_ax = fig.axes[:3]
    assert "validation decoding" in leak_ax.get_title() and "T = 1" in rollout_ax.get_title()
    for ax in (rollout_ax, mention_ax):  # the habit line, in percent, where it is comparable
        assert any(ln.get_linestyle() != ":" and list(ln.get_ydata()) == pytest.approx([19.4, 19.4])
                   for ln in ax.get_lines())
    assert any("0 at every point: GRPO, RLSD, OPSD" in t.get_text() for t in leak_ax.texts)
    assert any(ln.get_linestyle() == ":" for ln in mention_ax.get_lines())  # RLSD drawn: its λ marker
    no_rlsd = P.leakage_figure({k: v for k, v in runs.items() if k != "rlsd"}, base, lambda_zero_step=25)
    assert not any(ln.get_linestyle() == ":" for ax in no_rlsd.axes for ln in ax.get_lines())
    # logs that predate the rollout metric: the panel says so instead of drawing nothing
    runs["opsd"][0]["metrics"] = []
    old = P.leakage_figure(runs, base)
    assert any("not in these logs" in t.get_text() for t in old.axes[1].texts)


def test_single_column_figure_keeps_every_key_inside_the_figure():
    long = {m: acc_run({0: [0.5, 0.6, 0.7]}) for m in ("rlsd", "rlsd_const", "opsd", "opsd_online", "grpo_opsd")}
    for logs in (x for per_seed in long.values() for x in per_seed.values()):
        logs["metrics"] = [{"step": k, "kl_student_teacher": 0.1} for k in range(1, 21)]
    fig = P.plot_panels(long, [P.KL_PANEL], "KL", smooth=10, ncols=1, panel_size=(6.4, 3.6))
    fig.canvas.draw()
    box = fig.bbox
    legend = fig.legends[0].get_window_extent()
    assert box.x0 <= legend.x0 and legend.x1 <= box.x1 and box.y0 <= legend.y0 and legend.y1 <= box.y1
    assert len(fig.legends[0].get_texts()) == 5


def test_table2_gains_figure_labels_n_per_method_and_the_collapse_on_its_own_scale():
    def row(m, mean, lo, hi, seeds):
        return {"method": m, "accuracy_mean": mean, "accuracy_min": lo, "accuracy_max": hi, "seeds": seeds}

    rows = [row("base", 55.6, None, None, 1), row("grpo", 69.9, 67.8, 71.8, 5), row("rlsd_const", 70.9, 68.8, 73.6, 3),
            row("opsd_online", 0.0, 0.0, 0.0, 3)]
    paper = {"base": {"avg": 51.49}, "grpo": {"avg": 53.86}, "rlsd": {"avg": 56.18}}
    fig = P.table2_gains_figure(rows, paper, "Qwen3-VL-8B-Instruct")
    paper_ax, testbed_ax, collapse_ax = fig.axes
    ticks = [t.get_text() for t in testbed_ax.get_xticklabels()]
    assert ticks == ["GRPO\nn=5", "RLSD,\nconstant λ\nn=3"]  # the label, not the run name, and n per method
    assert testbed_ax.get_ylim()[0] > -10  # the collapse does not set the scale of the others
    assert [t.get_text() for t in collapse_ax.get_xticklabels()] == ["OPSD\n(online)\nn=3"]
    assert any("-55.6" in t.get_text() for t in collapse_ax.texts)
    heights = [p.get_height() for p in testbed_ax.patches]
    assert heights == pytest.approx([69.9 - 55.6, 70.9 - 55.6])
    # without a degenerate run there is no third panel
    assert len(P.table2_gains_figure(rows[:3], paper, "m").axes) == 2
    assert np.isfinite(paper_ax.patches[0].get_height())
