//! DICOM input end to end: the real files in `tests/fixtures/dicom` decoded through the same entry
//! points as every other image (`load_rgb8`, `decode_rgb8`) and compared with pydicom's rendering
//! of them (`reference.json`, written by `tests/fixtures/make_dicom_set.py`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use roiscope::data::dicom::{decode_dicom, is_dicom, read_info};
use roiscope::data::image_io::{
    decode_rgb8, load_rgb8, ImageLoadError, LoadOptions, IMAGE_EXTENSIONS,
};
use roiscope::data::roi::{detect, DetectMode};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Reference {
    supported: BTreeMap<String, Expected>,
    unsupported: BTreeMap<String, Refused>,
}

#[derive(Debug, Deserialize)]
struct Expected {
    width: u32,
    height: u32,
    photometric: String,
    transfer_syntax: String,
    modality: Option<String>,
    frames: u32,
    bits_stored: u16,
    #[serde(default)]
    window: Option<[f64; 2]>,
    channel_sums: [u64; 3],
    stride: usize,
    samples: Vec<[u8; 3]>,
}

/// Allowed difference per sampled level. Everything but lossy JPEG matches pydicom exactly;
/// JPEG differs by a level here and there because pydicom decodes it with Pillow's
/// libjpeg-turbo, roiscope with jpeg-decoder.
const TOLERANCE: u8 = 1;

