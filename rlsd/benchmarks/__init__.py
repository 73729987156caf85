"""The five evaluation benchmarks of the paper's Table 2, loaded from LOCAL files and scored by their official
protocols (paraphrased; see each module's docstring for what is and is not faithful).

=============  ==================  ===========================  =======================================
name           default split       local files                  headline (``score_responses``)
=============  ==================  ===========================  =======================================
``mmmu``       validation (900)    HF parquet, or               overall accuracy (micro over subjects)
                                   ``answer_dict_val.json``
``mathvista``  testmini (1000)     ``testmini.json`` (+query)   accuracy (exact match after normalising)
``mathvision`` test (3040)         ``test.jsonl``               accuracy
``zerobench``  zerobench_sub-      HF parquet or ``<split>``    sub-question accuracy (pass@1)
               questions (334)     ``.jsonl``
``wemath``     testmini (1740)     ``testmini.json``            Score (Strict) (documented choice)
=============  ==================  ===========================  =======================================

API::

    items = load_benchmark("mathvista", "/data/mathvista")          # list[BenchmarkItem]
    messages = build_messages(items[0])                            # chat messages for the engines
    result = score_responses("mathvista", items, responses)       # per-item correctness + headline
    result["headline"], result["correct"], result["metrics"]
    responses = generate_responses(model, processor, items)        # one response per item (HF generate)
    result = run_benchmark("testbed", model, processor, n=300)      # load + generate + score in one call

A sixth name, ``testbed``, wraps the project's synthetic CPU problems (``rlsd.testbed``; no files, ``root`` may be
None; scored by the training reward ``rlsd.verifier``).  It is not one of the paper's benchmarks: it lets the
same pipeline run, and be checked against ``rlsd.evaluate``, without a GPU or benchmark images.

Generation (``generate_responses``, in ``generate.py``) uses the project's HF engine.  The paper's published
Table 2 numbers are in ``paper.py`` (``PAPER_TABLE2``), with writers for side-by-side tables.

From the hub: ``load_hub_items(name)`` (``hub.py``) loads the five benchmarks with the ``datasets`` library (or a
``save_to_disk`` copy, ``data_dir=``) into the same items; ``python -m rlsd benchmark`` (``run.py``,
``run_benchmarks``) generates resumably and writes one Table-2 row with 95% intervals.

``load_benchmark`` downloads nothing: every local loader reads a local directory.  When the image files are absent (annotation-only
checkouts of annotation files without their images) the loaders still work, set ``item.images_missing`` and log one
warning, so that responses produced elsewhere can be scored; ``generate_responses`` refuses such items by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from . import mathvision, mathvista, mmmu, testbed, wemath, zerobench
from .common import BenchmarkFormatError, BenchmarkItem
from .generate import ImagesMissingError, check_generatable, generate_responses, run_benchmark
from .hub import HUB_SOURCES, BenchmarkDataError, load_hub_items
from .paper import PAPER_BENCHMARKS, PAPER_TABLE2, paper_table2_rows, table2_rows, write_table

BENCHMARKS = {module.NAME: module for module in (mmmu, mathvista, mathvision, zerobench, wemath, testbed)}
PAPER_NAMES = ("mmmu", "mathvista", "mathvision", "zerobench", "wemath")
"""The five benchmarks of the paper's Table 2, in its column order (``BENCHMARKS`` also holds ``testbed``)."""

__all__ = ["BENCHMARKS", "HUB_SOURCES", "BenchmarkDataError", "BenchmarkFormatError", "BenchmarkItem", "ImagesMissingError", "PAPER_BENCHMARKS",
           "PAPER_NAMES", "PAPER_TABLE2", "answer_as_response", "build_messages", "check_generatable",
           "generate_responses", "load_benchmark", "load_hub_items", "paper_table2_rows", "run_benchmark", "score_responses",
           "table2_rows", "write_table"]


def _module(name: str):
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}") from None


