"""The training-data loaders (rlsd/data.py): bad input, lazy images, hub layouts, the held-out split.

Hub datasets are tested offline on directories the tests build as the hub repositories are laid out
(`data/train-00000-of-00001.parquet` with the real column names and `datasets.Image` features), read through the
same `datasets` code path as a hub id.
"""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import rlsd.data as D
from rlsd.data import DataError, HubSpec, ImageRef, Problem, load_problems, load_split, load_train_and_eval

REPO = Path(__file__).resolve().parents[1]


def png(colour=(1, 2, 3), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Keep the `datasets` cache inside the test's directory and start with an empty decode cache."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    D._decoded.clear()


# ------------------------------------------------------------------------------------- local files: bad input


def test_non_utf8_line_names_file_and_row(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"question": "q", "answer": "1"}\n{"question": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl: row 1: not valid UTF-8"):
        load_problems(f)


@pytest.mark.parametrize("row, message", [
    ({"question": "q", "answer": "1", "images": 5}, r"row 1: field 'images' must be a list of images, got int"),
    ({"question": "q", "answer": "1", "images": "a.png"}, r"field 'images' must be a list.*use 'image'"),
    ({"question": "q", "answer": "1", "image": 5}, r"row 1: field 'image'\[0\]: expected an image path"),
    ({"question": "q", "answer": "1", "images": [None]}, r"field 'images'\[0\]: expected an image path"),
    ({"question": "q", "answer": "1", "image": "a.png", "images": ["a.png"]}, r"both 'images' and 'image'"),
    ({"question": "q", "answer": float("nan")}, r"row 1: field 'answer' is nan"),
    ({"question": "q", "answer": False}, r"row 1: field 'answer' must be a string or a number, got bool"),
    ({"question": "q", "answer": {"x": 1}}, r"field 'answer' must be a string or a number, got dict"),
    ({"question": "q", "answer": [1]}, r"field 'answer' must be a string or a number, got list"),
    ({"question": 7, "answer": "1"}, r"row 1: field 'question' must be a string, got int"),
    ({"question": "q", "answer": "1", "solution": 3}, r"field 'solution' must be a string"),
    ({"question": "q", "answer": "1", "id": 1.5}, r"field 'id' must be a string or an integer"),
    ({"question": "q", "answer": "1", "options": "A"}, r"field 'options' must be a list of strings"),
    ({"question": "<image> <image> q", "answer": "1", "image": "a.png"}, r"2 <image> placeholders but .* 1 images"),
    ({"question": "<image>", "answer": "1", "image": "a.png"}, r"no text besides its image placeholders"),
])
def test_every_field_is_type_checked(tmp_path, row, message):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"question": "fine", "answer": "1"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message) as err:
        load_problems(f)
    assert str(f) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("line", ["[1, 2]", '"text"', "3", "null"])
def test_a_row_that_is_not_an_object(tmp_path, line):
    f = tmp_path / "d.jsonl"
    f.write_text('{"question": "q", "answer": "1"}\n' + line + "\n")
    with pytest.raises(DataError, match=r"row 1: expected an object"):
        load_problems(f)


def test_corrupt_and_empty_parquet_name_the_file(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: unreadable parquet"):
        load_problems(bad)
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.parquet: unreadable parquet"):
        load_problems(empty)

    import pyarrow as pa
    import pyarrow.parquet as pq

    no_rows = tmp_path / "none.parquet"
    pq.write_table(pa.table({"question": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), no_rows)
    with pytest.raises(DataError, match=r"none\.parquet: no problems"):
        load_problems(no_rows)


def test_empty_file_is_refused_at_load(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n\n")
    with pytest.raises(DataError, match=r"d\.jsonl: no problems"):
        load_problems(f)
    with pytest.raises(DataError, match=r"d\.jsonl: no problems"):
        load_train_and_eval(str(f), n_train=10, n_eval=0)


def test_duplicate_ids_name_both_rows(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "1", "id": "x"},
                                            {"question": "b", "answer": "2", "id": "y"},
                                            {"question": "c", "answer": "3", "id": "x"}])
    with pytest.raises(DataError, match=r"row 2: duplicate id 'x' \(first at row 0\)"):
        load_problems(f)


def test_options_and_placeholders_map_to_the_question(tmp_path):
    Image.new("RGB", (4, 4), (5, 6, 7)).save(tmp_path / "a.png")
    f = write_jsonl(tmp_path / "d.jsonl", [
        {"problem": "<image>\nWhich colour?", "answer": "B", "images": ["a.png"], "options": ["A. red", "B. blue"],
         "problem_type": "multiple choice"}])
    (p,) = load_problems(f)
    assert p.question == "Which colour?\nOptions:\nA. red\nB. blue"
    assert p.meta == {"problem_type": "multiple choice"} and p.id == "d.jsonl:0"
    assert p.images[0].getpixel((0, 0)) == (5, 6, 7)


# ---------------------------------------------------------------------------------------- images: lazy, checked


def test_images_are_decoded_lazily_and_cached(tmp_path, monkeypatch):
    for k in range(3):
        Image.new("RGB", (8, 8), (k, k, k)).save(tmp_path / f"{k}.png")
    f = write_jsonl(tmp_path / "d.jsonl", [{"question": f"q{k}", "answer": "1", "image": f"{k}.png"}
                                            for k in range(3)])
    decodes = []
    real = ImageRef.decode
    monkeypatch.setattr(ImageRef, "decode", lambda self: decodes.append(self.where) or real(self))
    problems = load_problems(f)
    assert decodes == [] and all(isinstance(r, ImageRef) for p in problems for r in p.image_refs)
    first = problems[1].images[0]
    assert first.mode == "RGB" and first.getpixel((0, 0)) == (1, 1, 1) and len(decodes) == 1
    assert problems[1].images[0] is first and len(problems[1].images) == 1 and len(decodes) == 1  # cached
    monkeypatch.setattr(D, "IMAGE_CACHE_SIZE", 1)
    assert problems[0].images[0].getpixel((0, 0)) == (0, 0, 0) and len(decodes) == 2 and len(D._decoded) == 1
    assert problems[1].images[0] is not first and len(decodes) == 3  # evicted, decoded again


def test_testbed_style_problems_keep_their_pil_images():
    image = Image.new("RGB", (4, 4))
    p = Problem(id="t", question="q", answer="1", images=[image])
    assert p.images[0] is image and p.images == [image] and p.image_refs == [image]


def test_images_of_the_rows_a_run_uses_are_checked_before_step_1(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(png()[:30])  # a valid header, then truncated
    rows = [{"question": f"q{k}", "answer": "1", "image": "ok.png"} for k in range(5)]
    rows[3]["image"] = "bad.png"
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"d\.jsonl: row 3: field 'image'\[0\]: unreadable image"):
        load_train_and_eval(str(f), n_train=4, n_eval=1, seed=0)


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    f = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "1", "image": "big.png"}])
    Image.new("RGB", (8, 8)).save(tmp_path / "big.png")
    monkeypatch.setattr(D, "MAX_IMAGE_PIXELS", 63)
    with pytest.raises(DataError, match=r"row 0: field 'image'\[0\]: image of 8x8 = 64 pixels refused"):
        load_problems(f)
    # PIL's own limit: between it and twice it PIL only warns, above it raises; both are refused.
    monkeypatch.setattr(D, "MAX_IMAGE_PIXELS", 10**9)
    for limit in (40, 20):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(DataError, match=r"image refused as a decompression bomb"):
            load_problems(f)


