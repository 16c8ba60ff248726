"""Figures: the bench's learning curves (paper, Figures 4 and 5) and its motivating plots
(Figures 2(a) and 3)."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import binom  # noqa: E402

from iapo.envs import Environment  # noqa: E402
from iapo.exact import bon_expected_max  # noqa: E402

EXPLORATION = ("psst", "psst-k1", "psst-k4", "psst-k8", "uniform", "egreedy", "softmax", "ucb")
INFERENCE = ("psst", "psst-k1", "psst-k4", "psst-k8", "triple-n1", "triple-nrand")
BEYOND = ("psst", "psst-k1", "psst-k4", "psst-k8", "psst:subsets", "psst-k4:subsets",
          "psst-model", "psst-model4")
DEFAULT = ("psst-auto", "psst", "psst-k1", "psst-k8", "uniform", "psst-model", "psst-model4")
FIGURES = {"exploration": EXPLORATION, "inference": INFERENCE, "beyond": BEYOND,
           "default": DEFAULT}
_STYLE = {
    "psst": ("#000000", "-", "o"),
    "psst-k1": ("#1f77b4", "--", "v"),
    "psst-k4": ("#2ca02c", "--", "^"),
    "psst-k8": ("#17becf", "--", "s"),
    "uniform": ("#7f7f7f", ":", "D"),
    "egreedy": ("#ff7f0e", "-.", "x"),
    "softmax": ("#9467bd", "-.", "+"),
    "ucb": ("#d62728", "-.", "*"),
    "triple-n1": ("#8c564b", ":", "<"),
    "triple-nrand": ("#e377c2", ":", ">"),
    "psst:subsets": ("#555555", "-", "h"),
    "psst-k4:subsets": ("#98df8a", "-", "p"),
    "psst-model": ("#d62728", "-", "P"),
    "psst-model4": ("#ff7f0e", "-", "X"),
    "psst-auto": ("#6a3d9a", "-", "*"),
}
_TITLES = {
    "exploration": "exploration strategies (paper, Fig. 4)",
    "inference": "inference-awareness (paper, Fig. 5)",
    "beyond": "beyond the paper: estimators and models",
    "default": "the default learner, psst-auto, against the best others",
}


def figure_stem(env: str) -> str:
    """The start of ``env``'s figure file names: an environment given as a path loses its
    folders and its .npz suffix, and characters unsafe in a file name become '_'."""
    base = re.split(r"[/\\]", env)[-1].removesuffix(".npz")
    return re.sub(r"[^\w.=+-]+", "_", base).strip("._") or "env"


def figure_stems(envs: Sequence[str]) -> dict[str, str]:
    """``figure_stem`` of each environment, made distinct (-2, -3, ...) where two collide,
    e.g. a/env.npz and b/env.npz."""
    stems: dict[str, str] = {}
    for env in envs:
        stem, k = figure_stem(env), 2
        while stem in stems.values():
            stem, k = f"{figure_stem(env)}-{k}", k + 1
        stems[env] = stem
    return stems


def save_figure(fig: Any, stem: Path) -> list[Path]:
    # appended, not with_suffix: a stem may hold a dot (my.env-exploration)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    compact_png(buf, paths[0])
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def compact_png(source: Path | io.BytesIO, path: Path) -> None:
    """Write the PNG ``source`` to ``path`` with a palette of 256 colours: a line plot has
    few, and the file is about a quarter of matplotlib's RGBA one (the figures docs/ keeps)."""
    from PIL import Image

    with Image.open(source) as im:
        rgb = im.convert("RGB") if im.mode != "RGBA" else _on_white(im)
    rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)


def _on_white(im: Any) -> Any:
    from PIL import Image

    white = Image.new("RGB", im.size, "white")
    white.paste(im, mask=im.getchannel("A"))
    return white


