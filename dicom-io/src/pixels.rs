//! Pixel data decoding: native and encapsulated transfer syntaxes to stored
//! sample values.
//!
//! The output, [`PixelArray`], holds *stored values* (no Modality LUT yet),
//! interleaved, frame by frame: `[frame][row][column][sample]`. Colour data
//! in YBR_FULL or YBR_FULL_422 is converted to RGB (PS3.3 C.7.6.3.1.2),
//! planar configuration 1 is reordered to interleaved. The LUT stages are in
//! [`crate::lut`].

use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::error::{Error, Result};
use crate::file::DicomFile;

/// Photometric interpretation of decoded samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Photometric {
    /// Grayscale, minimum value displayed white.
    Monochrome1,
    /// Grayscale, minimum value displayed black.
    Monochrome2,
    /// Red, green, blue (YBR inputs are converted to this).
    Rgb,
    /// Indices into a palette (not expanded).
    PaletteColor,
}

impl Photometric {
    /// True for the two grayscale interpretations.
    pub fn is_monochrome(self) -> bool {
        matches!(self, Self::Monochrome1 | Self::Monochrome2)
    }
}

/// Decoded pixel data: stored values as `f32` (exact for up to 16 bits).
#[derive(Debug, Clone, PartialEq)]
pub struct PixelArray {
    /// Number of frames.
    pub frames: usize,
    /// Rows per frame.
    pub rows: usize,
    /// Columns per frame.
    pub columns: usize,
    /// Samples per pixel (1 or 3).
    pub samples_per_pixel: usize,
    /// Photometric interpretation of `data`.
    pub photometric: Photometric,
    /// Bits Stored.
    pub bits_stored: u16,
    /// Pixel Representation is two's complement.
    pub signed: bool,
    /// Samples, `[frame][row][column][sample]`.
    pub data: Vec<f32>,
}

impl PixelArray {
    /// Number of samples in one frame.
    pub fn frame_len(&self) -> usize {
        self.rows * self.columns * self.samples_per_pixel
    }

    /// The samples of one frame.
    pub fn frame(&self, index: usize) -> Option<&[f32]> {
        let len = self.frame_len();
        self.data.get(index * len..(index + 1) * len)
    }

    /// Smallest and largest value a stored sample can take.
    pub fn stored_range(&self) -> (f32, f32) {
        let bits = i32::from(self.bits_stored.clamp(1, 16));
        if self.signed {
            (-(2f32.powi(bits - 1)), 2f32.powi(bits - 1) - 1.0)
        } else {
            (0.0, 2f32.powi(bits) - 1.0)
        }
    }
}

/// Whether this build decodes a transfer syntax's pixel data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransferSyntaxSupport {
    /// Decoded.
    Supported {
        /// Name of the transfer syntax.
        name: String,
    },
    /// Known but not decoded.
    Unsupported {
        /// Name of the transfer syntax.
        name: String,
    },
    /// Not a transfer syntax this build knows.
    Unknown,
}

/// The transfer syntaxes whose pixel data Vigie decodes, as UIDs. This is
/// the list the DICOM node accepts for image storage and that the
/// conformance statement publishes.
pub const DECODABLE_TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2",      // Implicit VR Little Endian
    "1.2.840.10008.1.2.1",    // Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99", // Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",    // Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.5",    // RLE Lossless
    "1.2.840.10008.1.2.4.50", // JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51", // JPEG Extended (Process 2 & 4), 8-bit only
    "1.2.840.10008.1.2.4.57", // JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70", // JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80", // JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90", // JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91", // JPEG 2000
];

/// Tell whether pixel data in transfer syntax `uid` can be decoded.
pub fn transfer_syntax_support(uid: &str) -> TransferSyntaxSupport {
    let uid = uid.trim_matches(|c: char| c == ' ' || c == '\0');
    match TransferSyntaxRegistry.get(uid) {
        None => TransferSyntaxSupport::Unknown,
        Some(ts) => {
            let name = ts.name().to_string();
            if DECODABLE_TRANSFER_SYNTAXES.contains(&uid) && ts.can_decode_all() {
                TransferSyntaxSupport::Supported { name }
            } else {
                TransferSyntaxSupport::Unsupported { name }
            }
        }
    }
}

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";

