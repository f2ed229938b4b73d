"""Build the segmentation test fixture: a tiny ONNX model that segments
bright round structures in 64x64 grayscale images.

It is NOT trained and NOT a medical model: a 3x3 mean filter followed by a
steep sigmoid around 0.5, i.e. a smoothed threshold, written as an ONNX
graph so that the whole segmentation path (package, backend, output
interpretation, DICOM SEG) runs on a real model file.

Usage: make_model.py OUT.onnx   (deterministic for the pinned onnx version)
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

kernel = numpy_helper.from_array(np.full((1, 1, 3, 3), 1.0 / 9.0, dtype=np.float32), "kernel")
half = numpy_helper.from_array(np.array([0.5], dtype=np.float32), "half")
gain = numpy_helper.from_array(np.array([20.0], dtype=np.float32), "gain")
nodes = [
    helper.make_node("Conv", ["image", "kernel"], ["smoothed"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
    helper.make_node("Sub", ["smoothed", "half"], ["centred"]),
    helper.make_node("Mul", ["centred", "gain"], ["logits"]),
    helper.make_node("Sigmoid", ["logits"], ["mask"]),
]
graph = helper.make_graph(
    nodes,
    "bright_disk_fixture",
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 64, 64])],
    [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 64, 64])],
    [kernel, half, gain],
)
model = helper.make_model(graph, producer_name="vigie-fixture", opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
onnx.checker.check_model(model)
with open(sys.argv[1], "wb") as f:
    f.write(model.SerializeToString(deterministic=True))
