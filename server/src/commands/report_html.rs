//! `report.html`: the validation report as one self-contained page, its
//! plots (ROC, precision–recall, reliability, confusion matrix) drawn by
//! this module as inline SVG: no script, no external resource, prints and
//! archives as is.

use std::fmt::Write as _;

use vigie_validation::stats::{ClassificationMetrics, Proportion};

/// Line colours of the classes (colour-blind-safe palette, Wong 2011).
const COLOURS: &[&str] = &[
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(p: &Option<Proportion>) -> String {
    p.map(|p| {
        format!(
            "{:.3} <small>({}/{}; {:.3}–{:.3})</small>",
            p.value, p.successes, p.n, p.ci95.lower, p.ci95.upper
        )
    })
    .unwrap_or_else(|| "n/a".into())
}

/// A square unit plot (both axes 0–1) with series of points.
fn unit_plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    diagonal: bool,
    markers: bool,
) -> String {
    let (size, margin) = (360.0, 48.0);
    let plot = size - 2.0 * margin;
    let px = |x: f64| margin + x.clamp(0.0, 1.0) * plot;
    let py = |y: f64| size - margin - y.clamp(0.0, 1.0) * plot;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{h}" viewBox="0 0 {size} {h}" role="img" aria-label="{t}"><rect width="100%" height="100%" fill="white"/><text x="{cx}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{t}</text>"#,
        h = size + 20.0 * series.len() as f64,
        t = escape(title),
        cx = size / 2.0
    );
    for i in 0..=5 {
        let v = i as f64 / 5.0;
        let _ = write!(
            svg,
            r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{y1}" stroke="#ddd"/><line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#ddd"/><text x="{x}" y="{ty}" text-anchor="middle" font-size="10">{v:.1}</text><text x="{tx}" y="{y}" text-anchor="end" font-size="10" dy="3">{v:.1}</text>"##,
            x = px(v),
            y = py(v),
            y0 = py(0.0),
            y1 = py(1.0),
            x0 = px(0.0),
            x1 = px(1.0),
            ty = py(0.0) + 14.0,
            tx = px(0.0) - 4.0
        );
    }
    let _ = write!(
        svg,
        r##"<rect x="{m}" y="{m}" width="{p}" height="{p}" fill="none" stroke="#333"/><text x="{cx}" y="{xl}" text-anchor="middle" font-size="12">{xlab}</text><text x="14" y="{cy}" text-anchor="middle" font-size="12" transform="rotate(-90 14 {cy})">{ylab}</text>"##,
        m = margin,
        p = plot,
        cx = size / 2.0,
        xl = size - 12.0,
        cy = size / 2.0,
        xlab = escape(x_label),
        ylab = escape(y_label)
    );
    if diagonal {
        let _ = write!(
            svg,
            r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#999" stroke-dasharray="4 4"/>"##,
            px(0.0),
            py(0.0),
            px(1.0),
            py(1.0)
        );
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2.5"/>"#,
            path.join(" ")
        );
        if markers {
            for (x, y) in points {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{colour}"/>"#,
                    px(*x),
                    py(*y)
                );
            }
        }
        let ly = size + 14.0 + 20.0 * i as f64;
        let _ = write!(
            svg,
            r#"<rect x="{m}" y="{y}" width="14" height="4" fill="{colour}"/><text x="{tx}" y="{ty}" font-size="12">{n}</text>"#,
            m = margin,
            y = ly - 6.0,
            tx = margin + 20.0,
            ty = ly,
            n = escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn confusion_svg(metrics: &ClassificationMetrics) -> String {
    let k = metrics.labels.len().max(1);
    let cell = 64.0;
    let left = 120.0;
    let top = 110.0;
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
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{size_x}" height="{size_y}" role="img" aria-label="Confusion matrix"><rect width="100%" height="100%" fill="white"/><text x="{cx}" y="18" text-anchor="middle" font-size="14" font-weight="bold">Confusion matrix</text><text x="{cx}" y="36" text-anchor="middle" font-size="11">columns: decision · rows: ground truth</text>"#,
        cx = size_x / 2.0
    );
    for (j, label) in metrics.labels.iter().enumerate() {
        let x = left + cell * (j as f64 + 0.5);
        let _ = write!(
            svg,
            r#"<text x="{x}" y="{y}" font-size="11" text-anchor="start" transform="rotate(-40 {x} {y})">{l}</text>"#,
            y = top - 8.0,
            l = escape(label)
        );
        let _ = write!(
            svg,
            r#"<text x="{x}" y="{y}" font-size="11" text-anchor="end">{l}</text>"#,
            x = left - 8.0,
            y = top + cell * (j as f64 + 0.5) + 4.0,
            l = escape(label)
        );
    }
    for (i, row) in metrics.confusion.iter().enumerate() {
        for (j, count) in row.iter().enumerate() {
            let intensity = *count as f64 / max;
            let shade = (255.0 - 200.0 * intensity).round() as u8;
            let text = if intensity > 0.5 { "white" } else { "black" };
            let _ = write!(
                svg,
                r##"<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="rgb({shade},{shade},255)" stroke="#333"/><text x="{tx}" y="{ty}" text-anchor="middle" font-size="16" fill="{text}">{count}</text>"##,
                x = left + cell * j as f64,
                y = top + cell * i as f64,
                tx = left + cell * (j as f64 + 0.5),
                ty = top + cell * (i as f64 + 0.5) + 6.0
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The whole page.
pub fn html(
    report: &serde_json::Value,
    metrics: &ClassificationMetrics,
    markdown_md: &str,
) -> String {
    let r = &report["reproducibility"];
    let title = format!(
        "Validation report: {} {} on {}",
        r["model"]["id"].as_str().unwrap_or(""),
        r["model"]["version"].as_str().unwrap_or(""),
        r["dataset"]["name"].as_str().unwrap_or("")
    );
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
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{t}</title><style>body{{font-family:sans-serif;margin:24px;color:#111}}table{{border-collapse:collapse;margin:12px 0}}td,th{{border:1px solid #bbb;padding:4px 8px;text-align:left;font-size:13px}}th{{background:#eef}}.plots{{display:flex;flex-wrap:wrap;gap:16px}}.status{{background:#fff3cd;border:1px solid #e0c060;padding:8px}}pre{{background:#f6f6f6;padding:8px;font-size:12px;white-space:pre-wrap}}</style></head><body><h1>{t}</h1><p class="status">{status}</p>"#,
        t = escape(&title),
        status = escape(r["model"]["regulatory_status"].as_str().unwrap_or(""))
    );
    let _ = write!(
        page,
        "<h2>Result</h2><table><tr><th>cases</th><td>{}</td></tr><tr><th>accuracy (95% Wilson CI)</th><td>{}</td></tr><tr><th>balanced accuracy</th><td>{}</td></tr><tr><th>Cohen's kappa</th><td>{}</td></tr></table>",
        metrics.n,
        pct(&metrics.accuracy),
        metrics
            .balanced_accuracy
            .map(|v| format!("{v:.3}"))
            .unwrap_or("n/a".into()),
        metrics
            .cohen_kappa
            .map(|v| format!("{v:.3}"))
            .unwrap_or("n/a".into())
    );
    page.push_str("<h2>Per class (one vs rest)</h2><table><tr><th>class</th><th>n</th><th>sensitivity</th><th>specificity</th><th>PPV</th><th>NPV</th><th>F1</th><th>ROC AUC (DeLong 95% CI)</th><th>PR AUC</th><th>Brier</th></tr>");
    for c in &metrics.classes {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&c.label),
            c.support,
            pct(&c.sensitivity),
            pct(&c.specificity),
            pct(&c.ppv),
            pct(&c.npv),
            c.f1.map(|v| format!("{v:.3}")).unwrap_or("n/a".into()),
            c.roc_auc
                .map(|a| format!("{:.3} ({:.3}–{:.3})", a.value, a.ci95.lower, a.ci95.upper))
                .unwrap_or("n/a".into()),
            c.pr_auc.map(|v| format!("{v:.3}")).unwrap_or("n/a".into()),
            c.brier.map(|v| format!("{v:.4}")).unwrap_or("n/a".into()),
        );
    }
    page.push_str("</table>");
    if let Some(groups) = report["subgroups"].as_array().filter(|g| !g.is_empty()) {
        page.push_str("<h2>Subgroups</h2><table><tr><th>attribute</th><th>value</th><th>n</th><th>accuracy (95% Wilson CI)</th><th>below the claim</th></tr>");
        for g in groups {
            let (attribute, value, n, accuracy, flags) = super::validate_run::subgroup_row(g);
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{n}</td><td>{}</td><td>{}</td></tr>",
                escape(attribute),
                escape(value),
                pct(&accuracy),
                if flags.is_empty() {
                    "—".to_string()
                } else {
                    format!(
                        "<strong style=\"color:#b00\">{}</strong>",
                        escape(&flags.join(", "))
                    )
                }
            );
        }
        page.push_str("</table>");
    }
    page.push_str("<h2>Plots</h2><div class=\"plots\">");
    page.push_str(&unit_plot(
        "ROC curves",
        "1 − specificity",
        "sensitivity",
        &roc,
        true,
        false,
    ));
    page.push_str(&unit_plot(
        "Precision–recall",
        "recall",
        "precision",
        &pr,
        false,
        false,
    ));
    page.push_str(&unit_plot(
        "Reliability (10 bins)",
        "mean predicted probability",
        "observed frequency",
        &calibration,
        true,
        true,
    ));
    page.push_str(&confusion_svg(metrics));
    page.push_str("</div>");
    let _ = write!(
        page,
        "<h2>Full report (Markdown)</h2><pre>{}</pre></body></html>",
        escape(markdown_md)
    );
    page
}

fn mean_cell(v: &serde_json::Value) -> String {
    if v.is_null() {
        return "n/a".into();
    }
    format!(
        "{:.3} <small>({:.3}–{:.3})</small>",
        v["mean"].as_f64().unwrap_or(f64::NAN),
        v["ci95"]["lower"].as_f64().unwrap_or(f64::NAN),
        v["ci95"]["upper"].as_f64().unwrap_or(f64::NAN)
    )
}

/// The page of a segmentation run: per-segment and per-subgroup means with
/// their intervals, latency, and the Dice of every case as a bar chart.
pub fn segmentation_html(report: &serde_json::Value, markdown_md: &str) -> String {
    let r = &report["reproducibility"];
    let title = format!(
        "Validation report: {} {} on {}",
        r["model"]["id"].as_str().unwrap_or(""),
        r["model"]["version"].as_str().unwrap_or(""),
        r["dataset"]["name"].as_str().unwrap_or("")
    );
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{t}</title><style>body{{font-family:sans-serif;margin:24px;color:#111}}table{{border-collapse:collapse;margin:12px 0}}td,th{{border:1px solid #bbb;padding:4px 8px;text-align:left;font-size:13px}}th{{background:#eef}}.status{{background:#fff3cd;border:1px solid #e0c060;padding:8px}}pre{{background:#f6f6f6;padding:8px;font-size:12px;white-space:pre-wrap}}</style></head><body><h1>{t}</h1><p class="status">{status}</p><h2>Segmentation (mean, seeded bootstrap 95% CI)</h2><table><tr><th>segment</th><th>n</th><th>Dice</th><th>IoU</th><th>HD95 (mm)</th><th>ASSD (mm)</th></tr>"#,
        t = escape(&title),
        status = escape(r["model"]["regulatory_status"].as_str().unwrap_or(""))
    );
    for s in report["segmentation"].as_array().into_iter().flatten() {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(s["segment"].as_str().unwrap_or("")),
            s["n"],
            mean_cell(&s["dice"]),
            mean_cell(&s["iou"]),
            mean_cell(&s["hd95_mm"]),
            mean_cell(&s["assd_mm"])
        );
    }
    page.push_str("</table><h2>Subgroups</h2><table><tr><th>attribute</th><th>value</th><th>segment</th><th>n</th><th>Dice</th><th>HD95 (mm)</th></tr>");
    for g in report["subgroups"].as_array().into_iter().flatten() {
        for s in g["segments"].as_array().into_iter().flatten() {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(g["attribute"].as_str().unwrap_or("")),
                escape(g["value"].as_str().unwrap_or("")),
                escape(s["segment"].as_str().unwrap_or("")),
                s["n"],
                mean_cell(&s["dice"]),
                mean_cell(&s["hd95_mm"])
            );
        }
    }
    page.push_str("</table><h2>Dice per case</h2>");
    let dice: Vec<(String, f64)> = report["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["file"].as_str().unwrap_or("").to_string(),
                c["scores"]["dice"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let (bar, gap, height, left) = (22.0, 6.0, 240.0, 40.0);
    let width = left + (bar + gap) * dice.len().max(1) as f64 + 20.0;
    let _ = write!(
        page,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img" aria-label="Dice per case"><rect width="100%" height="100%" fill="white"/><line x1="{left}" y1="10" x2="{left}" y2="{base}" stroke="#333"/><line x1="{left}" y1="{base}" x2="{width}" y2="{base}" stroke="#333"/><text x="4" y="14" font-size="10">1.0</text><text x="4" y="{base}" font-size="10">0.0</text>"##,
        h = height + 40.0,
        base = 10.0 + height
    );
    for (i, (file, d)) in dice.iter().enumerate() {
        let x = left + gap + (bar + gap) * i as f64;
        let h = d.clamp(0.0, 1.0) * height;
        let _ = write!(
            page,
            r##"<rect x="{x}" y="{y}" width="{bar}" height="{h}" fill="#0072B2"><title>{f}: {d:.3}</title></rect>"##,
            y = 10.0 + height - h,
            f = escape(file)
        );
    }
    page.push_str("</svg>");
    let _ = write!(
        page,
        "<h2>Full report (Markdown)</h2><pre>{}</pre></body></html>",
        escape(markdown_md)
    );
    page
}
