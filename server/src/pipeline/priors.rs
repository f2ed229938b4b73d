//! Prior studies for models that compare with them (a package's
//! `[priors]`): found by C-FIND on the PACS of `[priors] from` (Study Root,
//! STUDY level, by Patient ID, within the package's window of days),
//! retrieved by C-GET into `priors/<job>/` (never ingested, indexed or
//! routed), checked again on every instance (the same patient, the study
//! asked, the modality or body part the package asks for, in the model's
//! scope), and the most recent usable image given to the model as its
//! prior input, preprocessed as the current image.
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

/// The prior given to the model, as the job's records name it.
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
    /// SHA-256 of the file as retrieved.
    pub file_sha256: String,
    /// SHA-256 of its decoded pixels, as for every analysed instance
    /// (`f32` little endian after the package's Modality LUT and VOI).
    pub pixels_sha256: String,
}

/// What the search for a prior came to, for the records.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PriorSearch {
    /// Matches of the query that qualify (same patient, in the window,
    /// not the current study), most recent first.
    pub candidates: usize,
    /// Prior studies retrieved, in order, with the instances kept of each.
    pub retrieved: Vec<(String, usize)>,
    /// The prior used, if any.
    pub used: Option<PriorUsed>,
    /// Why none was used.
    pub missing: Option<String>,
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
    time: String,
}

impl Pipeline {
    /// Find the prior of `job` (whose model takes one) and set it as the
    /// model's prior input. `Ok` when the model may run: with the prior, or
    /// without one when the package says `on_missing = "run"`; `Err` with
    /// the reason when the job must fail.
    pub(super) fn set_prior(
        &self,
        job: &Job,
        model: &mut Model,
        instances: &[InstanceRecord],
    ) -> Result<PriorSearch, String> {
        let Some(priors) = model.package().manifest().priors.clone() else {
            return Ok(PriorSearch::default());
        };
        let dir = self.layout.priors(job.id);
        let mut search = PriorSearch::default();
        let found = self.find_prior(&priors, model, instances, &dir, &mut search);
        // The retrieved files are not kept: only the tensor is.
        let _ = std::fs::remove_dir_all(&dir);
        match found {
            Ok((used, tensor)) => {
                model
                    .set_prior(PriorInput::Tensor(tensor))
                    .map_err(|e| e.to_string())?;
                search.used = Some(used);
            }
            Err(reason) => {
                search.missing = Some(reason.clone());
                match priors.on_missing {
                    vigie_inference::manifest::OnMissingPrior::Fail => {
                        model.set_prior(PriorInput::Unset).ok();
                        self.emit(super::events::Event::PriorSearched {
                            job,
                            search: &search,
                        });
                        return Err(format!("no prior study: {reason}"));
                    }
                    vigie_inference::manifest::OnMissingPrior::Run => {
                        model
                            .set_prior(PriorInput::Missing)
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
        }
        self.emit(super::events::Event::PriorSearched {
            job,
            search: &search,
        });
        Ok(search)
    }

    fn find_prior(
        &self,
        priors: &Priors,
        model: &Model,
        instances: &[InstanceRecord],
        dir: &Path,
        search: &mut PriorSearch,
    ) -> Result<(PriorUsed, Vec<f32>), String> {
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
            max_instance_bytes: usize::try_from(self.config.limits.max_decoded_mib << 20)
                .unwrap_or(usize::MAX),
            max_total_bytes: self.config.priors.max_mib << 20,
        };
        let mut reasons = Vec::new();
        for (n, candidate) in candidates.iter().take(priors.max_studies).enumerate() {
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
                        limits,
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
            limits.max_instances = limits.max_instances.saturating_sub(got.files.len());
            limits.max_total_bytes = limits
                .max_total_bytes
                .saturating_sub(got.files.iter().map(|f| f.bytes).sum());
            let files: Vec<PathBuf> = got.files.iter().map(|f| f.path.clone()).collect();
            match self.usable_image(&current, candidate, priors, model, &files) {
                Ok(found) => return Ok(found),
                Err(reason) => reasons.push(format!("study {}: {reason}", n + 1)),
            }
            if limits.max_instances == 0 || limits.max_total_bytes == 0 {
                reasons.push("the retrieval bounds ([priors]) are reached".into());
                break;
            }
        }
        Err(format!(
            "{} candidate studies, none usable: {}",
            candidates.len(),
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
            // Scanned with the process's limits before it is parsed: what
            // the PACS sent is outside input.
            let Ok(file) = DicomFile::open(path) else {
                refused += 1;
                continue;
            };
            let header = file.header();
            let same = |a: Option<&str>, b: Option<&str>| match (a, b) {
                (Some(a), Some(b)) => a.trim().eq_ignore_ascii_case(b.trim()),
                _ => false,
            };
            let ok = header.study_instance_uid == candidate.study_instance_uid
                && file
                    .string(tags::PATIENT_ID)
                    .is_some_and(|p| p.trim() == current.patient_id)
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
                file,
            ));
        }
        images.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
        let mut preparer = model.preparer().map_err(|e| e.to_string())?;
        let pool = vigie_analysis::hot_loop::TensorPool::default();
        let mut last_error = None;
        for (_, _, path, file) in images {
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
            let time = text(m, tags::STUDY_TIME).unwrap_or_default();
            if date == current.date
                && let Some(now) = &current.time
                && !time.is_empty()
                && time.as_str() >= now.as_str()
            {
                return None;
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
    out.sort_by(|a, b| (b.date, &b.time).cmp(&(a.date, &a.time)));
    out.dedup_by(|a, b| a.study_instance_uid == b.study_instance_uid);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn priors() -> Priors {
        Priors {
            input: "prior".into(),
            same: vec![PriorMatch::Modality],
            within_days: 365,
            max_studies: 2,
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
    fn the_query_asks_for_the_window_and_the_modality() {
        let query = study_query(&current(), &priors());
        let text = |tag| vigie_dicom_io::file::text(&query, tag).unwrap_or_default();
        assert_eq!(text(tags::STUDY_DATE), "20250601-20260601");
        assert_eq!(text(tags::PATIENT_ID), "P-1");
        assert_eq!(text(tags::MODALITIES_IN_STUDY), "MR");
        assert_eq!(text(tags::QUERY_RETRIEVE_LEVEL), "STUDY");
    }
}
