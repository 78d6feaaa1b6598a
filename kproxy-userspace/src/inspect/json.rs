//! `-o json`: the reports as stable JSON for scripts. The report structs are the schema;
//! fields are only ever added, and [`SCHEMA`] changes if one has to change meaning.

use serde::Serialize;

use crate::ebpf::Drift;

/// Version of the JSON documents.
pub const SCHEMA: u32 = 1;

/// One drift entry: its kind, the map it is in, and what differs.
#[derive(Clone, Debug, Serialize)]
pub struct DriftEntry {
    /// `missing`, `extra` or `stale`.
    pub kind: &'static str,
    pub map: &'static str,
    pub message: String,
}

/// `inspect --verify -o json`.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub schema: u32,
    pub pin_path: String,
    pub sync: u64,
    pub clean: bool,
    pub drift: Vec<DriftEntry>,
}

impl VerifyReport {
    pub fn new(pin_path: String, sync: u64, drift: &[Drift]) -> Self {
        VerifyReport {
            schema: SCHEMA,
            pin_path,
            sync,
            clean: drift.is_empty(),
            drift: drift
                .iter()
                .map(|d| DriftEntry {
                    kind: d.kind(),
                    map: d.map(),
                    message: d.to_string(),
                })
                .collect(),
        }
    }
}

/// Pretty JSON with a trailing newline.
pub fn to_string<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("reports serialize");
    text.push('\n');
    text
}
