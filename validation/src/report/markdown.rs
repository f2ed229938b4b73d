//! `report.md`: the report as Markdown tables, for the technical
//! documentation.

use std::fmt::Write as _;

use super::{ClassificationReport, Reproducibility, SegmentationReport};
use crate::segmentation::MeanCi;
use crate::stats::Proportion;

/// A proportion with its count and interval (`n/a` when undefined).
pub fn proportion(p: &Option<Proportion>) -> String {
    match p {
        Some(p) => format!(
            "{:.3} ({}/{}; 95% CI {:.3}–{:.3})",
            p.value, p.successes, p.n, p.ci95.lower, p.ci95.upper
        ),
        None => "n/a".into(),
    }
}

/// One table row of `cells`.
fn row(md: &mut String, cells: &[String]) {
    md.push('|');
    for cell in cells {
        md.push(' ');
        // A `|` in a value (a series description, a label) would end
        // the cell.
        md.push_str(&cell.replace('|', "\\|"));
        md.push_str(" |");
    }
    md.push('\n');
}

fn number(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}"))
        .unwrap_or_else(|| "n/a".into())
}

fn mean(v: &Option<MeanCi>) -> String {
    match v {
        Some(m) => format!("{:.3} ({:.3}–{:.3})", m.mean, m.ci95.lower, m.ci95.upper),
        None => "n/a".into(),
    }
}

/// The title line shared by both kinds.
pub(super) fn title(r: &Reproducibility) -> String {
    format!(
        "Validation report: {} {} on {}",
        r.model.id, r.model.version, r.dataset.name
    )
}

/// The series the images come from, when the dataset records them.
fn series_used(md: &mut String, r: &Reproducibility) {
    if r.dataset.series.is_empty() {
        return;
    }
    md.push_str("\n## Series used\n\nChosen by the routing rules for the model, as `vigie serve` chooses them (`validate import-dicom`).\n\n| study | series | modality | description | rule | images |\n|---|---|---|---|---|---|\n");
    for s in &r.dataset.series {
        row(
            md,
            &[
                s.study_instance_uid.clone(),
                s.series_instance_uid.clone(),
                s.modality.clone().unwrap_or_default(),
                s.series_description.clone().unwrap_or_default(),
                s.rule.clone(),
                s.images.to_string(),
            ],
        );
    }
}

fn reproducibility_json(r: &Reproducibility) -> String {
    serde_json::to_value(r)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_default()
}

