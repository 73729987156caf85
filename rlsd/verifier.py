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
enforce our own budgets instead:

1. Cheap guards first: an answer longer than ``max_answer_chars`` or with
   bracket nesting deeper than ``max_nesting`` (or unbalanced braces) is scored
   wrong without ever being parsed.  Answers equal after a meaning-preserving
   pre-normalisation (whitespace, ``\\dfrac``/``\\tfrac``, ``\\left``/``\\right``,
   spacing commands) match without math-verify, however slow their parse.
2. math-verify runs in one persistent worker process
   (``ProcessPoolExecutor(max_workers=1)``, 'spawn' context, created lazily and
   reused).  The budgets are **CPU time of the worker** (read from
   ``/proc/<pid>/stat``), not wall time: a comparison that needs 1 s of CPU
   gets it whether the machine is idle or loaded, so a slow-but-correct answer
   does not flip to 0 under load.  A wall-clock cap (``wall_factor`` x the CPU
   budget) still stops a worker that is starved or blocked.  Where ``/proc`` is
   unavailable the budgets fall back to wall time.
3. Budgets: ``timeout_s`` per comparison and ``batch_timeout_s`` per
   ``score_batch`` call (all its comparisons together; its wall cap includes
   restarting killed workers).  Comparisons run in two passes: first each gets
   ``first_pass_s``, then those that ran out get the full ``timeout_s`` while
   the batch budget lasts.  So a few degenerate answers cannot starve the
   genuine ones behind them, and a batch of 64 degenerate answers costs at most
   the batch budget (measured on 2 loaded cores with the defaults: 64 distinct
   non-terminating answers 27 s, the wall cap, where a per-item bound alone
   took minutes; 8 of them among 56 genuine LaTeX answers: 23 s, all 56 scored
   right; a genuine comparison takes 3-20 ms).  On a timeout the worker is killed (a hung sympy
   computation cannot be interrupted any other way) and the item scores 0 with
   ``timed_out=True``; items left when the batch budget is spent score 0 with
   ``timed_out=True`` without being run.  After the first kill a warm spare
   worker is kept, so a restart costs no start-up wait.
4. Identical (answer, gold) pairs are compared once per batch, and finished
   comparisons are remembered (``cache_size`` entries), so a degenerate answer
   sampled G times, or again at the next step, costs its budget once.
5. The worker runs under an address-space limit so that e.g. ``10^{10^{10}}``
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
import time
from collections import OrderedDict
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

DEFAULT_TIMEOUT_S = 3.0  # worker CPU seconds per math-verify comparison
DEFAULT_BATCH_TIMEOUT_S = 10.0  # worker CPU seconds for all comparisons of one score_batch call
DEFAULT_FIRST_PASS_S = 0.5  # CPU seconds each comparison gets before any gets the full timeout_s
DEFAULT_WALL_FACTOR = 3.0  # wall-clock cap = this x the CPU budget (a starved or blocked worker)
DEFAULT_CACHE_SIZE = 4096  # finished math-verify comparisons remembered across calls
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
    timed_out: bool  # math-verify ran out of its budget, or the batch's ran out first (the reward is then 0.0)


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


# One token per control word, control symbol, whitespace run or character: linear, no backtracking.
_LATEX_TOKEN_RE = re.compile(r"\\[A-Za-z]+|\\.|\s+|.", re.DOTALL)
_SPACING_TOKENS = {"\\,", "\\!", "\\;", "\\:", "\\ ", "~", "\\quad", "\\qquad"}
_FRAC_ALIASES = {"\\dfrac": "\\frac", "\\tfrac": "\\frac"}
_SIZED_DELIMITERS = {"(", ")", "[", "]", "|", "\\{", "\\}", "\\|"}
# Commands whose argument is text, where spaces are content: such answers are left as they are.
_TEXT_COMMANDS = {"\\text", "\\textrm", "\\textbf", "\\textit", "\\mbox", "\\operatorname", "\\mathrm"}


