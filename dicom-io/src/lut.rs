//! The grayscale transforms of PS3.3 C.11, applied in the standard's order:
//! Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence), then VOI
//! LUT (window with its VOI LUT Function, or VOI LUT Sequence), then the
//! MONOCHROME1 inversion.
//!
//! VOI output is normalised to `[0, 1]` (0 = black); without VOI the values
//! are modality values (e.g. Hounsfield units). Colour images pass through
//! unchanged.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::error::Result;
use crate::file::{DicomFile, element_floats};
use crate::pixels::{Photometric, PixelArray};

/// VOI LUT Function (0028,1056).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WindowFunction {
    /// `LINEAR` (C.11.2.1.2.1), the default.
    #[default]
    Linear,
    /// `LINEAR_EXACT` (C.11.2.1.3.2).
    LinearExact,
    /// `SIGMOID` (C.11.2.1.3.1).
    Sigmoid,
}

impl WindowFunction {
    /// Parse the attribute's defined terms.
    pub fn from_dicom(value: &str) -> Option<Self> {
        match value.trim() {
            "LINEAR" => Some(Self::Linear),
            "LINEAR_EXACT" => Some(Self::LinearExact),
            "SIGMOID" => Some(Self::Sigmoid),
            _ => None,
        }
    }

    /// Map `x` through a window of `center` and `width` to `[0, 1]`.
    pub fn apply(self, x: f64, center: f64, width: f64) -> f64 {
        match self {
            Self::Linear => {
                let w1 = (width - 1.0).max(f64::MIN_POSITIVE);
                if x <= center - 0.5 - w1 / 2.0 {
                    0.0
                } else if x > center - 0.5 + w1 / 2.0 {
                    1.0
                } else {
                    (x - (center - 0.5)) / w1 + 0.5
                }
            }
            Self::LinearExact => {
                if x <= center - width / 2.0 {
                    0.0
                } else if x > center + width / 2.0 {
                    1.0
                } else {
                    (x - center) / width + 0.5
                }
            }
            Self::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - center) / width).exp()),
        }
    }
}

/// Which VOI transform to apply.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub enum VoiSelection {
    /// None: keep modality values.
    #[default]
    None,
    /// The instance's own: the first VOI LUT Sequence item, else the first
    /// window (with its VOI LUT Function), else min-max of each frame.
    FromFile,
    /// A fixed window.
    Window {
        /// Window Center.
        center: f64,
        /// Window Width.
        width: f64,
        /// Function.
        function: WindowFunction,
    },
    /// Min-max normalisation of each frame.
    MinMax,
}

/// What [`DicomFile::decode`] applies after decoding.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PixelOptions {
    /// Apply the Modality LUT (rescale or LUT sequence).
    pub modality_lut: bool,
    /// The VOI transform.
    pub voi: VoiSelection,
    /// Invert MONOCHROME1 images after VOI so that 0 is always black
    /// (only meaningful with a VOI transform).
    pub invert_monochrome1: bool,
}

impl Default for PixelOptions {
    fn default() -> Self {
        Self {
            modality_lut: true,
            voi: VoiSelection::None,
            invert_monochrome1: true,
        }
    }
}

impl PixelOptions {
    /// Options with the given VOI selection and the other defaults.
    pub fn with_voi(voi: VoiSelection) -> Self {
        Self {
            voi,
            ..Self::default()
        }
    }
}

/// A lookup table from a LUT Descriptor and LUT Data.
#[derive(Debug, Clone, PartialEq)]
struct Lut {
    first: i64,
    bits: u32,
    data: Vec<f64>,
}

impl Lut {
    fn lookup(&self, x: f64) -> f64 {
        let index = (x.round() as i64 - self.first).clamp(0, self.data.len() as i64 - 1);
        self.data[index as usize]
    }
}

