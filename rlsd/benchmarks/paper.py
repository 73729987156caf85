"""The paper's Table 2 as published, and the tables this repository shows beside it (never mixed into it).

``PAPER_TABLE2`` holds the published accuracies (%) of Qwen3-VL-8B-Instruct trained by each method, on MMMU
(validation), MathVista (testmini), MathVision (test), ZeroBench (sub-questions) and WeMath, plus the paper's
average.  They are the paper's numbers, copied, not measured here.

Tables are lists of row dicts (no pandas), written by ``write_table`` as CSV (numbers, for machines) and Markdown
(formatted, for reading).  Three builders:

* ``paper_table2_rows()``: the published table;
* ``table2_rows(measured)``: the published table with measured columns BESIDE each published one, for results
  measured on the same five benchmarks (the GPU path); a measured number never replaces a published one;
* ``table2_testbed_rows(table)``, ``base_controls_rows(table)``: the Table 2-style table measured on the CPU
  testbed from ``rlsd.reproduce``'s summary.  Its columns are different (the testbed is not a paper benchmark).
"""

from __future__ import annotations

import csv
import html
import math
from pathlib import Path
from typing import Mapping, Sequence

PAPER_MODEL = "Qwen3-VL-8B-Instruct"
PAPER_SOURCE = "Self-Distilled RLVR (arXiv 2604.03128), Table 2, as published"

PAPER_BENCHMARKS: dict[str, tuple[str, str]] = {
    "mmmu": ("MMMU", "validation"),
    "mathvista": ("MathVista", "testmini"),
    "mathvision": ("MathVision", "test"),
    "zerobench": ("ZeroBench", "sub-questions"),
    "wemath": ("WeMath", "testmini"),
}
"""Harness name -> (column label in the paper, split the paper reports), in the paper's column order."""

METHOD_LABELS = {"base": "Base LLM", "grpo": "GRPO", "opsd": "OPSD", "sdpo": "SDPO", "grpo_opsd": "GRPO+OPSD",
                 "rlsd": "RLSD"}
"""The paper's rows, in its order, with its labels."""

PAPER_TABLE2: dict[str, dict[str, float]] = {
    "base": {"mmmu": 62.44, "mathvista": 73.80, "mathvision": 47.37, "zerobench": 19.76, "wemath": 54.10,
             "avg": 51.49},
    "grpo": {"mmmu": 65.11, "mathvista": 76.20, "mathvision": 48.82, "zerobench": 22.60, "wemath": 56.57,
             "avg": 53.86},
    "opsd": {"mmmu": 63.82, "mathvista": 75.10, "mathvision": 47.53, "zerobench": 21.06, "wemath": 54.95,
             "avg": 52.49},
    "sdpo": {"mmmu": 65.11, "mathvista": 74.00, "mathvision": 47.27, "zerobench": 25.15, "wemath": 52.19,
             "avg": 52.74},
    "grpo_opsd": {"mmmu": 63.22, "mathvista": 75.90, "mathvision": 48.52, "zerobench": 22.16, "wemath": 54.76,
                  "avg": 52.91},
    "rlsd": {"mmmu": 67.22, "mathvista": 78.10, "mathvision": 52.73, "zerobench": 24.85, "wemath": 58.00,
             "avg": 56.18},
}
"""Published accuracy (%) per method and benchmark; "avg" is the paper's own average of the five."""

# The CPU testbed's Table 2-style rows: the paper's methods in its order, then the extra OPSD variant.
TESTBED_METHODS = ("base", "grpo", "opsd", "sdpo", "grpo_opsd", "rlsd", "opsd_online")
TESTBED_LABELS = {**METHOD_LABELS, "base": "Base (warm start)",
                  "opsd_online": "OPSD, online teacher (extra; not in the paper's Table 2)",
                  "rlsd_const": "RLSD, constant λ (extra; not in the paper's Table 2)"}


def paper_table2_rows() -> list[dict]:
    """The published Table 2: one row per method, columns Method, the five benchmarks, Avg. (all %)."""
    rows = []
    for method, label in METHOD_LABELS.items():
        row = {"Method": label}
        row.update({column: PAPER_TABLE2[method][name] for name, (column, _) in PAPER_BENCHMARKS.items()})
        row["Avg."] = PAPER_TABLE2[method]["avg"]
        rows.append(row)
    return rows