def load_benchmark(name: str, root: str | Path | None = None, split: str | None = None, *,
                   image_root: str | Path | None = None, image_cache: str | Path | None = None,
                   **options) -> list[BenchmarkItem]:
    """Load every item of ``name``/``split`` from the local directory ``root``.

    ``image_root`` (default ``root``) is where relative image paths are resolved; ``image_cache`` is where images
    embedded in parquet files are written (default: a folder under the system temp dir).  ``options`` go to the
    benchmark's loader (``mathvision``: ``prompt_variant="cot"|"direct"``; ``testbed``: ``n``, the number of
    problems, a prefix of the split).  ``testbed`` is generated, so its ``root`` may be None (if given, it is
    where the images are written).  Raises ``FileNotFoundError`` when the expected file is absent and
    ``BenchmarkFormatError`` (naming file, row and field) on malformed records.
    """
    module = _module(name)
    if not getattr(module, "NEEDS_ROOT", True):
        return module.load(Path(root) if root else None, split, image_cache=Path(image_cache) if image_cache else None,
                           **options)
    if root is None:
        raise ValueError(f"{name}: load_benchmark needs the benchmark's local directory (root)")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: benchmark directory {root} does not exist")
    return module.load(root, split, image_root=Path(image_root) if image_root else None,
                              image_cache=Path(image_cache) if image_cache else None, **options)


def score_responses(name: str, items: Sequence[BenchmarkItem], responses: Sequence[str] | Mapping[str, str],
                    **options) -> dict:
    """Score one response per item with the benchmark's official protocol.

    ``responses`` is a sequence aligned with ``items`` or a mapping item id -> response (every id must be
    present).  ``options`` go to the benchmark's scorer: ``mmmu``: ``seed`` (42); ``mathvista``:
    ``quick_extract`` (True), ``fallback`` ("rules" | "none"); ``mathvision``: ``verifier`` (an
    ``rlsd.verifier.Verifier`` for symbolic comparisons; default: the shared time-bounded one); ``zerobench``:
    ``match`` ("exact" | "substring"); ``testbed``: ``verifier`` (as for mathvision).

    Returns ``{"benchmark", "n", "correct": [bool per item], "per_item": [{"id", "correct", "pred", ...}],
    "metrics": {...}, "headline_key", "headline"}``; all rates are fractions in [0, 1].
    """
    module = _module(name)
    items = list(items)
    if any(item.benchmark != name for item in items):
        raise ValueError(f"score_responses({name!r}): some items belong to another benchmark")
    if isinstance(responses, Mapping):
        missing = [item.id for item in items if item.id not in responses]
        if missing:
            raise ValueError(f"{name}: no response for {len(missing)} item(s), e.g. {missing[:5]}")
        responses = [responses[item.id] for item in items]
    responses = list(responses)
    if len(responses) != len(items):
        raise ValueError(f"{name}: {len(responses)} responses for {len(items)} items")
    per_item, metrics = module.score(items, responses, **options)
    headline_key = module.HEADLINE
    return {
        "benchmark": name,
        "n": len(items),
        "correct": [entry["correct"] for entry in per_item],
        "per_item": per_item,
        "metrics": metrics,
        "headline_key": headline_key,
        "headline": metrics[headline_key],
    }


def answer_as_response(name: str, item: BenchmarkItem) -> str:
    """A response that states the gold answer in the form the benchmark's protocol expects (scores 1)."""
    return _module(name).answer_as_response(item)


def build_messages(item: BenchmarkItem) -> list[dict]:
    """Chat messages for the project's engines: one user turn, image parts first, then the protocol prompt.

    Image parts are ``{"type": "image"}`` placeholders in ``item.images`` order (the caller loads the files);
    ``<image n>`` tags inside the text are left as the protocols leave them.
    """
    if not item.prompt:
        raise ValueError(f"{item.benchmark}/{item.id}: no question text in the local files (answer-only mode); "
                         "load the full release to generate responses")
    content = [{"type": "image"} for _ in item.images]
    content.append({"type": "text", "text": item.prompt})
    return [{"role": "user", "content": content}]