impl DicomFile {
    fn unsupported_pixels(&self, reason: impl Into<String>) -> Error {
        Error::UnsupportedPixelData {
            path: self.path().to_path_buf(),
            sop_instance_uid: self.header().sop_instance_uid.clone(),
            reason: reason.into(),
        }
    }

    fn decode_error(&self, reason: impl Into<String>) -> Error {
        Error::DecodePixelData {
            path: self.path().to_path_buf(),
            sop_instance_uid: self.header().sop_instance_uid.clone(),
            reason: reason.into(),
        }
    }

    fn required_u16(&self, tag: dicom_core::Tag, attribute: &'static str) -> Result<u16> {
        let value = self
            .int(tag, attribute)?
            .ok_or_else(|| Error::MissingAttribute {
                path: self.path().to_path_buf(),
                sop_instance_uid: self.header().sop_instance_uid.clone(),
                attribute,
            })?;
        u16::try_from(value)
            .map_err(|_| self.invalid(attribute, format!("{value} is out of range")))
    }

    /// Decode all frames to stored values.
    ///
    /// Errors: [`Error::UnsupportedTransferSyntax`] for a syntax this build
    /// does not decode (or 12-bit JPEG Extended), [`Error::UnsupportedPixelData`]
    /// for 32-bit or 1-bit samples or an unknown photometric interpretation,
    /// [`Error::DecodePixelData`] for corrupt or truncated data.
    pub fn decode_stored(&self) -> Result<PixelArray> {
        self.decode_samples(None).map(|(pixels, _)| pixels)
    }

