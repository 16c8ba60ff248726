"""What ``iapo optimize`` tells its user: per context, the chosen arm's quality apart from its
cost, what it pays per query, the runner-ups and how sure the choice is; as report.json,
report.md, figures (PNG and SVG) and one self-contained report.html.

Every figure comes from :mod:`iapo.report` (one definition, written into the report as
``definitions``): training figures from the learner's own estimator on every training
completion of the run (so the chosen arm's Q is policy.json's ``q_hat``), test figures from the
blocks of the test groups (one group of the prompt's largest chosen N per test query).
Tokens per query are the completions paid times the mean prompt and completion tokens of the
prompt's completions this run drew; money is those tokens at the task's ``[pricing]``.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iapo.live.task import Task
from iapo.problem import Choice, Problem
from iapo.report import MARGIN, ArmTable, Confidence

FloatArray = npt.NDArray[np.float64]

RUNNER_UPS = 3
TRUNCATION_WARN = 0.10  # the share of cut completions above which the report suggests more

DEFINITIONS = {
    "q": "Q = quality - cost weight x cost (the paper's utility, Eqs. 1-2); cost: the "
         "completions paid x the cost of one, its mean completion tokens x cost_scale (in "
         "training, as the learner saw it when each completion arrived)",
    "train": "training figures: the learner's estimator ({estimator}) fed every training "
             "completion of this run; the chosen arm's Q is policy.json's q_hat. It is an "
             "estimate after selection and can sit far from the true Q, its intervals with it "
             "(the model leans on its prior, the chosen arm's blocks are the luckiest: "
             "docs/report.md); the test figures are the unbiased check",
    "test": "test figures: blocks of N completions of the test groups (samples 0..N-1 of the "
            "prompt's largest chosen N on each test query); their 95% interval is normal, "
            "from the blocks' variance",
    "quality": "quality: the same estimate with the cost weight 0 (majority voting: the "
               "accuracy, a vote tied between t answers counting 1/t when the gold is one)",
    "completions": "completions: the completions paid per query (N, or fewer when the arm "
                   "stops once the vote is decided); saving: N minus them",
    "tokens": "tokens: completions x the mean prompt and completion tokens of the prompt's "
              "completions this run drew; money: those tokens at [pricing] (per million)",
    "ci95": "95% intervals: 2.5 and 97.5 percentiles of Q over {rounds} bootstrap resamples "
            "of the training queries (each query with all its groups of every prompt)",
    "p_best": "P(best): the share of resamples where the arm has its context's highest Q "
              "(ties count); P(within {margin}): where the chosen arm is at most {margin} "
              "below the highest. Not calibrated: on the simulated environments they miss "
              "the observed frequency by more than 0.05 (docs/report.md); read them as a "
              "comparison of the arms, not as probabilities",
}


# where every answer is right or its query's one wrong answer, confidence is a posterior
POSTERIOR_DEFINITIONS = {
    "ci95": "95% intervals: 2.5 and 97.5 percentiles of the arm's true Q over {rounds} draws "
            "of a hierarchical posterior (the logit of each query's chance of a right answer "
            "normal across queries, the prompts' normals drawn from one fitted prior; "
            "iapo.posterior). They need not contain the training Q, which is the learner's "
            "estimate with its selection and its model's prior",
    "p_best": "P(best): the share of posterior draws where the arm has its context's highest "
              "Q (ties count); P(within {margin}): where the chosen arm is at most {margin} "
              "below the highest. On synth-bernoulli, PSST's P(best) and P(within) are "
              "calibrated within 0.05; psst-auto's P(within 0.02) and P(within 0.05) are "
              "too, and its P(best) and P(within 0.01) are overconfident by about 0.06 and "
              "0.05 (docs/report.md)",
}


def definitions(estimator: str, conf: Confidence) -> dict[str, str]:
    """The report's definitions, for the estimator and the confidence method of the run."""
    texts = dict(DEFINITIONS)
    if conf.method == "posterior":
        texts.update(POSTERIOR_DEFINITIONS)
    return {k: v.format(estimator=estimator, rounds=conf.rounds, margin=f"{conf.margins[0]:g}")
            for k, v in texts.items()}


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def arm_figures(table: ArmTable, i: int, prompt: int, n: int,
                tokens: npt.NDArray[np.float64], task: Task) -> dict[str, Any]:
    """Q, quality, completions, saving, tokens and money per query of arm (prompt, n) in
    context i; ``tokens`` [P, 2] is each prompt's mean prompt and completion tokens."""
    paid = float(table.paid[prompt, n - 1])
    tin, tout = paid * tokens[prompt, 0], paid * tokens[prompt, 1]
    money = None
    if task.pricing is not None and math.isfinite(paid):
        money = task.pricing.money(tin, tout)
    return {"q": _num(table.q[i, prompt, n - 1]),
            "quality": _num(table.quality[i, prompt, n - 1]),
            "cost": _num(table.cost[prompt, n - 1]),
            "completions": _num(paid), "saving": _num(n - paid),
            "tokens": _num(tin + tout), "money": money}


