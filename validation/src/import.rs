//! Build a labelled dataset of synthetic DICOM MR studies from pictures.
//!
//! Each picture becomes one study with one MR image (see
//! [`vigie_dicom_io::write::MrImage`]). UIDs are name-based UUIDs derived
//! from the picture's SHA-256, so importing the same pictures again yields
//! byte-identical files and the same dataset hash. Patient attributes are
//! obviously synthetic (`DEMO^…`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use uuid::Uuid;
use vigie_dicom_io::write::{MrImage, write_part10};

use crate::dataset::{Dataset, StudyEntry, content_hash};
use crate::error::{Error, Result};

/// How to import.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImportOptions {
    /// Pattern on the file name whose first capture group is the label code.
    pub label_pattern: Regex,
    /// Label code → label; empty means the code is the label.
    pub labels: BTreeMap<String, String>,
    /// Dataset name.
    pub name: String,
}

impl ImportOptions {
    /// Options with the given pattern, label map and name.
    pub fn new(label_pattern: Regex, labels: BTreeMap<String, String>, name: String) -> Self {
        Self {
            label_pattern,
            labels,
            name,
        }
    }
}

fn derived_uid(namespace: &Uuid, name: &str) -> String {
    format!(
        "2.25.{}",
        Uuid::new_v5(namespace, name.as_bytes()).as_u128()
    )
}

/// Grayscale as PIL's `convert("L")` computes it (ITU-R 601-2 luma, fixed
/// point), so that the DICOM pixels are what a PIL pipeline would see.
fn luma(rgb: &image::RgbImage) -> Vec<u8> {
    rgb.pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(u32::from);
            ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
        })
        .collect()
}

/// Import every `.jpg`, `.jpeg` or `.png` in `source` whose name matches the
/// label pattern into `out`, and write `out/dataset.toml`.
pub fn import_images(source: &Path, out: &Path, options: &ImportOptions) -> Result<Dataset> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut pictures: Vec<PathBuf> = std::fs::read_dir(source)
        .map_err(io(source))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    pictures.sort();
    let namespace = Uuid::new_v5(&Uuid::NAMESPACE_OID, b"vigie.validation.import-images");
    let mut studies = Vec::new();
    let mut hashes = Vec::new();
    for (index, picture) in pictures.iter().enumerate() {
        let name = picture
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = picture
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fail = |reason: String| Error::Import {
            path: picture.clone(),
            reason,
        };
        let code = options
            .label_pattern
            .captures(&name)
            .and_then(|c| c.get(1))
            .map(|m| m.as_str().to_string())
            .ok_or_else(|| {
                fail(format!(
                    "name does not match the label pattern {}",
                    options.label_pattern
                ))
            })?;
        let label = if options.labels.is_empty() {
            code
        } else {
            options
                .labels
                .get(&code)
                .cloned()
                .ok_or_else(|| fail(format!("label code {code:?} has no --label mapping")))?
        };
        let source_sha = vigie_inference::package::sha256_file(picture).map_err(io(picture))?;
        let rgb = image::open(picture)
            .map_err(|e| fail(e.to_string()))?
            .to_rgb8();
        let (w, h) = rgb.dimensions();
        let (rows, columns) = (
            u16::try_from(h).map_err(|_| fail("too tall".into()))?,
            u16::try_from(w).map_err(|_| fail("too wide".into()))?,
        );
        let pixels = luma(&rgb);
        let uid = |role: &str| derived_uid(&namespace, &format!("{source_sha}:{role}"));
        let uids = vigie_dicom_io::uid::UidGenerator::default();
        let mut mr = MrImage::new(rows, columns, &pixels, &uids);
        mr.study_instance_uid = uid("study");
        mr.series_instance_uid = uid("series");
        mr.sop_instance_uid = uid("instance");
        mr.frame_of_reference_uid = uid("frame-of-reference");
        mr.patient_name = format!("DEMO^{}", stem.to_ascii_uppercase());
        mr.patient_id = format!("DEMO-{:04}", index + 1);
        mr.study_id = format!("DEMO{:04}", index + 1);
        mr.study_description = format!("Synthetic brain MR from {name}");
        mr.series_description = "Synthetic MR (converted picture)".into();
        mr.derivation_description = format!(
            "Converted from picture {name} (SHA-256 {source_sha}) by Vigie; lossy JPEG source"
        );
        let file = PathBuf::from(format!("{stem}.dcm"));
        write_part10(mr.build()?, &out.join(&file))?;
        let sha = vigie_inference::package::sha256_file(&out.join(&file))
            .map_err(io(&out.join(&file)))?;
        hashes.push((file.clone(), sha.clone()));
        studies.push(StudyEntry {
            study_instance_uid: mr.study_instance_uid.clone(),
            label,
            files: vec![file],
            sha256: vec![sha],
            source: Some(name),
            attributes: Default::default(),
            references: Vec::new(),
            series: Vec::new(),
        });
    }
    if studies.is_empty() {
        return Err(Error::Import {
            path: source.to_path_buf(),
            reason: "no matching .jpg/.jpeg/.png pictures".into(),
        });
    }
    let dataset = Dataset {
        name: options.name.clone(),
        created_by: concat!(
            "vigie ",
            env!("CARGO_PKG_VERSION"),
            " validate import-images"
        )
        .into(),
        content_sha256: content_hash(&hashes),
        studies,
    };
    dataset.write(out)?;
    Ok(dataset)
}
