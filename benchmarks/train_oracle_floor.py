"""The regret of a learner that knows the exact Q of the training queries: per context the
best arm on the training split, scored on the test split (the split's own noise; the floor
any learner trained on that split faces).

    .venv/bin/python benchmarks/train_oracle_floor.py ENV RUNS     # e.g. math 200
"""
import sys

import numpy as np

from iapo.bench.runner import run_split
from iapo.envs.base import acr, optimal_acr
from iapo.problem import Arm, Choice

env_name, runs = sys.argv[1], int(sys.argv[2])
out = []
for run in range(runs):
    env, train, q = run_split(env_name, 0, run, 0.2)
    qt = env.query_table(progress=False).q(env.problem, train)
    c, p, n = qt.shape
    choices = []
    for ci in range(c):
        arm = Arm.from_index(int(qt[ci].reshape(-1).argmax()), n)
        choices.append(Choice(arm.prompt, arm.n, 0.0, 0))
    probs = env.problem.grid.probabilities
    out.append(optimal_acr(q, probs) - acr(q, choices, probs))
print(env_name, "train-oracle regret", np.mean(out), "+-", np.std(out)/np.sqrt(runs))
