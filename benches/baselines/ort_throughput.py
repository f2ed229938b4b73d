"""Baseline: bare Python onnxruntime on the same model, tensors and threads.

Usage: ort_throughput.py MODEL TENSORS.f32 ROUNDS THREADS [MAX_BATCH [PROVIDER]] ; prints JSON.
PROVIDER: CPUExecutionProvider (default) or CUDAExecutionProvider.
Environment: VIGIE_BENCH_CONV_SEARCH (exhaustive, heuristic or default): the
CUDA provider's cudnn_conv_algo_search, as Vigie's inference.cuda_conv_algo_search.
"""
import os
import json
import sys
import time

import numpy as np
import onnxruntime as ort

model, tensors, rounds, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
max_batch = int(sys.argv[5]) if len(sys.argv) > 5 else 1
provider = sys.argv[6] if len(sys.argv) > 6 else "CPUExecutionProvider"
options = ort.SessionOptions()
options.intra_op_num_threads = threads
providers = [provider]
if provider == "CUDAExecutionProvider":
    search = os.environ.get("VIGIE_BENCH_CONV_SEARCH", "exhaustive").upper()
    providers = [(provider, {"cudnn_conv_algo_search": search})]
session = ort.InferenceSession(model, options, providers=providers)
if session.get_providers()[0] != provider:
    sys.exit(f"{provider} unavailable: {session.get_providers()}")
data = np.fromfile(tensors, dtype="<f4").reshape(-1, 240, 240, 3)
# The same images in batches of MAX_BATCH (the last one may be smaller).
batches = [data[i : i + max_batch] for i in range(0, len(data), max_batch)]
for x in batches:
    session.run(None, {"input": x})
start = time.perf_counter()
for _ in range(rounds):
    for x in batches:
        session.run(None, {"input": x})
elapsed = time.perf_counter() - start
print(json.dumps({
    "images": rounds * len(data), "threads": threads, "max_batch": max_batch,
    "provider": provider, "images_per_s": rounds * len(data) / elapsed,
}))
