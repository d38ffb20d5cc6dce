//! The benchmark's outputs: a text table of medians and ratios, a JSON
//! file with every sample, and an SVG bar chart of the ratios, drawn by
//! hand.
//!
//! Keeps true: the table, the JSON and the chart are computed from the
//! same [`ScenarioResult`]s with the same definitions (median of the
//! repetitions; ratio = C++ median / guixd median); scenarios and
//! implementations appear in the order they ran; the SVG is
//! self-contained and needs no fonts beyond a generic family.

use super::env::Implementation;
use super::{ScenarioResult, Target};
use serde_json::{Value, json};
use std::fmt::Write as _;

/// Prints one scenario's summary as soon as it is done.
pub fn print_one(result: &ScenarioResult) {
    eprintln!("{}", table(std::slice::from_ref(result)));
}

/// The full table.
pub fn table(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:>11} {:>11} {:>7} {:>11} {:>7} {:>9}  {:<5} notes",
        "scenario", "cpp", "threads", "ratio", "smol", "ratio", "target", "met"
    );
    for r in results {
        let cell = |i: Implementation| {
            r.median(i)
                .map(|v| format_value(v, r.unit))
                .unwrap_or_else(|| "-".into())
        };
        let ratio = |i: Implementation| {
            r.ratio(i)
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into())
        };
        let met: Vec<&str> = [Implementation::GuixdThreads, Implementation::GuixdSmol]
            .iter()
            .map(|&i| match r.met(i) {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<34} {:>11} {:>11} {:>7} {:>11} {:>7} {:>9}  {:<5} {}",
            r.name,
            cell(Implementation::Cpp),
            cell(Implementation::GuixdThreads),
            ratio(Implementation::GuixdThreads),
            cell(Implementation::GuixdSmol),
            ratio(Implementation::GuixdSmol),
            target_text(&r.target, r.unit),
            met.join("/"),
            notes(r)
        );
    }
    out
}

/// The machine-readable form of the run.
pub fn json(results: &[ScenarioResult], meta: Value) -> Value {
    let scenarios: Vec<Value> = results
        .iter()
        .map(|r| {
            let mut per = serde_json::Map::new();
            for (imp, samples) in &r.samples {
                let extra_keys: std::collections::BTreeSet<&String> =
                    samples.iter().flat_map(|s| s.extra.keys()).collect();
                let extra: serde_json::Map<String, Value> = extra_keys
                    .into_iter()
                    .map(|k| (k.clone(), json!(r.median_extra(*imp, k))))
                    .collect();
                let (errors, busy) = r.errors(*imp);
                per.insert(
                    imp.name().into(),
                    json!({
                        "samples": samples.iter().map(|s| finite(s.value)).collect::<Vec<_>>(),
                        "median": r.median(*imp).map(finite),
                        "ratio_vs_cpp": r.ratio(*imp).map(finite),
                        "extra_medians": extra,
                        "errors": errors,
                        "database_busy_errors": busy,
                        "first_error": samples.iter().find_map(|s| s.first_error.clone()),
                        "target_met": r.met(*imp),
                    }),
                );
            }
            let target = match r.target {
                Target::RatioAtLeast(x) => json!({"ratio_at_least": x}),
                Target::AtMost(x) => json!({"at_most": x, "unit": r.unit}),
                Target::None => Value::Null,
            };
            json!({
                "name": r.name,
                "description": r.description,
                "unit": r.unit,
                "lower_is_better": true,
                "target": target,
                "results": per,
            })
        })
        .collect();
    json!({ "meta": meta, "scenarios": scenarios })
}