#[derive(Debug, Deserialize)]
struct Refused {
    expect_error: String,
    transfer_syntax: String,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom")
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(dir().join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json parses")
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn decode(bytes: &[u8]) -> Result<image::RgbImage, ImageLoadError> {
    decode_rgb8(bytes, LoadOptions::default())
}

#[test]
fn every_supported_fixture_matches_pydicom() {
    let reference = reference();
    assert!(reference.supported.len() >= 10);
    let mut failures = Vec::new();
    for (name, want) in &reference.supported {
        let img = match load_rgb8(&dir().join(name), LoadOptions::default()) {
            Ok(img) => img,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        if (img.width(), img.height()) != (want.width, want.height) {
            failures.push(format!(
                "{name}: {}x{}, pydicom {}x{}",
                img.width(),
                img.height(),
                want.width,
                want.height
            ));
            continue;
        }
        let pixels: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        let sampled: Vec<[u8; 3]> = pixels.iter().step_by(want.stride).copied().collect();
        assert_eq!(sampled.len(), want.samples.len(), "{name}: sample count");
        let mut worst = (0u8, 0usize);
        for (k, (got, exp)) in sampled.iter().zip(&want.samples).enumerate() {
            for c in 0..3 {
                let diff = got[c].abs_diff(exp[c]);
                if diff > worst.0 {
                    worst = (diff, k * want.stride);
                }
            }
        }
        eprintln!("{name}: largest sampled difference {}", worst.0);
        if worst.0 > TOLERANCE {
            let i = worst.1;
            failures.push(format!(
                "{name}: pixel {i} is {:?}, pydicom {:?} (off by {}, tolerance {})",
                pixels[i],
                want.samples[i / want.stride],
                worst.0,
                TOLERANCE
            ));
        }
        let n = pixels.len() as f64;
        for c in 0..3 {
            let sum: u64 = pixels.iter().map(|p| u64::from(p[c])).sum();
            let (mean, want_mean) = (sum as f64 / n, want.channel_sums[c] as f64 / n);
            if (mean - want_mean).abs() > 0.5 {
                failures.push(format!(
                    "{name}: channel {c} mean {mean:.3}, pydicom {want_mean:.3}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn read_info_reports_the_header() {
    for (name, want) in reference().supported {
        let info = read_info(&bytes(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.columns, want.width, "{name}");
        assert_eq!(info.rows, want.height, "{name}");
        assert_eq!(info.photometric, want.photometric, "{name}");
        assert_eq!(info.transfer_syntax, want.transfer_syntax, "{name}");
        assert_eq!(info.modality, want.modality, "{name}");
        assert_eq!(info.frames, want.frames, "{name}");
        assert_eq!(info.bits_stored, want.bits_stored, "{name}");
        if want.photometric.starts_with("MONOCHROME") {
            assert_eq!(info.window.map(|(c, w)| [c, w]), want.window, "{name}");
        }
    }
}

#[test]
fn unsupported_transfer_syntaxes_are_refused_by_name() {
    let reference = reference();
    assert!(!reference.unsupported.is_empty());
    for (name, refused) in &reference.unsupported {
        let err = decode(&bytes(name)).expect_err(name);
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                ImageLoadError::Unsupported {
                    format: "DICOM",
                    ..
                }
            ),
            "{name}: {msg}"
        );
        assert!(msg.contains(&refused.expect_error), "{name}: {msg}");
        assert!(msg.contains(&refused.transfer_syntax), "{name}: {msg}");
        // The header is still readable, so the GUI can say what the file is.
        assert!(read_info(&bytes(name)).is_ok(), "{name}");
    }
}

#[test]
fn truncated_files_are_errors_not_panics() {
    for name in [
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "US1_J2KR.dcm",
    ] {
        let full = bytes(name);
        let len = full.len();
        // From inside the file meta group to a few bytes before the end of the pixel data (the
        // last 8 bytes of an encapsulated file are the sequence delimiter, which may be missing).
        for cut in [132, 200, 400, len / 2, len - 100, len - 12] {
            let result = decode(&full[..cut]);
            assert!(
                result.is_err(),
                "{name} cut to {cut} of {len} bytes decoded"
            );
            let msg = result.unwrap_err().to_string();
            assert!(!msg.is_empty(), "{name} cut to {cut}");
        }
    }
}

#[test]
fn pixel_limit_refuses_before_decoding() {
    // RG3_J2KI is 1760 x 1760.
    let data = bytes("RG3_J2KI.dcm");
    let limit = 1760 * 1760 - 1;
    let err = decode_dicom(&data, limit).expect_err("over the limit");
    assert!(
        matches!(
            err,
            ImageLoadError::TooLarge {
                width: 1760,
                height: 1760,
                pixels: 3_097_600,
                limit: 3_097_599,
            }
        ),
        "{err}"
    );
    let opts = LoadOptions {
        max_pixels: limit,
        ..LoadOptions::default()
    };
    assert!(matches!(
        decode_rgb8(&data, opts),
        Err(ImageLoadError::TooLarge { .. })
    ));
    assert!(decode_dicom(&data, limit + 1).is_ok());

    // A JPEG 2000 codestream without its SIZ marker cannot be decoded; the limit must fire
    // first, which shows it is checked from the DICOM header, not from decoded pixels.
    let mut broken = bytes("MR_small_jp2klossless.dcm");
    let soc = broken
        .windows(4)
        .position(|w| w == [0xFF, 0x4F, 0xFF, 0x51])
        .expect("J2K codestream");
    broken[soc + 2..soc + 4].copy_from_slice(&[0x00, 0x00]);
    let err = decode_dicom(&broken, 64 * 64 - 1).expect_err("too large");
    assert!(matches!(err, ImageLoadError::TooLarge { .. }), "{err}");
    let err = decode_dicom(&broken, 64 * 64).expect_err("corrupt codestream");
    assert!(
        matches!(
            err,
            ImageLoadError::Decode {
                format: "DICOM",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("JPEG 2000"), "{err}");
}

#[test]
fn dicom_is_recognised_by_its_magic_before_other_formats() {
    assert!(IMAGE_EXTENSIONS.contains(&"dcm"));
    let mut data = bytes("MR_small.dcm");
    assert!(is_dicom(&data));
    // The preamble is free-form: even another format's signature must not win.
    data[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
    let img = decode(&data).expect("still DICOM");
    assert_eq!(img.dimensions(), (64, 64));
    // Without the magic it is not DICOM, and the error says which formats are known.
    data[..8].fill(0);
    data[128] = b'X';
    assert!(!is_dicom(&data));
    let msg = decode(&data).expect_err("not an image").to_string();
    assert!(msg.contains("DICOM"), "{msg}");
}

#[test]
fn decoded_dicom_goes_through_roi_detection() {
    // No fixture has a box drawn in, so the default detector must find none. Seed mode only has
    // to run: it takes any green blob, such as the green bar of the SC_rgb test patterns.
    for name in reference().supported.keys() {
        let img = load_rgb8(&dir().join(name), LoadOptions::default()).expect(name);
        let found = detect(&img, DetectMode::Robust);
        assert_eq!((found.width, found.height), img.dimensions(), "{name}");
        assert!(found.rois.is_empty(), "{name}: {:?}", found.rois);
        let seed = detect(&img, DetectMode::Seed);
        assert_eq!((seed.width, seed.height), img.dimensions(), "{name}");
    }
}

/// pydicom's `UN_sequence.dcm` (674 bytes): a private UN element of undefined length whose items
/// are implicit VR. dicom-object alone took an item tag for a 3.7 GB length and reserved it;
/// the walk before it cuts the element out, so the file is read and named for what it is.
#[test]
fn an_undefined_length_un_sequence_is_cut_out_not_allocated() {
    use roiscope::data::dicom_scan::scan;
    let data = bytes("UN_sequence.dcm");
    let s = scan(&data, false).unwrap();
    assert_eq!(s.cut.len(), 1);
    assert_eq!(s.cut[0].end, data.len(), "the UN element runs to the end");
    let msg = decode(&data).expect_err("no image").to_string();
    assert!(msg.contains("no image in this DICOM file"), "{msg}");
    assert!(read_info(&data).is_err());
    // A length past the end is refused by the walk, whatever the element.
    let mut bad = bytes("MR_small.dcm");
    let pos = bad
        .windows(4)
        .position(|w| w == [0x08, 0x00, 0x20, 0x00]) // (0008,0020) Study Date, DA
        .expect("study date");
    bad[pos + 6..pos + 8].copy_from_slice(&[0xFF, 0xFF]);
    let msg = decode(&bad).expect_err("damaged").to_string();
    assert!(msg.contains("(0008,0020) claims 65535 bytes"), "{msg}");
}

/// Truncated RLE data made dicom-pixeldata's RLE decoder panic (an index out of range); the
/// panic is caught, and its message and backtrace never reach the terminal.
#[test]
fn a_panicking_decoder_prints_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let full = bytes("MR_small_RLE.dcm");
    let mut cuts = Vec::new();
    for cut in [full.len() / 2, full.len() - 100, full.len() - 30] {
        let path = tmp.path().join(format!("cut{cut}.dcm"));
        std::fs::write(&path, &full[..cut]).unwrap();
        cuts.push(path);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roiscope"))
        .arg("detect-roi")
        .args(&cuts)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), cuts.len());
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{line}");
    }
}