def canonical_latex(text: str) -> str:
    """``text`` with meaning-preserving formatting removed, for a string comparison before math-verify.

    Drops whitespace and spacing commands (``\\,`` ``\\!`` ``~`` ``\\quad`` ...), maps ``\\dfrac``/``\\tfrac`` to
    ``\\frac`` and drops ``\\left``/``\\right`` before a delimiter.  One space is kept where it ends a control
    word before a letter (``\\pi r`` is not ``\\pir``).  Text that contains a text-mode command is returned
    unchanged (spaces are content there).  Linear in ``len(text)``.
    """
    tokens = _LATEX_TOKEN_RE.findall(text)
    if any(token in _TEXT_COMMANDS for token in tokens):
        return text
    out: list[str] = []
    for index, token in enumerate(tokens):
        if token.isspace() or token in _SPACING_TOKENS:
            following = tokens[index + 1] if index + 1 < len(tokens) else ""
            if out and out[-1][:1] == "\\" and out[-1][1:].isalpha() and following[:1].isalpha():
                out.append(" ")
            continue
        if token in ("\\left", "\\right"):
            following = tokens[index + 1] if index + 1 < len(tokens) else ""
            if following in _SIZED_DELIMITERS:
                continue
        out.append(_FRAC_ALIASES.get(token, token))
    return "".join(out)


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
    if pred == gold or canonical_latex(pred) == canonical_latex(gold):
        return True  # equal up to formatting: no parse needed, however slow the parse would be
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


