//! Frames and bulk data of a stored instance, as WADO-RS retrieves them
//! (PS3.18 10.4.1.1.4 and 10.4.1.1.5, media types of 8.7.3).
//!
//! A frame is served in one of two forms:
//! - **uncompressed** ([`FrameForm::Uncompressed`]): the frame's bytes in
//!   the Pixel Data of the instance transcoded to Explicit VR Little
//!   Endian, exactly what a whole-instance WADO-RS retrieve would carry
//!   (compressed pixel data decoded; a YBR JPEG then decodes to RGB, as
//!   that instance's Photometric Interpretation says);
//! - **as stored** ([`FrameForm::AsStored`]): for an encapsulated transfer
//!   syntax, the frame's compressed bitstream (its fragments joined), found
//!   through the Extended Offset Table, the Basic Offset Table, or one
//!   fragment per frame (PS3.5 A.4); native pixel data is uncompressed
//!   either way. Frames that cannot be delimited in the stored stream
//!   (several fragments per frame and no offset table) are an error: the
//!   caller may then ask for them uncompressed.
//!
//! Native frames are cut from the value by bit offset, so that frames of
//! Bits Allocated 1 (which need not start on a byte) come out byte-aligned,
//! their bits least significant first (PS3.5 8.1.1).

use std::path::Path;

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;

use crate::error::{Error, Result};
use crate::file::DicomFile;

/// Explicit VR Little Endian: the transfer syntax of uncompressed frames
/// and bulk data (PS3.18 8.7.3.5: Implicit VR and Big Endian are not used
/// on the web).
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// Most frame numbers one request may name.
pub const MAX_FRAMES_ASKED: usize = 10_000;

/// In which form frames are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameForm {
    /// Uncompressed, little endian (compressed pixel data decoded).
    Uncompressed,
    /// The stored bitstream for an encapsulated transfer syntax;
    /// uncompressed for a native one.
    AsStored,
}

/// Frames read from an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frames {
    /// Transfer syntax of the bytes: [`EXPLICIT_VR_LITTLE_ENDIAN`] when
    /// uncompressed, else the stored (encapsulated) one.
    pub transfer_syntax: String,
    /// The frames asked for, in the order asked.
    pub frames: Vec<Vec<u8>>,
}

/// A frame list of a WADO-RS URL (`1`, `1,3,5`): positive integers
/// separated by commas, each once (PS3.18 10.4.1.1.4: non-duplicate frame
/// numbers), at most [`MAX_FRAMES_ASKED`]. `None` when it is not one.
pub fn parse_frame_list(text: &str) -> Option<Vec<u32>> {
    let numbers = text
        .split(',')
        .map(|n| {
            let n = n.trim();
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse::<u32>().ok())
                .flatten()
                .filter(|&n| n >= 1)
        })
        .collect::<Option<Vec<u32>>>()?;
    if numbers.is_empty() || numbers.len() > MAX_FRAMES_ASKED {
        return None;
    }
    let distinct: std::collections::BTreeSet<u32> = numbers.iter().copied().collect();
    (distinct.len() == numbers.len()).then_some(numbers)
}

/// Number of frames of an opened instance: Number of Frames (0028,0008),
/// 1 when absent; 0 for an instance without pixel data.
pub fn frame_count(file: &DicomFile) -> Result<u32> {
    let has_pixels = file.object().get(tags::PIXEL_DATA).is_some()
        || file.scanned().is_some_and(|s| {
            s.pixel_data != crate::scan::PixelDataLayout::Absent && s.image.rows.is_some()
        });
    if !has_pixels {
        return Ok(0);
    }
    match file.int(tags::NUMBER_OF_FRAMES, "NumberOfFrames")? {
        None => Ok(1),
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| file.invalid("NumberOfFrames", format!("{n} frames"))),
    }
}

