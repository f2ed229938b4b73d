//! From a model result to the DICOM result objects of `vigie-dicom-io`:
//! the SR for classifications, the SEG for segmentations, and optionally
//! the summary image. The appliance and the validation suite share it.

use dicom_object::InMemDicomObject;
use uuid::Uuid;
use vigie_dicom_io::results::seg::{Segment, SegmentationInput, build_segmentation};
use vigie_dicom_io::results::sr::{ClassificationReport, build_classification_sr, concepts};
use vigie_dicom_io::results::summary::build_summary_image;
use vigie_dicom_io::results::{
    Algorithm, Code, DeviceObserver, NewInstance, PRIVATE_SCHEME, SourceImage,
};
use vigie_dicom_io::uid::UidGenerator;
use vigie_dicom_io::{DicomFile, PixelOptions, VoiSelection};
use vigie_inference::ModelResult;
use vigie_inference::manifest::{ConceptCode, Manifest, OutputKind};
use vigie_inference::postprocess::{Finding, Segmentation};

use crate::error::Result;

/// Series numbers of the objects Vigie creates.
pub const SR_SERIES_NUMBER: i32 = 9001;
/// Series number of segmentations.
pub const SEG_SERIES_NUMBER: i32 = 9002;
/// Series number of summary images.
pub const SUMMARY_SERIES_NUMBER: i32 = 9003;

/// The sentence every human-readable result carries.
pub const REVIEW_NOTICE: &str = "NOT FOR DIAGNOSTIC USE WITHOUT RADIOLOGIST REVIEW";

/// Which object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultKind {
    /// TID 1500 Comprehensive SR.
    Sr,
    /// Binary Segmentation.
    Seg,
    /// Secondary Capture summary image.
    Summary,
}

/// A built result object.
#[derive(Debug)]
pub struct ResultObject {
    /// Which object.
    pub kind: ResultKind,
    /// Study it belongs to.
    pub study_instance_uid: String,
    /// Its series.
    pub series_instance_uid: String,
    /// Its SOP Instance UID.
    pub sop_instance_uid: String,
    /// The data set.
    pub dataset: InMemDicomObject,
}

/// Builds result objects; one series per study, object kind and model
/// version, the same for every job and restart ([`UidGenerator::derive`]).
#[derive(Debug)]
pub struct ResultBuilder {
    uids: UidGenerator,
    observer: DeviceObserver,
    summary: bool,
    review_link: Option<String>,
}

fn code(c: &ConceptCode) -> Code {
    Code::new(&c.value, &c.scheme, &c.meaning)
}

/// The private code of a label without a manifest code.
fn private_code(label: &str) -> Code {
    let value: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .take(16)
        .collect();
    Code::new(
        &value,
        PRIVATE_SCHEME,
        &label.chars().take(64).collect::<String>(),
    )
}

fn truncate(text: String, max: usize) -> String {
    text.chars().take(max).collect()
}