def all_arms(task: Task, table: ArmTable, conf: Confidence,
             tokens: npt.NDArray[np.float64]) -> list[list[dict[str, Any]]]:
    """Every arm's training figures in the first context, [P][N] (completions, tokens and
    money are the same in every context; Q and quality are the first context's)."""
    return [[{**arm_figures(table, 0, p, n, tokens, task),
              "q_ci95": [_num(conf.low[0, p, n - 1]), _num(conf.high[0, p, n - 1])]}
             for n in range(1, table.q.shape[2] + 1)] for p in range(table.q.shape[1])]


def contexts(task: Task, problem: Problem, choices: Sequence[Choice], train: ArmTable,
             test: ArmTable, test_ci: Sequence[list[float | None]], conf: Confidence,
             tokens: npt.NDArray[np.float64], estimator: str) -> dict[str, Any]:
    """The report's per-context section and its definitions; ``test_ci`` is each context's
    95% interval of the chosen arm's test Q (normal, from the test blocks' variance)."""
    names = [p.name for p in task.prompts]
    rows = []
    n_max = problem.n_max
    for i, (key, ch) in enumerate(zip(problem.grid.keys, choices, strict=True)):
        row: dict[str, Any] = {"context": key, "prompt": names[ch.prompt],
                               "prompt_index": ch.prompt, "n": ch.n,
                               "q_hat": _num(ch.q_hat)}
        if problem.needs_latency:  # the width, the predicted latency and the limits
            context = problem.grid.contexts[i]
            row.update(wave=ch.wave, latency=ch.latency, limit=context.latency_limit,
                       p95_limit=context.latency_p95)
        if ch.n is None:  # N uniform in 1..N_max: no single arm to describe
            row.update(train=None, test=None, runner_ups=[], p_best=None, p_within=None)
            rows.append(row)
            continue
        row["train"] = {**arm_figures(train, i, ch.prompt, ch.n, tokens, task),
                        "q_ci95": [_num(conf.low[i, ch.prompt, ch.n - 1]),
                                   _num(conf.high[i, ch.prompt, ch.n - 1])]}
        row["test"] = {**arm_figures(test, i, ch.prompt, ch.n, tokens, task),
                       "q_ci95": test_ci[i]}
        row["p_best"] = _num(conf.p_best[i, ch.prompt, ch.n - 1])
        row["p_within"] = {f"{m:g}": _num(conf.p_within[j, i])
                           for j, m in enumerate(conf.margins)}
        order = np.argsort(-np.where(np.isfinite(train.q[i]), train.q[i], -np.inf),
                           axis=None, kind="stable")
        ups = []
        for flat in order:
            p, n = divmod(int(flat), n_max)
            if (p, n + 1) == (ch.prompt, ch.n) or not math.isfinite(train.q[i, p, n]):
                continue
            ups.append({"prompt": names[p], "prompt_index": p, "n": n + 1,
                        **arm_figures(train, i, p, n + 1, tokens, task),
                        "q_ci95": [_num(conf.low[i, p, n]), _num(conf.high[i, p, n])],
                        "p_best": _num(conf.p_best[i, p, n])})
            if len(ups) == RUNNER_UPS:
                break
        row["runner_ups"] = ups
        rows.append(row)
    return {"policy": rows, "confidence": conf.method,
            "definitions": definitions(estimator, conf)}


# ---------------------------------------------------------------- figures


