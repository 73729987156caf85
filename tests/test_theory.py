"""Tests for rlsd/theory.py: the identities of notebook 01 on random inputs (Theorem 1 at one position and token by
token, the chain rule of mutual information, Theorem 4), Proposition 1's exact variance against autograd gradients
and against sampled r, the SGD demonstration, and the figure helpers."""

import itertools
import math

import numpy as np
import pytest
import torch

from rlsd import theory as th

SEEDS = range(12)


def np_kl(p, q):
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    return float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0)))


# ----------------------------------------------------------------------------------------------------------------------
# Theorem 1 at one position


@pytest.mark.parametrize("seed", SEEDS)
def test_theorem1_identity_and_student_independent_mi(seed):
    case = th.random_case(seed, num_r=4, vocab=7, concentration=0.7)
    rows = np.array([case.decompose(th.random_distribution(100 + seed * 7 + j, 7, 0.5)) for j in range(6)])
    opsd, ideal, mi = rows.T
    np.testing.assert_allclose(opsd, ideal + mi, rtol=0, atol=1e-9)
    assert (mi >= 0).all() and (ideal >= 0).all()
    assert np.ptp(mi) < 1e-9
    # independent numpy reference for MI: Σ_r p(r) KL(P_T(.|r) ‖ P̄_T)
    prior, teacher = case.prior_R.numpy(), case.teacher_RV.numpy()
    marginal = prior @ teacher
    assert mi[0] == pytest.approx(sum(prior[r] * np_kl(teacher[r], marginal) for r in range(4)), abs=1e-12)
    # the marginal is the minimiser: ideal = 0 and opsd = MI there, strictly more for any other student
    opsd_at_marginal, ideal_at_marginal, mi_at_marginal = case.decompose(case.marginal_V)
    assert abs(ideal_at_marginal) < 1e-12 and opsd_at_marginal == pytest.approx(mi_at_marginal, abs=1e-12)
    assert (opsd > opsd_at_marginal).all()


def test_hand_built_case_and_sweep_minimum():
    case = th.hand_built_case()
    np.testing.assert_allclose(case.marginal_V.numpy(), [0.46, 0.30, 0.15, 0.09], atol=1e-12)
    alphas = np.linspace(0, 1, 101)
    sweep = th.decomposition_sweep(case, th.mixture_path(case.teacher_RV[0], case.teacher_RV[1], alphas))
    assert np.abs(sweep["gap"]).max() < 1e-12
    assert np.ptp(sweep["mi"]) < 1e-12 and sweep["mi"][0] > 0.2
    assert alphas[sweep["opsd"].argmin()] == pytest.approx(0.4)  # P_S(α = p(b)) = P̄_T
    assert sweep["opsd"].min() == pytest.approx(sweep["mi"][0], abs=1e-12)
    assert sweep["jsd"].min() > 0.01  # OPSD's practical JSD has a floor too


def test_expected_jsd_matches_numpy():
    case = th.random_case(3, num_r=3, vocab=5)
    students = torch.stack([th.random_distribution(s, 5) for s in range(4)])
    got = th.expected_jsd(case, students, beta=0.5).numpy()
    prior, teacher = case.prior_R.numpy(), case.teacher_RV.numpy()
    for a, student in enumerate(students.numpy()):
        want = 0.0
        for r in range(3):
            m = 0.5 * teacher[r] + 0.5 * student
            want += prior[r] * (0.5 * np_kl(teacher[r], m) + 0.5 * np_kl(student, m))
        assert got[a] == pytest.approx(want, abs=1e-6)


