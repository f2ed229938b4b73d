"""Build the prior-comparison test fixture: a tiny ONNX model with two
inputs, the current image and the prior one, that scores how much they
differ.

It is NOT trained and NOT a medical model: the mean absolute difference of
the two 64x64 images (each min-max scaled to [0, 1] by the package's
preprocessing), through a steep sigmoid around 0.1, as the probability of
"changed" (and 1 - that of "stable"). It exists so that the priors path
(query, retrieval, the second input, the records) runs end to end on a
real model file.

Usage: make_model.py OUT.onnx [PRIORS]   (deterministic for the pinned
onnx version). PRIORS (default 1): a variant with that many prior inputs,
`prior`, `prior_2`, ...; the score is then taken on a weighted mean of the
mean absolute differences with each, prior k weighing 2^(k-1) (so that
the tests, which build it, can tell which prior reached which input).
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

priors = int(sys.argv[2]) if len(sys.argv) > 2 else 1
names = ["prior"] + [f"prior_{k}" for k in range(2, priors + 1)]
centre = numpy_helper.from_array(np.array([0.1], dtype=np.float32), "centre")
gain = numpy_helper.from_array(np.array([40.0], dtype=np.float32), "gain")
one = numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")
nodes = []
for k, name in enumerate(names):
    # One prior: the node names of version 1.0.0, so that its file is unchanged.
    suffix = "" if priors == 1 else f"_{k + 1}"
    nodes += [
        helper.make_node("Sub", ["image", name], ["difference" + suffix]),
        helper.make_node("Abs", ["difference" + suffix], ["magnitude" + suffix]),
        helper.make_node("ReduceMean", ["magnitude" + suffix], ["mean" + suffix], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["mean" + suffix], ["per_image" + suffix], axis=1),
    ]
initializers = [centre, gain, one]
if priors > 1:
    # The weighted mean as products and sums (ops every backend has,
    # candle's too): weight 2^(k-1) / (2^N - 1) for prior k.
    total = None
    for k in range(1, priors + 1):
        weight = f"weight_{k}"
        initializers.append(
            numpy_helper.from_array(np.array([2.0 ** (k - 1) / (2.0**priors - 1)], dtype=np.float32), weight)
        )
        nodes.append(helper.make_node("Mul", [f"per_image_{k}", weight], [f"weighted_{k}"]))
        if total is None:
            total = f"weighted_{k}"
        else:
            nodes.append(helper.make_node("Add", [total, f"weighted_{k}"], [f"sum_{k}"]))
            total = f"sum_{k}"
    nodes.append(helper.make_node("Identity", [total], ["per_image"]))
nodes += [
    helper.make_node("Sub", ["per_image", "centre"], ["centred"]),
    helper.make_node("Mul", ["centred", "gain"], ["logit"]),
    helper.make_node("Sigmoid", ["logit"], ["changed"]),
    helper.make_node("Sub", ["one", "changed"], ["stable"]),
    helper.make_node("Concat", ["stable", "changed"], ["change"], axis=1),
]
graph = helper.make_graph(
    nodes,
    "prior_change_fixture",
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 64, 64])]
    + [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1, 64, 64]) for name in names],
    [helper.make_tensor_value_info("change", TensorProto.FLOAT, ["batch", 2])],
    initializers,
)
model = helper.make_model(graph, producer_name="vigie-fixture", opset_imports=[helper.make_opsetid("", 13)])
model.ir_version = 8
onnx.checker.check_model(model)
with open(sys.argv[1], "wb") as f:
    f.write(model.SerializeToString(deterministic=True))
