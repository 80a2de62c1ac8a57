//! The matrix as `eiplab compat` prints it, and `--expect`. Pure.

use super::{Mode, Outcome, Placement, Row, PROBES};
use serde::Deserialize;
use std::fmt::Write;

/// How the matrix names a row's protocol: the probe's label, or the scenario's name.
pub fn label(r: &Row) -> String {
    PROBES
        .iter()
        .find(|p| p.protocol == r.protocol && p.variant == r.variant.as_deref())
        .map(|p| p.label.to_string())
        .unwrap_or_else(|| format!("{} (scenario)", r.protocol_words()))
}

fn column_of(r: &Row) -> Option<Mode> {
    Mode::ALL
        .into_iter()
        .find(|m| m.kind() == r.mode && m.alg_policy().map(|a| a.name()) == r.alg_policy.as_deref())
}

fn cell(o: Outcome) -> &'static str {
    match o {
        Outcome::Works => "works",
        Outcome::Broken => "BROKEN",
        Outcome::NotTested => "not tested",
    }
}

/// The matrix (one line per protocol and placement, one column per mode that ran), then the
/// reason and evidence of every cell that is not a plain "works".
pub fn render(rows: &[Row]) -> String {
    let columns: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| rows.iter().any(|r| column_of(r) == Some(*m)))
        .collect();
    let mut lines: Vec<(String, Placement)> = Vec::new();
    for r in rows {
        let k = (label(r), r.placement);
        if !lines.contains(&k) {
            lines.push(k);
        }
    }
    let head: Vec<String> = columns
        .iter()
        .map(|m| match m {
            Mode::Nat(a) => format!("NAT/{a}"),
            other => other.to_string(),
        })
        .collect();
    let first = lines
        .iter()
        .map(|(l, p)| l.chars().count() + p.words().len() + 3)
        .max()
        .unwrap_or(0)
        .max("protocol (placement)".len());
    let width = head.iter().map(String::len).max().unwrap_or(0).max(10) + 2;
    let mut out = String::new();
    let _ = write!(out, "{:<first$}", "protocol (placement)");
    for h in &head {
        let _ = write!(out, "  {h:<width$}");
    }
    out = out.trim_end().to_string();
    out.push('\n');
    for (l, p) in &lines {
        let name = format!("{l} ({})", p.words());
        let _ = write!(out, "{name:<first$}");
        for m in &columns {
            let found = rows
                .iter()
                .find(|r| label(r) == *l && r.placement == *p && column_of(r) == Some(*m));
            let c = found.map_or("-", |r| cell(r.result));
            let _ = write!(out, "  {c:<width$}");
        }
        out = out.trim_end().to_string();
        out.push('\n');
    }
    let notes: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.result != Outcome::Works
                || r.reason.contains("inspect flagged")
                || r.reason.contains("; note:")
        })
        .collect();
    if !notes.is_empty() {
        out.push_str("\nWhy:\n");
        for r in notes {
            let _ = writeln!(
                out,
                "- {} ({}), {}: {} — {}",
                label(r),
                r.placement.words(),
                mode_words(r),
                r.result.name().replace('_', " "),
                r.reason
            );
            for e in &r.evidence {
                let _ = writeln!(out, "    {e}");
            }
        }
    }
    out
}

fn mode_words(r: &Row) -> String {
    match column_of(r) {
        Some(Mode::Nat(a)) => format!("NAT/{a}"),
        Some(m) => m.to_string(),
        None => r.mode_words(),
    }
}

/// One expected cell: the fields of a `--json` row that `--expect` compares (the others,
/// reason and evidence among them, are read and ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct Expected {
    pub protocol: String,
    #[serde(default)]
    pub variant: Option<String>,
    pub mode: String,
    #[serde(default)]
    pub alg_policy: Option<String>,
    pub placement: Placement,
    pub result: Outcome,
}

/// Reads an expectation file: a JSON list of rows, as `--json` prints it.
pub fn parse_expected(text: &str) -> Result<Vec<Expected>, String> {
    serde_json::from_str(text).map_err(|e| {
        format!(
            "line {}, column {}: {e}; write a JSON list of rows, each with protocol, mode, \
             alg_policy (NAT rows), placement and result, as `eiplab compat --json` prints them",
            e.line(),
            e.column()
        )
    })
}

/// What `--expect` found: the cells whose result differs, and expectations that no row of
/// this run answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub differ: Vec<String>,
    pub not_run: Vec<String>,
}

pub fn compare(expected: &[Expected], rows: &[Row]) -> Comparison {
    let mut c = Comparison::default();
    for e in expected {
        let key = (
            e.protocol.clone(),
            e.variant.clone(),
            e.mode.clone(),
            e.alg_policy.clone(),
            e.placement,
        );
        let words = format!(
            "{}{}, {}, {}{}",
            e.protocol,
            e.variant
                .as_ref()
                .map(|v| format!(" ({v})"))
                .unwrap_or_default(),
            e.placement.name(),
            e.mode,
            e.alg_policy
                .as_ref()
                .map(|p| format!("/{p}"))
                .unwrap_or_default()
        );
        match rows.iter().find(|r| r.key() == key) {
            None => c.not_run.push(words),
            Some(r) if r.result != e.result => c.differ.push(format!(
                "{words}: expected {}, got {} ({})",
                e.result.name(),
                r.result.name(),
                r.reason
            )),
            Some(_) => {}
        }
    }
    c
}
