#!/usr/bin/env python3
"""Paired validation-accuracy difference (agm − joint, same seed) of `cargo xtask study` runs.

Usage: scripts/study_validation_delta.py <study-out-dir> [...]

Reads only validation numbers from <out>/study.json (never the test split), so a setting can
be chosen without looking at test accuracy (docs/av-digits-default.md). Prints, per study:
mean validation accuracy of each method, and the mean ± 95% CI half-width (Student t) of the
paired difference, in points.
"""
import json
import math
import sys

# Two-sided 97.5% quantiles of Student's t, by degrees of freedom.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
        18: 2.101, 19: 2.093, 20: 2.086, 29: 2.045}


def mean_ci(xs):
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, T975.get(n - 1, 1.96) * sd / math.sqrt(n)


for out in sys.argv[1:]:
    with open(f"{out}/study.json") as f:
        study = json.load(f)
    val = {(r["method"], r["seed"]): 100 * r["validation_accuracy"] for r in study["runs"]}
    seeds = sorted(s for (m, s) in val if m == "joint" and ("agm", s) in val)
    if not seeds:
        print(f"{out}: no seed ran both joint and agm")
        continue
    joint = [val[("joint", s)] for s in seeds]
    agm = [val[("agm", s)] for s in seeds]
    delta = [a - j for a, j in zip(agm, joint)]
    setup = study["table"]["setup"]
    print("%s (%s, %d epochs, %d seeds): validation joint %.2f, agm %.2f, paired Δ %+.2f ± %.2f points"
          % (out, setup["preset"], setup["epochs"], len(seeds), sum(joint) / len(joint), sum(agm) / len(agm),
             *mean_ci(delta)))
