"""`python -m rlsd benchmark`: the hub loaders (tested offline on DatasetDicts saved the way the hub's splits are),
the resumable predictions, the confidence intervals and the command end to end on the tiny model.

The datasets are built here: real annotation rows from ``<workspace>/shared/benchmarks`` (read at test time; the
tests that need them skip when the folder is absent) and ZeroBench's synthetic fixture rows, each with synthetic
PIL images, laid out as ``load_dataset`` returns them and saved with ``DatasetDict.save_to_disk``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")

from rlsd.benchmarks import BenchmarkFormatError, load_benchmark  # noqa: E402
from rlsd.benchmarks import mmmu as mmmu_module  # noqa: E402
from rlsd.benchmarks.hub import HUB_SOURCES, MMMU_SUBJECTS, BenchmarkDataError, load_hub_items  # noqa: E402
from rlsd.benchmarks.run import (BenchmarkRunConfig, BenchmarkRunError, append_predictions, check_adapter,  # noqa: E402
                                 limit_items, mean_interval, parse_benchmarks, read_predictions, run_benchmarks,
                                 wemath_group_scores)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "benchmarks"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_SFT = REPO / "data" / "tiny-sft"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real benchmark files not found at {SHARED}")
needs_tiny = pytest.mark.skipif(not (TINY_SFT / "model.safetensors").is_file(), reason="data/tiny-sft not built")

MATHVISTA_PIDS = ["1", "2", "3", "4", "5"]
MATHVISION_LINES = 4
MMMU_IDS = ["validation_Accounting_1", "validation_Accounting_2", "validation_Accounting_3",
            "validation_Math_14", "validation_Math_15", "validation_Math_16"]
WEMATH_GROUPS = ["2steps_1", "2steps_2", "3steps_1"]


def colour_image(index: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    """A distinct solid colour per index (its pixels identify the row it belongs to)."""
    return Image.new("RGB", size, ((37 * index) % 256, (91 * index + 40) % 256, (53 * index + 90) % 256))


def same_pixels(path: str, image: Image.Image) -> bool:
    with Image.open(path) as opened:
        return opened.convert("RGB").tobytes() == image.tobytes()


# ---------------------------------------------------------------------------
# Datasets laid out as on the hub (hub column names and types)
# ---------------------------------------------------------------------------

V, IMG = datasets.Value, datasets.Image


def mmmu_rows() -> list[dict]:
    gold = json.loads((SHARED / "mmmu" / "answer_dict_val.json").read_text())
    options = {}
    for path in (SHARED / "mmmu").glob("example_outputs*/*/output.json"):
        for record in json.loads(path.read_text()):
            if record["question_type"] == "multiple-choice":
                options[record["id"]] = [record["index2ans"][c] for c in record["all_choices"]]
    rows = []
    for index, item_id in enumerate(MMMU_IDS):
        truth = gold[item_id]["ground_truth"]
        mc = gold[item_id]["question_type"] == "multiple-choice"
        rows.append({
            "id": item_id, "question": f"Synthetic question {index} about <image 1>?",
            "options": str(options[item_id]) if mc else "[]",  # a stringified Python list, as released
            "explanation": "", "answer": truth if isinstance(truth, str) else str(truth),
            "image_1": colour_image(index), "image_2": colour_image(100 + index) if index == 1 else None,
            **{f"image_{k}": None for k in range(3, 8)},
            "img_type": "['Diagrams']", "topic_difficulty": "Medium",
            "question_type": "multiple-choice" if mc else "open", "subfield": "Synthetic"})
    return rows


MMMU_FEATURES = datasets.Features({
    "id": V("string"), "question": V("string"), "options": V("string"), "explanation": V("string"),
    **{f"image_{k}": IMG() for k in range(1, 8)}, "img_type": V("string"), "answer": V("string"),
    "topic_difficulty": V("string"), "question_type": V("string"), "subfield": V("string")})

MATHVISTA_FEATURES = datasets.Features({
    "pid": V("string"), "question": V("string"), "image": V("string"), "decoded_image": IMG(),
    "choices": datasets.Sequence(V("string")), "unit": V("string"), "precision": V("float64"),
    "answer": V("string"), "question_type": V("string"), "answer_type": V("string"),
    "metadata": {"category": V("string"), "context": V("string"), "grade": V("string"), "img_height": V("int64"),
                 "img_width": V("int64"), "language": V("string"), "skills": datasets.Sequence(V("string")),
                 "source": V("string"), "split": V("string"), "task": V("string")},
    "query": V("string")})


def mathvista_rows() -> list[dict]:
    records = json.loads((SHARED / "mathvista" / "testmini.json").read_text())
    queries = json.loads((SHARED / "mathvista" / "query.json").read_text())
    return [{**{k: records[pid][k] for k in ("pid", "question", "image", "choices", "unit", "precision", "answer",
                                             "question_type", "answer_type", "metadata")},
             "precision": None if records[pid]["precision"] is None else float(records[pid]["precision"]),
             "decoded_image": colour_image(index), "query": queries[pid]}
            for index, pid in enumerate(MATHVISTA_PIDS)]


MATHVISION_FEATURES = datasets.Features({
    "id": V("string"), "question": V("string"), "options": datasets.Sequence(V("string")), "image": V("string"),
    "decoded_image": IMG(), "answer": V("string"), "solution": V("string"), "level": V("int64"),
    "subject": V("string")})


def mathvision_rows() -> list[dict]:
    lines = (SHARED / "mathvision" / "test.jsonl").read_text().splitlines()[:MATHVISION_LINES]
    return [json.loads(line) | {"decoded_image": colour_image(index)} for index, line in enumerate(lines)]


ZEROBENCH_FEATURES = datasets.Features({
    "question_id": V("string"), "question_text": V("string"), "question_images_decoded": datasets.Sequence(IMG()),
    "question_answer": V("string"), "question_images": datasets.Sequence(V("string")),
    "image_attribution": V("string")})


def zerobench_rows(split: str) -> list[dict]:
    rows = [json.loads(line) for line in (FIXTURES / "zerobench" / f"{split}.jsonl").read_text().splitlines()
            if line.strip()]
    return [row | {"question_images_decoded": [colour_image(10 * i + k) for k in range(len(row["question_images"]))]}
            for i, row in enumerate(rows)]


WEMATH_FEATURES = datasets.Features({
    "ID": V("string"), "split": V("string"), "knowledge concept": V("string"), "question": V("string"),
    "option": V("string"), "answer": V("string"), "image_path": IMG(), "key": V("string"),
    "question number": V("int64"), "knowledge concept description": V("string")})


def wemath_rows() -> list[dict]:
    records = json.loads((SHARED / "wemath" / "testmini.json").read_text())
    kept = [r for r in records if r["ID"] in WEMATH_GROUPS]
    return [r | {"image_path": colour_image(index)} for index, r in enumerate(kept)]


def build_data_dir(root: Path) -> Path:
    """``root/<benchmark>`` for the five benchmarks, as ``DatasetDict.save_to_disk`` writes them."""
    def save(rows, features, split, path):
        datasets.DatasetDict({split: datasets.Dataset.from_list(rows, features=features)}).save_to_disk(str(path))

    by_subject = {}
    for row in mmmu_rows():
        by_subject.setdefault(mmmu_module.subject_of(row["id"]), []).append(row)
    for subject, rows in by_subject.items():  # one folder per subject config, as load_dataset returns them
        save(rows, MMMU_FEATURES, "validation", root / "mmmu" / subject)
    save(mathvista_rows(), MATHVISTA_FEATURES, "testmini", root / "mathvista")
    save(mathvision_rows(), MATHVISION_FEATURES, "test", root / "mathvision")
    datasets.DatasetDict({split: datasets.Dataset.from_list(zerobench_rows(split), features=ZEROBENCH_FEATURES)
                          for split in ("zerobench", "zerobench_subquestions")}).save_to_disk(str(root / "zerobench"))
    save(wemath_rows(), WEMATH_FEATURES, "testmini", root / "wemath")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.skip(f"real benchmark files not found at {SHARED}")
    return build_data_dir(tmp_path_factory.mktemp("bench-data"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-cache")


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------


def test_hub_sources_are_the_papers_splits():
    assert HUB_SOURCES["mmmu"].repo == "MMMU/MMMU" and len(MMMU_SUBJECTS) == 30
    assert set(HUB_SOURCES["mmmu"].configs) == set(MMMU_SUBJECTS)
    assert {n: s.splits[0] for n, s in HUB_SOURCES.items()} == {
        "mmmu": "validation", "mathvista": "testmini", "mathvision": "test", "zerobench": "zerobench_subquestions",
        "wemath": "testmini"}
    assert HUB_SOURCES["zerobench"].splits == ("zerobench_subquestions", "zerobench")


def test_mathvista_items_equal_the_local_loaders(data_dir, cache_dir):
    items = load_hub_items("mathvista", data_dir=data_dir, cache_dir=cache_dir)
    local = {item.id: item for item in load_benchmark("mathvista", SHARED / "mathvista")}
    assert [item.id for item in items] == MATHVISTA_PIDS
    for index, item in enumerate(items):
        reference = local[item.id]
        # the prompt is the hub's `query`, which is the published query.json string
        assert (item.prompt, item.answer, item.choices, item.answer_type, item.meta) == (
            reference.prompt, reference.answer, reference.choices, reference.answer_type, reference.meta)
        assert not item.images_missing and same_pixels(item.images[0], colour_image(index))


def test_mathvision_items_equal_the_local_loaders(data_dir, cache_dir):
    items = load_hub_items("mathvision", data_dir=data_dir, cache_dir=cache_dir)
    local = {item.id: item for item in load_benchmark("mathvision", SHARED / "mathvision")}
    assert len(items) == MATHVISION_LINES
    assert {item.answer_type for item in items} == {"multiple-choice", "free-form"}
    for index, item in enumerate(items):
        reference = local[item.id]
        assert (item.prompt, item.answer, item.choices, item.meta["level"], item.meta["subject"]) == (
            reference.prompt, reference.answer, reference.choices, reference.meta["level"], reference.meta["subject"])
        assert same_pixels(item.images[0], colour_image(index))


def test_wemath_items_equal_the_local_loaders(data_dir, cache_dir):
    items = load_hub_items("wemath", data_dir=data_dir, cache_dir=cache_dir)
    local = {item.id: item for item in load_benchmark("wemath", SHARED / "wemath")}
    assert {item.meta["group"] for item in items} == set(WEMATH_GROUPS) and len(items) == 10
    for index, item in enumerate(items):
        reference = local[item.id]
        assert (item.prompt, item.answer, item.choices, item.meta["key"], item.meta["question_number"]) == (
            reference.prompt, reference.answer, reference.choices, reference.meta["key"],
            reference.meta["question_number"])
        assert same_pixels(item.images[0], colour_image(index))


def test_zerobench_both_splits_equal_the_fixture_loaders(data_dir, cache_dir):
    for split in ("zerobench_subquestions", "zerobench"):
        items = load_hub_items("zerobench", split, data_dir=data_dir, cache_dir=cache_dir)
        local = load_benchmark("zerobench", FIXTURES / "zerobench", split)
        assert [(i.id, i.prompt, i.answer, len(i.images)) for i in items] == \
            [(i.id, i.prompt, i.answer, len(i.images)) for i in local]
        for i, item in enumerate(items):  # every question image, in order
            assert all(same_pixels(path, colour_image(10 * i + k)) for k, path in enumerate(item.images))
    assert load_hub_items("zerobench", data_dir=data_dir, cache_dir=cache_dir)[0].meta["split"] == \
        "zerobench_subquestions"  # the paper's column by default


def test_mmmu_items_from_subject_configs(data_dir, cache_dir):
    items = load_hub_items("mmmu", data_dir=data_dir, cache_dir=cache_dir)
    local = {item.id: item for item in load_benchmark("mmmu", SHARED / "mmmu")}  # answers + example-output options
    assert [item.id for item in items] == MMMU_IDS
    for index, item in enumerate(items):
        reference = local[item.id]
        assert (item.answer, item.answer_type, item.choices) == (reference.answer, reference.answer_type,
                                                                 reference.choices)
        assert item.prompt == mmmu_module.build_prompt(f"Synthetic question {index} about <image 1>?", item.choices)
        assert item.meta["subject"] == mmmu_module.subject_of(item.id)
        assert same_pixels(item.images[0], colour_image(index))
    assert len(items[1].images) == 2 and same_pixels(items[1].images[1], colour_image(101))
    assert items[4].answer == ["24/7", "3.429"]  # a list gold, stringified on the hub


def test_mmmu_concatenated_layout_gives_the_same_items(tmp_path, data_dir, cache_dir):
    rows = mmmu_rows()
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows, features=MMMU_FEATURES)}).save_to_disk(
        str(tmp_path / "mmmu"))
    together = load_hub_items("mmmu", data_dir=tmp_path, cache_dir=cache_dir)
    by_subject = load_hub_items("mmmu", data_dir=data_dir, cache_dir=cache_dir)
    assert [(i.id, i.prompt, i.answer, i.meta["subject"]) for i in together] == \
        [(i.id, i.prompt, i.answer, i.meta["subject"]) for i in by_subject]


def test_mmmu_limit_loads_subjects_lazily(data_dir, tmp_path):
    items = load_hub_items("mmmu", data_dir=data_dir, cache_dir=tmp_path, limit=2)
    assert [item.meta["subject"] for item in items] == ["Accounting"] * 3  # the whole first subject, not Math
    assert [p.name.split("-")[0] for p in (tmp_path / "mmmu" / "validation").iterdir()] == ["Accounting"]


def test_mmmu_options_are_parsed_as_literals_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    rows = [mmmu_rows()[0] | {"options": f"[open({str(marker)!r}, 'w').write('x')]"}] if SHARED.is_dir() else None
    if rows is None:
        pytest.skip("needs the shared MMMU rows")
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows, features=MMMU_FEATURES)}).save_to_disk(
        str(tmp_path / "data" / "mmmu"))
    with pytest.raises(BenchmarkFormatError, match="options"):
        load_hub_items("mmmu", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert not marker.exists()
    assert ast.literal_eval(mmmu_rows()[0]["options"]) == load_benchmark("mmmu", SHARED / "mmmu")[0].choices


def test_export_is_written_once_and_reused(data_dir, tmp_path):
    load_hub_items("mathvista", data_dir=data_dir, cache_dir=tmp_path)
    (root,) = list((tmp_path / "mathvista" / "testmini").iterdir())
    assert (root / ".complete").is_file() and not list(root.parent.glob("*.tmp-*"))
    stamp = (root / "testmini.json").stat().st_mtime_ns
    (root / "testmini.json").touch()
    os.utime(root / "testmini.json", ns=(stamp, stamp))
    again = load_hub_items("mathvista", data_dir=data_dir, cache_dir=tmp_path)
    assert (root / "testmini.json").stat().st_mtime_ns == stamp and len(again) == len(MATHVISTA_PIDS)


def test_an_interrupted_export_leaves_nothing_and_is_redone(data_dir, tmp_path, monkeypatch):
    from rlsd.benchmarks import hub

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(hub._EXPORTERS, "mathvision", fail)
    with pytest.raises(KeyboardInterrupt):
        load_hub_items("mathvision", data_dir=data_dir, cache_dir=tmp_path)
    assert not list((tmp_path / "mathvision" / "test").iterdir())
    monkeypatch.undo()
    assert len(load_hub_items("mathvision", data_dir=data_dir, cache_dir=tmp_path)) == MATHVISION_LINES


def test_missing_column_is_named(tmp_path):
    if not SHARED.is_dir():
        pytest.skip("needs the shared MathVista rows")
    rows = [{k: v for k, v in row.items() if k != "decoded_image"} for row in mathvista_rows()]
    features = datasets.Features({k: v for k, v in MATHVISTA_FEATURES.items() if k != "decoded_image"})
    datasets.DatasetDict({"testmini": datasets.Dataset.from_list(rows, features=features)}).save_to_disk(
        str(tmp_path / "data" / "mathvista"))
    with pytest.raises(BenchmarkFormatError, match=r"mathvista\[testmini\].*decoded_image"):
        load_hub_items("mathvista", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")


def test_a_row_without_an_image_is_named(tmp_path):
    if not SHARED.is_dir():
        pytest.skip("needs the shared MATH-Vision rows")
    rows = mathvision_rows()
    rows[2]["decoded_image"] = None
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows, features=MATHVISION_FEATURES)}).save_to_disk(
        str(tmp_path / "data" / "mathvision"))
    with pytest.raises(BenchmarkFormatError, match="row 2: field 'decoded_image': no image"):
        load_hub_items("mathvision", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")


def test_data_dir_problems_are_one_line_errors(tmp_path):
    with pytest.raises(BenchmarkDataError, match=r"mathvista not found.*save_to_disk"):
        load_hub_items("mathvista", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    single = datasets.Dataset.from_dict({"pid": ["1"]})
    single.save_to_disk(str(tmp_path / "mathvista"))
    with pytest.raises(BenchmarkDataError, match="single Dataset"):
        load_hub_items("mathvista", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    datasets.DatasetDict({"test": single}).save_to_disk(str(tmp_path / "wemath"))
    with pytest.raises(BenchmarkDataError, match=r"no split 'testmini' \(it has \['test'\]\)"):
        load_hub_items("wemath", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    (tmp_path / "mmmu" / "Nonsense").mkdir(parents=True)
    datasets.DatasetDict({"validation": single}).save_to_disk(str(tmp_path / "mmmu" / "Nonsense"))
    with pytest.raises(BenchmarkDataError, match="not MMMU subjects"):
        load_hub_items("mmmu", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="split 'dev' is not scored"):
        load_hub_items("mmmu", "dev", data_dir=tmp_path)


def test_hub_path_fetches_only_the_scored_split(data_dir, tmp_path, monkeypatch):
    """The hub call itself, on a local folder laid out as the AI4Math/MathVista repo (data/<split>-*.parquet)."""
    from rlsd.benchmarks import hub

    splits = datasets.load_from_disk(str(data_dir / "mathvista"))
    repo = tmp_path / "AI4Math-MathVista"
    splits["testmini"].to_parquet(str(repo / "data" / "testmini-00000-of-00001.parquet"))
    splits["testmini"].select([0]).to_parquet(str(repo / "data" / "test-00000-of-00001.parquet"))
    monkeypatch.setitem(hub.HUB_SOURCES, "mathvista", dataclasses.replace(HUB_SOURCES["mathvista"], repo=str(repo)))
    calls = []
    real_load = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or real_load(*a, **k))
    items = load_hub_items("mathvista", cache_dir=tmp_path / "cache")
    assert [item.id for item in items] == MATHVISTA_PIDS and not any(item.images_missing for item in items)
    assert calls == [((str(repo),), {"data_files": {"testmini": "data/testmini-*.parquet"}, "split": "testmini"})]


def test_hub_path_falls_back_to_the_config_when_the_layout_changed(tmp_path, monkeypatch):
    from datasets.exceptions import DataFilesNotFoundError

    calls = []

    def fake_load(*args, **kwargs):
        calls.append((args, kwargs))
        if "data_files" in kwargs:
            raise DataFilesNotFoundError("No (supported) data files found")
        raise ConnectionError("stop here")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with pytest.raises(BenchmarkDataError, match="MMMU/MMMU config Accounting.*ConnectionError: stop here"):
        load_hub_items("mmmu", cache_dir=tmp_path)
    assert calls == [(("MMMU/MMMU",), {"data_files": {"validation": "Accounting/validation-*.parquet"},
                                       "split": "validation"}),
                     (("MMMU/MMMU", "Accounting"), {"split": "validation"})]


def test_offline_without_data_dir_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    with pytest.raises(BenchmarkDataError) as raised:
        load_hub_items("mathvista", cache_dir=tmp_path / "cache")
    message = str(raised.value)
    assert "\n" not in message and "AI4Math/MathVista" in message and "--data-dir" in message


# ---------------------------------------------------------------------------
# Run pieces: names, limits, predictions, intervals, adapters
# ---------------------------------------------------------------------------


def test_parse_benchmarks():
    assert parse_benchmarks("all") == ("mmmu", "mathvista", "mathvision", "zerobench", "wemath")
    assert parse_benchmarks("wemath, MMMU") == ("mmmu", "wemath")  # the paper's column order
    with pytest.raises(BenchmarkRunError, match="unknown benchmark"):
        parse_benchmarks("mmmu,testbed")
    with pytest.raises(BenchmarkRunError, match="names no benchmark"):
        parse_benchmarks(" , ")


@needs_shared
def test_wemath_limit_keeps_whole_groups():
    items = load_benchmark("wemath", SHARED / "wemath")
    kept = limit_items("wemath", items, 2)
    groups = {item.meta["group"] for item in kept}
    assert len(kept) >= 2 and all(sum(i.meta["group"] == g for i in kept) == sum(i.meta["group"] == g for i in items)
                                  for g in groups)
    assert len(groups) == 1  # one group (3 items) already reaches the limit
    assert limit_items("mathvista", list(range(5)), 2) == [0, 1]  # type: ignore[arg-type]


@needs_shared
def test_wemath_group_scores_average_to_score_strict():
    from rlsd.benchmarks import score_responses

    items = load_benchmark("wemath", SHARED / "wemath")
    wrong = {item.id for item in items if zlib.crc32(item.id.encode()) % 4 == 0}  # ~1 in 4, spread over groups
    responses = [f"<Answer>: {'E' if item.id in wrong else item.answer}" for item in items]
    result = score_responses("wemath", items, responses)
    scores = wemath_group_scores(items, result["correct"])
    assert len(scores) == 525 and set(scores) <= {0.0, 0.5, 1.0} and 0.5 in scores and 1.0 in scores
    assert sum(scores) / len(scores) == pytest.approx(result["headline"], abs=1e-12)
    low, high = mean_interval(scores)
    assert low < result["headline"] < high and high - low < 0.1


def test_mean_interval():
    assert mean_interval([]) is None and mean_interval([1.0]) is None and mean_interval([1.0, 1.0]) == [1.0, 1.0]
    low, high = mean_interval([0.0, 1.0] * 50)
    assert low == pytest.approx(0.5 - 1.96 * (100 / 99 * 0.25) ** 0.5 / 10) and high == pytest.approx(1 - low)


def test_predictions_roundtrip_and_partial_last_line(tmp_path):
    path = tmp_path / "p.jsonl"
    append_predictions(path, [{"id": "a", "response": "x\ny"}, {"id": "b", "response": "é"}])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"id": "c", "resp')  # a kill in the middle of a write
    assert read_predictions(path) == {"a": "x\ny", "b": "é"}
    assert path.read_text(encoding="utf-8").endswith("\n")  # the partial line was cut off the file
    append_predictions(path, [{"id": "c", "response": "z"}])
    assert read_predictions(path) == {"a": "x\ny", "b": "é", "c": "z"}


def test_corrupt_predictions_name_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "response": "x"}\nnot json\n{"id": "b", "response": "y"}\n')
    with pytest.raises(BenchmarkRunError, match=r"p.jsonl: line 2: not JSON"):
        read_predictions(path)
    path.write_text('{"id": 3, "response": "x"}\n')
    with pytest.raises(BenchmarkRunError, match="line 1: expected"):
        read_predictions(path)


def test_adapter_must_be_a_safetensors_peft_folder(tmp_path):
    with pytest.raises(BenchmarkRunError, match="not a directory"):
        check_adapter(tmp_path / "none")
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(BenchmarkRunError, match=r"no adapter_model.safetensors \(found: adapter_model.bin"):
        check_adapter(tmp_path)


# ---------------------------------------------------------------------------
# End to end on the tiny model
# ---------------------------------------------------------------------------


def tiny_config(data_dir, cache_dir, out, **changes) -> BenchmarkRunConfig:
    options = dict(limit=2, batch_size=2, max_new_tokens=4, progress=False) | changes
    return BenchmarkRunConfig(model=str(TINY_SFT), data_dir=str(data_dir), cache_dir=str(cache_dir), out=str(out),
                              **options)


@needs_tiny
def test_end_to_end_row_and_resume(data_dir, cache_dir, tmp_path, monkeypatch):
    from rlsd.benchmarks import run as run_module

    out = tmp_path / "out"
    first = run_benchmarks(tiny_config(data_dir, cache_dir, out))
    # every split generated (We-Math: its first whole group of 3), the Table-2 row has every column
    assert first["generated"] == {"mmmu/validation": 2, "mathvista/testmini": 2, "mathvision/test": 2,
                                  "zerobench/zerobench_subquestions": 2, "zerobench/zerobench": 2,
                                  "wemath/testmini": 3}
    assert list(first["row"]) == ["Method", "MMMU", "MathVista", "MathVision", "ZeroBench", "WeMath", "Avg."]
    for name, entry in first["benchmarks"].items():
        assert entry["n_scored"] == (3 if name == "wemath" else 2) and entry["limited"]
        assert first["row"][entry["column"]] == pytest.approx(100 * entry["score"])
        if name != "wemath":
            assert 0.0 <= entry["ci95"][0] <= entry["score"] <= entry["ci95"][1] <= 1.0 and entry["n_units"] == 2
    wemath = first["benchmarks"]["wemath"]
    assert wemath["n_units"] == 1 and wemath["ci95"] is None  # one problem group: no interval
    assert first["benchmarks"]["zerobench"]["also"]["zerobench"]["n_scored"] == 2
    assert first["benchmarks"]["mathvista"]["n_total"] == len(MATHVISTA_PIDS)
    assert first["benchmarks"]["mmmu"]["n_total"] is None  # not every subject was loaded
    assert first["row"]["Avg."] == pytest.approx(sum(first["row"][c] for c in
                                                     ("MMMU", "MathVista", "MathVision", "ZeroBench", "WeMath")) / 5)
    assert first["decoding"]["temperature"] == 0.7 and first["decoding"]["top_p"] == 0.8 and \
        first["decoding"]["top_k"] == 20
    written = json.loads((out / "table2_row.json").read_text())
    assert written["row"] == first["row"] and "95% CI" in (out / "table2_row.md").read_text()
    files = {p.name: p.read_bytes() for p in (out / "predictions").iterdir()}
    assert len(files) == 6 and all(len(b.splitlines()) == (3 if n.startswith("wemath") else 2)
                                   for n, b in files.items())

    # a rerun generates nothing, does not even load the model, and gives the same row
    monkeypatch.setattr(run_module, "load_model", lambda cfg: pytest.fail("the model was loaded for nothing"))
    second = run_benchmarks(tiny_config(data_dir, cache_dir, out))
    assert set(second["generated"].values()) == {0} and second["row"] == first["row"]
    assert {p.name: p.read_bytes() for p in (out / "predictions").iterdir()} == files
    monkeypatch.undo()

    # a kill mid-write: the partial line is cut off and only that item is generated again
    path = out / "predictions" / "mathvista.testmini.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])
    third = run_benchmarks(tiny_config(data_dir, cache_dir, out))
    assert third["generated"]["mathvista/testmini"] == 1 and sum(third["generated"].values()) == 1
    assert len(read_predictions(path)) == 2

    # other settings into the same --out are refused, not mixed
    with pytest.raises(BenchmarkRunError, match="other settings .*sampling"):
        run_benchmarks(tiny_config(data_dir, cache_dir, out, max_new_tokens=5))


@needs_tiny
def test_adapter_is_loaded_onto_the_model(tmp_path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from rlsd.benchmarks.run import load_model
    from rlsd.model import ModelSpec, lora_target_regex, load_policy

    base, _ = load_policy(ModelSpec(path=str(TINY_SFT)))
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=lora_target_regex()))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.25)  # non-zero, so the adapter changes the model
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    model, processor = load_model(BenchmarkRunConfig(model=str(TINY_SFT), adapter=str(tmp_path / "adapter"),
                                                     device="cpu", max_pixels=2048))
    assert isinstance(model, PeftModel) and not model.training
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.all(p == 0.25) for p in lora_b)
    assert processor.image_processor.size["longest_edge"] == 2048  # lowered, never raised
    _, processor = load_model(BenchmarkRunConfig(model=str(TINY_SFT), device="cpu"))
    assert processor.image_processor.size["longest_edge"] == 16384


@needs_tiny
def test_cli_json_and_table(data_dir, cache_dir, tmp_path, capsys):
    from rlsd.__main__ import main

    argv = ["benchmark", "--model", str(TINY_SFT), "--benchmarks", "mathvista,zerobench", "--limit", "1",
            "--data-dir", str(data_dir), "--cache-dir", str(cache_dir), "--out", str(tmp_path / "o"),
            "--max-new-tokens", "3", "--batch-size", "1"]
    main(argv + ["--json"])
    result = json.loads(capsys.readouterr().out)
    assert list(result["benchmarks"]) == ["mathvista", "zerobench"] and result["row"]["Avg."] is None
    assert result["benchmarks"]["mathvista"]["n_scored"] == 1
    main(argv)  # the readable table; nothing left to generate
    text = capsys.readouterr().out
    assert "| MathVista |" in text and "95% CI" in text and "ZeroBench (zerobench)" in text


def test_cli_offline_fails_with_one_line(tmp_path):
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               RLSD_BENCHMARK_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "rlsd", "benchmark", "--model", "no/such-model", "--benchmarks",
                           "wemath", "--out", str(tmp_path / "o")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "kernels" not in line]
    assert len(lines) == 1 and "We-Math/We-Math" in lines[0] and "--data-dir" in lines[0]


@needs_tiny
def test_base_loads_in_nf4_with_the_adapter_on_it(tmp_path):
    import torch
    from bitsandbytes.nn import Linear4bit
    from peft import LoraConfig, get_peft_model

    from rlsd.benchmarks.run import _run_identity, load_model
    from rlsd.model import ModelSpec, lora_target_regex, load_policy
    from rlsd.rollout import VALIDATION_SAMPLING

    base, _ = load_policy(ModelSpec(path=str(TINY_SFT)))
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=lora_target_regex()))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    cfg = BenchmarkRunConfig(model=str(TINY_SFT), adapter=str(tmp_path / "adapter"), device="cpu",
                             load_in_4bit=True)
    model, _ = load_model(cfg)
    quantized = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert quantized and not any(p.requires_grad for p in model.parameters()) and not model.training
    assert any("lora_B" in n for n, _ in model.named_parameters())
    plain, _ = load_model(BenchmarkRunConfig(model=str(TINY_SFT), device="cpu"))
    assert not any(isinstance(m, Linear4bit) for m in plain.modules())
    # The 4-bit base is part of what predictions depend on; a 16-bit run's run.json (no such key) still matches.
    assert _run_identity(cfg, VALIDATION_SAMPLING)["load_in_4bit"] is True
    assert "load_in_4bit" not in _run_identity(BenchmarkRunConfig(model="m"), VALIDATION_SAMPLING)
    with pytest.raises(ValueError, match="lora_rank"):
        load_policy(ModelSpec(path=str(TINY_SFT), load_in_4bit=True))  # training a 4-bit base still needs LoRA
