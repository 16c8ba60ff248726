import collections
import csv
import statistics
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import halving as HV
import hybrid as H
from joblib import Parallel, delayed

from iapo.bench.runner import run_oracle, run_split
from iapo.envs.base import acr, optimal_acr

ENVS = ["math", "commonsenseqa", "synth-bernoulli", "synth-categorical", "helpful-harmless-smollm2", "summarization-smollm2"]
BUDGETS = [1000, 2000, 5000, 10000, 20000]

def parse(spec):
    name, *kv = spec.split(":")
    kw = {}
    for x in kv:
        k, v = x.split("=")
        kw[k] = v if k == "final" else (float(v) if "." in v else int(v))
    return name, kw

def one(env_name, budget, run, spec):
    env, train, q = run_split(env_name, 0, run, 0.2)
    oracle, rng = run_oracle(env, train, "psst-auto", budget, 0, run)
    name, kw = parse(spec)
    fn = {"hybrid": H.hybrid, "hybrid2": H.hybrid2, "hybrid3": H.hybrid3, "hybrid4": H.hybrid4, "ph": HV.prompt_halving}[name]
    result = fn(env.problem, oracle, budget, rng, **kw)
    probs = env.problem.grid.probabilities
    return optimal_acr(q, probs) - acr(q, result.choices, probs)

def reference():
    rows = collections.defaultdict(list)
    for f in ["docs/beyond/runs.csv", "docs/bench-real/runs.csv", "docs/bench/runs.csv"]:
        for r in csv.DictReader(open(__import__("pathlib").Path(__file__).resolve().parents[2] / f)):
            rows[(r["env"], int(r["budget"]), r["learner"])].append(float(r["regret"]))
    best = {}
    for (e, b, l), v in rows.items():
        m = statistics.mean(v)
        if (e, b) not in best or m < best[e, b][0]:
            best[e, b] = (m, l)
    return best

if __name__ == "__main__":
    specs = sys.argv[1].split(",")
    runs = int(sys.argv[2])
    envs = sys.argv[3].split(",") if len(sys.argv) > 3 else ENVS
    jobs = n_jobs = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    best = reference()
    cells = [(e, b, r, s) for e in envs for b in BUDGETS for r in range(runs) for s in specs]
    out = Parallel(n_jobs=jobs, batch_size=4)(delayed(one)(*c) for c in cells)
    res = collections.defaultdict(list)
    for c, v in zip(cells, out):
        res[(c[0], c[1], c[3])].append(v)
    for s in specs:
        worst = 0
        print("==", s)
        for e in envs:
            line = []
            for b in BUDGETS:
                m = statistics.mean(res[(e, b, s)]); ref, who = best[e, b]
                worst = max(worst, m / ref)
                line.append(f"{m:.4f}/{ref:.4f}={m/ref:.2f}")
            print(f"  {e:26s} " + "  ".join(line))
        print("  worst ratio", round(worst, 2))
