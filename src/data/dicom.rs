//! DICOM input: the first frame of a DICOM image rendered to 8-bit RGB for display and detection.
//!
//! `dicom-object` parses the file and `dicom-pixeldata` runs the compressed codecs (RLE, JPEG,
//! JPEG 2000); everything after that is done here so that the rendering follows the standard
//! exactly and is the same for every transfer syntax:
//!
//! * greyscale (MONOCHROME1/2): Modality LUT (Rescale Slope/Intercept), then the first Window
//!   Center/Width with the VOI LUT Function it names (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT,
//!   SIGMOID), else a min/max stretch of the frame; MONOCHROME1 is inverted so that it looks like
//!   MONOCHROME2; the grey level is replicated to three channels. Modality and VOI LUT
//!   *sequences* (tables) are not applied.
//! * RGB and YBR: YBR_FULL and YBR_FULL_422 are converted to RGB (ITU-R BT.601 full range);
//!   JPEG and JPEG 2000 codecs undo their own colour transform (YBR_RCT, YBR_ICT). Samples wider
//!   than 8 bits are scaled by `255 / (2^BitsStored - 1)`.
//! * PALETTE COLOR: looked up in the file's red/green/blue palette tables, segmented ones included.
//!
//! Levels are rounded half to even, as numpy's `rint` does in the fixture script that makes the
//! reference renderings (`tests/fixtures/make_dicom_set.py`).
//!
//! Rows x Columns is checked against the pixel limit before any pixel data is decoded, and every
//! failure is an [`ImageLoadError`]; the whole decoder runs under `catch_unwind` because
//! third-party codecs may panic on corrupt data, with the panic hook silenced on that thread
//! meanwhile, so nothing but the error reaches the terminal.

use std::borrow::Cow;

use dicom_object::{DefaultDicomObject, OpenFileOptions, Tag};
use dicom_pixeldata::PixelDecoder;
use image::RgbImage;

use super::image_io::ImageLoadError;

const FORMAT: &str = "DICOM";

const MODALITY: Tag = Tag(0x0008, 0x0060);
const SAMPLES_PER_PIXEL: Tag = Tag(0x0028, 0x0002);
const PHOTOMETRIC: Tag = Tag(0x0028, 0x0004);
const NUMBER_OF_FRAMES: Tag = Tag(0x0028, 0x0008);
const ROWS: Tag = Tag(0x0028, 0x0010);
const COLUMNS: Tag = Tag(0x0028, 0x0011);
const BITS_ALLOCATED: Tag = Tag(0x0028, 0x0100);
const BITS_STORED: Tag = Tag(0x0028, 0x0101);
const HIGH_BIT: Tag = Tag(0x0028, 0x0102);
const PIXEL_REPRESENTATION: Tag = Tag(0x0028, 0x0103);
const PLANAR_CONFIGURATION: Tag = Tag(0x0028, 0x0006);
const WINDOW_CENTER: Tag = Tag(0x0028, 0x1050);
const WINDOW_WIDTH: Tag = Tag(0x0028, 0x1051);
const RESCALE_INTERCEPT: Tag = Tag(0x0028, 0x1052);
const RESCALE_SLOPE: Tag = Tag(0x0028, 0x1053);
const VOI_LUT_FUNCTION: Tag = Tag(0x0028, 0x1056);
/// Red, green and blue Palette Color Lookup Table Descriptor, Data and Segmented Data.
const PALETTE_DESCRIPTORS: [Tag; 3] = [
    Tag(0x0028, 0x1101),
    Tag(0x0028, 0x1102),
    Tag(0x0028, 0x1103),
];
const PALETTE_DATA: [Tag; 3] = [
    Tag(0x0028, 0x1201),
    Tag(0x0028, 0x1202),
    Tag(0x0028, 0x1203),
];
const SEGMENTED_PALETTE_DATA: [Tag; 3] = [
    Tag(0x0028, 0x1221),
    Tag(0x0028, 0x1222),
    Tag(0x0028, 0x1223),
];
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);
const FLOAT_PIXEL_DATA: Tag = Tag(0x7FE0, 0x0008);
const DOUBLE_FLOAT_PIXEL_DATA: Tag = Tag(0x7FE0, 0x0009);

const TS_RLE: &str = "1.2.840.10008.1.2.5";
const TS_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";
const TS_ENCAPSULATED: &str = "1.2.840.10008.1.2.1.98";

/// Whether `bytes` is a DICOM file: the "DICM" magic after the 128-byte preamble (PS3.10 7.1).
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM".as_slice())
}

/// What a DICOM file holds, read from its header without decoding pixels (for the GUI).
#[derive(Debug, Clone, PartialEq)]
pub struct DicomInfo {
    pub modality: Option<String>,
    pub photometric: String,
    pub rows: u32,
    pub columns: u32,
    pub frames: u32,
    pub bits_stored: u16,
    /// First Window Center and Width, if the file has them.
    pub window: Option<(f64, f64)>,
    /// Transfer syntax UID; [`transfer_syntax_name`] gives its name.
    pub transfer_syntax: String,
}

/// Reads a DICOM file's header, stopping before the pixel data.
pub fn read_info(bytes: &[u8]) -> Result<DicomInfo, ImageLoadError> {
    guarded(|| {
        let obj = parse(bytes, true)?;
        let h = Header::read(&obj)?;
        Ok(DicomInfo {
            modality: h.modality.clone(),
            photometric: h.photometric.clone(),
            rows: h.rows,
            columns: h.columns,
            frames: h.frames,
            bits_stored: h.bits_stored,
            window: h.window.map(|w| (w.centre, w.width)),
            transfer_syntax: h.transfer_syntax.clone(),
        })
    })
}

