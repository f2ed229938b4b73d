"""Baseline: bare Python onnxruntime on the same model, tensors and threads.

Usage: ort_throughput.py MODEL TENSORS.f32 ROUNDS THREADS ; prints JSON.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort

model, tensors, rounds, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
data = np.fromfile(tensors, dtype="<f4").reshape(-1, 1, 240, 240, 3)
for x in data:
    session.run(None, {"input": x})
start = time.perf_counter()
for _ in range(rounds):
    for x in data:
        session.run(None, {"input": x})
elapsed = time.perf_counter() - start
print(json.dumps({"images": rounds * len(data), "threads": threads, "images_per_s": rounds * len(data) / elapsed}))
