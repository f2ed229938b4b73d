"""Test oracle: Newcombe's hybrid score interval for a difference of paired
proportions (Newcombe 1998, Stat Med 17:2635, method 10), written from the
paper, on scipy's Wilson intervals (binomtest.proportion_ci).

Usage: paired_difference.py FILE  (JSON: a list of [a, b, c, d] tables).
Prints JSON: for each table, [difference, lower, upper].
"""
import json
import math
import sys

from scipy.stats import binomtest


def wilson(k, n):
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def method_10(a, b, c, d):
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n)
    l2, u2 = wilson(a + c, n)
    product = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0 if product == 0 else (a * d - b * c) / math.sqrt(product)
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    epsilon = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    theta = p1 - p2
    return [theta, max(-1.0, theta - delta), min(1.0, theta + epsilon)]


tables = json.load(open(sys.argv[1]))
print(json.dumps([method_10(*t) for t in tables]))
