//! Scores the detectors and marker removal on a labelled ROI set:
//! `cargo run --release --example roi_eval -- tests/fixtures/roi_set`

#[path = "../tests/support/roi_set.rs"]
mod roi_set;

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "tests/fixtures/roi_set".into()),
    );
    let entries = roi_set::load_truth(&dir);
    let r = roi_set::score_robust(&dir, &entries);
    for f in &r.failures {
        println!("{f}");
    }
    println!(
        "robust: primary correct {}/{} ({:.2}%), boxes recalled {}/{}, false positives {}/{} ({:.2}%), images with a stray box {}/{}",
        r.primary_correct,
        r.with_box,
        100.0 * r.primary_correct as f64 / r.with_box.max(1) as f64,
        r.truth_boxes_found,
        r.truth_boxes,
        r.false_positives,
        r.without_box,
        100.0 * r.false_positives as f64 / r.without_box.max(1) as f64,
        r.spurious,
        r.with_box + r.without_box
    );
    if dir.join("seed_boxes.json").is_file() {
        let (n, bad) = roi_set::score_seed(&dir);
        for b in bad.iter().take(20) {
            println!("seed mismatch: {b}");
        }
        println!("seed: {}/{} boxes identical to OpenCV", n - bad.len(), n);
    }
    if !entries.iter().any(|e| e.clean.is_some()) {
        return;
    }
    let c = roi_set::score_clean(&dir, &entries);
    let worst = c
        .mad
        .iter()
        .cloned()
        .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
    let mean = c.mean_mad();
    let over: Vec<_> = c.mad.iter().filter(|m| m.1 > 8.0).collect();
    println!(
        "clean: {} images, mean MAD {:.2}, worst {:.2} ({}), over 8: {}, green pixels left {}",
        c.images,
        mean,
        worst.1,
        worst.0,
        over.len(),
        c.green_left
    );
    println!("boxes found again in cleaned images: {:?}", c.found_again);
    let cleaned: Vec<f64> = c
        .mad
        .iter()
        .filter(|(f, _)| !c.missed.contains(f))
        .map(|m| m.1)
        .collect();
    println!(
        "clean, images whose boxes were all found: {} images, mean MAD {:.2}",
        cleaned.len(),
        cleaned.iter().sum::<f64>() / cleaned.len().max(1) as f64
    );
    for (f, m) in over {
        println!("  clean over 8: {f} {m:.2}");
    }
}
