"""Generation through the benchmark harness, the `testbed` benchmark, and the paper's Table 2 constants.

Generation runs a randomly initialised tiny Qwen3-VL (offline, ~1M parameters): its responses are noise, which is
enough to check the plumbing (batching, images, suppression, seeding) and the agreement with `rlsd.evaluate`.
"""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch
from PIL import Image

from rlsd.benchmarks import (PAPER_BENCHMARKS, PAPER_TABLE2, BenchmarkItem, ImagesMissingError, answer_as_response,
                             build_messages, generate_responses, load_benchmark, paper_table2_rows, score_responses,
                             table2_rows, write_table)
from rlsd.benchmarks.paper import base_controls_rows, table2_testbed_display, table2_testbed_rows
from rlsd.prompts import student_messages
from rlsd.rollout import VALIDATION_SAMPLING
from rlsd.testbed import load_splits
from rlsd.verifier import Verifier

SAMPLING = dataclasses.replace(VALIDATION_SAMPLING, max_new_tokens=12)


@pytest.fixture(scope="module")
def tiny():
    from rlsd.tiny import build_processor, build_tiny_model

    processor = build_processor()
    model = build_tiny_model(processor.tokenizer, seed=0)
    model.eval()
    return model, processor


@pytest.fixture(scope="module")
def testbed_items(tmp_path_factory):
    return load_benchmark("testbed", split="test", n=4, image_cache=tmp_path_factory.mktemp("testbed-images"))


@pytest.fixture(scope="module")
def local_verifier():
    return Verifier(use_process=False)  # trusted, short answers: no worker process needed


# ---------------------------------------------------------------------------
# The testbed benchmark
# ---------------------------------------------------------------------------


def test_testbed_items_are_the_evaluated_problems(testbed_items):
    _, _, problems = load_splits(n_train=0, n_val=0, n_test=4)
    assert [item.id for item in testbed_items] == [p.id for p in problems]
    for item, problem in zip(testbed_items, problems):
        assert item.benchmark == "testbed" and item.answer == problem.answer and not item.images_missing
        # the prompt is the student prompt rlsd.evaluate sends, with the image in the same place
        assert build_messages(item) == student_messages(problem.question, len(problem.images))
        with Image.open(item.images[0]) as image:  # lossless: the model sees the same pixels
            assert image.convert("RGB").tobytes() == problem.images[0].tobytes()
    assert {item.answer_type for item in testbed_items} <= {"integer", "multiple-choice"}


def test_testbed_load_is_idempotent_and_checks_split(tmp_path):
    first = load_benchmark("testbed", n=2, image_cache=tmp_path)
    second = load_benchmark("testbed", n=2, image_cache=tmp_path)
    assert [i.images for i in first] == [i.images for i in second] and len(list(tmp_path.iterdir())) == 2
    with pytest.raises(ValueError, match="split must be one of"):
        load_benchmark("testbed", split="dev", n=1)
    with pytest.raises(ValueError, match="needs the benchmark's local directory"):
        load_benchmark("mathvista")


def test_testbed_scoring(testbed_items, local_verifier):
    gold = [answer_as_response("testbed", item) for item in testbed_items]
    result = score_responses("testbed", testbed_items, gold, verifier=local_verifier)
    assert result["headline"] == 1.0 and result["metrics"]["format_rate"] == 1.0
    assert result["metrics"]["unsupported_answer_rate"] == 0.0 and result["metrics"]["leak_rate"] == 0.0

    item = next(i for i in testbed_items if i.answer_type == "integer")
    wrong = str(int(item.answer) + 1)
    thought = gold[testbed_items.index(item)].split("<answer>")[0]
    responses = {
        "copied": f"{thought}<answer>{wrong}</answer>",  # answer does not follow from its own steps
        "leaky": f"<thought>the reference answer is {item.answer} ,</thought><answer>{item.answer}</answer>",
        "empty": "",
    }
    scored = {name: score_responses("testbed", [item], [text], verifier=local_verifier)["per_item"][0]
              for name, text in responses.items()}
    assert not scored["copied"]["correct"] and scored["copied"]["unsupported"]
    assert scored["leaky"]["correct"] and scored["leaky"]["leak"]
    assert not scored["empty"]["correct"] and scored["empty"]["pred"] is None


# ---------------------------------------------------------------------------
# generate_responses
# ---------------------------------------------------------------------------


