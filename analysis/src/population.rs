//! What post-market surveillance groups and watches inferences by,
//! recorded with each one: the header attributes that define subgroups
//! ([`Subgroups`]: scanner manufacturer and model, body part, sex, age in
//! ten-year bands; no identifier, no exact age or date) and summary
//! statistics of the pixel values the model was given
//! ([`IntensityStats`]), the inputs of input-drift monitoring
//! (`docs/post-market.md`).

use dicom_dictionary_std::tags;
use serde::{Deserialize, Serialize};

use vigie_dicom_io::DicomFile;

/// Samples the intensity statistics read at most (evenly strided over the
/// whole array): enough for stable quantiles at a cost the hot loop does
/// not notice.
pub const INTENSITY_SAMPLES: usize = 4_096;

/// Subgroup attributes of one analysed instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subgroups {
    /// Manufacturer (0008,0070).
    pub manufacturer: String,
    /// Manufacturer's Model Name (0008,1090).
    pub model_name: String,
    /// Body Part Examined (0018,0015).
    pub body_part: String,
    /// Patient's Sex (0010,0040): M, F, O or unknown.
    pub sex: String,
    /// Age band: `0-9`, `10-19`, … `90+`, from Patient's Age (0010,1010),
    /// else from Patient's Birth Date and the Study Date; `unknown`.
    pub age_band: String,
}

const UNKNOWN: &str = "unknown";

fn text(file: &DicomFile, tag: dicom_object::Tag) -> String {
    file.string(tag)
        .map(|s| s.trim().chars().take(64).collect::<String>())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| UNKNOWN.into())
}

/// Whole years from a DICOM AS value (`045Y`, `240M`, `052W`, `400D`).
fn age_years(age: &str) -> Option<u32> {
    let age = age.trim();
    if !age.is_ascii() {
        return None;
    }
    let (number, unit) = age.split_at(age.len().checked_sub(1)?);
    let n: u32 = number.parse().ok()?;
    match unit {
        "Y" => Some(n),
        "M" => Some(n / 12),
        "W" => Some(n / 52),
        "D" => Some(n / 365),
        _ => None,
    }
}

/// Years between two DA values (`YYYYMMDD`).
fn years_between(birth: &str, on: &str) -> Option<u32> {
    let parse = |d: &str| {
        let d = d.trim();
        if d.len() != 8 || !d.is_ascii() {
            return None;
        }
        Some((
            d[..4].parse::<i32>().ok()?,
            d[4..6].parse::<u32>().ok()?,
            d[6..].parse::<u32>().ok()?,
        ))
    };
    let (by, bm, bd) = parse(birth)?;
    let (oy, om, od) = parse(on)?;
    let mut years = oy - by;
    if (om, od) < (bm, bd) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

/// The ten-year band of an age.
pub fn age_band(years: u32) -> String {
    if years >= 90 {
        "90+".into()
    } else {
        let low = years / 10 * 10;
        format!("{low}-{}", low + 9)
    }
}

impl Subgroups {
    /// Read from an instance's header.
    pub fn of(file: &DicomFile) -> Self {
        let sex = match file.string(tags::PATIENT_SEX).as_deref().map(str::trim) {
            Some(s @ ("M" | "F" | "O")) => s.to_string(),
            _ => UNKNOWN.into(),
        };
        let years = file
            .string(tags::PATIENT_AGE)
            .as_deref()
            .and_then(age_years)
            .or_else(|| {
                years_between(
                    &file.string(tags::PATIENT_BIRTH_DATE)?,
                    &file.string(tags::STUDY_DATE)?,
                )
            });
        Self {
            manufacturer: text(file, tags::MANUFACTURER),
            model_name: text(file, tags::MANUFACTURER_MODEL_NAME),
            body_part: text(file, tags::BODY_PART_EXAMINED),
            sex,
            age_band: years.map(age_band).unwrap_or_else(|| UNKNOWN.into()),
        }
    }
}

/// Summary statistics of pixel values (over at most
/// [`INTENSITY_SAMPLES`] evenly strided samples).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct IntensityStats {
    /// Samples read.
    pub samples: usize,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub sd: f64,
    /// 5th percentile.
    pub p05: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
}

