import sys

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import hybrid as H
from evalall import parse

from iapo.bench.runner import run_oracle, run_split
from iapo.learners import get_learner
from iapo.training import regret_parts

env_name, budget, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for spec in sys.argv[4].split(","):
    pr, sc = [], []
    for run in range(runs):
        env, train, q = run_split(env_name, 0, run, 0.2)
        oracle, rng = run_oracle(env, train, "psst-auto", budget, 0, run)
        if spec.startswith("hybrid"):
            name, kw = parse(spec)
            res = getattr(H, name)(env.problem, oracle, budget, rng, **kw)
        else:
            res = get_learner(spec).learner(env.problem, oracle, budget, rng)
        a, b = regret_parts(q, res.choices)
        w = env.problem.grid.probabilities
        pr.append(a @ w); sc.append(b @ w)
    print(f"{env_name} T={budget} {spec:32s} prompt {np.mean(pr):.4f} scale {np.mean(sc):.4f}")
