//! The labels spreadsheet of a dataset built from the hospital's own DICOM
//! (the field-evaluation issue's `validate import-dicom`; the command
//! itself is not built yet): a CSV with a header row, one key column
//! (`study_instance_uid`, `accession_number`, or `patient_id` together with
//! `study_date`), a `label` column, and any other column as a subgroup
//! attribute; and the matching of its rows to the studies found.
//!
//! Every problem names its line (the header is line 1). Key values are
//! patient identifiers or close to them (accession numbers): no message
//! repeats one, only line numbers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What identifies a study in the spreadsheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Column `study_instance_uid`.
    StudyInstanceUid,
    /// Column `accession_number`.
    AccessionNumber,
    /// Columns `patient_id` and `study_date` (YYYYMMDD).
    PatientAndDate,
}

/// One row's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// A Study Instance UID.
    Study(String),
    /// An Accession Number.
    Accession(String),
    /// A Patient ID and a Study Date.
    PatientDate {
        /// Patient ID.
        patient_id: String,
        /// Study Date, YYYYMMDD.
        study_date: String,
    },
}

/// One labelled row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Its line in the file (the header is line 1).
    pub line: u64,
    /// Which study it labels.
    pub key: Key,
    /// The ground truth.
    pub label: String,
    /// The other columns: subgroup attributes, by column name.
    pub attributes: BTreeMap<String, String>,
}

/// The spreadsheet, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// The key its rows use.
    pub key: KeyKind,
    /// The rows, in file order.
    pub rows: Vec<Row>,
}

/// A labels file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabelsError {
    /// The file cannot be read.
    #[error("{path}: cannot read the labels file")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_LABELS_BYTES`].
    #[error("{path}: larger than {limit} bytes, not read")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// A line is not UTF-8.
    #[error("{path} line {line}: not UTF-8 text (save the spreadsheet as CSV UTF-8)")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// The line.
        line: u64,
    },
    /// A line is not CSV as the header announced it (quotes, field count).
    #[error("{path} line {line}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// The header has no key column.
    #[error(
        "{path} line 1: no key column: one of study_instance_uid, accession_number, or patient_id with study_date is needed{hint}"
    )]
    NoKey {
        /// The file.
        path: PathBuf,
        /// A hint when the header looks separated by something else than
        /// commas.
        hint: String,
    },
    /// The header has more than one key.
    #[error("{path} line 1: several key columns ({columns}): keep one")]
    SeveralKeys {
        /// The file.
        path: PathBuf,
        /// Those found.
        columns: String,
    },
    /// The header has no `label` column, or a column twice.
    #[error("{path} line 1: {reason}")]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A row's key or label is empty.
    #[error("{path} line {line}: column {column} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
        /// The line.
        line: u64,
        /// The column.
        column: &'static str,
    },
    /// Two rows have the same key.
    #[error("{path} line {line}: the same key as line {first}")]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The later line.
        line: u64,
        /// The first line with that key.
        first: u64,
    },
}

/// The largest labels file read (64 MiB: several hundred thousand rows):
/// a larger file is refused before it is read into memory.
pub const MAX_LABELS_BYTES: u64 = 64 << 20;

/// Read and check a labels file of at most [`MAX_LABELS_BYTES`].
pub fn read(path: &Path) -> Result<Labels, LabelsError> {
    read_at_most(path, MAX_LABELS_BYTES)
}

