//! A fast path for the PNGs most images are: 8-bit grey, grey + alpha, RGB or RGBA, not
//! interlaced, up to about 10 megapixels. The zlib stream is inflated in one call (libdeflate or
//! fdeflate, see [`inflate`]) and the rows are unfiltered straight into the RGB output, without
//! the `png` crate's row-by-row streaming and copies.
//!
//! This path never decides that a file is broken: anything it does not handle, and any
//! irregularity at all (a CRC or checksum mismatch, a short stream, an unexpected chunk), makes it
//! return `None`, and the caller decodes the file with the `png` crate, whose answer (pixels or
//! error message) stands. So the fast path can only change speed, never results; a test decodes
//! every committed PNG both ways and compares the bytes.

use std::cell::RefCell;

const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// The largest chunk length the PNG specification allows.
const MAX_CHUNK_LEN: usize = (1 << 31) - 1;

/// Per-thread buffers: the concatenated IDAT data, the inflated filtered rows and the
/// decompressor's tables, kept from one image to the next.
struct Scratch {
    compressed: Vec<u8>,
    filtered: Vec<u8>,
    inflater: libdeflater::Decompressor,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Largest filtered image this path inflates, and largest scratch buffer kept between images
/// (as for decoded pixels in `image_io`).
const MAX_KEPT_BYTES: usize = 32 << 20;

/// The header fields this path reads, and the sizes that follow from them.
struct Header {
    width: u32,
    height: u32,
    /// Samples per pixel: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA (all 8-bit).
    channels: usize,
    /// Bytes of one unfiltered row.
    stride: usize,
    /// Bytes of the inflated data: every row with its filter-type byte.
    filtered_len: usize,
    /// Bytes of the RGB output.
    rgb_len: usize,
}

/// Decodes `bytes` as RGB into `out` (resized to width x height x 3) and returns the size, or
/// `None` when the file is not one this path handles or anything about it is irregular.
/// Images over `max_pixels` are left to the caller (which refuses them) before any allocation.
pub(crate) fn decode_rgb(bytes: &[u8], max_pixels: u64, out: &mut Vec<u8>) -> Option<(u32, u32)> {
    let rest = bytes.strip_prefix(SIGNATURE)?;
    let mut chunks = Chunks { rest };
    let (kind, data) = chunks.next()?;
    if &kind != b"IHDR" {
        return None;
    }
    let header = parse_header(data)?;
    if u64::from(header.width) * u64::from(header.height) > max_pixels {
        return None;
    }
    // Larger images (over about 10 megapixels) go to the `png` crate, which streams: inflating
    // in one call holds the whole filtered image beside the output.
    if header.filtered_len > MAX_KEPT_BYTES {
        return None;
    }

    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        let scratch = match slot.as_mut() {
            Some(s) => s,
            None => slot.insert(Scratch {
                compressed: Vec::new(),
                filtered: Vec::new(),
                inflater: libdeflater::Decompressor::new(),
            }),
        };
        let result = decode_with(&mut chunks, &header, scratch, out);
        for buf in [&mut scratch.compressed, &mut scratch.filtered] {
            if buf.capacity() > MAX_KEPT_BYTES {
                *buf = Vec::new();
            }
        }
        result.map(|()| (header.width, header.height))
    })
}

