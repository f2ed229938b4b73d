//! `vigie validate import-dicom`: a labelled dataset from the hospital's
//! own DICOM studies and a labels spreadsheet ([`crate::labels`]).
//!
//! 1. [`walk`] lists the files under the sources (recursively, symbolic
//!    links to folders followed once); [`import_dicom`] then reads each
//!    one's header through the same structural scan ingest uses. A
//!    DICOMDIR, a file that is not DICOM Part 10 and a malformed one are
//!    skipped, each with its reason; a second copy of an instance already
//!    found is skipped too.
//! 2. Instances are grouped into studies and series; DICOM SEG objects
//!    are set apart as reference segmentations.
//! 3. The spreadsheet's rows are matched to the studies. Rows that match no
//!    study or several, and studies without a row, are reported by line
//!    and Study Instance UID (never a patient identifier).
//! 4. Each labelled study is routed as `vigie serve` routes a complete
//!    study ([`Router::route`]): the series the routing rules and the model
//!    package's `[applies_to]` give to the model are the ones copied; the
//!    dataset records which, and by which rule.
//! 5. For a segmentation model, the reference mask of each image is taken
//!    from the SEG objects that reference it (binary or fractional, native
//!    encoding), one grayscale PNG per image whose value is the model's
//!    class index (segments matched by label, else by number).
//! 6. The files are copied (`study-NNNN/series-NN/NNNNN.dcm`, durable
//!    writes, SHA-256 computed while copying) and `dataset.toml` written:
//!    what `vigie validate run` reads.
//!
//! Nothing is written when a problem of step 3–5 remains, unless the caller
//! allows it ([`ImportDicomOptions::allow_unmatched`]): a dataset built
//! from part of the cases says so in its outcome, never silently.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use sha2::{Digest, Sha256};
use vigie_analysis::routing::{Router, SeriesSummary, StableStudy};
use vigie_dicom_io::DicomFile;
use vigie_dicom_io::file::{items, text};

use crate::dataset::{Dataset, SeriesEntry, StudyEntry, content_hash};
use crate::error::{Error, Result};
use crate::labels::{Labels, Matching, StudyKeys, match_studies};

/// Segmentation Storage.
pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";
/// Media Storage Directory Storage: a DICOMDIR.
pub const MEDIA_STORAGE_DIRECTORY: &str = "1.2.840.10008.1.3.10";

/// A file to read, and the AE title that sent it when known (files from
/// the appliance's own store), which routing rules may select on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceFile {
    /// The file.
    pub path: PathBuf,
    /// Calling AE title of the association that sent it.
    pub calling_ae_title: Option<String>,
}

/// A file left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file (or folder).
    pub path: PathBuf,
    /// Why it was left out.
    pub reason: String,
}

/// Every regular file under `sources` (files or folders, read recursively,
/// in name order; a folder reached twice through symbolic links is read
/// once), and what could not be listed. A source that does not exist is an
/// error: it is a typing mistake, not a file to skip.
pub fn walk(sources: &[PathBuf]) -> Result<(Vec<SourceFile>, Vec<Skipped>)> {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = HashSet::new();
    for source in sources {
        let metadata = std::fs::metadata(source).map_err(|e| Error::Io {
            path: source.clone(),
            source: e,
        })?;
        let mut stack = vec![(source.clone(), metadata)];
        while let Some((path, metadata)) = stack.pop() {
            if metadata.is_file() {
                files.push(SourceFile {
                    path,
                    calling_ae_title: None,
                });
                continue;
            }
            if !metadata.is_dir() {
                skipped.push(Skipped {
                    path,
                    reason: "not a regular file or folder".into(),
                });
                continue;
            }
            if !seen.insert((metadata.dev(), metadata.ino())) {
                continue;
            }
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(e) => {
                    skipped.push(Skipped {
                        path,
                        reason: format!("folder cannot be read: {e}"),
                    });
                    continue;
                }
            };
            let mut children = Vec::new();
            for entry in entries {
                let child = match entry {
                    Ok(entry) => entry.path(),
                    Err(e) => {
                        skipped.push(Skipped {
                            path: path.clone(),
                            reason: format!("folder entry cannot be read: {e}"),
                        });
                        continue;
                    }
                };
                match std::fs::metadata(&child) {
                    Ok(m) => children.push((child, m)),
                    Err(e) => skipped.push(Skipped {
                        path: child,
                        reason: format!("cannot be read: {e}"),
                    }),
                }
            }
            // Popped in name order.
            children.sort_by(|a, b| b.0.cmp(&a.0));
            stack.extend(children);
        }
    }
    Ok((files, skipped))
}

