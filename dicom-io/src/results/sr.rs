//! Comprehensive SR, TID 1500 Measurement Report, for classification
//! results. The tree (see `docs/results.md`):
//!
//! ```text
//! CONTAINER (126000, DCM, "Imaging Measurement Report")      TID 1500
//!   HAS CONCEPT MOD  Language of Content = English (United States)
//!   HAS OBS CONTEXT  Observer Type = Device, Device Observer UID/Name/
//!                    Manufacturer/Model Name                 TID 1002/1004
//!   HAS CONCEPT MOD  Procedure reported
//!   CONTAINS         Image Library > Image Library Group > IMAGE (source)
//!   CONTAINS         Imaging Measurements
//!     CONTAINS       Measurement Group (one per class)        TID 1501
//!       Tracking Identifier, Tracking Unique Identifier       TID 4108
//!       CONTAINS CODE Finding = the class
//!       HAS CONCEPT MOD Algorithm Name/Version/Parameters     TID 4019
//!       CONTAINS NUM Probability [1 "no units", UCUM]         TID 300
//!       CONTAINS CODE AI decision (99VIGIE) = Yes | No        qualitative
//!                     (SCT 373066001 / 373067005): whether   evaluation
//!                     this class is the algorithm's decision
//!       CONTAINS NUM Decision threshold (99VIGIE), in the decided
//!                    class's group, for threshold rules
//!       CONTAINS IMAGE Source of Measurement
//!   CONTAINS         TEXT Review of this result (99VIGIE) = the review
//!                    page's URL, when configured
//! ```
//!
//! The decision is a qualitative evaluation inside the class's own group
//! (TID 1501 row "CONTAINS CODE $QualitativeEvaluations"), not a group of
//! its own: a reader (highdicom, dcmqi's tid1500reader) then sees one
//! group per class, each with one finding, and which one was decided.
//! Until 0.1.x a separate "decision" group repeated the decided class's
//! finding, which readers took for a second measurement of it. 99VIGIE is
//! declared in the Coding Scheme Identification Sequence.

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::{
    Algorithm, Code, DeviceObserver, NewInstance, SourceImage, copy_patient_and_study, ds,
    evidence, put_new_instance, put_sequence,
};
use crate::error::{Error, Result};
use crate::file::DicomFile;
use crate::write::put_str;

/// Comprehensive SR Storage.
pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";

/// The classification to report.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassificationReport {
    /// Each class's code and probability, in the model's order.
    pub classes: Vec<(Code, f64)>,
    /// Index into `classes` of the decided class.
    pub decision: usize,
    /// Threshold of a threshold rule (absent for argmax).
    pub threshold: Option<f64>,
    /// The model.
    pub algorithm: Algorithm,
    /// The appliance.
    pub observer: DeviceObserver,
    /// Procedure reported (e.g. (363679005, SCT, "Imaging procedure")).
    pub procedure: Code,
    /// Source instances (all of one study).
    pub sources: Vec<SourceImage>,
    /// Identity of the new SR.
    pub instance: NewInstance,
    /// Where a radiologist reviews this result (Vigie's review page), when
    /// the appliance is configured with one.
    pub review_link: Option<String>,
}

/// Concept codes used by the report.
pub mod concepts {
    use super::Code;

    fn dcm(value: &str, meaning: &str) -> Code {
        Code::new(value, "DCM", meaning)
    }
    /// (126000, DCM, "Imaging Measurement Report").
    pub fn report() -> Code {
        dcm("126000", "Imaging Measurement Report")
    }
    /// (121071, DCM, "Finding").
    pub fn finding() -> Code {
        dcm("121071", "Finding")
    }
    /// (122157, DCM, "Probability").
    pub fn probability() -> Code {
        dcm("122157", "Probability")
    }
    /// (1, UCUM, "no units").
    pub fn no_units() -> Code {
        Code::new("1", "UCUM", "no units")
    }
    /// Private: (DECISIONTHRESH, 99VIGIE, "Decision threshold").
    pub fn decision_threshold() -> Code {
        Code::new(
            "DECISIONTHRESH",
            crate::results::PRIVATE_SCHEME,
            "Decision threshold",
        )
    }
    /// Private: (AIDECISION, 99VIGIE, "AI decision"): the concept of the
    /// qualitative evaluation that says whether a class is the decision.
    pub fn decision() -> Code {
        Code::new("AIDECISION", crate::results::PRIVATE_SCHEME, "AI decision")
    }
    /// (373066001, SCT, "Yes").
    pub fn yes() -> Code {
        Code::new("373066001", "SCT", "Yes")
    }
    /// (373067005, SCT, "No").
    pub fn no() -> Code {
        Code::new("373067005", "SCT", "No")
    }
    /// Private: (REVIEWLINK, 99VIGIE, "Review of this result"): the URL
    /// of the review page for the result.
    pub fn review_link() -> Code {
        Code::new(
            "REVIEWLINK",
            crate::results::PRIVATE_SCHEME,
            "Review of this result",
        )
    }
    /// (363679005, SCT, "Imaging procedure").
    pub fn imaging_procedure() -> Code {
        Code::new("363679005", "SCT", "Imaging procedure")
    }
}