/// The frames `numbers` (1-based) of the instance at `path`, in `form`.
///
/// Errors: [`Error::NoSuchFrame`] for a number beyond Number of Frames (or
/// an instance without pixel data), [`Error::FramesNotDelimited`] when the
/// stored stream cannot be cut into frames, the decoding errors of
/// [`crate::web::transcode_to_explicit_le`] for an uncompressed frame of a
/// compressed instance, [`Error::DecodePixelData`] when the value is
/// shorter than its frames. A decoder that panics is an error like any
/// other.
pub fn read_frames(path: &Path, numbers: &[u32], form: FrameForm) -> Result<Frames> {
    std::panic::catch_unwind(|| frames_of(path, numbers, form)).unwrap_or_else(|panic| {
        Err(Error::DecodePixelData {
            path: path.to_path_buf(),
            sop_instance_uid: "unknown".into(),
            reason: format!("decoder panicked: {}", crate::pixels::panic_message(&panic)),
        })
    })
}

fn frames_of(path: &Path, numbers: &[u32], form: FrameForm) -> Result<Frames> {
    let file = DicomFile::open(path)?;
    let total = frame_count(&file)?;
    if let Some(&frame) = numbers.iter().find(|&&n| n == 0 || n > total) {
        return Err(Error::NoSuchFrame {
            sop_instance_uid: file.header().sop_instance_uid.clone(),
            frame,
            frames: total,
        });
    }
    let encapsulated = matches!(
        file.object().get(tags::PIXEL_DATA).map(|e| e.value()),
        Some(Value::PixelSequence(_))
    );
    if !encapsulated {
        return Ok(Frames {
            transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.into(),
            frames: native_frames(&file, numbers, total)?,
        });
    }
    if form == FrameForm::AsStored {
        let (fragments, ranges) = stored_frames(&file, total)?;
        let size = |n: u32| -> u64 {
            fragments[ranges[n as usize - 1].clone()]
                .iter()
                .map(|f| f.len() as u64)
                .sum()
        };
        within_limit(&file, numbers.iter().map(|&n| size(n)).sum())?;
        let frames = numbers
            .iter()
            .map(|&n| fragments[ranges[n as usize - 1].clone()].concat())
            .collect();
        return Ok(Frames {
            transfer_syntax: file.header().transfer_syntax.clone(),
            frames,
        });
    }
    let decoded = crate::web::transcoded_object(path)?;
    let decoded = DicomFile::from_object(path.to_path_buf(), decoded)?;
    Ok(Frames {
        transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.into(),
        frames: native_frames(&decoded, numbers, total)?,
    })
}

/// Pixel Data (7FE0,0010).
pub const PIXEL_DATA: Tag = tags::PIXEL_DATA;

/// The Pixel Data of the instance at `path` as bulk data: native, one
/// part of the whole value (little endian); encapsulated and
/// [`FrameForm::AsStored`], one part per frame as stored; encapsulated
/// and uncompressed, the whole value of the instance transcoded to
/// Explicit VR Little Endian. Errors as [`read_frames`].
pub fn pixel_data_bulk(path: &Path, form: FrameForm) -> Result<Frames> {
    std::panic::catch_unwind(|| pixel_data_of(path, form)).unwrap_or_else(|panic| {
        Err(Error::DecodePixelData {
            path: path.to_path_buf(),
            sop_instance_uid: "unknown".into(),
            reason: format!("decoder panicked: {}", crate::pixels::panic_message(&panic)),
        })
    })
}

