"""Test oracle: Dice, Jaccard, HD95 and ASSD as MedPy defines them
(medpy.metric.binary dc, jc, hd95, assd), written on scipy.ndimage.

Usage: segmentation_metrics.py FILE  (JSON list of cases: rows, columns,
prediction, reference (0/1 lists), spacing [row, col]). Prints a JSON list.
"""
import json
import sys

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure


def surface_distances(result, reference, spacing):
    footprint = generate_binary_structure(result.ndim, 1)
    result_border = result ^ binary_erosion(result, structure=footprint, iterations=1)
    reference_border = reference ^ binary_erosion(reference, structure=footprint, iterations=1)
    dt = distance_transform_edt(~reference_border, sampling=spacing)
    return dt[result_border]


out = []
for case in json.load(open(sys.argv[1])):
    shape = (case["rows"], case["columns"])
    a = np.array(case["prediction"], dtype=bool).reshape(shape)
    b = np.array(case["reference"], dtype=bool).reshape(shape)
    spacing = case["spacing"]
    inter = np.count_nonzero(a & b)
    union = np.count_nonzero(a | b)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    row = {
        "dice": 1.0 if total == 0 else 2.0 * inter / total,
        "iou": 1.0 if union == 0 else inter / union,
        "hd95": None,
        "assd": None,
    }
    if a.any() and b.any():
        ab = surface_distances(a, b, spacing)
        ba = surface_distances(b, a, spacing)
        row["hd95"] = float(np.percentile(np.hstack((ab, ba)), 95))
        row["assd"] = float(np.mean((ab.mean(), ba.mean())))
    out.append(row)
print(json.dumps(out))
