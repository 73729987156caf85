"""The problem record shared by the testbed and real data, and the loaders for training data.

Two kinds of source, one mapping to `Problem`:

- a local JSONL or parquet file (`load_problems`, or `load_train_and_eval("data/x.jsonl", ...)`), one problem per row;
- a dataset read with the `datasets` library: `data=hf:<dataset id>[:<split>[:<config>]]`, e.g.
  `hf:iieycx/rlsd-train-MMFineReason-123K` (split `train`, the default) or
  `hf:OpenDataArena/MMFineReason-SFT-123K-Qwen3-VL-235B-Thinking:train`. The id may also be a local directory laid
  out as a hub repository (`data/train-00000-of-00001.parquet`, ...) or one written by `Dataset.save_to_disk`.

COLUMNS (below) is the one place that says which column becomes which `Problem` field:

    Problem field  columns tried, in order            accepted values
    question       question, problem                  non-empty str; inline `<image>` placeholders are removed (the
                                                      prompts put the images first) and, when present, must number
                                                      exactly the row's images
    answer         answer                             non-empty str, int, or finite float (not bool, NaN, dict, list)
    images         images (a list), image (one)       path (relative to the file's directory), bytes,
                                                      {"bytes": ..., "path": ...}, or a `datasets.Image` column
    solution       solution, qwen3vl_235b_thinking_response   str (the reference an OPSD-style teacher may read)
    options        options                            list of str, appended to the question as "Options:" lines
    id             id                                 str or int; default "<file>:<row>". Hub rows with a `source`
                                                      column get "<source>:<id>" (upstream ids repeat across sources)

Every other column goes to `Problem.meta`. The hub layouts this covers, as checked against public code and notes
that read them: the upstream `OpenDataArena/MMFineReason-SFT-123K-Qwen3-VL-235B-Thinking` (parquet shards under
`data/`: `question` with inline `<image>`, `answer`, `image` as a `datasets.Image` struct of bytes and path,
`qwen3vl_235b_thinking_response`, `source`, `id`, `pass_rate`, `caption`, ...) and the authors' RLSD release
`iieycx/rlsd-train-MMFineReason-123K`, read by their EasyR1-style trainer with `prompt_key=problem`,
`answer_key=answer`, `image_key=images`, the 235B response as the teacher trajectory, and `problem_type`/`options`
in its prompt template. Whether that release stores its images inline (a `datasets.Image` list) or as files named
by path was not visible; both work: paths are read relative to a local directory, or fetched from the hub
repository with `huggingface_hub`: the files of every row the run will use in ONE `snapshot_download` before the
images are checked (parallel, resumable, cached), any further one when first read.

Errors and bad rows:
- a local file is checked completely at load: encoding (UTF-8), JSON, every field's type, duplicate ids, and the
  images of the rows a run will use; the first problem raises `DataError` naming the file, the row and the field;
- a hub dataset is scanned in the seeded order until enough usable rows are found; rows that cannot be used (a bad
  field, an unreadable image, a duplicate id) are counted and reported in one log line, and the load fails only when
  they exceed `MAX_BAD_FRACTION` (1%) of the rows examined;
- a data set with no usable rows, or with none left for training after the held-out slice, is refused at load.

Images are decoded lazily: a loaded `Problem` holds `ImageRef`s and `Problem.images` decodes them on access (RGB PIL
images, the last `IMAGE_CACHE_SIZE` kept), so memory does not grow with the number of training rows. They are still
validated before step 1 (header read and `verify()`, no full decode) for every row the run will use, and an image of
more than `MAX_IMAGE_PIXELS` pixels (PIL's decompression-bomb limit) is refused.
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
import re
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

log = logging.getLogger(__name__)

HF_PREFIX = "hf:"
MAX_BAD_FRACTION = 0.01
"""A hub load fails when more than this fraction of the rows it examined cannot be used."""
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
"""Images with more pixels than this are refused (PIL's own decompression-bomb threshold)."""
IMAGE_CACHE_SIZE = 64
"""Decoded images kept in memory (a step reads each of its problems' images several times)."""
IMAGE_PLACEHOLDER = "<image>"

# The one mapping of source columns to Problem fields (see the module docstring for the table).
COLUMNS = {
    "question": ("question", "problem"),
    "answer": ("answer",),
    "images": ("images",),
    "image": ("image",),
    "solution": ("solution", "qwen3vl_235b_thinking_response"),
    "options": ("options",),
    "id": ("id",),
}
ID_NAMESPACE_COLUMN = "source"
"""Hub rows only: ids are prefixed with this column's value, as upstream ids are only unique within a source."""


class DataError(ValueError):
    """Bad input data; the message names the file (or dataset), the row and the field."""


# ------------------------------------------------------------------------------------------------------------ images


@dataclass(eq=False)
class ImageRef:
    """An image not yet decoded: how to get its encoded bytes (or its file), and where it came from (for errors).

    `source` is a path, the encoded bytes, or a function returning either (hub rows read their image column on
    demand, so thousands of rows cost no memory). Hashable by identity: the decode cache is keyed on it.
    """

    where: str
    source: Path | bytes | Callable[[], Path | bytes]

    def _open(self) -> Image.Image:
        src = self.source() if callable(self.source) else self.source
        if isinstance(src, (bytes, bytearray)):
            return Image.open(io.BytesIO(src))
        if not Path(src).is_file():
            raise DataError(f"{self.where}: image file not found: {src}")
        return Image.open(src)

    def _guarded(self, work):
        """work(opened image), with every failure (and an oversized image) turned into a `DataError`."""
        try:
            with warnings.catch_warnings():
                # PIL only warns between its limit and twice it; refuse those too.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with self._open() as img:
                    w, h = img.size
                    if w * h > MAX_IMAGE_PIXELS:
                        raise DataError(f"{self.where}: image of {w}x{h} = {w * h} pixels refused (limit "
                                        f"{MAX_IMAGE_PIXELS}; a decompression bomb?)")
                    return work(img)
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(f"{self.where}: image refused as a decompression bomb ({e})") from e
        except Exception as e:  # PIL raises many types for corrupt data
            raise DataError(f"{self.where}: unreadable image ({type(e).__name__}: {e})") from e

    def check(self) -> None:
        """Read the header and verify the file's structure, without decoding the pixels."""
        self._guarded(lambda img: img.verify())

    def decode(self) -> Image.Image:
        """The image, fully decoded, as RGB."""
        def work(img):
            img.load()
            return img.convert("RGB")
        return self._guarded(work)


_decoded: OrderedDict[ImageRef, Image.Image] = OrderedDict()


def decode_image(ref: ImageRef) -> Image.Image:
    """`ref` decoded (from the small LRU cache if it was decoded recently)."""
    if ref in _decoded:
        _decoded.move_to_end(ref)
        return _decoded[ref]
    img = ref.decode()
    _decoded[ref] = img
    while len(_decoded) > IMAGE_CACHE_SIZE:
        _decoded.popitem(last=False)
    return img


# ----------------------------------------------------------------------------------------------------------- problem


@dataclass
class Problem:
    """One verifiable problem: question + images + gold answer (+ optional reference solution).

    `images` may be given as PIL images (the testbed) or `ImageRef`s (the loaders); reading `problem.images` always
    returns a new list of PIL images, decoding references on access.
    """

    id: str
    question: str
    answer: str
    images: list[Image.Image]
    solution: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def image_refs(self) -> list:
        """The stored images: PIL images and/or undecoded `ImageRef`s."""
        return self._images

    def check_images(self) -> None:
        """Validate every undecoded image (header + verify); raises `DataError`."""
        for ref in self._images:
            if isinstance(ref, ImageRef):
                ref.check()


def _get_images(self) -> list[Image.Image]:
    return [decode_image(x) if isinstance(x, ImageRef) else x for x in self._images]


def _set_images(self, value) -> None:
    self._images = list(value)


# Installed after the dataclass is built, so the generated __init__ and __repr__ go through the property.
Problem.images = property(_get_images, _set_images, doc="The problem's images as PIL images (decoded on access).")


# ------------------------------------------------------------------------------------------------- one row -> Problem


def _first(row: dict, field_name: str):
    """(column, value) of the first column of COLUMNS[field_name] present with a non-null value."""
    for column in COLUMNS[field_name]:
        if row.get(column) is not None:
            return column, row[column]
    return COLUMNS[field_name][0], None


def _image_value(value, where: str, resolve: Callable[[str], Path | bytes | Callable]) -> ImageRef:
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path") is not None:
            value = value["path"]
        else:
            raise DataError(f"{where}: image has neither 'bytes' nor 'path'")
    if isinstance(value, (bytes, bytearray)):
        return ImageRef(where, bytes(value))
    if isinstance(value, str) and value.strip():
        return ImageRef(where, resolve(value))
    raise DataError(f"{where}: expected an image path, bytes or {{'bytes', 'path'}}, got {type(value).__name__}")


def map_row(row, where: str, resolve: Callable[[str], Path | bytes | Callable], default_id: str,
            hub: bool = False, image_source: Callable[[str, int], Callable] | None = None) -> Problem:
    """One source row -> `Problem`, following COLUMNS. Raises `DataError` naming `where` and the field.

    `resolve(path)` turns an image path string into what an `ImageRef` reads. `image_source(column, k)`, if given,
    returns a reader of the k-th image (k = -1: the only one) of `column` of this row, or None if `column` holds no
    `datasets.Image` (hub datasets: images are read on demand instead of held).
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object (a JSON object / a table row), got {type(row).__name__}")

    column, question = _first(row, "question")
    if question is None or (isinstance(question, str) and not question.strip()):
        raise DataError(f"{where}: field 'question' is missing or empty")
    if not isinstance(question, str):
        raise DataError(f"{where}: field '{column}' must be a string, got {type(question).__name__}")

    a_col, answer = _first(row, "answer")
    if isinstance(answer, bool) or not (answer is None or isinstance(answer, (str, int, float))):
        raise DataError(f"{where}: field '{a_col}' must be a string or a number, got {type(answer).__name__}")
    if isinstance(answer, float) and not math.isfinite(answer):
        raise DataError(f"{where}: field '{a_col}' is {answer}, not a usable answer")
    if answer is None or str(answer).strip() == "":
        raise DataError(f"{where}: field 'answer' is missing or empty")

    images_col, images = _first(row, "images")
    image_col, image = _first(row, "image")
    if images is not None and image is not None:
        raise DataError(f"{where}: both '{images_col}' and '{image_col}' are given; use one")

    def ref(value, where_k: str, col: str, k: int) -> ImageRef:
        reader = image_source(col, k) if image_source else None  # None: not an image column of a hub table
        return ImageRef(where_k, reader) if reader is not None and value is not None else \
            _image_value(value, where_k, resolve)

    refs = []
    if images is not None:
        if not isinstance(images, (list, tuple)):
            hint = f" (use '{image_col}' for a single image)" if isinstance(images, (str, bytes, dict)) else ""
            raise DataError(f"{where}: field '{images_col}' must be a list of images, got "
                            f"{type(images).__name__}{hint}")
        refs = [ref(v, f"{where}: field '{images_col}'[{k}]", images_col, k) for k, v in enumerate(images)]
    elif image is not None:
        refs = [ref(image, f"{where}: field '{image_col}'[0]", image_col, -1)]

    n_placeholders = question.count(IMAGE_PLACEHOLDER)
    if n_placeholders and n_placeholders != len(refs):
        raise DataError(f"{where}: field '{column}' has {n_placeholders} {IMAGE_PLACEHOLDER} placeholders but the "
                        f"row has {len(refs)} images")
    text = re.sub(r"[ \t]*" + re.escape(IMAGE_PLACEHOLDER) + r"[ \t]*", " ", question)
    text = re.sub(r" *\n *", "\n", text).strip()
    if not text:
        raise DataError(f"{where}: field '{column}' has no text besides its image placeholders")

    o_col, options = _first(row, "options")
    if options is not None:
        if not isinstance(options, (list, tuple)) or not all(isinstance(o, str) for o in options):
            raise DataError(f"{where}: field '{o_col}' must be a list of strings, got {type(options).__name__}")
        if options:
            text += "\nOptions:\n" + "\n".join(o.strip() for o in options)

    s_col, solution = _first(row, "solution")
    if solution is not None and not isinstance(solution, str):
        raise DataError(f"{where}: field '{s_col}' must be a string, got {type(solution).__name__}")

    i_col, pid = _first(row, "id")
    if isinstance(pid, bool) or not (pid is None or isinstance(pid, (str, int))):
        raise DataError(f"{where}: field '{i_col}' must be a string or an integer, got {type(pid).__name__}")
    if pid is None or str(pid).strip() == "":
        pid = default_id
    elif hub and row.get(ID_NAMESPACE_COLUMN) is not None:
        pid = f"{row[ID_NAMESPACE_COLUMN]}:{pid}"

    used = {column, a_col, images_col, image_col, o_col, s_col, i_col}
    meta = {k: v for k, v in row.items() if k not in used and not _is_image_value(v)}
    return Problem(id=str(pid).strip(), question=text, answer=str(answer).strip(), images=refs,
                   solution=solution.strip() if solution else None, meta=meta)


def _is_image_value(v) -> bool:
    return isinstance(v, dict) and set(v) == {"bytes", "path"}


# ------------------------------------------------------------------------------------------------------- local files


def _local_rows(path: Path) -> list[tuple[int, object]]:
    """(row number, parsed row) for every row of a JSONL/parquet file; `DataError` on anything unreadable."""
    if path.suffix == ".jsonl":
        rows = []
        with path.open("rb") as f:
            for i, raw in enumerate(f):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}: row {i}: not valid UTF-8 (byte {e.start} of the line)") from e
                if i == 0:
                    line = line.removeprefix("\ufeff")
                if not line.strip():
                    continue
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: row {i}: invalid JSON ({e.msg})") from e
        return rows
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # ArrowInvalid, OSError, ... for corrupt or truncated files
            raise DataError(f"{path}: unreadable parquet ({type(e).__name__}: {_one_line(e)})") from e
        return list(enumerate(table.to_pylist()))
    hint = f"; for a dataset directory use {HF_PREFIX}{path}" if path.is_dir() else ""
    raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl or .parquet{hint})")


def _map_local(path: Path) -> list[Problem]:
    """Every row of a local file as a `Problem` (images not yet checked); type errors and duplicate ids raise."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    base = path.parent
    resolve = lambda p: Path(p) if Path(p).is_absolute() else base / p  # noqa: E731
    problems, first_row = [], {}
    for i, row in _local_rows(path):
        p = map_row(row, f"{path}: row {i}", resolve, default_id=f"{path.name}:{i}")
        if p.id in first_row:
            raise DataError(f"{path}: row {i}: duplicate id {p.id!r} (first at row {first_row[p.id]})")
        first_row[p.id] = i
        problems.append(p)
    if not problems:
        raise DataError(f"{path}: no problems (the file is empty)")
    return problems


def load_problems(path: str | Path, limit: int | None = None) -> list[Problem]:
    """The first `limit` problems of a local JSONL/parquet file, in file order (see the module docstring).

    The whole file is checked (encoding, JSON, field types, duplicate ids); the images of the returned problems are
    validated (not decoded).
    """
    problems = _map_local(Path(path))
    problems = problems if limit is None else problems[:limit]
    for p in problems:
        p.check_images()
    return problems


# ------------------------------------------------------------------------------------------------------ hub datasets


@dataclass(frozen=True)
class HubSpec:
    """A parsed `hf:<dataset id or directory>[:<split>[:<config>]]`."""

    path: str
    split: str = "train"
    config: str | None = None

    @classmethod
    def parse(cls, data: str) -> HubSpec:
        body = data[len(HF_PREFIX):] if data.startswith(HF_PREFIX) else data
        parts = body.split(":")
        if not parts[0] or len(parts) > 3 or any(not x for x in parts[1:]):
            raise DataError(f"{data}: expected hf:<dataset id>[:<split>[:<config>]]")
        return cls(parts[0], *parts[1:])

    def __str__(self) -> str:
        return HF_PREFIX + ":".join(x for x in (self.path, self.split, self.config) if x)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def open_hub_dataset(spec: HubSpec):
    """The `datasets.Dataset` of `spec` (hub id, hub-layout directory, or `save_to_disk` directory).

    Any failure (offline, unknown id, unknown split or config) is one `DataError` line.
    """
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"{spec}: the `datasets` library is not installed (pip install datasets)") from e
    local = Path(spec.path)
    try:
        if local.is_dir() and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if spec.split not in ds:
                    raise DataError(f"{spec}: no split {spec.split!r} (splits: {', '.join(ds)})")
                ds = ds[spec.split]
        else:
            ds = datasets.load_dataset(spec.path, spec.config, split=spec.split)
    except DataError:
        raise
    except Exception as e:  # ConnectionError offline, FileNotFoundError, ValueError for a bad split, ...
        offline = " (offline? download it with internet first, or give a local path)" \
            if isinstance(e, (ConnectionError, OSError)) else ""
        raise DataError(f"{spec}: cannot load the dataset{offline}: {type(e).__name__}: {_one_line(e)}") from e
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"{spec}: expected one split, got {type(ds).__name__}")
    return ds