fn read_lut(
    file: &DicomFile,
    item: &InMemDicomObject,
    attribute: &'static str,
) -> Result<Option<Lut>> {
    let (Some(desc), Some(data)) = (item.get(tags::LUT_DESCRIPTOR), item.get(tags::LUT_DATA))
    else {
        return Ok(None);
    };
    let desc: Vec<i64> = desc
        .to_multi_int::<i64>()
        .map_err(|e| file.invalid(attribute, format!("LUT Descriptor: {e}")))?;
    let [entries, first, bits] = desc[..] else {
        return Err(file.invalid(attribute, "LUT Descriptor must have 3 values"));
    };
    let entries = if entries == 0 {
        65536
    } else {
        entries as usize
    };
    // The first mapped value is US or SS depending on pixel representation;
    // a parser that read it as US gives the two's complement.
    let first = if first > 32767 { first - 65536 } else { first };
    let mut values: Vec<f64> = data
        .to_multi_int::<i64>()
        .map_err(|e| file.invalid(attribute, format!("LUT Data: {e}")))?
        .into_iter()
        .map(|v| v as f64)
        .collect();
    if values.len() < entries {
        return Err(file.invalid(
            attribute,
            format!(
                "LUT Data has {} entries, descriptor says {entries}",
                values.len()
            ),
        ));
    }
    values.truncate(entries);
    Ok(Some(Lut {
        first,
        bits: bits.clamp(1, 16) as u32,
        data: values,
    }))
}

fn first_item(file: &DicomFile, tag: Tag) -> Option<&InMemDicomObject> {
    file.object().get(tag)?.items()?.first()
}

/// The Modality LUT of an instance.
#[derive(Debug, Clone, PartialEq)]
enum ModalityLut {
    Rescale { slope: f64, intercept: f64 },
    Table(Lut),
}

fn rescale_in(file: &DicomFile, obj: &InMemDicomObject) -> Result<Option<(f64, f64)>> {
    let value = |tag: Tag, name: &'static str| -> Result<Option<f64>> {
        match obj.get(tag) {
            Some(e) => element_floats(e)
                .map(|v| v.and_then(|v| v.first().copied()))
                .map_err(|err| file.invalid(name, err)),
            None => Ok(None),
        }
    };
    let slope = value(tags::RESCALE_SLOPE, "RescaleSlope")?;
    let intercept = value(tags::RESCALE_INTERCEPT, "RescaleIntercept")?;
    Ok(match (slope, intercept) {
        (None, None) => None,
        (s, i) => Some((s.unwrap_or(1.0), i.unwrap_or(0.0))),
    })
}

fn modality_lut(file: &DicomFile) -> Result<ModalityLut> {
    if let Some(item) = first_item(file, tags::MODALITY_LUT_SEQUENCE)
        && let Some(lut) = read_lut(file, item, "ModalityLUTSequence")?
    {
        return Ok(ModalityLut::Table(lut));
    }
    if let Some((slope, intercept)) = rescale_in(file, file.object())? {
        return Ok(ModalityLut::Rescale { slope, intercept });
    }
    // Enhanced multi-frame objects carry it in the shared functional groups.
    if let Some(shared) = first_item(file, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
        && let Some(pvt) = shared
            .get(tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE)
            .and_then(|e| e.items())
            .and_then(|items| items.first())
        && let Some((slope, intercept)) = rescale_in(file, pvt)?
    {
        return Ok(ModalityLut::Rescale { slope, intercept });
    }
    Ok(ModalityLut::Rescale {
        slope: 1.0,
        intercept: 0.0,
    })
}

/// The VOI transform found in the file, if any.
#[derive(Debug, Clone, PartialEq)]
enum FileVoi {
    Table(Lut),
    Window {
        center: f64,
        width: f64,
        function: WindowFunction,
    },
}

fn window_in(file: &DicomFile, obj: &InMemDicomObject) -> Result<Option<FileVoi>> {
    let first = |tag: Tag, name: &'static str| -> Result<Option<f64>> {
        match obj.get(tag) {
            Some(e) => element_floats(e)
                .map(|v| v.and_then(|v| v.first().copied()))
                .map_err(|err| file.invalid(name, err)),
            None => Ok(None),
        }
    };
    let (Some(center), Some(width)) = (
        first(tags::WINDOW_CENTER, "WindowCenter")?,
        first(tags::WINDOW_WIDTH, "WindowWidth")?,
    ) else {
        return Ok(None);
    };
    let function = obj
        .get(tags::VOILUT_FUNCTION)
        .and_then(|e| e.to_str().ok())
        .and_then(|s| WindowFunction::from_dicom(&s))
        .unwrap_or_default();
    if width <= 0.0 || (function == WindowFunction::Linear && width < 1.0) {
        return Err(file.invalid(
            "WindowWidth",
            format!("{width} is not a valid width for {function:?}"),
        ));
    }
    Ok(Some(FileVoi::Window {
        center,
        width,
        function,
    }))
}