class _Budget:
    """What is left of one ``score_batch`` call's budget: worker CPU seconds and a wall-clock deadline."""

    def __init__(self, cpu_s: float, wall_s: float) -> None:
        self.cpu_left = cpu_s
        self.deadline = time.monotonic() + wall_s

    def wall_left(self) -> float:
        return self.deadline - time.monotonic()

    def spent(self) -> bool:
        return self.cpu_left <= 0 or self.wall_left() <= 0


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds used so far by process ``pid`` (Linux ``/proc``), or None if unreadable."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        # Fields after "(comm)": state is field 3, utime field 14, stime field 15.
        fields = stat[stat.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


try:
    _CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
    _CLOCK_TICKS = 100


def _worker_pid(pool: concurrent.futures.ProcessPoolExecutor) -> int | None:
    """Pid of the pool's single worker (no public API; None if it cannot be found)."""
    processes = getattr(pool, "_processes", None) or {}
    return next(iter(processes), None)


# Outcome of waiting for one comparison.
_DONE, _CRASHED, _ITEM_TIMEOUT, _BUDGET_SPENT = "done", "crashed", "item_timeout", "budget_spent"


class Verifier:
    """Reward function with CPU-time budgets on math-verify, per comparison and per batch.

    Holds one lazily created worker process (two once a worker has had to be killed: the spare makes a
    restart instant).  Thread-safe: calls from several threads are serialised (there is a single worker
    anyway).  Use as a context manager or call ``close()`` to stop the workers.

    Parameters (all budgets in worker CPU seconds, see the module docstring):
      timeout_s: the most one comparison may use before it scores 0 with ``timed_out=True``.
      batch_timeout_s: the most all comparisons of one ``score_batch`` call may use together; None: no
        batch budget.
      first_pass_s: the budget of the first pass (None or >= timeout_s: a single pass).
      wall_factor: wall-clock cap as a multiple of a CPU budget (per comparison and per batch).
      use_process: False runs math-verify in the calling thread, NOT time-bounded (tests, trusted input).
      mp_context: multiprocessing start method of the worker.
      startup_timeout_s: the most the first worker start-up (import sympy) may take; not part of a budget.
      worker_memory_mb: address-space limit of the worker (None: none).
      cache_size: finished comparisons remembered across calls (0: none).
    """

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        batch_timeout_s: float | None = DEFAULT_BATCH_TIMEOUT_S,
        first_pass_s: float | None = DEFAULT_FIRST_PASS_S,
        wall_factor: float = DEFAULT_WALL_FACTOR,
        use_process: bool = True,
        mp_context: str = "spawn",
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        worker_memory_mb: int | None = DEFAULT_WORKER_MEMORY_MB,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        for name, value in (("timeout_s", timeout_s), ("batch_timeout_s", batch_timeout_s),
                            ("first_pass_s", first_pass_s), ("wall_factor", wall_factor)):
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"Verifier: {name} must be a positive finite number, got {value!r}")
        if wall_factor < 1:
            raise ValueError(f"Verifier: wall_factor must be >= 1 (a wall cap below the CPU budget), got {wall_factor!r}")
        self.timeout_s = timeout_s
        self.batch_timeout_s = batch_timeout_s
        self.first_pass_s = first_pass_s
        self.wall_factor = wall_factor
        self.use_process = use_process
        self.mp_context = mp_context
        self.startup_timeout_s = startup_timeout_s
        self.worker_memory_mb = worker_memory_mb
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], tuple[bool, bool]] = OrderedDict()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._ready: concurrent.futures.Future | None = None
        self._spare: tuple[concurrent.futures.ProcessPoolExecutor, concurrent.futures.Future] | None = None
        self._keep_spare = False
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
        """Score many responses; fast-path items never touch the worker, the rest share one batch budget."""
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
        """Stop the worker processes (a later call starts a new one)."""
        with self._lock:
            self._kill_pool()
            self._kill_spare()
            self._keep_spare = False

    def __enter__(self) -> "Verifier":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- matching -----------------------------------------------------------

    def _match_many(self, items: Iterable[tuple[str | None, str, Kind]]) -> list[tuple[bool, bool]]:
        """(matched, timed_out) per item: quick decisions first, then math-verify."""
        results: list[tuple[bool, bool]] = []
        slow: list[tuple[int, tuple[str, str]]] = []
        for index, (pred, gold, kind) in enumerate(items):
            decision = _quick_decision(pred, gold, kind)
            results.append((bool(decision), False))
            if decision is None:
                slow.append((index, (_strip_delimiters(pred), _strip_delimiters(gold))))
        if slow:
            outcomes = self._verify_slow([pair for _, pair in slow])
            for (index, pair) in slow:
                results[index] = outcomes[pair]
        return results

    def _verify_slow(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[bool, bool]]:
        """(matched, timed_out) for each distinct (pred, gold) pair: cache, then math-verify."""
        with self._lock:
            outcomes: dict[tuple[str, str], tuple[bool, bool]] = {}
            todo = []
            for pair in dict.fromkeys(pairs):  # each distinct pair once, in first-seen order
                if pair in self._cache:
                    self._cache.move_to_end(pair)
                    outcomes[pair] = self._cache[pair]
                else:
                    todo.append(pair)
            if not todo:
                return outcomes
            if self.use_process:
                finished = self._verify_bounded(todo)
            else:
                finished = {pair: (_math_verify_match(*pair), False) for pair in todo}
            for pair in todo:
                if pair in finished:
                    outcomes[pair] = finished[pair]
                    self._remember(pair, finished[pair])
                else:  # never run: the batch budget was spent first (not remembered)
                    outcomes[pair] = (False, True)
            return outcomes

    def _remember(self, pair: tuple[str, str], outcome: tuple[bool, bool]) -> None:
        if self.cache_size <= 0:
            return
        self._cache[pair] = outcome
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _verify_bounded(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[bool, bool]]:
        """math-verify in the worker, in two passes under one batch budget; pairs left out were never decided."""
        self._ensure_pool()  # the first start-up is not part of the batch budget
        batch_cpu = self.batch_timeout_s if self.batch_timeout_s is not None else float("inf")
        budget = _Budget(batch_cpu, self.wall_factor * batch_cpu)
        finished: dict[tuple[str, str], tuple[bool, bool]] = {}
        first = self.first_pass_s if self.first_pass_s is not None else self.timeout_s
        limits = [first, self.timeout_s] if first < self.timeout_s else [self.timeout_s]
        pending = pairs
        for limit in limits:
            pending = self._run_pass(pending, limit, budget, finished)
            if limit >= self.timeout_s:  # these ran out of the full per-item budget: a final verdict
                finished.update((pair, (False, True)) for pair in pending)
                pending = []
            if not pending or budget.spent():
                break
        undecided = len(pairs) - len(finished)
        if undecided:
            logger.warning("verifier: batch budget (%.1f CPU s) spent; %d comparison(s) scored 0 without a "
                           "full run", batch_cpu, undecided)
        return finished

    def _run_pass(self, pairs: list[tuple[str, str]], limit: float, budget: _Budget,
                  finished: dict[tuple[str, str], tuple[bool, bool]]) -> list[tuple[str, str]]:
        """Run ``pairs`` with ``limit`` CPU seconds each; returns those that ran out of ``limit``.

        The single worker runs items one after another, and we start the clock for item k only once item
        k-1 is done, so each item gets at least its budget of worker time.  On a timeout or crash the
        worker is replaced and the not-yet-collected pairs are resubmitted.
        """
        out_of_time: list[tuple[str, str]] = []
        pending = list(pairs)
        while pending and not budget.spent():
            pool = self._ensure_pool(wait_s=max(budget.wall_left(), 0.0))
            if pool is None:  # the replacement did not start within the batch's wall budget
                budget.cpu_left = 0.0
                break
            pid = _worker_pid(pool)
            futures = [(pair, pool.submit(_math_verify_match, *pair)) for pair in pending]
            pending = []
            for position, (pair, future) in enumerate(futures):
                status, value = self._wait(future, pid, limit, budget)
                if status == _DONE:
                    finished[pair] = (value, False)
                    continue
                if status == _CRASHED:
                    logger.warning("verifier worker crashed; scoring the item 0 and restarting it")
                    finished[pair] = (False, False)
                elif status == _ITEM_TIMEOUT:
                    out_of_time.append(pair)
                self._restart_pool()
                if status == _BUDGET_SPENT:
                    return out_of_time
                pending = [p for p, _ in futures[position + 1 :]]
                break
        return out_of_time

    def _wait(self, future: concurrent.futures.Future, pid: int | None, limit: float,
              budget: _Budget) -> tuple[str, bool]:
        """Wait for one comparison within ``limit`` CPU seconds of the worker and the batch budget.

        CPU time is read from ``/proc``; without it, wall time stands in for it.  Waiting is in slices no
        longer than the CPU still allowed (a single-threaded worker cannot use CPU faster than wall time),
        so an idle machine adds no polling overhead.  Charges the CPU used to ``budget``.
        """
        start_wall = time.monotonic()
        start_cpu = _cpu_seconds(pid)
        used = 0.0
        try:
            while True:
                now = time.monotonic()
                cpu_now = _cpu_seconds(pid) if start_cpu is not None else None
                used = (cpu_now - start_cpu) if cpu_now is not None else now - start_wall
                item_left = min(limit - used, self.wall_factor * limit - (now - start_wall))
                batch_left = min(budget.cpu_left - used, budget.deadline - now)
                if item_left <= 0 and item_left <= batch_left:
                    return _ITEM_TIMEOUT, False
                if batch_left <= 0:
                    return _BUDGET_SPENT, False
                try:
                    return _DONE, bool(future.result(timeout=max(min(item_left, batch_left), 0.01)))
                except concurrent.futures.TimeoutError:
                    continue
                except BrokenProcessPool:  # worker died (e.g. hit its memory limit)
                    return _CRASHED, False
                except BaseException:  # e.g. KeyboardInterrupt: do not leave a busy worker behind
                    self._kill_pool()
                    raise
        finally:
            budget.cpu_left -= max(used, 0.0)

    # -- worker lifecycle ---------------------------------------------------

    def _new_pool(self) -> tuple[concurrent.futures.ProcessPoolExecutor, concurrent.futures.Future]:
        """Start a worker in the background; returns it with its readiness future."""
        context = multiprocessing.get_context(self.mp_context)
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=context,
            initializer=_worker_init,
            initargs=(self.worker_memory_mb,),
        )
        return pool, pool.submit(_worker_ready)

    def _start_pool(self) -> None:
        """Make a worker current: the warm spare if there is one, else a new one (does not wait)."""
        if self._spare is not None:
            (self._pool, self._ready), self._spare = self._spare, None
        else:
            self._pool, self._ready = self._new_pool()
        if self._keep_spare:
            self._spare = self._new_pool()

    def _ensure_pool(self, wait_s: float | None = None) -> concurrent.futures.ProcessPoolExecutor | None:
        """The worker pool, started if needed and waited for until it is ready.

        Start-up (spawning Python, importing sympy) is waited for separately so it never eats into a
        comparison's budget.  ``wait_s`` bounds that wait (default ``startup_timeout_s``); if the worker
        is not ready by then, returns None and leaves it starting.
        """
        if self._owner_pid != os.getpid():
            # We were forked (e.g. into a data-loader worker): the inherited pools belong to the parent,
            # so forget them and start our own.
            self._pool, self._ready, self._spare, self._owner_pid = None, None, None, os.getpid()
        if self._pool is None:
            self._start_pool()
        if self._ready is not None:
            limit = self.startup_timeout_s if wait_s is None else min(wait_s, self.startup_timeout_s)
            try:
                self._ready.result(timeout=limit)
            except concurrent.futures.TimeoutError:
                if wait_s is not None and wait_s < self.startup_timeout_s:
                    return None
                self._kill_pool()
                raise RuntimeError(f"verifier worker did not start within {limit:.0f} s") from None
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
        """Kill the current worker and switch to a replacement; from now on keep a warm spare."""
        self._kill_pool()
        self._keep_spare = True
        self._start_pool()

    def _kill_pool(self) -> None:
        """Kill the current worker outright: a hung sympy call cannot be cancelled."""
        pool, self._pool, self._ready = self._pool, None, None
        _kill(pool)

    def _kill_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            _kill(spare[0])


def _kill(pool: concurrent.futures.ProcessPoolExecutor | None) -> None:
    """Kill a pool's worker process and shut the pool down without waiting for its tasks."""
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
