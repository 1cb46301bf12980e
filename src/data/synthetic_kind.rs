//! The second synthetic task: *what* a finding is, not where. Each grey image shows one finding
//! of one of four kinds that differ in appearance (brightness, texture, shape and size), at a
//! random place and size, over a background with anatomy-like structure (a chest, a head or an
//! abdomen, each with its own organs, walls and soft intensity changes). The diagnosis names the
//! kind in one of several wordings and never the place, as a clinical diagnosis does ("suggestive
//! of a brain hemorrhage"); so verifying a text means checking what the image shows, and the
//! place task's shortcut (compare a named place with the located region) cannot work.
//!
//! The kinds:
//! - nodule: a small, bright, homogeneous round blob;
//! - cyst: a dark, fluid-like oval with a thin bright wall;
//! - mass: a large, lobulated, mottled region, moderately brighter than its surroundings;
//! - calcification: a cluster of a few tiny, very bright specks.
//!
//! The box is the tight box of the pixels the finding changes.

use crate::model::random::SplitMix;

/// One kind of finding: its name and the phrases a diagnosis may use for it.
pub struct KindSpec {
    pub name: &'static str,
    pub phrases: &'static [&'static str],
}

pub const KINDS: [KindSpec; 4] = [
    KindSpec {
        name: "nodule",
        phrases: &[
            "a solid nodule",
            "a dense round nodule",
            "a nodular opacity",
        ],
    },
    KindSpec {
        name: "cyst",
        phrases: &[
            "a simple cyst",
            "a fluid-filled cystic lesion",
            "a thin-walled cyst",
        ],
    },
    KindSpec {
        name: "mass",
        phrases: &[
            "an irregular mass",
            "a lobulated heterogeneous mass",
            "a mottled soft-tissue mass",
        ],
    },
    KindSpec {
        name: "calcification",
        phrases: &[
            "clustered calcifications",
            "a group of punctate calcifications",
            "calcified foci",
        ],
    },
];

/// Sentence frames a phrase is put into; none says where.
const FRAMES: [&str; 5] = [
    "Findings are suggestive of {}.",
    "The appearance is consistent with {}.",
    "There is {} in this scan.",
    "Impression: {}; clinical correlation is advised.",
    "Most likely {}.",
];

/// The diagnosis for `kind` in wording `wording` (any number: it is taken modulo the wordings).
pub fn diagnosis(kind: usize, wording: usize) -> String {
    let phrases = KINDS[kind].phrases;
    let phrase = phrases[wording % phrases.len()];
    let frame = FRAMES[(wording / phrases.len()) % FRAMES.len()];
    let text = frame.replacen("{}", phrase, 1);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => text,
    }
}

/// Number of distinct wordings of a kind.
pub fn wordings(kind: usize) -> usize {
    KINDS[kind].phrases.len() * FRAMES.len()
}

/// The kind a diagnosis of [`diagnosis`] names; None for any other text.
pub fn kind_of(text: &str) -> Option<usize> {
    (0..KINDS.len()).find(|&k| (0..wordings(k)).any(|w| diagnosis(k, w) == text.trim()))
}

/// One generated image.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub pixels: Vec<u8>,
    /// Normalised `[x1, y1, x2, y2]`.
    pub roi: [f64; 4],
    pub kind: usize,
    pub wording: usize,
    /// Which background: 0 chest, 1 head, 2 abdomen.
    pub background: usize,
}

impl Finding {
    pub fn diagnosis(&self) -> String {
        diagnosis(self.kind, self.wording)
    }
}

/// A smooth random field: a few random plane waves, roughly within -1..1.
struct Smooth {
    waves: Vec<(f64, f64, f64, f64)>,
}

impl Smooth {
    fn new(rng: &mut SplitMix, count: usize, max_cycles: f64) -> Self {
        let waves = (0..count)
            .map(|_| {
                let angle = rng.uniform() * std::f64::consts::TAU;
                let cycles = 0.5 + rng.uniform() * max_cycles;
                (
                    angle.cos() * cycles,
                    angle.sin() * cycles,
                    rng.uniform() * std::f64::consts::TAU,
                    1.0 / count as f64,
                )
            })
            .collect();
        Smooth { waves }
    }