def figures(report: dict[str, Any], problem: Problem, train: ArmTable, conf: Confidence,
            out: Path, frontier: tuple[list[int | None], FloatArray, FloatArray] | None = None
            ) -> list[Path]:
    """quality-vs-n and quality-vs-cost, one panel per context, PNG and SVG, into ``out``;
    with ``frontier`` (:meth:`iapo.model.ModelQTable.width_table`), quality-vs-latency."""
    from matplotlib.ticker import MaxNLocator

    from iapo.bench.plots import plt, save_figure

    out.mkdir(parents=True, exist_ok=True)
    rows = report["policy"]
    names = problem.prompts
    c = len(rows)
    n = np.arange(1, problem.n_max + 1)
    written = []
    fig, axes = plt.subplots(1, c, figsize=(4.2 * c, 3.4), squeeze=False)
    for i, (ax, row) in enumerate(zip(axes[0], rows, strict=True)):
        for p, name in enumerate(names):
            q = train.q[i, p]
            if not np.isfinite(q).any():
                continue
            line = ax.plot(n, q, marker=".", label=name)[0]
            ax.fill_between(n, conf.low[i, p], conf.high[i, p], color=line.get_color(),
                            alpha=0.15, linewidth=0)
        if row["n"] is not None:
            ax.plot([row["n"]], [train.q[i, row["prompt_index"], row["n"] - 1]], marker="*",
                    markersize=14, color="black", linestyle="none", label="chosen")
        ax.set_title(row["context"], fontsize=9)
        ax.set_xlabel("N (completions aggregated)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"estimated Q (band: 95% {conf.method} interval)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{report['task']}: Q against N per prompt (training estimate)", fontsize=10)
    written += save_figure(fig, out / "quality-vs-n")

    money = report.get("pricing") is not None
    fig, axes = plt.subplots(1, c, figsize=(4.2 * c, 3.4), squeeze=False)
    for i, (ax, row) in enumerate(zip(axes[0], rows, strict=True)):
        for p, name in enumerate(names):
            quality = train.quality[i, p]
            ok = np.isfinite(quality)
            if not ok.any():
                continue
            x = np.array([_cost_axis(report, p, int(k)) for k in n])
            ax.plot(x[ok], quality[ok], marker=".", linestyle="-", alpha=0.8, label=name)
        if row["n"] is not None and row["train"] is not None:
            ax.plot([_cost_axis(report, row["prompt_index"], row["n"])],
                    [row["train"]["quality"]], marker="*", markersize=14, color="black",
                    linestyle="none", label="chosen")
        ax.set_title(row["context"], fontsize=9)
        ax.set_xlabel("money per query" if money else "completions paid per query")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("quality (accuracy or task value)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{report['task']}: quality against cost, every arm (chosen: star)",
                 fontsize=10)
    written += save_figure(fig, out / "quality-vs-cost")
    if frontier is not None:
        written += _latency_figure(report, train, frontier, out)
    return written


def _latency_figure(report: dict[str, Any], train: ArmTable,
                    frontier: tuple[list[int | None], FloatArray, FloatArray],
                    out: Path) -> list[Path]:
    """quality-vs-latency: per context, every arm (p, N, W) at its predicted latency, coloured
    by its completions paid; the frontier (the arms no other beats in both); the chosen arm
    and the context's latency limit."""
    from iapo.bench.plots import plt, save_figure

    widths, paid, latency = frontier  # [P, N, S] each
    rows = report["policy"]
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.4), squeeze=False)
    for i, (ax, row) in enumerate(zip(axes[0], rows, strict=True)):
        quality = np.broadcast_to(train.quality[i][..., None], latency.shape)
        ok = np.isfinite(quality) & np.isfinite(latency)
        dots = ax.scatter(latency[ok], quality[ok], c=paid[ok], s=9, cmap="viridis")
        order = np.argsort(latency[ok], kind="stable")
        x, y = latency[ok][order], quality[ok][order]
        best = np.maximum.accumulate(y) if y.size else y
        edge = np.concatenate([[True], best[1:] > best[:-1]]) if y.size else y.astype(bool)
        ax.step(x[edge], best[edge], where="post", color="red", linewidth=1, label="frontier")
        chosen = row.get("latency")
        if chosen is not None and row["train"] is not None:
            ax.plot([chosen], [row["train"]["quality"]], marker="*", markersize=14,
                    color="black", linestyle="none", label="chosen")
        if row.get("limit") is not None:
            ax.axvline(row["limit"], color="grey", linestyle="--", label="limit")
        ax.set_title(row["context"], fontsize=9)
        ax.set_xlabel("predicted expected latency (s)")
        ax.grid(alpha=0.3)
    fig.colorbar(dots, ax=axes[0][-1], label="completions paid per query")
    axes[0][0].set_ylabel("quality (accuracy or task value)")
    axes[0][-1].legend(fontsize=7, loc="best")
    shown = ", ".join("all N" if w is None else str(w) for w in widths)
    fig.suptitle(f"{report['task']}: quality against latency, every (prompt, N, W), "
                 f"W in {shown}", fontsize=10)
    return save_figure(fig, out / "quality-vs-latency")