# ------------------------------------------------------------------------------------ the held-out split (local)


def test_local_split_is_disjoint_and_fixed_by_seed(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"question": f"q{k}", "answer": str(k)} for k in range(30)])
    train, test = load_train_and_eval(str(f), n_train=20, n_eval=5, seed=3)
    assert len(train) == 20 and len(test) == 5 and not {p.id for p in train} & {p.id for p in test}
    again = load_train_and_eval(str(f), n_train=20, n_eval=5, seed=3)
    assert [p.id for p in again[0]] == [p.id for p in train] and [p.id for p in again[1]] == [p.id for p in test]
    other = load_train_and_eval(str(f), n_train=20, n_eval=5, seed=4)
    assert [p.id for p in other[1]] != [p.id for p in test]
    # fewer rows than asked: every row not held out trains
    train, test = load_train_and_eval(str(f), n_train=100, n_eval=5, seed=3)
    assert len(train) == 25 and len(test) == 5
    with pytest.raises(DataError, match=r"30 usable problems, none left for training .* eval_problems"):
        load_train_and_eval(str(f), n_train=10, n_eval=30)


def test_local_parquet_through_the_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": ["q1", "q2"], "answer": ["4", "5"],
                             "image": [{"bytes": png((1, 2, 3)), "path": None}, {"bytes": png(), "path": None}]}),
                   tmp_path / "d.parquet")
    train, test = load_train_and_eval(str(tmp_path / "d.parquet"), n_train=5, n_eval=1)
    assert len(train) == 1 and len(test) == 1 and train[0].images[0].getpixel((0, 0)) == (1, 2, 3)


