//! Frames as WADO-RS serves them (`vigie_dicom_io::frames`), on synthetic
//! files whose layout the pydicom test files do not cover: several
//! fragments per frame found through the Basic and the Extended Offset
//! Table, no table at all, and one-bit frames that do not start on a byte.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use dicom_core::value::{PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use vigie_dicom_io::Error;
use vigie_dicom_io::frames::{FrameForm, read_frames};

const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

fn image(frames: u32, rows: u16, columns: u16, bits: u16) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    let mut put = |tag: Tag, vr: VR, value: PrimitiveValue| o.put(DataElement::new(tag, vr, value));
    put(
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.7".into(),
    );
    put(tags::SOP_INSTANCE_UID, VR::UI, "2.25.77".into());
    put(tags::STUDY_INSTANCE_UID, VR::UI, "2.25.78".into());
    put(tags::SERIES_INSTANCE_UID, VR::UI, "2.25.79".into());
    put(tags::MODALITY, VR::CS, "OT".into());
    put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
    put(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2".into(),
    );
    put(tags::ROWS, VR::US, PrimitiveValue::from(rows));
    put(tags::COLUMNS, VR::US, PrimitiveValue::from(columns));
    put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(bits));
    put(tags::BITS_STORED, VR::US, PrimitiveValue::from(bits));
    put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(bits - 1));
    put(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(0u16),
    );
    put(tags::NUMBER_OF_FRAMES, VR::IS, frames.to_string().into());
    o
}

fn write(dir: &Path, name: &str, object: InMemDicomObject, syntax: &str) -> PathBuf {
    let file = object
        .with_meta(
            FileMetaTableBuilder::new()
                .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
                .media_storage_sop_instance_uid("2.25.77")
                .transfer_syntax(syntax)
                .implementation_class_uid("2.25.1"),
        )
        .unwrap();
    let path = dir.join(name);
    file.write_to_file(&path).unwrap();
    path
}

/// Three frames of two fragments each (`[k, k]`, `[k+10, k+10, k+10]`…).
fn fragments() -> Vec<Vec<u8>> {
    (0..3u8)
        .flat_map(|k| [vec![k; 4], vec![k + 10; 6]])
        .collect()
}

fn encapsulated(offset_table: Vec<u32>, extended: Option<Vec<u64>>) -> InMemDicomObject {
    let mut o = image(3, 2, 2, 8);
    if let Some(offsets) = extended {
        o.put(DataElement::new(
            Tag(0x7FE0, 0x0001),
            VR::OV,
            PrimitiveValue::U64(offsets.into()),
        ));
        o.put(DataElement::new(
            Tag(0x7FE0, 0x0002),
            VR::OV,
            PrimitiveValue::U64(vec![10u64; 3].into()),
        ));
    }
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        Value::PixelSequence(PixelFragmentSequence::new(offset_table, fragments())),
    ));
    o
}

fn expected(k: u8) -> Vec<u8> {
    [vec![k; 4], vec![k + 10; 6]].concat()
}

#[test]
fn frames_of_several_fragments_are_found_through_the_offset_tables() {
    let dir = tempfile::tempdir().unwrap();
    // Each fragment item is 8 bytes of header plus its value: frames start
    // at 0, 26 and 52.
    let basic = write(
        dir.path(),
        "basic.dcm",
        encapsulated(vec![0, 26, 52], None),
        JPEG_BASELINE,
    );
    let extended = write(
        dir.path(),
        "extended.dcm",
        encapsulated(vec![], Some(vec![0, 26, 52])),
        JPEG_BASELINE,
    );
    for path in [&basic, &extended] {
        let got = read_frames(path, &[3, 1, 2], FrameForm::AsStored).unwrap();
        assert_eq!(got.transfer_syntax, JPEG_BASELINE);
        assert_eq!(
            got.frames,
            vec![expected(2), expected(0), expected(1)],
            "{path:?}"
        );
    }
    // An offset that falls inside a fragment cannot be trusted.
    let wrong = write(
        dir.path(),
        "wrong.dcm",
        encapsulated(vec![0, 20, 52], None),
        JPEG_BASELINE,
    );
    assert!(matches!(
        read_frames(&wrong, &[1], FrameForm::AsStored),
        Err(Error::FramesNotDelimited { .. })
    ));
    // Six fragments for three frames and no table: not delimited.
    let none = write(
        dir.path(),
        "none.dcm",
        encapsulated(vec![], None),
        JPEG_BASELINE,
    );
    let err = read_frames(&none, &[2], FrameForm::AsStored).unwrap_err();
    assert!(
        matches!(&err, Error::FramesNotDelimited { reason, .. } if reason.contains("6 fragments for 3 frames")),
        "{err}"
    );
    // A frame beyond the instance's is named.
    let err = read_frames(&basic, &[4], FrameForm::AsStored).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NoSuchFrame {
                frame: 4,
                frames: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn one_bit_frames_come_out_byte_aligned() {
    let dir = tempfile::tempdir().unwrap();
    // Three frames of 3 × 4 one-bit pixels: 12 bits each, so frames 2 and
    // 3 start in the middle of a byte. Frame k has pixel i set when
    // (i + k) is even.
    let mut bits = Vec::new();
    for k in 0..3 {
        for i in 0..12 {
            bits.push((i + k) % 2 == 0);
        }
    }
    let mut packed = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            packed[i / 8] |= 1 << (i % 8);
        }
    }
    if packed.len() % 2 == 1 {
        packed.push(0);
    }
    let mut o = image(3, 3, 4, 1);
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(packed.into()),
    ));
    let path = write(dir.path(), "bits.dcm", o, "1.2.840.10008.1.2.1");
    let got = read_frames(&path, &[1, 2, 3], FrameForm::Uncompressed).unwrap();
    assert_eq!(got.transfer_syntax, "1.2.840.10008.1.2.1");
    let even = vec![0b0101_0101, 0b0000_0101];
    let odd = vec![0b1010_1010, 0b0000_1010];
    assert_eq!(got.frames, vec![even.clone(), odd, even]);
}

#[test]
fn native_frames_are_cut_in_order_and_checked_against_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = image(2, 2, 2, 16);
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(vec![1, 2, 3, 4, 0x0102, 6, 7, 8].into()),
    ));
    let path = write(dir.path(), "two.dcm", o, "1.2.840.10008.1.2.1");
    let got = read_frames(&path, &[2], FrameForm::AsStored).unwrap();
    assert_eq!(
        got.frames,
        vec![vec![2, 1, 6, 0, 7, 0, 8, 0]],
        "little endian"
    );
    // A value shorter than its frames is an error, not a short frame.
    let mut short = image(3, 2, 2, 16);
    short.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(vec![1; 8].into()),
    ));
    let path = write(dir.path(), "short.dcm", short, "1.2.840.10008.1.2.1");
    let err = read_frames(&path, &[1], FrameForm::Uncompressed).unwrap_err();
    // Refused by the structural scan (native Pixel Data shorter than its
    // image) or by the frame cutting: either names the shortfall.
    assert!(err.to_string().contains("shorter"), "{err}");
}