def table2_rows(measured: Mapping[str, Mapping[str, float]] | None = None, measured_label: str = "measured",
                ) -> list[dict]:
    """The published table with measured numbers in their own columns, beside the published ones.

    ``measured`` maps a method (``"base"``, ``"grpo"``, ...; other names become extra rows) to
    ``{benchmark name: accuracy}`` as ``score_responses(...)["headline"]`` gives it (a fraction in [0, 1]); it is
    shown in %.  Columns: ``"<Benchmark> (paper)"``, ``"<Benchmark> (<measured_label>)"`` for each benchmark, then
    the two averages; a measured average is given only when all five benchmarks were measured.  Missing cells are
    None.  With ``measured=None`` this is ``paper_table2_rows()``.
    """
    if not measured:
        return paper_table2_rows()
    unknown = {name for values in measured.values() for name in values} - set(PAPER_BENCHMARKS)
    if unknown:
        raise ValueError(f"table2_rows: unknown benchmark(s) {sorted(unknown)}; expected {list(PAPER_BENCHMARKS)}")
    rows = []
    for method in list(METHOD_LABELS) + [m for m in measured if m not in METHOD_LABELS]:
        paper, ours = PAPER_TABLE2.get(method, {}), measured.get(method, {})
        row = {"Method": METHOD_LABELS.get(method, method)}
        for name, (column, _) in PAPER_BENCHMARKS.items():
            row[f"{column} (paper)"] = paper.get(name)
            row[f"{column} ({measured_label})"] = None if ours.get(name) is None else 100.0 * ours[name]
        row["Avg. (paper)"] = paper.get("avg")
        row[f"Avg. ({measured_label})"] = (100.0 * sum(ours[name] for name in PAPER_BENCHMARKS) / len(PAPER_BENCHMARKS)
                                           if all(ours.get(name) is not None for name in PAPER_BENCHMARKS) else None)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ the CPU testbed


def _pct(value):
    return None if value is None else 100.0 * value


def _spread(stats: Mapping | None) -> dict:
    stats = stats or {}
    return {key: _pct(stats.get(key)) for key in ("mean", "std", "min", "max")} | {"n": stats.get("n", 0)}


def table2_testbed_rows(table: Mapping[str, Mapping], base_eval: Mapping | None = None) -> list[dict]:
    """Numeric rows (%, for CSV) of the Table 2-style table measured on the testbed.

    ``table`` is ``summary["table"]`` written by ``rlsd.reproduce.reproduce``: ``"base"`` holds single numbers,
    every run name ``{"accuracy" | "leak_rate" | "unsupported_answer_rate": {"mean", "std", "min", "max", "n"}}``
    over seeds (final test evaluation).  ``base_eval`` (``base_eval.json``), if given, supplies the base model's
    leak and unsupported-answer rates.  Rows follow ``TESTBED_METHODS``; methods absent from ``table`` are left out.
    """
    rows = []
    for method in [m for m in TESTBED_METHODS if m in table] + sorted(m for m in table if m not in TESTBED_METHODS):
        entry = table[method]
        row = {"method": method, "label": TESTBED_LABELS.get(method, method)}
        if method == "base":
            student = (base_eval or {}).get("student/none", {})
            row.update(seeds=1, accuracy_mean=_pct(entry.get("accuracy")), accuracy_std=None, accuracy_min=None,
                       accuracy_max=None, leak_rate_mean=_pct(student.get("leak_rate")), leak_rate_std=None,
                       unsupported_answer_rate_mean=_pct(student.get("unsupported_answer_rate")),
                       unsupported_answer_rate_std=None)
        else:
            acc, leak, unsupported = (_spread(entry.get(k)) for k in
                                      ("accuracy", "leak_rate", "unsupported_answer_rate"))
            row.update(seeds=acc["n"], accuracy_mean=acc["mean"], accuracy_std=acc["std"], accuracy_min=acc["min"],
                       accuracy_max=acc["max"], leak_rate_mean=leak["mean"], leak_rate_std=leak["std"],
                       unsupported_answer_rate_mean=unsupported["mean"],
                       unsupported_answer_rate_std=unsupported["std"])
        rows.append(row)
    return rows


