//! The validation report, typed: what `vigie validate run` found, with
//! everything needed to reproduce it and to trace each number to the audit
//! records behind it.
//!
//! [`Report::to_json`] writes `report.json` (keys sorted at every level, as
//! the reports of earlier releases, so that they compare as text);
//! [`markdown`] renders `report.md` and [`html`] the self-contained
//! `report.html` (built with `maud`, which escapes by construction).

pub mod html;
pub mod markdown;
pub mod pms;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vigie_inference::backend::Execution;

use crate::segmentation::{MeanCi, SegmentationScores};
use crate::stats::{ClassificationMetrics, OperatingPoint};

/// A report of either kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Report {
    /// A classification model's report.
    Classification(ClassificationReport),
    /// A segmentation model's report.
    Segmentation(SegmentationReport),
}

impl Report {
    /// `report.json`: pretty JSON, keys sorted at every level.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(&serde_json::to_value(self)?)
    }

    /// `report.md`.
    pub fn markdown(&self) -> String {
        match self {
            Self::Classification(r) => markdown::classification(r),
            Self::Segmentation(r) => markdown::segmentation(r),
        }
    }

    /// `report.html`, with `markdown` (the text of `report.md`) at its end.
    pub fn html(&self, markdown: &str) -> String {
        match self {
            Self::Classification(r) => html::classification(r, markdown),
            Self::Segmentation(r) => html::segmentation(r, markdown),
        }
    }

    /// What makes it reproducible.
    pub fn reproducibility(&self) -> &Reproducibility {
        match self {
            Self::Classification(r) => &r.reproducibility,
            Self::Segmentation(r) => &r.reproducibility,
        }
    }

    /// Cases scored.
    pub fn cases(&self) -> usize {
        match self {
            Self::Classification(r) => r.cases.len(),
            Self::Segmentation(r) => r.cases.len(),
        }
    }
}

/// What ran, on what, by whom: enough to run it again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reproducibility {
    /// The model package.
    pub model: ModelInfo,
    /// This software.
    pub software: SoftwareInfo,
    /// The dataset.
    pub dataset: DatasetInfo,
    /// What actually ran (backend, provider, device, threads, runtime).
    pub execution: Execution,
    /// The hot loop it ran through (the same one `vigie serve` runs).
    pub hot_loop: HotLoopInfo,
    /// Host name.
    pub host: String,
    /// When (RFC 3339, UTC).
    pub date: String,
    /// The command line.
    pub command: Vec<String>,
    /// Where its audit records are.
    pub audit: AuditRef,
}

/// The model package of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    /// Package id.
    pub id: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the weights, verified at load.
    pub sha256: String,
    /// Regulatory status, as the manifest states it.
    pub regulatory_status: String,
    /// Intended use.
    pub intended_use: String,
}

/// This software.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SoftwareInfo {
    /// Release.
    pub version: String,
    /// Git commit built from.
    pub git_commit: String,
}

/// The dataset of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetInfo {
    /// Name.
    pub name: String,
    /// Content hash (every file's path and hash).
    pub content_sha256: String,
    /// Studies.
    pub studies: usize,
    /// Its folder.
    pub path: PathBuf,
    /// The series its images come from, as `validate import-dicom` chose
    /// them (empty for datasets made otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<SeriesUsed>,
}

/// A series whose images the run analysed, and the routing rule that
/// chose it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesUsed {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Modality.
    pub modality: Option<String>,
    /// Series Description.
    pub series_description: Option<String>,
    /// The routing rule that took it.
    pub rule: String,
    /// Its images in the dataset.
    pub images: usize,
}

/// The hot loop settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HotLoopInfo {
    /// Instances per model run at most.
    pub max_batch: usize,
    /// Milliseconds waited for a batch to fill.
    pub max_delay_ms: f64,
    /// Threads decoding and preprocessing ahead of the model.
    pub decode_threads: usize,
}

/// Where the run's audit records are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRef {
    /// The data directory of the audit trail.
    pub data_dir: PathBuf,
    /// The public key that verifies its checkpoints.
    pub public_key: String,
    /// Sequence number of `validation_started`.
    pub first_record: i64,
    /// Sequence number of the last `inference` record of a scored case.
    pub last_inference_record: Option<i64>,
}

/// Latency percentiles of one stage, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// Percentiles by linear interpolation between order statistics
    /// (numpy's default).
    pub fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let pos = q * (values.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
        };
        Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            mean: values.iter().sum::<f64>() / values.len() as f64,
        }
    }
}

