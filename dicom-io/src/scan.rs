//! A bounded structural check of a Part 10 file, run before any recursive
//! parser sees it.
//!
//! dicom-rs parses sequences recursively and allocates each element's value
//! at the length its header announces. A hostile data set can therefore
//! overflow the stack (thousands of nested sequences) or make the process
//! allocate gigabytes (one length of 0xFFFFFFF0, an unknown VR, a deflate
//! bomb). [`scan_file`] walks the file's element headers with an explicit
//! stack and no allocation proportional to any announced length, and
//! refuses, with the byte offset and a reason:
//! - nesting deeper than [`Limits::max_depth`] sequences,
//! - more than [`Limits::max_elements`] elements and items,
//! - any length past the end of the file or of its enclosing item or
//!   sequence (an unknown VR is read as UN with a 4-byte length, and
//!   checked like any), a misplaced delimiter, a truncated data set
//!   (the data set must parse to its end),
//! - a deflated data set that inflates past [`Limits::max_decoded_bytes`].
//!
//! It also reads, at the top level, what the image pixel module says of the
//! pixel data ([`Scanned::image`]), so that callers can check before
//! decoding that Pixel Data is consistent with Rows, Columns, Bits
//! Allocated, Samples per Pixel and Number of Frames
//! ([`Scanned::check_pixel_data`]) and that its decoded size stays within
//! [`Limits::max_decoded_bytes`].
//!
//! [`crate::DicomFile::open`] and [`crate::DicomFile::open_header`] run it
//! on every file with the process-wide [`limits`]; nothing in the crate
//! parses a file that has not passed it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use crate::error::{Error, Result};

/// The bounds a data set must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Most sequences nested in one another. Real data sets stay below ten
    /// (enhanced multi-frame functional groups reach four or five).
    pub max_depth: usize,
    /// Most data elements and items in one data set, all levels together.
    pub max_elements: u64,
    /// Largest decoded size of the pixel data and largest inflated size of
    /// a deflated data set, in bytes.
    pub max_decoded_bytes: u64,
}

/// Default [`Limits::max_depth`].
pub const DEFAULT_MAX_DEPTH: usize = 32;
/// Default [`Limits::max_elements`].
pub const DEFAULT_MAX_ELEMENTS: u64 = 2_000_000;
/// Default [`Limits::max_decoded_bytes`]: 512 MiB.
pub const DEFAULT_MAX_DECODED_BYTES: u64 = 512 << 20;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: DEFAULT_MAX_DEPTH,
            max_elements: DEFAULT_MAX_ELEMENTS,
            max_decoded_bytes: DEFAULT_MAX_DECODED_BYTES,
        }
    }
}

static MAX_DEPTH: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_DEPTH);
static MAX_ELEMENTS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_ELEMENTS);
static MAX_DECODED: AtomicU64 = AtomicU64::new(DEFAULT_MAX_DECODED_BYTES);

/// The limits in force for this process ([`Limits::default`] until
/// [`set_limits`] is called).
pub fn limits() -> Limits {
    Limits {
        max_depth: MAX_DEPTH.load(Ordering::Relaxed),
        max_elements: MAX_ELEMENTS.load(Ordering::Relaxed),
        max_decoded_bytes: MAX_DECODED.load(Ordering::Relaxed),
    }
}

/// Set the process-wide limits, once at start-up from the configuration:
/// every file the crate opens from then on is checked against them.
pub fn set_limits(limits: Limits) {
    MAX_DEPTH.store(limits.max_depth.max(1), Ordering::Relaxed);
    MAX_ELEMENTS.store(limits.max_elements.max(1), Ordering::Relaxed);
    MAX_DECODED.store(limits.max_decoded_bytes.max(1), Ordering::Relaxed);
}

/// How the pixel data of a data set is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PixelDataLayout {
    /// No Pixel Data, Float Pixel Data or Double Float Pixel Data
    /// (7FE0,0010 / 0008 / 0009) at the top level.
    #[default]
    Absent,
    /// Native (Pixel Data, or Float or Double Float Pixel Data): one value
    /// of this many bytes.
    Native {
        /// Value length in bytes.
        length: u64,
    },
    /// Encapsulated: a basic offset table and fragments.
    Encapsulated {
        /// Items (offset table included).
        items: u64,
        /// Bytes in all items.
        bytes: u64,
    },
}

/// The image pixel module attributes read at the top level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageGeometry {
    /// Rows (0028,0010).
    pub rows: Option<u16>,
    /// Columns (0028,0011).
    pub columns: Option<u16>,
    /// Bits Allocated (0028,0100).
    pub bits_allocated: Option<u16>,
    /// Samples per Pixel (0028,0002).
    pub samples_per_pixel: Option<u16>,
    /// Number of Frames (0028,0008); 1 when absent.
    pub number_of_frames: Option<u64>,
    /// Photometric Interpretation (0028,0004).
    pub photometric: Option<String>,
}