fn decode_with(
    chunks: &mut Chunks,
    header: &Header,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Option<()> {
    // Gather the IDAT data; a single IDAT chunk is inflated where it lies.
    let mut idat: Vec<&[u8]> = Vec::new();
    let mut after_idat = false;
    loop {
        let (kind, data) = chunks.next()?;
        match &kind {
            // The IDAT chunks must follow one another.
            b"IDAT" if after_idat => return None,
            b"IDAT" => idat.push(data),
            b"IEND" => break,
            // Ancillary chunks (lower-case first letter) do not change the pixels the `png`
            // crate returns under EXPAND | STRIP_16 with alpha dropped (tRNS only adds alpha).
            _ if kind[0].is_ascii_lowercase() => after_idat = !idat.is_empty(),
            // PLTE, unknown critical chunks: the `png` crate's business.
            _ => return None,
        }
    }
    let zlib: &[u8] = match idat.as_slice() {
        [] => return None,
        [one] => one,
        many => {
            scratch.compressed.clear();
            for part in many {
                scratch.compressed.extend_from_slice(part);
            }
            &scratch.compressed
        }
    };
    // Grown, never shrunk: a shrink and regrow would zero the regrown part again.
    if scratch.filtered.len() < header.filtered_len {
        scratch.filtered.resize(header.filtered_len, 0);
    }
    let filtered = &mut scratch.filtered[..header.filtered_len];
    if inflate(zlib, filtered, &mut scratch.inflater)? != header.filtered_len {
        return None;
    }
    out.resize(header.rgb_len, 0);
    unfilter_to_rgb(filtered, header, out)
}

/// Inflates a whole zlib stream into `out`, checksum checked; `None` if it is damaged or holds
/// more than `out` takes. The compressor's declared level (FLEVEL in the zlib header) picks the
/// inflater: on streams from fast compressors (level 0-1, OpenCV's default) fdeflate is faster
/// (113 ms against 131 ms on the 60 PNGs of benches/make_bench_corpus.py), on the rest libdeflate
/// (28 ms against 43 ms on the 160 level-9 PNGs of tests/fixtures/roi_set).
fn inflate(
    zlib: &[u8],
    out: &mut [u8],
    libdeflate: &mut libdeflater::Decompressor,
) -> Option<usize> {
    let fast_compressor = zlib.get(1).is_some_and(|flags| flags >> 6 <= 1);
    if fast_compressor {
        let mut fdeflate = fdeflate::Decompressor::new();
        let (_, written) = fdeflate.read(zlib, out, 0, true).ok()?;
        fdeflate.is_done().then_some(written)
    } else {
        libdeflate.zlib_decompress(zlib, out).ok()
    }
}

/// Reads IHDR; `None` for anything but 8-bit grey, grey + alpha, RGB or RGBA, not interlaced
/// (or sizes this machine cannot address).
fn parse_header(data: &[u8]) -> Option<Header> {
    let data: &[u8; 13] = data.try_into().ok()?;
    let width = u32::from_be_bytes(data[0..4].try_into().ok()?);
    let height = u32::from_be_bytes(data[4..8].try_into().ok()?);
    let [bit_depth, color_type, compression, filter, interlace] =
        [data[8], data[9], data[10], data[11], data[12]];
    let channels = match color_type {
        0 => 1,
        4 => 2,
        2 => 3,
        6 => 4,
        _ => return None,
    };
    let valid_size = width > 0 && height > 0 && width < (1 << 31) && height < (1 << 31);
    if bit_depth != 8 || compression != 0 || filter != 0 || interlace != 0 || !valid_size {
        return None;
    }
    let stride = (width as usize).checked_mul(channels)?;
    Some(Header {
        width,
        height,
        channels,
        stride,
        filtered_len: (stride + 1).checked_mul(height as usize)?,
        rgb_len: (width as usize * 3).checked_mul(height as usize)?,
    })
}

/// The chunks after the signature, each checked against its CRC; `None` ends the walk at the
/// first chunk that is cut short or fails its CRC.
struct Chunks<'a> {
    rest: &'a [u8],
}

impl<'a> Chunks<'a> {
    fn next(&mut self) -> Option<([u8; 4], &'a [u8])> {
        let len = u32::from_be_bytes(self.rest.get(0..4)?.try_into().ok()?) as usize;
        if len > MAX_CHUNK_LEN {
            return None;
        }
        let kind_and_data = self.rest.get(4..8 + len)?;
        let crc = u32::from_be_bytes(self.rest.get(8 + len..12 + len)?.try_into().ok()?);
        if crc32fast::hash(kind_and_data) != crc {
            return None;
        }
        self.rest = &self.rest[12 + len..];
        let kind: [u8; 4] = kind_and_data[..4].try_into().ok()?;
        Some((kind, &kind_and_data[4..]))
    }
}