impl IntensityStats {
    /// The statistics of `values` (non-finite values left out).
    pub fn of(values: &[f32]) -> Self {
        let stride = values.len().div_ceil(INTENSITY_SAMPLES).max(1);
        let mut sample: Vec<f64> = values
            .iter()
            .step_by(stride)
            .filter(|v| v.is_finite())
            .map(|v| f64::from(*v))
            .collect();
        let n = sample.len();
        if n == 0 {
            return Self::default();
        }
        let mean = sample.iter().sum::<f64>() / n as f64;
        let var = sample.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        let rank = |q: f64| ((n - 1) as f64 * q).round() as usize;
        let (k05, k50, k95) = (rank(0.05), rank(0.5), rank(0.95));
        // The median first; then each outer quantile within its half.
        let (low, p50, high) = sample.select_nth_unstable_by(k50, f64::total_cmp);
        let p50 = *p50;
        let p05 = if k05 < k50 {
            *low.select_nth_unstable_by(k05, f64::total_cmp).1
        } else {
            p50
        };
        let p95 = if k95 > k50 {
            *high.select_nth_unstable_by(k95 - k50 - 1, f64::total_cmp).1
        } else {
            p50
        };
        Self {
            samples: n,
            mean,
            sd: var.sqrt(),
            p05,
            p50,
            p95,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_fall_in_ten_year_bands_from_either_attribute() {
        assert_eq!(age_years("045Y").map(age_band).as_deref(), Some("40-49"));
        assert_eq!(age_years("006M").map(age_band).as_deref(), Some("0-9"));
        assert_eq!(age_years("240M"), Some(20));
        assert_eq!(age_years("104W"), Some(2));
        assert_eq!(age_years("x"), None);
        assert_eq!(age_years(""), None);
        assert_eq!(years_between("19600615", "20260614"), Some(65));
        assert_eq!(years_between("19600615", "20260615"), Some(66));
        assert_eq!(age_band(93), "90+");
        assert_eq!(years_between("2026", "20260101"), None);
        // Values from outside: never a panic on a character boundary.
        assert_eq!(age_years("04\u{e9}"), None);
        assert_eq!(years_between("2026\u{e9}01", "20260101"), None);
    }

    #[test]
    fn intensity_statistics_match_the_direct_computation() {
        let values: Vec<f32> = (0..1000).map(|i| i as f32 / 999.0).collect();
        let s = IntensityStats::of(&values);
        assert_eq!(s.samples, 1000);
        assert!((s.mean - 0.5).abs() < 1e-9);
        assert!((s.p50 - 0.5).abs() < 1e-3);
        assert!((s.p05 - 0.05).abs() < 2e-3 && (s.p95 - 0.95).abs() < 2e-3);
        assert!((s.sd - (1.0f64 / 12.0).sqrt()).abs() < 1e-3);
        // A large array is strided, not read whole.
        let big = vec![0.25f32; 1 << 20];
        assert!(IntensityStats::of(&big).samples <= INTENSITY_SAMPLES);
        assert_eq!(IntensityStats::of(&[f32::NAN]).samples, 0);
    }

    /// A synthetic MR with the header attributes the subgroups read.
    fn mr(dir: &std::path::Path) -> std::path::PathBuf {
        use dicom_core::VR;
        use vigie_dicom_io::write::{MrImage, put_str, write_part10};
        let uids = vigie_dicom_io::uid::UidGenerator::default();
        let pixels = vec![7u8; 16];
        let mut obj = MrImage::new(4, 4, &pixels, &uids).build().unwrap();
        put_str(&mut obj, tags::MANUFACTURER, VR::LO, "SIEMENS");
        put_str(&mut obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, "Skyra");
        put_str(&mut obj, tags::PATIENT_SEX, VR::CS, "F");
        put_str(&mut obj, tags::PATIENT_AGE, VR::AS, "052Y");
        put_str(&mut obj, tags::PATIENT_BIRTH_DATE, VR::DA, "19740203");
        let path = dir.join("mr.dcm");
        write_part10(obj, &path).unwrap();
        path
    }

    #[test]
    fn subgroups_are_read_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let s = Subgroups::of(&DicomFile::open(mr(dir.path())).unwrap());
        assert_eq!(
            (
                s.manufacturer.as_str(),
                s.model_name.as_str(),
                s.sex.as_str()
            ),
            ("SIEMENS", "Skyra", "F")
        );
        assert_eq!(s.age_band, "50-59");
    }

    #[test]
    fn fuzz_population_attributes() {
        use vigie_test_support::fuzz;
        let dir = tempfile::tempdir().unwrap();
        let seeds = vec![std::fs::read(mr(dir.path())).unwrap()];
        let path = dir.path().join("fuzzed.dcm");
        let summary = fuzz::run(
            "population",
            &seeds,
            fuzz::iterations(1_000_000),
            fuzz::budget(2),
            |bytes| {
                std::fs::write(&path, bytes).unwrap();
                if let Ok(file) = DicomFile::open(&path) {
                    let _ = Subgroups::of(&file);
                }
            },
        );
        assert!(summary.executions > 3);
    }
}
