"""Named environments. ``get_environment`` also takes the path of a tabular ``.npz`` file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from iapo.envs.base import Environment
from iapo.envs.synthetic import synth_bernoulli, synth_categorical
from iapo.envs.tabular import environment_from_arrays, load_environment


class UnknownEnvironmentError(KeyError):
    """No environment has that name."""

    def __str__(self) -> str:
        return str(self.args[0])


def _packaged(name: str, file: str, description: str) -> Callable[[int | None], Environment]:
    def make(seed: int | None = None) -> Environment:
        with resources.files("iapo.envs").joinpath("data", file).open("rb") as fh:
            with np.load(fh, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        return environment_from_arrays(name, data, description, source=file)

    return make


@dataclass(frozen=True)
class EnvironmentSpec:
    name: str
    summary: str
    make: Callable[[int | None], Environment]
    synthetic: bool = False


ENVIRONMENTS: dict[str, EnvironmentSpec] = {
    spec.name: spec
    for spec in [
        EnvironmentSpec(
            "math",
            "MATH under majority voting: Llama-3.3-70B-Instruct, 128 answers per pair "
            "(the IAPO paper's data)",
            _packaged("math", "math.npz", "MATH (Hendrycks et al. 2021), MV; data of the "
                      "IAPO paper (Mahmud et al.), 25 prompts x 316 queries x 128 answers"),
        ),
        EnvironmentSpec(
            "commonsenseqa",
            "CommonsenseQA under majority voting: Llama-3.3-70B-Instruct, 128 answers per "
            "pair (the IAPO paper's data)",
            _packaged("commonsenseqa", "commonsenseqa.npz", "CommonsenseQA (Talmor et al. "
                      "2019), MV; data of the IAPO paper (Mahmud et al.), 48 prompts x 1500 "
                      "queries x 128 answers"),
        ),
        EnvironmentSpec(
            "synth-bernoulli",
            "synthetic MV: steady against polarized prompts, generated from a seed",
            lambda seed: synth_bernoulli(0 if seed is None else seed, cacheable=seed is None),
            synthetic=True,
        ),
        EnvironmentSpec(
            "synth-categorical",
            "synthetic BoN: 2 objectives in [0, 4], diverse against focused prompts, from a seed",
            lambda seed: synth_categorical(0 if seed is None else seed, cacheable=seed is None),
            synthetic=True,
        ),
    ]
}


# Best-of-N environments from real completions (`make bon-envs` collects and exports them);
# listed once their files are in the package
for _name, _summary in [
    ("summarization-smollm2", "BoN: BIG-bench gem/xsum summaries by SmolLM2-135M-Instruct, "
                              "relevance and faithfulness scored offline"),
    ("helpful-harmless-smollm2", "BoN: BIG-bench hhh_alignment answers by SmolLM2-135M-Instruct, "
                                 "helpfulness and harmlessness scored offline"),
]:
    if resources.files("iapo.envs").joinpath("data", f"{_name}.npz").is_file():
        ENVIRONMENTS[_name] = EnvironmentSpec(
            _name, _summary, _packaged(_name, f"{_name}.npz", _summary))


def environment_names() -> list[str]:
    return list(ENVIRONMENTS)


def get_environment(name: str, seed: int | None = None) -> Environment:
    """The environment called ``name`` (or loaded from a ``.npz`` path).

    ``seed`` draws a fresh instance of a synthetic environment; the default instance is seed 0.
    """
    if name in ENVIRONMENTS:
        return ENVIRONMENTS[name].make(seed)
    if name.endswith(".npz") or Path(name).is_file():
        return load_environment(name)
    raise UnknownEnvironmentError(
        f"unknown environment '{name}'; known: {', '.join(ENVIRONMENTS)} "
        "(or the path of a tabular .npz file)"
    )
