"""Verifiable reward for RLSD: extract the model's final answer and check it.

Responses are expected in the format ``<thought>...</thought><answer>...</answer>``.
The reward is 1.0 when the extracted answer matches the gold answer, else 0.0.
Format compliance is reported separately (``VerifyResult.format_ok``) and does
*not* gate the reward; a caller that wants a format bonus/penalty combines them.

Matching
--------
* Multiple-choice golds (a single letter A-H) are compared as letters.
* Plain integers/decimals on both sides are compared exactly with ``Decimal``
  (fast path, no math-verify: the RL loop scores thousands of samples per step).
* Everything else goes through ``math_verify.parse`` + ``math_verify.verify``.

Time bound
----------
math-verify's own timeout uses ``signal.alarm``, which raises off the main
thread (data-loader threads, notebook workers).  We therefore call it with its
timeouts disabled (``parsing_timeout=None``, ``timeout_seconds=None``) and
enforce our own wall-clock budget instead:

1. Cheap guards first: an answer longer than ``max_answer_chars`` or with
   bracket nesting deeper than ``max_nesting`` (or unbalanced braces) is scored
   wrong without ever being parsed.
2. math-verify runs in one persistent worker process
   (``ProcessPoolExecutor(max_workers=1)``, 'spawn' context, created lazily and
   reused).  Each item waits at most ``timeout_s`` via ``future.result``; on
   timeout the worker is killed (a hung sympy computation cannot be interrupted
   any other way), the item scores 0 with ``timed_out=True``, and a fresh worker
   is started in the background for the next call.
3. The worker runs under an address-space limit so that e.g. ``10^{10^{10}}``
   cannot exhaust the machine's memory before the budget runs out.

``Verifier(use_process=False)`` runs math-verify in the calling thread instead.
That mode is light (no process) but is NOT time-bounded; it exists for tests of
the matching logic and for trusted inputs.

Model text is never evaluated as code: the only parser that sees it is
math-verify's LaTeX/expression parser.

Note on 'spawn': like any multiprocessing code, a script that uses the
process-backed verifier must guard its entry point with
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import re
import threading
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Iterable, Literal, Sequence

logger = logging.getLogger(__name__)

Kind = Literal["auto", "mc", "math"]

# Guards applied before any parsing.  Real answers are short and shallow.
MAX_ANSWER_CHARS = 2_000
# Bare brace groups parse in time exponential in depth (depth 12: ~2 s);
# genuine answers rarely nest deeper than ~6.
MAX_NESTING = 16

DEFAULT_TIMEOUT_S = 3.0  # wall-clock budget per math-verify comparison
DEFAULT_STARTUP_TIMEOUT_S = 120.0  # spawning + importing sympy; not part of the budget
DEFAULT_WORKER_MEMORY_MB = 4096

_THOUGHT_OPEN, _THOUGHT_CLOSE = "<thought>", "</thought>"
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of scoring one response."""

    reward: float  # 1.0 if the extracted answer matches the gold answer, else 0.0
    extracted: str | None  # the answer that was compared (None: nothing found)
    format_ok: bool  # strict <thought>..</thought><answer>..</answer> layout
    timed_out: bool  # math-verify exceeded its budget (the reward is then 0.0)


# ---------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------

_ANSWER_TAG_RE = re.compile(r"</?answer>")
_BOXED_RE = re.compile(r"\\boxed\s*\{")
# Escaped braces (\{ \}) and escaped backslashes are LaTeX text, not grouping.
_BRACE_TOKEN_RE = re.compile(r"\\[{}\\]|[{}]")