def _cost_axis(report: dict[str, Any], prompt: int, n: int) -> float:
    """The x of arm (prompt, n) on the quality-vs-cost plot: money if priced, else
    completions paid per query."""
    arm = report["arms"][prompt][n - 1]
    v = arm["money"] if report.get("pricing") is not None else arm["completions"]
    return float("nan") if v is None else float(v)


# ---------------------------------------------------------------- text


def _f(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ci(ci: list[float | None] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f" [{ci[0]:.4f}, {ci[1]:.4f}]"


def _money(v: float | None) -> str:
    return "-" if v is None else f"{v:.6f}"


def context_table(r: dict[str, Any]) -> list[list[str]]:
    """The report's main table: header row, then one row per context."""
    head = ["context", "prompt", "N", "Q train [95% CI]", "Q test [95% CI]", "accuracy / quality "
            "(train, test)", "completions per query (saving)", "tokens per query",
            "money per query", "P(best)", f"P(within {MARGIN:g})"]
    rows = [head]
    for c in r["policy"]:
        if c["train"] is None:
            rows.append([c["context"], c["prompt"], "random", _f(c["q_hat"]), "n/a", "n/a",
                         "n/a", "n/a", "-", "n/a", "n/a"])
            continue
        tr, te = c["train"], c["test"]
        within = next(iter(c["p_within"].values()), None)
        rows.append([c["context"], c["prompt"], str(c["n"]),
                     _f(tr["q"]) + _ci(tr["q_ci95"]), _f(te["q"]) + _ci(te["q_ci95"]),
                     f"{_f(tr['quality'], 3)}, {_f(te['quality'], 3)}",
                     f"{_f(tr['completions'], 2)} ({_f(tr['saving'], 2)})",
                     _f(tr["tokens"], 0), _money(tr["money"]),
                     _f(c["p_best"], 2), _f(within, 2)])
    return rows


def runner_up_table(c: dict[str, Any]) -> list[list[str]]:
    rows = [["prompt", "N", "Q train [95% CI]", "quality", "completions", "P(best)"]]
    rows += [[u["prompt"], str(u["n"]), _f(u["q"]) + _ci(u["q_ci95"]), _f(u["quality"], 3),
              _f(u["completions"], 2), _f(u["p_best"], 2)] for u in c["runner_ups"]]
    return rows


def md_table(rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0]),
            *["| " + " | ".join(x.replace("|", "\\|") for x in row) + " |" for row in rows[1:]]]


def truncation_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Per prompt: its max_tokens, the completions this run used and how many were cut."""
    return [["prompt", "max_tokens", "completions", "truncated", "share"]] + [
        [t["prompt"], "-" if t["max_tokens"] is None else str(t["max_tokens"]),
         str(t["completions"]), str(t["truncated"]), f"{t['share']:.1%}"] for t in rows]


def truncation_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The report's lines on completions cut by max_tokens, and what to do about them."""
    if not rows:
        return []
    lines = ["Completions cut by max_tokens (finish reason \"length\"; a cut one counts only "
             "an explicit answer unless aggregator.truncated = \"any\"):", ""]
    lines += md_table(truncation_table(rows))
    for t in rows:
        if t["share"] > TRUNCATION_WARN:
            limit = t["max_tokens"]
            more = f"(to {2 * limit} or more)" if limit is not None else "(set one)"
            lines += ["", f"Prompt '{t['prompt']}': {t['share']:.0%} of its completions hit "
                          f"max_tokens = {limit}; give it a larger max_tokens {more}, or "
                          "ask for a shorter answer."]
    return lines