def _mean_std(mean, std, digits: int = 1) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def table2_testbed_display(rows: Sequence[Mapping], digits: int = 1) -> list[dict]:
    """``table2_testbed_rows`` formatted for reading: 'mean ± std' and the min-max range over seeds."""
    out = []
    for row in rows:
        spread = ("" if row["accuracy_min"] is None else
                  f"{row['accuracy_min']:.{digits}f}–{row['accuracy_max']:.{digits}f}")
        out.append({
            "Method": row["label"],
            "Seeds": row["seeds"] if row["method"] != "base" else "1 (no training)",
            "Test accuracy (%)": _mean_std(row["accuracy_mean"], row["accuracy_std"], digits),
            "Range over seeds": spread,
            "Leak rate (%)": _mean_std(row["leak_rate_mean"], row["leak_rate_std"], digits),
            "Unsupported-answer rate (%)": _mean_std(row["unsupported_answer_rate_mean"],
                                                     row["unsupported_answer_rate_std"], digits),
        })
    return out


BASE_CONTROLS = (
    ("accuracy", "student prompt (the Base row)", "what the warm start answers from the image and question"),
    ("teacher_format", "teacher prompt (reference answer shown)", "the self-teacher's accuracy: an upper reference"),
    ("blank", "blank (white) images", "falls to about the majority baseline if the model reads the image"),
    ("shuffled", "images shuffled across problems", "same, with real but unrelated images"),
    ("majority", "majority answer per task family (no model)", "floor: answering without looking"),
    ("ideal_observer", "ideal observer (no model)", "nearest-colour reading of every square: about the best the colour noise allows"),
)


def base_controls_rows(table: Mapping[str, Mapping]) -> list[dict]:
    """The base model's controls (%), from ``summary["table"]["base"]``."""
    base = table["base"]
    return [{"Condition": label, "Accuracy (%)": _pct(base.get(key)), "What it shows": meaning, "key": key}
            for key, label, meaning in BASE_CONTROLS if key in base]


# ------------------------------------------------------------------------------------------ writing


def _cell(value, digits: int, markdown: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    text = str(value).replace("\n", " ")
    return text.replace("|", "\\|") if markdown else text


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None, digits: int = 2) -> str:
    """A GitHub Markdown table; floats with ``digits`` decimals, None as an empty cell."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c), digits) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def html_tables_side_by_side(tables: Sequence[tuple[str, Sequence[Mapping], Sequence[str] | None]],
                             digits: int = 2) -> str:
    """HTML showing several (title, rows, columns) tables next to each other, each with its own header: tables
    with different column sets are placed beside each other, never merged."""
    blocks = []
    for title, rows, columns in tables:
        columns = list(columns or (rows[0] if rows else []))
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c), digits, markdown=False))}</td>"
                                        for c in columns) + "</tr>" for row in rows)
        blocks.append(f'<div style="flex: 0 1 auto"><p><b>{html.escape(title)}</b></p>'
                      f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
    style = "display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start"
    return f'<div style="{style}">' + "".join(blocks) + "</div>"


def write_table(rows: Sequence[Mapping], stem: str, directory: str | Path, *, columns: Sequence[str] | None = None,
                markdown_rows: Sequence[Mapping] | None = None, markdown_columns: Sequence[str] | None = None,
                title: str | None = None, notes: Sequence[str] = (), digits: int = 2,
                csv_digits: int | None = None) -> tuple[Path, Path]:
    """Write ``<directory>/<stem>.csv`` (``rows``; floats rounded to 6 decimals, or written with exactly
    ``csv_digits``) and ``<stem>.md`` (a title, the notes, then ``markdown_rows`` if given, else ``rows``, with
    ``digits`` decimals).  Missing values are empty cells.  Returns the two paths."""
    if not stem or "/" in stem or "\\" in stem:
        raise ValueError(f"table name must be a plain file stem, got {stem!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    columns = list(columns or (rows[0] if rows else []))
    csv_path, md_path = directory / f"{stem}.csv", directory / f"{stem}.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        def number(value):
            return round(value, 6) if csv_digits is None else f"{value:.{csv_digits}f}"

        for row in rows:
            writer.writerow(["" if row.get(c) is None else (number(row[c]) if isinstance(row[c], float) else row[c])
                             for c in columns])
    parts = [f"## {title}", ""] if title else []
    for note in notes:
        parts += [note, ""]
    parts.append(markdown_table(markdown_rows if markdown_rows is not None else rows,
                                markdown_columns or (None if markdown_rows is not None else columns), digits))
    md_path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return csv_path, md_path