def learning_curves(
    summary: Sequence[Mapping[str, Any]], env: str, out: Path, metric: str = "acr",
    stem: str | None = None,
) -> list[Path]:
    """Figures for ``env``: mean ``metric`` (acr or regret) against budget with SEM bands,
    log-scaled budget axis, written to ``out`` as ``stem``-exploration and ``stem``-inference,
    ``stem``-beyond when a learner beyond the paper ran and ``stem``-default when psst-auto
    did (``stem`` by default ``figure_stem(env)``). Returns the files written (PNG and SVG of
    each)."""
    stem = stem or figure_stem(env)
    rows = [s for s in summary if s["env"] == env]
    written: list[Path] = []
    for kind, learners in FIGURES.items():
        present = [ln for ln in learners if any(s["learner"] == ln for s in rows)]
        if not present or (kind == "beyond" and not set(present) - set(EXPLORATION)):
            continue  # the beyond figure only when something beyond the paper ran
        if kind == "default" and "psst-auto" not in present:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for ln in present:
            pts = sorted((int(s["budget"]), s[f"mean_{metric}"], s[f"sem_{metric}"])
                         for s in rows if s["learner"] == ln)
            b = np.array([p[0] for p in pts], dtype=float)
            m = np.array([p[1] for p in pts])
            e = np.nan_to_num(np.array([p[2] for p in pts]))
            color, ls, marker = _STYLE.get(ln, ("#333333", "-", "."))
            ax.plot(b, m, ls, color=color, marker=marker, label=ln, lw=1.6, ms=5)
            ax.fill_between(b, m - e, m + e, color=color, alpha=0.18, lw=0)
        ax.set_xscale("log")
        budgets = sorted({int(s["budget"]) for s in rows})
        ax.set_xticks(budgets)
        ax.set_xticklabels([f"{b // 1000}k" if b >= 1000 else str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("training budget T (completions)")
        ax.set_ylabel("test ACR" if metric == "acr" else "regret (test oracle ACR - ACR)")
        runs = max(int(s["runs"]) for s in rows)
        ax.set_title(f"{env}: {_TITLES[kind]}, mean ± SEM over {runs} runs", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        written += save_figure(fig, out / f"{stem}-{kind}")
    return written


def prompt_flip_figure(env: Environment, out: Path, prompts: Sequence[int] | None = None,
                       n_max: int = 16) -> list[Path]:
    """Paper, Figure 2(a): MV accuracy against total decoding cost (N x cost per completion)
    for N = 1..n_max, one curve per prompt, averaged over all queries. By default the prompts
    whose accuracy ranking changes most between N = 1 and N = n_max (and the best at N = 1)."""
    table = env.query_table(progress=True)
    acc = table.task[:, :, 0, :n_max].mean(axis=1)  # [P, n_max]; MV weight 1 on correctness
    cost = table.cost.mean(axis=1)  # [P]
    if prompts is None:
        prompts = _flipping_prompts(acc)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    n = np.arange(1, n_max + 1)
    colors = ["#2ca02c", "#1f77b4", "#d62728", "#ff7f0e", "#9467bd"]
    for i, p in enumerate(prompts):
        ax.plot(n * cost[p], acc[p], "-o", ms=3, color=colors[i % len(colors)],
                label=f"prompt {p} ({env.problem.prompts[p]})")
    ax.set_xlabel("total decoding cost per query (N x cost per completion)")
    ax.set_ylabel("MV accuracy (exact)")
    ax.set_title(f"{env.name}: majority voting, N = 1..{n_max} (paper, Fig. 2a)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out / f"{figure_stem(env.name)}-prompt-flip")


def _flipping_prompts(acc: np.ndarray, k: int = 3) -> list[int]:
    """The best prompt at N = 1, the best at the largest N, and one more that changes rank."""
    first, last = acc[:, 0], acc[:, -1]
    chosen = [int(first.argmax()), int(last.argmax())]
    rank_gain = np.argsort(np.argsort(-first)) - np.argsort(np.argsort(-last))
    for p in np.argsort(-rank_gain):
        if len(chosen) >= k:
            break
        if int(p) not in chosen:
            chosen.append(int(p))
    return list(dict.fromkeys(chosen))


def theta_figure(out: Path, ns: Sequence[int] = (1, 3, 5, 11, 21)) -> list[Path]:
    """Paper, Figure 3: expected utility (no cost) against the single-sample success
    probability theta, for several N: MV (binary answers, ties credited 1/2) and BoN
    (Bernoulli utility: E[max of N] = 1 - (1 - theta)^N)."""
    theta = np.linspace(0.0, 1.0, 201)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8), sharey=True)
    for n in ns:
        k = np.arange(n + 1)
        pmf = binom.pmf(k[None, :], n, theta[:, None])  # [theta, k]
        credit = np.where(2 * k > n, 1.0, np.where(2 * k == n, 0.5, 0.0))
        left.plot(theta, pmf @ credit, label=f"N = {n}")
        values = np.tile([0.0, 1.0], (theta.size, 1))
        probs = np.stack([1 - theta, theta], axis=1)
        right.plot(theta, bon_expected_max(values, probs, n)[:, -1], label=f"N = {n}")
    left.set_title("majority voting", fontsize=10)
    right.set_title("Best-of-N", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("single-sample success probability θ")
        ax.grid(True, alpha=0.3)
    left.set_ylabel("expected utility")
    right.legend(fontsize=8)
    fig.suptitle("Expected utility against θ (paper, Fig. 3)", fontsize=11)
    return save_figure(fig, out / "theta-utility")