fn pixel_data_of(path: &Path, form: FrameForm) -> Result<Frames> {
    let file = DicomFile::open(path)?;
    let total = frame_count(&file)?;
    if total == 0 {
        return Err(Error::NoSuchFrame {
            sop_instance_uid: file.header().sop_instance_uid.clone(),
            frame: 1,
            frames: 0,
        });
    }
    let whole = |file: &DicomFile| -> Result<Vec<u8>> {
        match file.object().get(tags::PIXEL_DATA).map(|e| e.value()) {
            Some(Value::Primitive(p)) => {
                little_endian_bytes(p).ok_or_else(|| Error::DecodePixelData {
                    path: path.to_path_buf(),
                    sop_instance_uid: file.header().sop_instance_uid.clone(),
                    reason: "Pixel Data is text".into(),
                })
            }
            _ => Err(Error::DecodePixelData {
                path: path.to_path_buf(),
                sop_instance_uid: file.header().sop_instance_uid.clone(),
                reason: "Pixel Data is not a native value".into(),
            }),
        }
    };
    match file.object().get(tags::PIXEL_DATA).map(|e| e.value()) {
        Some(Value::PixelSequence(_)) if form == FrameForm::AsStored => {
            let (fragments, ranges) = stored_frames(&file, total)?;
            Ok(Frames {
                transfer_syntax: file.header().transfer_syntax.clone(),
                frames: ranges.into_iter().map(|r| fragments[r].concat()).collect(),
            })
        }
        Some(Value::PixelSequence(_)) => {
            let decoded = crate::web::transcoded_object(path)?;
            let decoded = DicomFile::from_object(path.to_path_buf(), decoded)?;
            Ok(Frames {
                transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.into(),
                frames: vec![whole(&decoded)?],
            })
        }
        _ => Ok(Frames {
            transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.into(),
            frames: vec![whole(&file)?],
        }),
    }
}

/// The value of a primitive element as little-endian bytes, whatever the
/// byte order it was read in (dicom-rs holds numbers in native order).
pub fn little_endian_bytes(value: &PrimitiveValue) -> Option<Vec<u8>> {
    fn le<T: Copy, const N: usize>(values: &[T], f: fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| f(v)).collect()
    }
    Some(match value {
        PrimitiveValue::Empty => Vec::new(),
        PrimitiveValue::U8(v) => v.to_vec(),
        PrimitiveValue::U16(v) => le(v, u16::to_le_bytes),
        PrimitiveValue::I16(v) => le(v, i16::to_le_bytes),
        PrimitiveValue::U32(v) => le(v, u32::to_le_bytes),
        PrimitiveValue::I32(v) => le(v, i32::to_le_bytes),
        PrimitiveValue::U64(v) => le(v, u64::to_le_bytes),
        PrimitiveValue::I64(v) => le(v, i64::to_le_bytes),
        PrimitiveValue::F32(v) => le(v, f32::to_le_bytes),
        PrimitiveValue::F64(v) => le(v, f64::to_le_bytes),
        _ => return None,
    })
}

fn native_frames(file: &DicomFile, numbers: &[u32], total: u32) -> Result<Vec<Vec<u8>>> {
    let sop = || file.header().sop_instance_uid.clone();
    let fail = |reason: String| Error::DecodePixelData {
        path: file.path().to_path_buf(),
        sop_instance_uid: sop(),
        reason,
    };
    let value = match file.object().get(tags::PIXEL_DATA).map(|e| e.value()) {
        Some(Value::Primitive(p)) => p,
        Some(_) => return Err(fail("Pixel Data is not a native value".into())),
        None => {
            return Err(Error::MissingAttribute {
                path: file.path().to_path_buf(),
                sop_instance_uid: sop(),
                attribute: "PixelData",
            });
        }
    };
    let bytes = little_endian_bytes(value).ok_or_else(|| fail("Pixel Data is text".into()))?;
    let need = |tag: Tag, attribute: &'static str| -> Result<u64> {
        let v = file
            .int(tag, attribute)?
            .ok_or_else(|| Error::MissingAttribute {
                path: file.path().to_path_buf(),
                sop_instance_uid: sop(),
                attribute,
            })?;
        u64::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| file.invalid(attribute, format!("{v}")))
    };
    let rows = need(tags::ROWS, "Rows")?;
    let columns = need(tags::COLUMNS, "Columns")?;
    let mut samples = need(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
    // Native YBR_FULL_422 (and the retired YBR_PARTIAL_422) hold two
    // samples per pixel: Y for each, Cb and Cr shared by two (PS3.3
    // C.7.6.3.1.2).
    if samples == 3
        && file
            .string(tags::PHOTOMETRIC_INTERPRETATION)
            .is_some_and(|p| p == "YBR_FULL_422" || p == "YBR_PARTIAL_422")
    {
        samples = 2;
    }
    let bits = need(tags::BITS_ALLOCATED, "BitsAllocated")?;
    let frame_bits = rows
        .checked_mul(columns)
        .and_then(|p| p.checked_mul(samples))
        .and_then(|p| p.checked_mul(bits))
        .ok_or_else(|| fail("frame size overflows".into()))?;
    let available = (bytes.len() as u64).saturating_mul(8);
    if frame_bits.saturating_mul(u64::from(total)) > available {
        return Err(fail(format!(
            "Pixel Data of {} bytes is shorter than {total} frame(s) of {rows}x{columns}x{samples} at {bits} bits",
            bytes.len()
        )));
    }
    within_limit(
        file,
        frame_bits.div_ceil(8).saturating_mul(numbers.len() as u64),
    )?;
    Ok(numbers
        .iter()
        .map(|&n| cut_bits(&bytes, u64::from(n - 1) * frame_bits, frame_bits))
        .collect())
}