    fn at(&self, u: f64, w: f64) -> f64 {
        self.waves
            .iter()
            .map(|&(fx, fy, phase, a)| {
                a * (std::f64::consts::TAU * (fx * u + fy * w) + phase).sin()
            })
            .sum::<f64>()
            * 2.0
    }
}

/// An ellipse `(cx, cy, rx, ry)` in image units: how far inside, 1 at the centre, 0 on the rim,
/// negative outside.
fn inside(e: (f64, f64, f64, f64), u: f64, w: f64) -> f64 {
    1.0 - (((u - e.0) / e.2).powi(2) + ((w - e.1) / e.3).powi(2)).sqrt()
}

/// A soft step from 0 (outside) to 1 (inside) over `width` of the ellipse's radius.
fn soft(depth: f64, width: f64) -> f64 {
    (depth / width).clamp(0.0, 1.0)
}

/// Anatomy-like background intensity at `(u, w)` (image units) for style `style`.
struct Background {
    style: usize,
    body: (f64, f64, f64, f64),
    organs: Vec<((f64, f64, f64, f64), f64)>,
    shading: Smooth,
    folds: Smooth,
    level: f64,
    rib_phase: f64,
    rib_cycles: f64,
}

impl Background {
    fn new(rng: &mut SplitMix) -> Self {
        let style = (rng.next_u64() % 3) as usize;
        let mut jit = |base: f64, spread: f64| base + (rng.uniform() * 2.0 - 1.0) * spread;
        let body = (
            jit(0.5, 0.04),
            jit(0.5, 0.04),
            jit(0.46, 0.04),
            jit(0.44, 0.05),
        );
        let organs = match style {
            // Chest: two dark lung fields and a brighter heart between them.
            0 => vec![
                (
                    (
                        jit(0.3, 0.03),
                        jit(0.45, 0.04),
                        jit(0.15, 0.02),
                        jit(0.28, 0.03),
                    ),
                    -45.0,
                ),
                (
                    (
                        jit(0.7, 0.03),
                        jit(0.45, 0.04),
                        jit(0.15, 0.02),
                        jit(0.28, 0.03),
                    ),
                    -45.0,
                ),
                (
                    (
                        jit(0.52, 0.03),
                        jit(0.62, 0.04),
                        jit(0.12, 0.02),
                        jit(0.12, 0.02),
                    ),
                    20.0,
                ),
            ],
            // Head: a bright skull ring is drawn from the body; dark ventricles in the middle.
            1 => vec![
                (
                    (
                        jit(0.44, 0.02),
                        jit(0.48, 0.03),
                        jit(0.05, 0.01),
                        jit(0.12, 0.02),
                    ),
                    -40.0,
                ),
                (
                    (
                        jit(0.56, 0.02),
                        jit(0.48, 0.03),
                        jit(0.05, 0.01),
                        jit(0.12, 0.02),
                    ),
                    -40.0,
                ),
            ],
            // Abdomen: a large liver, a kidney and a bowel loop, each its own grey.
            _ => vec![
                (
                    (
                        jit(0.35, 0.04),
                        jit(0.4, 0.04),
                        jit(0.2, 0.03),
                        jit(0.16, 0.03),
                    ),
                    18.0,
                ),
                (
                    (
                        jit(0.7, 0.04),
                        jit(0.55, 0.05),
                        jit(0.08, 0.02),
                        jit(0.11, 0.02),
                    ),
                    28.0,
                ),
                (
                    (
                        jit(0.5, 0.05),
                        jit(0.72, 0.04),
                        jit(0.14, 0.03),
                        jit(0.07, 0.02),
                    ),
                    -20.0,
                ),
            ],
        };
        Background {
            style,
            body,
            organs,
            shading: Smooth::new(rng, 4, 1.5),
            folds: Smooth::new(rng, 6, 5.0),
            level: 90.0 + 25.0 * rng.uniform(),
            rib_phase: rng.uniform() * std::f64::consts::TAU,
            rib_cycles: 5.0 + 3.0 * rng.uniform(),
        }
    }

