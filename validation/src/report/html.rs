//! `report.html`: the report as one self-contained page, its plots (ROC,
//! precision–recall, reliability, confusion matrix, Dice per case) drawn
//! here as inline SVG: no script, no external resource, prints and
//! archives as is. Built with `maud`, which escapes every value by
//! construction. SVG elements are always closed (`{}`): inside HTML, an
//! SVG element written as a void tag would swallow what follows it.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::markdown::title;
use super::{ClassificationReport, SegmentationReport};
use crate::segmentation::MeanCi;
use crate::stats::{ClassificationMetrics, Proportion};

/// Line colours of the classes (colour-blind-safe palette, Wong 2011).
const COLOURS: &[&str] = &[
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000",
];

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#111}table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:left;font-size:13px}th{background:#eef}.plots{display:flex;flex-wrap:wrap;gap:16px}.status{background:#fff3cd;border:1px solid #e0c060;padding:8px}pre{background:#f6f6f6;padding:8px;font-size:12px;white-space:pre-wrap}";

fn proportion(p: &Option<Proportion>) -> Markup {
    match p {
        Some(p) => html! {
            (format!("{:.3} ", p.value))
            small { (format!("({}/{}; {:.3}–{:.3})", p.successes, p.n, p.ci95.lower, p.ci95.upper)) }
        },
        None => html! { "n/a" },
    }
}

fn number(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}"))
        .unwrap_or_else(|| "n/a".into())
}

fn mean(v: &Option<MeanCi>) -> Markup {
    match v {
        Some(m) => html! {
            (format!("{:.3} ", m.mean))
            small { (format!("({:.3}–{:.3})", m.ci95.lower, m.ci95.upper)) }
        },
        None => html! { "n/a" },
    }
}

/// A square unit plot (both axes 0–1) with series of points.
fn unit_plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    diagonal: bool,
    markers: bool,
) -> Markup {
    let (size, margin) = (360.0_f64, 48.0_f64);
    let plot = size - 2.0 * margin;
    let px = |x: f64| margin + x.clamp(0.0, 1.0) * plot;
    let py = |y: f64| size - margin - y.clamp(0.0, 1.0) * plot;
    let height = size + 20.0 * series.len() as f64;
    let ticks: Vec<f64> = (0..=5).map(|i| f64::from(i) / 5.0).collect();
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(size) height=(height)
            viewBox=(format!("0 0 {size} {height}")) role="img" aria-label=(title) {
            rect width="100%" height="100%" fill="white" {}
            text x=(size / 2.0) y="20" text-anchor="middle" font-size="14" font-weight="bold" { (title) }
            @for v in &ticks {
                line x1=(px(*v)) y1=(py(0.0)) x2=(px(*v)) y2=(py(1.0)) stroke="#ddd" {}
                line x1=(px(0.0)) y1=(py(*v)) x2=(px(1.0)) y2=(py(*v)) stroke="#ddd" {}
                text x=(px(*v)) y=(py(0.0) + 14.0) text-anchor="middle" font-size="10" { (format!("{v:.1}")) }
                text x=(px(0.0) - 4.0) y=(py(*v)) text-anchor="end" font-size="10" dy="3" { (format!("{v:.1}")) }
            }
            rect x=(margin) y=(margin) width=(plot) height=(plot) fill="none" stroke="#333" {}
            text x=(size / 2.0) y=(size - 12.0) text-anchor="middle" font-size="12" { (x_label) }
            text x="14" y=(size / 2.0) text-anchor="middle" font-size="12"
                transform=(format!("rotate(-90 14 {})", size / 2.0)) { (y_label) }
            @if diagonal {
                line x1=(px(0.0)) y1=(py(0.0)) x2=(px(1.0)) y2=(py(1.0)) stroke="#999" stroke-dasharray="4 4" {}
            }
            @for (i, (name, points)) in series.iter().enumerate() {
                @let colour = COLOURS[i % COLOURS.len()];
                @let path: Vec<String> = points.iter().map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
                polyline points=(path.join(" ")) fill="none" stroke=(colour) stroke-width="2.5" {}
                @if markers {
                    @for (x, y) in points {
                        circle cx=(format!("{:.1}", px(*x))) cy=(format!("{:.1}", py(*y))) r="3.5" fill=(colour) {}
                    }
                }
                @let ly = size + 14.0 + 20.0 * i as f64;
                rect x=(margin) y=(ly - 6.0) width="14" height="4" fill=(colour) {}
                text x=(margin + 20.0) y=(ly) font-size="12" { (name) }
            }
        }
    }
}

