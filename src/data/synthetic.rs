//! Synthetic, learnable ROI tasks. Two are offered ([`SyntheticTask`]): the place task below,
//! and the kind task of `data::synthetic_kind` (what a finding is, never where).
//!
//! The place task: grey "scans" with one bright lesion-like blob (no green
//! marks) over a rib-like texture whose look changes across the image (as anatomy does; a random
//! model's patch features carry almost no absolute position, so a plain background left the blob
//! unlocatable), whose box is known exactly, and a diagnosis that names where the blob lies. It is the
//! trainer's learning proof (a tiny model must find the blob and tell a true (image, text) pair
//! from a swapped one) and a demo data set that needs no download.
//!
//! The blob's centre sits near one of nine places (a 3x3 grid: upper/middle/lower x
//! left/central/right) with jitter, so the text is a function of the pixels; its radii vary, so
//! the box is not a constant per place. Records are in the seed's format with `roi_coords`
//! (the box) and structured fields, ready for `roiscope prepare`.

use std::path::Path;

use anyhow::{ensure, Context};
use serde_json::{json, Value};

use crate::data::files::write_atomic;
use crate::data::synthetic_kind;
use crate::model::random::SplitMix;

/// Which task the diagnosis texts pose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SyntheticTask {
    /// One bright blob; the diagnosis names where it lies (one of nine places).
    #[default]
    Place,
    /// One finding of four kinds that look different; the diagnosis names the kind, in several
    /// wordings, never the place (`data::synthetic_kind`).
    Kind,
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticConfig {
    pub count: usize,
    /// Width and height of each image in pixels.
    pub size: u32,
    pub seed: u64,
    pub task: SyntheticTask,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            count: 200,
            size: 64,
            seed: 0,
            task: SyntheticTask::Place,
        }
    }
}

/// Row and column names of the nine places, top to bottom and left to right.
pub const ROWS: [&str; 3] = ["upper", "middle", "lower"];
pub const COLUMNS: [&str; 3] = ["left", "central", "right"];

pub const QUESTION: &str = "<image>Where is the lesion in this scan, and what does it look like?";
pub const KIND_QUESTION: &str = "<image>What finding does this scan show?";
pub const DIAGNOSIS_FIELD: &str = "Clinical Diagnosis Tips";

/// One generated image: its pixels (grey, row-major), the blob's box and its place.
#[derive(Debug, Clone, PartialEq)]
pub struct Lesion {
    pub pixels: Vec<u8>,
    /// Normalised `[x1, y1, x2, y2]`.
    pub roi: [f64; 4],
    pub row: usize,
    pub column: usize,
}

impl Lesion {
    /// The diagnosis text, naming the place.
    pub fn diagnosis(&self) -> String {
        diagnosis(self.row, self.column)
    }
}

/// The diagnosis for a blob at (`row`, `column`) of the 3x3 grid.
pub fn diagnosis(row: usize, column: usize) -> String {
    let place = if row == 1 && column == 1 {
        "centre".to_string()
    } else {
        format!("{} {}", ROWS[row], COLUMNS[column])
    };
    format!("A bright round lesion in the {place} of the image.")
}

/// The (`row`, `column`) a diagnosis of [`diagnosis`] names; None for any other text.
pub fn place_of(text: &str) -> Option<(usize, usize)> {
    (0..9)
        .map(|i| (i / 3, i % 3))
        .find(|&(r, c)| diagnosis(r, c) == text.trim())
}

/// Draws one image of `size` pixels from `rng`.
pub fn draw(size: u32, rng: &mut SplitMix) -> Lesion {
    let s = f64::from(size);
    let row = (rng.next_u64() % 3) as usize;
    let column = (rng.next_u64() % 3) as usize;
    let place = |i: usize| (2 * i + 1) as f64 / 6.0;
    let jitter = |rng: &mut SplitMix| (rng.uniform() * 2.0 - 1.0) * 0.04;
    let cx = (place(column) + jitter(rng)) * s;
    let cy = (place(row) + jitter(rng)) * s;
    let rx = (0.10 + 0.07 * rng.uniform()) * s;
    let ry = (0.10 + 0.07 * rng.uniform()) * s;
    // Background: a rib-like striped texture whose orientation turns from left to right and
    // whose spacing tightens from top to bottom, as anatomy gives every place of a scan its own
    // look; plus noise. The lesion adds to it (the ribs show through, as through a nodule).
    let base = 70.0 + 20.0 * rng.uniform();
    let contrast = 50.0 + 10.0 * rng.uniform();
    let phase = rng.uniform() * std::f64::consts::TAU;
    let bright = 80.0 + 30.0 * rng.uniform();
    let mut pixels = Vec::with_capacity((size * size) as usize);
    for y in 0..size {
        for x in 0..size {
            let (u, w) = ((f64::from(x) + 0.5) / s, (f64::from(y) + 0.5) / s);
            let angle = (u - 0.5) * std::f64::consts::FRAC_PI_2;
            let cycles = 3.0 + 5.0 * w;
            let along = u * angle.sin() + w * angle.cos();
            let mut v = base + contrast * (std::f64::consts::TAU * cycles * along + phase).sin();
            // Distance in units of the radii; a soft rim about 1.5 px wide.
            let (px, py) = (u * s, w * s);
            let d = ((px - cx) / rx).powi(2) + ((py - cy) / ry).powi(2);
            let edge = (1.0 - d.sqrt()) * rx.min(ry) / 1.5;
            v += edge.clamp(0.0, 1.0) * bright;
            v += f64::from(rng.normal()) * 4.0;
            pixels.push(v.round().clamp(0.0, 255.0) as u8);
        }
    }
    let roi = [
        ((cx - rx) / s).max(0.0),
        ((cy - ry) / s).max(0.0),
        ((cx + rx) / s).min(1.0),
        ((cy + ry) / s).min(1.0),
    ];
    Lesion {
        pixels,
        roi,
        row,
        column,
    }
}

