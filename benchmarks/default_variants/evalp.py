import sys

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))

from halving import prompt_halving

from iapo.bench.runner import run_oracle, run_split
from iapo.envs.base import acr, optimal_acr
from iapo.learners import get_learner

env_name, budget, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names = sys.argv[4].split(",")
res = {k: [] for k in names}
for run in range(runs):
    env, train, q = run_split(env_name, 0, run, 0.2)
    probs = env.problem.grid.probabilities
    best = optimal_acr(q, probs)
    for name in names:
        oracle, rng = run_oracle(env, train, "psst-model", budget, 0, run)  # same oracle stream for all
        if name.startswith("ph"):
            kw = dict(x.split("=") for x in name.split(":")[1:])
            kw = {k: (float(v) if "." in v else (v == "1") if k == "model" else int(v)) for k, v in kw.items()}
            result = prompt_halving(env.problem, oracle, budget, rng, **kw)
        else:
            result = get_learner(name).learner(env.problem, oracle, budget, rng)
        res[name].append(best - acr(q, result.choices, probs))
for name in names:
    x = np.array(res[name]); print(f"{env_name} T={budget} {name:30s} {x.mean():.4f} ({x.std()/np.sqrt(runs):.4f})")
