//! Prior studies for models that compare with them (a package's
//! `[priors]`): found by C-FIND on the PACS of `[priors] from` (Study Root,
//! STUDY level, by Patient ID, within the package's window of days),
//! retrieved by C-GET into `priors/<job>/` (never ingested, indexed or
//! routed), checked again on every instance (the same patient, the study
//! asked, the modality or body part the package asks for, in the model's
//! scope), and the usable images of the most recent studies given to the
//! model as its prior inputs (one study per input, most recent first),
//! preprocessed as the current image.
//!
//! Runs on the worker thread, before the job's hot loop, with its own
//! small runtime for the network part, all of it within the package's
//! `priors.wait_s`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde::Serialize;
use vigie_dicom_io::DicomFile;
use vigie_dicom_io::net::get::GetLimits;
use vigie_dicom_io::net::scu::ScuOptions;
use vigie_inference::manifest::{PriorMatch, Priors};
use vigie_inference::{Model, PriorInput};
use vigie_store::{InstanceRecord, Job};

use super::Pipeline;

/// Most C-FIND matches read for one patient.
const MAX_MATCHES: usize = 200;

/// A prior given to the model, as the job's records name it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriorUsed {
    /// The prior study.
    pub study_instance_uid: String,
    /// Its Study Date.
    pub study_date: String,
    /// The series of the image used.
    pub series_instance_uid: String,
    /// The image used.
    pub sop_instance_uid: String,
    /// Its frame given to the model (the first).
    pub frame: usize,
    /// SHA-256 of the file as retrieved.
    pub file_sha256: String,
    /// SHA-256 of its decoded pixels, all frames, as for every analysed
    /// instance (`f32` little endian after the package's Modality LUT and
    /// VOI).
    pub pixels_sha256: String,
}

/// What the search for priors came to, for the records.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PriorSearch {
    /// Matches of the query that qualify (same patient, in the window,
    /// not the current study), most recent first.
    pub candidates: usize,
    /// Prior studies retrieved, in order, with the instances kept of each.
    pub retrieved: Vec<(String, usize)>,
    /// The priors used, in the order of the package's `priors.inputs`.
    pub used: Vec<PriorUsed>,
    /// Why fewer priors than inputs were found, if so.
    pub missing: Option<String>,
    /// Why the priors found could not be given to the model, if so.
    pub error: Option<String>,
}

impl PriorSearch {
    /// `used` (a prior for every input), `partial` (for some), `missing`
    /// (none), `failed` (found but not given to the model).
    pub fn outcome(&self) -> &'static str {
        if self.error.is_some() {
            return "failed";
        }
        match (self.used.is_empty(), self.missing.is_some()) {
            (_, false) => "used",
            (false, true) => "partial",
            (true, true) => "missing",
        }
    }
}

/// Why a job's model may not run with its priors.
#[derive(Debug)]
pub(super) enum PriorsError {
    /// The service's stop cut the search: nothing recorded, the job is left
    /// for the next start.
    Stopping,
    /// The job fails with this reason (recorded).
    Failed(String),
}

/// The current study as the search for its priors needs it.
struct Current {
    study_instance_uid: String,
    patient_id: String,
    issuer: Option<String>,
    date: chrono::NaiveDate,
    time: Option<String>,
    modality: Option<String>,
    body_part: Option<String>,
}

/// A qualifying match of the query.
#[derive(Debug, Clone)]
struct Candidate {
    study_instance_uid: String,
    date: chrono::NaiveDate,
    study_date: String,
    time: Option<chrono::NaiveTime>,
}

