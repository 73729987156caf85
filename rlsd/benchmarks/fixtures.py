"""Offline stand-ins for the five Table-2 benchmarks: tiny SYNTHETIC datasets in each hub schema.

    root = write_fixtures("/tmp/bench-data")          # root/<benchmark>, as DatasetDict.save_to_disk writes it
    run_benchmarks(BenchmarkRunConfig(model=..., data_dir=str(root), ...))
    python -m rlsd benchmark --model data/tiny-sft --data-dir /tmp/bench-data --limit 2

Every question, answer and image here is made up (plain shapes and numbers drawn with PIL): nothing is copied from a
real benchmark, so a score on them measures nothing about a model.  What they are for is the path: the same
columns and feature types as the hub datasets (``rlsd.benchmarks.hub`` names the columns it reads), the same split
names, MMMU as one folder per subject config, ZeroBench with both its splits, We-Math as whole problem groups (a
two-step and a three-step group, each with its composite question), so that ``--data-dir`` goes through exactly the
export, loaders and scorers a hub run uses.  Notebooks 03 and 04 use them on a CPU (CI) in place of the hub.

Each gold answer is written in the form its benchmark's answers take (MMMU and We-Math option letters, MathVista's
choice text or number, MATH-Vision letters or free-form values, ZeroBench strings), so that
``answer_as_response`` of every item scores 1 under the official protocol (tests/test_colab.py checks it).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

FIXTURE_NOTE = "Synthetic fixture (made up for offline tests; no real benchmark content)"
SPLITS = {"mmmu": ("validation",), "mathvista": ("testmini",), "mathvision": ("test",),
          "zerobench": ("zerobench_subquestions", "zerobench"), "wemath": ("testmini",)}
"""The splits written per benchmark (the hub's names; ``rlsd.benchmarks.hub.HUB_SOURCES`` scores these)."""


def shape_image(index: int, size: int = 64) -> Image.Image:
    """A synthetic picture: ``index % 5 + 1`` filled discs of one colour on white (distinct per index)."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    colour = ((53 * index) % 200, (97 * index + 60) % 200, (31 * index + 120) % 200)
    for k in range(index % 5 + 1):
        x, y = 6 + (k % 3) * 20, 8 + (k // 3) * 24
        draw.ellipse((x, y, x + 14, y + 14), fill=colour)
    return image


# ------------------------------------------------------------------------------------------------ the rows


def _mmmu_rows() -> dict[str, list[dict]]:
    """Subject -> rows (ids ``validation_<Subject>_<n>``, as on the hub)."""
    items = {
        "Math": [
            ("How many discs are drawn in <image 1>?", "['1', '2', '3', '4']", "B", "multiple-choice"),
            ("What is the sum of 12 and 30, as written beside <image 1>?", "[]", "42", "open"),
        ],
        "Physics": [
            ("A cart moves 6 m in 2 s (<image 1>). What is its speed in m/s?", "[]", "3", "open"),
            ("Which colour fills the discs in <image 1>?", "['red', 'green', 'blue', 'grey']", "D", "multiple-choice"),
        ],
    }
    rows, index = {}, 0
    for subject, questions in items.items():
        for n, (question, options, answer, qtype) in enumerate(questions, start=1):
            rows.setdefault(subject, []).append({
                "id": f"validation_{subject}_{n}", "question": question, "options": options, "explanation": "",
                "image_1": shape_image(index), **{f"image_{k}": None for k in range(2, 8)},
                "img_type": "['Diagrams']", "answer": answer, "topic_difficulty": "Easy", "question_type": qtype,
                "subfield": "Synthetic"})
            index += 1
    return rows


def _mathvista_rows() -> list[dict]:
    from . import mathvista

    specs = [  # question, question_type, answer_type, choices, unit, precision, answer
        ("How many discs are in the figure?", "free_form", "integer", None, None, None, "3"),
        ("Which shape is drawn in the figure?", "multi_choice", "text", ["square", "disc", "triangle"], None, None,
         "disc"),
        ("What is the ratio of 3 to 4?", "free_form", "float", None, None, 2.0, "0.75"),
        ("How long is the bar?", "free_form", "integer", None, "cm", None, "12"),
    ]
    rows = []
    for index, (question, qtype, atype, choices, unit, precision, answer) in enumerate(specs):
        pid = str(index + 1)
        rows.append({
            "pid": pid, "question": question, "image": f"images/{pid}.jpg", "decoded_image": shape_image(10 + index),
            "choices": choices, "unit": unit, "precision": precision, "answer": answer, "question_type": qtype,
            "answer_type": atype,
            "metadata": {"category": "math-targeted-vqa", "context": "synthetic scene", "grade": "elementary school",
                         "img_height": 64, "img_width": 64, "language": "english", "skills": ["arithmetic reasoning"],
                         "source": FIXTURE_NOTE, "split": "testmini", "task": "figure question answering"},
            "query": mathvista.build_query(question, qtype, atype, choices, unit, precision)})
    return rows


def _mathvision_rows() -> list[dict]:
    specs = [  # question, options, answer, level, subject
        ("How many discs are shown? <image1>", ["1", "2", "3", "4", "5"], "C", 1, "counting"),
        ("What is 7 times 6? <image1>", [], "42", 2, "arithmetic"),
        ("Which disc is the largest? <image1>", ["A", "B", "C", "D", "E"], "A", 3, "metric geometry - length"),
        ("What fraction of the square is shaded? <image1>", [], "\\frac{1}{4}", 4, "metric geometry - area"),
    ]
    return [{"id": str(k + 1), "question": q, "options": options, "image": f"images/{k + 1}.jpg",
             "decoded_image": shape_image(20 + k), "answer": answer, "solution": None, "level": level,
             "subject": subject} for k, (q, options, answer, level, subject) in enumerate(specs)]


def _zerobench_rows(split: str) -> list[dict]:
    if split == "zerobench":
        specs = [("1", "Multiply the number of discs in the first image by the number in the second.", "6", 2),
                 ("2", "How many discs are there in total?", "4", 1)]
    else:
        specs = [("1_1", "How many discs are in the first image?", "2", 2),
                 ("1_2", "How many discs are in the second image?", "3", 2),
                 ("2_1", "What colour are the discs?", "grey", 1),
                 ("2_2", "Give the grid position (row, column) of the first disc.", "(1, 1)", 1)]
    rows = []
    for k, (qid, question, answer, n_images) in enumerate(specs):
        rows.append({"question_id": qid, "question_text": question,
                     "question_images_decoded": [shape_image(30 + 10 * k + j) for j in range(n_images)],
                     "question_answer": answer, "question_images": [f"images/{qid}_{j}.png" for j in range(n_images)],
                     "image_attribution": FIXTURE_NOTE})
    return rows


def _wemath_rows() -> list[dict]:
    groups = {  # ID -> [(key, question, option, answer)]; the composite question is the group's last row
        "2steps_1": [
            ("2steps_1", "How many discs are drawn?", "A. 1;B. 2;C. 3;D. 4;E. No correct answer", "B"),
            ("2steps_2", "Each disc weighs 5 g. What do two discs weigh?", "A. 5 g;B. 10 g;C. 15 g;D. 20 g", "B"),
            ("2steps_multi", "Each disc in the figure weighs 5 g. What do they weigh together?",
             "A. 5 g;B. 10 g;C. 15 g;D. 20 g;E. No correct answer", "B"),
        ],
        "3steps_1": [
            ("3steps_1", "What is the side of the square, 4 cm or 6 cm?", "A. 4 cm;B. 6 cm", "A"),
            ("3steps_2", "What is the area of a 4 cm square?", "A. 8 cm²;B. 12 cm²;C. 16 cm²", "C"),
            ("3steps_3", "What is half of 16 cm²?", "A. 4 cm²;B. 8 cm²;C. 16 cm²", "B"),
            ("3steps_multi", "Half of the square in the figure is shaded. What area is shaded?",
             "A. 4 cm²;B. 8 cm²;C. 16 cm²;D. No correct answer", "B"),
        ],
    }
    rows, number = [], 0
    for group, questions in groups.items():
        number += 1
        for key, question, option, answer in questions:
            rows.append({"ID": group, "split": "testmini", "knowledge concept": "Synthetic concept",
                         "question": question, "option": option, "answer": answer,
                         "image_path": shape_image(40 + len(rows)), "key": key, "question number": number,
                         "knowledge concept description": FIXTURE_NOTE})
    return rows


# ------------------------------------------------------------------------------------------------ features


def _features():
    import datasets

    V, IMG = datasets.Value, datasets.Image
    return {
        "mmmu": datasets.Features({
            "id": V("string"), "question": V("string"), "options": V("string"), "explanation": V("string"),
            **{f"image_{k}": IMG() for k in range(1, 8)}, "img_type": V("string"), "answer": V("string"),
            "topic_difficulty": V("string"), "question_type": V("string"), "subfield": V("string")}),
        "mathvista": datasets.Features({
            "pid": V("string"), "question": V("string"), "image": V("string"), "decoded_image": IMG(),
            "choices": datasets.Sequence(V("string")), "unit": V("string"), "precision": V("float64"),
            "answer": V("string"), "question_type": V("string"), "answer_type": V("string"),
            "metadata": {"category": V("string"), "context": V("string"), "grade": V("string"),
                         "img_height": V("int64"), "img_width": V("int64"), "language": V("string"),
                         "skills": datasets.Sequence(V("string")), "source": V("string"), "split": V("string"),
                         "task": V("string")},
            "query": V("string")}),
        "mathvision": datasets.Features({
            "id": V("string"), "question": V("string"), "options": datasets.Sequence(V("string")),
            "image": V("string"), "decoded_image": IMG(), "answer": V("string"), "solution": V("string"),
            "level": V("int64"), "subject": V("string")}),
        "zerobench": datasets.Features({
            "question_id": V("string"), "question_text": V("string"),
            "question_images_decoded": datasets.Sequence(IMG()), "question_answer": V("string"),
            "question_images": datasets.Sequence(V("string")), "image_attribution": V("string")}),
        "wemath": datasets.Features({
            "ID": V("string"), "split": V("string"), "knowledge concept": V("string"), "question": V("string"),
            "option": V("string"), "answer": V("string"), "image_path": IMG(), "key": V("string"),
            "question number": V("int64"), "knowledge concept description": V("string")}),
    }


def write_fixtures(root: str | Path) -> Path:
    """Write ``root/<benchmark>`` for the five benchmarks (``DatasetDict.save_to_disk``); returns ``root``.

    MMMU is written one folder per subject config (``root/mmmu/Math``, ``root/mmmu/Physics``), as
    ``load_dataset("MMMU/MMMU", subject)`` returns it.  Rewriting an existing root replaces its datasets.
    """
    import datasets

    root = Path(root)
    features = _features()

    def save(splits: dict[str, list[dict]], name: str, path: Path) -> None:
        datasets.DatasetDict({split: datasets.Dataset.from_list(rows, features=features[name])
                              for split, rows in splits.items()}).save_to_disk(str(path))

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a dozen one-line bars would bury a notebook's output
    try:
        for subject, rows in _mmmu_rows().items():
            save({"validation": rows}, "mmmu", root / "mmmu" / subject)
        save({"testmini": _mathvista_rows()}, "mathvista", root / "mathvista")
        save({"test": _mathvision_rows()}, "mathvision", root / "mathvision")
        save({split: _zerobench_rows(split) for split in SPLITS["zerobench"]}, "zerobench", root / "zerobench")
        save({"testmini": _wemath_rows()}, "wemath", root / "wemath")
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    return root