/// What [`scan_file`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Scanned {
    /// Transfer Syntax UID of the file meta group.
    pub transfer_syntax: String,
    /// Bytes of the data set (inflated, for a deflated one).
    pub dataset_bytes: u64,
    /// Data elements and items read.
    pub elements: u64,
    /// Deepest nesting of sequences seen.
    pub depth: usize,
    /// Image pixel module attributes.
    pub image: ImageGeometry,
    /// Pixel Data.
    pub pixel_data: PixelDataLayout,
}

/// Why a data set's pixel data is refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PixelDataProblem {
    /// A Type 1 attribute of the Image Pixel module is missing.
    Missing(&'static str),
    /// The attributes contradict each other or the pixel data.
    Inconsistent(String),
    /// The decoded pixel data would be larger than the limit.
    TooLarge {
        /// Decoded size in bytes.
        bytes: u64,
        /// The limit in bytes.
        limit: u64,
    },
}

impl std::fmt::Display for PixelDataProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(attribute) => write!(f, "required attribute {attribute} missing"),
            Self::Inconsistent(reason) => f.write_str(reason),
            Self::TooLarge { bytes, limit } => write!(
                f,
                "decoded pixel data of {} MiB above the limit of {} MiB (limits.max_decoded_mib)",
                bytes >> 20,
                limit >> 20
            ),
        }
    }
}

impl Scanned {
    /// Bytes of the pixel data once decoded (stored values, as many bytes
    /// per sample as Bits Allocated needs); `None` without pixel data or
    /// without the attributes that size it.
    pub fn decoded_bytes(&self) -> Option<u64> {
        if self.pixel_data == PixelDataLayout::Absent {
            return None;
        }
        let g = &self.image;
        let samples = u64::from(g.rows?)
            .saturating_mul(u64::from(g.columns?))
            .saturating_mul(g.number_of_frames.unwrap_or(1))
            .saturating_mul(u64::from(g.samples_per_pixel?));
        let bits = u64::from(g.bits_allocated?);
        Some(samples.saturating_mul(bits).div_ceil(8))
    }

