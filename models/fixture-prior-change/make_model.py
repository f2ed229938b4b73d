"""Build the prior-comparison test fixture: a tiny ONNX model with two
inputs, the current image and the prior one, that scores how much they
differ.

It is NOT trained and NOT a medical model: the mean absolute difference of
the two 64x64 images (each min-max scaled to [0, 1] by the package's
preprocessing), through a steep sigmoid around 0.1, as the probability of
"changed" (and 1 - that of "stable"). It exists so that the priors path
(query, retrieval, the second input, the records) runs end to end on a
real model file.

Usage: make_model.py OUT.onnx   (deterministic for the pinned onnx version)
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

centre = numpy_helper.from_array(np.array([0.1], dtype=np.float32), "centre")
gain = numpy_helper.from_array(np.array([40.0], dtype=np.float32), "gain")
one = numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")
nodes = [
    helper.make_node("Sub", ["image", "prior"], ["difference"]),
    helper.make_node("Abs", ["difference"], ["magnitude"]),
    helper.make_node("ReduceMean", ["magnitude"], ["mean"], axes=[1, 2, 3], keepdims=1),
    helper.make_node("Flatten", ["mean"], ["per_image"], axis=1),
    helper.make_node("Sub", ["per_image", "centre"], ["centred"]),
    helper.make_node("Mul", ["centred", "gain"], ["logit"]),
    helper.make_node("Sigmoid", ["logit"], ["changed"]),
    helper.make_node("Sub", ["one", "changed"], ["stable"]),
    helper.make_node("Concat", ["stable", "changed"], ["change"], axis=1),
]
graph = helper.make_graph(
    nodes,
    "prior_change_fixture",
    [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 64, 64]),
        helper.make_tensor_value_info("prior", TensorProto.FLOAT, ["batch", 1, 64, 64]),
    ],
    [helper.make_tensor_value_info("change", TensorProto.FLOAT, ["batch", 2])],
    [centre, gain, one],
)
model = helper.make_model(graph, producer_name="vigie-fixture", opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
onnx.checker.check_model(model)
with open(sys.argv[1], "wb") as f:
    f.write(model.SerializeToString(deterministic=True))
