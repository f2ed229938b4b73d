//! Export of the inference records: one row per analysed frame, as JSON
//! lines or CSV (`vigie audit export`), for the performance evaluation and
//! the post-market surveillance of a model. Each row says its
//! [`Purpose`]: the inferences of `vigie validate run` share the trail with
//! the clinical ones and must never be counted as clinical use.

use crate::{AuditError, AuditRecord, AuditResult};

/// One exported row: column → value.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// The columns of an inference row, in order.
pub const COLUMNS: &[&str] = &[
    "seq",
    "timestamp",
    "appliance",
    "software_version",
    "git_commit",
    "study_instance_uid",
    "sop_instance_uid",
    "model_id",
    "model_version",
    "model_sha256",
    "backend",
    "provider",
    "device",
    "intra_threads",
    "file_sha256",
    "pixels_sha256",
    "decision",
    "rule",
    "threshold",
    "labels",
    "probabilities",
    "decode_ms",
    "preprocess_ms",
    "inference_ms",
    "postprocess_ms",
    "job_id",
    "attempt",
    "record_hash",
    "purpose",
];

/// Why an inference ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A job of `vigie serve`: the clinical use of the model.
    Clinical,
    /// A case of `vigie validate run` (its record's routing rule is
    /// `validation`).
    Validation,
}

impl Purpose {
    /// `clinical` or `validation`, as exported.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clinical => "clinical",
            Self::Validation => "validation",
        }
    }

    fn of(details: &serde_json::Value) -> Self {
        if details["rule"] == "validation" {
            Self::Validation
        } else {
            Self::Clinical
        }
    }
}

/// The purpose of an `inference` record.
pub fn purpose(record: &AuditRecord) -> AuditResult<Purpose> {
    let details: serde_json::Value =
        serde_json::from_str(&record.details).map_err(|source| AuditError::Details {
            seq: record.seq,
            source,
        })?;
    Ok(Purpose::of(&details))
}

/// One row per analysed frame of an `inference` record.
pub fn rows(record: &AuditRecord) -> AuditResult<Vec<Row>> {
    let details: serde_json::Value =
        serde_json::from_str(&record.details).map_err(|source| AuditError::Details {
            seq: record.seq,
            source,
        })?;
    let d = &details;
    let mut out = Vec::new();
    let frames = d["frames"].as_array().cloned().unwrap_or_default();
    for frame in frames {
        let finding = &frame["finding"];
        let values: Vec<serde_json::Value> = vec![
            record.seq.into(),
            record.timestamp.clone().into(),
            record.appliance.clone().into(),
            record.software_version.clone().into(),
            record.git_commit.clone().into(),
            record.study_instance_uid.clone().into(),
            record.sop_instance_uid.clone().into(),
            record.model_id.clone().into(),
            record.model_version.clone().into(),
            d["model_sha256"].clone(),
            d["execution"]["backend"].clone(),
            d["execution"]["provider"].clone(),
            d["execution"]["device"].clone(),
            d["execution"]["intra_threads"].clone(),
            d["input"]["file_sha256"].clone(),
            d["input"]["pixels_sha256"].clone(),
            finding["decision"].clone(),
            finding["rule"].clone(),
            finding["threshold"].clone(),
            finding["labels"].clone(),
            finding["probabilities"].clone(),
            d["decode_ms"].clone(),
            frame["timings_ms"]["preprocess_ms"].clone(),
            frame["timings_ms"]["inference_ms"].clone(),
            frame["timings_ms"]["postprocess_ms"].clone(),
            d["job_id"].clone(),
            d["attempt"].clone(),
            record.hash.clone().into(),
            Purpose::of(d).as_str().into(),
        ];
        out.push(COLUMNS.iter().map(|c| c.to_string()).zip(values).collect());
    }
    Ok(out)
}

fn csv_field(value: &serde_json::Value) -> String {
    let text = match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The rows as JSON lines.
pub fn to_jsonl(rows: &[Row]) -> String {
    let mut text = String::new();
    for row in rows {
        text.push_str(&serde_json::Value::Object(row.clone()).to_string());
        text.push('\n');
    }
    text
}

/// The rows as CSV, with a header line of [`COLUMNS`].
pub fn to_csv(rows: &[Row]) -> String {
    let mut text = COLUMNS.join(",");
    text.push('\n');
    for row in rows {
        let fields: Vec<String> = COLUMNS
            .iter()
            .map(|c| csv_field(row.get(*c).unwrap_or(&serde_json::Value::Null)))
            .collect();
        text.push_str(&fields.join(","));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inference record of instance 1.2.3 (study 1.2), model m 1.
    fn record(details: serde_json::Value) -> AuditRecord {
        AuditRecord {
            seq: 7,
            timestamp: "t".into(),
            appliance: "a".into(),
            software_version: "v".into(),
            git_commit: "c".into(),
            kind: "inference".into(),
            outcome: "ok".into(),
            study_instance_uid: Some("1.2".into()),
            sop_instance_uid: Some("1.2.3".into()),
            model_id: Some("m".into()),
            model_version: Some("1".into()),
            details: details.to_string(),
            prev_hash: "p".into(),
            hash: "h".into(),
        }
    }

    #[test]
    fn validation_inferences_are_told_apart_from_clinical_ones() {
        let clinical = record(serde_json::json!({ "rule": "neuro", "frames": [{}] }));
        let validation = record(serde_json::json!({ "rule": "validation", "frames": [{}] }));
        assert_eq!(purpose(&clinical).unwrap(), Purpose::Clinical);
        assert_eq!(purpose(&validation).unwrap(), Purpose::Validation);
        assert_eq!(rows(&validation).unwrap()[0]["purpose"], "validation");
        assert!(purpose(&record(serde_json::json!("x"))).is_ok());
        let mut broken = clinical.clone();
        broken.details = "{".into();
        assert!(purpose(&broken).is_err());
    }

    #[test]
    fn csv_quotes_what_needs_quoting_and_rows_come_one_per_frame() {
        let record = record(serde_json::json!({
            "frames": [
                { "finding": { "decision": "a,b", "labels": ["x", "y"] } },
                { "finding": { "decision": "say \"no\"" } },
            ]
        }));
        let all = rows(&record).unwrap();
        assert_eq!(all.len(), 2);
        let csv = to_csv(&all);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], COLUMNS.join(","));
        assert!(lines[1].starts_with("7,t,a,v,c,1.2,1.2.3,m,1,"), "{csv}");
        assert!(lines[1].contains(",\"a,b\","), "{csv}");
        assert!(lines[1].contains(",\"[\"\"x\"\",\"\"y\"\"]\","), "{csv}");
        assert!(lines[2].contains(",\"say \"\"no\"\"\","), "{csv}");
        assert_eq!(to_jsonl(&all).lines().count(), 2);
        let bad = AuditRecord {
            details: "not json".into(),
            ..record
        };
        assert!(matches!(
            rows(&bad),
            Err(AuditError::Details { seq: 7, .. })
        ));
    }
}