def _image_columns(ds) -> set[str]:
    import datasets

    cols = set()
    for name, feature in ds.features.items():
        inner = getattr(feature, "feature", None)
        if isinstance(feature, datasets.Image) or isinstance(inner, datasets.Image):
            cols.add(name)
    return cols


class _HubRows:
    """Row access to a hub dataset without decoding its images: rows come from the Arrow table as plain values."""

    def __init__(self, spec: HubSpec):
        self.spec = spec
        self.ds = open_hub_dataset(spec)
        self.arrow = self.ds.with_format("arrow")
        self.image_columns = _image_columns(self.ds)
        # A view of the image columns alone: reading one image does not read the row's long text columns.
        self.image_arrow = self.ds.select_columns(sorted(self.image_columns)).with_format("arrow")
        self.text_columns = [c for c in self.ds.column_names if c not in self.image_columns]
        local = Path(spec.path)
        self.base = local if local.is_dir() else None
        self.snapshot: Path | None = None
        """Local copy of the repository files `prefetch` fetched."""

    def __len__(self) -> int:
        return len(self.ds)

    def row(self, i: int) -> dict:
        table = self.arrow[i]
        return {c: table.column(c)[0].as_py() for c in self.ds.column_names}

    def image_reader(self, i: int) -> Callable[[str, int], Callable]:
        """For row i: (column, k) -> a function reading that image's bytes (k = -1: a single-image column)."""
        def source(column: str, k: int):
            if column not in self.image_columns:
                return None

            def read():
                value = self.image_arrow[i].column(column)[0].as_py()
                value = value if k < 0 else value[k]
                if value.get("bytes") is not None:
                    return value["bytes"]
                return self.resolve(value["path"])
            return read
        return source

    def image_paths(self, i: int) -> list[str]:
        """The repository-relative image paths row i names (none when its images are inline bytes)."""
        paths = []
        for column in COLUMNS["images"] + COLUMNS["image"]:
            if column not in self.ds.column_names:
                continue
            table = self.image_arrow if column in self.image_columns else self.arrow
            value = table[i].column(column)[0].as_py()
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, dict):
                    v = None if v.get("bytes") is not None else v.get("path")
                if isinstance(v, str) and v.strip() and not Path(v).is_absolute():
                    paths.append(v)
        return paths

    def prefetch(self, rows: list[int]) -> int:
        """Fetch the image files that `rows` name from the hub repository in one `snapshot_download` (instead of
        one request per image while checking them); returns how many. Nothing to do for a local directory."""
        if self.base is not None:
            return 0
        paths = sorted({p for i in rows for p in self.image_paths(i)})
        if not paths:
            return 0
        from huggingface_hub import snapshot_download

        log.info("%s: fetching the %d image files of %d rows in one download", self.spec, len(paths), len(rows))
        try:
            self.snapshot = Path(snapshot_download(repo_id=self.spec.path, repo_type="dataset",
                                                   allow_patterns=paths))
        except Exception as e:
            raise DataError(f"{self.spec}: cannot fetch the {len(paths)} image files of the rows in use: "
                            f"{type(e).__name__}: {_one_line(e)}") from e
        return len(paths)

    def resolve(self, path: str):
        """An image path string from the dataset: relative to a local directory, or a file of the hub repository."""
        if Path(path).is_absolute() or self.base is not None:
            return Path(path) if Path(path).is_absolute() else self.base / path
        if self.snapshot is not None and (self.snapshot / path).is_file():
            return self.snapshot / path
        repo, rel = self.spec.path, path

        def download():
            from huggingface_hub import hf_hub_download

            try:
                return Path(hf_hub_download(repo_id=repo, filename=rel, repo_type="dataset"))
            except Exception as e:
                raise DataError(f"{self.spec}: cannot fetch image {rel!r}: {type(e).__name__}: {_one_line(e)}") from e
        return download


