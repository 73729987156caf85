"""The CPU testbed: generators, splits, written solutions, the data loader's errors, evaluation helpers."""

import io
import json
import random
import re

import pytest
from PIL import Image

from rlsd.data import DataError, load_problems
from rlsd.evaluate import apply_control, majority_baseline, wilson_interval
from rlsd.testbed import (CELL, COLOURS, FAMILIES, GRID, content_key, generate_split, ideal_observer_answer,
                          load_splits, make_problem, mentions_reference, read_cells, supported_answer)
from rlsd.tiny import build_tokenizer


def test_generation_is_deterministic_and_prefix_stable():
    a = generate_split("test", 40)
    b = generate_split("test", 80)[:40]
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.answer for p in a] == [p.answer for p in b]
    assert all(x.images[0].tobytes() == y.images[0].tobytes() for x, y in zip(a, b))


def test_splits_are_disjoint_and_balanced():
    train, val, test = load_splits(n_train=3000, n_val=300, n_test=600)
    keys = [{content_key(p) for p in split} for split in (train, val, test)]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    assert len({p.id for p in train + val + test}) == 3900
    for split in (train, val, test):
        families = [p.meta["family"] for p in split]
        assert {f: families.count(f) for f in FAMILIES} == {f: len(split) // len(FAMILIES) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_image_encodes_the_counts(family):
    """Every square is drawn where the scene says; without noise its colour is exactly the prototype."""
    rng = random.Random(7)
    for i in range(10):
        p = make_problem(rng, family, "hard", "test", i, noise=0.0)
        assert p.images[0].size == (GRID * CELL, GRID * CELL)
        cells = read_cells(p.images[0])
        labels = {tuple(map(int, k.split(","))): v for k, v in p.meta["cells"].items()}
        assert set(cells) == set(labels)
        assert all(cells[cell] == COLOURS[labels[cell]] for cell in cells)
        assert {c: list(labels.values()).count(c) for c in COLOURS} == p.meta["counts"]
        assert ideal_observer_answer(p) == p.answer  # noise-free: reading is exact


def test_colour_noise_makes_reading_ambiguous_but_informative():
    problems = generate_split("test", 600)
    ideal = sum(ideal_observer_answer(p) == p.answer for p in problems) / len(problems)
    assert 0.80 < ideal < 0.92  # the documented ~86% ceiling of nearest-prototype reading
    assert ideal > majority_baseline(problems) + 0.25


def test_solutions_are_correct_and_supported():
    for p in generate_split("val", 200):
        counts, meta = p.meta["counts"], p.meta
        fam = meta["family"]
        if fam == "count":
            expected = counts[meta["colour"]]
        elif fam == "pair":
            expected = 10 * counts[meta["colours"][0]] + counts[meta["colours"][1]]
        elif fam == "sum":
            expected = counts[meta["colours"][0]] + counts[meta["colours"][1]]
        elif fam == "diff":
            expected = counts[meta["colours"][0]] - counts[meta["colours"][1]]
            assert expected > 0
        else:
            best = max(counts, key=counts.get)
            assert sorted(counts.values())[-1] > sorted(counts.values())[-2]  # unique maximum
            expected = "ABCD"[meta["options"].index(best)]
        assert p.answer == str(expected)
        assert supported_answer(p, p.solution) == p.answer


def test_supported_answer_detects_answers_that_do_not_follow():
    p = next(q for q in generate_split("test", 20) if q.meta["family"] == "sum")
    a, b = (p.meta["counts"][c] for c in p.meta["colours"])
    thought = f"red 1 , green 1 , blue 1 , yellow 1 , {a} plus {b} = {a + b + 1}"
    assert supported_answer(p, thought) == str(a + b)  # the steps say a+b, whatever the written result
    assert supported_answer(p, "no steps at all") is None


def test_mentions_reference():
    assert mentions_reference("<thought>the reference answer is 7 , red 3</thought>")
    assert not mentions_reference("<thought>red 3 , green 4</thought><answer>7</answer>")


def test_testbed_text_is_compact_under_the_tiny_tokenizer():
    tok = build_tokenizer()
    for p in generate_split("test", 8):
        response = f"<thought>{p.solution}</thought><answer>{p.answer}</answer>"
        n = len(tok(response)["input_ids"])
        assert n <= 25, (response, n)  # one token per word / number
        assert tok.decode(tok(response)["input_ids"]) == response


def test_majority_baseline_and_wilson():
    problems = generate_split("test", 400)
    base = majority_baseline(problems)
    assert 0.15 < base < 0.4
    lo, hi = wilson_interval(50, 100)
    assert lo < 0.5 < hi and abs((hi - lo) - 0.194) < 0.01
    assert wilson_interval(0, 0) == [0.0, 0.0]


def test_controls():
    problems = generate_split("test", 8)
    blank = apply_control(problems, "blank")
    assert all(im[0].getextrema() == ((255, 255),) * 3 for im in blank)
    shuffled = apply_control(problems, "shuffled", seed=1)
    assert sorted(id(im[0]) for im in shuffled) == sorted(id(p.images[0]) for p in problems)
    assert [id(im[0]) for im in shuffled] != [id(p.images[0]) for p in problems]
    with pytest.raises(ValueError, match="control"):
        apply_control(problems, "upside-down")


# --------------------------------------------------------------------------------------------- data loader


def _png_bytes():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_loader_reads_paths_and_parquet_bytes(tmp_path):
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "a.png")
    f = _write_jsonl(tmp_path / "d.jsonl", [
        {"question": "q1", "answer": 3, "image": "a.png", "solution": "because"},
        {"question": "q2", "answer": "B", "images": ["a.png", "a.png"], "id": "x", "source": "s"},
        {"question": "q3", "answer": "\\frac{1}{2}"},
    ])
    problems = load_problems(f)
    assert [p.answer for p in problems] == ["3", "B", "\\frac{1}{2}"]
    assert [len(p.images) for p in problems] == [1, 2, 0]
    assert problems[0].solution == "because" and problems[1].id == "x" and problems[1].meta == {"source": "s"}
    assert problems[0].images[0].getpixel((0, 0)) == (9, 9, 9)

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": ["q"], "answer": ["4"], "image": [{"bytes": _png_bytes(), "path": None}]}),
                   tmp_path / "d.parquet")
    (p,) = load_problems(tmp_path / "d.parquet")
    assert p.images[0].getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize("row, message", [
    ({"answer": "1"}, r"row 1: field 'question' is missing"),
    ({"question": "q"}, r"row 1: field 'answer' is missing"),
    ({"question": "q", "answer": " "}, r"row 1: field 'answer' is missing or empty"),
    ({"question": "q", "answer": "1", "image": "missing.png"}, r"row 1: field 'image'\[0\]: image file not found"),
    ({"question": "q", "answer": "1", "images": ["ok.png", "bad.png"]},
     r"row 1: field 'images'\[1\]: unreadable image"),
])
def test_loader_errors_name_file_row_and_field(tmp_path, row, message):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    f = _write_jsonl(tmp_path / "d.jsonl", [{"question": "fine", "answer": "1"}, row])
    with pytest.raises(DataError, match=message) as err:
        load_problems(f)
    assert str(f) in str(err.value)


