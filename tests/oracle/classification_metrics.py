"""Test oracle: classification metrics with scikit-learn and scipy.

Usage: classification_metrics.py FILE  (JSON: labels, truth, predicted,
probabilities). Prints JSON with the same quantities Vigie computes:
accuracy and its Wilson interval (scipy), balanced accuracy, Cohen's kappa,
confusion matrix, and per class (one-vs-rest): sensitivity, specificity,
PPV, NPV with Wilson intervals, F1, ROC AUC (sklearn) with DeLong's
variance computed from its definition, average precision, Brier score and
the calibration curve (sklearn).
"""
import json
import sys

import numpy as np
from scipy.stats import binomtest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score, average_precision_score, balanced_accuracy_score,
    brier_score_loss, cohen_kappa_score, confusion_matrix, f1_score,
    roc_auc_score,
)


def wilson(k, n):
    if n == 0:
        return None
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return [k / n, float(ci.low), float(ci.high)]


def delong_se(scores, positive):
    x = scores[positive]
    y = scores[~positive]
    psi = (x[:, None] > y[None, :]).astype(float) + 0.5 * (x[:, None] == y[None, :])
    v10 = psi.mean(axis=1)
    v01 = psi.mean(axis=0)
    var = (np.var(v10, ddof=1) if len(v10) > 1 else 0.0) / len(x) + \
          (np.var(v01, ddof=1) if len(v01) > 1 else 0.0) / len(y)
    return float(np.sqrt(var))


data = json.load(open(sys.argv[1]))
labels = data["labels"]
truth = np.array(data["truth"])
pred = np.array(data["predicted"])
probs = np.array(data["probabilities"], dtype=float)
k = len(labels)
cm = confusion_matrix(truth, pred, labels=list(range(k)))
out = {
    "accuracy": wilson(int(np.trace(cm)), int(cm.sum())),
    "accuracy_sklearn": accuracy_score(truth, pred),
    "balanced_accuracy": balanced_accuracy_score(truth, pred),
    "cohen_kappa": cohen_kappa_score(truth, pred),
    "confusion": cm.tolist(),
    "classes": [],
}
f1 = f1_score(truth, pred, labels=list(range(k)), average=None)
for c in range(k):
    tp = int(cm[c, c]); fn = int(cm[c, :].sum() - tp); fp = int(cm[:, c].sum() - tp)
    tn = int(cm.sum() - tp - fn - fp)
    pos = truth == c
    s = probs[:, c]
    prob_true, prob_pred = calibration_curve(pos, s, n_bins=10, strategy="uniform")
    out["classes"].append({
        "sensitivity": wilson(tp, tp + fn),
        "specificity": wilson(tn, tn + fp),
        "ppv": wilson(tp, tp + fp),
        "npv": wilson(tn, tn + fn),
        "f1": float(f1[c]),
        "roc_auc": float(roc_auc_score(pos, s)),
        "roc_auc_se": delong_se(s, pos),
        "pr_auc": float(average_precision_score(pos, s)),
        "brier": float(brier_score_loss(pos, s)),
        "calibration_true": prob_true.tolist(),
        "calibration_pred": prob_pred.tolist(),
    })
print(json.dumps(out))