    /// [`Self::decode_stored`], and with `grey` the grayscale transforms
    /// of those options (read from the file once the pixel data decoded,
    /// and only for monochrome images): when they map each stored value on
    /// its own and the image has more samples than the stored range has
    /// values, they are computed once per value into a table that the
    /// samples are converted through, in the same pass. Returns the
    /// transforms read, and whether their per-sample part was applied
    /// that way (else the caller applies it).
    pub(crate) fn decode_samples(
        &self,
        grey: Option<&crate::lut::PixelOptions>,
    ) -> Result<(PixelArray, Option<(crate::lut::Grayscale, bool)>)> {
        let header = self.header();
        let ts = header.transfer_syntax.as_str();
        match transfer_syntax_support(ts) {
            TransferSyntaxSupport::Supported { .. } => {}
            TransferSyntaxSupport::Unsupported { name } => {
                return Err(Error::UnsupportedTransferSyntax {
                    path: self.path().to_path_buf(),
                    sop_instance_uid: header.sop_instance_uid.clone(),
                    transfer_syntax: ts.to_string(),
                    name,
                });
            }
            TransferSyntaxSupport::Unknown => {
                return Err(Error::UnsupportedTransferSyntax {
                    path: self.path().to_path_buf(),
                    sop_instance_uid: header.sop_instance_uid.clone(),
                    transfer_syntax: ts.to_string(),
                    name: "unknown".into(),
                });
            }
        }
        if self.object().get(tags::PIXEL_DATA).is_none() {
            return Err(Error::MissingAttribute {
                path: self.path().to_path_buf(),
                sop_instance_uid: header.sop_instance_uid.clone(),
                attribute: "PixelData",
            });
        }
        let bits_allocated = self.required_u16(tags::BITS_ALLOCATED, "BitsAllocated")?;
        let bits_stored = self.required_u16(tags::BITS_STORED, "BitsStored")?;
        let high_bit = self.required_u16(tags::HIGH_BIT, "HighBit")?;
        let samples = self.required_u16(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?;
        let signed = self.required_u16(tags::PIXEL_REPRESENTATION, "PixelRepresentation")? == 1;
        let planar = self
            .int(tags::PLANAR_CONFIGURATION, "PlanarConfiguration")?
            .unwrap_or(0);
        let photometric_text = self
            .string(tags::PHOTOMETRIC_INTERPRETATION)
            .ok_or_else(|| Error::MissingAttribute {
                path: self.path().to_path_buf(),
                sop_instance_uid: header.sop_instance_uid.clone(),
                attribute: "PhotometricInterpretation",
            })?;
        match bits_allocated {
            8 | 16 => {}
            32 => return Err(self.unsupported_pixels("32-bit samples (Bits Allocated 32)")),
            1 => return Err(self.unsupported_pixels("1-bit samples (Bits Allocated 1)")),
            other => return Err(self.unsupported_pixels(format!("Bits Allocated {other}"))),
        }
        if bits_stored == 0
            || bits_stored > bits_allocated
            || high_bit + 1 < bits_stored
            || high_bit >= bits_allocated
        {
            return Err(self.invalid(
                "BitsStored",
                format!("Bits Stored {bits_stored}, High Bit {high_bit} inconsistent with Bits Allocated {bits_allocated}"),
            ));
        }
        if ts == JPEG_EXTENDED && bits_stored > 8 {
            return Err(Error::UnsupportedTransferSyntax {
                path: self.path().to_path_buf(),
                sop_instance_uid: header.sop_instance_uid.clone(),
                transfer_syntax: ts.to_string(),
                name: format!(
                    "JPEG Extended with {bits_stored}-bit samples (12-bit JPEG is not decoded)"
                ),
            });
        }
        let source_photometric = photometric_text.as_str();
        let (photometric, ybr) = match (source_photometric, samples) {
            ("MONOCHROME1", 1) => (Photometric::Monochrome1, None),
            ("MONOCHROME2", 1) => (Photometric::Monochrome2, None),
            ("PALETTE COLOR", 1) => (Photometric::PaletteColor, None),
            ("RGB" | "YBR_ICT" | "YBR_RCT", 3) => (Photometric::Rgb, None),
            ("YBR_FULL", 3) => (Photometric::Rgb, Some(false)),
            ("YBR_FULL_422", 3) => (Photometric::Rgb, Some(true)),
            (other, n) => {
                return Err(self.unsupported_pixels(format!(
                    "Photometric Interpretation {other} with {n} samples per pixel"
                )));
            }
        };
        let encapsulated = matches!(
            self.object().get(tags::PIXEL_DATA).map(|e| e.value()),
            Some(dicom_core::value::Value::PixelSequence(_))
        );
        self.check_decoded_size(bits_allocated, samples)?;
        // RLE Lossless is decoded here, bounds-checked: dicom-rs's decoder
        // indexes out of bounds on corrupt segments. Any other decoder must
        // still never take the calling thread down: a panic in one (its
        // JPEG and JPEG 2000 adapters have panicked under fuzzing) fails
        // this instance only.
        let (rows, columns, frames, decoded) = if ts == RLE_LOSSLESS {
            let rows = usize::from(self.required_u16(tags::ROWS, "Rows")?);
            let columns = usize::from(self.required_u16(tags::COLUMNS, "Columns")?);
            let frames = self
                .int(tags::NUMBER_OF_FRAMES, "NumberOfFrames")?
                .unwrap_or(1)
                .max(0)
                .unsigned_abs() as usize;
            let bytes = self.decode_rle(
                rows,
                columns,
                frames,
                usize::from(samples),
                usize::from(bits_allocated / 8),
            )?;
            (rows, columns, frames, Decoded::Rle(bytes))
        } else {
            let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.object().decode_pixel_data()
            }))
            .map_err(|panic| {
                self.decode_error(format!("decoder panicked: {}", panic_message(&panic)))
            })?
            .map_err(|e| self.decode_error(e.to_string()))?;
            (
                decoded.rows() as usize,
                decoded.columns() as usize,
                decoded.number_of_frames() as usize,
                Decoded::Codec(decoded),
            )
        };
        if rows == 0 || columns == 0 || frames == 0 {
            return Err(self.invalid(
                "Rows",
                format!("empty image: {rows}x{columns}, {frames} frames"),
            ));
        }
        let pixels = rows * columns;
        let bytes: &[u8] = match &decoded {
            Decoded::Rle(bytes) => bytes,
            Decoded::Codec(decoded) => decoded.data(),
        };
        let bytes_per_sample = usize::from(bits_allocated / 8);
        let samples = usize::from(samples);
        // Native YBR_FULL_422 carries two chroma samples per pair of pixels.
        let subsampled = ybr == Some(true) && !encapsulated;
        let frame_samples = if subsampled {
            pixels * 2
        } else {
            pixels * samples
        };
        let needed = frame_samples * frames * bytes_per_sample;
        if bytes.len() < needed {
            return Err(self.decode_error(format!(
                "pixel data holds {} bytes, {frames} frame(s) of {rows}x{columns}x{samples} need {needed}",
                bytes.len()
            )));
        }
        let shift = u32::from(high_bit + 1 - bits_stored);
        let mask: u32 = if bits_stored >= 32 {
            u32::MAX
        } else {
            (1u32 << bits_stored) - 1
        };
        // Two's complement samples are sign-extended from Bits Stored by
        // shifts, without a branch, so that the loops below vectorise.
        let extend = 32 - u32::from(bits_stored);
        let to_value = |raw: u32| -> f32 {
            let v = (raw >> shift) & mask;
            if signed {
                (((v << extend) as i32) >> extend) as f32
            } else {
                v as f32
            }
        };
        let grey = match grey {
            Some(options) if photometric.is_monochrome() => {
                Some(crate::lut::grayscale(self, options)?)
            }
            _ => None,
        };
        // The per-sample transforms through a table of every stored value,
        // when there are more samples than values.
        let table: Option<Vec<f32>> = grey
            .as_ref()
            .map(|g| &g.samples)
            .filter(|t| !t.is_identity() && (1usize << bits_stored) < needed / bytes_per_sample)
            .map(|t| {
                (0..1u32 << bits_stored)
                    .map(|pattern| t.apply(to_value(pattern << shift)))
                    .collect()
            });
        let bytes = &bytes[..needed];
        let raw: Vec<f32> = match (&table, bits_allocated) {
            // `(raw >> shift) & mask` is below the table's length.
            (Some(table), 8) => bytes
                .iter()
                .map(|&b| table[((u32::from(b) >> shift) & mask) as usize])
                .collect(),
            (Some(table), _) => bytes
                .chunks_exact(2)
                .map(|c| {
                    table[((u32::from(u16::from_le_bytes([c[0], c[1]])) >> shift) & mask) as usize]
                })
                .collect(),
            (None, 8) => bytes.iter().map(|&b| to_value(u32::from(b))).collect(),
            (None, _) => bytes
                .chunks_exact(2)
                .map(|c| to_value(u32::from(u16::from_le_bytes([c[0], c[1]]))))
                .collect(),
        };
        let tabled = table.is_some();
        let mut data = if subsampled {
            upsample_422(&raw, frames, rows, columns).ok_or_else(|| {
                self.unsupported_pixels("YBR_FULL_422 with an odd number of columns")
            })?
        } else if samples == 3 && planar == 1 && !encapsulated {
            interleave_planes(&raw, frames, pixels)
        } else {
            raw
        };
        // Codecs other than RLE convert colour themselves; native and RLE
        // YBR_FULL data is still YCbCr here.
        if ybr.is_some() && (!encapsulated || ts == RLE_LOSSLESS) {
            let max = 2f32.powi(i32::from(bits_stored)) - 1.0;
            ybr_full_to_rgb(&mut data, max);
        }
        Ok((
            PixelArray {
                frames,
                rows,
                columns,
                samples_per_pixel: samples,
                photometric,
                bits_stored,
                signed,
                data,
            },
            grey.map(|g| (g, tabled)),
        ))
    }
}