/// How to import.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImportDicomOptions {
    /// Dataset name.
    pub name: String,
    /// The model package id whose series are chosen.
    pub model: String,
    /// For a segmentation model: its class index → label (from its
    /// manifest); reference masks are then read from SEG objects.
    pub segments: Option<BTreeMap<u32, String>>,
    /// Write the dataset of the studies that could be used even when rows,
    /// studies or references did not match.
    pub allow_unmatched: bool,
    /// Name of the labels file, for the dataset's provenance notes.
    pub labels_name: String,
}

impl ImportDicomOptions {
    /// Options for a classification model.
    pub fn new(name: String, model: String, labels_name: String) -> Self {
        Self {
            name,
            model,
            segments: None,
            allow_unmatched: false,
            labels_name,
        }
    }
}

/// A labelled study the model's routing took nothing from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRouted {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// The labels line that labels it.
    pub line: u64,
    /// What its series are, and why none was taken.
    pub note: String,
}

/// What a SEG object gave, or why it gave nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentationNote {
    /// The SEG file.
    pub path: PathBuf,
    /// Its SOP Instance UID, when it could be read.
    pub sop_instance_uid: Option<String>,
    /// Reference masks taken from it.
    pub masks: usize,
    /// What was left out of it or could not be used.
    pub notes: Vec<String>,
}

/// A series of a labelled study that was not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesLeftOut {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Modality and description, as routing saw them.
    pub what: String,
}

/// What an import found, chose and wrote.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ImportOutcome {
    /// Files that are not instances (DICOMDIR, non-DICOM, malformed, second
    /// copies).
    pub skipped: Vec<Skipped>,
    /// DICOM instances read (SEG objects included).
    pub instances: usize,
    /// Studies found.
    pub studies: usize,
    /// Rows matched to studies, and what did not match.
    pub matching: Matching,
    /// Labelled studies the routing gave nothing for the model.
    pub not_routed: Vec<NotRouted>,
    /// Series of labelled studies that routing did not take.
    pub series_left_out: Vec<SeriesLeftOut>,
    /// Labelled studies of a segmentation model without any image that a
    /// SEG object references (with the labels line).
    pub without_reference: Vec<(String, u64)>,
    /// Images of the chosen series left out because no SEG references them
    /// (segmentation models).
    pub images_without_reference: usize,
    /// What each SEG object gave.
    pub segmentations: Vec<SegmentationNote>,
    /// The dataset written, or `None` when problems remain and were not
    /// allowed.
    pub dataset: Option<Dataset>,
}

impl ImportOutcome {
    /// Whether every row labels one study, every study is labelled, routed
    /// and (segmentation) has its reference.
    pub fn is_complete(&self) -> bool {
        self.matching.is_complete()
            && self.not_routed.is_empty()
            && self.without_reference.is_empty()
    }
}

/// One instance's header, as grouping, matching and routing need it.
#[derive(Debug, Clone)]
struct Instance {
    path: PathBuf,
    sop_instance_uid: String,
    sop_class_uid: String,
    series_instance_uid: String,
    modality: Option<String>,
    body_part: Option<String>,
    series_description: Option<String>,
    instance_number: Option<i32>,
    calling_ae_title: Option<String>,
    rows: Option<i64>,
    columns: Option<i64>,
}

/// A study as found in the sources.
#[derive(Debug, Default)]
struct FoundStudy {
    keys: Option<StudyKeys>,
    /// Series Instance UID → its instances.
    series: BTreeMap<String, Vec<Instance>>,
}

fn sha256_of(path: &Path) -> Option<String> {
    vigie_inference::package::sha256_file(path).ok()
}

