//! `roiscope detect-roi` as a user runs it: a real child process, real files, bad ones among them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{ImageBuffer, Luma, Rgb, Rgba};
use serde_json::Value;

fn roiscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_roiscope"))
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    roiscope().args(args).output().expect("roiscope runs")
}

/// `roiscope detect-roi --clean OUT_DIR INPUT`.
fn detect_clean(out_dir: &Path, input: &Path) -> Output {
    roiscope()
        .args(["detect-roi", "--clean"])
        .arg(out_dir)
        .arg(input)
        .output()
        .expect("roiscope runs")
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .expect("stdout is UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn boxed_image(w: u32, h: u32, rect: [u32; 4], line: u32) -> image::RgbImage {
    let mut img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = (60 + (x * 3 + y * 5) % 90) as u8;
        Rgb([v, v, v])
    });
    let [x0, y0, x1, y1] = rect;
    for y in y0..y1 {
        for x in x0..x1 {
            if x < x0 + line || x >= x1 - line || y < y0 + line || y >= y1 - line {
                img.put_pixel(x, y, Rgb([0, 255, 0]));
            }
        }
    }
    img
}

/// A PNG whose header claims `w` x `h` pixels but which carries almost no data.
fn png_header_only(path: &Path, w: u32, h: u32) {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    std::fs::write(path, png).unwrap();
}

#[test]
fn help_lists_every_command() {
    let out = roiscope().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["detect-roi", "sample"] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
}