impl DicomFile {
    /// Refuse, before decoding, pixel data whose decoded size exceeds
    /// [`crate::scan::Limits::max_decoded_bytes`] (Rows × Columns × Number
    /// of Frames × Samples per Pixel × Bits Allocated) or that contradicts
    /// its own length.
    fn check_decoded_size(&self, bits_allocated: u16, samples: u16) -> Result<()> {
        let limits = crate::scan::limits();
        if let Some(scanned) = self.scanned() {
            return scanned
                .check_pixel_data(&limits)
                .map_err(|problem| match problem {
                    crate::scan::PixelDataProblem::TooLarge { .. } => Error::Limit {
                        path: self.path().to_path_buf(),
                        limit: "max_decoded_bytes",
                        reason: problem.to_string(),
                    },
                    other => self.decode_error(other.to_string()),
                });
        }
        let rows = self
            .int(tags::ROWS, "Rows")?
            .unwrap_or(0)
            .max(0)
            .unsigned_abs();
        let columns = self
            .int(tags::COLUMNS, "Columns")?
            .unwrap_or(0)
            .max(0)
            .unsigned_abs();
        let frames = self
            .int(tags::NUMBER_OF_FRAMES, "NumberOfFrames")?
            .unwrap_or(1)
            .max(0)
            .unsigned_abs();
        let bytes = rows
            .saturating_mul(columns)
            .saturating_mul(frames)
            .saturating_mul(u64::from(samples))
            .saturating_mul(u64::from(bits_allocated))
            .div_ceil(8);
        if bytes > limits.max_decoded_bytes {
            return Err(Error::Limit {
                path: self.path().to_path_buf(),
                limit: "max_decoded_bytes",
                reason: crate::scan::PixelDataProblem::TooLarge {
                    bytes,
                    limit: limits.max_decoded_bytes,
                }
                .to_string(),
            });
        }
        Ok(())
    }
}

