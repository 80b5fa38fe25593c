"""Does the ranking of ``bncheck drift M1 M2 ... DATA`` pick the model that is most accurate on
DATA, without labels? Copies of a trained CNN (tests/support/stat_variants.py) whose BN
statistics were accumulated on inputs shifted in mean, in scale or both are ranked on DATA drawn
like the unshifted training inputs; their accuracy on DATA (labels used only here) is the truth.

Reports, per training seed and DATA size n: Kendall's tau between the ranking key and accuracy
(1 = the key orders the models exactly as accuracy does), whether the key's best model is the
most accurate one (within 0.5 points; truth: accuracy on 8,192 labelled samples of the distribution, never shown to bncheck), for the fit score and for BN301's output change.

    PYTHONPATH=. python bench/ranking_agreement.py [--seeds 3] [--sizes 64,512]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bncheck  # noqa: E402
from tests.support import stat_variants as sv  # noqa: E402

#: how each copy's statistics inputs differ from DATA's distribution
SHIFTS = [
    {}, {"shift": 0.25}, {"shift": 0.5}, {"shift": 1.0}, {"shift": 2.0}, {"shift": -1.0},
    {"scale": 0.5}, {"scale": 0.75}, {"scale": 1.5}, {"scale": 3.0},
    {"shift": 0.5, "scale": 1.5}, {"shift": -0.5, "scale": 0.75},
]  # fmt: skip


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two sequences (ties count for neither)."""
    concordant = discordant = ties_a = ties_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
        if da == 0 and db == 0:
            continue
        if da == 0:
            ties_a += 1
        elif db == 0:
            ties_b += 1
        elif da == db:
            concordant += 1
        else:
            discordant += 1
    n0 = concordant + discordant
    denominator = np.sqrt((n0 + ties_a) * (n0 + ties_b))
    return float((concordant - discordant) / denominator) if denominator else float("nan")


def one_run(seed: int, n: int) -> dict:
    base = sv.train(seed=seed)
    copies = [sv.with_statistics_of(base, sv.task(1024, seed=300 + k, **shift)[0]) for k, shift in enumerate(SHIFTS)]
    x, _ = sv.task(n, seed=1000 + seed)  # DATA: unlabelled, n samples
    x_eval, y_eval = sv.task(8192, seed=5000 + seed)  # the truth: accuracy on the distribution
    truth = [sv.accuracy(copy, x_eval, y_eval) for copy in copies]
    ranking = bncheck.rank_models(copies, x, options=bncheck.DriftOptions(mismatch_samples=min(n, 256), diagnosis_samples=0))
    by_index = {entry.index: entry for entry in ranking.models}
    score = [by_index[i].score for i in range(len(copies))]
    change = [next(iter((by_index[i].output_change or {"-": float("nan")}).values())) for i in range(len(copies))]
    best = max(truth)
    tolerance = 0.005  # within half a point of the most accurate copy
    out = {"seed": seed, "n": n, "accuracy": truth, "score": score, "output_change": change}
    lexicographic = [c + 1e-6 * s for c, s in zip(change, score, strict=True)]  # change first, the score breaks ties
    out["change_then_score"] = lexicographic
    for name, key in (("score", score), ("output_change", change), ("change_then_score", lexicographic)):
        pick = int(np.nanargmin(key))
        out[name + "_tau"] = -kendall_tau(key, truth)  # lower key = better: sign so that 1 is perfect
        out[name + "_picks_best"] = bool(truth[pick] >= best - tolerance)
        out[name + "_regret"] = float(best - truth[pick])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sizes", default="64,512")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = [one_run(seed, n) for seed in range(args.seeds) for n in (int(s) for s in args.sizes.split(","))]
    print(f"{len(SHIFTS)} copies per run; load average {os.getloadavg()[0]:.2f}")
    keys = ("score", "output_change", "change_then_score")
    print("| seed | n | " + " | ".join(f"tau({k}) | {k} picks best (regret)" for k in keys) + " |")
    print("|---:|---:|" + "---:|---|" * len(keys))
    for r in runs:
        cells = [f"{r[k + '_tau']:.3f} | {r[k + '_picks_best']} ({r[k + '_regret']:.3f})" for k in keys]
        print(f"| {r['seed']} | {r['n']} | " + " | ".join(cells) + " |")
    for n in sorted({r["n"] for r in runs}):
        at = [r for r in runs if r["n"] == n]
        means = [f"{k}: tau {np.mean([r[k + '_tau'] for r in at]):.3f}, best {sum(r[k + '_picks_best'] for r in at)}/{len(at)}" for k in keys]
        print(f"n={n}: " + "; ".join(means))
    if args.json is not None:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