/// One content item.
#[derive(Debug)]
enum Value<'a> {
    Container,
    Code(&'a Code),
    Text(&'a str),
    UidRef(&'a str),
    Num(f64, Code),
    Image(&'a SourceImage),
}

fn item(
    relationship: &str,
    concept: Option<&Code>,
    value: Value<'_>,
    children: Vec<InMemDicomObject>,
) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    put_str(&mut obj, tags::RELATIONSHIP_TYPE, VR::CS, relationship);
    let value_type = match &value {
        Value::Container => "CONTAINER",
        Value::Code(_) => "CODE",
        Value::Text(_) => "TEXT",
        Value::UidRef(_) => "UIDREF",
        Value::Num(..) => "NUM",
        Value::Image(_) => "IMAGE",
    };
    put_str(&mut obj, tags::VALUE_TYPE, VR::CS, value_type);
    if let Some(concept) = concept {
        put_sequence(
            &mut obj,
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![concept.item()],
        );
    }
    match value {
        Value::Container => put_str(&mut obj, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        Value::Code(code) => put_sequence(&mut obj, tags::CONCEPT_CODE_SEQUENCE, vec![code.item()]),
        Value::Text(text) => put_str(&mut obj, tags::TEXT_VALUE, VR::UT, text),
        Value::UidRef(uid) => put_str(&mut obj, tags::UID, VR::UI, uid),
        Value::Num(v, unit) => {
            let mut measured = InMemDicomObject::new_empty();
            put_str(&mut measured, tags::NUMERIC_VALUE, VR::DS, ds(v));
            measured.put(dicom_core::DataElement::new(
                tags::FLOATING_POINT_VALUE,
                VR::FD,
                dicom_core::PrimitiveValue::from(v),
            ));
            put_sequence(
                &mut measured,
                tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
                vec![unit.item()],
            );
            put_sequence(&mut obj, tags::MEASURED_VALUE_SEQUENCE, vec![measured]);
        }
        Value::Image(source) => put_sequence(
            &mut obj,
            tags::REFERENCED_SOP_SEQUENCE,
            vec![source.reference()],
        ),
    }
    if !children.is_empty() {
        put_sequence(&mut obj, tags::CONTENT_SEQUENCE, children);
    }
    obj
}

fn algorithm_items(algorithm: &Algorithm) -> Vec<InMemDicomObject> {
    let mut items = vec![
        item(
            "HAS CONCEPT MOD",
            Some(&Code::new("111001", "DCM", "Algorithm Name")),
            Value::Text(&algorithm.name),
            vec![],
        ),
        item(
            "HAS CONCEPT MOD",
            Some(&Code::new("111003", "DCM", "Algorithm Version")),
            Value::Text(&algorithm.version),
            vec![],
        ),
    ];
    for p in &algorithm.parameters {
        items.push(item(
            "HAS CONCEPT MOD",
            Some(&Code::new("111002", "DCM", "Algorithm Parameters")),
            Value::Text(p),
            vec![],
        ));
    }
    items
}

fn tracking(identifier: &str, uid: &str) -> Vec<InMemDicomObject> {
    vec![
        item(
            "HAS OBS CONTEXT",
            Some(&Code::new("112039", "DCM", "Tracking Identifier")),
            Value::Text(identifier),
            vec![],
        ),
        item(
            "HAS OBS CONTEXT",
            Some(&Code::new("112040", "DCM", "Tracking Unique Identifier")),
            Value::UidRef(uid),
            vec![],
        ),
    ]
}

/// Build the SR data set. `source` is one of the source instances; its
/// patient and study attributes are copied. `tracking_uids` supplies one
/// UID per measurement group (one per class).
pub fn build_classification_sr(
    source: &DicomFile,
    report: &ClassificationReport,
    mut tracking_uid: impl FnMut() -> String,
) -> Result<InMemDicomObject> {
    let fail = |reason: String| Error::Build {
        sop_instance_uid: report.instance.sop_instance_uid.clone(),
        reason,
    };
    if report.classes.is_empty() || report.decision >= report.classes.len() {
        return Err(fail(
            "no classes, or the decision is not one of them".into(),
        ));
    }
    if report.sources.is_empty() {
        return Err(fail("no source instance".into()));
    }
    for (code, p) in &report.classes {
        code.check()?;
        if !(0.0..=1.0).contains(p) {
            return Err(fail(format!(
                "probability {p} of {} is outside [0, 1]",
                code.meaning
            )));
        }
    }
    report.procedure.check()?;
    let study = source.header().study_instance_uid.clone();
    let mut obj = InMemDicomObject::new_empty();
    copy_patient_and_study(&mut obj, source);
    put_new_instance(&mut obj, COMPREHENSIVE_SR, "SR", &report.instance)?;
    put_sequence(
        &mut obj,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    );
    super::put_private_coding_scheme(&mut obj);
    put_str(&mut obj, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put_str(&mut obj, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_str(&mut obj, tags::PRELIMINARY_FLAG, VR::CS, "PRELIMINARY");
    put_sequence(&mut obj, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]);
    put_sequence(
        &mut obj,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        evidence(&study, &report.sources),
    );

    // Content.
    let observer = &report.observer;
    let mut content = vec![
        item(
            "HAS CONCEPT MOD",
            Some(&Code::new(
                "121049",
                "DCM",
                "Language of Content Item and Descendants",
            )),
            Value::Code(&Code::new("en-US", "RFC5646", "English (United States)")),
            vec![],
        ),
        item(
            "HAS OBS CONTEXT",
            Some(&Code::new("121005", "DCM", "Observer Type")),
            Value::Code(&Code::new("121007", "DCM", "Device")),
            vec![],
        ),
        item(
            "HAS OBS CONTEXT",
            Some(&Code::new("121012", "DCM", "Device Observer UID")),
            Value::UidRef(&observer.uid),
            vec![],
        ),
        item(
            "HAS OBS CONTEXT",
            Some(&Code::new("121013", "DCM", "Device Observer Name")),
            Value::Text(&observer.name),
            vec![],
        ),
        item(
            "HAS OBS CONTEXT",
            Some(&Code::new("121014", "DCM", "Device Observer Manufacturer")),
            Value::Text(&observer.manufacturer),
            vec![],
        ),
        item(
            "HAS OBS CONTEXT",
            Some(&Code::new("121015", "DCM", "Device Observer Model Name")),
            Value::Text(&observer.model_name),
            vec![],
        ),
        item(
            "HAS CONCEPT MOD",
            Some(&Code::new("121058", "DCM", "Procedure reported")),
            Value::Code(&report.procedure),
            vec![],
        ),
    ];
    let source_concept = Code::new("260753009", "SCT", "Source");
    let library_group = item(
        "CONTAINS",
        Some(&Code::new("126200", "DCM", "Image Library Group")),
        Value::Container,
        report
            .sources
            .iter()
            .map(|s| item("CONTAINS", Some(&source_concept), Value::Image(s), vec![]))
            .collect(),
    );
    content.push(item(
        "CONTAINS",
        Some(&Code::new("111028", "DCM", "Image Library")),
        Value::Container,
        vec![library_group],
    ));

    let source_of_measurement = Code::new("121112", "DCM", "Source of Measurement");
    let group = |label: &str, finding: &Code, probability: f64, decided: bool, uid: String| {
        let mut children = tracking(&format!("{}: {label}", report.algorithm.name), &uid);
        children.push(item(
            "CONTAINS",
            Some(&concepts::finding()),
            Value::Code(finding),
            vec![],
        ));
        children.extend(algorithm_items(&report.algorithm));
        children.push(item(
            "CONTAINS",
            Some(&concepts::probability()),
            Value::Num(probability, concepts::no_units()),
            algorithm_items(&report.algorithm),
        ));
        children.push(item(
            "CONTAINS",
            Some(&concepts::decision()),
            Value::Code(&if decided {
                concepts::yes()
            } else {
                concepts::no()
            }),
            vec![],
        ));
        if let Some(t) = report.threshold.filter(|_| decided) {
            children.push(item(
                "CONTAINS",
                Some(&concepts::decision_threshold()),
                Value::Num(t, concepts::no_units()),
                vec![],
            ));
        }
        for s in &report.sources {
            children.push(item(
                "CONTAINS",
                Some(&source_of_measurement),
                Value::Image(s),
                vec![],
            ));
        }
        item(
            "CONTAINS",
            Some(&Code::new("125007", "DCM", "Measurement Group")),
            Value::Container,
            children,
        )
    };
    let groups: Vec<InMemDicomObject> = report
        .classes
        .iter()
        .enumerate()
        .map(|(i, (code, p))| {
            group(
                &format!("probability of {}", code.meaning),
                code,
                *p,
                i == report.decision,
                tracking_uid(),
            )
        })
        .collect();
    content.push(item(
        "CONTAINS",
        Some(&Code::new("126010", "DCM", "Imaging Measurements")),
        Value::Container,
        groups,
    ));

    // Root container (SR Document Content Module).
    put_str(&mut obj, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_sequence(
        &mut obj,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![concepts::report().item()],
    );
    put_str(&mut obj, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    let mut template = InMemDicomObject::new_empty();
    put_str(&mut template, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put_str(&mut template, tags::TEMPLATE_IDENTIFIER, VR::CS, "1500");
    put_sequence(&mut obj, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template]);
    if let Some(link) = &report.review_link {
        content.push(item(
            "CONTAINS",
            Some(&concepts::review_link()),
            Value::Text(link),
            vec![],
        ));
    }
    put_sequence(&mut obj, tags::CONTENT_SEQUENCE, content);
    Ok(obj)
}