def _last_tagged_answer(response: str) -> str | None:
    """Content of the last complete ``<answer>...</answer>`` pair, or None.

    Tags are tokenised in one linear pass (a non-greedy regex over the whole
    text would be quadratic on adversarial input such as many unclosed tags).
    A closing tag pairs with the opening tag immediately before it.
    """
    content = None
    open_end = None
    for match in _ANSWER_TAG_RE.finditer(response):
        if match.group() == _ANSWER_OPEN:
            open_end = match.end()
        elif open_end is not None:
            content = response[open_end : match.start()]
            open_end = None
    return content


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` in ``text``, or None.

    Braces are matched with a stack in one forward pass, so nested groups
    (``\\boxed{\\frac{1}{2}}``) work and the cost stays linear.  "Last" means
    the box that closes last: with sequential boxes that is the final one, and
    with nested boxes it is the outer one.  An unclosed (truncated) box is
    ignored.
    """
    starts = [m.end() - 1 for m in _BOXED_RE.finditer(text)]  # index of "{"
    if not starts:
        return None
    wanted = set(starts)
    best_open, best_close = -1, -1
    stack: list[int] = []
    for token in _BRACE_TOKEN_RE.finditer(text, starts[0]):
        if token.group() == "{":
            stack.append(token.start())
        elif token.group() == "}" and stack:
            opened = stack.pop()
            if opened in wanted:
                best_open, best_close = opened, token.start()
    if best_open < 0:
        return None
    return text[best_open + 1 : best_close]


def extract_answer(response: str) -> str | None:
    """The model's final answer, or None.

    Order of preference:
    1. the content of the LAST complete ``<answer>...</answer>``; if that
       content itself contains ``\\boxed{...}``, the box content is used;
    2. otherwise (no complete answer tag, or an empty one) the last
       ``\\boxed{...}`` anywhere in the response;
    3. otherwise None.

    Truncated responses: an ``<answer>`` without its closing tag is NOT
    extracted (the generation was cut off mid-answer, so its text is not a
    committed answer); only a complete ``\\boxed{...}`` can still be found.
    """
    if not isinstance(response, str) or not response:
        return None
    tagged = _last_tagged_answer(response)
    if tagged is not None:
        boxed = last_boxed(tagged)
        answer = boxed if boxed is not None and boxed.strip() else tagged
        if answer.strip():
            return answer.strip()
    boxed = last_boxed(response)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    return None


def format_ok(response: str) -> bool:
    """True iff ``response`` is exactly ``<thought>..</thought><answer>..</answer>``.

    Exactly one of each tag, thought before answer, non-empty answer, and
    nothing but whitespace outside the two blocks.  The thought may be empty.
    """
    if not isinstance(response, str):
        return False
    tags = (_THOUGHT_OPEN, _THOUGHT_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE)
    if any(response.count(tag) != 1 for tag in tags):
        return False
    t_open, t_close, a_open, a_close = (response.find(tag) for tag in tags)
    if not t_open < t_close < a_open < a_close:
        return False
    outside = (
        response[:t_open]
        + response[t_close + len(_THOUGHT_CLOSE) : a_open]
        + response[a_close + len(_ANSWER_CLOSE) :]
    )
    answer = response[a_open + len(_ANSWER_OPEN) : a_close]
    return not outside.strip() and bool(answer.strip())


# ---------------------------------------------------------------------------
# Cheap checks (no math-verify)
# ---------------------------------------------------------------------------

_OPENERS, _CLOSERS = "{([", "})]"


def within_limits(text: str, max_chars: int = MAX_ANSWER_CHARS, max_nesting: int = MAX_NESTING) -> bool:
    """True if ``text`` is short, shallowly nested and brace-balanced enough to parse.

    Parsers recurse on nesting, so depth is bounded as well as length.
    Unbalanced (unescaped) braces mean malformed LaTeX; they are rejected so
    that wrapping the text in ``\\boxed{...}`` stays well-formed.
    """
    if len(text) > max_chars:
        return False
    depth = max_depth = braces = 0
    for token in re.finditer(r"\\[{}\\]|[{}()\[\]]", text):
        char = token.group()
        if len(char) == 2:  # escaped brace: LaTeX text, not grouping
            continue
        if char in _OPENERS:
            depth += 1
            max_depth = max(max_depth, depth)
        else:
            depth = max(depth - 1, 0)  # mixed interval brackets like (1, 2]
        if char == "{":
            braces += 1
        elif char == "}":
            braces -= 1
            if braces < 0:
                return False
    return max_depth <= max_nesting and braces == 0


_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _strip_delimiters(text: str) -> str:
    """Remove surrounding whitespace, math delimiters and a trailing period."""
    text = text.strip()
    for left, right in _DELIMITERS:
        if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
            text = text[len(left) : len(text) - len(right)].strip()
            break
    if text.endswith("."):  # sentence-final period ("12." is 12 either way)
        text = text[:-1].rstrip()
    return text


_PLAIN_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def _plain_number(text: str) -> Decimal | None:
    """``Decimal`` value of a plain integer/decimal literal, else None."""
    if not _PLAIN_NUMBER_RE.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
        return None


# Multiple choice ------------------------------------------------------------

_MC_GOLD_RE = re.compile(r"[A-H]")
_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm|mbox)\s*\{([^{}]*)\}")
_MC_RE = re.compile(
    r"(?:(?:the\s+)?(?:final\s+)?(?:option|choice|answer)(?:\s+is)?\s*:?\s*)?"
    r"(?:\(\s*(?P<paren>[A-H])\s*\)|\[\s*(?P<bracket>[A-H])\s*\]|(?P<bare>[A-H])(?![A-Za-z0-9]))"
    r"(?P<rest>.*)",
    re.IGNORECASE | re.DOTALL,
)
# A second standalone option letter in the trailing text ("A. or B", "(A) (B)")
# means a hedge.  Upper case only, so option text like "3 a.m." is not hit.
_OTHER_CHOICE_RE = re.compile(r"(?<![A-Za-z\\])[A-H](?![A-Za-z])")


def parse_choice(text: str) -> str | None:
    """Upper-case option letter A-H named by ``text``, or None.

    Accepts "B", "b", "(B)", "[B]", "B.", "B)", "B:", "Option B", "Answer: B",
    "\\text{B}", "$B$" and a letter followed by its option text after a
    delimiter ("B. 12 cm", "(B) 12 cm").  Rejects hedges that name a second
    option ("A. or B.", "(A) (B)") and text that merely starts with a letter
    ("A + B", "Apple").
    """
    text = _strip_delimiters(text)
    for _ in range(3):  # unwrap nested \text{\textbf{B}} a few levels
        text = _TEXT_WRAPPER_RE.sub(lambda m: m.group(1), text).strip()
    text = _strip_delimiters(text)
    match = _MC_RE.fullmatch(text)
    if match is None:
        return None
    letter = match.group("paren") or match.group("bracket") or match.group("bare")
    rest = match.group("rest").strip()
    if rest:
        if match.group("bare"):
            # A bare letter needs a delimiter before any option text.
            if rest[0] not in ".):":
                return None
            rest = rest[1:].strip()
        if _OTHER_CHOICE_RE.search(rest):
            return None
    return letter.upper()


def _is_mc_gold(gold: str, kind: Kind) -> bool:
    """Whether ``gold`` is compared as a multiple-choice letter."""
    if kind == "mc":
        return True
    if kind == "math":
        return False
    # Only upper case: a lower-case "e" or "c" is more likely a constant/variable.
    return bool(_MC_GOLD_RE.fullmatch(gold.strip()))


def _quick_decision(pred: str | None, gold: str, kind: Kind) -> bool | None:
    """Decide a match without math-verify if possible; None means "needs math-verify"."""
    if kind not in ("auto", "mc", "math"):
        raise ValueError(f"kind must be 'auto', 'mc' or 'math', got {kind!r}")
    if pred is None or not within_limits(pred) or not within_limits(gold):
        return False
    if _is_mc_gold(gold, kind):
        gold_letter = parse_choice(gold)
        return gold_letter is not None and parse_choice(pred) == gold_letter
    pred, gold = _strip_delimiters(pred), _strip_delimiters(gold)
    if not pred or not gold:
        return False
    pred_num, gold_num = _plain_number(pred), _plain_number(gold)
    if pred_num is not None and gold_num is not None:
        return pred_num == gold_num
    if pred == gold:
        return True
    return None


# ---------------------------------------------------------------------------
# math-verify (runs in the worker process, or in-thread when use_process=False)
# ---------------------------------------------------------------------------


def _math_verify_match(pred: str, gold: str) -> bool:
    """math-verify comparison with its own (signal-based) timeouts disabled.

    Both sides are wrapped in ``\\boxed{}`` so bare numbers and LaTeX parse the
    same way.  Only the LaTeX extractor is enabled: the plain-expression one
    goes through sympy's ``parse_expr`` (which evaluates Python), and the
    boxed LaTeX path already handles plain numbers and ``1/2``.  Any error
    counts as a mismatch.
    """
    import math_verify  # imported lazily: the parent process may never need it

    config = [math_verify.LatexExtractionConfig()]
    try:
        gold_parsed = math_verify.parse(f"\\boxed{{{gold}}}", config, parsing_timeout=None)
        pred_parsed = math_verify.parse(f"\\boxed{{{pred}}}", config, parsing_timeout=None)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:  # includes RecursionError / MemoryError from hostile input
        return False


def _worker_init(memory_mb: int | None) -> None:
    """Worker start-up: cap memory, silence expected warnings, preload sympy."""
    if memory_mb:
        try:
            import resource

            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):  # non-POSIX or not permitted
            pass
    # We disable math-verify's timeouts on purpose; its warning about it is noise.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _math_verify_match("1", "1")  # import + warm parser caches before the first budget


def _worker_ready() -> bool:
    """No-op task used to wait for the worker to finish starting."""
    return True


# ---------------------------------------------------------------------------
# Verifier
# ---------------------------------------------------------------------------


class Verifier:
    """Reward function with a wall-clock bound on every math-verify call.

    Holds one lazily created worker process.  Thread-safe: calls from several
    threads are serialised (there is a single worker anyway).  Use as a context
    manager or call ``close()`` to stop the worker.
    """

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        use_process: bool = True,
        mp_context: str = "spawn",
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        worker_memory_mb: int | None = DEFAULT_WORKER_MEMORY_MB,
    ) -> None:
        self.timeout_s = timeout_s
        self.use_process = use_process
        self.mp_context = mp_context
        self.startup_timeout_s = startup_timeout_s
        self.worker_memory_mb = worker_memory_mb
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._ready: concurrent.futures.Future | None = None
        self._lock = threading.RLock()
        self._owner_pid = os.getpid()

    # -- public API ---------------------------------------------------------

    def answers_match(self, pred: str | None, gold: str, kind: Kind = "auto") -> bool:
        """True if ``pred`` matches ``gold`` (a timeout counts as no match)."""
        matched, _ = self._match_many([(pred, str(gold), kind)])[0]
        return matched

    def score(self, response: str, gold: str, kind: Kind = "auto") -> VerifyResult:
        """Score one response against its gold answer."""
        return self.score_batch([response], [gold], kind)[0]

    def score_batch(
        self, responses: Sequence[str], golds: Sequence[str], kind: Kind | Sequence[Kind] = "auto"
    ) -> list[VerifyResult]:
        """Score many responses; fast-path items never touch the worker."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
        kinds = [kind] * len(golds) if isinstance(kind, str) else list(kind)
        if len(kinds) != len(golds):
            raise ValueError(f"{len(kinds)} kinds but {len(golds)} golds")
        extracted = [extract_answer(r) for r in responses]
        outcomes = self._match_many(
            [(pred, str(gold), k) for pred, gold, k in zip(extracted, golds, kinds)]
        )
        return [
            VerifyResult(
                reward=1.0 if matched else 0.0,
                extracted=pred,
                format_ok=format_ok(response),
                timed_out=timed_out,
            )
            for response, pred, (matched, timed_out) in zip(responses, extracted, outcomes)
        ]

    def close(self) -> None:
        """Stop the worker process (a later call starts a new one)."""
        with self._lock:
            self._kill_pool()

    def __enter__(self) -> "Verifier":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- matching -----------------------------------------------------------

    def _match_many(self, items: Iterable[tuple[str | None, str, Kind]]) -> list[tuple[bool, bool]]:
        """(matched, timed_out) per item: quick decisions first, then math-verify."""
        results: list[tuple[bool, bool]] = []
        slow: list[tuple[int, str, str]] = []
        for index, (pred, gold, kind) in enumerate(items):
            decision = _quick_decision(pred, gold, kind)
            results.append((bool(decision), False))
            if decision is None:
                slow.append((index, _strip_delimiters(pred), _strip_delimiters(gold)))
        if slow:
            slow_results = self._verify_slow([(pred, gold) for _, pred, gold in slow])
            for (index, _, _), outcome in zip(slow, slow_results):
                results[index] = outcome
        return results

    def _verify_slow(self, pairs: list[tuple[str, str]]) -> list[tuple[bool, bool]]:
        """Run math-verify on (pred, gold) pairs, each within ``timeout_s``."""
        if not self.use_process:
            return [(_math_verify_match(pred, gold), False) for pred, gold in pairs]
        with self._lock:
            results: list[tuple[bool, bool]] = [(False, False)] * len(pairs)
            pending = list(range(len(pairs)))
            while pending:
                pending = self._run_on_worker(pairs, pending, results)
            return results

    def _run_on_worker(
        self, pairs: list[tuple[str, str]], indices: list[int], results: list[tuple[bool, bool]]
    ) -> list[int]:
        """Submit ``indices`` to the worker and collect them in order.

        The single worker runs items one after another, and we start waiting
        for item k only once item k-1 is done, so each item gets at least
        ``timeout_s`` of worker time and the caller waits at most ``timeout_s``
        per item.  On a timeout or crash the worker is replaced and the
        not-yet-collected indices are returned for resubmission.
        """
        pool = self._ensure_pool()
        futures = [(i, pool.submit(_math_verify_match, *pairs[i])) for i in indices]
        for position, (index, future) in enumerate(futures):
            try:
                results[index] = (bool(future.result(timeout=self.timeout_s)), False)
                continue
            except concurrent.futures.TimeoutError:
                results[index] = (False, True)
            except BrokenProcessPool:  # worker died (e.g. hit its memory limit)
                logger.warning("verifier worker crashed; scoring the item 0 and restarting it")
                results[index] = (False, False)
            except BaseException:  # e.g. KeyboardInterrupt: do not leave a busy worker behind
                self._kill_pool()
                raise
            self._restart_pool()
            return [i for i, _ in futures[position + 1 :]]
        return []

    # -- worker lifecycle ---------------------------------------------------

    def _start_pool(self) -> None:
        """Start a worker in the background (does not wait for it)."""
        context = multiprocessing.get_context(self.mp_context)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=context,
            initializer=_worker_init,
            initargs=(self.worker_memory_mb,),
        )
        self._ready = self._pool.submit(_worker_ready)

    def _ensure_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        """The worker pool, started if needed and waited for until it is ready.

        Start-up (spawning Python, importing sympy) is waited for separately so
        it never eats into a comparison's budget.
        """
        if self._owner_pid != os.getpid():
            # We were forked (e.g. into a data-loader worker): the inherited pool
            # belongs to the parent, so forget it and start our own.
            self._pool, self._ready, self._owner_pid = None, None, os.getpid()
        if self._pool is None:
            self._start_pool()
        if self._ready is not None:
            try:
                self._ready.result(timeout=self.startup_timeout_s)
            except Exception as error:
                self._kill_pool()
                raise RuntimeError("verifier worker failed to start") from error
            except BaseException:  # KeyboardInterrupt: clean up, keep the interrupt
                self._kill_pool()
                raise
            self._ready = None
        assert self._pool is not None
        return self._pool

    def _restart_pool(self) -> None:
        """Kill the current worker and start a replacement in the background."""
        self._kill_pool()
        self._start_pool()

    def _kill_pool(self) -> None:
        """Kill the worker outright: a hung sympy call cannot be cancelled."""
        pool, self._pool, self._ready = self._pool, None, None
        if pool is None:
            return
        if hasattr(pool, "kill_workers"):  # Python >= 3.14
            pool.kill_workers()
            processes = []
        else:
            # No public API before 3.14; _processes maps pid -> Process.
            processes = list((getattr(pool, "_processes", None) or {}).values())
            for process in processes:
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)


# ---------------------------------------------------------------------------
# Module-level default instance
# ---------------------------------------------------------------------------

#: Shared verifier used by the module-level functions (its worker starts on first use).
default_verifier = Verifier()


def score(response: str, gold: str, kind: Kind = "auto") -> VerifyResult:
    """Score one response with the default (time-bounded) verifier."""
    return default_verifier.score(response, gold, kind)


def score_batch(
    responses: Sequence[str], golds: Sequence[str], kind: Kind | Sequence[Kind] = "auto"
) -> list[VerifyResult]:
    """Score many responses with the default (time-bounded) verifier."""
    return default_verifier.score_batch(responses, golds, kind)


def answers_match(pred: str | None, gold: str, kind: Kind = "auto") -> bool:
    """True if ``pred`` matches ``gold``, using the default (time-bounded) verifier."""
    return default_verifier.answers_match(pred, gold, kind)