impl Pipeline {
    /// Find the priors of `job` (whose model takes them) and set them as
    /// the model's prior inputs. `Ok` when the model may run: with a prior
    /// for every input, or with fewer when the package says
    /// `on_missing = "run"`; `Err` with the reason when the job must fail.
    pub(super) fn set_priors(
        &self,
        job: &Job,
        model: &mut Model,
        instances: &[InstanceRecord],
    ) -> Result<PriorSearch, PriorsError> {
        let Some(priors) = model.package().manifest().priors.clone() else {
            return Ok(PriorSearch::default());
        };
        // Whatever the previous job left is gone before anything else.
        model
            .set_priors(None)
            .map_err(|e| PriorsError::Failed(e.to_string()))?;
        let mut search = PriorSearch::default();
        let mut found = Vec::new();
        let reason = {
            // The retrieved files are not kept, only the tensors, however
            // the search ends (a panic included).
            let dir = RemovedOnDrop(self.layout.priors(job.id));
            self.find_priors(&priors, model, instances, &dir.0, &mut search, &mut found)
                .err()
        };
        // Cut by the stop: nothing to record, the job is left for the next
        // start (the worker sees the stop).
        if self.stop.is_cancelled() {
            return Err(PriorsError::Stopping);
        }
        let mut inputs = Vec::with_capacity(priors.inputs.len());
        for (used, tensor) in found {
            search.used.push(used);
            inputs.push(PriorInput::Tensor(tensor));
        }
        if inputs.len() < priors.inputs.len() {
            let reason = reason.unwrap_or_else(|| "no more usable prior study".into());
            search.missing = Some(if inputs.is_empty() {
                reason.clone()
            } else {
                format!(
                    "{} of {} priors found: {reason}",
                    inputs.len(),
                    priors.inputs.len()
                )
            });
            if priors.on_missing == vigie_inference::manifest::OnMissingPrior::Fail {
                self.emit(super::events::Event::PriorSearched {
                    job,
                    search: &search,
                });
                return Err(PriorsError::Failed(match inputs.len() {
                    0 => format!("no prior study: {reason}"),
                    n => format!("{n} of {} prior studies: {reason}", priors.inputs.len()),
                }));
            }
            inputs.resize(priors.inputs.len(), PriorInput::Missing);
        }
        let set = model
            .set_priors(Some(inputs))
            .map_err(|e| format!("cannot give the priors to the model: {e}"));
        if let Err(e) = &set {
            search.error = Some(e.clone());
        }
        self.emit(super::events::Event::PriorSearched {
            job,
            search: &search,
        });
        set.map(|()| search).map_err(PriorsError::Failed)
    }