/// Renders the first frame of a DICOM image to 8-bit RGB (see the module notes for the rules).
///
/// Images of more than `max_pixels` pixels are refused with [`ImageLoadError::TooLarge`] before
/// their pixel data is decoded.
pub fn decode_dicom(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageLoadError> {
    guarded(|| {
        let obj = parse(bytes, false)?;
        let h = Header::read(&obj)?;
        h.check_size(max_pixels)?;
        h.check_supported()?;
        let frame = first_frame(&obj, &h)?;
        render(&obj, &h, &frame)
    })
}

/// A greyscale DICOM frame as modality values (stored samples through Rescale Slope and
/// Intercept: Hounsfield units for CT), for window/level on the real values instead of the 8-bit
/// rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct GreyValues {
    pub width: u32,
    pub height: u32,
    /// Row-major modality values.
    pub values: Vec<f32>,
    /// The file's first window, if it has one.
    pub window: Option<Window>,
    /// MONOCHROME1: higher values are darker.
    pub invert: bool,
    /// The smallest and largest value in the frame.
    pub range: (f32, f32),
    pub modality: Option<String>,
}

impl GreyValues {
    /// Grey levels through `window` (the file's VOI function; LINEAR where it has none),
    /// inverted for MONOCHROME1, as [`decode_dicom`] renders them.
    pub fn levels(&self, centre: f64, width: f64) -> Vec<u8> {
        let window = Window {
            centre,
            width,
            function: self.window.map_or(VoiFunction::Linear, |w| w.function),
        };
        self.values
            .iter()
            .map(|&x| {
                let g = to_u8(window.level(f64::from(x)));
                if self.invert {
                    255 - g
                } else {
                    g
                }
            })
            .collect()
    }

    /// The window the image opens with: the file's, else its whole range.
    pub fn default_window(&self) -> (f64, f64) {
        self.window.map_or_else(
            || {
                let (lo, hi) = (f64::from(self.range.0), f64::from(self.range.1));
                ((lo + hi) / 2.0 + 0.5, (hi - lo).max(1.0) + 1.0)
            },
            |w| (w.centre, w.width),
        )
    }
}

/// The modality values of a greyscale (MONOCHROME1/2) DICOM's first frame; `None` for colour
/// and palette images. The same checks and limits as [`decode_dicom`].
pub fn decode_grey_values(
    bytes: &[u8],
    max_pixels: u64,
) -> Result<Option<GreyValues>, ImageLoadError> {
    guarded(|| {
        let obj = parse(bytes, false)?;
        let h = Header::read(&obj)?;
        h.check_size(max_pixels)?;
        h.check_supported()?;
        if !matches!(h.photometric.as_str(), "MONOCHROME1" | "MONOCHROME2") {
            return Ok(None);
        }
        let frame = first_frame(&obj, &h)?;
        let values: Vec<f32> = (0..h.pixels())
            .map(|i| (frame.sample(i, &h) as f64 * h.slope + h.intercept) as f32)
            .collect();
        let range = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        Ok(Some(GreyValues {
            width: h.columns,
            height: h.rows,
            values,
            window: h.window,
            invert: h.photometric == "MONOCHROME1",
            range,
            modality: h.modality.clone(),
        }))
    })
}

/// The name of a transfer syntax UID, for messages; `None` for one roiscope does not know.
pub fn transfer_syntax_name(uid: &str) -> Option<&'static str> {
    Some(match uid {
        "1.2.840.10008.1.2" => "Implicit VR Little Endian",
        "1.2.840.10008.1.2.1" => "Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.98" => "Encapsulated Uncompressed Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.2" => "Explicit VR Big Endian",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline (Process 1)",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended (Process 2 & 4)",
        "1.2.840.10008.1.2.4.57" => "JPEG Lossless (Process 14)",
        "1.2.840.10008.1.2.4.70" => "JPEG Lossless (Process 14, Selection Value 1)",
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Near-Lossless",
        "1.2.840.10008.1.2.4.90" => "JPEG 2000 Lossless",
        "1.2.840.10008.1.2.4.91" => "JPEG 2000",
        "1.2.840.10008.1.2.4.92" => "JPEG 2000 Part 2 Multi-component Lossless",
        "1.2.840.10008.1.2.4.93" => "JPEG 2000 Part 2 Multi-component",
        "1.2.840.10008.1.2.4.94" => "JPIP Referenced",
        "1.2.840.10008.1.2.4.95" => "JPIP Referenced Deflate",
        "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.100.1" => "MPEG2 video",
        "1.2.840.10008.1.2.4.101" | "1.2.840.10008.1.2.4.101.1" => "MPEG2 video",
        "1.2.840.10008.1.2.4.102"
        | "1.2.840.10008.1.2.4.102.1"
        | "1.2.840.10008.1.2.4.103"
        | "1.2.840.10008.1.2.4.103.1"
        | "1.2.840.10008.1.2.4.104"
        | "1.2.840.10008.1.2.4.104.1"
        | "1.2.840.10008.1.2.4.105"
        | "1.2.840.10008.1.2.4.105.1"
        | "1.2.840.10008.1.2.4.106"
        | "1.2.840.10008.1.2.4.106.1" => "MPEG-4 AVC/H.264 video",
        "1.2.840.10008.1.2.4.107" | "1.2.840.10008.1.2.4.108" => "HEVC/H.265 video",
        "1.2.840.10008.1.2.4.110" => "JPEG XL Lossless",
        "1.2.840.10008.1.2.4.111" => "JPEG XL JPEG Recompression",
        "1.2.840.10008.1.2.4.112" => "JPEG XL",
        "1.2.840.10008.1.2.4.201" => "High-Throughput JPEG 2000 Lossless",
        "1.2.840.10008.1.2.4.202" => "High-Throughput JPEG 2000 (RPCL) Lossless",
        "1.2.840.10008.1.2.4.203" => "High-Throughput JPEG 2000",
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        _ => return None,
    })
}

/// Transfer syntaxes that this build has no decoder for (dicom-pixeldata is built without
/// CharLS, JPEG XL and video codecs); refused by name rather than with a codec error.
fn known_unsupported(uid: &str) -> bool {
    matches!(
        uid,
        "1.2.840.10008.1.2.4.80"
            | "1.2.840.10008.1.2.4.81"
            | "1.2.840.10008.1.2.4.94"
            | "1.2.840.10008.1.2.4.95"
    ) || uid.starts_with("1.2.840.10008.1.2.4.10")
        || uid.starts_with("1.2.840.10008.1.2.4.11")
}

/// "JPEG-LS Lossless (1.2.840.10008.1.2.4.80)", or the bare UID when unknown.
fn describe_ts(uid: &str) -> String {
    match transfer_syntax_name(uid) {
        Some(name) => format!("{name} ({uid})"),
        None => format!("transfer syntax {uid}"),
    }
}