@dataclass
class LoadReport:
    """What a load examined and what it could not use."""

    source: str
    rows_total: int
    rows_examined: int = 0
    rows_used: int = 0
    unusable: Counter = field(default_factory=Counter)
    """Unusable rows by reason (the message without its dataset and row)."""
    examples: list[str] = field(default_factory=list)
    """The first few full messages, for the report."""

    @property
    def n_unusable(self) -> int:
        return sum(self.unusable.values())

    def add(self, error: DataError) -> None:
        message = str(error)
        self.unusable[re.sub(r"^.*?: row \d+: ", "", message)[:120]] += 1
        if len(self.examples) < 3:
            self.examples.append(message)

    def summary(self) -> str:
        line = f"{self.source}: used {self.rows_used} of {self.rows_examined} rows examined ({self.rows_total} in all)"
        if self.n_unusable:
            line += f"; {self.n_unusable} unusable, e.g. {self.examples[0]}"
        return line


def _scan_hub(spec: HubSpec, n_needed: int, seed: int, max_bad_fraction: float) -> tuple[list[Problem], LoadReport]:
    """Usable problems of a hub dataset in seeded order, until `n_needed` (or the data) run out."""
    rows = _HubRows(spec)
    report = LoadReport(str(spec), len(rows))
    if len(rows) == 0:
        raise DataError(f"{spec}: the dataset has no rows")
    order = list(range(len(rows)))
    random.Random(f"data-split:{seed}").shuffle(order)
    # The rows the scan will read if few are bad: their image files in one download (later ones: one by one).
    rows.prefetch(order[:n_needed + math.ceil(max_bad_fraction * len(rows))])
    problems, first_row = [], {}
    for i in order:
        if len(problems) >= n_needed:
            break
        report.rows_examined += 1
        where = f"{spec}: row {i}"
        try:
            p = map_row(rows.row(i), where, rows.resolve, default_id=f"row{i}", hub=True,
                        image_source=rows.image_reader(i))
            if p.id in first_row:
                raise DataError(f"{where}: duplicate id {p.id!r} (first at row {first_row[p.id]})")
            p.check_images()
        except DataError as e:
            report.add(e)
            if report.n_unusable > max_bad_fraction * len(rows):  # no scan can stay under the limit now
                break
            continue
        first_row[p.id] = i
        p.meta = {k: v for k, v in p.meta.items() if k not in rows.image_columns}
        p.meta.update(dataset=str(spec), row=i)
        problems.append(p)
    report.rows_used = len(problems)
    if report.n_unusable > max_bad_fraction * report.rows_examined:
        raise DataError(f"{spec}: {report.n_unusable} of {report.rows_examined} rows examined cannot be used, over "
                        f"the {max_bad_fraction:.0%} limit; first: {report.examples[0]}")
    return problems, report