# ------------------------------------------------------------------------------------------- hub layouts (offline)


def upstream_repo(root: Path, n: int, bad_rows=(), mismatched_rows=()) -> Path:
    """A directory laid out as OpenDataArena/MMFineReason-SFT-123K-Qwen3-VL-235B-Thinking (one parquet shard)."""
    import datasets

    features = datasets.Features({
        "question": datasets.Value("string"), "answer": datasets.Value("string"), "image": datasets.Image(),
        "qwen3vl_235b_thinking_response": datasets.Value("string"), "caption": datasets.Value("string"),
        "pass_rate": datasets.Value("float64"), "source": datasets.Value("string"), "id": datasets.Value("int64")})
    rows = {name: [] for name in features}
    for k in range(n):
        rows["question"].append(("<image> <image>" if k in mismatched_rows else "<image>") + f"\nHow many? ({k})")
        rows["answer"].append(str(k))
        rows["image"].append({"bytes": b"garbage" if k in bad_rows else png((k % 256, 0, 0)), "path": None})
        rows["qwen3vl_235b_thinking_response"].append(f"<think>count {k}</think> {k}")
        rows["caption"].append("a picture")
        rows["pass_rate"].append(0.0)
        rows["source"].append("MMR1" if k % 2 else "BMMR")
        rows["id"].append(k // 2)  # ids repeat across sources, as upstream
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "data/train-00000-of-00001.parquet"))
    return root


def authors_repo(root: Path) -> Path:
    """A directory laid out as the EasyR1-style RLSD release: problem, answer, images (list), problem_type, options."""
    import datasets

    features = datasets.Features({
        "problem": datasets.Value("string"), "answer": datasets.Value("string"),
        "images": datasets.List(datasets.Image()), "problem_type": datasets.Value("string"),
        "options": datasets.List(datasets.Value("string")),
        "qwen3vl_235b_thinking_response": datasets.Value("string")})
    rows = {"problem": ["<image><image>Which image is red?", "What is 2+2?"], "answer": ["A", "4"],
            "images": [[{"bytes": png((255, 0, 0)), "path": None}, {"bytes": png((0, 0, 255)), "path": None}], []],
            "problem_type": ["multiple choice", "math"], "options": [["A. first", "B. second"], []],
            "qwen3vl_235b_thinking_response": ["<think>the first</think>", "<think>4</think>"]}
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "data/train-00000-of-00001.parquet"))
    return root


def test_upstream_mmfinereason_layout_maps_to_problems(tmp_path):
    repo = upstream_repo(tmp_path / "mmfr", 12)
    train, test = load_train_and_eval(f"hf:{repo}", n_train=8, n_eval=3, seed=0)
    assert len(train) == 8 and len(test) == 3
    p = next(p for p in train + test if p.meta["row"] == 5)
    assert p.question == "How many? (5)" and p.answer == "5" and p.id == "MMR1:2"
    assert p.solution == "<think>count 5</think> 5" and p.meta["source"] == "MMR1" and p.meta["pass_rate"] == 0.0
    assert "image" not in p.meta and "question" not in p.meta
    assert all(callable(r.source) for r in p.image_refs)  # nothing held: read from the Arrow table on access
    (image,) = p.images
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (5, 0, 0)
    assert len({q.id for q in train + test}) == 11


def test_authors_release_layout_maps_to_problems(tmp_path):
    repo = authors_repo(tmp_path / "rlsd")
    split = load_split(f"hf:{repo}:train", n_train=5, n_eval=0)
    by_answer = {p.answer: p for p in split.train}
    mc = by_answer["A"]
    assert mc.question == "Which image is red?\nOptions:\nA. first\nB. second"
    assert [im.getpixel((0, 0)) for im in mc.images] == [(255, 0, 0), (0, 0, 255)]
    assert mc.solution == "<think>the first</think>" and mc.meta["problem_type"] == "multiple choice"
    assert by_answer["4"].images == [] and by_answer["4"].question == "What is 2+2?"
    assert split.report.rows_used == 2 and split.report.n_unusable == 0


