//! SVG line charts of one metric against the number of services: one panel per
//! (path, target), one line per mode, whiskers for the range of the repetitions.

use std::{collections::BTreeSet, fmt::Write as _};

use crate::report::{Metric, Path, Record, Target};

const PANEL_W: f64 = 300.0;
const PANEL_H: f64 = 220.0;
const MARGIN_L: f64 = 56.0;
const MARGIN_T: f64 = 48.0;
const MARGIN_B: f64 = 40.0;
const GAP: f64 = 24.0;

/// Colours for modes, in the order given.
fn colour(mode: &str) -> &'static str {
    match mode {
        "none" => "#888888",
        "iptables" => "#d62728",
        "iptables-legacy" => "#ff7f0e",
        "tc" => "#1f77b4",
        "xdp" => "#2ca02c",
        "xdp-redirect" => "#17becf",
        "xdp-generic" => "#8c564b",
        _ => "#9467bd",
    }
}

pub const PANELS: [(Path, Target); 5] = [
    (Path::Clusterip, Target::First),
    (Path::Clusterip, Target::Last),
    (Path::Nodeport, Target::First),
    (Path::Nodeport, Target::Last),
    (Path::Direct, Target::First),
];

/// An SVG with one panel per (path, target) in [`PANELS`] for `metric` (the mode
/// `none` only has the direct path: it is drawn there).
pub fn svg(records: &[Record], metric: Metric, title: &str, modes: &[String]) -> String {
    let ns: Vec<usize> = records
        .iter()
        .filter(|r| r.metric == metric)
        .map(|r| r.services)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let width = MARGIN_L + PANELS.len() as f64 * (PANEL_W + GAP) + 120.0;
    let height = MARGIN_T + PANEL_H + MARGIN_B + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{MARGIN_L}" y="18" font-size="14" font-weight="bold">{title}</text>"#
    );
    for (index, (path, target)) in PANELS.iter().enumerate() {
        let left = MARGIN_L + index as f64 * (PANEL_W + GAP);
        panel(&mut out, records, metric, modes, &ns, (*path, *target), left);
    }
    // Legend, right of the panels.
    let legend_x = MARGIN_L + PANELS.len() as f64 * (PANEL_W + GAP);
    for (i, mode) in modes.iter().enumerate() {
        let y = MARGIN_T + 14.0 + i as f64 * 16.0;
        let _ = writeln!(
            out,
            r#"<line x1="{legend_x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="2"/><text x="{}" y="{}">{mode}</text>"#,
            legend_x + 18.0,
            colour(mode),
            legend_x + 22.0,
            y + 4.0
        );
    }
    out.push_str("</svg>\n");
    out
}

fn panel(
    out: &mut String,
    records: &[Record],
    metric: Metric,
    modes: &[String],
    ns: &[usize],
    (path, target): (Path, Target),
    left: f64,
) {
    let top = MARGIN_T;
    let points = |mode: &str| -> Vec<&Record> {
        let mut found: Vec<&Record> = records
            .iter()
            .filter(|r| {
                r.mode == mode && r.metric == metric && r.path == Some(path) && r.target == Some(target)
            })
            .collect();
        found.sort_by_key(|r| r.services);
        found
    };
    let y_max = modes
        .iter()
        .flat_map(|m| points(m))
        .map(|r| r.max.max(r.value))
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    // Services are spaced evenly in the order measured (a log-like axis for 1, 1000, 10000).
    let x_of = |services: usize| {
        let i = ns.iter().position(|&n| n == services).unwrap_or(0);
        let steps = (ns.len().max(2) - 1) as f64;
        left + 10.0 + (PANEL_W - 20.0) * i as f64 / steps
    };
    let y_of = |v: f64| top + PANEL_H - PANEL_H * v / y_max;
    let name = format!("{path:?} {target:?}").to_lowercase();
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{top}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#ccc"/><text x="{}" y="{}" font-weight="bold">{name}</text>"##,
        left + 4.0,
        top - 6.0
    );
    for k in 0..=4 {
        let v = y_max * f64::from(k) / 4.0;
        let y = y_of(v);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + PANEL_W,
            left - 4.0,
            y + 4.0,
            axis_label(v)
        );
    }
    for &services in ns {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{services}</text>"#,
            x_of(services),
            top + PANEL_H + 14.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">services</text>"#,
        left + PANEL_W / 2.0,
        top + PANEL_H + 30.0
    );
    for mode in modes {
        let found = points(mode);
        if found.is_empty() {
            continue;
        }
        let line: Vec<String> = found
            .iter()
            .map(|r| format!("{:.1},{:.1}", x_of(r.services), y_of(r.value)))
            .collect();
        let c = colour(mode);
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
            line.join(" ")
        );
        for r in found {
            let x = x_of(r.services);
            let _ = writeln!(
                out,
                r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{c}"/><circle cx="{x:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                y_of(r.min),
                y_of(r.max),
                y_of(r.value)
            );
        }
    }
}

fn axis_label(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Summary;

    #[test]
    fn one_polyline_per_mode_and_panel_with_data() {
        let mut records = Vec::new();
        for services in [1, 1000] {
            for mode in ["iptables", "tc"] {
                records.push(Record::new(
                    mode,
                    services,
                    Some((Path::Nodeport, Target::Last)),
                    Metric::ConnRate,
                    Summary {
                        median: 1000.0,
                        min: 900.0,
                        max: 1100.0,
                        reps: 3,
                    },
                ));
            }
        }
        let text = svg(
            &records,
            Metric::ConnRate,
            "conn/s",
            &["iptables".into(), "tc".into()],
        );
        assert!(text.starts_with("<svg") && text.ends_with("</svg>\n"));
        assert_eq!(text.matches("<polyline").count(), 2);
        assert_eq!(text.matches("<circle").count(), 4);
    }
}