# --------------------------------------------------------------------------------------------- train + held-out eval


@dataclass
class DataSplit:
    """The training problems, the held-out evaluation slice, and the load report."""

    train: list[Problem]
    eval: list[Problem]
    report: LoadReport


def load_split(data: str, n_train: int, n_eval: int, seed: int = 0,
               max_bad_fraction: float = MAX_BAD_FRACTION) -> DataSplit:
    """Train and held-out eval problems from a local file or `hf:` dataset (see `load_train_and_eval`)."""
    if n_train < 1 or n_eval < 0:
        raise DataError(f"{data}: need n_train >= 1 and n_eval >= 0, got {n_train} and {n_eval}")
    if data.startswith(HF_PREFIX):
        problems, report = _scan_hub(HubSpec.parse(data), n_eval + n_train, seed, max_bad_fraction)
    else:
        problems = _map_local(Path(data))
        report = LoadReport(data, len(problems))
        random.Random(f"data-split:{seed}").shuffle(problems)
        problems = problems[:n_eval + n_train]
        for p in problems:
            p.check_images()
        report.rows_examined = report.rows_used = len(problems)
    if len(problems) <= n_eval:
        raise DataError(f"{data}: {len(problems)} usable problems, none left for training after the held-out "
                        f"slice of {n_eval} (lower eval_problems)")
    split = DataSplit(train=problems[n_eval:], eval=problems[:n_eval], report=report)
    # Unusable rows are worth a warning; a clean load is logged at info level.
    log.log(logging.WARNING if report.n_unusable else logging.INFO, "%s; %d train, %d held-out eval",
            report.summary(), len(split.train), len(split.eval))
    return split


