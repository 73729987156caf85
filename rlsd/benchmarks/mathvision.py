"""MATH-Vision (test 3040 / testmini 304): loader, prompt, extraction and scoring after mathllm/MATH-V.

Local format: ``test.jsonl`` / ``testmini.jsonl`` from the GitHub repo (``id, question, options, answer,
solution, level, subject, image``); images at ``<image_root>/images/<id>.jpg``.  One gold quirk is repaired at
load time: a JSON ``\\f`` escape turned ``\\frac`` into form feed + "rac" in one record; the form feed is put back
as ``\\f`` (``meta["answer_repaired"]``).

Protocol (paraphrased from ``evaluation/evaluate.py`` and ``evaluation/utils.py``):

* prompt: the repo has no canonical builder.  ``variant="cot"`` (default; ``models/GPT4V.py``) prefixes the
  boxed-answer instruction; ``variant="direct"`` appends "Answer the question using a single word or phrase.".
  Options ``(A) o1 ... (E) o5`` follow the question (also when they are literally A-E; some official scripts
  drop them then).  ``<image1>`` placeholders stay in the text; the one image file is attached.
* extraction (``extract``): trailing `` X.`` / `` (X).`` or leading ``X\\n`` letters; a number after the last
  "is "; the "the answer is"-style phrases when there is no box; the last of several boxes.  Then
  ``find_math_answer`` cleaning (last box, text after the last ``=``/``\\approx``, spaces/``\\text``/
  ``\\left``/``^\\circ``/``$``/``\\%``/some units removed, ``\\frac``/``\\sqrt`` repaired, ``0.5`` -> ``\\frac{1}{2}``,
  ``a/b`` -> ``\\frac{a}{b}``, ``(a)`` -> ``a``, trailing "." and leading ":" stripped).  A bare ``%`` or ``°`` is
  kept, as official.
* ``is_equal(gold, pred)``: lower-case; empty -> False; exact -> True; tuples element-wise; otherwise the
  official code evaluates both sides with ``eval(str(latex2sympy(x)))`` and compares them rounded to 2
  decimals.  **Here ``latex2sympy`` is replaced** by (1) the same cleaning applied to the gold as well, except
  the split at ``=`` (28 free-form golds carry ``$...$`` or ``\\boxed{}`` wrappers), a gold's ``\\%`` meaning
  /100 as in latex2sympy; (2) a small exact evaluator for numeric LaTeX (numbers, + - * / ^, ``\\frac``,
  ``\\sqrt``, ``\\pi``, brackets) with the official's number semantics: integers exact however large
  (``2^{60}`` is not ``2^{60}+1``), rationals as floats, so ``\\frac{3^{1008}-1}{3^{1009}}`` rounds to 0.33;
  (3) a number never equals an expression with a free letter or a bare ``%``/``°`` (``5cm``, ``50%``,
  ``x+1``): latex2sympy makes those symbols and the official eval fails, nor an expression written with
  numbers only that cannot be evaluated (``10^{10^{10}}``, ``\\frac{1}{0}``); (4) math-verify (time-bounded, via
  ``rlsd.verifier``) for the rest, where it is MORE lenient than the official code: the official eval can
  never equate two symbolic expressions (``x+1`` vs ``1+x`` is False there, True here).  Two different plain
  words of 3+ letters are unequal without parsing.  Checked against the official code (latex2sympy2 1.9.1) on
  3000 predictions built from the real free-form golds (gold, gold + unit, %, °, "+1", ...): 6 verdicts
  differ, from the gold cleaning in (1) and raw-file quirks.  An MC item is correct if the prediction is the
  gold letter (compared as a letter, where the official code runs ``is_equal`` on it) or
  ``is_equal(gold option text, pred)``; a prediction that is another single letter is compared with the
  option text by string only.
* score: accuracy overall, per level, per subject and per subject x level.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from .common import (BenchmarkFormatError, BenchmarkItem, accuracy, breakdown, flag_missing_images, letters,
                     read_jsonl, require, require_str_list)

NAME = "mathvision"
DEFAULT_SPLIT = "test"
HEADLINE = "accuracy"

COT_PREFIX = ('Please solve the problem and put your answer in one "\\boxed{}". If it is a multiple choice question, '
              'only one letter is allowed in the "\\boxed{}".\n')
DIRECT_SUFFIX = "Answer the question using a single word or phrase."
MC_LETTERS = letters(5)


def build_prompt(question: str, options: list[str], variant: str = "cot") -> str:
    block = "\n".join(f"({l}) {o}" for l, o in zip(letters(len(options)), options))
    body = f"{question}\n{block}" if options else question
    if variant == "cot":
        return COT_PREFIX + body
    if variant == "direct":
        return f"{body}\n{DIRECT_SUFFIX}"
    raise ValueError(f"mathvision prompt variant must be 'cot' or 'direct', got {variant!r}")


def load(root: Path, split: str | None = None, image_root: Path | None = None, image_cache=None,
         prompt_variant: str = "cot") -> list[BenchmarkItem]:
    split = split or DEFAULT_SPLIT
    image_root = Path(image_root) if image_root else root
    path = root / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"mathvision: {path} not found")
    items = []
    for line, record in read_jsonl(path):
        item_id = str(require(record, "id", (str, int), path, line))
        question = require(record, "question", str, path, line)
        options = require_str_list(record, "options", path, line)
        answer = require(record, "answer", str, path, line)
        image = require(record, "image", str, path, line)
        level = require(record, "level", int, path, line)
        subject = require(record, "subject", str, path, line)
        if options and answer not in letters(len(options)):
            raise BenchmarkFormatError(path, f"gold {answer!r} is not an option letter", row=line,
                                       field_name="answer")
        meta = {"level": level, "subject": subject, "solution": record.get("solution"), "split": split,
                "line": line}
        if "\x0c" in answer:
            answer, meta["answer_repaired"] = answer.replace("\x0c", "\\f"), True
        items.append(BenchmarkItem(NAME, item_id, question, build_prompt(question, options, prompt_variant),
                                   [str(image_root / image)], answer, options or None,
                                   "multiple-choice" if options else "free-form", meta))
    flag_missing_images(items, NAME, image_root)
    return items


# ---------------------------------------------------------------------------
# Extraction and cleaning
# ---------------------------------------------------------------------------

_PHRASES = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def extract(response: str) -> str:
    """The raw answer string, before ``find_math_answer`` (steps 1-5 of the official ``evaluate``)."""
    answer = response.strip()
    for c in MC_LETTERS:
        if (answer.endswith((f" {c}.", f" ({c}).")) or answer.startswith((f"{c}\n", f"({c})\n", f"({c}) {c}\n"))):
            answer = c
    tail = answer.split("is ")[-1].rstrip(".")
    if _is_number(tail):
        answer = tail
    if "oxed{" not in answer:
        for phrase in _PHRASES:
            for variant in (phrase, phrase.replace("the", "The")):
                found = variant in answer
                answer = answer.split(variant)[-1].strip()
                if found:
                    answer = answer.split("\n")[0].split(". ")[0]
    elif answer.count("oxed{") > 1:
        answer = "\\boxed{" + answer.split("oxed{")[-1]
    return answer


# As official: "\\%" and "^\\circ" are removed, but a bare "%" or "°" is kept (latex2sympy cannot read them, so
# "50%" or "45°" never equals the number 50 or 45 there; see ``has_symbols``).
_SIMPLE_REMOVALS = ("\\text", "\\mbox", "\\left", "\\right", "^{\\circ}", "^\\circ", "{m}^3", "m^3", "{units}",
                    "units", "{km}", "km", "\\!", "\\$", "$", "\\%")


def _fix_sqrt(text: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}`` (a one-character argument gets braces)."""
    return re.sub(r"\\sqrt(?![{\[])(\w)", r"\\sqrt{\1}", text)