    /// Check, before any decoding, that the pixel data can be what the
    /// image pixel module says (native syntaxes: its length covers Rows ×
    /// Columns × Number of Frames × Samples per Pixel × Bits Allocated) and
    /// that its decoded size is within `limits`. Data sets without Pixel
    /// Data pass.
    pub fn check_pixel_data(&self, limits: &Limits) -> std::result::Result<(), PixelDataProblem> {
        if self.pixel_data == PixelDataLayout::Absent {
            return Ok(());
        }
        let g = &self.image;
        let rows = g.rows.ok_or(PixelDataProblem::Missing("Rows"))?;
        let columns = g.columns.ok_or(PixelDataProblem::Missing("Columns"))?;
        let bits = g
            .bits_allocated
            .ok_or(PixelDataProblem::Missing("BitsAllocated"))?;
        let samples = g
            .samples_per_pixel
            .ok_or(PixelDataProblem::Missing("SamplesPerPixel"))?;
        let frames = g.number_of_frames.unwrap_or(1);
        if rows == 0 || columns == 0 || frames == 0 || samples == 0 || bits == 0 {
            return Err(PixelDataProblem::Inconsistent(format!(
                "empty image: Rows {rows}, Columns {columns}, Number of Frames {frames}, Samples per Pixel {samples}, Bits Allocated {bits}"
            )));
        }
        let decoded = self.decoded_bytes().unwrap_or(u64::MAX);
        if decoded > limits.max_decoded_bytes {
            return Err(PixelDataProblem::TooLarge {
                bytes: decoded,
                limit: limits.max_decoded_bytes,
            });
        }
        if let PixelDataLayout::Native { length } = self.pixel_data {
            // YBR_*_422 carries two samples per pixel natively, 420 one
            // and a half (PS3.3 C.7.6.3.1.2).
            let pixels = u64::from(rows) * u64::from(columns) * frames;
            let sampled = match g.photometric.as_deref() {
                Some("YBR_FULL_422" | "YBR_PARTIAL_422") if samples == 3 => pixels * 2,
                Some("YBR_PARTIAL_420") if samples == 3 => pixels * 3 / 2,
                _ => pixels * u64::from(samples),
            };
            let needed = (sampled * u64::from(bits)).div_ceil(8);
            if length < needed {
                return Err(PixelDataProblem::Inconsistent(format!(
                    "Pixel Data holds {length} bytes, {frames} frame(s) of {rows}x{columns}x{samples} at {bits} bits need {needed}"
                )));
            }
        }
        Ok(())
    }
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_DELIMITER: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: Tag = Tag(0xFFFE, 0xE0DD);
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
/// Longest file meta element we read.
const MAX_META_VALUE: u32 = 64 * 1024;

/// Where the bytes come from: the file itself, or its inflated data set.
trait Input {
    /// Fill `buf`; `Ok(false)` at a clean end before the first byte.
    fn read_or_end(&mut self, buf: &mut [u8]) -> std::io::Result<bool>;
    /// Skip `n` bytes that [`Input::remaining`] allows.
    fn skip(&mut self, n: u64) -> std::io::Result<()>;
    /// Bytes read so far.
    fn position(&self) -> u64;
    /// Bytes left, when known.
    fn remaining(&self) -> Option<u64>;
}

struct FileInput {
    reader: BufReader<File>,
    position: u64,
    length: u64,
}

impl Input for FileInput {
    fn read_or_end(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        read_or_end(&mut self.reader, buf, &mut self.position)
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let n_i64 = i64::try_from(n).map_err(std::io::Error::other)?;
        self.reader.seek_relative(n_i64)?;
        self.position += n;
        Ok(())
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn remaining(&self) -> Option<u64> {
        Some(self.length.saturating_sub(self.position))
    }
}

/// A data set held in memory (a C-FIND identifier).
struct SliceInput<'a> {
    bytes: &'a [u8],
    position: u64,
}

impl Input for SliceInput<'_> {
    fn read_or_end(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let start = usize::try_from(self.position).unwrap_or(usize::MAX);
        let rest = self.bytes.get(start..).unwrap_or_default();
        if rest.is_empty() && !buf.is_empty() {
            return Ok(false);
        }
        let Some(chunk) = rest.get(..buf.len()) else {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        };
        buf.copy_from_slice(chunk);
        self.position += buf.len() as u64;
        Ok(true)
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        if self.remaining().is_some_and(|r| r < n) {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.position += n;
        Ok(())
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn remaining(&self) -> Option<u64> {
        Some((self.bytes.len() as u64).saturating_sub(self.position))
    }
}

struct InflatedInput<R: Read> {
    reader: R,
    position: u64,
}

impl<R: Read> Input for InflatedInput<R> {
    fn read_or_end(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        read_or_end(&mut self.reader, buf, &mut self.position)
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut (&mut self.reader).take(n), &mut std::io::sink())?;
        self.position += copied;
        if copied < n {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn remaining(&self) -> Option<u64> {
        None
    }
}

fn read_or_end(
    reader: &mut impl Read,
    buf: &mut [u8],
    position: &mut u64,
) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                filled += n;
                *position += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The encoding of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    ImplicitLe,
    ExplicitLe,
    ExplicitBe,
}

impl Encoding {
    fn of(transfer_syntax: &str) -> (Self, bool) {
        match transfer_syntax {
            "1.2.840.10008.1.2" => (Self::ImplicitLe, false),
            "1.2.840.10008.1.2.2" => (Self::ExplicitBe, false),
            "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95" => (Self::ExplicitLe, true),
            _ => (Self::ExplicitLe, false),
        }
    }

    fn u16(self, b: [u8; 2]) -> u16 {
        match self {
            Self::ExplicitBe => u16::from_be_bytes(b),
            _ => u16::from_le_bytes(b),
        }
    }

    fn u32(self, b: [u8; 4]) -> u32 {
        match self {
            Self::ExplicitBe => u32::from_be_bytes(b),
            _ => u32::from_le_bytes(b),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The top-level data set or the data set of an item.
    Dataset,
    /// A sequence: items until its end or its delimiter.
    Sequence,
    /// Encapsulated pixel data: fragments until the sequence delimiter.
    Fragments,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    kind: Kind,
    /// Where a defined length ends.
    end: Option<u64>,
    /// Contents of an undefined-length UN are implicit VR little endian
    /// (PS3.5 §6.2.2).
    implicit: bool,
}

/// Scan a Part 10 file (preamble optional) against `limits`.
///
/// Errors: [`Error::Malformed`] for a structural fault (with the byte
/// offset in the data set), [`Error::Limit`] when a limit is exceeded,
/// [`Error::Open`] when the file cannot be read or has no file meta group.
pub fn scan_file(path: impl AsRef<Path>, limits: &Limits) -> Result<Scanned> {
    let path = path.as_ref();
    let mut input = open_input(path)?;
    let transfer_syntax = read_meta_group(&mut input, path)?.transfer_syntax;
    let (encoding, deflated) = Encoding::of(&transfer_syntax);
    let mut scanned = Scanned {
        transfer_syntax,
        dataset_bytes: 0,
        elements: 0,
        depth: 0,
        image: ImageGeometry::default(),
        pixel_data: PixelDataLayout::Absent,
    };
    let start = input.position;
    if deflated {
        let decoder = flate2::bufread::DeflateDecoder::new(input.reader);
        // One byte more than the limit tells "larger than the limit" from
        // "exactly the limit".
        let capped = decoder.take(limits.max_decoded_bytes.saturating_add(1));
        let mut inflated = InflatedInput {
            reader: capped,
            position: 0,
        };
        let result = walk(&mut inflated, encoding, limits, &mut scanned);
        if inflated.position > limits.max_decoded_bytes {
            return Err(Error::Limit {
                path: path.to_path_buf(),
                limit: "max_decoded_bytes",
                reason: format!(
                    "deflated data set inflates to more than {} MiB",
                    limits.max_decoded_bytes >> 20
                ),
            });
        }
        result.map_err(|fault| fault.into_error(path, 0))?;
        scanned.dataset_bytes = inflated.position;
    } else {
        walk(&mut input, encoding, limits, &mut scanned)
            .map_err(|fault| fault.into_error(path, start))?;
        scanned.dataset_bytes = input.position - start;
    }
    Ok(scanned)
}

/// Scan a data set held in memory (no file meta group), encoded in
/// `transfer_syntax` (deflated syntaxes are refused), against `limits`:
/// what comes from a peer outside a file, such as a C-FIND identifier,
/// gets the same structural checks as a stored instance before any parser
/// reads it. `what` names it in errors.
pub fn scan_dataset(
    bytes: &[u8],
    transfer_syntax: &str,
    limits: &Limits,
    what: &Path,
) -> Result<Scanned> {
    let (encoding, deflated) = Encoding::of(transfer_syntax);
    if deflated {
        return Err(Error::Malformed {
            path: what.to_path_buf(),
            offset: 0,
            reason: "a deflated data set is not accepted here".into(),
        });
    }
    let mut scanned = Scanned {
        transfer_syntax: transfer_syntax.to_string(),
        dataset_bytes: 0,
        elements: 0,
        depth: 0,
        image: ImageGeometry::default(),
        pixel_data: PixelDataLayout::Absent,
    };
    let mut input = SliceInput { bytes, position: 0 };
    walk(&mut input, encoding, limits, &mut scanned).map_err(|fault| fault.into_error(what, 0))?;
    scanned.dataset_bytes = input.position;
    Ok(scanned)
}

/// Read only the file meta group of a Part 10 file, with the same bounds
/// as [`scan_file`] (no element longer than 64 KiB, at most 256 elements).
pub fn read_file_meta(path: impl AsRef<Path>) -> Result<crate::FileMeta> {
    let path = path.as_ref();
    let mut input = open_input(path)?;
    read_meta_group(&mut input, path)
}

fn open_input(path: &Path) -> Result<FileInput> {
    let open = |reason: String| Error::Open {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| open(e.to_string()))?;
    let length = file.metadata().map_err(|e| open(e.to_string()))?.len();
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let head = reader.fill_buf().map_err(|e| open(e.to_string()))?;
    let mut position = 0u64;
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        reader.consume(132);
        position = 132;
    } else if head.len() >= 4 && &head[0..4] == b"DICM" {
        reader.consume(4);
        position = 4;
    }
    Ok(FileInput {
        reader,
        position,
        length,
    })
}

/// Read the file meta group (explicit VR little endian, group 0002).
fn read_meta_group(input: &mut FileInput, path: &Path) -> Result<crate::FileMeta> {
    let open = |reason: &str| Error::Open {
        path: path.to_path_buf(),
        reason: format!("no valid file meta information: {reason}"),
    };
    let mut transfer_syntax = None;
    let mut sop_class_uid = String::new();
    let mut sop_instance_uid = String::new();
    let mut elements = 0;
    loop {
        // Peek at the next group number: read it, then step back (a
        // buffer boundary cannot cut the peek short).
        let at = input.position;
        let mut group = [0u8; 2];
        let more = matches!(input.read_or_end(&mut group), Ok(true));
        let back = i64::try_from(input.position - at).unwrap_or(0);
        input
            .reader
            .seek_relative(-back)
            .map_err(|e| open(&e.to_string()))?;
        input.position = at;
        if !more || u16::from_le_bytes(group) != 0x0002 {
            break;
        }
        elements += 1;
        if elements > 256 {
            return Err(open("more than 256 elements"));
        }
        let mut header = [0u8; 8];
        if !input
            .read_or_end(&mut header)
            .map_err(|e| open(&e.to_string()))?
        {
            return Err(open("truncated"));
        }
        let element = u16::from_le_bytes([header[2], header[3]]);
        let vr = VR::from_binary([header[4], header[5]]).ok_or_else(|| open("unknown VR"))?;
        let length = if long_length(vr) {
            let mut l = [0u8; 4];
            input
                .read_or_end(&mut l)
                .map_err(|e| open(&e.to_string()))?;
            u32::from_le_bytes(l)
        } else {
            u32::from(u16::from_le_bytes([header[6], header[7]]))
        };
        if length > MAX_META_VALUE || u64::from(length) > input.remaining().unwrap_or(0) {
            return Err(open("element length past the end of the file"));
        }
        let mut value = vec![0u8; length as usize];
        if !value.is_empty()
            && !input
                .read_or_end(&mut value)
                .map_err(|e| open(&e.to_string()))?
        {
            return Err(open("truncated"));
        }
        let text = || {
            String::from_utf8_lossy(&value)
                .trim_matches(['\0', ' '])
                .to_string()
        };
        match element {
            0x0002 => sop_class_uid = text(),
            0x0003 => sop_instance_uid = text(),
            0x0010 => transfer_syntax = Some(text()),
            _ => {}
        }
    }
    let transfer_syntax = transfer_syntax
        .filter(|t| !t.is_empty())
        .ok_or_else(|| open("no Transfer Syntax UID (0002,0010)"))?;
    Ok(crate::FileMeta {
        sop_class_uid,
        sop_instance_uid,
        transfer_syntax,
    })
}

/// VRs whose explicit encoding has a 4-byte length (PS3.5 §7.1.2).
fn long_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::SV
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::UV
    )
}

/// The size of one value of a fixed-size binary VR (PS3.5 6.2, table
/// 6.2-1): its value length must be a multiple of it.
fn value_size(vr: VR) -> Option<u64> {
    match vr {
        VR::US | VR::SS | VR::OW => Some(2),
        VR::UL | VR::SL | VR::FL | VR::AT | VR::OL | VR::OF => Some(4),
        VR::FD | VR::SV | VR::UV | VR::OD | VR::OV => Some(8),
        _ => None,
    }
}

/// A fault found while walking, before the file is known.
enum Fault {
    Malformed { offset: u64, reason: String },
    Limit { limit: &'static str, reason: String },
}

impl Fault {
    fn into_error(self, path: &Path, start: u64) -> Error {
        match self {
            Self::Malformed { offset, reason } => Error::Malformed {
                path: path.to_path_buf(),
                offset: start + offset,
                reason,
            },
            Self::Limit { limit, reason } => Error::Limit {
                path: path.to_path_buf(),
                limit,
                reason,
            },
        }
    }
}

fn malformed(input: &dyn Input, reason: impl Into<String>) -> Fault {
    Fault::Malformed {
        offset: input.position(),
        reason: reason.into(),
    }
}

fn io_fault(input: &dyn Input, e: &std::io::Error) -> Fault {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        malformed(input, "data set truncated")
    } else {
        malformed(input, format!("cannot read: {e}"))
    }
}

/// Walk the data set with an explicit stack.
fn walk(
    input: &mut dyn Input,
    encoding: Encoding,
    limits: &Limits,
    scanned: &mut Scanned,
) -> std::result::Result<(), Fault> {
    let top_implicit = encoding == Encoding::ImplicitLe;
    let mut stack = vec![Frame {
        kind: Kind::Dataset,
        end: None,
        implicit: top_implicit,
    }];
    let mut depth = 0usize;
    let mut header_bytes = 0u64;
    loop {
        let Some(&frame) = stack.last() else {
            return Ok(());
        };
        if let Some(end) = frame.end {
            let at = input.position();
            if at == end {
                if frame.kind == Kind::Sequence {
                    depth -= 1;
                }
                stack.pop();
                continue;
            }
            if at > end {
                return Err(malformed(input, "element runs past the end of its item"));
            }
        }
        // Items and their delimiters inside an undefined-length UN are
        // little endian whatever the transfer syntax.
        let enc = if frame.implicit {
            Encoding::ImplicitLe
        } else {
            encoding
        };
        let mut tag_bytes = [0u8; 4];
        match input.read_or_end(&mut tag_bytes) {
            Ok(true) => {}
            Ok(false) if stack.len() == 1 => return Ok(()),
            // The last fragment of the top-level pixel data, then the end of
            // the file without the sequence delimiter: a common encoder
            // slip that every reader tolerates. Frames missing are refused
            // by the decoder.
            Ok(false) if stack.len() == 2 && frame.kind == Kind::Fragments => return Ok(()),
            Ok(false) => return Err(malformed(input, "data set truncated inside a sequence")),
            Err(e) => return Err(io_fault(input, &e)),
        }
        let tag = Tag(
            enc.u16([tag_bytes[0], tag_bytes[1]]),
            enc.u16([tag_bytes[2], tag_bytes[3]]),
        );
        scanned.elements += 1;
        if scanned.elements > limits.max_elements {
            return Err(Fault::Limit {
                limit: "max_elements",
                reason: format!("more than {} data elements", limits.max_elements),
            });
        }
        match frame.kind {
            Kind::Sequence | Kind::Fragments => {
                let length = read_u32(input, enc)?;
                match tag {
                    ITEM if frame.kind == Kind::Sequence => {
                        let end = if length == UNDEFINED {
                            None
                        } else {
                            Some(fits(input, &stack, u64::from(length), limits)?)
                        };
                        stack.push(Frame {
                            kind: Kind::Dataset,
                            end,
                            implicit: frame.implicit,
                        });
                    }
                    ITEM => {
                        if length == UNDEFINED {
                            return Err(malformed(
                                input,
                                "pixel data fragment of undefined length",
                            ));
                        }
                        let length = u64::from(length);
                        fits(input, &stack, length, limits)?;
                        if let PixelDataLayout::Encapsulated { items, bytes } =
                            &mut scanned.pixel_data
                        {
                            *items += 1;
                            *bytes += length;
                            if *bytes > limits.max_decoded_bytes {
                                return Err(Fault::Limit {
                                    limit: "max_decoded_bytes",
                                    reason: format!(
                                        "encapsulated pixel data larger than {} MiB",
                                        limits.max_decoded_bytes >> 20
                                    ),
                                });
                            }
                        }
                        input.skip(length).map_err(|e| io_fault(input, &e))?;
                    }
                    SEQUENCE_DELIMITER => {
                        if length != 0 {
                            return Err(malformed(input, "sequence delimiter with a length"));
                        }
                        if frame.end.is_some() {
                            return Err(malformed(
                                input,
                                "sequence delimiter in a sequence of defined length",
                            ));
                        }
                        if frame.kind == Kind::Sequence {
                            depth -= 1;
                        }
                        stack.pop();
                    }
                    other => {
                        return Err(malformed(
                            input,
                            format!("{other} where a sequence item was expected"),
                        ));
                    }
                }
            }
            Kind::Dataset => {
                if tag.group() == 0xFFFE {
                    let length = read_u32(input, enc)?;
                    if tag == ITEM_DELIMITER && stack.len() > 1 && frame.end.is_none() {
                        if length != 0 {
                            return Err(malformed(input, "item delimiter with a length"));
                        }
                        stack.pop();
                        continue;
                    }
                    // A stray item delimiter between top-level elements
                    // carries nothing: skipped, as dicom-rs does.
                    if tag == ITEM_DELIMITER && stack.len() == 1 && length == 0 {
                        continue;
                    }
                    return Err(malformed(input, format!("misplaced delimiter {tag}")));
                }
                let (vr, length) = if enc == Encoding::ImplicitLe {
                    let length = read_u32(input, enc)?;
                    let vr = match StandardDataDictionary.by_tag(tag).map(|e| e.vr()) {
                        Some(VirtualVr::Exact(vr)) => vr,
                        _ => VR::UN,
                    };
                    (vr, length)
                } else {
                    let mut vr_bytes = [0u8; 2];
                    read(input, &mut vr_bytes)?;
                    // A VR this dictionary does not know (a later edition's,
                    // or a broken one) is read as UN with a 4-byte length,
                    // as dicom-rs reads it; its length is checked like any.
                    let vr = VR::from_binary(vr_bytes).unwrap_or(VR::UN);
                    let length = if long_length(vr) {
                        let mut reserved = [0u8; 2];
                        read(input, &mut reserved)?;
                        read_u32(input, enc)?
                    } else {
                        let mut l = [0u8; 2];
                        read(input, &mut l)?;
                        u32::from(enc.u16(l))
                    };
                    (vr, length)
                };
                let top = stack.len() == 1;
                if length == UNDEFINED {
                    // Encapsulated pixel data, at the top level or in an
                    // item (an Icon Image Sequence of a compressed file).
                    if tag == PIXEL_DATA {
                        if top {
                            scanned.pixel_data =
                                PixelDataLayout::Encapsulated { items: 0, bytes: 0 };
                        }
                        stack.push(Frame {
                            kind: Kind::Fragments,
                            end: None,
                            implicit: frame.implicit,
                        });
                        continue;
                    }
                    if vr == VR::SQ || vr == VR::UN || enc == Encoding::ImplicitLe {
                        depth = enter(input, depth, limits)?;
                        scanned.depth = scanned.depth.max(depth);
                        stack.push(Frame {
                            kind: Kind::Sequence,
                            end: None,
                            implicit: frame.implicit || vr == VR::UN,
                        });
                        continue;
                    }
                    return Err(malformed(
                        input,
                        format!("undefined length on {tag} of VR {vr}"),
                    ));
                }
                let length = u64::from(length);
                if let Some(size) = value_size(vr)
                    && length % size != 0
                {
                    // dicom-rs reads such a value short and then parses
                    // the rest of the data set out of step: a 1.5 KB file
                    // took it 20 s of CPU (debug build) before it failed.
                    return Err(malformed(
                        input,
                        format!(
                            "{tag} of VR {vr}: length {length} is not a multiple of its {size}-byte values (PS3.5 6.2)"
                        ),
                    ));
                }
                let end = fits(input, &stack, length, limits)?;
                if vr == VR::SQ {
                    depth = enter(input, depth, limits)?;
                    scanned.depth = scanned.depth.max(depth);
                    stack.push(Frame {
                        kind: Kind::Sequence,
                        end: Some(end),
                        implicit: frame.implicit,
                    });
                    continue;
                }
                let pixels =
                    top && matches!(tag.element(), 0x0008..=0x0010) && tag.group() == 0x7FE0;
                if !pixels {
                    // Everything but the pixel data is parsed into memory:
                    // bounded too.
                    header_bytes += length;
                    if header_bytes > limits.max_decoded_bytes {
                        return Err(Fault::Limit {
                            limit: "max_decoded_bytes",
                            reason: format!(
                                "attributes other than pixel data larger than {} MiB",
                                limits.max_decoded_bytes >> 20
                            ),
                        });
                    }
                }
                if top {
                    if pixels {
                        // Pixel Data, Float Pixel Data or Double Float
                        // Pixel Data (PS3.3 C.7.6.3).
                        scanned.pixel_data = PixelDataLayout::Native { length };
                    }
                    if let Some(()) = read_image_value(input, enc, tag, length, &mut scanned.image)?
                    {
                        continue;
                    }
                }
                input.skip(length).map_err(|e| io_fault(input, &e))?;
            }
        }
    }
}

/// Enter one more sequence level.
fn enter(input: &dyn Input, depth: usize, limits: &Limits) -> std::result::Result<usize, Fault> {
    let depth = depth + 1;
    if depth > limits.max_depth {
        return Err(Fault::Limit {
            limit: "max_depth",
            reason: format!(
                "sequences nested more than {} deep (at byte {})",
                limits.max_depth,
                input.position()
            ),
        });
    }
    Ok(depth)
}

/// Check that `length` bytes from here stay within the file and every
/// enclosing item and sequence; return where they end.
fn fits(
    input: &dyn Input,
    stack: &[Frame],
    length: u64,
    limits: &Limits,
) -> std::result::Result<u64, Fault> {
    let at = input.position();
    let end = at.saturating_add(length);
    if let Some(remaining) = input.remaining()
        && length > remaining
    {
        return Err(malformed(
            input,
            format!("length {length} past the end of the file ({remaining} bytes left)"),
        ));
    }
    if input.remaining().is_none() && end > limits.max_decoded_bytes {
        return Err(Fault::Limit {
            limit: "max_decoded_bytes",
            reason: format!(
                "length {length} past the inflated size limit of {} MiB",
                limits.max_decoded_bytes >> 20
            ),
        });
    }
    if let Some(enclosing) = stack.iter().rev().find_map(|f| f.end)
        && end > enclosing
    {
        return Err(malformed(
            input,
            format!("length {length} past the end of its enclosing item or sequence"),
        ));
    }
    Ok(end)
}

fn read(input: &mut dyn Input, buf: &mut [u8]) -> std::result::Result<(), Fault> {
    match input.read_or_end(buf) {
        Ok(true) => Ok(()),
        Ok(false) => Err(malformed(input, "data set truncated")),
        Err(e) => Err(io_fault(input, &e)),
    }
}

fn read_u32(input: &mut dyn Input, enc: Encoding) -> std::result::Result<u32, Fault> {
    let mut b = [0u8; 4];
    read(input, &mut b)?;
    Ok(enc.u32(b))
}

/// Read the value of a top-level image pixel module attribute into
/// `image`; `None` (value not consumed) for other tags.
fn read_image_value(
    input: &mut dyn Input,
    enc: Encoding,
    tag: Tag,
    length: u64,
    image: &mut ImageGeometry,
) -> std::result::Result<Option<()>, Fault> {
    let us = |slot: &mut Option<u16>, bytes: &[u8]| {
        if bytes.len() >= 2 {
            *slot = Some(enc.u16([bytes[0], bytes[1]]));
        }
    };
    if tag.group() != 0x0028 || length > 64 {
        return Ok(None);
    }
    let mut value = [0u8; 64];
    let value = &mut value[..length as usize];
    match tag.element() {
        0x0010 | 0x0011 | 0x0100 | 0x0002 | 0x0008 | 0x0004 => read(input, value)?,
        _ => return Ok(None),
    }
    let text = || {
        String::from_utf8_lossy(value)
            .trim_matches(['\0', ' '])
            .to_string()
    };
    match tag.element() {
        0x0010 => us(&mut image.rows, value),
        0x0011 => us(&mut image.columns, value),
        0x0100 => us(&mut image.bits_allocated, value),
        0x0002 => us(&mut image.samples_per_pixel, value),
        // The first value, as dicom-rs reads it: "1000\\1" is 1000 frames
        // (a value that is no number: unknown, and the decoder refuses it).
        0x0008 => {
            image.number_of_frames = text()
                .split('\\')
                .next()
                .and_then(|v| v.trim().parse::<u64>().ok());
        }
        _ => image.photometric = Some(text()),
    }
    Ok(Some(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigie_test_support::hostile::{element, nested};

    fn part10(transfer_syntax: &str, dataset: &[u8]) -> tempfile::NamedTempFile {
        let mut ts = transfer_syntax.as_bytes().to_vec();
        if ts.len() % 2 == 1 {
            ts.push(0);
        }
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend(element(0x0002, 0x0010, b"UI", &ts));
        bytes.extend_from_slice(dataset);
        let mut file = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        std::io::Write::write_all(&mut file, &bytes).unwrap_or_else(|e| panic!("{e}"));
        file
    }

    const EXPLICIT: &str = "1.2.840.10008.1.2.1";

    #[test]
    fn nesting_is_bounded_without_recursion() {
        let ok = part10(EXPLICIT, &nested(8));
        let scanned = scan_file(ok.path(), &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scanned.depth, 8);
        let deep = part10(EXPLICIT, &nested(2000));
        assert!(matches!(
            scan_file(deep.path(), &Limits::default()),
            Err(Error::Limit {
                limit: "max_depth",
                ..
            })
        ));
    }

    #[test]
    fn lengths_past_the_end_unknown_vrs_and_truncation_are_malformed() {
        let mut huge = element(0x0010, 0x0010, b"PN", b"DOE^J ");
        huge.extend_from_slice(&[0x10, 0x00, 0x20, 0x00, b'U', b'T', 0, 0]);
        huge.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        huge.extend_from_slice(b"abcd");
        let file = part10(EXPLICIT, &huge);
        assert!(matches!(
            scan_file(file.path(), &Limits::default()),
            Err(Error::Malformed { .. })
        ));
        let unknown = [0x10, 0x00, 0x20, 0x00, b'Z', b'Z', 4, 0, 1, 2, 3, 4];
        let file = part10(EXPLICIT, &unknown);
        assert!(matches!(
            scan_file(file.path(), &Limits::default()),
            Err(Error::Malformed { reason, .. }) if reason.contains("past the end")
        ));
        let mut truncated = nested(3);
        truncated.truncate(truncated.len() - 5);
        let file = part10(EXPLICIT, &truncated);
        assert!(matches!(
            scan_file(file.path(), &Limits::default()),
            Err(Error::Malformed { .. })
        ));
    }

    /// Found in review: real files that dicom-rs reads must pass. An Icon
    /// Image Sequence with encapsulated pixel data inside its item, a
    /// stray top-level item delimiter, and top-level pixel data whose final
    /// sequence delimiter is missing at the end of the file.
    #[test]
    fn what_real_files_contain_passes() {
        let fragments = |delimited: bool| {
            let mut out = vec![
                0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
            ];
            out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
            out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 4, 0, 0, 0, 1, 2, 3, 4]);
            if delimited {
                out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            }
            out
        };
        let mut icon = vec![
            0x88, 0x00, 0x00, 0x02, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        icon.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        icon.extend(fragments(true));
        icon.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        icon.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        icon.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        icon.extend(element(0x0028, 0x0008, b"IS", b"3\\1 "));
        icon.extend(fragments(false));
        let file = part10("1.2.840.10008.1.2.4.50", &icon);
        let scanned = scan_file(file.path(), &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scanned.image.number_of_frames, Some(3), "first value");
        assert_eq!(
            scanned.pixel_data,
            PixelDataLayout::Encapsulated { items: 2, bytes: 4 },
            "the top-level pixel data, not the icon's"
        );
    }

    #[test]
    fn pixel_data_must_cover_the_image_and_stay_within_the_decoded_limit() {
        let mut dataset = Vec::new();
        dataset.extend(element(0x0028, 0x0002, b"US", &1u16.to_le_bytes()));
        dataset.extend(element(0x0028, 0x0010, b"US", &4u16.to_le_bytes()));
        dataset.extend(element(0x0028, 0x0011, b"US", &4u16.to_le_bytes()));
        dataset.extend(element(0x0028, 0x0100, b"US", &16u16.to_le_bytes()));
        let mut short = dataset.clone();
        short.extend(element(0x7FE0, 0x0010, b"OW", &[0u8; 30]));
        let file = part10(EXPLICIT, &short);
        let scanned = scan_file(file.path(), &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            scanned.check_pixel_data(&Limits::default()),
            Err(PixelDataProblem::Inconsistent(_))
        ));
        let mut full = dataset;
        full.extend(element(0x7FE0, 0x0010, b"OW", &[0u8; 32]));
        let file = part10(EXPLICIT, &full);
        let scanned = scan_file(file.path(), &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scanned.check_pixel_data(&Limits::default()), Ok(()));
        let tiny = Limits {
            max_decoded_bytes: 16,
            ..Limits::default()
        };
        assert!(matches!(
            scanned.check_pixel_data(&tiny),
            Err(PixelDataProblem::TooLarge { bytes: 32, .. })
        ));
    }

    #[test]
    fn a_deflate_bomb_is_refused_while_inflating() {
        use std::io::Write;
        let mut dataset = Vec::new();
        dataset.extend(element(0x7FE0, 0x0010, b"OB", &vec![0u8; 4 << 20]));
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder
            .write_all(&dataset)
            .unwrap_or_else(|e| panic!("{e}"));
        let compressed = encoder.finish().unwrap_or_else(|e| panic!("{e}"));
        assert!(compressed.len() < 64 << 10);
        let file = part10("1.2.840.10008.1.2.1.99", &compressed);
        let small = Limits {
            max_decoded_bytes: 1 << 20,
            ..Limits::default()
        };
        assert!(matches!(
            scan_file(file.path(), &small),
            Err(Error::Limit { .. })
        ));
        let scanned = scan_file(file.path(), &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scanned.dataset_bytes, dataset.len() as u64);
        let truncated = part10(
            "1.2.840.10008.1.2.1.99",
            &compressed[..compressed.len() / 2],
        );
        assert!(scan_file(truncated.path(), &Limits::default()).is_err());
    }
}
