"""Wilson score intervals by scipy (scipy.stats.binomtest(...).proportion_ci(method="wilson")).

usage: wilson_scipy.py K/N ...   prints one JSON [low, high] per argument
"""
import json
import sys

from scipy.stats import binomtest

out = []
for arg in sys.argv[1:]:
    k, n = (int(x) for x in arg.split("/"))
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    out.append([ci.low, ci.high])
print(json.dumps(out))