/// The seed-format record of image `name` showing `lesion`.
fn record(name: &str, lesion: &Lesion, size: u32) -> Value {
    let [x1, y1, x2, y2] = lesion.roi;
    let area = (x2 - x1) * (y2 - y1) * std::f64::consts::PI / 4.0 * 100.0;
    let place = format!("{} {}", ROWS[lesion.row], COLUMNS[lesion.column]);
    json!({
        "messages": [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": {"extractions": {
                "Modality": "Synthetic phantom",
                "Organ": "Phantom",
                "ROI Location": place,
                "ROI Size": format!("about {area:.0}% of the image"),
                "Texture": "Homogeneous, much brighter than the surrounding background",
                DIAGNOSIS_FIELD: lesion.diagnosis(),
            }}}
        ],
        "images": [name],
        "roi_coords": lesion.roi,
        "synthetic": {"seed_size": size},
    })
}

/// The seed-format record of image `name` showing `finding` (the kind task). The structured
/// fields say what the finding looks like, not where it is.
fn kind_record(name: &str, finding: &synthetic_kind::Finding, size: u32) -> Value {
    const BACKGROUNDS: [&str; 3] = ["Chest", "Head", "Abdomen"];
    json!({
        "messages": [
            {"role": "user", "content": KIND_QUESTION},
            {"role": "assistant", "content": {"extractions": {
                "Modality": "Synthetic phantom",
                "Organ": BACKGROUNDS[finding.background],
                "Finding": synthetic_kind::KINDS[finding.kind].name,
                DIAGNOSIS_FIELD: finding.diagnosis(),
            }}}
        ],
        "images": [name],
        "roi_coords": finding.roi,
        "synthetic": {"seed_size": size, "task": "kind"},
    })
}

/// Writes `config.count` images under `out/images/` and their records to `out/raw_data.json`
/// (for `roiscope prepare --input out/raw_data.json --images out`). Returns the records.
/// `progress(done, total)` is called after each image.
pub fn write_set(
    out: &Path,
    config: SyntheticConfig,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<Vec<Value>> {
    ensure!(config.count > 0, "count must be at least 1");
    ensure!(
        (32..=4096).contains(&config.size),
        "size must be between 32 and 4096 pixels, not {}",
        config.size
    );
    let images = out.join("images");
    std::fs::create_dir_all(&images)
        .with_context(|| format!("cannot create {}", images.display()))?;
    let mut rng = SplitMix::new(config.seed);
    let mut records = Vec::with_capacity(config.count);
    for i in 0..config.count {
        let name = format!("images/lesion_{i:05}.png");
        let (pixels, record) = match config.task {
            SyntheticTask::Place => {
                let lesion = draw(config.size, &mut rng);
                let r = record(&name, &lesion, config.size);
                (lesion.pixels, r)
            }
            SyntheticTask::Kind => {
                let finding = synthetic_kind::draw(config.size, &mut rng);
                let r = kind_record(&name, &finding, config.size);
                (finding.pixels, r)
            }
        };
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image_grey(&pixels, config.size)
            .with_context(|| format!("cannot encode {name}"))?;
        write_atomic(&out.join(&name), &png)?;
        records.push(record);
        progress(i + 1, config.count);
    }
    let text = serde_json::to_string_pretty(&records)? + "\n";
    write_atomic(&out.join("raw_data.json"), text.as_bytes())?;
    Ok(records)
}

/// `PngEncoder` with the one call this module needs.
trait GreyPng {
    fn write_image_grey(self, pixels: &[u8], size: u32) -> image::ImageResult<()>;
}

impl<W: std::io::Write> GreyPng for image::codecs::png::PngEncoder<W> {
    fn write_image_grey(self, pixels: &[u8], size: u32) -> image::ImageResult<()> {
        use image::ImageEncoder;
        self.write_image(pixels, size, size, image::ExtendedColorType::L8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The box is where the lesion brightens the image, and the text names the right place.
    #[test]
    fn the_box_holds_the_blob_and_the_text_names_its_place() {
        let mut rng = SplitMix::new(3);
        for _ in 0..30 {
            let l = draw(64, &mut rng);
            let [x1, y1, x2, y2] = l.roi.map(|c| c * 64.0);
            let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
            let (mut core, mut outside) = ((0.0, 0), (0.0, 0));
            for y in 0..64 {
                for x in 0..64 {
                    let v = f64::from(l.pixels[y * 64 + x]);
                    let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                    if (px - cx).abs() < (x2 - x1) / 4.0 && (py - cy).abs() < (y2 - y1) / 4.0 {
                        core = (core.0 + v, core.1 + 1);
                    } else if px < x1 || px > x2 || py < y1 || py > y2 {
                        outside = (outside.0 + v, outside.1 + 1);
                    }
                }
            }
            let mean = |(sum, n): (f64, usize)| sum / n as f64;
            assert!(
                mean(core) > mean(outside) + 60.0,
                "{} {}",
                mean(core),
                mean(outside)
            );
            let centre = [(l.roi[0] + l.roi[2]) / 2.0, (l.roi[1] + l.roi[3]) / 2.0];
            assert_eq!((centre[0] * 3.0).floor() as usize, l.column);
            assert_eq!((centre[1] * 3.0).floor() as usize, l.row);
            assert!(l.diagnosis().contains(if l.row == 1 && l.column == 1 {
                "centre"
            } else {
                COLUMNS[l.column]
            }));
            assert_eq!(place_of(&l.diagnosis()), Some((l.row, l.column)));
        }
        assert_eq!(place_of("A bright round lesion."), None);
    }
}
