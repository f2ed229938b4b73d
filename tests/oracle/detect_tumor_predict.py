"""Test oracle: the reference package's own pipeline (PIL preprocessing and
onnxruntime), on the original JPEG pictures.

Usage: detect_tumor_predict.py MODEL IMAGE... ; prints one JSON line per
image: {"image": ..., "probabilities": [glioma, meningioma, notumor, pituitary]}
(fractions, from the package's percentages).
"""
import json
import sys

from detect_tumor import TumorDetector

ORDER = ["glioma", "meningioma", "notumor", "pituitary"]
detector = TumorDetector(model_path=sys.argv[1])
for image in sys.argv[2:]:
    result = detector.predict(image)
    probs = [result.probabilities[k] / 100.0 for k in ORDER]
    print(json.dumps({"image": image, "decision": result.predicted_class, "probabilities": probs}))
