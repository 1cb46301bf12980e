//! Prints what the robust ROI detector saw in one image, and optionally writes the image as
//! it was decoded (a DICOM file's rendering, say) to a PNG:
//! `cargo run --release --example roi_explain -- IMAGE [DECODED.png]`

use roiscope::data::image_io::{load_rgb8, LoadOptions};

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: roi_explain IMAGE [DECODED.png]");
    let img = load_rgb8(path.as_ref(), LoadOptions::default()).expect("readable image");
    if let Some(out) = std::env::args().nth(2) {
        img.save(&out).expect("writable PNG");
    }
    print!("{}", roiscope::data::roi::robust::explain(&img));
}