def markdown(r: dict[str, Any], figure_names: Sequence[str] = ()) -> str:
    t = r["training"]
    e = r["evaluation"]
    lines = [
        f"# {r['task']}: {r['learner']} with T = {r['budget']}", "",
        f"Training: {t['completions_used']} completions used ({t['completions_paid']} paid "
        f"by this run, {t['completions_replayed']} replayed from the store; "
        f"{t['tokens_paid']} tokens, {t['scorer_failures']} scorer failures) on "
        f"{r['train_queries']} training queries.", "",
        *md_table(context_table(r)), "",
        f"Test-split ACR of the policy: {_f(r['test_acr'])}{_ci(r['test_acr_ci95'])} on "
        f"{r['test_queries']} test queries ({e['completions_used']} completions, "
        f"{e['completions_paid']} paid).",
    ]
    for c in r["policy"]:
        if c["runner_ups"]:
            lines += ["", f"Runner-ups in context {c['context']} (chosen: {c['prompt']}, "
                          f"N = {c['n']}):", "", *md_table(runner_up_table(c))]
    lines += ["", "Definitions:", "", *[f"- {v}" for v in r["definitions"].values()]]
    if figure_names:
        lines += ["", *[f"![{Path(name).stem}]({name})" for name in figure_names]]
    trunc = truncation_lines(r.get("truncated", []))
    if trunc:
        lines += ["", *trunc]
    b = r.get("batch")
    if b:
        lines += ["", f"Batch jobs ({b['mode']}, {b['submissions']} submitted by this run): "
                      f"{b['completions_batch']} of the {b['completions_paid']} completions "
                      f"paid, at {b['price']:g} of the synchronous price; the cost is "
                      f"{b['cost_batch']:.6g} {b['unit']} against {b['cost_synchronous']:.6g} "
                      "synchronously."]
    j = r.get("judge", {})
    if j.get("requests") or j.get("cached"):
        lines += ["", f"Judge scorer (not part of the policy's cost): {j['requests']} requests "
                      f"paid, {j['cached']} judgements from the store's cache, "
                      f"{j['prompt_tokens']} prompt and {j['completion_tokens']} completion "
                      "tokens."]
    chosen = r.get("estimator_choice")
    if chosen:
        lines += ["", f"Estimator that decided: {chosen['reason']}."]
    if r["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in r["notes"]]]
    lines += ["", "Runs into this folder (what each paid and replayed, training and test):", ""]
    lines += md_table([["run", "command", "task", "status", "paid", "replayed", "tokens paid"]]
                       + [[str(h["id"]), h["command"], h["task"], h["status"], str(h["paid"]),
                           str(h["replayed"]), str(h["tokens"])] for h in r["runs"]])
    return "\n".join(lines) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
        "padding:.3em .6em;text-align:left}th{background:#eee}img{max-width:100%}"
        "li{margin:.2em 0}")


def _html_table(rows: list[list[str]], cls: str) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(x)}</th>" for x in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(x)}</td>" for x in row) + "</tr>"
                   for row in rows[1:])
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def html_page(r: dict[str, Any], pngs: Sequence[Path]) -> str:
    """report.html: the tables and the figures (PNG inlined as data: URIs), no external
    asset and no script."""
    esc = html.escape
    t, e = r["training"], r["evaluation"]
    parts = [f"<h1>{esc(r['task'])}: {esc(r['learner'])} with T = {r['budget']}</h1>",
             f"<p>Training: {t['completions_used']} completions used "
             f"({t['completions_paid']} paid, {t['completions_replayed']} replayed) on "
             f"{r['train_queries']} training queries. Test-split ACR: "
             f"{esc(_f(r['test_acr']) + _ci(r['test_acr_ci95']))} on {r['test_queries']} "
             f"test queries ({e['completions_used']} completions).</p>",
             "<h2>The policy, per context</h2>", _html_table(context_table(r), "policy")]
    for c in r["policy"]:
        if c["runner_ups"]:
            parts += [f"<h3>Runner-ups in context {esc(c['context'])}</h3>",
                      _html_table(runner_up_table(c), "runner-ups")]
    parts.append("<h2>Figures</h2>")
    for png in pngs:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f'<p><img alt="{esc(png.stem)}" src="data:image/png;base64,{data}"></p>')
    parts += ["<h2>Definitions</h2>", "<ul>",
              *[f"<li>{esc(v)}</li>" for v in r["definitions"].values()], "</ul>"]
    trunc = r.get("truncated", [])
    if trunc:
        parts += ["<h2>Completions cut by max_tokens</h2>",
                  _html_table(truncation_table(trunc), "truncated")]
    chosen = r.get("estimator_choice")
    if chosen:
        parts.append(f"<h2>Estimator that decided</h2><p>{esc(chosen['reason'])}.</p>")
    if r["notes"]:
        parts += ["<h2>Notes</h2><ul>", *[f"<li>{esc(n)}</li>" for n in r["notes"]], "</ul>"]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(r['task'])}: iapo report</title><style>{_CSS}</style></head><body>"
            + "".join(parts) + "</body></html>\n")