/// The frames asked (a frame may be named more than once) stay within
/// the decoded-size limit.
fn within_limit(file: &DicomFile, bytes: u64) -> Result<()> {
    let limit = crate::scan::limits().max_decoded_bytes;
    if bytes > limit {
        return Err(Error::Limit {
            path: file.path().to_path_buf(),
            limit: "max_decoded_bytes",
            reason: format!(
                "the frames asked hold {} MiB, above the limit of {} MiB",
                bytes >> 20,
                limit >> 20
            ),
        });
    }
    Ok(())
}

/// `len` bits of `bytes` from bit `start` (least significant bit first),
/// as whole bytes, the last one padded with zeros.
fn cut_bits(bytes: &[u8], start: u64, len: u64) -> Vec<u8> {
    if start.is_multiple_of(8) && len.is_multiple_of(8) {
        let (s, l) = ((start / 8) as usize, (len / 8) as usize);
        return bytes[s..s + l].to_vec();
    }
    let mut out = vec![0u8; len.div_ceil(8) as usize];
    for i in 0..len {
        let bit = start + i;
        if bytes[(bit / 8) as usize] >> (bit % 8) & 1 == 1 {
            out[(i / 8) as usize] |= 1 << (i % 8);
        }
    }
    out
}

/// The fragments (their indexes) one frame spans.
type FragmentRange = std::ops::Range<usize>;