#[test]
fn finds_boxes_in_files_and_folders_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("nested/deeper");
    std::fs::create_dir_all(&sub).unwrap();
    boxed_image(200, 150, [20, 30, 120, 110], 2)
        .save(sub.join("b.png"))
        .unwrap();
    boxed_image(100, 100, [10, 10, 60, 40], 1)
        .save(dir.path().join("nested/a.jpg"))
        .unwrap();
    let plain = image::RgbImage::from_pixel(64, 64, Rgb([30, 30, 30]));
    plain.save(dir.path().join("plain.bmp")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();

    let out = run(&[
        "detect-roi".as_ref(),
        dir.path().join("plain.bmp").as_os_str(),
        dir.path().join("nested").as_os_str(),
        "--threads".as_ref(),
        "2".as_ref(),
    ]
    .iter()
    .map(|s| s.as_ref())
    .collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = lines(&out);
    let names: Vec<&str> = v.iter().map(|l| l["image"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names[0].ends_with("plain.bmp"));
    assert!(names[1].ends_with("nested/a.jpg"));
    assert!(names[2].ends_with("nested/deeper/b.png"));
    assert!(v[0]["roi"].is_null() && v[0]["error"].is_null());
    assert_eq!(
        v[2]["rois"][0]["box_px"],
        serde_json::json!([20, 30, 100, 80])
    );
    let roi: Vec<f64> = v[2]["roi"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(roi, vec![0.1, 0.2, 0.6, 110.0 / 150.0]);
    assert!(v[1]["rois"][0]["confidence"].as_f64().unwrap() > 0.8);
}

#[test]
fn bad_files_get_an_error_line_and_the_rest_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = boxed_image(120, 90, [10, 10, 80, 70], 2);
    good.save(d.join("good.png")).unwrap();
    let mut jpeg = Vec::new();
    good.write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    std::fs::write(d.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    std::fs::write(d.join("zero.png"), b"").unwrap();
    std::fs::write(d.join("text.png"), b"this is not a picture at all").unwrap();
    let mut corrupt = jpeg.clone();
    for b in corrupt.iter_mut().skip(200).take(400) {
        *b = 0xff;
    }
    std::fs::write(d.join("corrupt.jpg"), corrupt).unwrap();
    png_header_only(&d.join("huge.png"), 20000, 20000);
    image::RgbImage::from_pixel(1, 1, Rgb([0, 255, 0]))
        .save(d.join("tiny.png"))
        .unwrap();
    let sixteen: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(80, 60, |x, y| {
        if (10..70).contains(&x) && (y == 10 || y == 50)
            || (10..=50).contains(&y) && (x == 10 || x == 69)
        {
            Rgb([0, 65535, 0])
        } else {
            Rgb([20000, 20000, 20000])
        }
    });
    sixteen.save(d.join("sixteen.png")).unwrap();
    ImageBuffer::<Luma<u8>, _>::from_pixel(50, 40, Luma([77]))
        .save(d.join("grey.png"))
        .unwrap();
    ImageBuffer::from_fn(90, 70, |x, y| {
        let p = good.get_pixel(x, y).0;
        Rgba([p[0], p[1], p[2], 128])
    })
    .save(d.join("rgba.png"))
    .unwrap();
    let missing = d.join("missing.png");

    let mut args: Vec<PathBuf> = [
        "truncated.jpg",
        "zero.png",
        "text.png",
        "corrupt.jpg",
        "huge.png",
        "tiny.png",
        "sixteen.png",
        "grey.png",
        "rgba.png",
    ]
    .iter()
    .map(|n| d.join(n))
    .collect();
    args.push(missing);
    args.push(d.join("good.png"));
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = d.join(std::ffi::OsStr::from_bytes(b"caf\xe9-\xff.png"));
        good.save(&odd).unwrap();
        args.push(odd);
    }
    let out = roiscope().arg("detect-roi").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let v = lines(&out);
    assert_eq!(v.len(), args.len(), "{v:#?}");
    let by_name = |name: &str| {
        v.iter()
            .find(|l| l["image"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("no line for {name}"))
    };
    let error_of = |name: &str| by_name(name)["error"].as_str().map(str::to_owned);
    assert!(error_of("truncated.jpg").unwrap().contains("JPEG"));
    assert!(error_of("zero.png").unwrap().contains("empty file"));
    assert!(error_of("text.png")
        .unwrap()
        .contains("not a JPEG, PNG, BMP or TIFF"));
    assert!(error_of("corrupt.jpg").is_some());
    let huge = error_of("huge.png").unwrap();
    assert!(
        huge.contains("20000x20000") && huge.contains("limit"),
        "{huge}"
    );
    assert!(error_of("missing.png")
        .unwrap()
        .contains("cannot read file"));
    for ok in [
        "tiny.png",
        "grey.png",
        "good.png",
        "sixteen.png",
        "rgba.png",
    ] {
        assert!(by_name(ok)["error"].is_null(), "{ok}: {:?}", by_name(ok));
    }
    assert!(by_name("tiny.png")["roi"].is_null());
    assert!(by_name("grey.png")["roi"].is_null());
    assert_eq!(
        by_name("sixteen.png")["rois"][0]["box_px"],
        serde_json::json!([10, 10, 60, 41])
    );
    assert_eq!(
        by_name("good.png")["rois"][0]["box_px"],
        serde_json::json!([10, 10, 70, 60])
    );
    assert_eq!(
        by_name("rgba.png")["rois"][0]["box_px"],
        serde_json::json!([10, 10, 70, 60])
    );
    #[cfg(unix)]
    {
        let odd = v.last().unwrap();
        assert!(odd["error"].is_null());
        assert!(odd["image"].as_str().unwrap().contains('\u{fffd}'));
    }
}

#[test]
fn unreadable_file_is_reported() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("locked.png");
    boxed_image(40, 40, [5, 5, 30, 30], 1).save(&p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&p).is_ok() {
        // Running as root: permission bits do not stop reads, so there is nothing to observe.
        eprintln!("skipping the permission check: this process can read mode-000 files");
        return;
    }
    let out = run(&["detect-roi".as_ref(), p.as_os_str()]);
    let v = lines(&out);
    assert!(v[0]["error"].as_str().unwrap().contains("cannot read file"));
}

#[test]
fn usage_errors_exit_2() {
    let code = |args: &[&str]| roiscope().args(args).output().unwrap().status.code();
    assert_eq!(code(&["detect-roi"]), Some(2));
    assert_eq!(code(&["detect-roi", "--threads", "0", "x.png"]), Some(2));
    assert_eq!(code(&["detect-roi", "--mode", "fancy", "x.png"]), Some(2));
    assert_eq!(
        code(&["detect-roi", "--mode", "seed", "--clean", "/tmp/x", "x.png"]),
        Some(2)
    );
    // A missing file is not a usage error: it gets an error line.
    assert_eq!(code(&["detect-roi", "/definitely/not/here.png"]), Some(0));
}

#[test]
fn clean_writes_marker_free_copies() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    boxed_image(160, 120, [30, 20, 130, 100], 2)
        .save(input.join("x.png"))
        .unwrap();
    let out = detect_clean(&dir.path().join("clean"), &input);
    assert!(out.status.success());
    let v = lines(&out);
    let cleaned_path = v[0]["clean"].as_str().unwrap();
    assert!(cleaned_path.ends_with("x.png"));
    let cleaned = image::open(cleaned_path).unwrap().into_rgb8();
    assert!(
        cleaned.pixels().all(|p| p.0[1] <= p.0[0].max(p.0[2]) + 2),
        "green left behind"
    );
    // Nothing is found in the cleaned copy.
    let again = roiscope()
        .arg("detect-roi")
        .arg(cleaned_path)
        .output()
        .unwrap();
    assert!(lines(&again)[0]["roi"].is_null());
}

/// pydicom's `GDCMJ2K_TextGBR.dcm`: the words "red", "green" and "blue" in bold type. The
/// bowl of the green "g" has four straight-looking sides and a hollow inside; it is a letter,
/// not a box, and `--clean` must leave it as it is.
#[test]
fn the_letter_g_is_not_a_box_and_clean_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let input =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom/GDCMJ2K_TextGBR.dcm");
    let out = detect_clean(&dir.path().join("clean"), &input);
    assert!(out.status.success());
    let v = lines(&out);
    assert!(v[0]["error"].is_null(), "{}", v[0]);
    assert!(v[0]["roi"].is_null(), "a box was reported: {}", v[0]);
    assert_eq!(v[0]["rois"].as_array().unwrap().len(), 0);
    let cleaned = image::open(v[0]["clean"].as_str().unwrap())
        .unwrap()
        .into_rgb8();
    // The "g" (x 28..70, y 159..215) keeps its green: about 1,100 pixels of pure green.
    let green = (28..70)
        .flat_map(|x| (159..215).map(move |y| (x, y)))
        .filter(|&(x, y)| {
            let p = cleaned.get_pixel(x, y).0;
            p[1] > 200 && p[0] < 60 && p[2] < 60
        })
        .count();
    assert!(green > 900, "only {green} green pixels left in the \"g\"");
}

#[test]
fn clean_names_that_collide_are_reported_and_the_image_still_detected() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let img = boxed_image(120, 90, [10, 10, 80, 70], 2);
    img.save(input.join("a.png")).unwrap();
    img.save_with_format(input.join("a.bmp"), image::ImageFormat::Bmp)
        .unwrap();
    let out = roiscope()
        .args(["detect-roi", "--clean"])
        .arg(dir.path().join("clean"))
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v = lines(&out);
    assert_eq!(v.len(), 2);
    // a.bmp comes first and writes a.png; a.png is still detected, its copy not written.
    assert!(v[0]["clean"].as_str().unwrap().ends_with("a.png"));
    assert_eq!(
        v[1]["rois"][0]["box_px"],
        serde_json::json!([10, 10, 70, 60])
    );
    let err = v[1]["error"].as_str().unwrap();
    assert!(err.contains("another input already writes"), "{err}");
}

#[test]
fn broken_pipe_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..50 {
        boxed_image(64, 64, [5, 5, 40, 40], 1)
            .save(dir.path().join(format!("{i:03}.png")))
            .unwrap();
    }
    let mut child = roiscope()
        .arg("detect-roi")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let _ = std::io::stderr().flush();
}