def test_hub_split_is_disjoint_and_fixed_by_seed(tmp_path):
    repo = f"hf:{upstream_repo(tmp_path / 'mmfr', 40)}"
    train, test = load_train_and_eval(repo, n_train=20, n_eval=10, seed=1)
    rows = lambda ps: [p.meta["row"] for p in ps]  # noqa: E731
    assert not set(rows(train)) & set(rows(test)) and len(train) == 20 and len(test) == 10
    again = load_train_and_eval(repo, n_train=20, n_eval=10, seed=1)
    assert rows(again[0]) == rows(train) and rows(again[1]) == rows(test)
    assert rows(load_train_and_eval(repo, n_train=20, n_eval=10, seed=2)[1]) != rows(test)


def test_unusable_hub_rows_are_counted_and_fail_only_past_the_threshold(tmp_path, caplog):
    repo = f"hf:{upstream_repo(tmp_path / 'mmfr', 200, bad_rows={7}, mismatched_rows={9})}"
    with caplog.at_level("WARNING", logger="rlsd.data"):
        split = load_split(repo, n_train=500, n_eval=10, max_bad_fraction=0.01)
    assert split.report.rows_examined == 200 and split.report.n_unusable == 2 and split.report.rows_used == 198
    assert len(split.train) == 188 and 7 not in {p.meta["row"] for p in split.train + split.eval}
    assert any("unreadable image" in reason for reason in split.report.unusable)
    assert any("placeholders" in reason for reason in split.report.unusable)
    assert "2 unusable" in caplog.text and ("row 7" in caplog.text or "row 9" in caplog.text)
    with pytest.raises(DataError, match=r"1 of \d+ rows examined cannot be used, over the 0% limit"):
        load_split(repo, n_train=500, n_eval=10, max_bad_fraction=0.0)


def test_a_mostly_broken_hub_dataset_fails_at_start(tmp_path):
    repo = f"hf:{upstream_repo(tmp_path / 'mmfr', 50, bad_rows=set(range(0, 50, 5)))}"
    with pytest.raises(DataError, match=r"rows examined cannot be used, over the 1% limit; first: hf:.*row \d+: "
                                        r"field 'image'\[0\]: unreadable image") as err:
        load_train_and_eval(repo, n_train=40, n_eval=5)
    assert "\n" not in str(err.value)


def test_save_to_disk_directories_and_bad_splits(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"question": ["a", "b", "c"], "answer": ["1", "2", "3"]})
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "saved"))
    train, test = load_train_and_eval(f"hf:{tmp_path / 'saved'}:test", n_train=5, n_eval=1)
    assert len(train) == 2 and len(test) == 1
    with pytest.raises(DataError, match=r"no split 'validation' \(splits: train, test\)"):
        load_train_and_eval(f"hf:{tmp_path / 'saved'}:validation", n_train=5, n_eval=1)
    repo = upstream_repo(tmp_path / "mmfr", 4)
    with pytest.raises(DataError, match=r"cannot load the dataset"):
        load_train_and_eval(f"hf:{repo}:nosuchsplit", n_train=5, n_eval=1)
    empty = datasets.Dataset.from_dict({"question": [], "answer": []},
                                       features=datasets.Features({"question": datasets.Value("string"),
                                                                   "answer": datasets.Value("string")}))
    (tmp_path / "empty/data").mkdir(parents=True)
    empty.to_parquet(str(tmp_path / "empty/data/train-00000-of-00001.parquet"))
    with pytest.raises(DataError, match=r"empty:train: cannot load the dataset: .*corresponds to no data"):
        load_train_and_eval(f"hf:{tmp_path / 'empty'}", n_train=5, n_eval=0)


def test_image_paths_in_a_hub_layout_directory_resolve_against_it(tmp_path):
    import datasets

    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "images").mkdir()
    Image.new("RGB", (4, 4), (9, 8, 7)).save(root / "images/0.png")
    datasets.Dataset.from_dict({"problem": ["<image>What?"], "answer": ["1"], "images": [["images/0.png"]]}) \
        .to_json(str(root / "data/train.jsonl"))
    (p,) = load_train_and_eval(f"hf:{root}", n_train=1, n_eval=0)[0]
    assert p.images[0].getpixel((0, 0)) == (9, 8, 7)