/// The Markdown of a classification report.
pub fn classification(report: &ClassificationReport) -> String {
    let r = &report.reproducibility;
    let metrics = &report.metrics;
    let mut md = String::new();
    let failures: u64 = report.operational.failures.values().sum();
    let _ = write!(
        md,
        "# {}\n\n{}\n\n## Result\n\n- Cases analysed: {} (failures: {failures})\n- Accuracy: {}\n- Balanced accuracy: {}\n- Cohen's kappa: {}\n\n",
        title(r),
        r.model.regulatory_status,
        metrics.n,
        proportion(&metrics.accuracy),
        number(metrics.balanced_accuracy, 3),
        number(metrics.cohen_kappa, 3),
    );
    md.push_str("## Per class (one vs rest)\n\n| class | n | sensitivity | specificity | PPV | NPV | F1 | ROC AUC (95% CI) | PR AUC | Brier |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for c in &metrics.classes {
        let auc = c
            .roc_auc
            .map(|a| {
                format!(
                    "{:.3} ({:.3}–{:.3}){}",
                    a.value,
                    a.ci95.lower,
                    a.ci95.upper,
                    auc_mark(a.method)
                )
            })
            .unwrap_or_else(|| "n/a".into());
        row(
            &mut md,
            &[
                c.label.clone(),
                c.support.to_string(),
                proportion(&c.sensitivity),
                proportion(&c.specificity),
                proportion(&c.ppv),
                proportion(&c.npv),
                number(c.f1, 3),
                auc,
                number(c.pr_auc, 3),
                number(c.brier, 4),
            ],
        );
    }
    md.push_str(AUC_NOTE);
    md.push_str("\n## Confusion matrix (rows: ground truth, columns: decision)\n\n|  |");
    for l in &metrics.labels {
        let _ = write!(md, " {l} |");
    }
    md.push_str("\n|---|");
    for _ in &metrics.labels {
        md.push_str("---|");
    }
    md.push('\n');
    for (l, row) in metrics.labels.iter().zip(&metrics.confusion) {
        let _ = write!(md, "| **{l}** |");
        for v in row {
            let _ = write!(md, " {v} |");
        }
        md.push('\n');
    }
    if !report.operating_points.is_empty() {
        md.push_str("\n## Operating points\n\n| class | target | threshold | sensitivity | specificity |\n|---|---|---|---|---|\n");
        for p in &report.operating_points {
            let Some(point) = &p.point else {
                let _ = writeln!(md, "| {} | not reachable | | | |", p.class);
                continue;
            };
            let target = match point.target {
                crate::stats::Target::Sensitivity => "sensitivity",
                crate::stats::Target::Specificity => "specificity",
            };
            let _ = writeln!(
                md,
                "| {} | {target} ≥ {} | {:.4} | {} | {} |",
                p.class,
                point.target_value,
                point.threshold,
                proportion(&point.sensitivity),
                proportion(&point.specificity),
            );
        }
    }
    if !report.subgroups.is_empty() {
        md.push_str("\n## Subgroups\n\n| attribute | value | n | accuracy | below the claim |\n|---|---|---|---|---|\n");
        for g in &report.subgroups {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                g.attribute,
                g.value,
                g.n,
                proportion(&g.metrics.accuracy),
                if g.below_claim.is_empty() {
                    "—".to_string()
                } else {
                    format!("**{}**", g.below_claim.join(", "))
                },
            );
        }
    }
    latency(&mut md, report);
    series_used(&mut md, r);
    let _ = write!(
        md,
        "\nThroughput: {:.2} images/s.\n\n## Methods\n\nProportions: Wilson score interval (95%, no continuity correction). ROC AUC: Mann–Whitney statistic with DeLong's variance, normal interval clipped to [0, 1]. PR AUC: average precision (step-wise). Brier score per class, one vs rest. Metrics computed by `vigie_validation::stats`, tested against scikit-learn and scipy to 1e-9.\n\n## Reproducibility\n\n```json\n{}\n```\n",
        report.operational.throughput_images_per_s,
        reproducibility_json(r)
    );
    md
}

fn latency(md: &mut String, report: &ClassificationReport) {
    md.push_str(
        "\n## Latency per image (ms)\n\n| stage | p50 | p95 | p99 | mean |\n|---|---|---|---|---|\n",
    );
    for (stage, l) in &report.operational.latency_ms {
        let _ = writeln!(
            md,
            "| {stage} | {:.1} | {:.1} | {:.1} | {:.1} |",
            l.p50, l.p95, l.p99, l.mean
        );
    }
}

/// The Markdown of a segmentation report.
pub fn segmentation(report: &SegmentationReport) -> String {
    let r = &report.reproducibility;
    let mut md = format!(
        "# {}\n\n{}\n\n## Segmentation (mean, seeded bootstrap 95% CI)\n\n| segment | n | Dice | IoU | HD95 (mm) | ASSD (mm) |\n|---|---|---|---|---|---|\n",
        title(r),
        r.model.regulatory_status
    );
    for s in &report.segmentation {
        row(
            &mut md,
            &[
                s.segment.clone(),
                s.n.to_string(),
                mean(&s.dice),
                mean(&s.iou),
                mean(&s.hd95_mm),
                mean(&s.assd_mm),
            ],
        );
    }
    series_used(&mut md, r);
    let _ = write!(
        md,
        "\nMetrics as MedPy defines them (Dice, Jaccard, HD95 pooled over both directions, ASSD), distances in mm from Pixel Spacing, the prediction resampled to the reference grid (nearest neighbour); tested against scipy.ndimage.\n\n## Reproducibility\n\n```json\n{}\n```\n",
        reproducibility_json(r)
    );
    md
}

/// How the AUC interval of each class is computed, under the table.
pub(super) const AUC_NOTE: &str = "\nROC AUC intervals: DeLong's; † Newcombe's score interval (2006, method 5) where DeLong's variance is zero (perfect separation), which would give a point.\n";

/// The mark of an AUC interval that is not DeLong's.
pub(super) fn auc_mark(method: crate::stats::AucMethod) -> &'static str {
    match method {
        crate::stats::AucMethod::Delong => "",
        crate::stats::AucMethod::NewcombeScore => " †",
    }
}
