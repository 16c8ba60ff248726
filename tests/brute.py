"""Brute-force helpers and reference utilities shared by the tests, independent of the code
under test: plain loops, one group at a time, importing nothing from iapo."""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.special import gammaln


def compositions(n: int, parts: int) -> np.ndarray:
    """Every vector of ``parts`` non-negative integers summing to n (stars and bars)."""
    rows = []
    for bars in itertools.combinations(range(n + parts - 1), parts - 1):
        cuts = (-1, *bars, n + parts - 1)
        rows.append([cuts[i + 1] - cuts[i] - 1 for i in range(parts)])
    return np.array(rows, dtype=np.int64)


def _max_votes(labels: np.ndarray) -> tuple[dict[int, int], list[int]]:
    """(votes per answer, the answers tied for the most votes) of one group's labels [n]."""
    votes: dict[int, int] = {}
    for a in labels.tolist():
        votes[a] = votes.get(a, 0) + 1
    top = max(votes.values())
    return votes, [a for a, v in votes.items() if v == top]


def mv_credit(labels, gold, n_categories=None):  # type: ignore[no-untyped-def]
    """Eq. 2's credit, one group at a time: 1/t if gold is among the t answers tied for the
    most votes, else 0. labels [..., n], gold [...] (n_categories is not needed) -> [...]."""
    lab = np.asarray(labels)
    g = np.broadcast_to(np.asarray(gold), lab.shape[:-1])
    out = np.zeros(lab.shape[:-1])
    for idx in np.ndindex(*lab.shape[:-1]):
        _, winners = _max_votes(lab[idx])
        out[idx] = 1.0 / len(winners) if int(g[idx]) in winners else 0.0
    return out


def bon_utility(scores, weights, cost_weights):  # type: ignore[no-untyped-def]
    """Best-of-N (Eq. 1): max_i sum_k w_k o_ik - w_cost sum_i cost_i; scores [..., n, K+1],
    weights [C, K], cost_weights [C] -> [..., C]."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    cw = np.atleast_1d(np.asarray(cost_weights, dtype=np.float64))
    out = np.zeros((*s.shape[:-2], w.shape[0]))
    for idx in np.ndindex(*s.shape[:-2]):
        group = s[idx]
        for c in range(w.shape[0]):
            best = max(float(np.dot(w[c], row[:-1])) for row in group)
            out[(*idx, c)] = best - cw[c] * group[:, -1].sum()
    return out


def mv_utility(labels, gold, costs, weights, cost_weights):  # type: ignore[no-untyped-def]
    """Majority voting (Eq. 2): w_1 credit - w_cost sum_i cost_i; labels and costs [..., n],
    gold [...], weights [C, 1] (or [C]), cost_weights [C] -> [..., C]."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    cw = np.asarray(cost_weights, dtype=np.float64).reshape(-1)
    credit = mv_credit(labels, gold)[..., None]
    return credit * w - np.asarray(costs, dtype=np.float64).sum(-1)[..., None] * cw


def mixed_utility(labels, gold, scores, weights, cost_weights):  # type: ignore[no-untyped-def]
    """The mixed strategy (the paper's Remark) as served, in expectation over the uniform draw
    among the t tied answers: sum over tied answers a of (w_1 [a = gold] + max over the
    completions giving a of sum_{k>1} w_k o_ik) / t - w_cost sum_i cost_i. scores [..., n, K+1]
    (column 0 unused), labels [..., n], gold [...] -> [..., C]."""
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels)
    g = np.broadcast_to(np.asarray(gold), lab.shape[:-1])
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    cw = np.atleast_1d(np.asarray(cost_weights, dtype=np.float64))
    out = np.zeros((*lab.shape[:-1], w.shape[0]))
    for idx in np.ndindex(*lab.shape[:-1]):
        _, winners = _max_votes(lab[idx])
        group = s[idx]
        for c in range(w.shape[0]):
            total = 0.0
            for a in winners:
                style = max(float(np.dot(w[c, 1:], row[1:-1]))
                            for row, x in zip(group, lab[idx], strict=True) if x == a)
                total += w[c, 0] * (a == int(g[idx])) + style
            out[(*idx, c)] = total / len(winners) - cw[c] * group[:, -1].sum()
    return out


