//! Hostile and broken data sets, byte by byte, for the hardening tests of
//! `dicom-io` and `vigie serve` (no DICOM library: the point is bytes that
//! no library would write).

use std::path::Path;

/// Explicit VR little endian bytes of one element.
pub fn element(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
    out
}

/// A UID value padded to even length.
pub fn uid(value: &str) -> Vec<u8> {
    let mut v = value.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// `depth` undefined-length sequences nested in one another, each with
/// one undefined-length item (PS3.5 §7.5.2), properly closed.
pub fn nested(depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..depth {
        out.extend_from_slice(&[
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    for _ in 0..depth {
        out.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    }
    out
}

/// The image pixel module of a `rows` × `columns` 16-bit grayscale image.
pub fn image_module(rows: u16, columns: u16) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend(element(0x0028, 0x0002, b"US", &1u16.to_le_bytes()));
    d.extend(element(0x0028, 0x0004, b"CS", b"MONOCHROME2 "));
    d.extend(element(0x0028, 0x0010, b"US", &rows.to_le_bytes()));
    d.extend(element(0x0028, 0x0011, b"US", &columns.to_le_bytes()));
    d.extend(element(0x0028, 0x0100, b"US", &16u16.to_le_bytes()));
    d.extend(element(0x0028, 0x0101, b"US", &16u16.to_le_bytes()));
    d.extend(element(0x0028, 0x0102, b"US", &15u16.to_le_bytes()));
    d.extend(element(0x0028, 0x0103, b"US", &0u16.to_le_bytes()));
    d
}

/// A copy of an RLE Lossless file of 16-bit grayscale (pydicom's
/// `MR_small_RLE.dcm`) whose first fragment says segment 1 starts two
/// bytes after segment 0: segment 0 then decodes to far fewer bytes than
/// Rows × Columns, and dicom-rs 0.10's RLE decoder indexes out of bounds
/// (`rle_lossless.rs:119`).
pub fn corrupt_rle(from: &Path, to: &Path) {
    let mut bytes = std::fs::read(from).expect("RLE file");
    let pattern = [2u8, 0, 0, 0, 64, 0, 0, 0];
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern)
        .expect("an RLE header of two segments");
    bytes[at + 8..at + 12].copy_from_slice(&66u32.to_le_bytes());
    std::fs::write(to, bytes).expect("write");
}
