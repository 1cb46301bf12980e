//! Prints what the robust ROI detector saw in one image:
//! `cargo run --release --example roi_explain -- IMAGE`

use roiscope::data::image_io::{load_rgb8, LoadOptions};

fn main() {
    let path = std::env::args().nth(1).expect("usage: roi_explain IMAGE");
    let img = load_rgb8(path.as_ref(), LoadOptions::default()).expect("readable image");
    print!("{}", roiscope::data::roi::robust::explain(&img));
}