fn file_voi(file: &DicomFile) -> Result<Option<FileVoi>> {
    if let Some(item) = first_item(file, tags::VOILUT_SEQUENCE)
        && let Some(lut) = read_lut(file, item, "VOILUTSequence")?
    {
        return Ok(Some(FileVoi::Table(lut)));
    }
    if let Some(w) = window_in(file, file.object())? {
        return Ok(Some(w));
    }
    if let Some(shared) = first_item(file, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
        && let Some(voi) = shared
            .get(tags::FRAME_VOILUT_SEQUENCE)
            .and_then(|e| e.items())
            .and_then(|items| items.first())
    {
        return window_in(file, voi);
    }
    Ok(None)
}

fn min_max(values: &[f32]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(f64::from(v)), hi.max(f64::from(v)))
        })
}

fn normalise_min_max(frame: &mut [f32]) {
    let (lo, hi) = min_max(frame);
    let span = hi - lo;
    for v in frame.iter_mut() {
        *v = if span > 0.0 {
            ((f64::from(*v) - lo) / span) as f32
        } else {
            0.0
        };
    }
}

/// The sample-wise part of the transforms: the Modality LUT, then a VOI
/// that does not depend on the image (a window or a VOI LUT), each step's
/// result rounded to `f32` as it is stored between steps.
#[derive(Debug)]
pub(crate) struct SampleTransform {
    modality: Option<ModalityLut>,
    voi: Option<FileVoi>,
}

impl SampleTransform {
    pub(crate) fn is_identity(&self) -> bool {
        self.modality.is_none() && self.voi.is_none()
    }

    pub(crate) fn apply(&self, v: f32) -> f32 {
        let v = match &self.modality {
            Some(ModalityLut::Rescale { slope, intercept }) => {
                (f64::from(v) * slope + intercept) as f32
            }
            Some(ModalityLut::Table(lut)) => lut.lookup(f64::from(v)) as f32,
            None => v,
        };
        match &self.voi {
            Some(FileVoi::Window {
                center,
                width,
                function,
            }) => function.apply(f64::from(v), *center, *width) as f32,
            Some(FileVoi::Table(lut)) => {
                let max = 2f64.powi(lut.bits as i32) - 1.0;
                (lut.lookup(f64::from(v)) / max).clamp(0.0, 1.0) as f32
            }
            None => v,
        }
    }
}

/// Apply `transform` to every sample of `pixels`, one by one.
fn apply_to_samples(pixels: &mut PixelArray, transform: &SampleTransform) {
    if !transform.is_identity() {
        pixels
            .data
            .iter_mut()
            .for_each(|v| *v = transform.apply(*v));
    }
}

/// The grayscale transforms `options` ask for, as read from an instance.
#[derive(Debug)]
pub(crate) struct Grayscale {
    /// Modality LUT and a fixed VOI, sample by sample.
    pub(crate) samples: SampleTransform,
    /// Then min-max normalisation of each frame (a VOI that needs the
    /// frame first).
    min_max: bool,
    /// A VOI applies (values in `[0, 1]`), so MONOCHROME1 may be inverted.
    windowed: bool,
}

