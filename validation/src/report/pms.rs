//! The post-market surveillance report as Markdown (`pms.md`) and as one
//! self-contained HTML page with its plots as inline SVG (`pms.html`,
//! built with `maud`, which escapes every value by construction).

use std::fmt::Write;

use maud::{DOCTYPE, Markup, html};

use crate::pms::{Agreement, PmsReport};
use crate::stats::Proportion;

fn p_text(p: &Option<Proportion>) -> String {
    match p {
        Some(p) => format!(
            "{:.3} ({}/{}; 95 % CI {:.3}–{:.3})",
            p.value, p.successes, p.n, p.ci95.lower, p.ci95.upper
        ),
        None => "n/a".into(),
    }
}

fn num(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "n/a".into())
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn agreement_rows(out: &mut String, a: &Agreement) {
    let _ = writeln!(out, "| analysed | {} |", a.analysed);
    let _ = writeln!(out, "| reviewed | {} |", p_text(&a.reviewed));
    let _ = writeln!(
        out,
        "| agreement (accepted / reviewed) = accuracy against the verdicts | {} |",
        p_text(&a.agreement)
    );
    for (class, c) in &a.per_class {
        let _ = writeln!(
            out,
            "| {} sensitivity | {} |",
            cell(class),
            p_text(&c.sensitivity)
        );
        let _ = writeln!(
            out,
            "| {} specificity | {} |",
            cell(class),
            p_text(&c.specificity)
        );
    }
    let _ = writeln!(
        out,
        "| cases on which reviewers disagree | {} |",
        a.reviewers_disagree
    );
}