/// A horizontal bar chart: one row per scenario, one bar per guixd
/// runtime, its length the ratio on a log scale, with lines at 1x and at
/// the scenario's target.
pub fn svg(results: &[ScenarioResult], title: &str) -> String {
    let rows: Vec<&ScenarioResult> = results
        .iter()
        .filter(|r| r.samples.contains_key(&Implementation::Cpp))
        .collect();
    let label_w = 260.0;
    let plot_w = 520.0;
    let row_h = 34.0;
    let top = 50.0;
    let height = top + row_h * rows.len() as f64 + 50.0;
    let width = label_w + plot_w + 90.0;
    // Ratios from 1/10 to 100 on a log scale.
    let (lo, hi) = (0.1f64.log10(), 100f64.log10());
    let x = |ratio: f64| {
        let r = ratio.clamp(0.1, 100.0).log10();
        label_w + (r - lo) / (hi - lo) * plot_w
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="15">{}</text>"#,
        escape(title)
    );
    for tick in [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0] {
        let tx = x(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle">{tick}x</text>"##,
            height - 40.0,
            height - 25.0
        );
    }
    let one = x(1.0);
    let _ = writeln!(
        s,
        r##"<line x1="{one:.1}" y1="{top}" x2="{one:.1}" y2="{:.1}" stroke="#444"/>"##,
        height - 40.0
    );
    for (k, r) in rows.iter().enumerate() {
        let y = top + row_h * k as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y + row_h / 2.0 + 4.0,
            escape(&r.name)
        );
        for (j, (imp, color)) in [
            (Implementation::GuixdThreads, "#3b7dd8"),
            (Implementation::GuixdSmol, "#e08a2c"),
        ]
        .iter()
        .enumerate()
        {
            let Some(ratio) = r.ratio(*imp) else { continue };
            let by = y + 5.0 + j as f64 * 12.0;
            let (x0, x1) = if ratio >= 1.0 {
                (one, x(ratio))
            } else {
                (x(ratio), one)
            };
            let _ = writeln!(
                s,
                r#"<rect x="{x0:.1}" y="{by:.1}" width="{:.1}" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="10">{ratio:.2}x</text>"#,
                (x1 - x0).max(1.0),
                x(ratio.max(1.0)) + 4.0,
                by + 9.0
            );
        }
        if let Target::RatioAtLeast(t) = r.target {
            let tx = x(t);
            let _ = writeln!(
                s,
                r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#c00" stroke-width="2"/>"##,
                y + 2.0,
                y + row_h - 4.0
            );
        }
    }
    let ly = height - 10.0;
    let _ = writeln!(
        s,
        r##"<rect x="10" y="{:.1}" width="10" height="10" fill="#3b7dd8"/><text x="24" y="{ly:.1}">guixd (threads)</text><rect x="130" y="{:.1}" width="10" height="10" fill="#e08a2c"/><text x="144" y="{ly:.1}">guixd (smol)</text><line x1="240" y1="{:.1}" x2="240" y2="{ly:.1}" stroke="#c00" stroke-width="2"/><text x="246" y="{ly:.1}">target; ratio = C++ median / guixd median (higher is better)</text>"##,
        ly - 9.0,
        ly - 9.0,
        ly - 10.0
    );
    s.push_str("</svg>\n");
    s
}

fn notes(r: &ScenarioResult) -> String {
    let mut parts = Vec::new();
    for imp in Implementation::ALL {
        let (errors, busy) = r.errors(imp);
        if errors > 0 {
            parts.push(format!("{}: {errors} errors ({busy} busy)", imp.name()));
        }
    }
    for imp in [Implementation::GuixdThreads, Implementation::GuixdSmol] {
        if let Some(v) = r.median_extra(imp, "GB/s") {
            parts.push(format!("{}: {v:.2} GB/s", imp.name()));
        }
        if let Some(v) = r.median_extra(imp, "p99 s") {
            parts.push(format!("{}: p99 {:.2} ms", imp.name(), v * 1e3));
        }
    }
    if let Some(v) = r.median_extra(Implementation::Cpp, "GB/s") {
        parts.push(format!("cpp: {v:.2} GB/s"));
    }
    if let Some(floor) = floor(r) {
        parts.push(format!(
            "a process that only echoes: {}",
            format_value(floor, r.unit)
        ));
    }
    parts.join("; ")
}

/// The median round-trip floor measured beside a scenario (see
/// `load::round_trip_floor`), over every implementation's repetitions.
pub fn floor(r: &ScenarioResult) -> Option<f64> {
    super::median(
        r.samples
            .values()
            .flatten()
            .filter_map(|s| s.extra.get("floor s").copied())
            .collect(),
    )
}

fn target_text(target: &Target, unit: &str) -> String {
    match target {
        Target::RatioAtLeast(x) => format!(">={x}x"),
        Target::AtMost(v) => format!("<={}", format_value(*v, unit)),
        Target::None => "-".into(),
    }
}

fn format_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    match unit {
        "bytes" => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
        "s" if v < 1.0 => format!("{:.2} ms", v * 1e3),
        _ => format!("{v:.3} {unit}"),
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