    /// Search, retrieve and choose into `found` (at most one prior per
    /// input, most recent first); `Err` with the reason when it ends with
    /// fewer than the package's inputs.
    fn find_priors(
        &self,
        priors: &Priors,
        model: &Model,
        instances: &[InstanceRecord],
        dir: &Path,
        search: &mut PriorSearch,
        found: &mut Vec<(PriorUsed, Vec<f32>)>,
    ) -> Result<(), String> {
        let Some(name) = &self.config.priors.from else {
            return Err("no PACS is configured to ask for priors ([priors] from)".into());
        };
        let remote = self
            .config
            .destinations
            .get(name)
            .and_then(|d| self.remote(d))
            .ok_or_else(|| format!("destination {name} cannot be reached (TLS not configured)"))?;
        let first = instances
            .first()
            .ok_or_else(|| "the job has no instance".to_string())?;
        let current = current_study(&first.path)?;
        // A Patient ID C-FIND would take as a pattern or a list cannot be
        // asked for exactly: no prior rather than other patients' studies.
        if current.patient_id.contains(['*', '?', '\\']) {
            return Err(
                "the Patient ID holds a character C-FIND matches as a pattern (* ? \\)".into(),
            );
        }
        let mut scu = ScuOptions::new(&self.config.dicom.ae_title);
        scu.timeout = Duration::from_secs(self.config.dicom.scu_timeout_s.max(1));
        let wait = Duration::from_secs(priors.wait_s);
        let deadline = std::time::Instant::now() + wait;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the retrieval: {e}"))?;
        let query = study_query(&current, priors);
        let matches = self
            .bounded(
                &runtime,
                wait,
                vigie_dicom_io::net::find::find(&remote, &scu, &query, MAX_MATCHES),
            )
            .ok_or_else(|| {
                format!(
                    "the C-FIND for priors was not answered within {} s",
                    priors.wait_s
                )
            })?
            .map_err(|e| format!("C-FIND for priors: {e}"))?;
        if matches.status != vigie_dicom_io::dimse::status::SUCCESS {
            return Err(format!(
                "the C-FIND for priors answered 0x{:04X}",
                matches.status
            ));
        }
        let candidates = qualify(&current, priors, &matches.matches);
        search.candidates = candidates.len();
        if candidates.is_empty() {
            return Err(format!(
                "the PACS holds no earlier study of the patient within {} days{}",
                priors.within_days,
                if priors.same.contains(&PriorMatch::Modality) {
                    " of the same modality"
                } else {
                    ""
                }
            ));
        }
        let manifest = model.package().manifest();
        let classes: Vec<&str> = if manifest.applies_to.sop_classes.is_empty() {
            vigie_dicom_io::net::storage_classes::IMAGE_STORAGE
                .iter()
                .map(|(uid, _)| *uid)
                .collect()
        } else {
            manifest
                .applies_to
                .sop_classes
                .iter()
                .map(String::as_str)
                .collect()
        };
        let mut limits = GetLimits {
            max_instances: self.config.priors.max_instances,
            // One instance is held in memory while it arrives: bounded as
            // a decoded image is.
            max_instance_bytes: usize::try_from(
                self.config.limits.max_decoded_mib.saturating_mul(1 << 20),
            )
            .unwrap_or(usize::MAX),
            max_total_bytes: self.config.priors.max_mib.saturating_mul(1 << 20),
        };
        let mut reasons = Vec::new();
        for (n, candidate) in candidates.iter().take(priors.studies()).enumerate() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                reasons.push(format!("no time left within {} s", priors.wait_s));
                break;
            }
            let into = dir.join(n.to_string());
            std::fs::create_dir_all(&into)
                .map_err(|e| format!("cannot create {}: {e}", into.display()))?;
            // Study level: the Study Instance UID alone.
            let identifier =
                vigie_dicom_io::net::find::study_query(&candidate.study_instance_uid, &[]);
            // The budget left, shared among the inputs still to fill: one
            // large study cannot starve the others.
            let share = (priors.inputs.len() - found.len()).max(1);
            let study_limits = GetLimits {
                max_instances: (limits.max_instances / share).max(1),
                max_total_bytes: (limits.max_total_bytes / share as u64).max(1),
                ..limits
            };
            let got = self
                .bounded(
                    &runtime,
                    left,
                    vigie_dicom_io::net::get::get(
                        &remote,
                        &scu,
                        &identifier,
                        &classes,
                        &into,
                        study_limits,
                    ),
                )
                .ok_or_else(|| format!("not retrieved within {} s", priors.wait_s))
                .and_then(|r| r.map_err(|e| format!("C-GET: {e}")));
            let got = match got {
                Ok(got) => got,
                Err(reason) => {
                    reasons.push(format!("study {}: {reason}", n + 1));
                    continue;
                }
            };
            search
                .retrieved
                .push((candidate.study_instance_uid.clone(), got.files.len()));
            // What the PACS answered, for the reason if nothing is usable
            // (its Error Comment is left out: it may echo identifiers).
            let answered = format!(
                "C-GET 0x{:04X}, {} kept, {} failed by the PACS, {} refused by Vigie{}{}",
                got.status,
                got.files.len(),
                got.failed,
                got.refused_count,
                if got.cancelled {
                    ", cancelled at a bound"
                } else {
                    ""
                },
                got.aborted
                    .as_deref()
                    .map(|a| format!(", aborted: {a}"))
                    .unwrap_or_default()
            );
            limits.max_instances = limits.max_instances.saturating_sub(got.files.len());
            limits.max_total_bytes = limits
                .max_total_bytes
                .saturating_sub(got.files.iter().map(|f| f.bytes).sum());
            let files: Vec<PathBuf> = got.files.iter().map(|f| f.path.clone()).collect();
            match self.usable_image(&current, candidate, priors, model, &files) {
                Ok(prior) => {
                    found.push(prior);
                    if found.len() == priors.inputs.len() {
                        return Ok(());
                    }
                }
                Err(reason) => reasons.push(format!("study {}: {reason} ({answered})", n + 1)),
            }
            if limits.max_instances == 0 || limits.max_total_bytes == 0 {
                reasons.push("the retrieval bounds ([priors]) are reached".into());
                break;
            }
        }
        if reasons.is_empty() {
            reasons.push(format!(
                "{} qualifying studies, {} retrieved at most",
                candidates.len(),
                priors.studies()
            ));
        }
        Err(format!(
            "{} candidate studies, {} usable: {}",
            candidates.len(),
            found.len(),
            reasons.join("; ")
        ))
    }

    /// Run `work` on `runtime` within `limit`; `None` when the time ran
    /// out. The service's stop cuts it short (the job is then left for the
    /// next start, see the worker).
    fn bounded<T>(
        &self,
        runtime: &tokio::runtime::Runtime,
        limit: Duration,
        work: impl std::future::Future<Output = Result<T, vigie_dicom_io::net::scu::ScuError>>,
    ) -> Option<Result<T, vigie_dicom_io::net::scu::ScuError>> {
        runtime.block_on(async {
            tokio::select! {
                done = tokio::time::timeout(limit, work) => done.ok(),
                () = self.stop.cancelled() => Some(Err(stopping())),
            }
        })
    }

    /// The first image of `files` (by Series Number, then Instance Number)
    /// that is of the prior study, the same patient, what the package asks
    /// for, and that decodes: its record and tensor.
    fn usable_image(
        &self,
        current: &Current,
        candidate: &Candidate,
        priors: &Priors,
        model: &Model,
        files: &[PathBuf],
    ) -> Result<(PriorUsed, Vec<f32>), String> {
        let manifest = model.package().manifest();
        let mut images = Vec::new();
        let mut refused = 0usize;
        for path in files {
            // Scanned with the process's limits before it is parsed (what
            // the PACS sent is outside input); the attributes only, so
            // that a whole study is never in memory.
            let Ok(file) = DicomFile::open_header(path) else {
                refused += 1;
                continue;
            };
            let header = file.header();
            let same = |a: Option<&str>, b: Option<&str>| match (a, b) {
                (Some(a), Some(b)) => a.trim().eq_ignore_ascii_case(b.trim()),
                _ => false,
            };
            let text = |tag| {
                file.string(tag)
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
            };
            // What the query answered is checked again on the instance:
            // the study asked for, the patient (and the issuer, when the
            // current study names one), the date of the match.
            let ok = header.study_instance_uid == candidate.study_instance_uid
                && text(tags::PATIENT_ID).is_some_and(|p| p == current.patient_id)
                && (current.issuer.is_none() || text(tags::ISSUER_OF_PATIENT_ID) == current.issuer)
                && text(tags::STUDY_DATE).as_deref() == Some(candidate.study_date.as_str())
                && (!priors.same.contains(&PriorMatch::Modality)
                    || same(header.modality.as_deref(), current.modality.as_deref()))
                && (!priors.same.contains(&PriorMatch::BodyPart)
                    || same(
                        header.body_part_examined.as_deref(),
                        current.body_part.as_deref(),
                    ))
                && manifest.applies_to.matches(
                    header.modality.as_deref(),
                    header.body_part_examined.as_deref(),
                    &header.sop_class_uid,
                );
            if !ok {
                refused += 1;
                continue;
            }
            let series_number = file
                .int(tags::SERIES_NUMBER, "Series Number")
                .ok()
                .flatten();
            images.push((
                series_number.unwrap_or(i64::MAX),
                header.instance_number.map_or(i64::MAX, i64::from),
                path.clone(),
            ));
        }
        images.sort();
        let mut preparer = model.preparer().map_err(|e| e.to_string())?;
        let pool = vigie_analysis::hot_loop::TensorPool::default();
        let mut last_error = None;
        for (_, _, path) in images {
            let file = match DicomFile::open(&path) {
                Ok(file) => file,
                Err(e) => {
                    last_error = Some(e.to_string());
                    continue;
                }
            };
            match vigie_analysis::hot_loop::decode(manifest, &mut preparer, &pool, &file) {
                Ok(decoded) => {
                    let Some(frame) = decoded.frames.into_iter().next() else {
                        continue;
                    };
                    let file_sha256 =
                        vigie_inference::package::sha256_file(&path).map_err(|e| e.to_string())?;
                    let header = file.header();
                    return Ok((
                        PriorUsed {
                            study_instance_uid: candidate.study_instance_uid.clone(),
                            study_date: candidate.study_date.clone(),
                            series_instance_uid: header.series_instance_uid.clone(),
                            sop_instance_uid: header.sop_instance_uid.clone(),
                            frame: 0,
                            file_sha256,
                            pixels_sha256: decoded.pixels_sha256,
                        },
                        frame.tensor,
                    ));
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        Err(match last_error {
            Some(e) => format!("no image decodes for the model ({e})"),
            None => format!(
                "{} instances retrieved, none an image of the patient the model applies to{}",
                files.len(),
                if refused > 0 {
                    format!(" ({refused} set aside)")
                } else {
                    String::new()
                }
            ),
        })
    }
}

/// The error a retrieval cut by the service's stop ends with.
fn stopping() -> vigie_dicom_io::net::scu::ScuError {
    vigie_dicom_io::net::scu::ScuError::Transfer {
        ae_title: String::new(),
        sop_instance_uid: String::new(),
        reason: "the service is stopping".into(),
    }
}

/// What the search needs of the current study, from its first instance.
fn current_study(path: &Path) -> Result<Current, String> {
    let file = DicomFile::open_header(path).map_err(|e| format!("cannot read the study: {e}"))?;
    let text = |tag: Tag| {
        file.string(tag)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let patient_id = text(tags::PATIENT_ID).ok_or("the study has no Patient ID")?;
    let date = text(tags::STUDY_DATE)
        .and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y%m%d").ok())
        .ok_or("the study has no valid Study Date")?;
    let header = file.header();
    Ok(Current {
        study_instance_uid: header.study_instance_uid.clone(),
        patient_id,
        issuer: text(tags::ISSUER_OF_PATIENT_ID),
        date,
        time: text(tags::STUDY_TIME),
        modality: header.modality.clone(),
        body_part: header.body_part_examined.clone(),
    })
}

fn put(identifier: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    let value = if value.is_empty() {
        PrimitiveValue::Empty
    } else {
        PrimitiveValue::from(value)
    };
    identifier.put(DataElement::new(tag, vr, value));
}

/// The STUDY level query for the patient's studies in the window (PS3.4
/// C.6.2.1). A Patient ID holding `*` or `?` would be taken as a pattern:
/// the matches are checked again exactly ([`qualify`]).
fn study_query(current: &Current, priors: &Priors) -> InMemDicomObject {
    let from = current.date - chrono::Days::new(u64::from(priors.within_days));
    let mut identifier = InMemDicomObject::new_empty();
    put(&mut identifier, tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY");
    put(
        &mut identifier,
        tags::PATIENT_ID,
        VR::LO,
        &current.patient_id,
    );
    put(
        &mut identifier,
        tags::STUDY_DATE,
        VR::DA,
        &format!(
            "{}-{}",
            from.format("%Y%m%d"),
            current.date.format("%Y%m%d")
        ),
    );
    let modality = match (
        &current.modality,
        priors.same.contains(&PriorMatch::Modality),
    ) {
        (Some(m), true) => m.as_str(),
        _ => "",
    };
    put(&mut identifier, tags::MODALITIES_IN_STUDY, VR::CS, modality);
    put(&mut identifier, tags::STUDY_INSTANCE_UID, VR::UI, "");
    put(&mut identifier, tags::STUDY_TIME, VR::TM, "");
    put(&mut identifier, tags::ISSUER_OF_PATIENT_ID, VR::LO, "");
    identifier
}

/// The matches that really qualify (the PACS's matching is not trusted):
/// exactly the same Patient ID, the same issuer when both say one, not the
/// current study, dated within the window and not after the current study
/// (the same day: an earlier time, when both have one), of the modality
/// when the package asks for it and the PACS says; most recent first.
fn qualify(current: &Current, priors: &Priors, matches: &[InMemDicomObject]) -> Vec<Candidate> {
    let from = current.date - chrono::Days::new(u64::from(priors.within_days));
    let text = |m: &InMemDicomObject, tag: Tag| {
        vigie_dicom_io::file::text(m, tag)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut out: Vec<Candidate> = matches
        .iter()
        .filter_map(|m| {
            let uid = text(m, tags::STUDY_INSTANCE_UID)?;
            if uid == current.study_instance_uid
                || vigie_dicom_io::uid::validate(&uid).is_err()
                || text(m, tags::PATIENT_ID)? != current.patient_id
            {
                return None;
            }
            if let (Some(a), Some(b)) = (&current.issuer, text(m, tags::ISSUER_OF_PATIENT_ID))
                && *a != b
            {
                return None;
            }
            let study_date = text(m, tags::STUDY_DATE)?;
            let date = chrono::NaiveDate::parse_from_str(&study_date, "%Y%m%d").ok()?;
            if date < from || date > current.date {
                return None;
            }
            let time = text(m, tags::STUDY_TIME).and_then(|t| parse_time(&t));
            // The same day: a prior only when both times say it is earlier
            // (a later exam, or the same one sent again, is not a prior).
            if date == current.date {
                match (time, current.time.as_deref().and_then(parse_time)) {
                    (Some(then), Some(now)) if then < now => {}
                    _ => return None,
                }
            }
            if priors.same.contains(&PriorMatch::Modality)
                && let (Some(want), Some(listed)) =
                    (&current.modality, text(m, tags::MODALITIES_IN_STUDY))
                && !listed
                    .split('\\')
                    .any(|v| v.trim().eq_ignore_ascii_case(want))
            {
                return None;
            }
            Some(Candidate {
                study_instance_uid: uid,
                date,
                study_date,
                time,
            })
        })
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse((c.date, c.time)));
    // A study answered twice counts once (its most recent answer).
    let mut seen = std::collections::HashSet::new();
    out.retain(|c| seen.insert(c.study_instance_uid.clone()));
    out
}

/// A DICOM TM value (`HHMMSS.FFFFFF`, shorter forms, or the retired
/// `HH:MM:SS`) as a time of day.
fn parse_time(value: &str) -> Option<chrono::NaiveTime> {
    let digits: String = value.trim().chars().filter(|c| *c != ':').collect();
    let (whole, fraction) = digits.split_once('.').unwrap_or((&digits, ""));
    if whole.len() < 2
        || whole.len() % 2 == 1
        || whole.len() > 6
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || (digits.contains('.') && (whole.len() != 6 || fraction.is_empty()))
    {
        return None;
    }
    let part = |i: usize| {
        whole
            .get(i..i + 2)
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let micros = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<6}").get(..6)?.parse::<u32>().ok()?
    };
    chrono::NaiveTime::from_hms_micro_opt(part(0), part(2), part(4), micros)
}

/// A folder removed when dropped.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn priors() -> Priors {
        Priors {
            inputs: vec!["prior".into()],
            same: vec![PriorMatch::Modality],
            within_days: 365,
            max_studies: Some(2),
            wait_s: 60,
            on_missing: Default::default(),
            missing_input: Default::default(),
        }
    }

    fn current() -> Current {
        Current {
            study_instance_uid: "1.3".into(),
            patient_id: "P-1".into(),
            issuer: Some("HOSP".into()),
            date: chrono::NaiveDate::from_ymd_opt(2026, 6, 1).unwrap(),
            time: Some("120000".into()),
            modality: Some("MR".into()),
            body_part: None,
        }
    }

    fn study(
        uid: &str,
        patient: &str,
        date: &str,
        time: &str,
        modalities: &str,
    ) -> InMemDicomObject {
        let mut m = InMemDicomObject::new_empty();
        put(&mut m, tags::STUDY_INSTANCE_UID, VR::UI, uid);
        put(&mut m, tags::PATIENT_ID, VR::LO, patient);
        put(&mut m, tags::STUDY_DATE, VR::DA, date);
        put(&mut m, tags::STUDY_TIME, VR::TM, time);
        put(&mut m, tags::MODALITIES_IN_STUDY, VR::CS, modalities);
        m
    }

    /// The PACS's matching is not trusted: another patient, a pattern
    /// match, the current study, a later or too old study, another
    /// modality or issuer are all set aside, the rest most recent first.
    #[test]
    fn only_the_patients_earlier_studies_in_the_window_qualify() {
        let mut other_issuer = study("1.9", "P-1", "20260301", "", "MR");
        put(
            &mut other_issuer,
            tags::ISSUER_OF_PATIENT_ID,
            VR::LO,
            "ELSEWHERE",
        );
        let matches = vec![
            study("1.4", "P-1", "20251201", "", "MR"),
            study("1.5", "P-1", "20260501", "", "CT\\MR"),
            study("1.3", "P-1", "20260601", "", "MR"),
            study("1.6", "P-10", "20260501", "", "MR"),
            study("1.7", "P-1", "20250101", "", "MR"),
            study("1.8", "P-1", "20260602", "", "MR"),
            study("1.10", "P-1", "20260510", "", "CT"),
            study("1.11", "P-1", "20260601", "130000", "MR"),
            study("1.12", "P-1", "20260601", "080000", "MR"),
            // The same day without a time: perhaps later, not a prior.
            study("1.13", "P-1", "20260601", "", "MR"),
            // "1200" is 12:00:00, the current time: not earlier.
            study("1.14", "P-1", "20260601", "1200", "MR"),
            // Answered twice: once.
            study("1.5", "P-1", "20260501", "", "MR"),
            other_issuer,
        ];
        let found: Vec<String> = qualify(&current(), &priors(), &matches)
            .into_iter()
            .map(|c| c.study_instance_uid)
            .collect();
        assert_eq!(found, ["1.12", "1.5", "1.4"]);
        // Without the modality rule the CT study qualifies too.
        let mut any = priors();
        any.same.clear();
        let found: Vec<String> = qualify(&current(), &any, &matches)
            .into_iter()
            .map(|c| c.study_instance_uid)
            .collect();
        assert_eq!(found, ["1.12", "1.10", "1.5", "1.4"]);
    }

    #[test]
    fn study_times_read_in_every_form_tm_allows() {
        let t = |h, m, s, us| chrono::NaiveTime::from_hms_micro_opt(h, m, s, us);
        assert_eq!(parse_time("120000"), t(12, 0, 0, 0));
        assert_eq!(parse_time("1200"), t(12, 0, 0, 0));
        assert_eq!(parse_time("12"), t(12, 0, 0, 0));
        assert_eq!(parse_time("080910.5"), t(8, 9, 10, 500_000));
        assert_eq!(parse_time("12:00:01"), t(12, 0, 1, 0));
        for bad in [
            "",
            "1",
            "12a0",
            "250000",
            "1234567",
            "12.5",
            "120000.+5",
            "120000.",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_query_asks_for_the_window_and_the_modality() {
        let query = study_query(&current(), &priors());
        let text = |tag| vigie_dicom_io::file::text(&query, tag).unwrap_or_default();
        assert_eq!(text(tags::STUDY_DATE), "20250601-20260601");
        assert_eq!(text(tags::PATIENT_ID), "P-1");
        assert_eq!(text(tags::MODALITIES_IN_STUDY), "MR");
        assert_eq!(text(tags::QUERY_RETRIEVE_LEVEL), "STUDY");
    }
}