fn read_at_most(path: &Path, limit: u64) -> Result<Labels, LabelsError> {
    use std::io::Read;
    let io = |source| LabelsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(LabelsError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    parse(path, &bytes)
}

/// [`read`] on bytes already read; `path` names them in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Labels, LabelsError> {
    let path_buf = || path.to_path_buf();
    // A byte order mark, as spreadsheets write it, is not part of the
    // first column's name.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(false)
        .from_reader(bytes);
    let mut records = reader.byte_records();
    // Physical lines, counted from the byte offset (the parser's own count
    // passes over blank lines, which a person reading the file does not).
    let physical = |position: Option<&csv::Position>| {
        position.map_or(0, |p| {
            let mut end = usize::try_from(p.byte())
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            // A record's position is where the parser started, before the
            // blank lines it passed over.
            while bytes.get(end).is_some_and(|b| *b == b'\n' || *b == b'\r') {
                end += 1;
            }
            1 + bytes[..end].iter().filter(|b| **b == b'\n').count() as u64
        })
    };
    let line_of = |e: &csv::Error| physical(e.position());
    let text_of = |record: &csv::ByteRecord, line: u64| -> Result<Vec<String>, LabelsError> {
        record
            .iter()
            .map(|field| {
                std::str::from_utf8(field)
                    .map(|s| s.trim().to_string())
                    .map_err(|_| LabelsError::NotUtf8 {
                        path: path_buf(),
                        line,
                    })
            })
            .collect()
    };
    let header = match records.next() {
        Some(Ok(record)) => text_of(&record, 1)?,
        Some(Err(e)) => {
            return Err(LabelsError::Malformed {
                path: path_buf(),
                line: line_of(&e).max(1),
                reason: e.to_string(),
            });
        }
        None => {
            return Err(LabelsError::Header {
                path: path_buf(),
                reason: "the file is empty: a header row is needed".into(),
            });
        }
    };
    let columns: Vec<String> = header.iter().map(|c| c.to_ascii_lowercase()).collect();
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].contains(c) {
            return Err(LabelsError::Header {
                path: path_buf(),
                reason: format!("column {c:?} appears twice"),
            });
        }
    }
    let at = |name: &str| columns.iter().position(|c| c == name);
    let study = at("study_instance_uid");
    let accession = at("accession_number");
    let patient = at("patient_id").zip(at("study_date"));
    let found: Vec<&str> = [
        study.map(|_| "study_instance_uid"),
        accession.map(|_| "accession_number"),
        patient.map(|_| "patient_id + study_date"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let key = match found.len() {
        0 => {
            let first = header.first().map(String::as_str).unwrap_or("");
            let hint = [';', '\t', '|']
                .into_iter()
                .find(|d| header.len() == 1 && first.contains(*d))
                .map(|d| format!(" (the header is one column holding {d:?}: the file must be separated by commas)"))
                .unwrap_or_default();
            return Err(LabelsError::NoKey {
                path: path_buf(),
                hint,
            });
        }
        1 => {
            if study.is_some() {
                KeyKind::StudyInstanceUid
            } else if accession.is_some() {
                KeyKind::AccessionNumber
            } else {
                KeyKind::PatientAndDate
            }
        }
        _ => {
            return Err(LabelsError::SeveralKeys {
                path: path_buf(),
                columns: found.join(", "),
            });
        }
    };
    let Some(label_at) = at("label") else {
        return Err(LabelsError::Header {
            path: path_buf(),
            reason: "no label column".into(),
        });
    };
    let key_columns: Vec<usize> = match key {
        KeyKind::StudyInstanceUid => study.into_iter().collect(),
        KeyKind::AccessionNumber => accession.into_iter().collect(),
        KeyKind::PatientAndDate => patient.map(|(p, d)| vec![p, d]).unwrap_or_default(),
    };
    let mut rows = Vec::new();
    let mut seen: BTreeMap<Key, u64> = BTreeMap::new();
    for record in records {
        let record = record.map_err(|e| LabelsError::Malformed {
            path: path_buf(),
            line: line_of(&e),
            reason: match e.kind() {
                csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => format!("{len} fields where the header has {expected_len}"),
                _ => e.to_string(),
            },
        })?;
        let line = physical(record.position());
        let fields = text_of(&record, line)?;
        if fields.iter().all(String::is_empty) {
            continue;
        }
        let field = |i: usize, column: &'static str| -> Result<String, LabelsError> {
            let value = fields[i].clone();
            if value.is_empty() {
                Err(LabelsError::Empty {
                    path: path_buf(),
                    line,
                    column,
                })
            } else {
                Ok(value)
            }
        };
        let row_key = match key {
            KeyKind::StudyInstanceUid => Key::Study(field(key_columns[0], "study_instance_uid")?),
            KeyKind::AccessionNumber => Key::Accession(field(key_columns[0], "accession_number")?),
            KeyKind::PatientAndDate => Key::PatientDate {
                patient_id: field(key_columns[0], "patient_id")?,
                study_date: field(key_columns[1], "study_date")?,
            },
        };
        if let Some(first) = seen.get(&row_key) {
            return Err(LabelsError::Duplicate {
                path: path_buf(),
                line,
                first: *first,
            });
        }
        seen.insert(row_key.clone(), line);
        let label = field(label_at, "label")?;
        let attributes = header
            .iter()
            .zip(&fields)
            .enumerate()
            .filter(|(i, _)| *i != label_at && !key_columns.contains(i))
            .map(|(_, (name, value))| (name.clone(), value.clone()))
            .collect();
        rows.push(Row {
            line,
            key: row_key,
            label,
            attributes,
        });
    }
    Ok(Labels { key, rows })
}

/// What identifies a study found in the DICOM sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyKeys {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Accession Number, when the instances have one.
    pub accession_number: Option<String>,
    /// Patient ID.
    pub patient_id: Option<String>,
    /// Study Date, YYYYMMDD.
    pub study_date: Option<String>,
}