/// The fragments of an encapsulated Pixel Data and, for each frame, the
/// range of them it spans (PS3.5 A.4): one frame is all fragments; else
/// the Extended Offset Table, the Basic Offset Table, or one fragment per
/// frame. Offsets must fall on fragment boundaries and grow.
fn stored_frames(file: &DicomFile, total: u32) -> Result<(&[Vec<u8>], Vec<FragmentRange>)> {
    let not_delimited = |reason: String| Error::FramesNotDelimited {
        sop_instance_uid: file.header().sop_instance_uid.clone(),
        reason,
    };
    let Some(Value::PixelSequence(sequence)) =
        file.object().get(tags::PIXEL_DATA).map(|e| e.value())
    else {
        return Err(not_delimited("Pixel Data is not encapsulated".into()));
    };
    let fragments = sequence.fragments();
    let total = total as usize;
    if total == 1 {
        let all: FragmentRange = 0..fragments.len();
        return Ok((fragments, vec![all]));
    }
    // Offset of each fragment's item tag from the first one's.
    let mut starts = Vec::with_capacity(fragments.len());
    let mut at = 0u64;
    for f in fragments {
        starts.push(at);
        at += 8 + f.len() as u64;
    }
    let extended: Option<Vec<u64>> =
        file.object()
            .get(Tag(0x7FE0, 0x0001))
            .and_then(|e| match e.value() {
                Value::Primitive(PrimitiveValue::U64(v)) => Some(v.to_vec()),
                Value::Primitive(p @ PrimitiveValue::U8(_)) => Some(
                    p.to_bytes()
                        .chunks_exact(8)
                        .map(|c| {
                            u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect(),
                ),
                _ => None,
            });
    let offsets: Option<Vec<u64>> = extended.or_else(|| {
        let basic = sequence.offset_table();
        (!basic.is_empty()).then(|| basic.iter().map(|&o| u64::from(o)).collect())
    });
    match offsets {
        Some(offsets) => {
            if offsets.len() != total {
                return Err(not_delimited(format!(
                    "an offset table of {} entries for {total} frames",
                    offsets.len()
                )));
            }
            let mut frames = Vec::with_capacity(total);
            for (k, &offset) in offsets.iter().enumerate() {
                let first = starts.binary_search(&offset).map_err(|_| {
                    not_delimited(format!(
                        "offset {offset} of frame {} is not on a fragment",
                        k + 1
                    ))
                })?;
                let end = match offsets.get(k + 1) {
                    Some(&next) if next > offset => starts.binary_search(&next).map_err(|_| {
                        not_delimited(format!(
                            "offset {next} of frame {} is not on a fragment",
                            k + 2
                        ))
                    })?,
                    Some(_) => {
                        return Err(not_delimited(format!(
                            "offsets do not grow at frame {}",
                            k + 2
                        )));
                    }
                    None => fragments.len(),
                };
                frames.push(first..end);
            }
            Ok((fragments, frames))
        }
        None if fragments.len() == total => Ok((fragments, (0..total).map(|k| k..k + 1).collect())),
        None => Err(not_delimited(format!(
            "{} fragments for {total} frames and no offset table",
            fragments.len()
        ))),
    }
}

/// Binary attributes whose values WADO-RS metadata points to with a
/// BulkDataURI instead of carrying them.
pub fn is_bulk_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB | VR::OW | VR::OF | VR::OD | VR::OL | VR::OV | VR::UN
    )
}

/// Where a bulk data value sits in a data set: tags, with the item index
/// (from 0) of each sequence crossed. Written `TTTTTTTT` at the top level,
/// `SSSSSSSS.i.TTTTTTTT` inside item `i` of sequence `SSSSSSSS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkPath {
    /// Sequences crossed, with the item index in each.
    pub items: Vec<(Tag, usize)>,
    /// The binary attribute.
    pub tag: Tag,
}

impl BulkPath {
    /// Parse the written form; `None` when it is not one (at most as many
    /// sequences deep as storage accepts, `limits.max_depth`).
    pub fn parse(text: &str) -> Option<Self> {
        let parts: Vec<&str> = text.split('.').collect();
        let deepest = crate::scan::limits().max_depth;
        if parts.len().is_multiple_of(2)
            || parts.len() > deepest.saturating_mul(2).saturating_add(1)
        {
            return None;
        }
        let tag = |s: &str| {
            (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
                .map(|t| Tag((t >> 16) as u16, t as u16))
        };
        let mut items = Vec::new();
        for pair in parts[..parts.len() - 1].chunks_exact(2) {
            let index = (pair[1].bytes().all(|b| b.is_ascii_digit()) && pair[1].len() <= 6)
                .then(|| pair[1].parse::<usize>().ok())
                .flatten()?;
            items.push((tag(pair[0])?, index));
        }
        Some(Self {
            items,
            tag: tag(parts[parts.len() - 1])?,
        })
    }

    /// The written form.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for (tag, index) in &self.items {
            text.push_str(&format!("{:04X}{:04X}.{index}.", tag.0, tag.1));
        }
        text.push_str(&format!("{:04X}{:04X}", self.tag.0, self.tag.1));
        text
    }
}