/// Read the transforms `options` ask for from `file`'s attributes.
pub(crate) fn grayscale(file: &DicomFile, options: &PixelOptions) -> Result<Grayscale> {
    let modality = if options.modality_lut {
        match modality_lut(file)? {
            ModalityLut::Rescale { slope, intercept } if slope == 1.0 && intercept == 0.0 => None,
            lut => Some(lut),
        }
    } else {
        None
    };
    let (voi, min_max, windowed) = match &options.voi {
        VoiSelection::None => (None, false, false),
        VoiSelection::MinMax => (None, true, true),
        VoiSelection::Window {
            center,
            width,
            function,
        } => (
            Some(FileVoi::Window {
                center: *center,
                width: *width,
                function: *function,
            }),
            false,
            true,
        ),
        VoiSelection::FromFile => match file_voi(file)? {
            Some(voi) => (Some(voi), false, true),
            None => (None, true, true),
        },
    };
    Ok(Grayscale {
        samples: SampleTransform { modality, voi },
        min_max,
        windowed,
    })
}

impl DicomFile {
    /// Decode pixel data and apply the transforms `options` asks for.
    pub fn decode(&self, options: &PixelOptions) -> Result<PixelArray> {
        let (mut pixels, grey) = self.decode_samples(Some(options))?;
        let Some((grey, tabled)) = grey else {
            return Ok(pixels);
        };
        if !tabled {
            apply_to_samples(&mut pixels, &grey.samples);
        }
        if grey.min_max {
            let frame_len = pixels.frame_len();
            pixels
                .data
                .chunks_exact_mut(frame_len)
                .for_each(normalise_min_max);
        }
        if grey.windowed
            && options.invert_monochrome1
            && pixels.photometric == Photometric::Monochrome1
        {
            for v in &mut pixels.data {
                *v = 1.0 - *v;
            }
            pixels.photometric = Photometric::Monochrome2;
        }
        Ok(pixels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_window_follows_ps3_3_c_11_2_1_2_1() {
        // Center 128, width 256 maps 0..255 onto itself (after scaling).
        for x in [0.0, 1.0, 100.0, 254.0, 255.0] {
            let y = WindowFunction::Linear.apply(x, 128.0, 256.0) * 255.0;
            assert!((y - x).abs() < 1e-9, "{x} -> {y}");
        }
        // Width 1 is a threshold at center - 0.5.
        assert_eq!(WindowFunction::Linear.apply(9.4, 10.0, 1.0), 0.0);
        assert_eq!(WindowFunction::Linear.apply(9.6, 10.0, 1.0), 1.0);
    }

    #[test]
    fn linear_exact_and_sigmoid_hit_their_midpoints() {
        assert!((WindowFunction::LinearExact.apply(40.0, 40.0, 400.0) - 0.5).abs() < 1e-12);
        assert_eq!(WindowFunction::LinearExact.apply(-160.0, 40.0, 400.0), 0.0);
        assert_eq!(WindowFunction::LinearExact.apply(241.0, 40.0, 400.0), 1.0);
        assert!((WindowFunction::Sigmoid.apply(40.0, 40.0, 400.0) - 0.5).abs() < 1e-12);
        let y = WindowFunction::Sigmoid.apply(140.0, 40.0, 400.0);
        assert!((y - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-12);
    }

    /// An MR image of `samples` (16 bits allocated) with `bits_stored`,
    /// signed or not, edited by `edit`, written and opened again.
    fn image(
        dir: &std::path::Path,
        columns: u16,
        samples: Vec<u16>,
        bits_stored: u16,
        signed: bool,
        edit: impl FnOnce(&mut InMemDicomObject),
    ) -> DicomFile {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let rows = (samples.len() / usize::from(columns)) as u16;
        let uids = crate::uid::UidGenerator::default();
        let placeholder = vec![0u8; samples.len()];
        let mut obj = crate::write::MrImage::new(rows, columns, &placeholder, &uids)
            .build()
            .unwrap();
        let us = |tag: Tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
        obj.put(us(tags::BITS_STORED, bits_stored));
        obj.put(us(tags::HIGH_BIT, bits_stored - 1));
        obj.put(us(tags::PIXEL_REPRESENTATION, u16::from(signed)));
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(samples.into()),
        ));
        edit(&mut obj);
        let path = dir.join(format!("{}.dcm", uids.generate()));
        crate::write::write_part10(obj, &path).unwrap();
        DicomFile::open(&path).unwrap()
    }

    /// The stored values converted through a table of every value mapped by
    /// the grayscale transforms give each sample the value that converting
    /// it, then transforming it, gives, to the bit: for rescale, windows of
    /// each function and VOI LUTs, signed and unsigned, with and without
    /// bits above High Bit.
    #[test]
    fn tabled_transforms_equal_the_direct_computation_to_the_bit() {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        let dir = tempfile::tempdir().unwrap();
        let options = [
            PixelOptions::with_voi(VoiSelection::FromFile),
            PixelOptions::with_voi(VoiSelection::None),
            PixelOptions::with_voi(VoiSelection::Window {
                center: 40.5,
                width: 350.0,
                function: WindowFunction::Sigmoid,
            }),
        ];
        for (bits, signed) in [(8u16, false), (12, true), (12, false), (16, true)] {
            // Every stored value twice (more samples than values), and bits
            // above High Bit set, which must be ignored.
            let count = 1u32 << bits;
            let samples: Vec<u16> = (0..2 * count)
                .map(|i| {
                    ((i % count) as u16)
                        | if bits < 16 {
                            0xF000 & !((1 << bits) - 1) as u16
                        } else {
                            0
                        }
                })
                .collect();
            for (n, edit) in [
                |_: &mut InMemDicomObject| {},
                |o: &mut InMemDicomObject| {
                    o.put(DataElement::new(
                        tags::RESCALE_SLOPE,
                        VR::DS,
                        PrimitiveValue::from("0.37"),
                    ));
                    o.put(DataElement::new(
                        tags::RESCALE_INTERCEPT,
                        VR::DS,
                        PrimitiveValue::from("-1024.5"),
                    ));
                },
                |o: &mut InMemDicomObject| {
                    o.put(DataElement::new(
                        tags::WINDOW_CENTER,
                        VR::DS,
                        PrimitiveValue::from("40"),
                    ));
                    o.put(DataElement::new(
                        tags::WINDOW_WIDTH,
                        VR::DS,
                        PrimitiveValue::from("400"),
                    ));
                    o.put(DataElement::new(
                        tags::VOILUT_FUNCTION,
                        VR::CS,
                        PrimitiveValue::from("LINEAR_EXACT"),
                    ));
                },
            ]
            .into_iter()
            .enumerate()
            {
                let file = image(dir.path(), 256, samples.clone(), bits, signed, edit);
                for options in &options {
                    let (tabled, grey) = file.decode_samples(Some(options)).unwrap();
                    let (grey, used_table) = grey.unwrap();
                    let mut direct = file.decode_stored().unwrap();
                    apply_to_samples(&mut direct, &grey.samples);
                    assert_eq!(
                        used_table,
                        !grey.samples.is_identity(),
                        "case {n}, {bits} bits"
                    );
                    let got: Vec<u32> = tabled.data.iter().map(|v| v.to_bits()).collect();
                    let want: Vec<u32> = direct.data.iter().map(|v| v.to_bits()).collect();
                    assert!(
                        got == want,
                        "case {n}, {bits} bits, signed {signed}, {options:?}"
                    );
                    assert_eq!(file.decode(options).unwrap().data.len(), direct.data.len());
                }
            }
        }
        // Fewer samples than stored values: no table, the same values.
        let small = image(dir.path(), 4, (0..16).collect(), 16, false, |_| {});
        let options = PixelOptions::with_voi(VoiSelection::FromFile);
        let (_, grey) = small.decode_samples(Some(&options)).unwrap();
        assert!(!grey.unwrap().1, "no table for 16 samples of 16 bits");
    }

    #[test]
    fn lut_clamps_below_and_above_its_range() {
        let lut = Lut {
            first: -2,
            bits: 8,
            data: vec![10.0, 20.0, 30.0],
        };
        assert_eq!(lut.lookup(-100.0), 10.0);
        assert_eq!(lut.lookup(-1.0), 20.0);
        assert_eq!(lut.lookup(50.0), 30.0);
    }
}
