"""Test oracle: run bare Python onnxruntime on tensors written by the tests.

Usage: ort_run.py MODEL INPUT_NAME TENSORS.f32 H W C THREADS OUT.f32
TENSORS.f32 holds N float32 NHWC tensors back to back; each is run alone
(batch of one) and the outputs are written back to back to OUT.f32.
"""
import sys

import numpy as np
import onnxruntime as ort

model, name, tensors, h, w, c, threads, out = sys.argv[1:9]
h, w, c, threads = int(h), int(w), int(c), int(threads)
options = ort.SessionOptions()
options.intra_op_num_threads = threads
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
data = np.fromfile(tensors, dtype="<f4").reshape(-1, h, w, c)
outputs = [session.run(None, {name: data[i : i + 1]})[0][0] for i in range(data.shape[0])]
np.asarray(outputs, dtype="<f4").tofile(out)
