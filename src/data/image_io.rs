//! Decoding images from disk into 8-bit RGB, with limits checked before any pixel buffer exists.
//!
//! Every failure is an [`ImageLoadError`] whose message names the file problem in a user's words;
//! callers print it and carry on with the next image.

use std::io::Read;
use std::path::Path;

use image::{ImageDecoder, ImageFormat, ImageReader, RgbImage};

/// Default ceiling on decoded pixels: 100 megapixels (e.g. 10,000 x 10,000), about 300 MB as RGB.
/// Larger images are refused from their header, before anything is allocated.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// File extensions that `detect-roi` picks up when it walks a folder.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "tif", "tiff", "dcm"];

#[derive(Debug, thiserror::Error)]
pub enum ImageLoadError {
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
    #[error("empty file (0 bytes)")]
    Empty,
    #[error("{0}, not a regular file")]
    NotRegular(&'static str),
    #[error("not a JPEG, PNG, BMP or TIFF image nor a DICOM file (unrecognised file contents)")]
    UnknownFormat,
    #[error("unsupported image format {0:?} (expected JPEG, PNG, BMP or TIFF)")]
    UnsupportedFormat(ImageFormat),
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("image has zero width or height")]
    ZeroSize,
    #[error("corrupt or truncated {format} data: {detail}")]
    Decode {
        format: &'static str,
        detail: String,
    },
    /// A valid file whose content roiscope cannot decode (e.g. a DICOM transfer syntax without a
    /// decoder in this build).
    #[error("unsupported {format} content: {detail}")]
    Unsupported {
        format: &'static str,
        detail: String,
    },
}

/// Which JPEG decoder to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JpegDecoder {
    /// zune-jpeg: fast, but its IDCT rounds differently from libjpeg by a level here and there.
    #[default]
    Fast,
    /// libjpeg-turbo's decoder (the one inside OpenCV's `imread`): pixel-identical to the seed.
    Libjpeg,
}

/// Options for [`load_rgb8`].
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub max_pixels: u64,
    pub jpeg: JpegDecoder,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_pixels: DEFAULT_MAX_PIXELS,
            jpeg: JpegDecoder::Fast,
        }
    }
}