def load_train_and_eval(data: str, n_train: int, n_eval: int, seed: int = 0,
                        max_bad_fraction: float = MAX_BAD_FRACTION) -> tuple[list[Problem], list[Problem]]:
    """(train, eval) problems from a local JSONL/parquet file or an `hf:` dataset.

    The rows are put in an order fixed by `seed`; the first `n_eval` usable ones are the held-out eval slice and the
    next `n_train` (or fewer, if the data has fewer) the training problems, so the two never overlap and the same
    seed gives the same split. Images are validated now and decoded when a step reads them. Raises `DataError`
    (one line) for unusable data: see the module docstring.
    """
    split = load_split(data, n_train, n_eval, seed, max_bad_fraction)
    return split.train, split.eval


# ------------------------------------------------------------------------------------------------- prompt length


CHARS_PER_TOKEN_CHECKED = 16
"""Only the first limit x this many characters of a question are tokenized to decide whether it is too long: a token
is rarely longer, so a 200,000-character row costs a bounded tokenization, never one of its whole text."""


def question_tokens(tokenizer, text: str, limit: int) -> int:
    """The question's token count if it is at most `limit`, else some count > `limit` (memory bounded)."""
    head = text[:limit * CHARS_PER_TOKEN_CHECKED + 1]
    n = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    if n > limit or len(head) == len(text):
        return n
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])  # > 16 chars a token: rare, and short enough


def limit_prompt_lengths(problems: list[Problem], tokenizer, limit: int, mode: str = "refuse",
                         where: str = "data") -> int:
    """Refuse (DataError naming the row) or, with mode='truncate', cut in place every question over `limit` tokens.

    Returns the number of questions cut. Runs before the model loads and before any rollout."""
    cut = 0
    for p in problems:
        n = question_tokens(tokenizer, p.question, limit)
        if n <= limit:
            continue
        if mode != "truncate":
            shown = f"at least {n}" if len(p.question) > limit * CHARS_PER_TOKEN_CHECKED else str(n)
            raise DataError(f"{where}: problem {p.id!r}: the question is {shown} tokens ({len(p.question)} "
                            f"characters), over max_prompt_tokens={limit}; shorten it, or set long_prompts=truncate")
        ids = tokenizer(p.question[:limit * CHARS_PER_TOKEN_CHECKED], add_special_tokens=False)["input_ids"][:limit]
        p.question = tokenizer.decode(ids)
        cut += 1
    return cut