impl DicomFile {
    /// RLE Lossless (PS3.5 Annex G), every index checked: for each frame
    /// its one fragment, a 64-byte header of segment count and offsets,
    /// one PackBits segment per byte of each sample (most significant
    /// first), each decoding to exactly Rows × Columns bytes. Returns the
    /// samples little endian, interleaved, frame after frame (the layout
    /// of dicom-rs's decoders).
    fn decode_rle(
        &self,
        rows: usize,
        columns: usize,
        frames: usize,
        samples: usize,
        bytes_per_sample: usize,
    ) -> Result<Vec<u8>> {
        let Some(dicom_core::value::Value::PixelSequence(sequence)) =
            self.object().get(tags::PIXEL_DATA).map(|e| e.value())
        else {
            return Err(self.decode_error("RLE Lossless pixel data is not encapsulated"));
        };
        let fragments = sequence.fragments();
        if fragments.len() < frames {
            return Err(self.decode_error(format!(
                "RLE Lossless: {frames} frames but {} fragments (one per frame)",
                fragments.len()
            )));
        }
        let pixels = rows * columns;
        let segments = samples * bytes_per_sample;
        let frame_len = pixels * segments;
        // Sized from the attributes, so bounded before any allocation.
        let total = frame_len
            .checked_mul(frames)
            .filter(|&t| t as u64 <= crate::scan::limits().max_decoded_bytes)
            .ok_or_else(|| Error::Limit {
                path: self.path().to_path_buf(),
                limit: "max_decoded_bytes",
                reason: format!(
                    "RLE Lossless: {frames} frame(s) of {rows}x{columns}x{samples} above the decoded-size limit"
                ),
            })?;
        let mut out = vec![0u8; total];
        let mut segment = Vec::with_capacity(pixels);
        for (f, fragment) in fragments.iter().take(frames).enumerate() {
            let fail = |reason: String| {
                self.decode_error(format!("RLE Lossless frame {}: {reason}", f + 1))
            };
            if fragment.len() < 64 {
                return Err(fail(format!(
                    "fragment of {} bytes, shorter than the RLE header",
                    fragment.len()
                )));
            }
            let word = |i: usize| {
                u32::from_le_bytes([
                    fragment[4 * i],
                    fragment[4 * i + 1],
                    fragment[4 * i + 2],
                    fragment[4 * i + 3],
                ]) as usize
            };
            if word(0) != segments {
                return Err(fail(format!(
                    "{} segments, {segments} expected ({samples} samples of {bytes_per_sample} bytes)",
                    word(0)
                )));
            }
            for k in 0..segments {
                let start = word(1 + k);
                let end = if k + 1 < segments {
                    word(2 + k)
                } else {
                    fragment.len()
                };
                if start < 64 || start > end || end > fragment.len() {
                    return Err(fail(format!(
                        "segment {} at bytes {start}..{end} outside the fragment of {}",
                        k + 1,
                        fragment.len()
                    )));
                }
                unpack_bits(&fragment[start..end], pixels, &mut segment);
                if segment.len() < pixels {
                    return Err(fail(format!(
                        "segment {} decodes to {} bytes, Rows × Columns is {pixels}",
                        k + 1,
                        segment.len()
                    )));
                }
                // Segment k holds byte (bytes_per_sample - 1 - k % bps) of
                // sample k / bps: most significant byte first.
                let sample = k / bytes_per_sample;
                let byte = bytes_per_sample - 1 - k % bytes_per_sample;
                let frame = &mut out[f * frame_len..(f + 1) * frame_len];
                for (p, value) in segment.iter().take(pixels).enumerate() {
                    frame[(p * samples + sample) * bytes_per_sample + byte] = *value;
                }
            }
        }
        Ok(out)
    }
}

