//! Scoring a labelled ROI set (made by `tests/fixtures/make_roi_set.py`) against the detectors.
//! Shared by the integration tests and `examples/roi_eval.rs`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use roiscope::data::image_io::{load_rgb8, JpegDecoder, LoadOptions};
use roiscope::data::marker::remove_outlines;
use roiscope::data::roi::hsv::SEED_GREEN;
use roiscope::data::roi::{detect, DetectMode, PixelBox};
use serde::Deserialize;

#[derive(Debug, Deserialize, Clone)]
pub struct TruthBox {
    pub box_px: [u32; 4],
    pub line_width: u32,
}

#[derive(Debug, Deserialize, Clone)]
pub struct Entry {
    pub file: String,
    pub boxes: Vec<TruthBox>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub jpeg_quality: Option<u32>,
    #[serde(default)]
    pub clean: Option<String>,
    #[serde(default)]
    pub outline: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
}

impl Entry {
    pub fn painted(&self) -> bool {
        self.kind.as_deref().unwrap_or("painted") == "painted"
    }
    pub fn truth(&self) -> Vec<PixelBox> {
        self.boxes
            .iter()
            .map(|b| PixelBox {
                x0: b.box_px[0],
                y0: b.box_px[1],
                x1: b.box_px[2],
                y1: b.box_px[3],
            })
            .collect()
    }
}

pub fn load_truth(dir: &Path) -> Vec<Entry> {
    let text = std::fs::read_to_string(dir.join("truth.json")).expect("truth.json");
    serde_json::from_str(&text).expect("truth.json parses")
}

#[derive(Debug, Default)]
pub struct RobustScore {
    pub with_box: usize,
    pub primary_correct: usize,
    pub truth_boxes: usize,
    pub truth_boxes_found: usize,
    pub without_box: usize,
    pub false_positives: usize,
    /// Images with a box found that matches no painted box (IoU < 0.5 with each): a letter,
    /// a ring or a bracket taken for a box, with or without a painted box beside it.
    pub spurious: usize,
    pub failures: Vec<String>,
}

/// Robust mode on every painted image: the primary box against the largest painted box at
/// IoU >= 0.9, every painted box recalled, any box on an image without one, and any box that
/// matches no painted one.
pub fn score_robust(dir: &Path, entries: &[Entry]) -> RobustScore {
    let mut s = RobustScore::default();
    for e in entries.iter().filter(|e| e.painted()) {
        let img = load_rgb8(&dir.join(&e.file), LoadOptions::default()).expect(&e.file);
        let found: Vec<PixelBox> = detect(&img, DetectMode::Robust)
            .rois
            .iter()
            .map(|r| r.bbox)
            .collect();
        let truth = e.truth();
        let stray = found
            .iter()
            .filter(|f| truth.iter().all(|t| f.iou(t) < 0.5))
            .count();
        let describe = || {
            format!(
                "{} (q={:?}, lw={:?}, src={:?}): truth {:?} found {:?}",
                e.file,
                e.jpeg_quality,
                e.boxes.iter().map(|b| b.line_width).collect::<Vec<_>>(),
                e.source,
                truth.iter().map(fmt).collect::<Vec<_>>(),
                found.iter().map(fmt).collect::<Vec<_>>()
            )
        };
        if stray > 0 {
            s.spurious += 1;
            if !truth.is_empty() {
                s.failures
                    .push(format!("{stray} stray box(es): {}", describe()));
            }
        }
        if truth.is_empty() {
            s.without_box += 1;
            if !found.is_empty() {
                s.false_positives += 1;
                s.failures.push(format!("false positive: {}", describe()));
            }
            continue;
        }
        s.with_box += 1;
        let largest = truth.iter().max_by_key(|b| b.area()).unwrap();
        if found.first().is_some_and(|f| f.iou(largest) >= 0.9) {
            s.primary_correct += 1;
        } else {
            s.failures.push(format!("primary wrong: {}", describe()));
        }
        for t in &truth {
            s.truth_boxes += 1;
            if found.iter().any(|f| f.iou(t) >= 0.9) {
                s.truth_boxes_found += 1;
            }
        }
    }
    s
}