fn corrupt(detail: impl Into<String>) -> ImageLoadError {
    ImageLoadError::Decode {
        format: FORMAT,
        detail: detail.into(),
    }
}

fn unsupported(detail: impl Into<String>) -> ImageLoadError {
    ImageLoadError::Unsupported {
        format: FORMAT,
        detail: detail.into(),
    }
}

/// An error and its causes on one line: the dicom-rs errors keep the useful part in `source()`.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Runs `f`, turning a panic inside the parser or a codec into a decode error.
fn guarded<T>(f: impl FnOnce() -> Result<T, ImageLoadError>) -> Result<T, ImageLoadError> {
    match super::image_io::catch_quietly(f) {
        Ok(result) => result,
        Err(panic) => {
            let msg = super::image_io::panic_message(&*panic)
                .unwrap_or_else(|| "the DICOM decoder failed".into());
            Err(corrupt(format!("decoder panicked: {msg}")))
        }
    }
}

fn parse(bytes: &[u8], header_only: bool) -> Result<DefaultDicomObject, ImageLoadError> {
    if !is_dicom(bytes) {
        return Err(corrupt(
            "no \"DICM\" marker after the 128-byte preamble (not a DICOM Part 10 file)",
        ));
    }
    // Tags and lengths first: every length bounded by the file's size, undefined-length UN
    // sequences (which the parser misreads) cut out, implicit VR under an explicit transfer
    // syntax recognised.
    let scan = super::dicom_scan::scan(bytes, header_only).map_err(corrupt)?;
    let cut;
    let bytes = if scan.cut.is_empty() {
        bytes
    } else {
        cut = super::dicom_scan::without(bytes, &scan.cut);
        &cut[..]
    };
    if scan.implicit_despite_ts {
        // The meta group keeps the real transfer syntax (the codec); the data set is read as
        // implicit VR little endian, as pydicom does.
        let meta = dicom_object::FileMetaTable::from_reader(&bytes[128..])
            .map_err(|e| corrupt(error_chain(&e)))?;
        let implicit = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let dataset = dicom_object::InMemDicomObject::read_dataset_with_ts(
            &bytes[scan.dataset_start..],
            &implicit,
        )
        .map_err(|e| corrupt(error_chain(&e)))?;
        return Ok(dataset.with_exact_meta(meta));
    }
    let mut options =
        OpenFileOptions::new().read_preamble(dicom_object::file::ReadPreamble::Always);
    if header_only {
        options = options.read_until(PIXEL_DATA);
    }
    options
        .from_reader(bytes)
        .map_err(|e| corrupt(error_chain(&e)))
}

/// A VOI LUT Function (PS3.3 C.11.2.1.3); unknown names are treated as LINEAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

impl VoiFunction {
    fn from_name(name: &str) -> Self {
        match name.trim().to_ascii_uppercase().as_str() {
            "LINEAR_EXACT" => VoiFunction::LinearExact,
            "SIGMOID" => VoiFunction::Sigmoid,
            _ => VoiFunction::Linear,
        }
    }
}

/// A window (centre, width) and the function that maps it to display levels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub centre: f64,
    pub width: f64,
    pub function: VoiFunction,
}

impl Window {
    /// The display level in `0.0..=255.0` (unrounded) for a modality value `x`.
    ///
    /// LINEAR follows C.11.2.1.2.1 literally: the window covers `width - 1` modality steps
    /// centred on `centre - 0.5`, so width 1 is a threshold at `centre - 0.5` (widths below 1 are
    /// not allowed and are taken as 1). LINEAR_EXACT and SIGMOID follow C.11.2.1.3.
    pub fn level(&self, x: f64) -> f64 {
        let (c, w) = (self.centre, self.width);
        match self.function {
            VoiFunction::Linear => {
                let w = w.max(1.0);
                if x <= c - 0.5 - (w - 1.0) / 2.0 {
                    0.0
                } else if x > c - 0.5 + (w - 1.0) / 2.0 {
                    255.0
                } else {
                    ((x - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
                }
            }
            VoiFunction::LinearExact => {
                if x <= c - w / 2.0 {
                    0.0
                } else if x > c + w / 2.0 {
                    255.0
                } else {
                    ((x - c) / w + 0.5) * 255.0
                }
            }
            VoiFunction::Sigmoid => 255.0 / (1.0 + (-4.0 * (x - c) / w).exp()),
        }
    }
}

/// A display level rounded to 8 bits (half to even, as numpy's `rint`).
fn to_u8(level: f64) -> u8 {
    level.round_ties_even().clamp(0.0, 255.0) as u8
}

/// Grey levels for modality values: through `window` when there is one, else stretched from
/// the smallest to the largest value; `invert` (MONOCHROME1) flips the result.
pub fn grey_levels(values: &[f64], window: Option<Window>, invert: bool) -> Vec<u8> {
    let flip = |g: u8| if invert { 255 - g } else { g };
    match window {
        Some(win) => values.iter().map(|&x| flip(to_u8(win.level(x)))).collect(),
        None => {
            let (lo, hi) = values
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                    (lo.min(x), hi.max(x))
                });
            let span = hi - lo;
            values
                .iter()
                .map(|&x| {
                    let level = if span > 0.0 {
                        (x - lo) / span * 255.0
                    } else {
                        0.0
                    };
                    flip(to_u8(level))
                })
                .collect()
        }
    }
}

/// The image attributes that rendering needs, read once.
#[derive(Debug)]
struct Header {
    transfer_syntax: String,
    modality: Option<String>,
    photometric: String,
    rows: u32,
    columns: u32,
    frames: u32,
    samples_per_pixel: u16,
    bits_allocated: u16,
    bits_stored: u16,
    high_bit: u16,
    signed: bool,
    planar: bool,
    slope: f64,
    intercept: f64,
    window: Option<Window>,
}

fn text(obj: &DefaultDicomObject, tag: Tag) -> Option<String> {
    let value = obj.get(tag)?.to_str().ok()?;
    let value = value.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!value.is_empty()).then(|| value.to_string())
}