impl ResultBuilder {
    /// A builder for appliance `appliance_id`, with UIDs under `uid_root`.
    /// The Device Observer UID is derived from the appliance id, so it is
    /// stable across restarts.
    pub fn new(appliance_id: &str, uid_root: &str, summary: bool) -> Result<Self> {
        let uids = UidGenerator::new(uid_root)?;
        let device = Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("vigie.appliance.{appliance_id}").as_bytes(),
        );
        Ok(Self {
            uids,
            observer: DeviceObserver {
                uid: format!("2.25.{}", device.as_u128()),
                name: truncate(appliance_id.to_string(), 64),
                manufacturer: "Vigie".into(),
                model_name: format!("Vigie {}", env!("CARGO_PKG_VERSION")),
            },
            summary,
            review_link: None,
        })
    }

    /// The review page's URL for the results built from now on (the job's
    /// page), written into the SR and the summary image; `None`: none.
    pub fn set_review_link(&mut self, link: Option<String>) {
        self.review_link = link;
    }

    fn new_instance(&mut self, study: &str, kind: ResultKind, manifest: &Manifest) -> NewInstance {
        let model = format!("{} {}", manifest.model.id, manifest.model.version);
        let (series_number, what) = match kind {
            ResultKind::Sr => (SR_SERIES_NUMBER, "SR"),
            ResultKind::Seg => (SEG_SERIES_NUMBER, "SEG"),
            ResultKind::Summary => (SUMMARY_SERIES_NUMBER, "summary"),
        };
        // One series per study, object kind and model version, whichever
        // job builds it: a re-analysis adds its objects to the series the
        // first analysis made, instead of a second series with the same
        // number and description. Derived from this appliance's identity,
        // so two appliances never share a series.
        let series_instance_uid = self.uids.derive(&format!(
            "vigie/result-series/{}/{study}/{what}/{model}",
            self.observer.uid
        ));
        NewInstance {
            series_instance_uid,
            sop_instance_uid: self.uids.generate(),
            series_number,
            series_description: truncate(format!("AI {what} (Vigie): {model}"), 64),
            manufacturer: "Vigie".into(),
            software_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// The result objects for one frame's result of `file`.
    pub fn build(
        &mut self,
        file: &DicomFile,
        frame: usize,
        frames: usize,
        manifest: &Manifest,
        result: &ModelResult,
    ) -> Result<Vec<ResultObject>> {
        let study = file.header().study_instance_uid.clone();
        let mut source = SourceImage::of(file);
        if frames > 1 {
            source.frames = vec![u32::try_from(frame + 1).unwrap_or(u32::MAX)];
        }
        let algorithm = Algorithm {
            name: manifest.model.id.clone(),
            version: manifest.model.version.clone(),
            parameters: vec![
                format!("model-sha256={}", result.model_sha256),
                format!(
                    "runtime={} {} on {}",
                    result.execution.backend, result.execution.provider, result.execution.device
                ),
            ],
        };
        let mut objects = Vec::new();
        let mut push = |kind, new: &NewInstance, dataset| {
            objects.push(ResultObject {
                kind,
                study_instance_uid: study.clone(),
                series_instance_uid: new.series_instance_uid.clone(),
                sop_instance_uid: new.sop_instance_uid.clone(),
                dataset,
            })
        };
        let summary_lines: Vec<String> = match (&result.finding, &manifest.output.kind) {
            (Finding::Classification(c), OutputKind::Classification { codes, .. }) => {
                let code_of = |label: &str| {
                    codes
                        .get(label)
                        .map(code)
                        .unwrap_or_else(|| private_code(label))
                };
                let decision = c.labels.iter().position(|l| *l == c.decision).unwrap_or(0);
                let mut algorithm = algorithm.clone();
                algorithm.parameters.push(format!("decision={}", c.rule));
                let new = self.new_instance(&study, ResultKind::Sr, manifest);
                let report = ClassificationReport {
                    classes: c
                        .labels
                        .iter()
                        .zip(&c.probabilities)
                        .map(|(l, p)| (code_of(l), f64::from(*p)))
                        .collect(),
                    decision,
                    threshold: c.threshold.map(f64::from),
                    algorithm,
                    observer: self.observer.clone(),
                    procedure: concepts::imaging_procedure(),
                    sources: vec![source.clone()],
                    instance: new.clone(),
                    review_link: self.review_link.clone(),
                };
                let uids = &self.uids;
                push(
                    ResultKind::Sr,
                    &new,
                    build_classification_sr(file, &report, || uids.generate())?,
                );
                let all: Vec<String> = c
                    .labels
                    .iter()
                    .zip(&c.probabilities)
                    .map(|(l, p)| format!("{l} {p:.3}"))
                    .collect();
                vec![
                    format!(
                        "AI RESULT (Vigie): {} (p = {:.3}, {})",
                        c.decision, c.probabilities[decision], c.rule
                    ),
                    format!("Classes: {}", all.join(", ")),
                ]
            }
            (
                Finding::Segmentation(s),
                OutputKind::Segmentation {
                    categories, types, ..
                },
            ) => {
                let label_map = label_map_at_source_size(file, s)?;
                let segments = s
                    .labels
                    .iter()
                    .filter(|(n, _)| **n != 0)
                    .filter_map(|(n, label)| {
                        Some(Segment {
                            number: u16::try_from(*n).ok()?,
                            label: label.clone(),
                            category: categories.get(label).map(code).unwrap_or_else(|| {
                                Code::new("AIFINDING", PRIVATE_SCHEME, "AI segmentation finding")
                            }),
                            property_type: types
                                .get(label)
                                .map(code)
                                .unwrap_or_else(|| private_code(label)),
                        })
                    })
                    .collect();
                let new = self.new_instance(&study, ResultKind::Seg, manifest);
                let input = SegmentationInput {
                    label_map: &label_map,
                    segments,
                    algorithm,
                    instance: new.clone(),
                };
                push(ResultKind::Seg, &new, build_segmentation(file, &input)?);
                let pixels = label_map.iter().filter(|v| **v != 0).count();
                vec![format!(
                    "AI RESULT (Vigie): segmentation, {pixels} pixels labelled"
                )]
            }
            _ => vec!["AI RESULT (Vigie): output kind does not match the manifest".into()],
        };
        if self.summary {
            let mut lines = summary_lines;
            lines.push(format!(
                "Model: {} {} (sha256 {})",
                manifest.model.id,
                manifest.model.version,
                &result.model_sha256[..12.min(result.model_sha256.len())]
            ));
            lines.push(manifest.model.regulatory_status.clone());
            lines.push(REVIEW_NOTICE.into());
            if let Some(link) = &self.review_link {
                lines.push(format!("Review: {link}"));
            }
            let display = file.decode(&PixelOptions::with_voi(VoiSelection::FromFile))?;
            let new = self.new_instance(&study, ResultKind::Summary, manifest);
            let sc = build_summary_image(file, &display, &lines, &new)?;
            objects.push(ResultObject {
                kind: ResultKind::Summary,
                study_instance_uid: study.clone(),
                series_instance_uid: new.series_instance_uid.clone(),
                sop_instance_uid: new.sop_instance_uid.clone(),
                dataset: sc,
            });
        }
        Ok(objects)
    }
}

/// The label map resampled (nearest neighbour) to the source image's size.
fn label_map_at_source_size(file: &DicomFile, s: &Segmentation) -> Result<Vec<u8>> {
    let rows = file
        .int(dicom_dictionary_std::tags::ROWS, "Rows")?
        .unwrap_or(0) as usize;
    let columns = file
        .int(dicom_dictionary_std::tags::COLUMNS, "Columns")?
        .unwrap_or(0) as usize;
    if (rows, columns) == (s.rows, s.columns) {
        return Ok(s.mask.clone());
    }
    let mut out = vec![0u8; rows * columns];
    for y in 0..rows {
        let sy = ((y as f64 + 0.5) * s.rows as f64 / rows as f64) as usize;
        for x in 0..columns {
            let sx = ((x as f64 + 0.5) * s.columns as f64 / columns as f64) as usize;
            out[y * columns + x] = s.mask[sy.min(s.rows - 1) * s.columns + sx.min(s.columns - 1)];
        }
    }
    Ok(out)
}
