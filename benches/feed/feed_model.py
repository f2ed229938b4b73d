"""A model package that costs next to nothing to run, with the reference
model's input, preprocessing and output contract: the hot loop's throughput
on it is what its decode-and-preprocess stage can feed a model (a GPU runs
the reference model in about a millisecond).

Usage: feed_model.py REFERENCE_PACKAGE OUT_PACKAGE
"""

import hashlib
import pathlib
import re
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

reference, out = (pathlib.Path(p) for p in sys.argv[1:3])
manifest = (reference / "model.toml").read_text()
height, width, channels = (
    int(v) for v in re.search(r"shape = \[-1, (\d+), (\d+), (\d+)\]", manifest).groups()
)
weights = numpy_helper.from_array(
    np.linspace(-1.0, 1.0, channels * 4, dtype=np.float32).reshape(channels, 4), "w"
)
graph = helper.make_graph(
    [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["dense_3"]),
    ],
    "feed",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", height, width, channels])],
    [helper.make_tensor_value_info("dense_3", TensorProto.FLOAT, ["n", 4])],
    [weights, numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
model.ir_version = 9
onnx.checker.check_model(model)
out.mkdir(parents=True, exist_ok=True)
data = model.SerializeToString()
(out / "feed.onnx").write_bytes(data)
digest = hashlib.sha256(data).hexdigest()
manifest = re.sub(r'file = "[^"]+"', 'file = "feed.onnx"', manifest)
manifest = re.sub(r'sha256 = "[0-9a-f]{64}"', f'sha256 = "{digest}"', manifest, count=1)
manifest = re.sub(r'id = "[^"]+"', 'id = "feed"', manifest, count=1)
(out / "model.toml").write_text(manifest)