def test_generate_and_score_end_to_end(tiny, testbed_items, local_verifier):
    model, processor = tiny
    state = torch.get_rng_state()
    responses = generate_responses(model, processor, testbed_items, sampling=SAMPLING, batch_size=3, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is untouched
    assert len(responses) == 4 and all(isinstance(r, str) for r in responses)
    assert not any(tok in r for r in responses for tok in ("<|image_pad|>", "<|vision_start|>"))  # suppressed
    result = score_responses("testbed", testbed_items, responses, verifier=local_verifier)
    assert result["n"] == 4 and 0.0 <= result["headline"] <= 1.0
    again = generate_responses(model, processor, testbed_items, sampling=SAMPLING, batch_size=3, progress=False)
    assert again == responses  # fixed seed -> same responses
    other = generate_responses(model, processor, testbed_items, sampling=SAMPLING, batch_size=3, seed=1,
                               progress=False)
    assert other != responses


def test_generate_matches_rlsd_evaluate(tiny, testbed_items):
    from rlsd.evaluate import evaluate

    model, processor = tiny
    _, _, problems = load_splits(n_train=0, n_val=0, n_test=4)
    ours = generate_responses(model, processor, testbed_items, sampling=SAMPLING, batch_size=2, seed=3,
                              progress=False)
    theirs = evaluate(model, processor, problems, sampling=SAMPLING, seed=3, batch_size=2, progress=False,
                      per_item_seeds=True).responses  # the benchmark harness samples per item
    assert ours == theirs


def test_generate_refuses_items_without_images(tiny, testbed_items, tmp_path):
    model, processor = tiny
    flagged = dataclasses.replace(testbed_items[1], images=[str(tmp_path / "absent.png")], images_missing=True)
    with pytest.raises(ImagesMissingError, match="testbed/test-00001") as error:
        generate_responses(model, processor, [testbed_items[0], flagged], progress=False)
    assert error.value.item_ids == ["testbed/test-00001"] and "images_missing" in str(error.value)
    # a file deleted after loading is caught when opened, again naming the item
    vanished = dataclasses.replace(testbed_items[2], images=[str(tmp_path / "gone.png")])
    with pytest.raises(ImagesMissingError, match="testbed/test-00002"):
        generate_responses(model, processor, [vanished], progress=False)
    no_text = BenchmarkItem("mmmu", "validation_Art_1", "", "", [], "A", None, "multiple-choice",
                            {"expects_images": False})
    with pytest.raises(ValueError, match="without question text"):
        generate_responses(model, processor, [no_text], progress=False)


# ---------------------------------------------------------------------------
# The paper's Table 2 and the tables beside it
# ---------------------------------------------------------------------------


def test_paper_table2_is_the_published_table(tmp_path):
    assert list(PAPER_TABLE2) == ["base", "grpo", "opsd", "sdpo", "grpo_opsd", "rlsd"]
    assert PAPER_TABLE2["rlsd"] == {"mmmu": 67.22, "mathvista": 78.10, "mathvision": 52.73, "zerobench": 24.85,
                                    "wemath": 58.00, "avg": 56.18}
    for method, row in PAPER_TABLE2.items():  # the paper's average is the mean of its five columns
        assert abs(sum(row[name] for name in PAPER_BENCHMARKS) / 5 - row["avg"]) < 0.006, method
    rows = paper_table2_rows()
    assert rows[0] == {"Method": "Base LLM", "MMMU": 62.44, "MathVista": 73.80, "MathVision": 47.37,
                       "ZeroBench": 19.76, "WeMath": 54.10, "Avg.": 51.49}
    assert table2_rows() == rows
    csv_path, _ = write_table(rows, "paper", tmp_path, csv_digits=2)  # the published figures, digit for digit
    assert csv_path.read_text().splitlines()[1] == "Base LLM,62.44,73.80,47.37,19.76,54.10,51.49"


def test_measured_columns_sit_beside_the_paper_columns():
    measured = {"base": {name: 0.5 for name in PAPER_BENCHMARKS}, "rlsd": {"mathvista": 0.781}}
    rows = table2_rows(measured, measured_label="ours")
    base, rlsd = rows[0], rows[-1]
    assert base["MMMU (paper)"] == 62.44 and base["MMMU (ours)"] == 50.0 and base["Avg. (ours)"] == 50.0
    assert rlsd["MathVista (paper)"] == 78.10 and abs(rlsd["MathVista (ours)"] - 78.1) < 1e-9
    assert rlsd["MMMU (ours)"] is None and rlsd["Avg. (ours)"] is None  # an average needs all five
    with pytest.raises(ValueError, match="unknown benchmark"):
        table2_rows({"rlsd": {"testbed": 0.4}})


SUMMARY_TABLE = {
    "base": {"accuracy": 0.40, "teacher_format": 0.90, "blank": 0.20, "shuffled": 0.21, "majority": 0.19,
             "ideal_observer": 0.65},
    "rlsd": {"accuracy": {"mean": 0.45, "std": 0.01, "min": 0.44, "max": 0.46, "n": 3},
             "leak_rate": {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "n": 3},
             "unsupported_answer_rate": {"mean": 0.05, "std": 0.01, "min": 0.04, "max": 0.06, "n": 3}},
    "opsd_online": {"accuracy": {"mean": 0.30, "std": 0.05, "min": 0.25, "max": 0.35, "n": 3},
                    "leak_rate": {"mean": 0.2, "std": 0.1, "min": 0.1, "max": 0.3, "n": 3},
                    "unsupported_answer_rate": {"mean": None, "std": None, "min": None, "max": None, "n": 0}},
    "grpo": {"accuracy": {"mean": 0.44, "std": 0.0, "min": 0.44, "max": 0.44, "n": 1},
             "leak_rate": {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, "n": 1},
             "unsupported_answer_rate": {"mean": 0.1, "std": 0.0, "min": 0.1, "max": 0.1, "n": 1}},
}


def test_testbed_table_rows_and_files(tmp_path):
    rows = table2_testbed_rows(SUMMARY_TABLE, {"student/none": {"leak_rate": 0.0, "unsupported_answer_rate": 0.1}})
    assert [r["method"] for r in rows] == ["base", "grpo", "rlsd", "opsd_online"]  # the paper's order, extra last
    assert rows[0]["accuracy_mean"] == 40.0 and rows[0]["unsupported_answer_rate_mean"] == 10.0
    assert rows[2]["accuracy_std"] == 1.0 and rows[2]["seeds"] == 3
    shown = table2_testbed_display(rows)
    assert shown[2]["Test accuracy (%)"] == "45.0 ± 1.0" and shown[2]["Range over seeds"] == "44.0–46.0"
    assert shown[3]["Unsupported-answer rate (%)"] == "n/a" and "extra" in shown[3]["Method"]
    controls = base_controls_rows(SUMMARY_TABLE)
    assert [c["key"] for c in controls] == ["accuracy", "teacher_format", "blank", "shuffled", "majority",
                                            "ideal_observer"]

    csv_path, md_path = write_table(rows, "t", tmp_path, markdown_rows=shown, title="Testbed", notes=["a note"])
    with open(csv_path) as handle:
        read = list(csv.DictReader(handle))
    assert read[2]["accuracy_mean"] == "45.0" and read[0]["accuracy_std"] == ""
    text = md_path.read_text()
    assert text.startswith("## Testbed\n\na note\n\n| Method |") and "45.0 ± 1.0" in text
    with pytest.raises(ValueError, match="plain file stem"):
        write_table(rows, "../x", tmp_path)


def test_run_benchmark(tiny, tmp_path, local_verifier):
    from pathlib import Path

    from rlsd.benchmarks import run_benchmark

    model, processor = tiny
    result = run_benchmark("testbed", model, processor, load_options={"n": 3, "image_cache": tmp_path}, limit=2,
                           score_options={"verifier": local_verifier}, sampling=SAMPLING, progress=False)
    assert result["n"] == 2 and result["n_loaded"] == 3 and len(result["responses"]) == 2 and not result["skipped"]
    # annotation-only items (here: the ZeroBench fixtures, whose images are not in the repo) are skipped by name
    fixtures = Path(__file__).resolve().parent / "fixtures" / "zerobench"
    skipped = run_benchmark("zerobench", model, processor, fixtures, skip_missing=True, progress=False)
    assert skipped["n"] == 0 and skipped["headline"] is None and len(skipped["skipped"]) == skipped["n_loaded"] > 0
    with pytest.raises(ImagesMissingError):
        run_benchmark("zerobench", model, processor, fixtures, progress=False)
