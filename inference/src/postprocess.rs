//! From raw output tensors to findings, as the manifest's [`OutputKind`]
//! says: activation, labels, decision rule.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::manifest::{Activation, Decision, OutputKind};

/// A classification and how it was decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// Class labels, in output order.
    pub labels: Vec<String>,
    /// Probability of each class (after the activation).
    pub probabilities: Vec<f32>,
    /// The decided label.
    pub decision: String,
    /// The rule applied, in words a report can quote
    /// (e.g. `argmax` or `glioma >= 0.5`).
    pub rule: String,
    /// The threshold, for threshold rules.
    pub threshold: Option<f32>,
}

impl Classification {
    /// Probability of a label.
    pub fn probability(&self, label: &str) -> Option<f32> {
        self.labels
            .iter()
            .position(|l| l == label)
            .map(|i| self.probabilities[i])
    }
}

/// A label map: one class index per pixel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segmentation {
    /// Rows of the map (the model's output size).
    pub rows: usize,
    /// Columns of the map.
    pub columns: usize,
    /// Label of each class index present in the manifest.
    pub labels: BTreeMap<u32, String>,
    /// Class index per pixel, row-major.
    #[serde(skip)]
    pub mask: Vec<u8>,
}

/// What a model found in one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// A classification.
    Classification(Classification),
    /// A segmentation.
    Segmentation(Segmentation),
}

fn activate(values: &mut [f32], activation: Activation) {
    match activation {
        Activation::None => {}
        Activation::Sigmoid => values
            .iter_mut()
            .for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        Activation::Softmax => {
            let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for v in values.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            values.iter_mut().for_each(|v| *v /= sum);
        }
    }
}

/// Interpret the output of one image. `dims` is the output shape without
/// the batch dimension.
pub fn interpret(kind: &OutputKind, raw: &[f32], dims: &[usize]) -> Result<Finding, String> {
    if raw.iter().any(|v| !v.is_finite()) {
        return Err("output contains NaN or infinite values".into());
    }
    match kind {
        OutputKind::Classification {
            labels,
            activation,
            decision,
            ..
        } => {
            if raw.len() != labels.len() {
                return Err(format!("{} values for {} labels", raw.len(), labels.len()));
            }
            let mut probabilities = raw.to_vec();
            activate(&mut probabilities, *activation);
            let (decision, rule, threshold) = match decision {
                Decision::Argmax => {
                    let best = probabilities.iter().enumerate().fold(0, |best, (i, p)| {
                        if *p > probabilities[best] { i } else { best }
                    });
                    (labels[best].clone(), "argmax".to_string(), None)
                }
                Decision::Threshold {
                    positive,
                    negative,
                    threshold,
                } => {
                    let i = labels
                        .iter()
                        .position(|l| l == positive)
                        .ok_or("positive label missing")?;
                    let label = if probabilities[i] >= *threshold {
                        positive
                    } else {
                        negative
                    };
                    (
                        label.clone(),
                        format!("{positive} >= {threshold}"),
                        Some(*threshold),
                    )
                }
            };
            Ok(Finding::Classification(Classification {
                labels: labels.clone(),
                probabilities,
                decision,
                rule,
                threshold,
            }))
        }
        OutputKind::Segmentation {
            labels,
            activation,
            threshold,
            ..
        } => {
            let [channels, rows, columns] = *dims else {
                return Err(format!(
                    "segmentation output must be [C, H, W] per image, got {dims:?}"
                ));
            };
            let pixels = rows * columns;
            let mut values = raw.to_vec();
            let mut mask = vec![0u8; pixels];
            if channels == 1 {
                activate(
                    &mut values,
                    if *activation == Activation::Softmax {
                        Activation::Sigmoid
                    } else {
                        *activation
                    },
                );
                let t = threshold.unwrap_or(0.5);
                let fg = labels.keys().copied().find(|k| *k != 0).unwrap_or(1);
                for (m, v) in mask.iter_mut().zip(&values) {
                    *m = if *v >= t { fg as u8 } else { 0 };
                }
            } else {
                if channels > 255 {
                    return Err(format!("{channels} classes; at most 255 are supported"));
                }
                for (p, m) in mask.iter_mut().enumerate() {
                    let mut best = 0;
                    for c in 1..channels {
                        if values[c * pixels + p] > values[best * pixels + p] {
                            best = c;
                        }
                    }
                    *m = best as u8;
                }
            }
            Ok(Finding::Segmentation(Segmentation {
                rows,
                columns,
                labels: labels.clone(),
                mask,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn softmax_then_argmax() {
        let kind = OutputKind::Classification {
            labels: labels(),
            activation: Activation::Softmax,
            decision: Decision::Argmax,
            codes: BTreeMap::new(),
        };
        let Ok(Finding::Classification(c)) = interpret(&kind, &[1.0, 3.0, 2.0], &[3]) else {
            panic!("not a classification")
        };
        assert_eq!(c.decision, "b");
        let sum: f32 = c.probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        let expected = 3f32.exp() / (1f32.exp() + 3f32.exp() + 2f32.exp());
        assert!((c.probability("b").unwrap_or_default() - expected).abs() < 1e-6);
    }

    #[test]
    fn threshold_rule_uses_the_operating_point() {
        let decision = Decision::Threshold {
            positive: "a".into(),
            negative: "c".into(),
            threshold: 0.3,
        };
        let kind = OutputKind::Classification {
            labels: labels(),
            activation: Activation::None,
            decision,
            codes: BTreeMap::new(),
        };
        let Ok(Finding::Classification(c)) = interpret(&kind, &[0.31, 0.6, 0.09], &[3]) else {
            panic!("not a classification")
        };
        assert_eq!(c.decision, "a");
        assert_eq!(c.threshold, Some(0.3));
        let Ok(Finding::Classification(c)) = interpret(&kind, &[0.29, 0.6, 0.11], &[3]) else {
            panic!("not a classification")
        };
        assert_eq!(c.decision, "c");
    }

    #[test]
    fn wrong_length_and_nan_are_errors() {
        let kind = OutputKind::Classification {
            labels: labels(),
            activation: Activation::None,
            decision: Decision::Argmax,
            codes: BTreeMap::new(),
        };
        assert!(interpret(&kind, &[0.5, 0.5], &[2]).is_err());
        assert!(interpret(&kind, &[0.5, f32::NAN, 0.1], &[3]).is_err());
    }

    #[test]
    fn segmentation_argmax_and_threshold() {
        let labels: BTreeMap<u32, String> =
            [(0, "background".to_string()), (1, "lesion".to_string())].into();
        let kind = OutputKind::Segmentation {
            labels: labels.clone(),
            activation: Activation::None,
            threshold: None,
            categories: BTreeMap::new(),
            types: BTreeMap::new(),
        };
        // Two channels, 1x3 pixels.
        let Ok(Finding::Segmentation(s)) =
            interpret(&kind, &[0.9, 0.2, 0.4, 0.1, 0.8, 0.6], &[2, 1, 3])
        else {
            panic!()
        };
        assert_eq!(s.mask, vec![0, 1, 1]);
        let kind = OutputKind::Segmentation {
            labels,
            activation: Activation::None,
            threshold: Some(0.5),
            categories: BTreeMap::new(),
            types: BTreeMap::new(),
        };
        let Ok(Finding::Segmentation(s)) = interpret(&kind, &[0.49, 0.5, 0.7], &[1, 1, 3]) else {
            panic!()
        };
        assert_eq!(s.mask, vec![0, 1, 1]);
    }
}