def test_discrete_case_rejects_non_distributions():
    with pytest.raises(ValueError):
        th.DiscreteCase(prior_R=[0.5, 0.6], teacher_RV=[[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError):
        th.DiscreteCase(prior_R=[0.5, 0.5], teacher_RV=[[1.0, 0.0, 0.0]])


# ----------------------------------------------------------------------------------------------------------------------
# the enumerable autoregressive model


def _all_prefixes(vocab, t):
    return list(itertools.product(range(vocab), repeat=t))


@pytest.mark.parametrize("seed", range(6))
def test_enumeration_and_bayes_student(seed):
    model = th.random_sequence_model(seed, num_r=3, vocab=3, length=3, concentration=0.8)
    sequences_ST, joint_RS = th.enumerate_sequences(model)
    assert sequences_ST.shape == (27, 3)
    assert float(joint_RS.sum()) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(joint_RS.sum(1).numpy(), model.prior_R.numpy(), atol=1e-12)
    # the joint of one (r, y) equals the product of the teacher's conditionals, computed by hand
    y, r = sequences_ST[17].tolist(), 2
    by_hand = float(model.prior_R[r]) * np.prod(
        [float(model.teacher[t][r, th.prefix_index(y, t, 3), y[t]]) for t in range(3)])
    assert float(joint_RS[r, 17]) == pytest.approx(by_hand, rel=1e-12)
    # the Bayes student is a distribution at every prefix and its rollouts have exactly the joint's marginal P(y | x)
    student = th.bayes_student(model)
    for table_PV in student:
        np.testing.assert_allclose(table_PV.sum(1).numpy(), 1.0, atol=1e-12)
    rollout_S = [np.prod([float(student[t][th.prefix_index(seq, t, 3), seq[t]]) for t in range(3)])
                 for seq in sequences_ST.tolist()]
    np.testing.assert_allclose(rollout_S, joint_RS.sum(0).numpy(), atol=1e-12)
    # prefix posteriors agree with brute-force marginalisation of the joint
    for t, (prefix_prob_P, posterior_PR) in enumerate(th.prefix_posteriors(model)):
        for prefix in _all_prefixes(3, t):
            match = (sequences_ST[:, :t] == torch.tensor(prefix, dtype=torch.long)).all(1)
            p = th.prefix_index(prefix, t, 3)
            assert float(prefix_prob_P[p]) == pytest.approx(float(joint_RS[:, match].sum()), abs=1e-12)
            np.testing.assert_allclose(posterior_PR[p].numpy(),
                                       (joint_RS[:, match].sum(1) / joint_RS[:, match].sum()).numpy(), atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_chain_rule_and_token_decomposition(seed):
    model = th.random_sequence_model(seed, num_r=3, vocab=3, length=3, concentration=0.8)
    mi_T = th.position_mutual_information(model)
    assert (mi_T >= -1e-12).all()
    assert mi_T.sum() == pytest.approx(th.sequence_mutual_information(model), abs=1e-9)
    bayes_weights = th.student_prefix_probs(th.bayes_student(model))
    results = [th.token_decomposition(model, student, prefix_weights=bayes_weights)
               for student in (th.bayes_student(model), th.prior_only_student(model))]
    for result in results:
        np.testing.assert_allclose(result["opsd"], result["ideal"] + result["mi"], atol=1e-9)
        np.testing.assert_allclose(result["mi"], mi_T, atol=1e-9)  # the same for both students
    assert np.abs(results[0]["ideal"]).max() < 1e-12  # the Bayes student is ideal
    assert results[1]["ideal"][1:].max() > 1e-4  # the prior-only student is not (it ignores the prefix)
    # on-policy weights (the default) also satisfy the identity
    own = th.token_decomposition(model, th.prior_only_student(model))
    np.testing.assert_allclose(own["opsd"], own["ideal"] + own["mi"], atol=1e-9)


def test_hand_built_sequence_model_information_sits_on_decisive_tokens():
    model = th.hand_built_sequence_model()
    mi_T = th.position_mutual_information(model)
    assert abs(mi_T[0]) < 1e-12 and abs(mi_T[2]) < 1e-12  # narration carries nothing about r
    assert mi_T[1] > 0.3 and mi_T[3] > 0.05
    assert mi_T.sum() == pytest.approx(th.sequence_mutual_information(model), abs=1e-12)


def test_sequence_model_rejects_bad_tables():
    model = th.random_sequence_model(0)
    with pytest.raises(ValueError):
        th.SequenceModel(prior_R=model.prior_R, teacher=(model.teacher[0], model.teacher[2]))


# ----------------------------------------------------------------------------------------------------------------------
# Theorem 4


@pytest.mark.parametrize("seed", range(6))
def test_theorem4_evidence_weight_is_belief_update(seed):
    model = th.random_sequence_model(100 + seed, num_r=3, vocab=3, length=3, concentration=0.6)
    sequences_ST, _ = th.enumerate_sequences(model)
    for y in sequences_ST.tolist():
        for r in range(3):
            weights_T = th.evidence_weights(model, y, r)
            np.testing.assert_allclose(weights_T.numpy(), th.belief_updates(model, y, r).numpy(), rtol=1e-9)
            assert float(weights_T.prod()) == pytest.approx(th.posterior_ratio(model, y, r), rel=1e-9)


def test_theorem4_needs_the_bayes_student():
    model = th.hand_built_sequence_model()
    y, r = (0, 1, 1, 1), 1
    np.testing.assert_allclose(th.evidence_weights(model, y, r).numpy(), [1.0, 38 / 15, 1.0, 1.1729], atol=1e-4)
    off = th.evidence_weights(model, y, r, student=th.prior_only_student(model))
    assert abs(float(off[3]) - float(th.belief_updates(model, y, r)[3])) > 1e-2


# ----------------------------------------------------------------------------------------------------------------------
# Proposition 1


def _parameterisations(vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(vocab, 3, generator=gen, dtype=torch.float64)
    return {
        "softmax": (th.softmax_logits, torch.randn(vocab, generator=gen, dtype=torch.float64)),
        "probabilities": (th.probability_coordinates, th.random_distribution(seed, vocab)),
        "linear": (th.linear_softmax(features), torch.randn(3, generator=gen, dtype=torch.float64)),
    }


@pytest.mark.parametrize("seed", range(5))
def test_prop1_exact_variance_against_autograd(seed):
    case = th.random_case(200 + seed, num_r=3, vocab=5)
    prior, teacher = case.prior_R, case.teacher_RV
    for name, (log_student, theta) in _parameterisations(5, seed).items():
        grads_RD, ideal_D = th.per_r_gradients(prior, teacher, log_student, theta)
        delta_RD = grads_RD - ideal_D
        assert float((prior @ delta_RD).norm()) < 1e-12  # E_r δ = 0
        variance = float(prior @ (delta_RD**2).sum(1))
        scores = th.student_scores(log_student, theta)
        assert th.prop1_variance_exact(prior, teacher, scores) == pytest.approx(variance, rel=1e-9)
        diagonal = th.prop1_variance_diagonal(prior, teacher, scores)
        if name == "probabilities":  # orthogonal scores: the diagonal formula is exact
            assert diagonal == pytest.approx(variance, rel=1e-9)
        if name == "softmax":  # δ(r) = P̄_T - P_T(.|r): the variance is Σ_v Var_r P_T(v|r), whatever the student
            torch.testing.assert_close(delta_RD, case.marginal_V - teacher, rtol=0, atol=1e-12)
            assert th.prop1_variance_softmax(prior, teacher) == pytest.approx(variance, rel=1e-9)


def test_prop1_diagonal_formula_is_neither_exact_nor_a_bound_for_softmax():
    case = th.hand_built_case()
    prior, teacher = case.prior_R, case.teacher_RV
    exact = th.prop1_variance_softmax(prior, teacher)
    uniform = th.prop1_variance_diagonal(prior, teacher, th.student_scores(th.softmax_logits, torch.zeros(4)))
    assert uniform < 0.8 * exact  # too small at the uniform student
    peaked = torch.tensor([0.0, 0.0, 8.0, 0.0])  # peaked on token 2, whose probability the teacher never varies
    peaked_diag = th.prop1_variance_diagonal(prior, teacher, th.student_scores(th.softmax_logits, peaked))
    assert peaked_diag > 1.5 * exact


@pytest.mark.parametrize("name", ["softmax", "linear"])
def test_prop1_sampled_variance_matches_exact_formula_only(name):
    case = th.random_case(7, num_r=4, vocab=5)
    log_student, theta = _parameterisations(5, 1)[name]
    result = th.gradient_noise(case.prior_R, case.teacher_RV, log_student, theta, num_samples=40_000, seed=0)
    se = result["empirical_se"]
    assert abs(result["empirical_second_moment"] - result["formula_exact"]) < 4 * se
    assert abs(result["empirical_second_moment"] - result["formula_diagonal"]) > 10 * se  # a wrong formula fails
    assert result["exact_variance"] == pytest.approx(result["formula_exact"], rel=1e-9)
    assert result["empirical_variance"] == pytest.approx(result["empirical_second_moment"], rel=0.02)
    assert result["exact_mean_norm"] < 1e-12 and result["empirical_mean_norm"] < 0.05


# ----------------------------------------------------------------------------------------------------------------------
# SGD


def test_sgd_opsd_floor_and_ideal_convergence():
    case = th.hand_built_case()
    ideal = th.sgd_on_single_position(case, "ideal", steps=300, lr=1.0)
    opsd = th.sgd_on_single_position(case, "opsd", steps=600, lr=1.0, seed=0)
    decayed = th.sgd_on_single_position(case, "opsd", steps=600, lr=1.0, seed=0, schedule="inverse")
    mi = ideal["mi"]
    assert ideal["ideal"][-1] < 1e-10 and ideal["opsd"][-1] == pytest.approx(mi, abs=1e-9)
    for run in (ideal, opsd, decayed):
        assert (run["opsd"] >= mi - 1e-12).all()  # never below the floor
        np.testing.assert_allclose(run["opsd"], run["ideal"] + mi, atol=1e-9)
    assert opsd["ideal"][300:].mean() > 1e-2  # constant lr: stuck at a noise level
    assert decayed["ideal"][300:].mean() < 0.25 * opsd["ideal"][300:].mean()
    after = th.student_after_each_r(opsd, num_r=2, burn_in=100)
    assert after[0, 0] - after[1, 0] > 0.1  # the student leans toward the r it was just shown
    assert set(np.unique(opsd["r"])) == {0, 1} and (ideal["r"] == -1).all()
    with pytest.raises(ValueError):
        th.sgd_on_single_position(case, "jsd", steps=1, lr=1.0)


# ----------------------------------------------------------------------------------------------------------------------
# figures


def test_figures_render_and_save(tmp_path):
    case = th.hand_built_case()
    alphas = np.linspace(0, 1, 11)
    sweep = th.decomposition_sweep(case, th.mixture_path(case.teacher_RV[0], case.teacher_RV[1], alphas))
    model = th.hand_built_sequence_model()
    runs = {"ideal": th.sgd_on_single_position(case, "ideal", 20, 1.0),
            "OPSD one r/step": th.sgd_on_single_position(case, "opsd", 20, 1.0)}
    bars = {"softmax": th.gradient_noise(case.prior_R, case.teacher_RV, th.softmax_logits, torch.zeros(4), 100)}
    scatter = {"empirical": [0.1, 0.2], "exact": [0.1, 0.2], "diagonal": [0.08, 0.25]}
    y = (0, 1, 1, 1)
    examples = {"a": (y, th.evidence_weights(model, y, 1).numpy(), th.belief_updates(model, y, 1).numpy(),
                      th.belief_trajectory(model, y, 1).numpy())}
    figures = {
        "decomposition": th.plot_decomposition(alphas, sweep, 0.4, {"P̄_T": case.decompose(case.marginal_V)}),
        "positions": th.plot_position_information(th.position_mutual_information(model), 0.5,
                                                  th.token_decomposition(model, th.prior_only_student(model)),
                                                  ["a", "b", "c", "d"]),
        "sgd": th.plot_sgd(runs, runs["ideal"]["mi"]),
        "noise": th.plot_gradient_noise(bars, scatter),
        "evidence": th.plot_evidence(examples, 1),
    }
    for name, fig in figures.items():
        assert len(fig.axes) == 2
        png, pdf = th.save_figure(fig, name, directory=tmp_path / "figs")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError):
        th.save_figure(figures["sgd"], "../escape", directory=tmp_path)
    assert th.FIGURES_DIR.name == "figures" and (th.FIGURES_DIR.parent / "rlsd" / "theory.py").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# RLSD's hidden distillation term


def _drift_case(seed, vocab=5, spread=1.0):
    rng = np.random.default_rng(seed)
    student = torch.tensor(rng.dirichlet(np.ones(vocab)), dtype=torch.float64)
    teacher = torch.softmax(torch.log(student) + spread * torch.tensor(rng.standard_normal(vocab)), -1)
    return student, teacher


def _binomial_m(p, G, eps=1e-6):
    """E[max(A_i, 0)] in closed form: k successes of G, A = (1 - k/G) / (s_k + eps) for the k successes."""
    from math import comb, sqrt
    total = 0.0
    for k in range(1, G):
        s_k = sqrt(k * (G - k) / (G * (G - 1)))
        total += comb(G, k) * p**k * (1 - p) ** (G - k) * k * (1 - k / G) / (s_k + eps)
    return total / G


@pytest.mark.parametrize("p,G", [(0.5, 2), (0.3, 4), (0.5, 8), (0.9, 8)])
def test_advantage_moments_are_balanced_and_match_the_binomial_form(p, G):
    moments = th.advantage_moments(p, G)
    assert abs(moments["mean"]) < 1e-12
    assert moments["pos"] == pytest.approx(moments["neg"], abs=1e-12)
    assert moments["pos"] == pytest.approx(_binomial_m(p, G), rel=1e-12)
    assert moments["p_mixed"] == pytest.approx(1 - p**G - (1 - p) ** G, abs=1e-12)
    assert th.advantage_moments(0.0, G)["pos"] == 0.0  # all-equal groups: no signal, no drift


@pytest.mark.parametrize("seed,G,negative_only", [(0, 2, False), (1, 3, False), (2, 4, False), (3, 3, True),
                                                  (4, 4, True)])
def test_expected_gradient_enumerated_equals_the_factorisation(seed, G, negative_only):
    student, teacher = _drift_case(seed)
    p, lam, eps = 0.4, 0.5, 0.2
    exact = th.drift_gradient_enumerated(torch.log(student), teacher, torch.full((5,), p, dtype=torch.float64), G,
                                         lam, eps, negative_only)
    fact = th.drift_gradient_factorised(student, teacher, p, G, lam, eps, negative_only)
    assert float(exact["grpo"].abs().max()) < 1e-15 and float(exact["grpo_part"].abs().max()) < 1e-15
    torch.testing.assert_close(exact["rlsd"], fact["drift"], rtol=0, atol=1e-15)
    torch.testing.assert_close(exact["drift_part"], fact["drift"], rtol=0, atol=1e-15)
    assert float(fact["drift"].norm()) > 1e-3  # RLSD moves the student although the reward says nothing
    assert abs(float(fact["drift"].sum())) < 1e-15  # a logit gradient of a softmax sums to 0


def test_expected_gradient_negative_controls():
    student, teacher = _drift_case(5, spread=2.0)
    lam, eps, G = 0.5, 0.2, 3
    # a reward that depends on the response: GRPO's expected gradient is not 0 and the factorisation fails
    dependent = th.drift_gradient_enumerated(torch.log(student), teacher,
                                             torch.tensor([0.9, 0.5, 0.5, 0.5, 0.1], dtype=torch.float64), G, lam, eps)
    assert float(dependent["grpo"].abs().max()) > 1e-2
    fact = th.drift_gradient_factorised(student, teacher, 0.5, G, lam, eps)
    assert float((dependent["rlsd"] - fact["drift"]).abs().max()) > 1e-2
    # φ without the clip predicts a different expected gradient where the clip is active
    independent = th.drift_gradient_enumerated(torch.log(student), teacher, torch.full((5,), 0.5, dtype=torch.float64),
                                               G, lam, eps)
    m = th.advantage_moments(0.5, G)
    clipless = lam * m["pos"] * (th.drift_direction(student, teacher, None, True)
                                 + th.drift_direction(student, teacher, None, False))
    assert float((independent["rlsd"] - clipless).abs().max()) > 1e-3
    assert float(th.log_ratio(student, teacher).abs().max()) > math.log(1.2)  # the clip is indeed active here


def test_drift_inside_the_clip_is_forward_kl_plus_half_chi2_and_first_order_reverse_kl():
    student, teacher = _drift_case(6, spread=1.5)
    grads = th.divergence_gradients(torch.log(student), teacher)
    torch.testing.assert_close(th.drift_direction(student, teacher, None, True), -grads["forward_kl"], rtol=0,
                               atol=1e-15)
    torch.testing.assert_close(th.drift_direction(student, teacher, None, False), -0.5 * grads["chi2"], rtol=0,
                               atol=1e-15)
    # first order: as the teacher approaches the student, d+ + d- -> 2·(-∇KL(π ‖ P_T)), error O(spread)
    errors = []
    for spread in (0.1, 0.01, 0.001):
        student, teacher = _drift_case(6, spread=spread)
        reverse = -th.divergence_gradients(torch.log(student), teacher)["reverse_kl"]
        both = th.drift_direction(student, teacher, 0.2, True) + th.drift_direction(student, teacher, 0.2, False)
        errors.append(float((both - 2 * reverse).norm() / (2 * reverse).norm()))
        assert th.cosine(both, reverse) > 1 - 10 * spread**2
    assert errors[1] < 0.2 * errors[0] and errors[2] < 0.2 * errors[1]
    assert errors[0] > 1e-4  # not identical: φ is not δ


def test_drift_cosine_does_not_depend_on_lambda_group_size_or_success_rate():
    student, teacher = _drift_case(8, spread=1.0)
    reference = th.drift_gradient_factorised(student, teacher, 0.5, 8, 0.5, 0.2)["drift"]
    for p, G, lam in ((0.2, 4, 0.1), (0.7, 6, 1.0)):
        other = th.drift_gradient_factorised(student, teacher, p, G, lam, 0.2)["drift"]
        assert th.cosine(other, reference) == pytest.approx(1.0, abs=1e-12)
    assert th.cosine(th.drift_gradient_factorised(student, teacher, 0.5, 8, 0.5, 0.5)["drift"], reference) < 1 - 1e-6


def test_monte_carlo_agrees_with_exact_and_catches_a_wrong_target():
    student, teacher = _drift_case(9, spread=1.0)
    exact = th.drift_gradient_factorised(student, teacher, 0.5, 8, 0.5, 0.2)["drift"]
    mean, se = th.monte_carlo_group_gradient(torch.log(student), teacher, 0.5, 8, 0.5, 0.2, num_groups=20_000, seed=0)
    assert float(((mean - exact) / se).abs().max()) < 4.5
    wrong = th.drift_gradient_factorised(student, teacher, 0.5, 8, 0.5, 0.2, negative_only=True)["drift"]
    assert float(((mean - wrong) / se).abs().max()) > 6  # half the drift is detectably wrong


def test_habit_rate_closed_form_grows_and_saturates():
    student = torch.tensor([0.35, 0.25, 0.2, 0.1, 0.1], dtype=torch.float64)
    habit, m = 3, th.advantage_moments(0.5, 8)["pos"]
    spread = float(((torch.eye(5, dtype=torch.float64)[habit] - student) ** 2).sum())
    for lam, eps in ((0.5, 0.2), (1.0, 0.5)):
        rates = {}
        for negative_only in (False, True):
            rows = []
            for h in np.linspace(0, 0.6, 25):
                out = th.drift_gradient_factorised(student, th.habit_teacher(student, habit, h), 0.5, 8, lam, eps,
                                                   negative_only)
                rows.append(th.habit_rate(out["drift"], student, habit))
                closed = th.habit_rate_closed_form(student, habit, h, 0.0 if negative_only else m, m, lam, eps)
                assert rows[-1] == pytest.approx(closed, rel=1e-12, abs=1e-18)
            rates[negative_only] = np.array(rows)
        full, neg = rates[False], rates[True]
        bound = 4 * lam * eps * m * 0.1**2 * spread
        assert full[0] == 0 and (np.diff(full) >= -1e-15).all() and (full <= bound + 1e-15).all()
        assert full[-1] == pytest.approx(bound, rel=1e-12)  # saturated
        assert neg[-1] == pytest.approx(bound / 2, rel=1e-12) and (neg[1:] < full[1:]).all()
    # the bound scales with λ·ε: the λ 1.0 / ε 0.5 cell saturates at 5 x the paper's (λ 0.5, ε 0.2)
    assert th.habit_rate_closed_form(student, habit, 0.6, m, m, 1.0, 0.5) == pytest.approx(
        5 * th.habit_rate_closed_form(student, habit, 0.6, m, m, 0.5, 0.2), rel=1e-12)


def test_thought_only_removes_the_drift_outside_the_thought_only():
    thought = (torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)),
               torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64))
    answer = (torch.log(torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)),
              torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64))
    off = th.thought_only_gradients(thought, answer, 0.5, 3, 0.5, 0.2, thought_only=False)
    on = th.thought_only_gradients(thought, answer, 0.5, 3, 0.5, 0.2, thought_only=True)
    assert float(off[1].norm()) > 1e-3  # without the switch the answer token is pulled too
    assert float(on[1].abs().max()) < 1e-15
    torch.testing.assert_close(on[0], off[0], rtol=0, atol=1e-15)
    # each position's drift is that position's one-token drift, halved by the token-mean over 2 tokens
    for (logits, teacher), grad in zip((thought, answer), off):
        one = th.drift_gradient_factorised(torch.softmax(logits, -1), teacher, 0.5, 3, 0.5, 0.2)["drift"]
        torch.testing.assert_close(grad, one / 2, rtol=0, atol=1e-15)


def test_hidden_drift_figure_renders(tmp_path):
    delta = np.linspace(-1, 1, 11)
    phi_curves = {"delta": delta, "φ+": th.phi(delta, True, 0.2).numpy(), "φ-": th.phi(delta, False, 0.2).numpy()}
    bars = {"grpo": np.zeros(5), "rlsd": np.ones(5), "drift": np.ones(5), "first_order": np.ones(5), "title": "b"}
    cosines = {"ε 0.2": (np.array([0.01, 0.1]), np.array([0.99, 0.9]))}
    habit = {"strength": np.linspace(0, 1, 3), "a": (np.array([0, 1, 2.0]), "-", "tab:red")}
    fig = th.plot_hidden_drift(phi_curves, bars, cosines, habit)
    assert len(fig.axes) == 4 and all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    png, _ = th.save_figure(fig, "hidden", directory=tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