fn fmt(b: &PixelBox) -> String {
    format!("[{},{},{},{}]", b.x0, b.y0, b.x1, b.y1)
}

#[derive(Debug, Deserialize)]
struct SeedFile {
    boxes: BTreeMap<String, Option<[u32; 4]>>,
}

/// Seed mode against OpenCV's boxes: `(files compared, mismatches as text)`.
pub fn score_seed(dir: &Path) -> (usize, Vec<String>) {
    let text = std::fs::read_to_string(dir.join("seed_boxes.json")).expect("seed_boxes.json");
    let seed: SeedFile = serde_json::from_str(&text).expect("seed_boxes.json parses");
    let mut mismatches = Vec::new();
    for (file, expected) in &seed.boxes {
        let opts = LoadOptions {
            jpeg: JpegDecoder::Libjpeg,
            ..LoadOptions::default()
        };
        let img = load_rgb8(&dir.join(file), opts).expect(file);
        let got = detect(&img, DetectMode::Seed)
            .primary()
            .map(|r| [r.bbox.x0, r.bbox.y0, r.bbox.width(), r.bbox.height()]);
        if got != *expected {
            mismatches.push(format!("{file}: opencv {expected:?}, roiscope {got:?}"));
        }
    }
    (seed.boxes.len(), mismatches)
}

#[derive(Debug, Default)]
pub struct CleanScore {
    pub images: usize,
    /// Per image: mean absolute difference (grey levels, over RGB) on the painted pixels.
    pub mad: Vec<(String, f64)>,
    /// Painted pixels of detected outlines still inside the seed's green HSV range.
    pub green_left: usize,
    /// Images with a painted box that detection missed (so nothing was removed there).
    pub missed: Vec<String>,
    /// Images in which detection, run again on the cleaned image, still finds a painted box.
    pub found_again: Vec<String>,
}

impl CleanScore {
    /// Mean over images of the per-image mean absolute difference.
    pub fn mean_mad(&self) -> f64 {
        self.mad.iter().map(|m| m.1).sum::<f64>() / self.mad.len().max(1) as f64
    }
}

/// Marker removal on every image that has a box-free reference: detect, clean, compare.
pub fn score_clean(dir: &Path, entries: &[Entry]) -> CleanScore {
    let mut s = CleanScore::default();
    for e in entries.iter().filter(|e| e.painted()) {
        let (Some(clean), Some(outline)) = (&e.clean, &e.outline) else {
            continue;
        };
        let mut img = load_rgb8(&dir.join(&e.file), LoadOptions::default()).expect(&e.file);
        let reference = load_rgb8(&dir.join(clean), LoadOptions::default()).expect(clean);
        let mask = image::open(dir.join(outline)).expect(outline).into_luma8();
        let rois = detect(&img, DetectMode::Robust).rois;
        let all_found = e
            .truth()
            .iter()
            .all(|t| rois.iter().any(|r| r.bbox.iou(t) >= 0.9));
        if !all_found {
            s.missed.push(e.file.clone());
        }
        remove_outlines(&mut img, &rois);
        let again = detect(&img, DetectMode::Robust).rois;
        if all_found
            && again
                .iter()
                .any(|r| e.truth().iter().any(|t| r.bbox.iou(t) >= 0.5))
        {
            s.found_again.push(e.file.clone());
        }
        let (mut sum, mut n) = (0u64, 0u64);
        for (x, y, m) in mask.enumerate_pixels() {
            if m.0[0] == 0 {
                continue;
            }
            let a = img.get_pixel(x, y).0;
            let b = reference.get_pixel(x, y).0;
            sum += (0..3).map(|c| u64::from(a[c].abs_diff(b[c]))).sum::<u64>();
            n += 3;
            if all_found && SEED_GREEN.contains_rgb(a[0], a[1], a[2]) {
                s.green_left += 1;
            }
        }
        s.images += 1;
        s.mad.push((e.file.clone(), sum as f64 / n.max(1) as f64));
    }
    s
}

pub fn set_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}