fn first_float(obj: &DefaultDicomObject, tag: Tag) -> Option<f64> {
    let values = obj.get(tag)?.to_multi_float64().ok()?;
    values.first().copied().filter(|v| v.is_finite())
}

fn int(obj: &DefaultDicomObject, tag: Tag, name: &str) -> Result<Option<u32>, ImageLoadError> {
    match obj.get(tag) {
        None => Ok(None),
        Some(e) => e
            .to_int::<u32>()
            .map(Some)
            .map_err(|_| corrupt(format!("{name} is not a valid number"))),
    }
}

fn required(obj: &DefaultDicomObject, tag: Tag, name: &str) -> Result<u32, ImageLoadError> {
    int(obj, tag, name)?.ok_or_else(|| corrupt(format!("missing {name} {tag}")))
}

impl Header {
    fn read(obj: &DefaultDicomObject) -> Result<Header, ImageLoadError> {
        let transfer_syntax = obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string();
        let has_pixels = obj.get(PIXEL_DATA).is_some();
        if obj.get(FLOAT_PIXEL_DATA).is_some() || obj.get(DOUBLE_FLOAT_PIXEL_DATA).is_some() {
            return Err(unsupported("floating-point pixel data is not supported"));
        }
        let modality = text(obj, MODALITY);
        let Some(photometric) = text(obj, PHOTOMETRIC) else {
            // A structured report, a plan or a waveform: DICOM, but not an image.
            let what = modality.as_deref().unwrap_or("unknown modality");
            return Err(unsupported(if has_pixels {
                "missing Photometric Interpretation (0028,0004)".to_string()
            } else {
                format!(
                    "no image in this DICOM file (no Pixel Data; modality {what}): \
                     not an image object, or the file is cut short"
                )
            }));
        };
        let rows = required(obj, ROWS, "Rows")?;
        let columns = required(obj, COLUMNS, "Columns")?;
        let bits_allocated = required(obj, BITS_ALLOCATED, "Bits Allocated")? as u16;
        let bits_stored =
            int(obj, BITS_STORED, "Bits Stored")?.map_or(bits_allocated, |b| b as u16);
        let high_bit =
            int(obj, HIGH_BIT, "High Bit")?.map_or(bits_stored.saturating_sub(1), |b| b as u16);
        let window = match (
            first_float(obj, WINDOW_CENTER),
            first_float(obj, WINDOW_WIDTH),
        ) {
            (Some(centre), Some(width)) if width > 0.0 => Some(Window {
                centre,
                width,
                function: VoiFunction::from_name(
                    text(obj, VOI_LUT_FUNCTION).as_deref().unwrap_or(""),
                ),
            }),
            _ => None,
        };
        Ok(Header {
            transfer_syntax,
            modality,
            photometric: photometric.to_ascii_uppercase(),
            rows,
            columns,
            // Only informative (frame 0 is always there), so a malformed value is not fatal.
            frames: int(obj, NUMBER_OF_FRAMES, "Number of Frames")
                .ok()
                .flatten()
                .unwrap_or(1),
            samples_per_pixel: int(obj, SAMPLES_PER_PIXEL, "Samples per Pixel")?.unwrap_or(1)
                as u16,
            bits_allocated,
            bits_stored,
            high_bit,
            signed: int(obj, PIXEL_REPRESENTATION, "Pixel Representation")? == Some(1),
            planar: int(obj, PLANAR_CONFIGURATION, "Planar Configuration")? == Some(1),
            slope: first_float(obj, RESCALE_SLOPE).unwrap_or(1.0),
            intercept: first_float(obj, RESCALE_INTERCEPT).unwrap_or(0.0),
            window,
        })
    }

    fn check_size(&self, max_pixels: u64) -> Result<(), ImageLoadError> {
        if self.rows == 0 || self.columns == 0 {
            return Err(ImageLoadError::ZeroSize);
        }
        let pixels = u64::from(self.rows) * u64::from(self.columns);
        if pixels > max_pixels {
            return Err(ImageLoadError::TooLarge {
                width: self.columns,
                height: self.rows,
                pixels,
                limit: max_pixels,
            });
        }
        Ok(())
    }

    fn check_supported(&self) -> Result<(), ImageLoadError> {
        let ts = &self.transfer_syntax;
        if known_unsupported(ts) {
            return Err(unsupported(format!(
                "{} is not supported: roiscope decodes uncompressed, deflated, RLE, JPEG \
                 (8-bit baseline and lossless) and JPEG 2000 DICOM; convert the file first \
                 (e.g. `gdcmconv --raw` or dcmtk's `dcmdjpls`)",
                describe_ts(ts)
            )));
        }
        // jpeg-decoder only does 8-bit DCT JPEG; say so instead of passing on its message.
        if ts == "1.2.840.10008.1.2.4.51" && self.bits_stored > 8 {
            return Err(unsupported(format!(
                "{} with {}-bit samples is not supported (only 8-bit JPEG Extended is); \
                 convert the file first (e.g. `gdcmconv --raw` or dcmtk's `dcmdjpeg`)",
                describe_ts(ts),
                self.bits_stored
            )));
        }
        if !matches!(self.bits_allocated, 1 | 8 | 16 | 32) {
            return Err(unsupported(format!(
                "Bits Allocated {} is not supported (1, 8, 16 or 32)",
                self.bits_allocated
            )));
        }
        if self.bits_stored == 0 || self.bits_stored > self.bits_allocated {
            return Err(corrupt(format!(
                "Bits Stored {} does not fit Bits Allocated {}",
                self.bits_stored, self.bits_allocated
            )));
        }
        let spp = self.samples_per_pixel;
        let colour = match self.photometric.as_str() {
            "MONOCHROME1" | "MONOCHROME2" | "PALETTE COLOR" => false,
            "RGB" | "YBR_FULL" | "YBR_FULL_422" | "YBR_RCT" | "YBR_ICT" => true,
            other => {
                return Err(unsupported(format!(
                    "Photometric Interpretation {other} is not supported"
                )))
            }
        };
        if (colour && spp != 3) || (!colour && spp != 1) {
            return Err(corrupt(format!(
                "{} with {spp} samples per pixel",
                self.photometric
            )));
        }
        Ok(())
    }

    fn pixels(&self) -> usize {
        self.rows as usize * self.columns as usize
    }
}