impl StudyKeys {
    fn matches(&self, key: &Key) -> bool {
        let same = |a: &Option<String>, b: &str| a.as_deref().map(str::trim) == Some(b);
        match key {
            Key::Study(uid) => self.study_instance_uid == *uid,
            Key::Accession(number) => same(&self.accession_number, number),
            Key::PatientDate {
                patient_id,
                study_date,
            } => same(&self.patient_id, patient_id) && same(&self.study_date, study_date),
        }
    }
}

/// The rows matched to the studies, and what did not match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Matching {
    /// Study Instance UID → the line of the row that labels it.
    pub labelled: BTreeMap<String, u64>,
    /// Lines of rows that match no study.
    pub unmatched: Vec<u64>,
    /// Lines of rows that match several studies, with those studies.
    pub ambiguous: Vec<(u64, Vec<String>)>,
    /// Studies no row labels.
    pub unlabelled: Vec<String>,
}

impl Matching {
    /// Whether every row labels exactly one study and every study is
    /// labelled.
    pub fn is_complete(&self) -> bool {
        self.unmatched.is_empty() && self.ambiguous.is_empty() && self.unlabelled.is_empty()
    }
}

/// Match each row of `labels` to the studies found.
pub fn match_studies(labels: &Labels, studies: &[StudyKeys]) -> Matching {
    let mut matching = Matching::default();
    for row in &labels.rows {
        let found: Vec<&StudyKeys> = studies.iter().filter(|s| s.matches(&row.key)).collect();
        match found.as_slice() {
            [] => matching.unmatched.push(row.line),
            [one] => {
                matching
                    .labelled
                    .insert(one.study_instance_uid.clone(), row.line);
            }
            several => matching.ambiguous.push((
                row.line,
                several
                    .iter()
                    .map(|s| s.study_instance_uid.clone())
                    .collect(),
            )),
        }
    }
    let ambiguous: Vec<&String> = matching.ambiguous.iter().flat_map(|(_, s)| s).collect();
    matching.unlabelled = studies
        .iter()
        .map(|s| &s.study_instance_uid)
        .filter(|uid| !matching.labelled.contains_key(*uid) && !ambiguous.contains(uid))
        .cloned()
        .collect();
    matching
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &[u8]) -> Result<Labels, LabelsError> {
        parse(Path::new("labels.csv"), text)
    }

    #[test]
    fn each_key_is_read_with_its_attributes() {
        let labels = parse_text(
            b"\xEF\xBB\xBFStudy_Instance_UID,label,site\n1.2.3,glioma,A\n\n1.2.4, notumor ,B\n",
        )
        .unwrap();
        assert_eq!(labels.key, KeyKind::StudyInstanceUid);
        assert_eq!(labels.rows.len(), 2);
        assert_eq!(labels.rows[1].line, 4, "blank lines keep the numbering");
        assert_eq!(labels.rows[1].label, "notumor");
        assert_eq!(labels.rows[1].attributes["site"], "B");
        let by_accession = parse_text(b"accession_number,label\nA1,x\n").unwrap();
        assert_eq!(by_accession.rows[0].key, Key::Accession("A1".into()));
        let by_patient = parse_text(
            b"patient_id,study_date,label,\"scanner, model\"\nP1,20240105,x,\"GE, Signa\"\n",
        )
        .unwrap();
        assert_eq!(by_patient.key, KeyKind::PatientAndDate);
        assert_eq!(by_patient.rows[0].attributes["scanner, model"], "GE, Signa");
    }

    #[test]
    fn every_malformed_file_names_its_line_and_never_a_key_value() {
        let err = |text: &[u8]| parse_text(text).unwrap_err();
        let semicolons = err(b"study_instance_uid;label\n1.2.3;glioma\n");
        assert!(matches!(semicolons, LabelsError::NoKey { .. }));
        assert!(
            semicolons.to_string().contains("separated by commas"),
            "{semicolons}"
        );
        assert!(matches!(
            err(b"site,label\nA,x\n"),
            LabelsError::NoKey { .. }
        ));
        assert!(matches!(
            err(b"study_instance_uid,accession_number,label\n1,2,x\n"),
            LabelsError::SeveralKeys { .. }
        ));
        assert!(matches!(
            err(b"study_instance_uid,site\n1,A\n"),
            LabelsError::Header { .. }
        ));
        assert!(matches!(
            err(b"label,label,study_instance_uid\n"),
            LabelsError::Header { .. }
        ));
        assert!(matches!(err(b""), LabelsError::Header { .. }));
        let duplicate = err(b"accession_number,label\nSECRET1,x\nA2,y\nSECRET1,z\n");
        assert!(
            matches!(
                duplicate,
                LabelsError::Duplicate {
                    line: 4,
                    first: 2,
                    ..
                }
            ),
            "{duplicate:?}"
        );
        assert!(!duplicate.to_string().contains("SECRET1"), "{duplicate}");
        let fields = err(b"study_instance_uid,label\n1.2.3,glioma,extra\n");
        assert!(
            matches!(fields, LabelsError::Malformed { line: 2, .. }),
            "{fields:?}"
        );
        assert!(
            fields
                .to_string()
                .contains("3 fields where the header has 2"),
            "{fields}"
        );
        let latin1 = err(b"study_instance_uid,label,site\n1.2.3,glioma,H\xF4pital\n");
        assert!(
            matches!(latin1, LabelsError::NotUtf8 { line: 2, .. }),
            "{latin1:?}"
        );
        let empty = err(b"patient_id,study_date,label\nP1,,x\n");
        assert!(
            matches!(
                empty,
                LabelsError::Empty {
                    line: 2,
                    column: "study_date",
                    ..
                }
            ),
            "{empty:?}"
        );
        let missing = read(Path::new("/nonexistent/labels.csv")).unwrap_err();
        assert!(std::error::Error::source(&missing).is_some());
        // Beyond the limit, refused without reading on; at it, read.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("labels.csv");
        std::fs::write(&file, b"study_instance_uid,label\n1.2.3,x\n").unwrap();
        assert!(matches!(
            read_at_most(&file, 10).unwrap_err(),
            LabelsError::TooLarge { limit: 10, .. }
        ));
        assert_eq!(read_at_most(&file, 33).unwrap().rows.len(), 1);
    }

    #[test]
    fn rows_match_one_study_each_and_what_does_not_is_reported() {
        let study = |uid: &str, accession: Option<&str>| StudyKeys {
            study_instance_uid: uid.into(),
            accession_number: accession.map(str::to_string),
            patient_id: Some("P1".into()),
            study_date: Some("20240105".into()),
        };
        let studies = [
            study("1.1", Some("A1")),
            study("1.2", Some("A2")),
            study("1.3", Some("A2")),
            study("1.4", None),
        ];
        let labels = parse_text(b"accession_number,label\nA1,x\nA2,y\nA9,z\n").unwrap();
        let matching = match_studies(&labels, &studies);
        assert_eq!(matching.labelled, BTreeMap::from([("1.1".to_string(), 2)]));
        assert_eq!(
            matching.ambiguous,
            vec![(3, vec!["1.2".to_string(), "1.3".into()])]
        );
        assert_eq!(matching.unmatched, vec![4]);
        assert_eq!(matching.unlabelled, vec!["1.4".to_string()]);
        assert!(!matching.is_complete());
        let by_uid = parse_text(b"study_instance_uid,label\n1.1,a\n1.2,b\n1.3,c\n1.4,d\n").unwrap();
        assert!(match_studies(&by_uid, &studies).is_complete());
        // Patient and date identify all four here: one ambiguous row.
        let by_patient = parse_text(b"patient_id,study_date,label\nP1,20240105,x\n").unwrap();
        let matching = match_studies(&by_patient, &studies);
        assert_eq!(matching.ambiguous[0].1.len(), 4);
        assert!(matching.unlabelled.is_empty());
    }

    /// Bounded, seeded fuzzing of the labels parser and the matching
    /// (docs/fuzzing.md): any bytes are read or refused, never a panic.
    #[test]
    fn fuzz_labels_files() {
        use vigie_test_support::fuzz;
        let seeds: Vec<Vec<u8>> = [
            &b"study_instance_uid,label,site\n1.2.3,glioma,A\n1.2.4,\"no, tumour\",B\n"[..],
            b"patient_id;study_date;label\r\nP1;20240105;x\r\n",
            b"\xEF\xBB\xBFaccession_number,label\nA1,x\n\nA1,y\n",
        ]
        .iter()
        .map(|s| s.to_vec())
        .collect();
        let studies = [StudyKeys {
            study_instance_uid: "1.2.3".into(),
            accession_number: Some("A1".into()),
            patient_id: Some("P1".into()),
            study_date: Some("20240105".into()),
        }];
        let summary = fuzz::run(
            "labels",
            &seeds,
            fuzz::iterations(1_000_000),
            fuzz::budget(3),
            |bytes| {
                if let Ok(labels) = parse(Path::new("fuzz.csv"), bytes) {
                    let _ = match_studies(&labels, &studies);
                }
            },
        );
        assert!(summary.executions > 3);
    }
}