/// The value of a binary attribute (not the top-level Pixel Data: see
/// [`read_frames`]) of the header of the instance at `path`, little
/// endian; a nested encapsulated Pixel Data (an icon image in a compressed
/// syntax) as its fragments joined, as stored. `None` when there is no
/// such binary attribute.
pub fn bulk_value(path: &Path, at: &BulkPath) -> Result<Option<BulkValue>> {
    let file = DicomFile::open_header(path)?;
    let mut object: &dicom_object::InMemDicomObject = file.object();
    for (tag, index) in &at.items {
        let Some(items) = object.get(*tag).and_then(|e| e.items()) else {
            return Ok(None);
        };
        let Some(item) = items.get(*index) else {
            return Ok(None);
        };
        object = item;
    }
    let Some(element) = object.get(at.tag) else {
        return Ok(None);
    };
    if !is_bulk_vr(element.vr()) {
        return Ok(None);
    }
    Ok(match element.value() {
        Value::Primitive(p) => little_endian_bytes(p).map(|bytes| BulkValue {
            bytes,
            encapsulated: false,
        }),
        Value::PixelSequence(s) => Some(BulkValue {
            bytes: s.fragments().concat(),
            encapsulated: true,
        }),
        Value::Sequence(_) => None,
    })
}

/// A bulk data value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkValue {
    /// The value: little endian, or the fragments joined.
    pub bytes: Vec<u8>,
    /// Encapsulated (compressed, in the file's transfer syntax) rather
    /// than native.
    pub encapsulated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lists() {
        assert_eq!(parse_frame_list("1"), Some(vec![1]));
        assert_eq!(parse_frame_list("3,1,2"), Some(vec![3, 1, 2]));
        assert_eq!(parse_frame_list("1, 2"), Some(vec![1, 2]));
        for bad in [
            "",
            "0",
            "1,",
            ",1",
            "-1",
            "1.5",
            "a",
            "+1",
            "99999999999",
            "2,1,2",
        ] {
            assert_eq!(parse_frame_list(bad), None, "{bad:?}");
        }
        let many = (1..=MAX_FRAMES_ASKED as u32 + 1)
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse_frame_list(&many), None);
    }

    #[test]
    fn bits_are_cut_least_significant_first() {
        // 12 one-bit samples per frame: frame 2 starts at bit 12.
        let bytes = [0b1010_1010, 0b0101_1111, 0b1100_0011];
        assert_eq!(cut_bits(&bytes, 0, 12), vec![0b1010_1010, 0b0000_1111]);
        assert_eq!(cut_bits(&bytes, 12, 12), vec![0b0011_0101, 0b0000_1100]);
        assert_eq!(cut_bits(&bytes, 8, 16), vec![0b0101_1111, 0b1100_0011]);
    }

    #[test]
    fn bulk_paths_round_trip() {
        let top = BulkPath::parse("00282000").unwrap();
        assert_eq!(top.tag, Tag(0x0028, 0x2000));
        assert!(top.items.is_empty());
        let nested = BulkPath::parse("00880200.0.7FE00010").unwrap();
        assert_eq!(nested.items, vec![(Tag(0x0088, 0x0200), 0)]);
        assert_eq!(nested.to_text(), "00880200.0.7FE00010");
        for bad in [
            "",
            "0028200",
            "00282000.1",
            "zz282000",
            "00880200.x.7FE00010",
            "00880200.-1.7FE00010",
        ] {
            assert_eq!(BulkPath::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn numbers_become_little_endian() {
        assert_eq!(
            little_endian_bytes(&PrimitiveValue::U16(vec![0x0102u16, 0x0304].into())),
            Some(vec![2, 1, 4, 3])
        );
        assert_eq!(
            little_endian_bytes(&PrimitiveValue::F32(vec![1.0f32].into())),
            Some(1.0f32.to_le_bytes().to_vec())
        );
    }
}