/// The first frame's samples, still packed as stored, and how they are laid out.
struct Frame<'a> {
    data: Cow<'a, [u8]>,
    /// Colour already converted to interleaved RGB by a codec (JPEG, JPEG 2000).
    codec_rgb: bool,
    /// Native YBR_FULL_422: each pair of pixels stored as Y1 Y2 Cb Cr.
    subsampled_422: bool,
    planar: bool,
    /// Native 1-bit data, eight pixels to a byte.
    packed_bits: bool,
}

/// Extracts frame 0: native pixel data is sliced here (dicom-pixeldata assumes three full
/// samples per pixel, which native YBR_FULL_422 is not); encapsulated data goes to the codec.
fn first_frame<'a>(obj: &'a DefaultDicomObject, h: &Header) -> Result<Frame<'a>, ImageLoadError> {
    let element = obj.get(PIXEL_DATA).ok_or_else(|| {
        unsupported("no Pixel Data element: not an image object, or the file is cut short")
    })?;
    if let Some(value) = element.value().primitive() {
        let bytes = value.to_bytes();
        let subsampled_422 = h.photometric == "YBR_FULL_422" && h.samples_per_pixel == 3;
        if subsampled_422 && h.columns % 2 == 1 {
            return Err(corrupt(
                "YBR_FULL_422 pixel data with an odd number of columns",
            ));
        }
        let samples = if subsampled_422 {
            h.pixels() * 2
        } else {
            h.pixels() * h.samples_per_pixel as usize
        };
        let len = if h.bits_allocated == 1 {
            samples.div_ceil(8)
        } else {
            samples * (h.bits_allocated as usize / 8)
        };
        if bytes.len() < len {
            return Err(corrupt(format!(
                "pixel data has {} bytes, the first frame needs {len} (truncated file?)",
                bytes.len()
            )));
        }
        // dicom-object holds OW values as native u16, so 8-bit samples in an OW element (also
        // from a big-endian file) come back in stored order on the little-endian hosts that
        // roiscope runs on.
        let mut data: Cow<'a, [u8]> = match bytes {
            Cow::Borrowed(b) => Cow::Borrowed(&b[..len]),
            Cow::Owned(mut v) => {
                v.truncate(len);
                Cow::Owned(v)
            }
        };
        // 32-bit samples in an OW element of a big-endian file: each 16-bit word was swapped
        // to native order, so a sample's two words are still in stored (big-endian) order.
        if h.bits_allocated == 32
            && h.transfer_syntax == TS_BIG_ENDIAN
            && element.vr().to_string() == "OW"
        {
            for word in data.to_mut().chunks_exact_mut(4) {
                word.rotate_left(2);
            }
        }
        return Ok(Frame {
            data,
            codec_rgb: false,
            subsampled_422,
            planar: h.planar,
            packed_bits: h.bits_allocated == 1,
        });
    }
    if let Some(frame) = rgb_jpeg_as_stored(element.value().fragments(), h)? {
        return Ok(frame);
    }
    let decoded = obj.decode_pixel_data_frame(0).map_err(|e| {
        let why = error_chain(&e);
        let detail = format!(
            "cannot decode {} pixel data: {why}",
            describe_ts(&h.transfer_syntax)
        );
        // The codecs say "not supported" for valid data they cannot handle (e.g. 32-bit RLE);
        // anything else is damaged data.
        let lower = why.to_ascii_lowercase();
        if lower.contains("not supported") || lower.contains("unsupported") {
            unsupported(detail)
        } else {
            corrupt(detail)
        }
    })?;
    let spp = h.samples_per_pixel as usize;
    let len = h.pixels() * spp * (h.bits_allocated as usize).div_ceil(8);
    let data = decoded.into_data();
    if data.len() < len {
        return Err(corrupt(format!(
            "{} codec returned {} bytes for a frame of {len}",
            describe_ts(&h.transfer_syntax),
            data.len()
        )));
    }
    Ok(Frame {
        data: Cow::Owned(data),
        // RLE and encapsulated uncompressed keep the stored colour space; JPEG and JPEG 2000
        // return RGB.
        codec_rgb: spp == 3 && h.transfer_syntax != TS_RLE && h.transfer_syntax != TS_ENCAPSULATED,
        subsampled_422: false,
        planar: false,
        packed_bits: false,
    })
}

/// Baseline and extended JPEG (8 bit) of an RGB image whose stream has neither an Adobe APP14
/// nor a JFIF APP0 marker: the components are stored as RGB (what the Photometric
/// Interpretation says; PS3.5 8.2.1, and what pydicom and GDCM do), so they are decoded without
/// the YCbCr conversion a JPEG decoder applies by default. `None`: not such a frame.
fn rgb_jpeg_as_stored<'a>(
    fragments: Option<&[Vec<u8>]>,
    h: &Header,
) -> Result<Option<Frame<'a>>, ImageLoadError> {
    use zune_core::bytestream::ZCursor;
    use zune_core::options::DecoderOptions;

    let jpeg_8bit = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"];
    if h.photometric != "RGB" || h.samples_per_pixel != 3 || h.bits_allocated != 8 {
        return Ok(None);
    }
    if !jpeg_8bit.contains(&h.transfer_syntax.as_str()) {
        return Ok(None);
    }
    let Some(fragments) = fragments.filter(|f| !f.is_empty()) else {
        return Ok(None);
    };
    // One frame: all fragments make its stream; several: the first fragment starts frame 0
    // (and in practice holds all of it).
    let stream: Vec<u8> = if h.frames <= 1 {
        fragments.concat()
    } else {
        fragments[0].clone()
    };
    if says_colour_transform(&stream) {
        return Ok(None);
    }
    let stream = without_short_adobe(stream);
    let err = |e: zune_jpeg::errors::DecodeErrors| {
        corrupt(format!(
            "cannot decode {} pixel data: {e}",
            describe_ts(&h.transfer_syntax)
        ))
    };
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(&stream[..]), options);
    decoder.decode_headers().map_err(err)?;
    let (w, hgt) = decoder.dimensions().unwrap_or((0, 0));
    if (w as u32, hgt as u32) != (h.columns, h.rows) {
        return Err(corrupt(format!(
            "the JPEG stream is {w}x{hgt}, the header says {}x{}",
            h.columns, h.rows
        )));
    }
    let Some(input) = decoder
        .input_colorspace()
        .filter(|c| c.num_components() == 3)
    else {
        return Ok(None);
    };
    // Output in the input's own colour space: the components as stored, no conversion.
    decoder.set_options(options.jpeg_set_out_colorspace(input));
    let data = decoder.decode().map_err(err)?;
    Ok(Some(Frame {
        data: Cow::Owned(data),
        codec_rgb: true,
        subsampled_422: false,
        planar: false,
        packed_bits: false,
    }))
}

