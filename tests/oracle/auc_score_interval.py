"""Test oracle: Newcombe's score interval for the AUC (Newcombe 2006, Stat
Med 25:559, method 5: the Hanley-McNeil variance with N* = (m + n)/2 - 1,
evaluated at the bound), written from the paper and solved with scipy's
brentq.

Usage: auc_score_interval.py FILE  (JSON: a list of [auc, m, n]).
Prints JSON: for each, [lower, upper].
"""
import json
import sys

from scipy.optimize import brentq
from scipy.stats import norm

z = norm.ppf(0.975)


def interval(auc, m, n):
    n_star = (m + n) / 2 - 1

    def variance(t):
        return t * (1 - t) / (m * n) * (1 + n_star * ((1 - t) / (2 - t) + t / (1 + t)))

    def inside(t):
        return z * z * variance(t) - (auc - t) ** 2

    # inside() is negative at 0 and 1 (unless the AUC is there) and
    # positive just inside the interval; at AUC = 1 (or 0) it is zero there.
    eps = 1e-15
    lower = 0.0 if auc <= 0 else brentq(inside, 0.0, min(auc, 1 - eps), xtol=1e-14)
    upper = 1.0 if auc >= 1 else brentq(inside, max(auc, eps), 1.0, xtol=1e-14)
    return [lower, upper]


cases = json.load(open(sys.argv[1]))
print(json.dumps([interval(*c) for c in cases]))
