//! Where `detect-roi` spends its time on a folder (best of 5 passes): reading files, decoding,
//! robust detection. `cargo run --release --example time_split -- tests/fixtures/roi_set`
use std::time::Instant;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: time_split DIR");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "png"))
        .collect();
    files.sort();
    let mut best = [f64::INFINITY; 3];
    for _ in 0..5 {
        let mut t = [0.0; 3];
        for f in &files {
            let s = Instant::now();
            let bytes = std::fs::read(f).unwrap();
            t[0] += s.elapsed().as_secs_f64();
            let s = Instant::now();
            let img = roiscope::data::image_io::decode_rgb8(&bytes, Default::default()).unwrap();
            t[1] += s.elapsed().as_secs_f64();
            let s = Instant::now();
            let _ = roiscope::data::roi::robust::detect(&img);
            t[2] += s.elapsed().as_secs_f64();
            roiscope::data::image_io::recycle(img);
        }
        for i in 0..3 {
            best[i] = best[i].min(t[i]);
        }
    }
    println!(
        "{} files: read {:.3}s, decode {:.3}s, detect {:.3}s",
        files.len(),
        best[0],
        best[1],
        best[2]
    );
}
