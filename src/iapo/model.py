"""Model-based estimates of Q(c, p, n) for every n, from small groups on many queries.

Blocks (and subsets) can only estimate Q(c, p, n) for n up to the group size, and a group of
N_max completions spends its budget on one query. A model decouples the scale sampled from the
scale evaluated: sample small groups on many queries, fit each query's answer (or utility)
distribution, and compute Q for every n exactly from the fit.

- Majority voting: for prompt p on query x, the answer probabilities are Dirichlet(alpha) a
  priori over the gold answer, every answer seen, and one bucket for answers not seen yet; the
  credit of N future answers is exact under the posterior (a Polya urn,
  :func:`iapo.exact.mv_polya_credit`), averaged over the queries p was tried on. With
  ``prior="fitted"``, where every query's answers are its right answer or one wrong answer
  (and enough queries were answered wrong twice to show it, :func:`iapo.posterior.shown_binary`,
  or the problem declares two answers, :func:`iapo.posterior.evidence_needed`),
  the prior of a query's chance of a right answer is instead fitted to the prompt's answers
  on all its queries (the logit-normal of :mod:`iapo.posterior`, empirical Bayes across
  prompts): two answers per query say little of one query but, over many queries, how
  spread the prompt's chances are, which is what decides its large-N credit.
- Best-of-N: a utility is a query effect plus prompt-level noise. Per prompt and context, the
  query effect is the group mean and the noise distribution is the pool of within-group
  residuals (rescaled by sqrt(n / (n - 1)) for the mean they were taken from); E[max of N] is
  the mean query effect plus the exact expected max of N draws from the pooled residuals
  (:func:`iapo.exact.bon_expected_max`, the home of E[max of N]).

Q subtracts the cost term of :func:`iapo.utility.cost_term`, as every Q does.

Both are biased where the model is wrong (few answers per query lean on the prior; the noise
of a prompt may differ across queries): ``benchmarks/experiments/model_bias.py`` measures it.
The interface is :class:`iapo.estimate.QTable`'s (``update``, ``mean``, ``counts``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError
from iapo.exact import abstain_first, bon_expected_max, mv_polya_credit
from iapo.latency import latency_from_undecided
from iapo.memo import Memo
from iapo.problem import Problem
from iapo.pulls import Observation, abstain_categories
from iapo.stopping import paid_from_undecided
from iapo.utility import cost_term, gold_first, latency_priced, task_values, unique_rows

FloatArray = npt.NDArray[np.float64]
# the MV prior of a query's answers: Dirichlet(alpha) ("fixed"), or fitted to the prompts'
# answers where they are binary ("fitted"; the fixed one elsewhere)
PRIORS = ("fixed", "fitted")
# posterior credits by (alpha, N_max, no-answer rule), each a bounded memo keyed by the votes
_POLYA: dict[tuple[float, int, str], Memo] = {}
# the undecided table under the posterior mean (what completions paid, waves and latency of
# every width are linear in), by (alpha, N_max, no-answer rule); N_max = 32 holds 1,089 floats
_UNDECIDED: dict[tuple[float, int, str], Memo] = {}


class ModelQTable:
    """Model-based Q estimates for every (context, prompt, n); ``counts`` [P, N_max] is the
    number of queries (MV) or groups (BoN) behind each prompt's estimates."""

    def __init__(self, problem: Problem, alpha: float = 0.5, prior: str = "fixed",
                 evidence: int | None = None) -> None:
        if problem.aggregator == "mixed":
            raise InputError("the model-based estimator supports mv and bon problems, not mixed; "
                             "use psst")
        if not alpha > 0:
            raise InputError(f"alpha={alpha} must be positive")
        if prior not in PRIORS:
            raise InputError(f"prior='{prior}' is unknown; use one of {', '.join(PRIORS)}")
        self.problem = problem
        self.alpha = float(alpha)
        self.prior = prior
        # the queries answered wrong twice or more that binary answers need (None: the
        # posterior's BINARY_EVIDENCE; none where the problem declares two answers;
        # iapo.posterior.evidence_needed)
        self.evidence = evidence
        # MV with prior="fitted": whether the last estimate fitted the prior (binary answers),
        # and why, in words
        self.fitted = False
        self.prior_reason = "no estimate yet"
        p, n = problem.n_prompts, problem.n_max
        self.counts = np.zeros((p, n), dtype=np.int64)
        self._cost_sum = np.zeros(p)
        self._cost_n = np.zeros(p)
        self._mean: FloatArray | None = None
        self._width: npt.NDArray[np.int64] | None = None
        self._seconds: FloatArray | None = None
        # MV: answer counts per (prompt, query, category), grown as queries and answers appear
        self._votes = np.zeros((p, 0, 0), dtype=np.int64)
        self._gold = np.zeros(0, dtype=np.int64)
        self._no_answer = np.zeros(0, dtype=np.int64)  # per query, under the abstain rule
        # BoN: per prompt, group means [groups, C] and pooled residuals [values, C]
        self._means: list[list[FloatArray]] = [[] for _ in range(p)]
        self._resid: list[list[FloatArray]] = [[] for _ in range(p)]

    # ---------------------------------------------------------------- data
    def update(self, observations: Sequence[Observation]) -> None:
        for o in observations:
            if o.count == 0:
                continue
            self._cost_sum[o.prompt] += o.scores[..., -1].sum()
            self._cost_n[o.prompt] += o.scores[..., -1].size
            if self.problem.aggregator == "mv":
                self._add_votes(o)
            else:
                self._add_values(o)
        self._mean = None

    def _add_votes(self, o: Observation) -> None:
        if o.labels is None or o.gold is None:
            raise ValueError("a majority-voting oracle must return answer labels and gold")
        q = o.queries.astype(np.int64)
        abstain = abstain_categories(self.problem, [o])
        need_x = int(q.max()) + 1
        # a query's "no answer" category has a column even before any answer falls in it
        need_l = int(max(o.labels.max(), o.gold.max(),
                         -1 if abstain is None else abstain.max())) + 1
        p_, x_, l_ = self._votes.shape
        if need_x > x_ or need_l > l_:
            grown = np.zeros((p_, max(need_x, x_), max(need_l, l_)), dtype=np.int64)
            grown[:, :x_, :l_] = self._votes
            self._votes = grown
            gold = np.full(grown.shape[1], -1, dtype=np.int64)
            gold[: self._gold.size] = self._gold
            self._gold = gold
            no_answer = np.full(grown.shape[1], -1, dtype=np.int64)
            no_answer[: self._no_answer.size] = self._no_answer
            self._no_answer = no_answer
        self._gold[q] = o.gold
        if abstain is not None:  # a query's categories are fixed: its "no answer" once seen
            self._no_answer[q] = np.where(abstain >= 0, abstain, self._no_answer[q])
        prompt_idx = np.full(q.size * o.n, o.prompt, dtype=np.int64)
        labels = o.labels.reshape(-1).astype(np.int64)
        np.add.at(self._votes, (prompt_idx, np.repeat(q, o.n), labels), 1)
        seen = self._votes[o.prompt].sum(axis=1) > 0
        self.counts[o.prompt, :] = int(seen.sum())

    def _add_values(self, o: Observation) -> None:
        values = task_values(o.scores, self.problem.grid.weights)  # [count, n, C]
        mu = values.mean(axis=1)
        self._means[o.prompt].append(mu)
        if o.n >= 2:
            r = (values - mu[:, None, :]) * np.sqrt(o.n / (o.n - 1))
            self._resid[o.prompt].append(r.reshape(-1, r.shape[-1]))
        self.counts[o.prompt, :] += o.count

    # ---------------------------------------------------------------- estimates
    @property
    def mean(self) -> FloatArray:
        """Estimated Q(c, p, n): [C, P, N_max] (NaN for prompts with no data); where the wave
        width is part of the arm, with each (c, p, n)'s best width (:attr:`width`)."""
        if self._mean is None:
            task = self._mv_task() if self.problem.aggregator == "mv" else self.bon_task()
            with np.errstate(invalid="ignore", divide="ignore"):
                cost = self._cost_sum / self._cost_n  # [P]
            self._mean, self._width, self._seconds = self._priced(task, cost)
        return self._mean

    @property
    def prior_used(self) -> str:
        """The prior of the last majority-voting estimate: "fitted" (binary answers, with
        ``prior="fitted"``) or "fixed"."""
        return "fitted" if self.fitted else "fixed"

    @property
    def width(self) -> npt.NDArray[np.int64] | None:
        """The wave width W of each (c, p, n)'s estimate, [C, P, N_max], where it is part of
        the arm (``stopping.widths``); else None."""
        _ = self.mean
        return self._width

    @property
    def latency(self) -> FloatArray | None:
        """The predicted expected latency (seconds) of each (c, p, n)'s estimate at its width,
        [C, P, N_max], where contexts price latency or the width is part of the arm; else
        None."""
        _ = self.mean
        return self._seconds

    @property
    def variance(self) -> FloatArray:
        return np.full(self.mean.shape, np.nan)

    def _priced(self, task: FloatArray, cost: FloatArray
                ) -> tuple[FloatArray, npt.NDArray[np.int64] | None, FloatArray | None]:
        """Q from the task value [C, P, N] and each prompt's cost [P]: less the cost of the
        completions paid (N, or fewer in expectation for arms that stop once decided), and
        for contexts that price latency the latency term and limits
        (:func:`iapo.utility.latency_priced`; the p95 from the same undecided table); the
        best of the widths where W is part of the arm. Returns (Q [C, P, N], the width of
        each or None, its latency [C, P, N] or None)."""
        problem = self.problem
        grid, stopping, n_max = problem.grid, problem.stopping, problem.n_max
        cw = grid.cost_weights[:, None, None]
        if problem.needs_latency and problem.latency is None:
            raise InputError("contexts that price latency, and the wave width as part of the "
                             "arm, need the problem's latency model (Problem.latency)")
        latency = problem.latency if problem.needs_latency else None  # None: not priced
        c = grid.latency_weights.size
        if not stopping.early:
            q = task - cost_term(cw, cost[None, :, None], np.arange(1, n_max + 1))
            if latency is None:
                return q, None, None
            seconds = np.broadcast_to(self.arm_latency(None), (c, *q.shape[1:]))
            over = latency.over(grid.p95_limits, n_max, None)
            return (latency_priced(q, seconds, grid.latency_weights, grid.latency_limits,
                                   over=over), None, seconds)
        widths = stopping.widths or (stopping.wave,)
        per_width, per_seconds = [], []
        undecided = self._mv_undecided()  # [P, N+1, N+1]
        for w in widths:
            paid, _ = paid_from_undecided(undecided, w)  # [P, N]
            q = task - cost_term(cw, (cost[:, None] * paid)[None])
            if latency is not None:
                seconds = self.arm_latency(w, undecided)
                over = latency.over(grid.p95_limits, n_max, w, undecided)
                q = latency_priced(q, seconds[None], grid.latency_weights, grid.latency_limits,
                                   over=over)
                per_seconds.append(np.broadcast_to(seconds, q.shape))
            per_width.append(q)
        if not stopping.widths:
            return per_width[0], None, per_seconds[0] if latency is not None else None
        stacked = np.stack(per_width, axis=-1)  # [C, P, N, S]
        best = np.argmax(np.nan_to_num(stacked, nan=-np.inf), axis=-1)[..., None]
        seconds = np.take_along_axis(np.stack(per_seconds, axis=-1), best, axis=-1)[..., 0]
        return (np.take_along_axis(stacked, best, axis=-1)[..., 0],
                np.asarray(widths, dtype=np.int64)[best[..., 0]], seconds)

    def _mv_task(self) -> FloatArray:
        """w_1 times the mean posterior credit over each prompt's queries: [C, P, N]."""
        w1 = self.problem.grid.weights[:, 0]
        votes, self.prior_reason = (self.binary_why() if self.prior == "fitted"
                                    else (None, "the fixed prior was asked for"))
        self.fitted = votes is not None
        if votes is not None:
            from iapo.posterior import expected_credit

            credit, _ = expected_credit(self.problem, votes)
            return w1[:, None, None] * credit[None]
        return w1[:, None, None] * self.mv_credit_spread(spread=False)[0][None]

    def wrong_answers(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The majority-voting queries asked so far (their indices [X']) and how often each got
        each wrong answer, over every prompt: [X', L] (its gold answer's column 0)."""
        per_query = self._votes.sum(axis=0)  # [X, L]: how often each query got each answer
        asked = np.flatnonzero(per_query.sum(axis=1) > 0)
        answers = per_query[asked]  # [X', L]
        answers[np.arange(asked.size), self._gold[asked]] = 0
        return asked, answers

    def binary(self) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] | None:
        """Per prompt, its queries' right answers k and answers n (two arrays [X_p]), as
        :func:`iapo.posterior.binary_votes` counts them, or None where the answers are not
        binary: some query got two different wrong answers (over all prompts), or, under the
        abstain rule, an answer that does not count; or where too few queries could have
        shown it (:func:`iapo.posterior.shown_binary`, with
        :func:`iapo.posterior.evidence_needed` of ``evidence``). One difference: a
        query's "no answer" category, once a group names it, holds for every answer to that
        query, earlier groups' too (binary_votes judges each group by its own)."""
        return self.binary_why()[0]

    def binary_why(self) -> tuple[list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]
                                  | None, str]:
        """:meth:`binary`, and why the answers are binary or not, in words."""
        votes = self._votes
        if not votes.size:
            return None, "no answers yet"
        asked, answers = self.wrong_answers()
        gold = self._gold[asked]
        labels = answers > 0
        if (labels.sum(axis=1) > 1).any():
            return None, "some query was answered wrong in two ways"
        # the causes that more answers cannot undo first
        if self.problem.no_answer == "abstain":
            no_answer = self._no_answer[asked]
            has = no_answer >= 0
            if labels[np.flatnonzero(has), no_answer[has]].any():
                return None, ("some query's wrong answer was \"no answer\", which the abstain "
                              "rule does not count as an answer")
        from iapo.posterior import evidence_needed, shown_binary, wrong_twice

        need = evidence_needed(self.problem, self.evidence)
        wrong = answers.sum(axis=1)
        twice = wrong_twice(wrong)
        queries = f"{twice} {'query' if twice == 1 else 'queries'} answered wrong twice or more"
        if not shown_binary(wrong, need):
            return None, f"{queries}; {need} are needed to show that the answers are binary"
        right = votes[:, asked, gold]  # [P, X']
        total = votes[:, asked].sum(axis=2)
        why = ("every query's answers were its right answer or one wrong answer, "
               + ("as the task declares" if self.problem.answers == 2 else
                  f"shown by {queries}" if need else "with no evidence asked"))
        return [(right[i][total[i] > 0], total[i][total[i] > 0])
                for i in range(self.problem.n_prompts)], why

    def arm_latency(self, wave: int | None, undecided: FloatArray | None = None) -> FloatArray:
        """The predicted expected latency (seconds) of the arms (p, N) in waves of ``wave``
        that stop once decided (None: the paper's arms, which wait for all N), under the
        problem's latency model and each query's posterior mean: [P, N_max].
        ``undecided``: :meth:`_mv_undecided`, if at hand."""
        latency = self.problem.latency
        if latency is None:
            raise InputError("a latency prediction needs the problem's latency model "
                             "(Problem.latency)")
        n_max = self.problem.n_max
        if wave is None:
            return latency.one_wave(n_max)
        table = self._mv_undecided() if undecided is None else undecided
        return latency_from_undecided(table, latency.steps(wave, n_max))

    def width_table(self) -> tuple[list[int | None], FloatArray, FloatArray]:
        """Every width's predicted completions paid and expected latency (seconds) of each arm
        (p, N), where the problem has a latency model: (widths, paid [P, N_max, S], latency
        [P, N_max, S]). Widths: ``stopping.widths`` (or its one wave) for arms that stop once
        decided, [None] for the paper's (all N paid and waited for)."""
        stopping, n_max = self.problem.stopping, self.problem.n_max
        if not stopping.early:
            paid = np.broadcast_to(np.arange(1, n_max + 1, dtype=np.float64),
                                   (self.problem.n_prompts, n_max))
            return [None], paid[..., None], self.arm_latency(None)[..., None]
        widths = list(stopping.widths or (stopping.wave,))
        undecided = self._mv_undecided()
        paid = np.stack([paid_from_undecided(undecided, w)[0] for w in widths], axis=-1)
        latency = np.stack([self.arm_latency(w, undecided) for w in widths], axis=-1)
        return list[int | None](widths), paid, latency

    def _mv_undecided(self) -> FloatArray:
        """P(undecided after t answers) of the arms N, under each query's posterior mean
        answer probabilities, averaged over each prompt's queries: [P, N+1, N+1] (a plug-in
        estimate; :func:`iapo.stopping.undecided_probability`). Completions paid, waves and
        latency of every width are linear in it."""
        from iapo.stopping import undecided_probability

        n_max, rule = self.problem.n_max, self.problem.no_answer
        no_answer = 1 if rule == "abstain" else None  # "no answer" stands second
        size = (n_max + 1) ** 2
        table = self._over_queries(
            _UNDECIDED.setdefault((self.alpha, n_max, rule), Memo(50_000)),
            lambda a: undecided_probability(a / a.sum(axis=1, keepdims=True), n_max,
                                            no_answer).reshape(-1, size),
            size)
        return table.reshape(-1, n_max + 1, n_max + 1)

    def _over_queries(self, memo: Memo, of_posterior: Callable[[FloatArray], FloatArray],
                      width: int | None = None) -> FloatArray:
        """A quantity of each query's Dirichlet posterior (``of_posterior``: parameters
        [M, L+1] -> [M, width], memoized in ``memo`` by the query's vote counts), averaged
        over each prompt's queries: [P, width] (width N_max by default; NaN for a prompt with
        none)."""
        return self._query_moments(memo, of_posterior, width, spread=False)[0]

    def _query_moments(self, memo: Memo, of_posterior: Callable[[FloatArray], FloatArray],
                       width: int | None = None, spread: bool = True
                       ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """:meth:`_over_queries`'s mean over each prompt's queries [P, width], the variance
        of the per-query values about it (over queries, k - 1 in the denominator; NaN with
        fewer than 2; all NaN unless ``spread``) and the queries behind each prompt [P]."""
        p = self.problem.n_prompts
        n_max = self.problem.n_max if width is None else width
        votes = self._votes
        if not votes.size:
            nan = np.full((p, n_max), np.nan)
            return nan, nan.copy(), np.zeros(p)
        pi, xi = np.nonzero(votes.sum(axis=2) > 0)
        if self.problem.no_answer == "abstain":  # gold, "no answer", the others sorted
            rows = abstain_first(votes[pi, xi], self._gold[xi], self._no_answer[xi])
        else:
            rows = gold_first(votes[pi, xi], self._gold[xi])
        uniq, inverse = unique_rows(rows)  # [M, L]
        alpha = self.alpha

        def compute(idx: npt.NDArray[np.intp]) -> list[FloatArray]:
            return list(of_posterior(_posterior(uniq[idx], alpha)))

        table = memo.rows(uniq, n_max, compute)
        per_query = table[inverse.reshape(-1)]  # [M, N]: each (prompt, query) row's value
        sums, sumsq = np.zeros((p, n_max)), np.zeros((p, n_max))
        np.add.at(sums, pi, per_query)
        if spread:
            np.add.at(sumsq, pi, per_query * per_query)
        else:
            sumsq[:] = np.nan
        seen = np.bincount(pi, minlength=p).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = sums / seen[:, None]
            var = np.maximum(sumsq - seen[:, None] * out * out, 0.0) / (seen[:, None] - 1)
        out[seen == 0] = np.nan
        var[seen < 2] = np.nan
        return out, var, seen

    def mv_credit_spread(self, spread: bool = True
                         ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Majority voting, the fixed prior: each prompt's mean posterior credit over its
        queries [P, N] (the task value before w_1 and the cost), the variance of the per-query
        credits about it [P, N] (NaN with fewer than 2 queries) and its queries [P]: what a
        standard error of the mean credit needs (the variance all NaN unless ``spread``)."""
        if self.problem.aggregator != "mv":
            raise InputError("the credit's spread over queries is majority voting's")
        n_max, rule = self.problem.n_max, self.problem.no_answer
        if rule == "abstain":
            def credit_of(a: FloatArray) -> FloatArray:
                return mv_polya_credit(a[:, 0], a[:, 2:], n_max, a[:, 1])
        else:
            def credit_of(a: FloatArray) -> FloatArray:
                return mv_polya_credit(a[:, 0], a[:, 1:], n_max)
        return self._query_moments(_POLYA.setdefault((self.alpha, n_max, rule), Memo()),
                                   credit_of, spread=spread)

    def bon_task(self) -> FloatArray:
        """Best-of-N's task value (the weighted reward, before any cost): the mean query
        effect plus the expected max of N pooled residuals, [C, P, N] (NaN for prompts with
        no data)."""
        c, p, n_max = self.problem.n_contexts, self.problem.n_prompts, self.problem.n_max
        out = np.full((c, p, n_max), np.nan)
        for q in range(p):
            if not self._means[q]:
                continue
            mu = np.concatenate(self._means[q]).mean(axis=0)  # [C]
            out[:, q, :] = mu[:, None]
            if self._resid[q]:
                pooled = np.concatenate(self._resid[q]).T  # [C, M], equally likely
                out[:, q, :] += bon_expected_max(pooled, None, n_max)
        return out


def _posterior(counts: npt.NDArray[np.int64], alpha: float) -> FloatArray:
    """Dirichlet posterior parameters of a query's answers from its vote counts [M, L] (gold
    first; "no answer" second under the abstain rule): alpha on the gold answer, on every
    answer seen, and on one bucket for answers not seen yet -> [M, L + 1] (0 for categories
    never seen)."""
    others = np.where(counts[:, 1:] > 0, counts[:, 1:] + alpha, 0.0)
    return np.concatenate([counts[:, :1] + alpha, others,
                           np.full((counts.shape[0], 1), alpha)], axis=1)