def _fix_fracs(text: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}``, ``\\frac{1}2`` -> ``\\frac{1}{2}``."""
    text = re.sub(r"\\frac(?!\{)(\w)(?!\{)(\w)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac(?!\{)(\w)(?=\{)", r"\\frac{\1}", text)
    return re.sub(r"\\frac(\{[^{}]*\})(?!\{)(\w)", r"\\frac\1{\2}", text)


def find_math_answer(text: str, split_equals: bool = True) -> str:
    """The official cleaning of an extracted answer (paraphrased ``find_math_answer`` + ``evaluate``'s tail).

    ``split_equals=False`` keeps equations whole (used on the GOLD side: option texts such as ``$a+c=d+e$``
    must not shrink to ``d+e``).
    """
    s = text.lower().replace("{}", "")
    start = s.find("oxed{")
    if start >= 0 and s.rfind("}") > start:  # from the first box to the last closing brace (greedy)
        s = s[start + len("oxed{"): s.rfind("}")]
    close = s.find("}")
    if close >= 0 and (s.find("{") < 0 or close < s.find("{")):  # an unopened "}": keep what precedes it
        s = s.split("}")[0]
    if split_equals:
        s = s.split("=")[-1].split("\\approx")[-1]
    s = s.replace(" ", "").replace("\\,", "").replace("\n", "").replace("∞", "\\infty").replace("+\\infty", "\\infty")
    s = s.replace("\\\\", "\\").replace("bmatrix", "pmatrix").replace("tfrac", "frac").replace("dfrac", "frac")
    for token in _SIMPLE_REMOVALS:
        s = s.replace(token, "")
    s = re.sub(r"(^|\{)\.(\d)", r"\g<1>0.\2", s)  # ".5" -> "0.5", "{.5" -> "{0.5"
    s = _fix_fracs(_fix_sqrt(s))
    if s == "0.5":
        s = "\\frac{1}{2}"
    match = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if match:
        s = f"\\frac{{{match.group(1)}}}{{{match.group(2)}}}"
    for c in "abcde":
        s = s.replace(f"({c})", c).replace(f"{{{c}}}", c)
    return s.rstrip(".").lstrip(":").strip()


# ---------------------------------------------------------------------------
# Numeric LaTeX evaluator (no eval; numbers, + - * / ^, \frac, \sqrt, \pi, brackets)
# ---------------------------------------------------------------------------

# ``\\percent`` stands for a gold's "\\%" (see ``is_equal``); like latex2sympy, it divides the preceding atom by 100.
_TOKEN_RE = re.compile(r"\\frac|\\sqrt|\\pi|\\cdot|\\times|\\div|\\percent|π|\d+(?:\.\d*)?|\.\d+|[-+*/^(){}\[\]]")
_PERCENT = "\\percent"
_MAX_DEPTH = 40
# Exact integers/fractions are kept up to this many bits (~4900 digits), enough for golds such as
# \frac{3^{1008}-1}{3^{1009}}; beyond it the expression is treated as not numeric.
_MAX_BITS = 1 << 14


class _NotNumeric(Exception):
    pass


def numeric_value(text: str) -> int | float | None:
    """The value of a purely numeric LaTeX expression, or None (symbols, units, overflow, complex, ...).

    Mirrors what the official ``round(eval(str(latex2sympy(x))), 2)`` sees: rational arithmetic is exact
    (sympy keeps ``3^{1008}`` as an integer and Python's ``eval`` of it is an exact int), so an integer
    result is returned as an exact ``int`` and a non-integer rational as its correctly rounded ``float``
    (``p/q`` evaluated by Python); irrational parts (``\\pi``, non-square roots) are floats.  A float beyond
    the float range is not numeric (the official eval raises OverflowError there and scores False).  No
    e-notation: after the official lower-casing, latex2sympy reads "1e5" as symbols, not as 100000.
    """
    if not isinstance(text, str) or len(text) > 200:
        return None
    tokens = numeric_tokens(text)
    if not tokens:
        return None
    parser = _Parser(tokens)
    try:
        value = parser.expression(0)
        if parser.index != len(tokens):
            return None
        if isinstance(value, Fraction):
            return value.numerator if value.denominator == 1 else float(value)
    except (_NotNumeric, ZeroDivisionError, OverflowError, ValueError, TypeError, IndexError):
        return None
    if isinstance(value, complex) or not math.isfinite(value):
        return None
    return value


def numeric_tokens(text: str) -> list[str] | None:
    """The tokens of ``text`` if it is written only with numeric-LaTeX tokens (numbers, operators, ``\\frac``,
    ``\\sqrt``, ``\\pi``, brackets), else None.  Linear."""
    tokens, position = [], 0
    for match in _TOKEN_RE.finditer(text):
        if match.start() != position:
            return None
        tokens.append(match.group())
        position = match.end()
    return tokens if position == len(text) else None


def _exact(value):
    """``value``, checked to stay within ``_MAX_BITS`` when exact."""
    if isinstance(value, Fraction) and max(value.numerator.bit_length(), value.denominator.bit_length()) > _MAX_BITS:
        raise _NotNumeric()
    if isinstance(value, complex):
        raise _NotNumeric()
    return value


def _power(base, exponent):
    """``base ** exponent``: exact for a rational base and an integer exponent, else float."""
    if isinstance(exponent, Fraction) and exponent.denominator == 1 and isinstance(base, Fraction):
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if abs(exponent.numerator) * max(bits - 1, 1) > _MAX_BITS:
            raise _NotNumeric()
        return _exact(base ** exponent.numerator)
    if abs(float(exponent)) > 1000:
        raise _NotNumeric()
    return float(base) ** float(exponent)


def _root(radicand, index):
    """The ``index``-th root; exact when a rational radicand is a perfect power."""
    if radicand < 0:
        raise _NotNumeric()
    if isinstance(radicand, Fraction) and isinstance(index, Fraction) and index.denominator == 1 and index > 0:
        k = index.numerator
        exact = [_integer_root(part, k) for part in (radicand.numerator, radicand.denominator)]
        if None not in exact:
            return Fraction(exact[0], exact[1])
    return float(radicand) ** (1.0 / float(index))


def _integer_root(n: int, k: int) -> int | None:
    """The integer r with r**k == n, or None."""
    if n < 2 or k == 1:
        return n
    if k == 2:
        r = math.isqrt(n)
    elif n.bit_length() < 1000:
        r = int(round(n ** (1.0 / k)))
    else:
        return None
    for candidate in (r - 1, r, r + 1):
        if candidate >= 0 and candidate ** k == n:
            return candidate
    return None


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens, self.index = tokens, 0

    def _peek(self) -> str | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self._peek()
        if token is None or (expected is not None and token != expected):
            raise _NotNumeric()
        self.index += 1
        return token

    def expression(self, depth: int):
        if depth > _MAX_DEPTH:
            raise _NotNumeric()
        value = self.term(depth)
        while self._peek() in ("+", "-"):
            value = _exact(value + self.term(depth) if self._take() == "+" else value - self.term(depth))
        return value

    def term(self, depth: int):
        value = self.unary(depth)
        while True:
            token = self._peek()
            if token in ("*", "\\cdot", "\\times"):
                self._take()
                value = _exact(value * self.unary(depth))
            elif token in ("/", "\\div"):
                self._take()
                value = _exact(value / self.unary(depth))
            elif token is not None and (token[0].isdigit() or token in ("\\frac", "\\sqrt", "\\pi", "π", "(", "{")):
                value = _exact(value * self.power(depth))  # implicit multiplication: 2\sqrt{3}, 4\pi, 2(3)
            else:
                return value

    def unary(self, depth: int):
        if self._peek() in ("+", "-"):
            sign = -1 if self._take() == "-" else 1
            return sign * self.unary(depth + 1)
        return self.power(depth)

    def power(self, depth: int):
        base = self.atom(depth)
        if self._peek() == _PERCENT:
            self._take()
            base = _exact(base / 100) if isinstance(base, Fraction) else base / 100
        if self._peek() == "^":
            self._take()
            return _power(base, self.unary(depth + 1))
        return base

    def atom(self, depth: int):
        if depth > _MAX_DEPTH:
            raise _NotNumeric()
        token = self._take()
        if token[0].isdigit() or token[0] == ".":
            return Fraction(Decimal(token))
        if token in ("\\pi", "π"):
            return math.pi
        if token == "\\frac":
            numerator = self.atom(depth + 1)
            return _exact(numerator / self.atom(depth + 1))
        if token == "\\sqrt":
            index = Fraction(2)
            if self._peek() == "[":
                self._take()
                index = self.expression(depth + 1)
                self._take("]")
            return _root(self.atom(depth + 1), index)
        if token in ("(", "{"):
            value = self.expression(depth + 1)
            self._take(")" if token == "(" else "}")
            return value
        raise _NotNumeric()


# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------

_WORD_RE = re.compile(r"[a-z]+")


_COMMAND_RE = re.compile(r"\\[a-z]+")
_SYMBOL_RE = re.compile(r"[a-z%°]")


def has_symbols(text: str) -> bool:
    """True if ``text`` has a letter outside LaTeX command names, or a bare "%" or "°" (``5cm``, ``x+1``, ``50%``).

    latex2sympy turns such letters into symbols (``5cm`` -> 5*c*m; also "e": "1e5" after lower-casing) and
    cannot read a bare "%" or "°"; the official ``eval`` then raises and the comparison is False.  So a number
    never equals a number with a unit glued to it, or an expression in variables (math-verify would strip the
    unit and say True).
    """
    return _SYMBOL_RE.search(_COMMAND_RE.sub(" ", text)) is not None


def _split_tuple(text: str) -> tuple[str, list[str]]:
    """(bracket pair or "", top-level comma-separated parts); linear."""
    brackets = ""
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]":
        brackets, text = text[0] + text[-1], text[1:-1]
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return brackets, parts


def is_equal(gold: str, pred: str, verifier=None) -> bool:
    """MATH-V ``is_equal`` with latex2sympy replaced as described in the module docstring."""
    g, p = str(gold).lower().strip(), str(pred).lower().strip()
    if not g or not p:
        return False
    if g == p:
        return True
    # The gold's "\\%" means /100 (latex2sympy: "$6 \\%$" is 0.06); a prediction's "\\%" is removed (official).
    g, p = find_math_answer(g.replace("\\%", _PERCENT), split_equals=False), find_math_answer(p)
    if not g or not p:
        return False
    if g == p:
        return True
    (g_br, g_parts), (p_br, p_parts) = _split_tuple(g), _split_tuple(p)
    if len(g_parts) > 1 or len(p_parts) > 1:
        if len(g_parts) != len(p_parts) or (g_br and p_br and g_br != p_br):
            return False
        return all(is_equal(a, b, verifier) for a, b in zip(g_parts, p_parts))
    g_value, p_value = numeric_value(g), numeric_value(p)
    if g_value is not None and p_value is not None:
        return round(g_value, 2) == round(p_value, 2)  # exact for integers, as the official eval of an int
    if (g_value is not None and has_symbols(p)) or (p_value is not None and has_symbols(g)):
        return False  # a number vs. a number with a unit glued on / a symbolic expression
    if (g_value is not None and numeric_tokens(p)) or (p_value is not None and numeric_tokens(g)):
        # Written with numbers only but not evaluable: too large (10^{10^{10}}, a 5000-digit number),
        # division by zero, or malformed ("(1").  The official eval overflows, raises or hangs: never True.
        return False
    g_word, p_word = _WORD_RE.fullmatch(g), _WORD_RE.fullmatch(p)
    if g_word and p_word and len(g) >= 3 and len(p) >= 3:
        return False  # two different words
    if verifier is None:
        from ..verifier import default_verifier as verifier  # time-bounded worker process
    return verifier.answers_match(p, g, kind="math")


def score(items: list[BenchmarkItem], responses: list[str], *, verifier=None, **_) -> tuple[list[dict], dict]:
    per_item = []
    for item, response in zip(items, responses):
        response = response if isinstance(response, str) else ""
        raw = extract(response)
        pred = find_math_answer(raw)
        if item.choices:
            option_text = item.choices[ord(item.answer) - ord("A")]
            if pred == item.answer.lower():  # the gold letter is compared as a letter, not as a math symbol
                correct = True
            elif len(pred) == 1 and pred.upper() in MC_LETTERS:  # another letter: right only if it is the text
                correct = find_math_answer(option_text, split_equals=False) == pred
            else:
                correct = is_equal(option_text, pred, verifier)
        else:
            correct = is_equal(item.answer, pred, verifier)
        per_item.append({"id": item.id, "correct": bool(correct), "extracted": raw, "pred": pred})
    flags = [p["correct"] for p in per_item]
    metrics = {"accuracy": accuracy(flags), "n": len(flags), "correct": sum(flags),
               "per_level": breakdown(items, flags, lambda it: it.meta["level"]),
               "per_subject": breakdown(items, flags, lambda it: it.meta["subject"]),
               "per_subject_level": breakdown(items, flags, lambda it: f"{it.meta['subject']}|{it.meta['level']}")}
    return per_item, metrics


def answer_as_response(item: BenchmarkItem) -> str:
    """A chain-of-thought style ending with the gold in one box (wrappers such as ``$``/``\\boxed`` removed)."""
    gold = item.answer.strip()
    if gold.startswith("$") and gold.endswith("$"):
        gold = gold.strip("$").strip()
    if gold.startswith("\\boxed{") and gold.endswith("}"):
        gold = gold[len("\\boxed{"):-1]
    return f"Let me work through the figure step by step.\nThe answer is \\boxed{{{gold}}}."