    fn at(&self, u: f64, w: f64) -> f64 {
        let depth = inside(self.body, u, w);
        let body = soft(depth, 0.04);
        let mut v = 15.0 + body * (self.level + 12.0 * self.shading.at(u, w));
        match self.style {
            0 => {
                // Ribs: curved bright bands across the chest.
                let curve = w + 0.12 * ((u - 0.5) * 2.0).powi(2);
                let rib = (std::f64::consts::TAU * self.rib_cycles * curve + self.rib_phase).sin();
                v += body * 18.0 * rib.max(0.0).powi(2);
            }
            1 => {
                // Skull: a bright wall just inside the outline; gyral folds inside it.
                v += 90.0 * (1.0 - (depth - 0.05).abs() / 0.04).clamp(0.0, 1.0);
                v += soft(depth - 0.1, 0.03) * 10.0 * self.folds.at(u, w);
            }
            _ => {
                v += body * 8.0 * self.folds.at(u, w);
            }
        }
        for &(e, delta) in &self.organs {
            v += body * soft(inside(e, u, w), 0.15) * delta;
        }
        v
    }
}

/// Draws one image of `size` pixels from `rng`.
pub fn draw(size: u32, rng: &mut SplitMix) -> Finding {
    let s = f64::from(size);
    let kind = (rng.next_u64() % KINDS.len() as u64) as usize;
    let wording = (rng.next_u64() % wordings(kind) as u64) as usize;
    let background = Background::new(rng);
    // Radius (image units) by kind: the kinds overlap in size, so size alone does not tell them.
    let radius = match kind {
        0 => 0.06 + 0.05 * rng.uniform(),
        1 => 0.08 + 0.07 * rng.uniform(),
        2 => 0.12 + 0.08 * rng.uniform(),
        _ => 0.06 + 0.04 * rng.uniform(),
    };
    let aspect = 0.75 + 0.5 * rng.uniform();
    let (rx, ry) = (radius * aspect.sqrt(), radius / aspect.sqrt());
    // Anywhere in the body (as findings are), away from the image edge.
    let margin = 0.04;
    let (mut cx, mut cy) = (0.5, 0.5);
    for _ in 0..50 {
        cx = margin + rx + rng.uniform() * (1.0 - 2.0 * (margin + rx));
        cy = margin + ry + rng.uniform() * (1.0 - 2.0 * (margin + ry));
        if inside(background.body, cx, cy) > 0.2 {
            break;
        }
    }
    let tilt = rng.uniform() * std::f64::consts::TAU;
    let lobes = [
        (
            0.1 + 0.15 * rng.uniform(),
            3.0,
            rng.uniform() * std::f64::consts::TAU,
        ),
        (
            0.05 + 0.1 * rng.uniform(),
            5.0,
            rng.uniform() * std::f64::consts::TAU,
        ),
    ];
    let specks: Vec<(f64, f64)> = (0..3 + rng.next_u64() % 4)
        .map(|_| {
            let a = rng.uniform() * std::f64::consts::TAU;
            let r = rng.uniform().sqrt() * 0.8;
            (cx + a.cos() * r * rx, cy + a.sin() * r * ry)
        })
        .collect();
    let speck_radius = (1.6 / s).max(0.018);
    let gain = 0.85 + 0.3 * rng.uniform();
    let texture_seed = rng.next_u64();
    let mut texture = SplitMix::new(texture_seed);
    let (mut lo_x, mut lo_y, mut hi_x, mut hi_y) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    let mut pixels = Vec::with_capacity((size * size) as usize);
    let rim = 1.5 / s / radius;
    for y in 0..size {
        for x in 0..size {
            let (u, w) = ((f64::from(x) + 0.5) / s, (f64::from(y) + 0.5) / s);
            let mut v = background.at(u, w);
            // The finding's own frame: rotated by `tilt`, in units of its radii.
            let (du, dw) = (u - cx, w - cy);
            let (a, b) = (
                (du * tilt.cos() + dw * tilt.sin()) / rx,
                (-du * tilt.sin() + dw * tilt.cos()) / ry,
            );
            let r = (a * a + b * b).sqrt();
            let theta = b.atan2(a);
            let speckle = f64::from(texture.normal());
            let weight = match kind {
                0 => {
                    let m = soft(1.0 - r, rim);
                    v = v * (1.0 - 0.4 * m) + m * 120.0 * gain + m * 4.0 * speckle;
                    m
                }
                1 => {
                    let m = soft(1.0 - r, rim);
                    let wall = (1.0 - (r - 1.0).abs() / (1.5 * rim)).clamp(0.0, 1.0);
                    v = v * (1.0 - 0.75 * m) + m * 10.0 + wall * 70.0 * gain;
                    m.max(wall)
                }
                2 => {
                    let edge = 1.0
                        + lobes
                            .iter()
                            .map(|&(amp, k, phase)| amp * (k * theta + phase).sin())
                            .sum::<f64>();
                    let m = soft(edge - r, rim);
                    v += m * gain * (50.0 + 35.0 * speckle);
                    m
                }
                _ => {
                    let m = specks
                        .iter()
                        .map(|&(sx, sy)| {
                            let d = ((u - sx).powi(2) + (w - sy).powi(2)).sqrt();
                            (1.0 - d / speck_radius).clamp(0.0, 1.0)
                        })
                        .fold(0.0, f64::max);
                    v += m * 170.0 * gain;
                    m
                }
            };
            if weight > 0.25 {
                lo_x = lo_x.min(u - 0.5 / s);
                hi_x = hi_x.max(u + 0.5 / s);
                lo_y = lo_y.min(w - 0.5 / s);
                hi_y = hi_y.max(w + 0.5 / s);
            }
            v += f64::from(rng.normal()) * 4.0;
            pixels.push(v.round().clamp(0.0, 255.0) as u8);
        }
    }
    let roi = [
        lo_x.max(0.0),
        lo_y.max(0.0),
        hi_x.min(1.0).max(lo_x + 1.0 / s),
        hi_y.min(1.0).max(lo_y + 1.0 / s),
    ];
    Finding {
        pixels,
        roi,
        kind,
        wording,
        background: background.style,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind and background occurs, each box is a proper part of the image, and the text
    /// names the kind and no place.
    #[test]
    fn findings_have_their_box_and_the_text_names_only_the_kind() {
        let mut rng = SplitMix::new(5);
        let (mut kinds, mut styles) = ([0; 4], [0; 3]);
        for _ in 0..60 {
            let f = draw(64, &mut rng);
            kinds[f.kind] += 1;
            styles[f.background] += 1;
            let [x1, y1, x2, y2] = f.roi;
            assert!(0.0 <= x1 && x1 < x2 && x2 <= 1.0 && 0.0 <= y1 && y1 < y2 && y2 <= 1.0);
            assert!(x2 - x1 > 0.03 && x2 - x1 < 0.6, "{:?}", f.roi);
            let text = f.diagnosis();
            assert_eq!(kind_of(&text), Some(f.kind), "{text}");
            for place in [
                "upper", "lower", "left", "right", "central", "centre", "middle",
            ] {
                assert!(!text.contains(place), "{text}");
            }
        }
        assert!(kinds.iter().all(|&n| n > 5), "{kinds:?}");
        assert!(styles.iter().all(|&n| n > 5), "{styles:?}");
        assert_eq!(kind_of("A bright round lesion."), None);
        // Wordings differ within a kind and never collide across kinds.
        let all: Vec<String> = (0..4)
            .flat_map(|k| (0..wordings(k)).map(move |w| diagnosis(k, w)))
            .collect();
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
    }
}