/// Read the header of each file, grouping images by study and series and
/// setting SEG objects apart.
fn read_sources(
    files: &[SourceFile],
    outcome: &mut ImportOutcome,
) -> (BTreeMap<String, FoundStudy>, Vec<PathBuf>) {
    let mut studies: BTreeMap<String, FoundStudy> = BTreeMap::new();
    let mut segs = Vec::new();
    let mut first_copy: BTreeMap<String, PathBuf> = BTreeMap::new();
    for source in files {
        let path = &source.path;
        let skip = |reason: String| Skipped {
            path: path.clone(),
            reason,
        };
        let is_dicomdir_name = path
            .file_name()
            .is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"));
        let meta = match vigie_dicom_io::read_meta(path) {
            Ok(meta) => meta,
            Err(e) => {
                outcome.skipped.push(skip(if is_dicomdir_name {
                    "DICOMDIR (a media directory, not an instance)".into()
                } else {
                    format!("not a DICOM Part 10 file ({e})")
                }));
                continue;
            }
        };
        if meta.sop_class_uid == MEDIA_STORAGE_DIRECTORY || is_dicomdir_name {
            outcome
                .skipped
                .push(skip("DICOMDIR (a media directory, not an instance)".into()));
            continue;
        }
        let file = match DicomFile::open_header(path) {
            Ok(file) => file,
            Err(e) => {
                outcome
                    .skipped
                    .push(skip(format!("malformed DICOM, not read ({e})")));
                continue;
            }
        };
        let h = file.header();
        if let Some(first) = first_copy.get(&h.sop_instance_uid) {
            let first_sha = sha256_of(first);
            let same = first_sha.is_some() && first_sha == sha256_of(path);
            outcome.skipped.push(skip(format!(
                "{} the instance already read from {}",
                if same {
                    "a second copy of"
                } else {
                    "different content under the SOP Instance UID of"
                },
                first.display()
            )));
            continue;
        }
        first_copy.insert(h.sop_instance_uid.clone(), path.clone());
        outcome.instances += 1;
        if h.sop_class_uid == SEGMENTATION_STORAGE {
            segs.push(path.clone());
            continue;
        }
        let study = studies.entry(h.study_instance_uid.clone()).or_default();
        if study.keys.is_none() {
            study.keys = Some(StudyKeys {
                study_instance_uid: h.study_instance_uid.clone(),
                accession_number: file.string(tags::ACCESSION_NUMBER),
                patient_id: file.string(tags::PATIENT_ID),
                study_date: file.string(tags::STUDY_DATE),
            });
        }
        let int = |tag, name| file.int(tag, name).ok().flatten();
        study
            .series
            .entry(h.series_instance_uid.clone())
            .or_default()
            .push(Instance {
                path: path.clone(),
                sop_instance_uid: h.sop_instance_uid.clone(),
                sop_class_uid: h.sop_class_uid.clone(),
                series_instance_uid: h.series_instance_uid.clone(),
                modality: h.modality.clone(),
                body_part: h.body_part_examined.clone(),
                series_description: h.series_description.clone(),
                instance_number: h.instance_number,
                calling_ae_title: source.calling_ae_title.clone(),
                rows: int(tags::ROWS, "Rows"),
                columns: int(tags::COLUMNS, "Columns"),
            });
    }
    for study in studies.values_mut() {
        for instances in study.series.values_mut() {
            instances.sort_by(|a, b| {
                (a.instance_number, &a.sop_instance_uid)
                    .cmp(&(b.instance_number, &b.sop_instance_uid))
            });
        }
    }
    (studies, segs)
}

