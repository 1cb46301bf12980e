//! Prints each detected box with its per-side line widths (top, right, bottom, left):
//! `cargo run --release --example roi_lines -- IMAGE`
fn main() {
    let path = std::env::args().nth(1).expect("usage: roi_lines IMAGE");
    let img = roiscope::data::image_io::load_rgb8(path.as_ref(), Default::default()).unwrap();
    for r in roiscope::data::roi::robust::detect(&img) {
        println!(
            "{:?} line {:?} confidence {:?}",
            r.bbox, r.line, r.confidence
        );
    }
}