/// `pms.md`.
pub fn markdown(r: &PmsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Post-market surveillance: {} {}\n",
        cell(&r.model),
        cell(r.version.as_deref().unwrap_or("(all versions)"))
    );
    let _ = writeln!(
        out,
        "Window {} to {}, per {:?}; versions seen: {}. Reference of drift: {} to {} ({} cases). Computed from the audit trail and the reviews only; `cases.csv` lists every inference with its audit sequence number. Validation inferences left out: {}. Reviews matching no inference of the window: {}.\n",
        r.from,
        r.to,
        r.period,
        r.versions.join(", "),
        r.reference.0,
        r.reference.1,
        r.reference.2,
        r.validation_left_out,
        r.reviews_unmatched
    );
    let _ = writeln!(out, "## Alarms\n");
    if r.alarms.is_empty() {
        let _ = writeln!(out, "None.\n");
    } else {
        let _ = writeln!(
            out,
            "| period | indicator | value | threshold | action |\n|---|---|---|---|---|"
        );
        for a in &r.alarms {
            let _ = writeln!(
                out,
                "| {} | {} | {:.3} | {:.3} | {} |",
                a.period,
                cell(&a.indicator),
                a.value,
                a.threshold,
                a.action
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "## The window\n\n| indicator | value |\n|---|---|");
    let _ = writeln!(out, "| volume | {} |", r.volume);
    let _ = writeln!(out, "| failure rate | {} |", p_text(&r.failure_rate));
    if let Some(l) = r.latency_ms {
        let _ = writeln!(
            out,
            "| latency p50 / p90 / p99 (ms) | {:.1} / {:.1} / {:.1} |",
            l[0], l[1], l[2]
        );
    }
    agreement_rows(&mut out, &r.agreement);
    let _ = writeln!(out, "\nFailures by reason:\n");
    for (reason, n) in &r.failures {
        let _ = writeln!(out, "- {}: {n}", cell(reason));
    }
    let _ = writeln!(
        out,
        "\n## Per period\n\n| period | volume | failure rate | agreement | agreement control limits | latency p50 ms | input PSI (max) | intensity PSI | output PSI | mean p | records |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in &r.periods {
        let max_input = p
            .drift
            .input
            .values()
            .copied()
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} |",
            p.period,
            p.volume,
            p_text(&p.failure_rate),
            p_text(&p.agreement.agreement),
            if p.agreement_out_of_control {
                " **below**"
            } else {
                ""
            },
            p.agreement_limits
                .map(|(lo, hi)| format!("{lo:.3}–{hi:.3}"))
                .unwrap_or_else(|| "n/a".into()),
            p.latency_ms
                .map(|l| format!("{:.1}", l[0]))
                .unwrap_or_default(),
            if p.drift.measured {
                num(max_input)
            } else {
                "too few cases".into()
            },
            num(p.drift.intensity),
            num(p.drift.output),
            num(p.drift.mean_probability),
            p.seq_range
                .map(|(a, b)| format!("seq {a}–{b}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(out, "\n## Per subgroup\n");
    for (attribute, values) in &r.subgroups {
        let _ = writeln!(
            out,
            "### {}\n\n| value | volume | failure rate | reviewed | agreement |\n|---|---|---|---|---|",
            cell(attribute)
        );
        for (value, f) in values {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                cell(value),
                f.volume,
                p_text(&f.failure_rate),
                p_text(&f.agreement.reviewed),
                p_text(&f.agreement.agreement)
            );
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "Thresholds: PSI ≥ {} watch, ≥ {} alarm, measured in periods of at least {} analysed cases; control limits: exact binomial, {} on each side (3 σ). Method: docs/post-market.md.",
        r.thresholds.psi_watch,
        r.thresholds.psi_alarm,
        r.thresholds.min_cases_for_drift,
        r.thresholds.control_alpha
    );
    out
}

/// One point of a trend: its label, value and optional band (limits).
type Point = (String, Option<f64>, Option<(f64, f64)>);

/// A line chart of one value per period, with an optional band.
fn trend(title: &str, points: &[Point], max: f64) -> Markup {
    let (w, h, m) = (560.0_f64, 220.0_f64, 40.0_f64);
    let n = points.len().max(2) as f64 - 1.0;
    let x = |i: usize| m + (w - 2.0 * m) * i as f64 / n;
    let y = |v: f64| h - m - (h - 2.0 * m) * (v / max).clamp(0.0, 1.0);
    let line: String = points
        .iter()
        .enumerate()
        .filter_map(|(i, (_, v, _))| v.map(|v| format!("{:.1},{:.1}", x(i), y(v))))
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        svg width=(w) height=(h) xmlns="http://www.w3.org/2000/svg" role="img" {
            title { (title) }
            text x=(m) y="16" font-size="13" { (title) }
            line x1=(m) y1=(h - m) x2=(w - m) y2=(h - m) stroke="#888" {}
            line x1=(m) y1=(m) x2=(m) y2=(h - m) stroke="#888" {}
            text x="4" y=(m + 4.0) font-size="10" { (format!("{max:.2}")) }
            text x="4" y=(h - m) font-size="10" { "0" }
            @for (i, (label, _, band)) in points.iter().enumerate() {
                @if let Some((lo, hi)) = band {
                    line x1=(x(i)) y1=(y(*lo)) x2=(x(i)) y2=(y(*hi)) stroke="#E69F00" stroke-width="6" stroke-opacity="0.5" {}
                }
                text x=(x(i) - 24.0) y=(h - m + 16.0) font-size="10" { (label) }
            }
            polyline points=(line) fill="none" stroke="#0072B2" stroke-width="2" {}
            @for (i, (_, v, _)) in points.iter().enumerate() {
                @if let Some(v) = v {
                    circle cx=(x(i)) cy=(y(*v)) r="3" fill="#0072B2" {}
                }
            }
        }
    }
}

/// `pms.html`.
pub fn html(r: &PmsReport) -> String {
    let agreement: Vec<_> = r
        .periods
        .iter()
        .map(|p| {
            (
                p.period.to_string(),
                p.agreement.agreement.map(|a| a.value),
                p.agreement_limits,
            )
        })
        .collect();
    let psi: Vec<_> = r
        .periods
        .iter()
        .map(|p| {
            let max = p
                .drift
                .input
                .values()
                .copied()
                .chain(p.drift.intensity)
                .chain(p.drift.output)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            (p.period.to_string(), max, None)
        })
        .collect();
    let psi_max = psi.iter().filter_map(|p| p.1).fold(0.5_f64, f64::max);
    let volume: Vec<_> = r
        .periods
        .iter()
        .map(|p| (p.period.to_string(), Some(p.volume as f64), None))
        .collect();
    let volume_max = r.periods.iter().map(|p| p.volume).max().unwrap_or(1).max(1) as f64;
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Post-market surveillance: " (r.model) }
                style { "body{font-family:sans-serif;margin:24px;color:#111}table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #bbb;padding:4px 8px;font-size:13px;text-align:left}th{background:#eef}.alarm{background:#fde2e1}.plots{display:flex;flex-wrap:wrap;gap:16px}" }
            }
            body {
                h1 { "Post-market surveillance: " (r.model) " " (r.version.as_deref().unwrap_or("(all versions)")) }
                p { "Window " (r.from) " to " (r.to) "; reference of drift " (r.reference.0) " to " (r.reference.1) " (" (r.reference.2) " cases). Volume " (r.volume) ", failure rate " (p_text(&r.failure_rate)) ", agreement " (p_text(&r.agreement.agreement)) "." }
                h2 { "Alarms" }
                @if r.alarms.is_empty() { p { "None." } } @else {
                    table {
                        tr { th { "period" } th { "indicator" } th { "value" } th { "threshold" } th { "action" } }
                        @for a in &r.alarms {
                            tr class="alarm" { td { (a.period.to_string()) } td { (a.indicator) } td { (format!("{:.3}", a.value)) } td { (format!("{:.3}", a.threshold)) } td { (a.action) } }
                        }
                    }
                }
                div class="plots" {
                    (trend("Agreement per period (band: control limits)", &agreement, 1.0))
                    (trend(&format!("Largest drift PSI per period (alarm at {})", r.thresholds.psi_alarm), &psi, psi_max))
                    (trend("Volume per period", &volume, volume_max))
                }
                h2 { "Per period" }
                table {
                    tr { th { "period" } th { "volume" } th { "failure rate" } th { "agreement" } th { "input PSI" } th { "intensity PSI" } th { "output PSI" } th { "records" } }
                    @for p in &r.periods {
                        tr {
                            td { (p.period.to_string()) }
                            td { (p.volume) }
                            td { (p_text(&p.failure_rate)) }
                            td { (p_text(&p.agreement.agreement)) }
                            td { (p.drift.input.iter().map(|(k, v)| format!("{k} {v:.3}")).collect::<Vec<_>>().join(", ")) }
                            td { (num(p.drift.intensity)) }
                            td { (num(p.drift.output)) }
                            td { (p.seq_range.map(|(a, b)| format!("seq {a}–{b}")).unwrap_or_default()) }
                        }
                    }
                }
                h2 { "Per subgroup" }
                @for (attribute, values) in &r.subgroups {
                    h3 { (attribute) }
                    table {
                        tr { th { "value" } th { "volume" } th { "failure rate" } th { "reviewed" } th { "agreement" } }
                        @for (value, f) in values {
                            tr { td { (value) } td { (f.volume) } td { (p_text(&f.failure_rate)) } td { (p_text(&f.agreement.reviewed)) } td { (p_text(&f.agreement.agreement)) } }
                        }
                    }
                }
                p { "Method, thresholds and what to do on an alarm: docs/post-market.md. Every figure is an aggregate of cases.csv, one row per inference with its audit sequence number." }
            }
        }
    };
    page.into_string()
}