def _hub_with_image_paths(tmp_path, monkeypatch, n_rows=6):
    """A hub id whose rows name image files (row k: images/k.png); downloads recorded, nothing leaves the machine."""
    import datasets
    import huggingface_hub

    table = datasets.Dataset.from_dict({"problem": [f"<image>Q{k}?" for k in range(n_rows)],
                                        "answer": [str(k) for k in range(n_rows)],
                                        "images": [[f"images/{k}.png"] for k in range(n_rows)]})
    loads, snapshots, fetches = [], [], []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: loads.append((a, k)) or table)

    def fake_snapshot(repo_id, repo_type, allow_patterns):
        snapshots.append((repo_id, repo_type, sorted(allow_patterns)))
        root = tmp_path / "snapshot"
        for name in allow_patterns:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (int(name.split("/")[1].split(".")[0]), 3, 3)).save(root / name)
        return str(root)

    def fake_download(repo_id, filename, repo_type):
        fetches.append((repo_id, filename, repo_type))
        Image.new("RGB", (4, 4), (200, 3, 3)).save(tmp_path / "one.png")
        return str(tmp_path / "one.png")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return loads, snapshots, fetches


def test_image_paths_in_a_hub_repository_are_fetched_from_it_in_one_download(tmp_path, monkeypatch):
    """A hub id whose rows name image files: the files of the rows in use come in ONE snapshot_download before
    they are checked (not one request per image), and only those files."""
    loads, snapshots, fetches = _hub_with_image_paths(tmp_path, monkeypatch)
    train, test = load_train_and_eval("hf:org/set:train:cfg", n_train=3, n_eval=1)
    assert loads == [(("org/set", "cfg"), {"split": "train"})]
    assert len(snapshots) == 1 and snapshots[0][:2] == ("org/set", "dataset")
    used = sorted(f"images/{p.answer}.png" for p in train + test)
    assert set(used) <= set(snapshots[0][2]) and len(snapshots[0][2]) < 6  # the rows in use, not the whole set
    assert fetches == []
    for p in train:
        assert p.images[0].getpixel((0, 0)) == (int(p.answer), 3, 3) and p.meta["dataset"] == "hf:org/set:train:cfg"


def test_a_file_outside_the_prefetched_rows_is_still_fetched_alone(tmp_path, monkeypatch):
    from rlsd.data import HubSpec, _HubRows

    _, snapshots, fetches = _hub_with_image_paths(tmp_path, monkeypatch)
    rows = _HubRows(HubSpec.parse("hf:org/set"))
    assert rows.prefetch([0, 1]) == 2 and snapshots[0][2] == ["images/0.png", "images/1.png"]
    assert rows.resolve("images/1.png") == tmp_path / "snapshot" / "images/1.png"
    later = rows.resolve("images/5.png")  # a row past the prefetched ones (bad rows ahead of it)
    assert callable(later) and later().name == "one.png" and fetches == [("org/set", "images/5.png", "dataset")]


def test_hub_spec_syntax():
    assert HubSpec.parse("hf:iieycx/rlsd-train-MMFineReason-123K") == \
        HubSpec("iieycx/rlsd-train-MMFineReason-123K", "train", None)
    assert HubSpec.parse("hf:a/b:test:cfg") == HubSpec("a/b", "test", "cfg")
    assert str(HubSpec.parse("hf:a/b:test:cfg")) == "hf:a/b:test:cfg"
    for bad in ("hf:", "hf:a/b:", "hf:a/b:x:y:z"):
        with pytest.raises(DataError, match="expected hf:<dataset id>"):
            HubSpec.parse(bad)


def test_a_hub_id_offline_fails_at_start_with_one_line(tmp_path):
    code = ("from rlsd.data import DataError, load_train_and_eval\n"
            "try:\n"
            "    load_train_and_eval('hf:iieycx/rlsd-train-MMFineReason-123K', 10, 2, 0)\n"
            "except DataError as e:\n"
            "    import json; print('DATAERROR', json.dumps(str(e)))\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    line = out.stdout.strip()
    assert line.startswith("DATAERROR"), out.stdout + out.stderr
    message = json.loads(line[len("DATAERROR "):])
    assert message.startswith("hf:iieycx/rlsd-train-MMFineReason-123K:train: cannot load the dataset (offline?")
    assert "\n" not in message


def test_loaded_problems_encode_unchanged(tmp_path, tiny_dir):
    """The trainer's callers read `p.images` and `len(p.images)` as before: hub problems encode as testbed ones do."""
    from rlsd.inputs import encode_prompts
    from rlsd.model import load_processor
    from rlsd.prompts import student_messages

    train, _ = load_train_and_eval(f"hf:{authors_repo(tmp_path / 'rlsd')}", n_train=2, n_eval=0)
    processor = load_processor(tiny_dir)
    batch = encode_prompts(processor, [student_messages(p.question, len(p.images)) for p in train],
                           [p.images for p in train])
    assert sorted(batch.images_per_row) == [0, 2] and batch.pixel_values is not None
