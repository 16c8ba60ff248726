"""One aggregation from training to serving: the outcome of a group of N completions.

Training (the Q table), ``export-env`` (the tabular environment), ``iapo answer`` and
``iapo serve`` all read a group through the rules here and in :mod:`iapo.utility`:

- **Majority voting.** Every completion casts one vote for the answer its extractor reads. An
  unreadable completion votes for "no answer", which never matches the gold. Under the
  ``abstain`` rule (the default) it is no candidate while any completion gives an answer, so
  it wins only where every completion abstains; under ``vote`` it is a category like any
  other (:func:`iapo.utility.counted_votes`). When it wins, the response carries no answer
  (``answer`` is None). The answers tied for the most counted votes share the win: training
  credits each of t tied answers 1/t (Eq. 2), and serving draws the winner uniformly among
  them, so the served credit's expectation is the trained one. The completion returned is the
  first one giving the winning answer.
- **Best-of-N.** The completion with the largest weighted score is returned; among equal
  values, the lowest index (the first drawn). Ties do not change the utility.
- **Mixed** (the paper's Remark): the answer by majority voting as above; among the completions
  giving it, the one with the best weighted other objectives (first one among equals).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iapo.problem import NO_ANSWER_RULES
from iapo.utility import vote_counts, vote_winners

NO_ANSWER = "\x00no-answer"  # the category of a completion whose answer cannot be read
UNKNOWN_GOLD = "\x00gold"  # category 0 when the gold answer is unknown (or unreadable)


def answer_categories(gold: str | None, answers: Iterable[str | None]) -> dict[str, int]:
    """Category index of every answer: the gold first (index 0; a placeholder when it is
    unknown), then the other answers in order of first appearance, "no answer" included."""
    cats = {gold if gold is not None else UNKNOWN_GOLD: 0}
    for a in answers:
        cats.setdefault(NO_ANSWER if a is None else a, len(cats))
    return cats


def answer_labels(cats: dict[str, int], answers: Iterable[str | None]) -> list[int]:
    """The category index of each answer under ``cats`` (adding unseen answers to it)."""
    out = []
    for a in answers:
        key = NO_ANSWER if a is None else a
        out.append(cats.setdefault(key, len(cats)))
    return out


@dataclass(frozen=True)
class Outcome:
    """What a group of completions yields.

    ``chosen``: the index of the completion returned. MV and mixed: ``answer`` (None when "no
    answer" won), ``tied`` (the answers that shared the most counted votes, in order of first
    appearance), ``votes`` (per answer, all of them; "no answer" under the key None). BoN and
    mixed:
    ``values``, the weighted score (BoN) or weighted style (mixed) of every completion.
    """

    chosen: int
    answer: str | None = None
    tied: tuple[str | None, ...] = ()
    votes: tuple[tuple[str | None, int], ...] = ()
    values: tuple[float, ...] = ()


def _first_best(values: npt.NDArray[np.float64], among: npt.NDArray[np.bool_]) -> int:
    """The lowest index with the largest value among ``among``."""
    masked = np.where(among, values, -np.inf)
    return int(np.argmax(masked))


def aggregate(kind: str, answers: Sequence[str | None], scores: npt.ArrayLike,
              weights: npt.ArrayLike, rng: random.Random,
              no_answer: str = NO_ANSWER_RULES[0]) -> Outcome:
    """The outcome of one group: ``answers`` [n] (MV, mixed), ``scores`` [n, K] (the task
    objectives; BoN and mixed), ``weights`` [K] (the context's). ``rng`` draws the winner
    among tied answers; ``no_answer`` is how "no answer" counts (abstain or vote)."""
    s = np.asarray(scores, dtype=np.float64).reshape(len(answers), -1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    n = len(answers)
    if n == 0:
        raise ValueError("a group needs at least one completion")
    if kind == "bon":
        values = s @ w
        return Outcome(chosen=_first_best(values, np.ones(n, dtype=bool)),
                       values=tuple(float(v) for v in values))
    if kind not in ("mv", "mixed"):
        raise ValueError(f"aggregator {kind!r} must be bon, mv or mixed")
    cats = answer_categories(None, answers)
    labels = np.asarray(answer_labels(cats, answers))
    counts = vote_counts(labels, len(cats))
    names: list[str | None] = [None if k == NO_ANSWER else k for k in cats]
    if no_answer not in NO_ANSWER_RULES:
        raise ValueError(f"no_answer rule {no_answer!r} must be one of {list(NO_ANSWER_RULES)}")
    abstain = cats.get(NO_ANSWER, -1) if no_answer == "abstain" else None
    win = np.flatnonzero(vote_winners(counts, abstain))
    winner = int(win[rng.randrange(win.size)]) if win.size > 1 else int(win[0])
    voters = labels == winner
    if kind == "mixed" and w.size > 1:
        values = s[:, 1:] @ w[1:]
        chosen = _first_best(values, voters)
    else:
        values = np.zeros(0)
        chosen = int(np.argmax(voters))
    return Outcome(
        chosen=chosen, answer=names[winner], tied=tuple(names[i] for i in win),
        votes=tuple((names[i], int(c)) for i, c in enumerate(counts) if c > 0),
        values=tuple(float(v) for v in values),
    )