fn confusion_svg(metrics: &ClassificationMetrics) -> Markup {
    let k = metrics.labels.len().max(1);
    let (cell, left, top) = (64.0_f64, 120.0_f64, 110.0_f64);
    let size_x = left + cell * k as f64 + 10.0;
    let size_y = top + cell * k as f64 + 30.0;
    let max = metrics
        .confusion
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(size_x) height=(size_y) role="img" aria-label="Confusion matrix" {
            rect width="100%" height="100%" fill="white" {}
            text x=(size_x / 2.0) y="18" text-anchor="middle" font-size="14" font-weight="bold" { "Confusion matrix" }
            text x=(size_x / 2.0) y="36" text-anchor="middle" font-size="11" { "columns: decision · rows: ground truth" }
            @for (j, label) in metrics.labels.iter().enumerate() {
                @let x = left + cell * (j as f64 + 0.5);
                text x=(x) y=(top - 8.0) font-size="11" text-anchor="start"
                    transform=(format!("rotate(-40 {x} {})", top - 8.0)) { (label) }
                text x=(left - 8.0) y=(top + cell * (j as f64 + 0.5) + 4.0) font-size="11" text-anchor="end" { (label) }
            }
            @for (i, row) in metrics.confusion.iter().enumerate() {
                @for (j, count) in row.iter().enumerate() {
                    @let intensity = *count as f64 / max;
                    @let shade = (255.0 - 200.0 * intensity).round() as u8;
                    rect x=(left + cell * j as f64) y=(top + cell * i as f64) width=(cell) height=(cell)
                        fill=(format!("rgb({shade},{shade},255)")) stroke="#333" {}
                    text x=(left + cell * (j as f64 + 0.5)) y=(top + cell * (i as f64 + 0.5) + 6.0)
                        text-anchor="middle" font-size="16" fill=(if intensity > 0.5 { "white" } else { "black" }) { (count) }
                }
            }
        }
    }
}

fn page(title: &str, status: &str, body: Markup, markdown: &str) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { (title) }
                p class="status" { (status) }
                (body)
                h2 { "Full report (Markdown)" }
                pre { (markdown) }
            }
        }
    }
    .into_string()
}