/// The stream without an Adobe APP14 segment too short to hold its transform flag (dcmtk wrote
/// such files; pydicom's `SC_rgb_jpeg.dcm`): it says nothing, and zune-jpeg refuses it.
fn without_short_adobe(stream: Vec<u8>) -> Vec<u8> {
    let mut i = 2;
    while i + 4 <= stream.len() && stream[i] == 0xFF {
        let marker = stream[i + 1];
        if marker == 0xDA || marker == 0xD9 {
            break;
        }
        let len = usize::from(u16::from_be_bytes([stream[i + 2], stream[i + 3]]));
        let payload = stream
            .get(i + 4..(i + 2 + len).min(stream.len()))
            .unwrap_or(&[]);
        if marker == 0xEE && payload.starts_with(b"Adobe") && payload.len() < 12 {
            let mut out = stream[..i].to_vec();
            out.extend_from_slice(&stream[(i + 2 + len).min(stream.len())..]);
            return out;
        }
        i += 2 + len;
    }
    stream
}

/// Whether a JPEG stream carries an Adobe APP14 or a JFIF APP0 marker segment before its first
/// scan (either says the components are YCbCr, unless APP14's transform flag is 0).
fn says_colour_transform(stream: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 4 <= stream.len() {
        if stream[i] != 0xFF {
            return false;
        }
        let marker = stream[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            return false;
        }
        let len = usize::from(u16::from_be_bytes([stream[i + 2], stream[i + 3]]));
        let payload = stream
            .get(i + 4..(i + 2 + len).min(stream.len()))
            .unwrap_or(&[]);
        if marker == 0xE0 && payload.starts_with(b"JFIF\0") {
            return true;
        }
        if marker == 0xEE && payload.starts_with(b"Adobe") {
            // Byte 11 of the payload: 0 = no transform (RGB), 1 = YCbCr, 2 = YCCK.
            return payload.get(11).is_some_and(|&t| t != 0);
        }
        i += 2 + len;
    }
    false
}

impl Frame<'_> {
    /// Stored sample `i` as an integer: masked to Bits Stored below High Bit, sign-extended
    /// for signed data. 1-bit data is packed bits in native files and 0/255 bytes from codecs
    /// (dicom-pixeldata expands them); both read as 0/1.
    fn sample(&self, i: usize, h: &Header) -> i64 {
        let data = &self.data[..];
        let raw: u64 = match h.bits_allocated {
            1 if self.packed_bits => u64::from((data[i / 8] >> (i % 8)) & 1),
            1 => u64::from(data[i] != 0),
            8 => u64::from(data[i]),
            16 => u64::from(u16::from_ne_bytes([data[2 * i], data[2 * i + 1]])),
            _ => u64::from(u32::from_ne_bytes([
                data[4 * i],
                data[4 * i + 1],
                data[4 * i + 2],
                data[4 * i + 3],
            ])),
        };
        let bits = u32::from(h.bits_stored);
        let shift = (u32::from(h.high_bit) + 1).saturating_sub(bits);
        let value = (raw >> shift) & ((1u64 << bits) - 1);
        if h.signed && bits > 1 && value >> (bits - 1) == 1 {
            value as i64 - (1i64 << bits)
        } else {
            value as i64
        }
    }
}

fn render(
    obj: &DefaultDicomObject,
    h: &Header,
    frame: &Frame<'_>,
) -> Result<RgbImage, ImageLoadError> {
    let n = h.pixels();
    let rgb: Vec<u8> = match h.photometric.as_str() {
        "MONOCHROME1" | "MONOCHROME2" => {
            let values: Vec<f64> = (0..n)
                .map(|i| frame.sample(i, h) as f64 * h.slope + h.intercept)
                .collect();
            let invert = h.photometric == "MONOCHROME1";
            grey_levels(&values, h.window, invert)
                .into_iter()
                .flat_map(|g| [g, g, g])
                .collect()
        }
        "PALETTE COLOR" => {
            let palette = Palette::read(obj)?;
            (0..n)
                .flat_map(|i| palette.lookup(frame.sample(i, h)))
                .collect()
        }
        _ => colour(h, frame),
    };
    RgbImage::from_raw(h.columns, h.rows, rgb)
        .ok_or_else(|| corrupt("pixel buffer of the wrong size"))
}

/// Three-sample images to interleaved 8-bit RGB.
fn colour(h: &Header, frame: &Frame<'_>) -> Vec<u8> {
    let n = h.pixels();
    let scale = if h.bits_allocated > 8 {
        255.0 / ((1u64 << h.bits_stored) - 1) as f64
    } else {
        1.0
    };
    let to8 = |v: i64| -> f64 {
        if h.bits_allocated > 8 {
            (v as f64 * scale).round_ties_even()
        } else {
            v as f64
        }
    };
    // Index of sample `c` of pixel `p` in the stored layout.
    let index = |p: usize, c: usize| -> usize {
        if frame.subsampled_422 {
            let pair = p / 2;
            if c == 0 {
                4 * pair + p % 2
            } else {
                4 * pair + 1 + c
            }
        } else if frame.planar {
            c * n + p
        } else {
            3 * p + c
        }
    };
    let ybr = !frame.codec_rgb && matches!(h.photometric.as_str(), "YBR_FULL" | "YBR_FULL_422");
    let mut out = Vec::with_capacity(3 * n);
    for p in 0..n {
        let [a, b, c] = [0, 1, 2].map(|ch| to8(frame.sample(index(p, ch), h)));
        if ybr {
            out.extend(ybr_full_to_rgb(a, b, c));
        } else {
            out.extend([a, b, c].map(|v| v.clamp(0.0, 255.0) as u8));
        }
    }
    out
}