def block_statistics(problem, observations):  # type: ignore[no-untyped-def]
    """(sums [C, P, N], sums of squares, counts [P, N]) of every disjoint block (n, b),
    completions [b n, (b + 1) n), of every group, scored one block at a time by the reference
    utilities above (Eqs. 1 and 2, the mixed strategy). With the decided rule, an MV block
    pays only the completions its arm would have drawn (:func:`decided_paid`). Under the
    abstain rule, an MV group whose observation names its "no answer" category is scored by
    :func:`mv_credit_abstain` and :func:`decided_paid_abstain`."""
    w, cw = problem.grid.weights, problem.grid.cost_weights
    c, p, n_max = problem.n_contexts, problem.n_prompts, problem.n_max
    sums, sumsq = np.zeros((c, p, n_max)), np.zeros((c, p, n_max))
    counts = np.zeros((p, n_max), dtype=np.int64)
    for o in observations:
        for g in range(o.count):
            z = _abstained(problem, o, g)
            for n in range(1, o.n + 1):
                for b in range(o.n // n):
                    part = slice(b * n, (b + 1) * n)
                    if problem.aggregator == "bon":
                        u = bon_utility(o.scores[g, part], w, cw)
                    elif problem.aggregator == "mv" and z >= 0:
                        labels = o.labels[g, part]
                        costs = o.scores[g, part, -1]
                        if problem.stopping.rule == "decided":
                            costs = costs[: decided_paid_abstain(labels, problem.stopping.wave, z)]
                        u = (w.reshape(-1) * mv_credit_abstain(labels, o.gold[g], z)
                             - costs.sum() * np.asarray(cw).reshape(-1))
                    elif problem.aggregator == "mv":
                        costs = o.scores[g, part, -1]
                        if problem.stopping.rule == "decided":
                            costs = costs[: decided_paid(o.labels[g, part], problem.stopping.wave)]
                        u = mv_utility(o.labels[g, part], o.gold[g], costs, w, cw)
                    else:
                        u = mixed_utility(o.labels[g, part], o.gold[g], o.scores[g, part], w, cw)
                    sums[:, o.prompt, n - 1] += u
                    sumsq[:, o.prompt, n - 1] += u * u
                    counts[o.prompt, n - 1] += 1
    return sums, sumsq, counts


def _abstained(problem, o, g):  # type: ignore[no-untyped-def]
    """Group g's "no answer" category where the problem's rule is abstain, else -1."""
    if getattr(problem, "no_answer", "vote") != "abstain" or o.no_answer is None:
        return -1
    return int(o.no_answer[g])


def mv_brute_force_vectorized(probs: np.ndarray, n_max: int) -> np.ndarray:
    """MV credit for N = 1..n_max summed over every vote composition: the multinomial
    probability, times 1/t when gold is among the t most voted; vectorized over rows, gold is
    column 0. probs [R, L] -> [R, n_max]."""
    logp = np.log(np.where(probs > 0, probs, 1.0))
    logp[probs <= 0] = -1e300  # 0 votes * -1e300 = 0; any vote for it -> probability 0
    out = np.zeros((probs.shape[0], n_max))
    for n in range(1, n_max + 1):
        comps = compositions(n, probs.shape[1])
        top = comps.max(axis=1)
        comps = comps[comps[:, 0] == top]
        ties = (comps == comps[:, :1]).sum(axis=1)
        log_coef = gammaln(n + 1) - gammaln(comps + 1).sum(axis=1)
        pr = np.exp(log_coef[:, None] + comps.astype(np.float64) @ logp.T)
        out[:, n - 1] = (1.0 / ties) @ pr
    return out


def decided_paid(labels, wave):  # type: ignore[no-untyped-def]
    """Completions paid by a majority-voting arm with the decided rule, one group at a time:
    the N = len(labels) answers come in waves of ``wave``; after each wave, with t drawn and
    N - t to come, it stops if the leader's votes minus the runner-up's exceed N - t."""
    n, t = len(labels), 0
    while t < n:
        t = min(t + wave, n)
        votes: dict[int, int] = {}
        for a in list(labels)[:t]:
            votes[int(a)] = votes.get(int(a), 0) + 1
        top = [*sorted(votes.values(), reverse=True), 0]
        if top[0] - top[1] > n - t:
            break
    return t


def subset_statistics(problem, observations):  # type: ignore[no-untyped-def]
    """(sums [C, P, N], sums of squares, counts [P, N]) of the subsets estimator: for every
    group of G completions and n <= G, the mean utility over all C(G, n) subsets of size n,
    each subset scored by the reference utilities above, counted floor(G/n) times (as many as
    the group's disjoint blocks). MV and BoN problems."""
    w, cw = problem.grid.weights, problem.grid.cost_weights
    c, p, n_max = problem.n_contexts, problem.n_prompts, problem.n_max
    sums, sumsq = np.zeros((c, p, n_max)), np.zeros((c, p, n_max))
    counts = np.zeros((p, n_max), dtype=np.int64)
    for o in observations:
        for g in range(o.count):
            z = _abstained(problem, o, g)
            for n in range(1, o.n + 1):
                values = []
                for sub in itertools.combinations(range(o.n), n):
                    part = list(sub)
                    if problem.aggregator == "bon":
                        values.append(bon_utility(o.scores[g, part], w, cw))
                    elif z >= 0:
                        values.append(w.reshape(-1) * mv_credit_abstain(o.labels[g, part],
                                                                        o.gold[g], z)
                                      - o.scores[g, part, -1].sum() * np.asarray(cw).reshape(-1))
                    else:
                        values.append(mv_utility(o.labels[g, part], o.gold[g],
                                                 o.scores[g, part, -1], w, cw))
                mean = np.mean(values, axis=0)
                sums[:, o.prompt, n - 1] += (o.n // n) * mean
                sumsq[:, o.prompt, n - 1] += (o.n // n) * mean * mean
                counts[o.prompt, n - 1] += o.n // n
    return sums, sumsq, counts


def mv_credit_abstain(labels, gold, no_answer):  # type: ignore[no-untyped-def]
    """Eq. 2's credit under the abstain rule, one group at a time: "no answer" (the label
    ``no_answer``; -1 for none) is dropped from the vote while any label gives an answer, so it
    wins only a group where every label abstains. labels [n], gold, no_answer ints -> float."""
    votes: dict[int, int] = {}
    for a in list(labels):
        votes[int(a)] = votes.get(int(a), 0) + 1
    if any(a != no_answer for a in votes):
        votes.pop(int(no_answer), None)
    top = max(votes.values())
    winners = [a for a, v in votes.items() if v == top]
    return 1.0 / len(winners) if int(gold) in winners else 0.0


def decided_paid_abstain(labels, wave, no_answer):  # type: ignore[no-untyped-def]
    """Completions paid by the decided rule under the abstain rule, one group at a time: as
    :func:`decided_paid`, with the votes for "no answer" never counted (it cannot win while an
    answer may still come)."""
    n, t = len(labels), 0
    while t < n:
        t = min(t + wave, n)
        votes: dict[int, int] = {}
        for a in list(labels)[:t]:
            if int(a) != no_answer:
                votes[int(a)] = votes.get(int(a), 0) + 1
        top = [*sorted(votes.values(), reverse=True), 0, 0]
        if top[0] - top[1] > n - t:
            break
    return t


def sequences(n: int, probs):  # type: ignore[no-untyped-def]
    """Every sequence of n answers over the categories of ``probs`` [L], with its probability."""
    for seq in itertools.product(range(len(probs)), repeat=n):
        yield np.array(seq), float(np.prod([probs[a] for a in seq]))


def brute_latency(q: list[float], n: int, wave: int, values: list[float],
                  probs: list[float], concurrency: int | None) -> float:
    """E[latency] over :func:`brute_law`."""
    return sum(p * v for v, p in brute_law(q, n, wave, values, probs, concurrency).items())


def brute_law(q: list[float], n: int, wave: int, values: list[float],
              probs: list[float], concurrency: int | None,
              abstain: int | None = None) -> dict[float, float]:
    """The law of the latency, {seconds: probability}, as serving draws the arm: every
    answer of samples 0..n-1 from q and every time of each, by brute force. Completions are
    asked for in rounds of min(wave, concurrency); a round's completions come back in the
    order of their times; after each one the decided rule is checked (leader ahead of every
    other answer by more than the answers not back yet; the category ``abstain``, "no
    answer", never counted), and once it holds the caller has its answer then."""
    width = wave if concurrency is None else min(wave, concurrency)
    law: dict[float, float] = {}
    for answers in itertools.product(range(len(q)), repeat=n):
        p_answers = math.prod(q[a] for a in answers)
        if p_answers == 0:
            continue
        for times in itertools.product(range(len(values)), repeat=n):
            p_times = math.prod(probs[k] for k in times)
            seconds, back, decided = 0.0, [], False
            for start in range(0, n, width):
                members = sorted(range(start, min(start + width, n)),
                                 key=lambda i: (values[times[i]], i))
                for i in members:
                    back.append(answers[i])
                    counts = sorted((back.count(a) for a in range(len(q)) if a != abstain),
                                    reverse=True) + [0, 0]
                    if counts[0] - counts[1] > n - len(back):
                        decided = True
                        seconds += values[times[i]]
                        break
                if decided:
                    break
                seconds += max(values[times[i]] for i in members)
            key = round(seconds, 9)
            law[key] = law.get(key, 0.0) + p_answers * p_times
    return law
