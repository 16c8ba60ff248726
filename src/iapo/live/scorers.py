"""Scorers (one per objective) and answer extractors (for majority voting).

A scorer maps (record, completion text) to a number in the objective's bounds:

- ``exact_match``: 1 if the normalized completion equals the normalized gold, else 0.
- ``multiple_choice``: 1 if the letter read from the completion is the gold letter
  (option ``choices``, default "ABCDE").
- ``numeric``: 1 if the last number in the completion equals the gold within ``tolerance``
  (relative, default 1e-6).
- ``math``: 1 if ``math-verify`` finds the completion's answer equivalent to the gold.
- ``python``: ``callable = "module:function"`` (or ``"path/to/file.py:function"``), called as
  ``function(query, completion, gold)`` and returning a float.
- ``label``: 1 if the label read from the completion (option ``labels``, e.g.
  ``["yes", "no"]``) is the gold label, case-insensitively.
- ``http``: ``url = "..."``: POST {"query", "completion", "gold"} as JSON, read ``{"score": x}``
  (or a bare number) from the answer: a reward-model endpoint.
- ``judge``: an LLM rates the completion on a ``rubric`` (its own ``base_url`` and ``model``;
  a number within the objective's bounds, or P(yes) from log-probabilities), every judgement
  cached in the completion store (:mod:`iapo.live.judge`).

A scorer that raises on one completion is recorded as a failure and scores that completion at
the objective's lower bound; the run goes on and the report counts failures.

The scorers in ``GOLD_SCORERS`` compare with the record's gold answer; where there is none (at
answer and serve time) they give no score instead of a failure.

An extractor maps a completion to a canonical answer string (or None when none is found):
``multiple_choice``, ``numeric``, ``math``, ``exact`` and ``label`` (the first of the task's
``aggregator.labels`` that the text gives as a whole word, after "answer is" if it says so:
"No, because ..." reads as "no").

**Truncated completions.** A completion cut by ``max_tokens`` (finish reason ``"length"``) often
stops in the middle of restating the question ("9 - 8 = "), whose last number or letter is no
answer. With ``explicit_only`` the ``numeric``, ``multiple_choice`` and ``label`` extractors
(and their scorers) read only an explicit answer, the patterns of :data:`EXPLICIT`: after
"answer is" / "answer:", inside ``\\boxed{...}``, (numeric) after ``####`` and (label) as the
reply's first word; anything else is "no answer". ``TRUNCATION_AWARE`` names them; ``math``
and ``exact`` read as before.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from iapo.errors import InputError

Scorer = Callable[[str, str, Any], float]

# after "answer is" / "answer:": a letter in parentheses (any case), a capital letter, or a
# small letter that ends the sentence ("answer: d"), never the article in "answer is a ..."
_ANSWER_LETTER = (r"(?i:answer)\s*(?:is|:)?\s*:?\s*(?:\(\s*([{c}{cl}])\s*\)|([{c}])(?![A-Za-z])"
                  r"|([{cl}])(?=\s*(?:[.!,;)]|$)))")
_LETTER_PATTERNS = (
    r"^\s*\(?([{c}])(?:[\).:\s]|$)",
    r"\(([{c}])\)",
    r"(?<![A-Za-z])([{c}])(?![A-Za-z])",
)
_NUMBER_TEXT = r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+"
_NUMBER = re.compile(_NUMBER_TEXT)
# what an explicit answer looks like, per extractor: the one definition of "explicit", read by
# the extractors when a completion was truncated. {answer} is the extractor's own answer pattern.
_SAYS = r"(?i:answer)\s*(?:is|:|=)\s*:?[\s*$(]*"  # "The answer is", "Answer:", "**Answer:** $"
EXPLICIT: dict[str, tuple[str, ...]] = {
    "numeric": (_SAYS + r"({answer})", r"\\boxed\{{\s*\$?\s*({answer})\s*\}}",
                r"####\s*\$?\s*({answer})"),
    "multiple_choice": (_ANSWER_LETTER, r"\\boxed\{{\s*\(?([{c}{cl}])\)?\s*\}}"),
    # a label may also open the reply ("No, because ..."): a restated question does not
    "label": (_SAYS + r"[\"'*(]*(?<![\w])({answer})(?![\w])",
              r"\\boxed\{{\s*(?:\\text\{{)?\s*({answer})\s*\}}",
              r"^[\s\"'*(]*({answer})(?![\w])"),
}
TRUNCATION_AWARE = frozenset(EXPLICIT)  # extractors and scorers that read EXPLICIT


def normalize(text: str) -> str:
    """Lower case, collapsed white space, no surrounding punctuation."""
    return re.sub(r"\s+", " ", str(text)).strip().strip(".!?;:\"'").strip().casefold()


def _explicit(kind: str, text: str, flags: int = 0, **fmt: str) -> str | None:
    """The last explicit answer (:data:`EXPLICIT`) of kind ``kind`` in ``text``, or None."""
    found: list[tuple[int, str]] = []
    for pattern in EXPLICIT[kind]:
        for m in re.finditer(pattern.format(**fmt), text, flags):
            found.extend((m.start(i), g) for i, g in enumerate(m.groups(), 1) if g)
    return max(found)[1] if found else None


def extract_letter(text: str, choices: str = "ABCDE", explicit_only: bool = False
                   ) -> str | None:
    """The multiple-choice letter a completion gives, or None. ``explicit_only`` (a truncated
    completion): only a letter given as the answer (:data:`EXPLICIT`)."""
    upper = re.escape(choices.upper())
    lower = re.escape(choices.lower())
    if explicit_only:
        got = _explicit("multiple_choice", text, c=upper, cl=lower)
        return None if got is None else got.upper()
    m = re.search(_ANSWER_LETTER.format(c=upper, cl=lower), text)
    if m:
        return next(g for g in m.groups() if g).upper()
    for pattern in _LETTER_PATTERNS:
        m = re.search(pattern.format(c=upper), text)
        if m:
            return m.group(1).upper()
    return None


def extract_number(text: str, explicit_only: bool = False) -> str | None:
    """The last number in a completion, canonical (``"42"``, ``"-0.5"``), or None.
    ``explicit_only`` (a truncated completion): the last number given as the answer
    (:data:`EXPLICIT`)."""
    if explicit_only:
        last = _explicit("numeric", text, answer=_NUMBER_TEXT)
    else:
        found = _NUMBER.findall(text)
        last = found[-1] if found else None
    if last is None:
        return None
    value = float(last.replace(",", ""))
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def extract_math(text: str) -> str | None:
    """The answer ``math-verify`` parses from a completion, as a string, or None."""
    from math_verify import parse

    parsed = parse(text)
    return str(parsed[0]) if parsed else None


def extract_label(text: str, labels: Sequence[str], explicit_only: bool = False
                  ) -> str | None:
    """The label a free-text completion gives, as spelled in ``labels``, or None: the label
    after "answer is" / "answer:" if there is one, else the label that appears first as a
    whole word (case-insensitive; "No, because ..." is "No"). ``explicit_only`` (a truncated
    completion): only a label given as the answer (:data:`EXPLICIT`)."""
    if not labels:
        return None
    alternatives = "|".join(re.escape(lab) for lab in sorted(labels, key=len, reverse=True))
    word = rf"(?<![\w])({alternatives})(?![\w])"
    canon = {lab.casefold(): lab for lab in labels}
    if explicit_only:
        got = _explicit("label", text, re.IGNORECASE, answer=alternatives)
        return None if got is None else canon[got.casefold()]
    m = re.search(rf"(?i:answer)\s*(?:is|:)\s*:?\s*[\"'*(]*{word}", text, re.IGNORECASE)
    if m is None:
        m = re.search(word, text, re.IGNORECASE)
    return None if m is None else canon[m.group(1).casefold()]


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "multiple_choice": extract_letter,
    "numeric": extract_number,
    "math": extract_math,
    "exact": lambda text: normalize(text) or None,
    "label": lambda text: None,  # needs the task's labels: see make_extractor
}


def make_extractor(name: str, labels: Sequence[str] | None = None,
                   explicit_only: bool = False) -> Callable[[str], str | None]:
    """The extractor called ``name``; ``label`` reads one of ``labels``. ``explicit_only``:
    the extractor for truncated completions (the same one where ``name`` is not in
    :data:`TRUNCATION_AWARE`)."""
    if name == "label":
        if not labels:
            raise InputError("the label extractor needs aggregator.labels, e.g. [\"yes\", \"no\"]")
        chosen = tuple(labels)
        return lambda text: extract_label(text, chosen, explicit_only)
    if explicit_only and name == "numeric":
        return lambda text: extract_number(text, explicit_only=True)
    if explicit_only and name == "multiple_choice":
        return lambda text: extract_letter(text, explicit_only=True)
    return EXTRACTORS[name]


def _load_callable(spec: str) -> Callable[..., Any]:
    if ":" not in spec:
        raise InputError(f"callable {spec!r} must look like 'module:function' or "
                         "'path/to/file.py:function'")
    target, func = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise InputError(f"callable file {target!r} does not exist")
        mod_name = f"iapo_user_{abs(hash(path.resolve()))}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise InputError(f"cannot import {target!r}; give a Python source file")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise InputError(f"cannot import module {target!r} ({e})") from e
    fn = getattr(module, func, None)
    if not callable(fn):
        raise InputError(f"{target!r} has no function {func!r}")
    return fn


def check_scorer(name: str, options: dict[str, Any]) -> None:
    """Raise InputError naming the problem if a scorer is unknown or misconfigured."""
    if name not in SCORERS:
        raise InputError(f"scorer {name!r} is unknown; use one of {sorted(SCORERS)}")
    if name == "python" and not isinstance(options.get("callable"), str):
        raise InputError("scorer 'python' needs callable = \"module:function\"")
    if name == "label":
        labels = options.get("labels")
        if (not isinstance(labels, list) or not labels
                or not all(isinstance(x, str) and x.strip() for x in labels)):
            raise InputError("scorer 'label' needs labels = [\"yes\", \"no\", ...]")
    if name == "http" and not str(options.get("url", "")).startswith(("http://", "https://")):
        raise InputError("scorer 'http' needs url = \"http://...\"")
    if name == "judge":
        from iapo.live.judge import check_judge

        check_judge(options)


def _exact(options: dict[str, Any]) -> Scorer:
    return lambda query, text, gold: float(normalize(text) == normalize(str(gold)))


def _letter_of(gold: Any) -> str:
    """A gold answer as the multiple_choice scorer compares it with the letter it reads."""
    return str(gold).strip().upper()


def _label_of(gold: Any) -> str:
    """A gold answer as the label scorer compares it with the label it reads."""
    return str(gold).strip().casefold()


def _multiple_choice(options: dict[str, Any], explicit_only: bool = False) -> Scorer:
    choices = str(options.get("choices", "ABCDE"))
    return lambda query, text, gold: float(
        extract_letter(text, choices, explicit_only) == _letter_of(gold))


def _label(options: dict[str, Any], explicit_only: bool = False) -> Scorer:
    labels = tuple(str(x) for x in options["labels"])

    def score(query: str, text: str, gold: Any) -> float:
        got = extract_label(text, labels, explicit_only)
        return float(got is not None and got.casefold() == _label_of(gold))

    return score


def fixed_answers(name: str, options: dict[str, Any], gold: Any
                  ) -> tuple[list[str], str] | None:
    """The answers scorer ``name`` can ever give credit for, and ``gold`` as it compares it
    with them: a multiple_choice objective's choices (its letters), a label objective's
    labels; None for a scorer with no fixed set of answers."""
    if name == "multiple_choice":
        return list(str(options.get("choices", "ABCDE")).upper()), _letter_of(gold)
    if name == "label" and "labels" in options:
        return [str(x).casefold() for x in options["labels"]], _label_of(gold)
    return None


def read_answer(extract: Callable[[str], str | None], text: Any) -> str | None:
    """The answer ``extract`` reads from ``text`` (a completion, or a gold answer read as one),
    or None, also where the extractor fails."""
    try:
        return extract(str(text))
    except Exception:
        return None


def _numeric(options: dict[str, Any], explicit_only: bool = False) -> Scorer:
    tol = float(options.get("tolerance", 1e-6))

    def score(query: str, text: str, gold: Any) -> float:
        got = extract_number(text, explicit_only)
        if got is None:
            return 0.0
        want = float(str(gold).replace(",", ""))
        return float(math.isclose(float(got), want, rel_tol=tol, abs_tol=tol))

    return score


def _math(options: dict[str, Any]) -> Scorer:
    from math_verify import parse, verify

    def score(query: str, text: str, gold: Any) -> float:
        gold_text = str(gold)
        if not gold_text.strip().startswith("$"):
            gold_text = f"${gold_text}$"
        return float(verify(parse(gold_text), parse(text)))

    return score


def _python(options: dict[str, Any]) -> Scorer:
    fn = _load_callable(str(options["callable"]))
    return lambda query, text, gold: float(fn(query, text, gold))


def _http(options: dict[str, Any]) -> Scorer:
    url = str(options["url"])
    client = httpx.Client(timeout=float(options.get("timeout", 30.0)))

    def score(query: str, text: str, gold: Any) -> float:
        r = client.post(url, json={"query": query, "completion": text, "gold": gold})
        r.raise_for_status()
        body = r.json()
        value = body["score"] if isinstance(body, dict) else body
        return float(value)

    return score


def _judge(options: dict[str, Any]) -> Scorer:
    from iapo.live.judge import JudgeScorer

    return JudgeScorer(options)


SCORERS: dict[str, Callable[[dict[str, Any]], Scorer]] = {
    "exact_match": _exact,
    "multiple_choice": _multiple_choice,
    "numeric": _numeric,
    "math": _math,
    "label": _label,
    "python": _python,
    "http": _http,
    "judge": _judge,
}

# the scorers that read an explicit answer only from a truncated completion
TRUNCATION_SCORERS: dict[str, Callable[[dict[str, Any], bool], Scorer]] = {
    "multiple_choice": _multiple_choice,
    "numeric": _numeric,
    "label": _label,
}

# the scorers that compare with a gold answer (no score without one)
GOLD_SCORERS = frozenset({"exact_match", "multiple_choice", "numeric", "math", "label"})


def make_scorer(name: str, options: dict[str, Any], explicit_only: bool = False) -> Scorer:
    """The scorer called ``name``. ``explicit_only``: the scorer for truncated completions
    (only :data:`TRUNCATION_AWARE` scorers have one)."""
    check_scorer(name, options)
    if explicit_only:
        if name not in TRUNCATION_SCORERS:
            raise ValueError(f"scorer {name!r} reads truncated completions as any other")
        return TRUNCATION_SCORERS[name](options, True)
    return SCORERS[name](options)