fn summary(series: &[Instance]) -> Option<SeriesSummary> {
    let first = series.first()?;
    let distinct = |f: &dyn Fn(&Instance) -> Option<String>| -> Vec<String> {
        series
            .iter()
            .filter_map(f)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    Some(SeriesSummary {
        series_instance_uid: first.series_instance_uid.clone(),
        modality: first.modality.clone(),
        body_part: first.body_part.clone(),
        series_description: first.series_description.clone(),
        sop_classes: distinct(&|i| Some(i.sop_class_uid.clone())),
        calling_ae_titles: distinct(&|i| i.calling_ae_title.clone()),
        instances: series.len(),
    })
}

fn describe(s: &SeriesSummary) -> String {
    format!(
        "{} {:?}",
        s.modality.as_deref().unwrap_or("?"),
        s.series_description.as_deref().unwrap_or("")
    )
}

/// The reference masks a SEG object gives: source SOP Instance UID →
/// (rows, columns, per-pixel segment number or 0).
struct SegMasks {
    sop_instance_uid: String,
    referenced: BTreeSet<String>,
    rows: usize,
    columns: usize,
    /// Source image → per-pixel model class index.
    masks: BTreeMap<String, Vec<u8>>,
    notes: Vec<String>,
}

fn int(object: &InMemDicomObject, tag: Tag) -> Option<i64> {
    object.get(tag)?.to_int::<i64>().ok()
}

/// The source images a functional group item names
/// (Derivation Image → Source Image → Referenced SOP Instance UID).
fn source_images(group: &InMemDicomObject) -> Vec<String> {
    items(group, tags::DERIVATION_IMAGE_SEQUENCE)
        .iter()
        .flat_map(|d| items(d, tags::SOURCE_IMAGE_SEQUENCE))
        .filter_map(|s| text(s, tags::REFERENCED_SOP_INSTANCE_UID))
        .collect()
}

/// Read a SEG object's frames into per-image masks of the model's class
/// indices (PS3.3 C.8.20: Segmentation Image Module, Segment Sequence,
/// per-frame Segment Identification and Derivation Image; PS3.5 8.1.1:
/// 1-bit frames packed without padding between frames).
fn read_seg(
    path: &Path,
    segments: &BTreeMap<u32, String>,
) -> std::result::Result<SegMasks, String> {
    let file = DicomFile::open(path).map_err(|e| format!("cannot be read ({e})"))?;
    let object: &InMemDicomObject = file.object();
    let sop_instance_uid = file.header().sop_instance_uid.clone();
    let native = matches!(
        file.header().transfer_syntax.trim_end_matches('\0'),
        "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.1.99"
    );
    if !native {
        return Err(format!(
            "transfer syntax {} is not read for SEG objects (native little endian only: convert it, e.g. `dcmconv +te`)",
            file.header().transfer_syntax
        ));
    }
    let rows = int(object, tags::ROWS).unwrap_or(0);
    let columns = int(object, tags::COLUMNS).unwrap_or(0);
    let frames = int(object, tags::NUMBER_OF_FRAMES).unwrap_or(1);
    let bits = int(object, tags::BITS_ALLOCATED).unwrap_or(0);
    let kind = text(object, tags::SEGMENTATION_TYPE).unwrap_or_default();
    if rows <= 0 || columns <= 0 || frames <= 0 {
        return Err("no Rows, Columns or Number of Frames".into());
    }
    let (rows, columns, frames) = (rows as usize, columns as usize, frames as usize);
    let per_frame = rows
        .checked_mul(columns)
        .filter(|p| p.checked_mul(frames).is_some_and(|all| all <= 1 << 40))
        .ok_or("Rows × Columns × Number of Frames is out of range")?;
    let bytes = object
        .get(tags::PIXEL_DATA)
        .and_then(|e| e.to_bytes().ok())
        .ok_or("no native Pixel Data")?;
    let threshold = match (kind.as_str(), bits) {
        ("BINARY", 1) => None,
        ("FRACTIONAL", 8) => {
            let max = int(object, tags::MAXIMUM_FRACTIONAL_VALUE)
                .unwrap_or(255)
                .max(1);
            Some(max as f64 / 2.0)
        }
        _ => {
            return Err(format!(
                "Segmentation Type {kind:?} with {bits} bits allocated is not read (BINARY 1-bit or FRACTIONAL 8-bit)"
            ));
        }
    };
    let needed = if threshold.is_none() {
        (per_frame * frames).div_ceil(8)
    } else {
        per_frame * frames
    };
    if bytes.len() < needed {
        return Err(format!(
            "Pixel Data holds {} bytes, {frames} frames of {rows}×{columns} need {needed}",
            bytes.len()
        ));
    }
    // Segment number → the model's class index: by label, else by number.
    let mut notes = Vec::new();
    let mut classes: BTreeMap<i64, u8> = BTreeMap::new();
    for segment in items(object, tags::SEGMENT_SEQUENCE) {
        let Some(number) = int(segment, tags::SEGMENT_NUMBER) else {
            continue;
        };
        let label = text(segment, tags::SEGMENT_LABEL).unwrap_or_default();
        let by_label = segments
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(&label))
            .map(|(index, _)| *index);
        let by_number = u32::try_from(number)
            .ok()
            .filter(|n| segments.contains_key(n));
        match by_label.or(by_number).and_then(|i| u8::try_from(i).ok()) {
            Some(class) => {
                classes.insert(number, class);
            }
            None => notes.push(format!(
                "segment {number} ({label:?}) is no segment of the model: not used"
            )),
        }
    }
    let shared = items(object, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).first();
    let shared_sources = shared.map(source_images).unwrap_or_default();
    let shared_segment = shared
        .and_then(|g| items(g, tags::SEGMENT_IDENTIFICATION_SEQUENCE).first())
        .and_then(|s| int(s, tags::REFERENCED_SEGMENT_NUMBER));
    let per_frame_groups = items(object, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    let mut referenced: BTreeSet<String> = items(object, tags::REFERENCED_SERIES_SEQUENCE)
        .iter()
        .flat_map(|s| items(s, tags::REFERENCED_INSTANCE_SEQUENCE))
        .filter_map(|i| text(i, tags::REFERENCED_SOP_INSTANCE_UID))
        .collect();
    let mut masks: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut overlaps = 0usize;
    let mut unplaced = 0usize;
    for f in 0..frames {
        let group = per_frame_groups.get(f);
        let mut sources = group.map(source_images).unwrap_or_default();
        if sources.is_empty() {
            sources = shared_sources.clone();
        }
        let segment = group
            .and_then(|g| items(g, tags::SEGMENT_IDENTIFICATION_SEQUENCE).first())
            .and_then(|s| int(s, tags::REFERENCED_SEGMENT_NUMBER))
            .or(shared_segment);
        let (Some(segment), [source]) = (segment, sources.as_slice()) else {
            unplaced += 1;
            continue;
        };
        let Some(&class) = classes.get(&segment) else {
            continue;
        };
        referenced.insert(source.clone());
        let mask = masks
            .entry(source.clone())
            .or_insert_with(|| vec![0; per_frame]);
        for (p, value) in mask.iter_mut().enumerate() {
            let i = f * per_frame + p;
            let on = match threshold {
                None => bytes[i / 8] >> (i % 8) & 1 == 1,
                Some(t) => f64::from(bytes[i]) >= t,
            };
            if on {
                if *value != 0 && *value != class {
                    overlaps += 1;
                }
                *value = class;
            }
        }
    }
    if unplaced > 0 {
        notes.push(format!(
            "{unplaced} frame(s) name no single source image or segment: not used"
        ));
    }
    if overlaps > 0 {
        notes.push(format!(
            "{overlaps} pixel(s) belong to several segments: the higher segment number is kept"
        ));
    }
    Ok(SegMasks {
        sop_instance_uid,
        referenced,
        rows,
        columns,
        masks,
        notes,
    })
}

/// A writer that hashes what goes through it.
struct Hashing<'a> {
    inner: &'a mut dyn Write,
    hasher: Sha256,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Write `fill`'s bytes durably at `path`, returning their SHA-256.
fn write_hashed(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<String> {
    let mut digest = None;
    vigie_dicom_io::write::write_durably(path, |w| {
        let mut hashing = Hashing {
            inner: w,
            hasher: Sha256::new(),
        };
        fill(&mut hashing)?;
        digest = Some(hashing.hasher.finalize());
        Ok(())
    })?;
    Ok(digest.map(hex::encode).unwrap_or_default())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A chosen series ready to copy.
struct Chosen<'a> {
    entry: SeriesEntry,
    images: Vec<&'a Instance>,
}

/// Build the dataset in `out` (a new or empty folder) from `files`,
/// labelled by `labels`, with the series `router` gives to
/// `options.model`.
pub fn import_dicom(
    files: &[SourceFile],
    labels: &Labels,
    router: &Router,
    out: &Path,
    options: &ImportDicomOptions,
) -> Result<ImportOutcome> {
    let not_empty = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some());
    if not_empty {
        return Err(Error::Import {
            path: out.to_path_buf(),
            reason: "the output folder is not empty: a dataset is written into a new folder".into(),
        });
    }
    let mut outcome = ImportOutcome::default();
    let (studies, seg_files) = read_sources(files, &mut outcome);
    outcome.studies = studies.len();
    let keys: Vec<StudyKeys> = studies.values().filter_map(|s| s.keys.clone()).collect();
    outcome.matching = match_studies(labels, &keys);
    let rows: BTreeMap<u64, &crate::labels::Row> =
        labels.rows.iter().map(|r| (r.line, r)).collect();

    // Reference masks from the SEG objects.
    let mut masks: BTreeMap<String, (usize, usize, Vec<u8>, String)> = BTreeMap::new();
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    if let Some(segments) = &options.segments {
        for path in &seg_files {
            match read_seg(path, segments) {
                Ok(seg) => {
                    let mut note = SegmentationNote {
                        path: path.clone(),
                        sop_instance_uid: Some(seg.sop_instance_uid.clone()),
                        masks: 0,
                        notes: seg.notes,
                    };
                    for uid in seg.referenced {
                        if masks.contains_key(&uid) {
                            note.notes.push(format!(
                                "image {uid} already has a reference from another SEG: this one is not used for it"
                            ));
                            continue;
                        }
                        let mask = seg
                            .masks
                            .get(&uid)
                            .cloned()
                            .unwrap_or_else(|| vec![0; seg.rows * seg.columns]);
                        masks.insert(
                            uid.clone(),
                            (seg.rows, seg.columns, mask, seg.sop_instance_uid.clone()),
                        );
                        referenced.insert(uid);
                        note.masks += 1;
                    }
                    outcome.segmentations.push(note);
                }
                Err(reason) => outcome.segmentations.push(SegmentationNote {
                    path: path.clone(),
                    sop_instance_uid: None,
                    masks: 0,
                    notes: vec![reason],
                }),
            }
        }
    }

    // The labelled studies, in the spreadsheet's order, with their series.
    let mut labelled: Vec<(u64, &String)> = outcome
        .matching
        .labelled
        .iter()
        .map(|(uid, line)| (*line, uid))
        .collect();
    labelled.sort();
    let mut chosen_studies = Vec::new();
    for (line, uid) in labelled {
        let Some(study) = studies.get(uid) else {
            continue;
        };
        let summaries: Vec<SeriesSummary> =
            study.series.values().filter_map(|s| summary(s)).collect();
        let (jobs, note) = router.route(&StableStudy {
            study_instance_uid: uid.clone(),
            generation: 0,
            series: summaries.clone(),
        });
        let mut rule_of: BTreeMap<&str, &str> = BTreeMap::new();
        for job in jobs.iter().filter(|j| j.model == options.model) {
            for series in &job.series {
                rule_of.entry(series.as_str()).or_insert(job.rule.as_str());
            }
        }
        let mut chosen = Vec::new();
        for s in &summaries {
            let Some(rule) = rule_of.get(s.series_instance_uid.as_str()) else {
                outcome.series_left_out.push(SeriesLeftOut {
                    study_instance_uid: uid.clone(),
                    series_instance_uid: s.series_instance_uid.clone(),
                    what: describe(s),
                });
                continue;
            };
            let all = &study.series[&s.series_instance_uid];
            let mut images: Vec<&Instance> = all.iter().collect();
            let mut segmentations = BTreeSet::new();
            if options.segments.is_some() {
                images.retain(|i| {
                    let Some((rows, columns, _, seg)) = masks.get(&i.sop_instance_uid) else {
                        return false;
                    };
                    let same_grid =
                        i.rows == Some(*rows as i64) && i.columns == Some(*columns as i64);
                    if same_grid {
                        segmentations.insert(seg.clone());
                    }
                    same_grid
                });
                outcome.images_without_reference += all.len() - images.len();
                if images.is_empty() {
                    continue;
                }
            }
            chosen.push(Chosen {
                entry: SeriesEntry {
                    series_instance_uid: s.series_instance_uid.clone(),
                    modality: s.modality.clone(),
                    series_description: s.series_description.clone(),
                    rule: (*rule).to_string(),
                    images: images.len(),
                    segmentations: segmentations.into_iter().collect(),
                },
                images,
            });
        }
        if chosen.is_empty() {
            if options.segments.is_some() && !rule_of.is_empty() {
                outcome.without_reference.push((uid.clone(), line));
            } else {
                outcome.not_routed.push(NotRouted {
                    study_instance_uid: uid.clone(),
                    line,
                    note: note.unwrap_or_else(|| {
                        format!(
                            "no routing rule gives {} any of its series ({})",
                            options.model,
                            summaries
                                .iter()
                                .map(describe)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }),
                });
            }
            continue;
        }
        chosen_studies.push((line, uid.clone(), chosen));
    }
    if !outcome.is_complete() && !options.allow_unmatched {
        return Ok(outcome);
    }
    if chosen_studies.is_empty() {
        return Err(Error::Import {
            path: out.to_path_buf(),
            reason: "no labelled study has a series for the model: nothing to write".into(),
        });
    }

    // Copy, in the spreadsheet's order.
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    let mut entries = Vec::new();
    let mut hashes = Vec::new();
    for (n, (line, uid, chosen)) in chosen_studies.into_iter().enumerate() {
        let Some(row) = rows.get(&line) else {
            continue;
        };
        let mut entry = StudyEntry {
            study_instance_uid: uid,
            label: row.label.clone(),
            files: Vec::new(),
            sha256: Vec::new(),
            source: Some(format!("{} line {line}", options.labels_name)),
            attributes: row
                .attributes
                .iter()
                .filter(|(_, v)| !v.trim().is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            references: Vec::new(),
            series: Vec::new(),
        };
        for (k, series) in chosen.into_iter().enumerate() {
            for (i, image) in series.images.iter().enumerate() {
                let folder = PathBuf::from(format!("study-{:04}/series-{:02}", n + 1, k + 1));
                let file = folder.join(format!("{:05}.dcm", i + 1));
                let target = out.join(&file);
                let mut source = std::fs::File::open(&image.path).map_err(io_error(&image.path))?;
                let sha = write_hashed(&target, |w| std::io::copy(&mut source, w).map(|_| ()))?;
                hashes.push((file.clone(), sha.clone()));
                entry.files.push(file);
                entry.sha256.push(sha);
                if let Some((rows, columns, mask, _)) = masks.get(&image.sop_instance_uid) {
                    let reference = folder.join(format!("{:05}.mask.png", i + 1));
                    let png = mask_png(*rows, *columns, mask, &out.join(&reference))?;
                    hashes.push((reference.clone(), png));
                    entry.references.push(reference);
                }
            }
            entry.series.push(series.entry);
        }
        entries.push(entry);
    }
    let dataset = Dataset {
        name: options.name.clone(),
        created_by: concat!(
            "vigie ",
            env!("CARGO_PKG_VERSION"),
            " validate import-dicom"
        )
        .into(),
        content_sha256: content_hash(&hashes),
        studies: entries,
    };
    dataset.write(out)?;
    outcome.dataset = Some(dataset);
    Ok(outcome)
}

/// Write a reference mask as an 8-bit grayscale PNG; its SHA-256.
fn mask_png(rows: usize, columns: usize, mask: &[u8], path: &Path) -> Result<String> {
    let fail = |reason: String| Error::Import {
        path: path.to_path_buf(),
        reason,
    };
    let image = image::GrayImage::from_raw(
        u32::try_from(columns).map_err(|_| fail("too wide".into()))?,
        u32::try_from(rows).map_err(|_| fail("too tall".into()))?,
        mask.to_vec(),
    )
    .ok_or_else(|| fail("mask size differs from its grid".into()))?;
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| fail(e.to_string()))?;
    write_hashed(path, |w| w.write_all(&png))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    fn item(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
        InMemDicomObject::from_element_iter(elements)
    }

    fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
    }

    fn text_element(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, vr, PrimitiveValue::from(value))
    }

    fn us(tag: Tag, value: u16) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, VR::US, PrimitiveValue::from(value))
    }

    /// A BINARY SEG of two 3×3 frames (18 bits: the second frame starts
    /// inside a byte): frame 1 on image `A` with segment 1 ("oedema"),
    /// frame 2 on image `B` with segment 2 ("lesion"); image `C` is
    /// referenced without a frame; segment 7 is no segment of the model.
    fn seg_file(dir: &Path) -> PathBuf {
        let uids = vigie_dicom_io::uid::UidGenerator::default();
        let mut obj = vigie_dicom_io::write::MrImage::new(3, 3, &[0; 9], &uids)
            .build()
            .unwrap();
        obj.put(text_element(
            tags::SOP_CLASS_UID,
            VR::UI,
            SEGMENTATION_STORAGE,
        ));
        obj.put(text_element(tags::MODALITY, VR::CS, "SEG"));
        obj.put(text_element(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"));
        obj.put(text_element(tags::NUMBER_OF_FRAMES, VR::IS, "2"));
        obj.put(us(tags::BITS_ALLOCATED, 1));
        obj.put(us(tags::BITS_STORED, 1));
        obj.put(us(tags::HIGH_BIT, 0));
        let segment = |number: u16, label: &str| {
            item(vec![
                us(tags::SEGMENT_NUMBER, number),
                text_element(tags::SEGMENT_LABEL, VR::LO, label),
            ])
        };
        obj.put(sequence(
            tags::SEGMENT_SEQUENCE,
            vec![
                segment(1, "Oedema"),
                segment(2, "lesion"),
                segment(7, "other"),
            ],
        ));
        let frame = |segment: u16, source: &str| {
            item(vec![
                sequence(
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    vec![item(vec![us(tags::REFERENCED_SEGMENT_NUMBER, segment)])],
                ),
                sequence(
                    tags::DERIVATION_IMAGE_SEQUENCE,
                    vec![item(vec![sequence(
                        tags::SOURCE_IMAGE_SEQUENCE,
                        vec![item(vec![text_element(
                            tags::REFERENCED_SOP_INSTANCE_UID,
                            VR::UI,
                            source,
                        )])],
                    )])],
                ),
            ])
        };
        obj.put(sequence(
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![frame(1, "A"), frame(2, "B")],
        ));
        obj.put(sequence(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![item(vec![sequence(
                tags::REFERENCED_INSTANCE_SEQUENCE,
                vec![item(vec![text_element(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    "C",
                )])],
            )])],
        ));
        // Frame 1: the diagonal; frame 2: the other diagonal; bits packed
        // from the least significant, across the frame boundary.
        let bits = [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 0];
        let mut packed = vec![0u8; 4];
        for (i, b) in bits.iter().enumerate() {
            packed[i / 8] |= b << (i % 8);
        }
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::U8(packed.into()),
        ));
        let path = dir.join("seg.dcm");
        vigie_dicom_io::write::write_part10(obj, &path).unwrap();
        path
    }

    fn model_segments() -> BTreeMap<u32, String> {
        BTreeMap::from([(1, "lesion".to_string()), (2, "oedema".to_string())])
    }

    #[test]
    fn a_seg_packed_across_frame_boundaries_gives_each_image_its_mask_by_segment_label() {
        let dir = tempfile::tempdir().unwrap();
        let seg = read_seg(&seg_file(dir.path()), &model_segments()).unwrap();
        assert_eq!((seg.rows, seg.columns), (3, 3));
        // "Oedema" (segment 1) is the model's class 2, "lesion" (2) its 1.
        assert_eq!(seg.masks["A"], [2, 0, 0, 0, 2, 0, 0, 0, 2]);
        assert_eq!(seg.masks["B"], [0, 0, 1, 0, 1, 0, 1, 0, 0]);
        assert!(!seg.masks.contains_key("C"));
        assert_eq!(
            seg.referenced
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["A", "B", "C"],
            "C is referenced without a frame: an empty mask"
        );
        assert!(
            seg.notes.iter().any(|n| n.contains("segment 7")),
            "{:?}",
            seg.notes
        );
    }

    /// Bounded, seeded fuzzing of the SEG reader (docs/fuzzing.md): any
    /// bytes are read or refused with a reason, never a panic.
    #[test]
    fn fuzz_seg_objects() {
        use vigie_test_support::fuzz;
        let dir = tempfile::tempdir().unwrap();
        let seeds = vec![std::fs::read(seg_file(dir.path())).unwrap()];
        let path = dir.path().join("fuzzed.dcm");
        let summary = fuzz::run(
            "seg",
            &seeds,
            fuzz::iterations(1_000_000),
            fuzz::budget(3),
            |bytes| {
                std::fs::write(&path, bytes).unwrap();
                let _ = read_seg(&path, &model_segments());
            },
        );
        assert!(summary.executions > 3);
    }

    #[test]
    fn walk_lists_files_in_name_order_once_through_a_folder_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/2"), b"x").unwrap();
        std::fs::write(dir.path().join("b/1"), b"x").unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("b"), dir.path().join("b/c/loop")).unwrap();
        let (files, skipped) = walk(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.path.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            names,
            [PathBuf::from("a"), "b/1".into(), "b/c/2".into()],
            "each file once, in name order; the link back to b is not followed again"
        );
        assert!(skipped.is_empty(), "{skipped:?}");
        assert!(walk(&[dir.path().join("missing")]).is_err());
    }
}