/// YBR_FULL (PS3.3 C.7.6.3.1.2: ITU-R BT.601 with full-range luma and chroma) to RGB.
fn ybr_full_to_rgb(y: f64, cb: f64, cr: f64) -> [u8; 3] {
    let (cb, cr) = (cb - 128.0, cr - 128.0);
    let r = y + 1.402 * cr;
    let g = y - (0.114 * 1.772 / 0.587) * cb - (0.299 * 1.402 / 0.587) * cr;
    let b = y + 1.772 * cb;
    [r, g, b].map(|v| (v + 0.5).floor().clamp(0.0, 255.0) as u8)
}

/// A PALETTE COLOR image's three lookup tables, as 8-bit levels.
struct Palette {
    first_mapped: i64,
    tables: [Vec<u8>; 3],
}

impl Palette {
    fn read(obj: &DefaultDicomObject) -> Result<Palette, ImageLoadError> {
        let mut first_mapped = 0;
        let mut tables: [Vec<u8>; 3] = Default::default();
        for (k, table) in tables.iter_mut().enumerate() {
            let desc_tag = PALETTE_DESCRIPTORS[k];
            let desc = obj
                .get(desc_tag)
                .and_then(|e| e.to_multi_int::<i64>().ok())
                .filter(|d| d.len() == 3)
                .ok_or_else(|| {
                    corrupt(format!("missing or invalid palette descriptor {desc_tag}"))
                })?;
            // Entries: 0 means 65536 (PS3.3 C.7.6.3.1.5); the first mapped value may be stored
            // as SS or as US for a signed image.
            let entries = if desc[0] == 0 {
                65536
            } else {
                desc[0] as usize
            };
            first_mapped = desc[1];
            let bits = desc[2];
            if bits != 8 && bits != 16 {
                return Err(corrupt(format!("palette entries of {bits} bits (8 or 16)")));
            }
            // 16-bit entries span 0..65535; scale them to 0..255 like any 16-bit sample.
            let level = |v: u16| {
                if bits == 16 {
                    to_u8(f64::from(v) * 255.0 / 65535.0)
                } else {
                    v.min(255) as u8
                }
            };
            let plain = obj.get(PALETTE_DATA[k]).and_then(|e| e.to_bytes().ok());
            let segmented = obj
                .get(SEGMENTED_PALETTE_DATA[k])
                .and_then(|e| e.to_bytes().ok());
            *table = match (plain, segmented) {
                // 8-bit entries are packed two to a 16-bit word (C.7.6.3.1.6).
                (Some(data), _) if bits == 8 && data.len() >= entries => data[..entries].to_vec(),
                (Some(data), _) if bits == 16 && data.len() >= 2 * entries => data
                    .chunks_exact(2)
                    .take(entries)
                    .map(|p| level(u16::from_ne_bytes([p[0], p[1]])))
                    .collect(),
                (Some(data), _) => {
                    return Err(corrupt(format!(
                        "palette {} has {} bytes for {entries} entries of {bits} bits",
                        PALETTE_DATA[k],
                        data.len()
                    )))
                }
                (None, Some(data)) => {
                    let words: Vec<u16> = data
                        .chunks_exact(2)
                        .map(|p| u16::from_ne_bytes([p[0], p[1]]))
                        .collect();
                    expand_segmented(&words)?.into_iter().map(level).collect()
                }
                (None, None) => {
                    return Err(corrupt(format!("missing palette data {}", PALETTE_DATA[k])))
                }
            };
            if table.is_empty() {
                return Err(corrupt("empty palette colour lookup table"));
            }
        }
        Ok(Palette {
            first_mapped,
            tables,
        })
    }

    /// Values below the first mapped value take the first entry, above the table the last.
    fn lookup(&self, value: i64) -> [u8; 3] {
        self.tables.each_ref().map(|t| {
            let i = (value - self.first_mapped).clamp(0, t.len() as i64 - 1) as usize;
            t[i]
        })
    }
}