/// Reads an image file as 8-bit RGB.
///
/// Grey images are replicated to three channels, alpha is dropped, 16-bit samples are scaled to
/// 8 bits, and EXIF orientation is applied (as OpenCV's `imread` does), so box coordinates refer
/// to the image as it is displayed.
pub fn load_rgb8(path: &Path, opts: LoadOptions) -> Result<RgbImage, ImageLoadError> {
    // Opening a FIFO blocks until someone writes to it: look before opening.
    if let Some(kind) = super::files::not_regular(&std::fs::metadata(path)?) {
        return Err(ImageLoadError::NotRegular(kind));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    decode_rgb8(&bytes, opts)
}

/// Decodes an in-memory image file as 8-bit RGB (see [`load_rgb8`]).
pub fn decode_rgb8(bytes: &[u8], opts: LoadOptions) -> Result<RgbImage, ImageLoadError> {
    if bytes.is_empty() {
        return Err(ImageLoadError::Empty);
    }
    // Before guess_format: a DICOM preamble may hold anything, even another format's magic.
    if super::dicom::is_dicom(bytes) {
        return super::dicom::decode_dicom(bytes, opts.max_pixels);
    }
    let format = image::guess_format(bytes).map_err(|_| ImageLoadError::UnknownFormat)?;
    match format {
        ImageFormat::Jpeg if opts.jpeg == JpegDecoder::Libjpeg => decode_jpeg_libjpeg(bytes, opts),
        ImageFormat::Jpeg => decode_jpeg(bytes, opts),
        ImageFormat::Png => decode_png(bytes, opts),
        ImageFormat::Bmp | ImageFormat::Tiff => decode_generic(bytes, format, opts),
        other => Err(ImageLoadError::UnsupportedFormat(other)),
    }
}

fn check_size(width: u32, height: u32, opts: LoadOptions) -> Result<(), ImageLoadError> {
    if width == 0 || height == 0 {
        return Err(ImageLoadError::ZeroSize);
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > opts.max_pixels {
        return Err(ImageLoadError::TooLarge {
            width,
            height,
            pixels,
            limit: opts.max_pixels,
        });
    }
    Ok(())
}

/// A decoder's complaint about `format` data, as the user sees it.
fn decode_error(format: &'static str, detail: impl std::fmt::Display) -> ImageLoadError {
    ImageLoadError::Decode {
        format,
        detail: detail.to_string().trim().to_string(),
    }
}

/// Largest buffer kept for reuse by [`recycle`]: 32 MiB, about 10 megapixels as RGB; a thread
/// does not hold on to the memory of a rare huge image.
const MAX_SPARE_BYTES: usize = 32 << 20;

thread_local! {
    /// A pixel buffer handed back by [`recycle`], for the next image decoded on this thread.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Hands a decoded image's memory back, so that the next JPEG or PNG decoded on this thread
/// reuses it: a fresh buffer costs a page fault and a zeroing pass per page, a noticeable part
/// of the decoding time. Callers that decode image after image (`detect-roi`) call this when
/// done with each.
pub fn recycle(img: RgbImage) {
    let buf = img.into_raw();
    if buf.capacity() <= MAX_SPARE_BYTES {
        SPARE.with(|spare| spare.set(buf));
    }
}

/// A buffer of `n` bytes for a decoder to overwrite: the spare one when there is one (only the
/// part beyond its old length is zeroed), or a new one.
fn pixel_buffer(n: usize) -> Vec<u8> {
    let mut buf = SPARE.with(|spare| spare.take());
    buf.resize(n, 0);
    buf
}

/// Wraps decoded RGB bytes, which must be exactly `w * h * 3` of them.
fn rgb_image(
    format: &'static str,
    w: u32,
    h: u32,
    pixels: Vec<u8>,
) -> Result<RgbImage, ImageLoadError> {
    RgbImage::from_raw(w, h, pixels)
        .ok_or_else(|| decode_error(format, "decoder returned a buffer of the wrong size"))
}

/// The EXIF orientation of a JPEG whose headers zune has read.
fn jpeg_orientation<T: zune_core::bytestream::ZByteReaderTrait>(
    decoder: &zune_jpeg::JpegDecoder<T>,
) -> Option<image::metadata::Orientation> {
    decoder
        .exif()
        .and_then(|exif| image::metadata::Orientation::from_exif_chunk(exif))
}

/// JPEG goes straight to zune-jpeg in strict mode: the lenient mode that `image` uses would
/// quietly return a half-grey picture for a truncated file.
fn decode_jpeg(bytes: &[u8], opts: LoadOptions) -> Result<RgbImage, ImageLoadError> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;

    let err = |e: zune_jpeg::errors::DecodeErrors| decode_error("JPEG", e);
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(err)?;
    let (w, h) = decoder.dimensions().ok_or(ImageLoadError::ZeroSize)?;
    let (w, h) = (w as u32, h as u32);
    check_size(w, h, opts)?;
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| decode_error("JPEG", "image too large for this machine"))?;
    let mut pixels = pixel_buffer(size);
    decoder.decode_into(&mut pixels).map_err(err)?;
    let orientation = jpeg_orientation(&decoder);
    let img = rgb_image("JPEG", w, h, pixels)?;
    Ok(oriented(img, orientation))
}

/// Decodes with libjpeg-turbo's decoder, as OpenCV does (islow IDCT, fancy upsampling).
/// libjpeg pads a truncated file with grey and only warns; roiscope refuses it instead.
fn decode_jpeg_libjpeg(bytes: &[u8], opts: LoadOptions) -> Result<RgbImage, ImageLoadError> {
    if !ends_with_eoi(bytes) {
        return Err(decode_error(
            "JPEG",
            "the file ends before the end-of-image marker",
        ));
    }
    // The JPEG header is read with zune first: it rejects oversized images before libjpeg
    // allocates anything, and handles EXIF orientation the same way for both decoders.
    let (w, h, orientation) = jpeg_header(bytes)?;
    check_size(w, h, opts)?;
    let decoded = catch_quietly(|| -> std::io::Result<Vec<u8>> {
        let started = mozjpeg::Decompress::new_mem(bytes)?.rgb()?;
        let mut started = started;
        let pixels: Vec<[u8; 3]> = started.read_scanlines()?;
        started.finish()?;
        Ok(pixels.into_iter().flatten().collect())
    });
    let pixels = match decoded {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(decode_error("JPEG", e)),
        Err(panic) => {
            let msg = panic_message(&*panic).unwrap_or_else(|| "libjpeg failed".into());
            return Err(decode_error("JPEG", msg));
        }
    };
    Ok(oriented(rgb_image("JPEG", w, h, pixels)?, orientation))
}

thread_local! {
    /// How many [`catch_quietly`] calls this thread is inside.
    static QUIET: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs a third-party decoder, turning a panic into an `Err` without printing it: the panic
/// hook stays silent on this thread while `f` runs (other threads' panics print as usual), so
/// a corrupt file gives its error line and no backtrace on the user's terminal.
pub(crate) fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(std::cell::Cell::get) == 0 {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(q.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    result
}

/// The text of a caught panic, when it carries one.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> Option<String> {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
}

/// Whether the data ends in an EOI marker (`FF D9`), allowing trailing padding bytes.
fn ends_with_eoi(bytes: &[u8]) -> bool {
    let trimmed = bytes
        .iter()
        .rposition(|&b| b != 0 && b != b'\n' && b != b'\r' && b != b' ')
        .map_or(&bytes[..0], |i| &bytes[..=i]);
    trimmed.ends_with(&[0xff, 0xd9])
}

fn jpeg_header(
    bytes: &[u8],
) -> Result<(u32, u32, Option<image::metadata::Orientation>), ImageLoadError> {
    use zune_core::bytestream::ZCursor;
    let mut decoder = zune_jpeg::JpegDecoder::new(ZCursor::new(bytes));
    decoder
        .decode_headers()
        .map_err(|e| decode_error("JPEG", e))?;
    let (w, h) = decoder.dimensions().ok_or(ImageLoadError::ZeroSize)?;
    Ok((w as u32, h as u32, jpeg_orientation(&decoder)))
}

fn oriented(img: RgbImage, orientation: Option<image::metadata::Orientation>) -> RgbImage {
    match orientation {
        Some(o) if o != image::metadata::Orientation::NoTransforms => {
            let mut dynamic = image::DynamicImage::ImageRgb8(img);
            dynamic.apply_orientation(o);
            dynamic.into_rgb8()
        }
        _ => img,
    }
}

/// PNG: the common layouts through [`super::png_fast`], everything else, and every file that
/// path declines, through the `png` crate.
fn decode_png(bytes: &[u8], opts: LoadOptions) -> Result<RgbImage, ImageLoadError> {
    let mut spare = SPARE.with(|spare| spare.take());
    if let Some((w, h)) = super::png_fast::decode_rgb(bytes, opts.max_pixels, &mut spare) {
        return rgb_image("PNG", w, h, spare);
    }
    SPARE.with(|slot| slot.set(spare));
    decode_png_with_crate(bytes, opts)
}

/// PNG through the `png` crate, which has the last word on every file: on the benchmark files
/// it decodes about 1.4 times as fast as zune-png did (its inflate and unfiltering run row by
/// row, in cache); PNG is lossless, so the pixels are the same. 16-bit samples keep their high
/// byte, as OpenCV's `imread` does; palette, grey and alpha are made RGB. Chunk CRCs are
/// checked, as libpng does.
pub(super) fn decode_png_with_crate(
    bytes: &[u8],
    opts: LoadOptions,
) -> Result<RgbImage, ImageLoadError> {
    use png::{ColorType, Transformations};

    let err = |e: png::DecodingError| decode_error("PNG", e);
    // The limit covers the decoder's own buffers (rows, metadata chunks), not the image.
    let limits = png::Limits { bytes: 64 << 20 };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let header = decoder.read_header_info().map_err(err)?;
    let (w, h) = (header.width, header.height);
    check_size(w, h, opts)?;
    let mut reader = decoder.read_info().map_err(err)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| decode_error("PNG", "image too large for this machine"))?;
    let mut raw = pixel_buffer(size);
    let frame = reader.next_frame(&mut raw).map_err(err)?;
    if (frame.width, frame.height) != (w, h) {
        return Err(decode_error("PNG", "first frame is not the whole image"));
    }
    raw.truncate(frame.buffer_size());
    let rgb: Vec<u8> = match frame.color_type {
        ColorType::Rgb => raw,
        ColorType::Rgba => raw
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        ColorType::Grayscale => raw.iter().flat_map(|&v| [v, v, v]).collect(),
        ColorType::GrayscaleAlpha => raw
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        // EXPAND turns palettes into RGB or RGBA.
        ColorType::Indexed => return Err(decode_error("PNG", "palette left unexpanded")),
    };
    rgb_image("PNG", w, h, rgb)
}

fn decode_generic(
    bytes: &[u8],
    format: ImageFormat,
    opts: LoadOptions,
) -> Result<RgbImage, ImageLoadError> {
    let name = match format {
        ImageFormat::Bmp => "BMP",
        _ => "TIFF",
    };
    let err = |e: image::ImageError| decode_error(name, e);
    let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // Room for the RGB buffer plus the decoder's own copy at 16 bits per sample.
    limits.max_alloc = Some(opts.max_pixels.saturating_mul(8).max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(err)?;
    let (w, h) = decoder.dimensions();
    check_size(w, h, opts)?;
    let orientation = decoder.orientation().ok();
    let mut dynamic = image::DynamicImage::from_decoder(decoder).map_err(err)?;
    if let Some(o) = orientation {
        dynamic.apply_orientation(o);
    }
    Ok(match dynamic {
        image::DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    })
}
