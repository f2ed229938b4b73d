"""Exact binomial control limits by scipy: for each N/P, the lowest count k
with P(X <= k) >= 0.00135 (binom.ppf) and the highest with
P(X >= k) >= 0.00135 (binom.isf), as counts.

usage: binom_limits_scipy.py N/P ...   prints a JSON list of [low, high]
"""
import json
import sys

from scipy.stats import binom

ALPHA = 0.00135
out = []
for arg in sys.argv[1:]:
    n, p = arg.split("/")
    n, p = int(n), float(p)
    out.append([float(binom.ppf(ALPHA, n, p)), float(binom.isf(ALPHA, n, p))])
print(json.dumps(out))