/// How the run went, apart from the metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Operational {
    /// Per stage (`decode`, `preprocess`, `inference`, `postprocess`,
    /// `total`).
    pub latency_ms: BTreeMap<String, Latency>,
    /// Images scored per second of the whole run.
    pub throughput_images_per_s: f64,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
}

/// One scored image of a classification run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// Subgroup attributes (header, then the manifest's own).
    pub subgroups: BTreeMap<String, String>,
    /// Study.
    pub study_instance_uid: String,
    /// File, relative to the dataset.
    pub file: PathBuf,
    /// SHA-256 of the file.
    pub file_sha256: String,
    /// SHA-256 of the pixels the model saw.
    pub pixels_sha256: String,
    /// Ground truth.
    pub truth: String,
    /// The model's decision.
    pub decision: String,
    /// Class probabilities, in label order.
    pub probabilities: Vec<f64>,
    /// Decision equals ground truth.
    pub correct: bool,
    /// Sequence number of its `inference` audit record.
    pub audit_record: i64,
}

/// The metrics on one subgroup's cases.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subgroup {
    /// Attribute.
    pub attribute: String,
    /// Value.
    pub value: String,
    /// Cases.
    pub n: u64,
    /// Every metric of the whole run, on this subgroup's cases.
    pub metrics: ClassificationMetrics,
    /// Metrics whose whole 95 % interval lies below the claim.
    pub below_claim: Vec<String>,
}

/// An operating point asked for (`--operating-point`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatingPointEntry {
    /// Class.
    pub class: String,
    /// The point, `None` when the target cannot be reached.
    pub point: Option<OperatingPoint>,
}

/// The report of a classification run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationReport {
    /// What makes it reproducible.
    pub reproducibility: Reproducibility,
    /// Metrics with their intervals.
    pub metrics: ClassificationMetrics,
    /// Claimed values (`accuracy`, `sensitivity`).
    pub claims: BTreeMap<String, f64>,
    /// Per subgroup.
    pub subgroups: Vec<Subgroup>,
    /// Operating points asked for.
    pub operating_points: Vec<OperatingPointEntry>,
    /// Latency, throughput, failures.
    pub operational: Operational,
    /// Every scored case.
    pub cases: Vec<Case>,
}

/// One segment of one scored image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentationCase {
    /// Subgroup attributes.
    pub subgroups: BTreeMap<String, String>,
    /// Study.
    pub study_instance_uid: String,
    /// File, relative to the dataset.
    pub file: PathBuf,
    /// Reference mask, relative to the dataset.
    pub reference: PathBuf,
    /// Segment name.
    pub segment: String,
    /// Pixel spacing used for distances (mm, rows then columns).
    pub spacing_mm: (f64, f64),
    /// Scores.
    pub scores: SegmentationScores,
    /// Sequence number of its `inference` audit record.
    pub audit_record: i64,
}

/// Means and intervals of one segment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentSummary {
    /// Segment name.
    pub segment: String,
    /// Cases.
    pub n: usize,
    /// Dice.
    pub dice: Option<MeanCi>,
    /// Jaccard.
    pub iou: Option<MeanCi>,
    /// 95th-percentile Hausdorff distance (mm).
    pub hd95_mm: Option<MeanCi>,
    /// Average symmetric surface distance (mm).
    pub assd_mm: Option<MeanCi>,
}

/// One subgroup of a segmentation run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentationSubgroup {
    /// Attribute.
    pub attribute: String,
    /// Value.
    pub value: String,
    /// Each segment on this subgroup's cases.
    pub segments: Vec<SegmentSummary>,
}

/// The report of a segmentation run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentationReport {
    /// What makes it reproducible.
    pub reproducibility: Reproducibility,
    /// Per segment.
    pub segmentation: Vec<SegmentSummary>,
    /// Per subgroup.
    pub subgroups: Vec<SegmentationSubgroup>,
    /// Latency, throughput, failures.
    pub operational: Operational,
    /// Every scored segment of every image.
    pub cases: Vec<SegmentationCase>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_interpolate_as_numpy_does() {
        let l = Latency::of(vec![4.0, 1.0, 3.0, 2.0]);
        assert_eq!(l.p50, 2.5);
        assert!((l.p95 - 3.85).abs() < 1e-12);
        assert_eq!(l.mean, 2.5);
        assert_eq!(Latency::of(Vec::new()), Latency::default());
    }
}