/// The page of a classification report.
pub fn classification(report: &ClassificationReport, markdown: &str) -> String {
    let metrics = &report.metrics;
    let roc: Vec<(String, Vec<(f64, f64)>)> = metrics
        .classes
        .iter()
        .filter(|c| !c.roc_curve.is_empty())
        .map(|c| {
            let auc = c
                .roc_auc
                .map(|a| format!(" (AUC {:.3})", a.value))
                .unwrap_or_default();
            (format!("{}{auc}", c.label), c.roc_curve.clone())
        })
        .collect();
    let pr: Vec<(String, Vec<(f64, f64)>)> = metrics
        .classes
        .iter()
        .filter(|c| !c.pr_curve.is_empty())
        .map(|c| {
            let ap = c
                .pr_auc
                .map(|a| format!(" (AP {a:.3})"))
                .unwrap_or_default();
            (format!("{}{ap}", c.label), c.pr_curve.clone())
        })
        .collect();
    let calibration: Vec<(String, Vec<(f64, f64)>)> = metrics
        .classes
        .iter()
        .map(|c| {
            let brier = c
                .brier
                .map(|b| format!(" (Brier {b:.4})"))
                .unwrap_or_default();
            (
                format!("{}{brier}", c.label),
                c.calibration
                    .iter()
                    .map(|b| (b.predicted, b.observed))
                    .collect(),
            )
        })
        .collect();
    let body = html! {
        h2 { "Result" }
        table {
            tr { th { "cases" } td { (metrics.n) } }
            tr { th { "accuracy (95% Wilson CI)" } td { (proportion(&metrics.accuracy)) } }
            tr { th { "balanced accuracy" } td { (number(metrics.balanced_accuracy, 3)) } }
            tr { th { "Cohen's kappa" } td { (number(metrics.cohen_kappa, 3)) } }
        }
        h2 { "Per class (one vs rest)" }
        table {
            tr {
                th { "class" } th { "n" } th { "sensitivity" } th { "specificity" } th { "PPV" }
                th { "NPV" } th { "F1" } th { "ROC AUC (95% CI)" } th { "PR AUC" } th { "Brier" }
            }
            @for c in &metrics.classes {
                tr {
                    td { (c.label) }
                    td { (c.support) }
                    td { (proportion(&c.sensitivity)) }
                    td { (proportion(&c.specificity)) }
                    td { (proportion(&c.ppv)) }
                    td { (proportion(&c.npv)) }
                    td { (number(c.f1, 3)) }
                    td {
                        @match c.roc_auc {
                            Some(a) => (format!("{:.3} ({:.3}–{:.3}){}", a.value, a.ci95.lower, a.ci95.upper, super::markdown::auc_mark(a.method))),
                            None => "n/a",
                        }
                    }
                    td { (number(c.pr_auc, 3)) }
                    td { (number(c.brier, 4)) }
                }
            }
        }
        p { (super::markdown::AUC_NOTE.trim()) }
        @if !report.subgroups.is_empty() {
            h2 { "Subgroups" }
            table {
                tr { th { "attribute" } th { "value" } th { "n" } th { "accuracy (95% Wilson CI)" } th { "below the claim" } }
                @for g in &report.subgroups {
                    tr {
                        td { (g.attribute) }
                        td { (g.value) }
                        td { (g.n) }
                        td { (proportion(&g.metrics.accuracy)) }
                        td {
                            @if g.below_claim.is_empty() {
                                "—"
                            } @else {
                                strong style="color:#b00" { (g.below_claim.join(", ")) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Plots" }
        div class="plots" {
            (unit_plot("ROC curves", "1 − specificity", "sensitivity", &roc, true, false))
            (unit_plot("Precision–recall", "recall", "precision", &pr, false, false))
            (unit_plot("Reliability (10 bins)", "mean predicted probability", "observed frequency", &calibration, true, true))
            (confusion_svg(metrics))
        }
    };
    let r = &report.reproducibility;
    page(&title(r), &r.model.regulatory_status, body, markdown)
}

/// The page of a segmentation report: per-segment and per-subgroup means
/// with their intervals, and the Dice of every case as a bar chart.
pub fn segmentation(report: &SegmentationReport, markdown: &str) -> String {
    let (bar, gap, height, left) = (22.0_f64, 6.0_f64, 240.0_f64, 40.0_f64);
    let width = left + (bar + gap) * report.cases.len().max(1) as f64 + 20.0;
    let base = 10.0 + height;
    let body = html! {
        h2 { "Segmentation (mean, seeded bootstrap 95% CI)" }
        table {
            tr { th { "segment" } th { "n" } th { "Dice" } th { "IoU" } th { "HD95 (mm)" } th { "ASSD (mm)" } }
            @for s in &report.segmentation {
                tr {
                    td { (s.segment) } td { (s.n) } td { (mean(&s.dice)) } td { (mean(&s.iou)) }
                    td { (mean(&s.hd95_mm)) } td { (mean(&s.assd_mm)) }
                }
            }
        }
        h2 { "Subgroups" }
        table {
            tr { th { "attribute" } th { "value" } th { "segment" } th { "n" } th { "Dice" } th { "HD95 (mm)" } }
            @for g in &report.subgroups {
                @for s in &g.segments {
                    tr {
                        td { (g.attribute) } td { (g.value) } td { (s.segment) } td { (s.n) }
                        td { (mean(&s.dice)) } td { (mean(&s.hd95_mm)) }
                    }
                }
            }
        }
        h2 { "Dice per case" }
        svg xmlns="http://www.w3.org/2000/svg" width=(width) height=(height + 40.0) role="img" aria-label="Dice per case" {
            rect width="100%" height="100%" fill="white" {}
            line x1=(left) y1="10" x2=(left) y2=(base) stroke="#333" {}
            line x1=(left) y1=(base) x2=(width) y2=(base) stroke="#333" {}
            text x="4" y="14" font-size="10" { "1.0" }
            text x="4" y=(base) font-size="10" { "0.0" }
            @for (i, case) in report.cases.iter().enumerate() {
                @let x = left + gap + (bar + gap) * i as f64;
                @let h = case.scores.dice.clamp(0.0, 1.0) * height;
                rect x=(x) y=(10.0 + height - h) width=(bar) height=(h) fill="#0072B2" {
                    title { (format!("{}: {:.3}", case.file.display(), case.scores.dice)) }
                }
            }
        }
    };
    let r = &report.reproducibility;
    page(&title(r), &r.model.regulatory_status, body, markdown)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::{
        AuditRef, DatasetInfo, HotLoopInfo, ModelInfo, Operational, Reproducibility, SoftwareInfo,
        Subgroup,
    };

    fn report(label: &str) -> ClassificationReport {
        let labels = vec![label.to_string(), "other".to_string()];
        let metrics = crate::stats::classification(
            &labels,
            &[0, 1, 0, 1],
            &[0, 1, 1, 1],
            &[
                vec![0.9, 0.1],
                vec![0.2, 0.8],
                vec![0.4, 0.6],
                vec![0.3, 0.7],
            ],
        );
        ClassificationReport {
            reproducibility: Reproducibility {
                model: ModelInfo {
                    id: "m".into(),
                    version: "1".into(),
                    sha256: "00".into(),
                    regulatory_status: "Test <b>fixture</b> & co".into(),
                    intended_use: "tests".into(),
                },
                software: SoftwareInfo {
                    version: "0".into(),
                    git_commit: "x".into(),
                },
                dataset: DatasetInfo {
                    name: "d".into(),
                    content_sha256: "11".into(),
                    studies: 4,
                    path: "/d".into(),
                    series: Vec::new(),
                },
                execution: vigie_inference::backend::Execution {
                    backend: "onnxruntime",
                    provider: "CPUExecutionProvider".into(),
                    device: "cpu".into(),
                    intra_threads: 1,
                    runtime_version: "1".into(),
                },
                hot_loop: HotLoopInfo {
                    max_batch: 1,
                    max_delay_ms: 0.0,
                    decode_threads: 1,
                },
                host: "h".into(),
                date: "2026-12-02T00:00:00Z".into(),
                command: vec!["vigie".into()],
                audit: AuditRef {
                    data_dir: "/data".into(),
                    public_key: "ab".into(),
                    first_record: 1,
                    last_inference_record: Some(5),
                },
            },
            subgroups: vec![Subgroup {
                attribute: "site".into(),
                value: label.into(),
                n: 4,
                metrics: metrics.clone(),
                below_claim: vec!["accuracy".into()],
            }],
            metrics,
            claims: BTreeMap::new(),
            operating_points: Vec::new(),
            operational: Operational {
                latency_ms: BTreeMap::new(),
                throughput_images_per_s: 1.0,
                failures: BTreeMap::new(),
            },
            cases: Vec::new(),
        }
    }

    #[test]
    fn every_value_from_the_data_is_escaped_and_every_svg_element_is_closed() {
        let hostile = "<script>alert(1)</script>";
        let page = classification(&report(hostile), "# md <i>not html</i>");
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("Test &lt;b&gt;fixture&lt;/b&gt; &amp; co"));
        assert!(page.contains("# md &lt;i&gt;not html&lt;/i&gt;"));
        for element in ["svg", "rect", "line", "text", "polyline", "circle"] {
            let opened = page.matches(&format!("<{element} ")).count();
            let closed = page.matches(&format!("</{element}>")).count();
            assert_eq!(
                opened, closed,
                "<{element}> opened {opened}, closed {closed}"
            );
        }
        assert_eq!(
            page.matches("<svg ").count(),
            4,
            "ROC, PR, reliability, confusion"
        );
        assert!(page.starts_with("<!DOCTYPE html>"));
    }
}