/// Unfilters every row and writes it as RGB: RGB rows straight into `out` (each row's
/// predecessor is the row above it there), other layouts through two row buffers.
fn unfilter_to_rgb(filtered: &[u8], header: &Header, out: &mut [u8]) -> Option<()> {
    let stride = header.stride;
    let rows = filtered.chunks_exact(stride + 1);
    if header.channels == 3 {
        let zero = vec![0u8; stride];
        for (y, row) in rows.enumerate() {
            let (above, here) = out.split_at_mut(y * stride);
            let prev = if y == 0 {
                &zero[..]
            } else {
                &above[(y - 1) * stride..]
            };
            unfilter_row::<3>(row[0], &row[1..], prev, &mut here[..stride])?;
        }
        return Some(());
    }
    let mut prev = vec![0u8; stride];
    let mut cur = vec![0u8; stride];
    for (row, rgb) in rows.zip(out.chunks_exact_mut(header.width as usize * 3)) {
        match header.channels {
            1 => unfilter_row::<1>(row[0], &row[1..], &prev, &mut cur)?,
            2 => unfilter_row::<2>(row[0], &row[1..], &prev, &mut cur)?,
            _ => unfilter_row::<4>(row[0], &row[1..], &prev, &mut cur)?,
        }
        let pixels = cur.chunks_exact(header.channels);
        for (dst, px) in rgb.chunks_exact_mut(3).zip(pixels) {
            match header.channels {
                1 | 2 => dst.fill(px[0]),
                _ => dst.copy_from_slice(&px[..3]),
            }
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    Some(())
}

/// Undoes one row's filter: `dst` gets the pixels of `filtered`, given the unfiltered row above
/// (`prev`, zeros for the first row). `None` for a filter type over 4.
fn unfilter_row<const BPP: usize>(
    kind: u8,
    filtered: &[u8],
    prev: &[u8],
    dst: &mut [u8],
) -> Option<()> {
    match kind {
        0 => dst.copy_from_slice(filtered),
        1 => unfilter_from_left::<BPP>(filtered, prev, dst, |left, _, _| left),
        2 => {
            for ((d, &f), &b) in dst.iter_mut().zip(filtered).zip(prev) {
                *d = f.wrapping_add(b);
            }
        }
        3 => unfilter_from_left::<BPP>(filtered, prev, dst, |left, up, _| (left + up) >> 1),
        4 => unfilter_from_left::<BPP>(filtered, prev, dst, paeth),
        _ => return None,
    }
    Some(())
}

/// Unfilters a row whose predictor looks at the pixel to the left: `predict(left, up,
/// up_left)` per sample (0-255 each, as i16 so that Paeth's sums need no widening), the channels
/// side by side. The left pixel is carried in registers: reading it back from `dst` would wait
/// on the store just made (store-to-load forwarding on every byte).
fn unfilter_from_left<const BPP: usize>(
    filtered: &[u8],
    prev: &[u8],
    dst: &mut [u8],
    predict: impl Fn(i16, i16, i16) -> i16,
) {
    let mut left = [0i16; BPP];
    let mut up_left = [0i16; BPP];
    let pixels = dst
        .chunks_exact_mut(BPP)
        .zip(filtered.chunks_exact(BPP))
        .zip(prev.chunks_exact(BPP));
    for ((d, f), up) in pixels {
        for i in 0..BPP {
            let up = i16::from(up[i]);
            d[i] = f[i].wrapping_add(predict(left[i], up, up_left[i]) as u8);
            left[i] = i16::from(d[i]);
            up_left[i] = up;
        }
    }
}

/// The Paeth predictor, written branch-free (the form stb_image uses: pick by comparing c
/// against a threshold), which keeps the loop-carried chain through the left pixel short.
fn paeth(a: i16, b: i16, c: i16) -> i16 {
    let threshold = 3 * c - (a + b);
    let (lo, hi) = (a.min(b), a.max(b));
    if threshold <= lo {
        hi
    } else if threshold >= hi {
        lo
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image_io::{decode_png_with_crate, LoadOptions};

    /// The fast path's answer, or `None` when it declines.
    fn fast(bytes: &[u8]) -> Option<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        decode_rgb(bytes, u64::MAX, &mut out).map(|(w, h)| (w, h, out))
    }

    /// Whenever the fast path answers, its pixels are the `png` crate's.
    fn assert_same_as_crate(bytes: &[u8], what: &str) -> bool {
        let Some((w, h, pixels)) = fast(bytes) else {
            return false;
        };
        let reference = decode_png_with_crate(bytes, LoadOptions::default()).unwrap_or_else(|e| {
            panic!("{what}: fast path decoded a file the png crate refuses: {e}")
        });
        assert_eq!((w, h), reference.dimensions(), "{what}");
        assert!(
            pixels == reference.as_raw().as_slice(),
            "{what}: pixels differ"
        );
        true
    }

    /// A test picture with smooth gradients, edges and noise, so every filter gets used.
    fn picture(w: u32, h: u32, channels: usize, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                for c in 0..channels as u32 {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let smooth = (x * 7 + y * 3 + c * 40) % 256;
                    let edge = if (x / 5 + y / 3) % 2 == 0 { 200 } else { 0 };
                    data.push((smooth + edge + (state % 9)) as u8);
                }
            }
        }
        data
    }

    fn encode(w: u32, h: u32, channels: usize, filter: png::Filter, extras: bool) -> Vec<u8> {
        // Both inflaters: fdeflate for the fast compressor's streams, libdeflate for the rest.
        let compression = if extras {
            png::Compression::Fastest
        } else {
            png::Compression::High
        };
        let color = match channels {
            1 => png::ColorType::Grayscale,
            2 => png::ColorType::GrayscaleAlpha,
            3 => png::ColorType::Rgb,
            _ => png::ColorType::Rgba,
        };
        let mut file = Vec::new();
        let mut encoder = png::Encoder::new(&mut file, w, h);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_filter(filter);
        encoder.set_compression(compression);
        if extras {
            if channels == 3 {
                encoder.set_trns(vec![0, 10, 0, 20, 0, 30]);
            }
            encoder.set_source_gamma(png::ScaledFloat::new(1.0 / 2.2));
            encoder
                .add_text_chunk("Comment".into(), "test".into())
                .unwrap();
        }
        let mut writer = encoder.write_header().unwrap();
        writer
            .write_image_data(&picture(w, h, channels, w * 31 + h))
            .unwrap();
        writer.finish().unwrap();
        file
    }

    /// The file's chunks as (type, data).
    fn chunks(file: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        let mut walk = Chunks { rest: &file[8..] };
        std::iter::from_fn(|| walk.next().map(|(k, d)| (k, d.to_vec()))).collect()
    }

    fn assemble(chunks: &[([u8; 4], Vec<u8>)]) -> Vec<u8> {
        let mut file = SIGNATURE.to_vec();
        for (kind, data) in chunks {
            file.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = file.len();
            file.extend_from_slice(kind);
            file.extend_from_slice(data);
            let crc = crc32fast::hash(&file[start..]);
            file.extend_from_slice(&crc.to_be_bytes());
        }
        file
    }

    /// The same file with its IDAT data cut into chunks of at most `size` bytes.
    fn split_idat(file: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, data) in chunks(file) {
            if &kind == b"IDAT" {
                out.extend(data.chunks(size).map(|part| (kind, part.to_vec())));
            } else {
                out.push((kind, data));
            }
        }
        assemble(&out)
    }

    #[test]
    fn every_filter_and_layout_decodes_as_the_png_crate_does() {
        use png::Filter::*;
        let mut count = 0;
        let mut levels = std::collections::BTreeSet::new();
        for channels in 1..=4 {
            for filter in [NoFilter, Sub, Up, Avg, Paeth, Adaptive] {
                for (w, h) in [(1, 1), (2, 3), (7, 5), (33, 17), (64, 40)] {
                    for extras in [false, true] {
                        let file = encode(w, h, channels, filter, extras);
                        let zlib = &chunks(&file)
                            .into_iter()
                            .find(|(k, _)| k == b"IDAT")
                            .unwrap()
                            .1;
                        levels.insert(zlib[1] >> 6);
                        let what = format!("{channels} ch, {filter:?}, {w}x{h}, extras {extras}");
                        assert!(assert_same_as_crate(&file, &what), "{what}: declined");
                        let split = split_idat(&file, 7);
                        assert!(
                            chunks(&split).iter().filter(|(k, _)| k == b"IDAT").count() > 1
                                || w * h < 4
                        );
                        assert!(
                            assert_same_as_crate(&split, &what),
                            "{what} split: declined"
                        );
                        count += 2;
                    }
                }
            }
        }
        assert_eq!(count, 4 * 6 * 5 * 2 * 2);
        // The zlib headers' FLEVEL: a fast compressor's (0-1) and a strong one's (2-3).
        assert!(
            levels.iter().any(|&l| l <= 1) && levels.iter().any(|&l| l >= 2),
            "{levels:?}"
        );
    }

    #[test]
    fn committed_pngs_decode_as_the_png_crate_does() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["tests/fixtures", "assets"] {
            let mut stack = vec![root.join(dir)];
            while let Some(d) = stack.pop() {
                for entry in std::fs::read_dir(&d).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|e| e == "png") {
                        files.push(path);
                    }
                }
            }
        }
        let mut handled = 0;
        for path in &files {
            let bytes = std::fs::read(path).unwrap();
            let what = path.display().to_string();
            let expected = parse_header(&bytes[16..29]).is_some();
            assert_eq!(assert_same_as_crate(&bytes, &what), expected, "{what}");
            handled += usize::from(expected);
        }
        // All of them but the 1-bit outline masks of tests/fixtures/roi_set/outline.
        assert!(
            files.len() >= 400 && handled >= 300,
            "{handled} of {} handled",
            files.len()
        );
    }

    #[test]
    fn declines_what_it_does_not_handle_and_anything_irregular() {
        let file = encode(33, 17, 3, png::Filter::Paeth, false);
        let parts = chunks(&file);
        let with_header = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut parts = parts.clone();
            edit(&mut parts[0].1);
            assemble(&parts)
        };
        let declined = [
            ("16-bit", with_header(&|h| h[8] = 16)),
            ("palette", with_header(&|h| h[9] = 3)),
            ("interlaced", with_header(&|h| h[12] = 1)),
            ("zero width", with_header(&|h| h[0..4].fill(0))),
            ("taller than the data", with_header(&|h| h[7] += 1)),
            ("shorter than the data", with_header(&|h| h[7] -= 1)),
        ];
        for (what, bytes) in &declined {
            assert!(fast(bytes).is_none(), "{what}");
        }
        assert!(fast(&file).is_some());
        // Every truncation, and a flipped bit anywhere, is left to the png crate (with either
        // inflater).
        for file in [file.clone(), encode(33, 17, 3, png::Filter::Paeth, true)] {
            assert!(fast(&file).is_some());
            for len in 0..file.len() {
                assert!(fast(&file[..len]).is_none(), "truncated to {len}");
            }
            for i in 8..file.len() {
                let mut bad = file.clone();
                bad[i] ^= 0x10;
                assert!(fast(&bad).is_none(), "bit flipped at {i}");
            }
            // A chunk-level valid file whose zlib stream is damaged (CRCs recomputed): in the
            // middle of the data, and in the Adler-32 checksum at its end.
            for from_end in [0, 2] {
                let mut damaged = chunks(&file);
                let idat = damaged.iter_mut().find(|(k, _)| k == b"IDAT").unwrap();
                let at = if from_end == 0 {
                    idat.1.len() / 2
                } else {
                    idat.1.len() - from_end
                };
                idat.1[at] ^= 0xff;
                assert!(
                    fast(&assemble(&damaged)).is_none(),
                    "zlib byte {at} damaged"
                );
            }
        }
        // IDAT chunks with another chunk between them.
        let mut parted = chunks(&split_idat(&file, 40));
        assert!(parted.iter().filter(|(k, _)| k == b"IDAT").count() > 2);
        let second_idat = parted.iter().rposition(|(k, _)| k == b"IDAT").unwrap();
        parted.insert(second_idat, (*b"tEXt", b"Comment\0between".to_vec()));
        assert!(fast(&assemble(&parted)).is_none());
        // An unknown critical chunk.
        let mut unknown = parts.clone();
        unknown.insert(1, (*b"XYZW", vec![1, 2, 3]));
        assert!(fast(&assemble(&unknown)).is_none());
        // Over 32 MiB filtered: left to the png crate, which streams (4096 x 2730 is the
        // largest RGB image under it).
        let flat = |h: u32| {
            let mut file = Vec::new();
            let mut encoder = png::Encoder::new(&mut file, 4096, h);
            encoder.set_color(png::ColorType::Rgb);
            let mut writer = encoder.write_header().unwrap();
            writer
                .write_image_data(&vec![0; 4096 * h as usize * 3])
                .unwrap();
            writer.finish().unwrap();
            file
        };
        assert!(fast(&flat(2730)).is_some());
        let big = flat(2731);
        assert!(fast(&big).is_none());
        assert!(decode_png_with_crate(&big, LoadOptions::default()).is_ok());
        // Over the pixel limit: left to the caller, which refuses it from the header.
        assert!(decode_rgb(&file, 33 * 17 - 1, &mut Vec::new()).is_none());
    }
}
