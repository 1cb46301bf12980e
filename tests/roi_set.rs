//! The detectors and marker removal judged on the committed labelled set
//! (`tests/fixtures/roi_set`, made by `tests/fixtures/make_roi_set.py` from real images).

mod support {
    pub mod roi_set;
}

use roiscope::data::image_io::{load_rgb8, JpegDecoder, LoadOptions};
use roiscope::data::roi::hsv::rgb_to_hsv_opencv;
use serde::Deserialize;
use support::roi_set::{load_truth, score_clean, score_robust, score_seed, set_dir};

#[test]
fn seed_mode_gives_opencvs_box_on_every_image() {
    let (n, mismatches) = score_seed(&set_dir("roi_set"));
    assert!(n >= 200, "only {n} images compared");
    assert!(
        mismatches.is_empty(),
        "{} of {n} differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn hsv_matches_opencv_on_recorded_colours() {
    #[derive(Deserialize)]
    struct Check {
        rgb: Vec<[u8; 3]>,
        hsv: Vec<[u8; 3]>,
    }
    let text = std::fs::read_to_string(set_dir("roi_set").join("seed_hsv_check.json")).unwrap();
    let check: Check = serde_json::from_str(&text).unwrap();
    assert!(check.rgb.len() >= 4096);
    for (rgb, hsv) in check.rgb.iter().zip(&check.hsv) {
        let got = rgb_to_hsv_opencv(rgb[0], rgb[1], rgb[2]);
        assert_eq!([got.0, got.1, got.2], *hsv, "rgb {rgb:?}");
    }
}

#[test]
fn libjpeg_decoder_gives_opencvs_pixels() {
    #[derive(Deserialize)]
    struct Entry {
        sum_rgb: [u64; 3],
    }
    #[derive(Deserialize)]
    struct Check {
        files: std::collections::BTreeMap<String, Entry>,
    }
    let dir = set_dir("roi_set");
    let text = std::fs::read_to_string(dir.join("decode_check.json")).unwrap();
    let check: Check = serde_json::from_str(&text).unwrap();
    let opts = LoadOptions {
        jpeg: JpegDecoder::Libjpeg,
        ..LoadOptions::default()
    };
    for (file, expected) in &check.files {
        let img = load_rgb8(&dir.join(file), opts).unwrap();
        let mut sums = [0u64; 3];
        for p in img.pixels() {
            for (sum, &v) in sums.iter_mut().zip(&p.0) {
                *sum += u64::from(v);
            }
        }
        assert_eq!(sums, expected.sum_rgb, "{file}");
    }
}

#[test]
fn robust_mode_finds_painted_boxes_and_nothing_else() {
    let dir = set_dir("roi_set");
    let s = score_robust(&dir, &load_truth(&dir));
    assert_eq!(
        s.spurious,
        0,
        "boxes not painted:\n{}",
        s.failures.join("\n")
    );
    let accuracy = s.primary_correct as f64 / s.with_box as f64;
    let false_positive_rate = s.false_positives as f64 / s.without_box as f64;
    let report = s.failures.join("\n");
    assert!(s.with_box >= 200 && s.without_box >= 40);
    assert!(
        accuracy >= 0.99,
        "primary box right on {:.2}% only:\n{report}",
        100.0 * accuracy
    );
    assert!(
        false_positive_rate <= 0.01,
        "boxes on {} box-free images:\n{report}",
        s.false_positives
    );
}

/// Bars for a text set: at least `min_images` (with, without a box), no box on a text-only
/// image, at most `max_stray` images with a box that is not painted, and the primary box
/// right on at least `min_accuracy` of the images with one.
struct TextBars {
    min_images: (usize, usize),
    max_stray: usize,
    min_accuracy: f64,
}

fn assert_text_set(name: &str, bars: TextBars) {
    let dir = set_dir(name);
    let s = score_robust(&dir, &load_truth(&dir));
    let report = s.failures.join("\n");
    assert!(s.with_box >= bars.min_images.0 && s.without_box >= bars.min_images.1);
    assert_eq!(s.false_positives, 0, "boxes on text-only images:\n{report}");
    assert!(
        s.spurious <= bars.max_stray,
        "{} images with a box that is not painted:\n{report}",
        s.spurious
    );
    let accuracy = s.primary_correct as f64 / s.with_box as f64;
    assert!(
        accuracy >= bars.min_accuracy,
        "primary box right on {:.2}% only:\n{report}",
        100.0 * accuracy
    );
}

/// The text set (`tests/fixtures/roi_text_set`, `make_roi_text_set.py`): letters, words and
/// digits in several fonts, sizes, stroke widths and colours, beside, at the corners of and
/// inside painted boxes. Letters must not be taken for boxes.
#[test]
fn robust_mode_takes_no_letter_for_a_box() {
    // One image of 90 still has a stray box, the bowl of a "b" drawn with a wide stroke,
    // whose stem runs on one way only; text touching a thin outline can still move a side
    // (BENCHMARKS.md). The bars are what the detector reaches now, so that a regression fails.
    assert_text_set(
        "roi_text_set",
        TextBars {
            min_images: (50, 20),
            max_stray: 1,
            min_accuracy: 0.95,
        },
    );
}

/// The glyph set (`tests/fixtures/roi_glyph_set`, `make_roi_glyph_set.py`): text drawn by
/// other code and fonts than the text set (Liberation and FreeFont through Pillow, a 5x7
/// dot-matrix font, OpenCV's italic faces), so that rules chosen on the text set are judged
/// on glyphs they were not chosen on. One image of 60 has a glyph taken for a box (an
/// italic Hershey "g"); the bars are what the detector reaches now (BENCHMARKS.md), not yet
/// the 99% the issue asks.
#[test]
fn robust_mode_on_glyphs_of_another_generator() {
    assert_text_set(
        "roi_glyph_set",
        TextBars {
            min_images: (40, 15),
            max_stray: 1,
            min_accuracy: 0.97,
        },
    );
}

#[test]
fn marker_removal_leaves_no_green_and_little_error() {
    let dir = set_dir("roi_set");
    let s = score_clean(&dir, &load_truth(&dir));
    assert!(s.images >= 100);
    assert_eq!(
        s.green_left, 0,
        "painted pixels still in the seed's green range"
    );
    // Judged over the set, as the issue asks: per image the error ranges from JPEG noise level
    // to a few tens of grey levels where an edge runs right under the line (see BENCHMARKS.md).
    let mean = s.mean_mad();
    assert!(
        mean <= 8.0,
        "mean absolute difference on outline pixels {mean:.2} > 8"
    );
}