/// Decoded samples: ours (RLE) or a codec's, borrowed without a copy.
enum Decoded<'a> {
    Rle(Vec<u8>),
    Codec(dicom_pixeldata::DecodedPixelData<'a>),
}

/// PackBits (PS3.5 G.3.1) into `out` (cleared), at most `limit` bytes: a
/// header byte n in 0..=127 copies the next n + 1 bytes, -1..=-127 repeats
/// the next byte 1 - n times, -128 does nothing. Stops at the end of
/// `input` (a short segment is the caller's to refuse).
fn unpack_bits(input: &[u8], limit: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while i < input.len() && out.len() < limit {
        let n = input[i] as i8;
        i += 1;
        match n {
            0..=127 => {
                let count = n as usize + 1;
                let end = (i + count).min(input.len());
                let take = (end - i).min(limit - out.len());
                out.extend_from_slice(&input[i..i + take]);
                i = end;
            }
            -127..=-1 => {
                let Some(&value) = input.get(i) else { break };
                i += 1;
                let count = (1 - i32::from(n)) as usize;
                let take = count.min(limit - out.len());
                out.extend(std::iter::repeat_n(value, take));
            }
            -128 => {}
        }
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn interleave_planes(raw: &[f32], frames: usize, pixels: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(raw.len());
    for f in 0..frames {
        let frame = &raw[f * pixels * 3..(f + 1) * pixels * 3];
        for p in 0..pixels {
            out.extend_from_slice(&[frame[p], frame[pixels + p], frame[2 * pixels + p]]);
        }
    }
    out
}

/// Expand native YBR_FULL_422 (Y1 Y2 Cb Cr per pair of pixels) to three
/// samples per pixel.
fn upsample_422(raw: &[f32], frames: usize, rows: usize, columns: usize) -> Option<Vec<f32>> {
    if !columns.is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(frames * rows * columns * 3);
    for quad in raw.chunks_exact(4) {
        let (y1, y2, cb, cr) = (quad[0], quad[1], quad[2], quad[3]);
        out.extend_from_slice(&[y1, cb, cr, y2, cb, cr]);
    }
    Some(out)
}

/// YBR_FULL to RGB, PS3.3 C.7.6.3.1.2, rounded and clipped like the
/// reference implementations so that results are comparable.
fn ybr_full_to_rgb(data: &mut [f32], max: f32) {
    let half = (max + 1.0) / 2.0;
    for px in data.chunks_exact_mut(3) {
        let (y, cb, cr) = (px[0], px[1] - half, px[2] - half);
        let r = y + 1.402 * cr;
        let g = y - 0.344_136 * cb - 0.714_136 * cr;
        let b = y + 1.772 * cb;
        px[0] = r.round().clamp(0.0, max);
        px[1] = g.round().clamp(0.0, max);
        px[2] = b.round().clamp(0.0, max);
    }
}