def test_loader_rejects_bad_json_and_unknown_types(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"question": "q", "answer": "1"}\n{oops\n')
    with pytest.raises(DataError, match="row 1: invalid JSON"):
        load_problems(f)
    with pytest.raises(DataError, match="unsupported file type"):
        load_problems(_write_jsonl(tmp_path / "d.csv", []))
    with pytest.raises(DataError, match="file not found"):
        load_problems(tmp_path / "nope.jsonl")


def test_evaluate_summary_is_complete_and_seeded():
    from rlsd.evaluate import evaluate
    from rlsd.rollout import SamplingParams
    from rlsd.tiny import build_processor, build_tiny_model

    processor = build_processor()
    model = build_tiny_model(processor.tokenizer, seed=0)
    problems = generate_split("test", 6)
    sampling = SamplingParams(max_new_tokens=12, temperature=0.7, top_p=0.8, top_k=20)
    a = evaluate(model, processor, problems, sampling=sampling, seed=3, progress=False)
    b = evaluate(model, processor, problems, sampling=sampling, seed=3, progress=False)
    assert a.responses == b.responses and a.summary == b.summary  # fixed seed -> same numbers
    s = a.summary
    for key in ("n", "accuracy", "accuracy_ci95", "leak_rate", "mention_prob", "unsupported_answer_rate",
                "format_rate", "mean_response_tokens", "majority_baseline"):
        assert key in s
    assert s["n"] == 6 and 0 < s["mention_prob"] < 1e-3  # a random model has no mention habit
    assert s["mean_response_tokens"] <= 12


def test_careless_demonstrator_is_self_consistent_and_errs_at_its_rate():
    import random

    from rlsd.testbed import careless_solution
    from rlsd.testbed.sft import sft_example

    problems = generate_split("train", 400)
    rng = random.Random(0)
    wrong_reads = total_reads = wrong_answers = 0
    for p in problems:
        thought, answer = careless_solution(p, rng, 0.5)
        assert supported_answer(p, thought) == answer  # its answer follows from its own read-outs
        reads = dict((c, int(v)) for c, v in re.findall(r"(red|green|blue|yellow) (\d+)", thought)[:4])
        wrong_reads += sum(reads[c] != p.meta["counts"][c] for c in COLOURS if p.meta["counts"][c] > 0)
        assert all(abs(reads[c] - p.meta["counts"][c]) <= 1 and reads[c] >= 0 for c in COLOURS)
        total_reads += sum(p.meta["counts"][c] > 0 for c in COLOURS)
        wrong_answers += answer != p.answer
        assert careless_solution(p, rng, 0.0) == (p.solution, p.answer)
    assert 0.45 < wrong_reads / total_reads < 0.55  # non-zero counts: misread at the full rate
    assert 0.3 < wrong_answers / len(problems) < 0.8
    # teacher_demo="correct" (the first version): teacher targets are the correct solution
    messages, target = sft_example(problems[0], True, random.Random(1), mention_prob=0.0, demo_error=1.0,
                                   teacher_demo="correct")
    assert target == f"<thought>{problems[0].solution}</thought><answer>{problems[0].answer}</answer>"
    _, target = sft_example(problems[0], False, random.Random(1), mention_prob=0.0, demo_error=1.0)
    assert target != f"<thought>{problems[0].solution}</thought><answer>{problems[0].answer}</answer>"


def test_shipped_warm_start_was_trained_with_the_default_sft_config():
    """`python -m rlsd sft --out data/tiny-sft` (the README's command) regenerates the shipped checkpoint."""
    from dataclasses import asdict
    from pathlib import Path

    from rlsd.testbed.sft import SFTConfig

    shipped = json.loads((Path(__file__).resolve().parents[1] / "data" / "tiny-sft" / "sft_config.json").read_text())
    assert shipped == asdict(SFTConfig())


def test_conditioned_demonstrator_knows_the_answer_and_nothing_else():
    """Teacher-format targets (rlsd.testbed.conditioned_solution): always the gold answer; the read-outs the answer pins
    are always right; the read-outs nothing pins are exactly as careless as the student-format demonstrator's."""
    from rlsd.testbed import careless_solution, conditioned_solution
    from rlsd.testbed import PINNED_FAMILIES, readout_checks

    problems = generate_split("train", 1000)
    rng = random.Random(0)
    tally = {}  # (source, role) -> [right, total]
    for p in problems:
        thought, answer, exact = conditioned_solution(p, rng, 0.5)
        assert exact and answer == p.answer and supported_answer(p, thought) == p.answer
        student_thought, _ = careless_solution(p, rng, 0.5)
        for source, text in (("teacher", thought), ("student", student_thought)):
            for colour, needed, correct in readout_checks(p, text):
                if p.meta["counts"][colour] == 0:
                    continue  # a 0 misread downwards stays 0: the rate is only exact on non-zero counts
                pinned = needed and p.meta["family"] in PINNED_FAMILIES
                role = "pinned" if pinned else "needed" if needed else "unneeded"
                t = tally.setdefault((source, role), [0, 0])
                t[0] += correct
                t[1] += 1
    rate = {k: right / total for k, (right, total) in tally.items()}
    assert rate[("teacher", "pinned")] == 1.0
    assert 0.45 < rate[("student", "pinned")] < 0.55
    assert abs(rate[("teacher", "unneeded")] - rate[("student", "unneeded")]) < 0.04  # no better reader
    assert rate[("teacher", "needed")] > rate[("student", "needed")] + 0.1  # sum/diff/most: informed, not pinned


def test_pair_family_pins_both_read_outs():
    from rlsd.testbed import needed_colours, readout_checks

    p = next(q for q in generate_split("test", 30) if q.meta["family"] == "pair")
    a, b = (p.meta["counts"][c] for c in p.meta["colours"])
    assert p.answer == str(10 * a + b) and p.question.startswith("What is 10 times the number of")
    assert needed_colours(p) == set(p.meta["colours"])
    assert supported_answer(p, p.solution) == p.answer
    assert supported_answer(p, p.solution.replace(f"= {10 * a + b}", "= 99")) == p.answer  # from the steps
    checks = readout_checks(p, p.solution)
    assert [c for c, _, _ in checks] == list(COLOURS) and all(correct for _, _, correct in checks)
    assert {c for c, needed, _ in checks if needed} == set(p.meta["colours"])
    first = p.meta["colours"][0]
    wrong = p.solution.replace(f"{first} {a} ", f"{first} {a + 1} ", 1)
    assert [correct for c, _, correct in readout_checks(p, wrong) if c == first] == [False]


def test_readout_accuracies_in_the_evaluation_summary():
    from rlsd.evaluate import readout_summary

    problems = [q for q in generate_split("test", 20) if q.meta["family"] in ("count", "sum")][:4]
    responses = [f"<thought>{q.solution}</thought><answer>{q.answer}</answer>" for q in problems]
    s = readout_summary(problems, responses)
    assert s["readout_accuracy_needed"] == 1.0 and s["readout_accuracy_unneeded"] == 1.0
    assert s["readout_count_needed"] + s["readout_count_unneeded"] == 16
    q = problems[0]
    c = q.meta["colour"] if q.meta["family"] == "count" else q.meta["colours"][0]
    n = q.meta["counts"][c]
    bad = responses[0].replace(f"{c} {n} ", f"{c} {n + 1} ", 1)
    s = readout_summary(problems, [bad] + responses[1:])
    assert s["readout_accuracy_needed"] < 1.0 and s["readout_accuracy_unneeded"] == 1.0


def test_wrong_answer_is_wrong_plausible_and_fixed():
    from rlsd.testbed import generate_split, wrong_answer

    problems = generate_split("test", 300)
    wrong = [wrong_answer(p) for p in problems]
    assert wrong == [wrong_answer(p) for p in problems]  # fixed per problem
    assert all(w != p.answer for w, p in zip(wrong, problems))
    for w, p in zip(wrong, problems):
        if p.meta["family"] == "most":
            assert w in "ABCD"
        else:
            assert abs(int(w) - int(p.answer)) == 1 and int(w) >= 0
    assert len({w > p.answer for w, p in zip(wrong, problems) if p.meta["family"] == "count"}) == 2  # both ways