/// Expands a segmented palette table (PS3.3 C.7.9.2), as some ultrasound machines write them.
/// Discrete segments list their entries; linear segments ramp from the previous entry to their
/// end value over `length` entries. Indirect segments (reuse of earlier segments) are refused.
fn expand_segmented(words: &[u16]) -> Result<Vec<u16>, ImageLoadError> {
    let bad = |what: &str| corrupt(format!("segmented palette: {what}"));
    let mut table: Vec<u16> = Vec::new();
    let mut rest = words;
    // A trailing odd word is padding, not a segment.
    while rest.len() >= 2 {
        let (opcode, length) = (rest[0], usize::from(rest[1]));
        rest = &rest[2..];
        match opcode {
            0 => {
                let values = rest
                    .get(..length)
                    .ok_or_else(|| bad("discrete segment cut short"))?;
                table.extend_from_slice(values);
                rest = &rest[length..];
            }
            1 => {
                let end = *rest
                    .first()
                    .ok_or_else(|| bad("linear segment cut short"))?;
                let start = *table
                    .last()
                    .ok_or_else(|| bad("starts with a linear segment"))?;
                let (y0, y1) = (f64::from(start), f64::from(end));
                table.extend(
                    (1..=length).map(|i| {
                        (y0 + (y1 - y0) * i as f64 / length as f64).round_ties_even() as u16
                    }),
                );
                rest = &rest[1..];
            }
            2 => {
                return Err(unsupported(
                    "segmented palettes with indirect segments are not supported",
                ))
            }
            other => return Err(bad(&format!("unknown segment type {other}"))),
        }
        if table.len() > 65536 {
            return Err(bad("more than 65536 entries"));
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear(centre: f64, width: f64) -> Window {
        Window {
            centre,
            width,
            function: VoiFunction::Linear,
        }
    }

    #[test]
    fn linear_window_matches_the_standard_formula() {
        // C.11.2.1.2.1 with c = 40, w = 400: x <= -160 is black, x >= 239 is white.
        let w = linear(40.0, 400.0);
        assert_eq!(w.level(-160.0), 0.0);
        assert!(w.level(-159.0) > 0.0);
        assert_eq!(w.level(239.5), 255.0);
        // The ramp meets white at x = 239, where the two branches agree.
        assert!((w.level(239.0) - 255.0).abs() < 1e-9);
        assert!(w.level(238.0) < 255.0);
        // The midpoint c - 0.5 maps to the middle of the output range.
        assert!((w.level(39.5) - 127.5).abs() < 1e-9);
        assert_eq!(
            grey_levels(&[-1000.0, 39.5, 1000.0], Some(w), false),
            [0, 128, 255]
        );
    }

    #[test]
    fn window_width_one_is_a_threshold_at_centre_minus_half() {
        let w = linear(100.0, 1.0);
        assert_eq!(w.level(99.5), 0.0);
        assert_eq!(w.level(99.0), 0.0);
        assert_eq!(w.level(99.5001), 255.0);
        assert_eq!(w.level(100.0), 255.0);
        // Widths below 1 are not allowed by the standard and behave as 1, without NaN.
        let narrow = linear(100.0, 0.25);
        assert_eq!(narrow.level(99.0), 0.0);
        assert_eq!(narrow.level(101.0), 255.0);
        assert_eq!(
            grey_levels(&[99.0, 100.0], Some(linear(100.0, 1.0)), false),
            [0, 255]
        );
    }

    #[test]
    fn linear_exact_and_sigmoid() {
        let exact = Window {
            centre: 0.0,
            width: 100.0,
            function: VoiFunction::LinearExact,
        };
        assert_eq!(exact.level(-50.0), 0.0);
        assert_eq!(exact.level(50.0), 255.0);
        assert!((exact.level(0.0) - 127.5).abs() < 1e-9);
        assert!((exact.level(25.0) - 191.25).abs() < 1e-9);
        let sigmoid = Window {
            function: VoiFunction::Sigmoid,
            ..exact
        };
        assert!((sigmoid.level(0.0) - 127.5).abs() < 1e-9);
        assert!(sigmoid.level(-1e6) < 1e-6 && sigmoid.level(1e6) > 255.0 - 1e-6);
        // 1 / (1 + e^-2) at x = c + w/2.
        assert!((sigmoid.level(50.0) - 255.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-9);
        assert_eq!(VoiFunction::from_name(" sigmoid "), VoiFunction::Sigmoid);
        assert_eq!(
            VoiFunction::from_name("LINEAR_EXACT"),
            VoiFunction::LinearExact
        );
        assert_eq!(VoiFunction::from_name("unknown"), VoiFunction::Linear);
    }

    #[test]
    fn monochrome1_is_inverted() {
        let values = [0.0, 10.0, 20.0];
        let normal = grey_levels(&values, Some(linear(10.5, 21.0)), false);
        let inverted = grey_levels(&values, Some(linear(10.5, 21.0)), true);
        assert_eq!(normal, [0, 128, 255]);
        assert_eq!(inverted, [255, 127, 0]);
        assert_eq!(grey_levels(&values, None, true), [255, 127, 0]);
    }

    #[test]
    fn no_window_stretches_min_to_max() {
        assert_eq!(
            grey_levels(&[-1024.0, 0.0, 1024.0], None, false),
            [0, 128, 255]
        );
        // Rounding is half to even, as numpy's rint: 127.5 -> 128, 0.5 -> 0.
        assert_eq!(grey_levels(&[0.0, 1.0, 510.0], None, false), [0, 0, 255]);
        // A flat image is black rather than a division by zero.
        assert_eq!(grey_levels(&[7.0, 7.0], None, false), [0, 0]);
        assert_eq!(grey_levels(&[], None, false), Vec::<u8>::new());
    }

    #[test]
    fn ybr_full_conversion() {
        assert_eq!(ybr_full_to_rgb(128.0, 128.0, 128.0), [128, 128, 128]);
        assert_eq!(ybr_full_to_rgb(76.245, 84.972, 255.5), [255, 0, 0]);
        assert_eq!(ybr_full_to_rgb(0.0, 128.0, 128.0), [0, 0, 0]);
        assert_eq!(ybr_full_to_rgb(255.0, 128.0, 128.0), [255, 255, 255]);
    }

    #[test]
    fn segmented_palette_expansion() {
        // Discrete 0, 10; linear to 40 over 3 entries; discrete 7; padding word.
        let words = [0, 2, 0, 10, 1, 3, 40, 0, 1, 7, 0];
        assert_eq!(expand_segmented(&words).unwrap(), [0, 10, 20, 30, 40, 7]);
        assert!(
            expand_segmented(&[1, 3, 40]).is_err(),
            "linear segment first"
        );
        assert!(
            expand_segmented(&[0, 5, 1, 2]).is_err(),
            "discrete segment cut short"
        );
        assert!(matches!(
            expand_segmented(&[0, 1, 5, 2, 1, 0, 0]),
            Err(ImageLoadError::Unsupported { .. })
        ));
        assert!(expand_segmented(&[9, 1, 0]).is_err());
    }

    #[test]
    fn magic_is_checked_at_offset_128() {
        let mut bytes = vec![0u8; 132];
        assert!(!is_dicom(&bytes));
        bytes[128..132].copy_from_slice(b"DICM");
        assert!(is_dicom(&bytes));
        assert!(!is_dicom(&bytes[..131]));
        assert!(!is_dicom(b"DICM"));
    }

    #[test]
    fn non_dicom_bytes_are_an_error_not_a_panic() {
        assert!(decode_dicom(b"not dicom", 1000).is_err());
        let mut bytes = vec![0u8; 200];
        bytes[128..132].copy_from_slice(b"DICM");
        assert!(matches!(
            decode_dicom(&bytes, 1000),
            Err(ImageLoadError::Decode { .. })
        ));
    }

    #[test]
    fn transfer_syntax_names() {
        assert_eq!(
            describe_ts("1.2.840.10008.1.2.4.80"),
            "JPEG-LS Lossless (1.2.840.10008.1.2.4.80)"
        );
        assert!(known_unsupported("1.2.840.10008.1.2.4.81"));
        assert!(known_unsupported("1.2.840.10008.1.2.4.112"));
        assert!(!known_unsupported("1.2.840.10008.1.2.4.90"));
        assert!(!known_unsupported("1.2.840.10008.1.2.1"));
    }
}
