//! Exports that the tools they are meant for can open: LLaMA-Factory's sharegpt layout with its
//! `dataset_info.json` entry, DICOM records as their rendering, paths relative to a media folder.
//! (`tests/fixtures/check_llamafactory_export.py` loads such an export through LLaMA-Factory's
//! own data loader.)

#[path = "support/project.rs"]
mod support;

use std::path::{Path, PathBuf};

use roiscope::data::image_io::{load_rgb8, LoadOptions};
use serde_json::{json, Value};
use support::*;

const DICOM: &str = "MR_small.dcm";

fn dicom_fixture() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dicom")).join(DICOM)
}

/// A project over three ROI test images and one DICOM file (two records share it; one of them
/// brings its own box), a question without `<image>` and a plain-text answer.
fn project(tmp: &Path) -> (PathBuf, PathBuf) {
    let root = tmp.join("data");
    std::fs::create_dir_all(root.join("img")).unwrap();
    std::fs::create_dir_all(root.join("scans")).unwrap();
    let images = roi_images(3);
    for n in &images {
        std::fs::copy(roi_set_dir().join(n), root.join("img").join(n)).unwrap();
    }
    std::fs::copy(dicom_fixture(), root.join("scans/mr.dcm")).unwrap();
    let mut records: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, n)| record(&format!("img/{n}"), i))
        .collect();
    records[1]["messages"][0]["content"] = json!("Describe the finding, no marker.");
    records[2]["messages"][1]["content"] = json!("a plain-text answer");
    let mut dcm = record("scans/mr.dcm", 3);
    dcm["roi_coords"] = json!([0.25, 0.25, 0.75, 0.75]);
    records.push(dcm);
    records.push(record("scans/mr.dcm", 4));
    let input = write_input(tmp, "raw.json", &records);
    let project = tmp.join("project");
    ok(&mut prepare_cmd(&input, &root, &project));
    (root, project)
}

fn export(project: &Path, out: &Path, extra: &[&str]) -> String {
    let o = ok(roiscope()
        .args(["export", "--project", s(project), "--out", s(out)])
        .args(extra));
    String::from_utf8(o.stderr).unwrap()
}

fn read(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The rendering roiscope makes of the DICOM fixture.
fn dicom_rendering() -> image::RgbImage {
    load_rgb8(&dicom_fixture(), LoadOptions::default()).unwrap()
}

#[test]
fn llamafactory_export_has_string_contents_images_that_open_and_a_dataset_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, project) = project(tmp.path());
    let lf = tmp.path().join("lf");
    std::fs::create_dir_all(&lf).unwrap();
    // An entry someone else put there is kept.
    std::fs::write(
        lf.join("dataset_info.json"),
        r#"{"other": {"file_name": "other.json"}}"#,
    )
    .unwrap();
    let out = lf.join("roiscope_train.json");
    let stderr = export(&project, &out, &["--format", "llamafactory"]);
    assert!(stderr.contains("exported 5 records"), "{stderr}");
    assert!(stderr.contains("1 DICOM images rendered"), "{stderr}");

    let info = read(&lf.join("dataset_info.json"));
    assert_eq!(info["other"]["file_name"], "other.json");
    assert_eq!(
        info["roiscope_train"],
        json!({
            "file_name": "roiscope_train.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant", "system_tag": "system"},
        })
    );

    let records = read(&out);
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 5);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(
            r.as_object().unwrap().len(),
            2,
            "only messages and images: {r}"
        );
        let m = r["messages"].as_array().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0]["role"], "user");
        assert_eq!(m[1]["role"], "assistant");
        let q = m[0]["content"].as_str().expect("string question");
        assert_eq!(q.matches("<image>").count(), 1, "{q}");
        let a = m[1]["content"].as_str().expect("string answer");
        let want = if i == 2 {
            "a plain-text answer".to_string()
        } else {
            format!("suggestive of finding {i}")
        };
        assert_eq!(a, want);
        let images = r["images"].as_array().unwrap();
        assert_eq!(images.len(), 1);
        let rel = images[0].as_str().unwrap();
        // LLaMA-Factory joins the path to media_dir, which defaults to the dataset folder.
        assert!(lf.join(rel).is_file(), "{rel}");
    }
    // The question without <image> gets it in front, where roiscope puts the image.
    assert_eq!(
        records[1]["messages"][0]["content"],
        "<image>Describe the finding, no marker."
    );
    // Non-DICOM images are the originals; both DICOM records point at one PNG rendering.
    let n0 = roi_images(1).remove(0);
    assert_eq!(records[0]["images"][0], format!("../data/img/{n0}"));
    let dcm = records[3]["images"][0].as_str().unwrap();
    assert_eq!(dcm, "roiscope_train-media/scans/mr.dcm.png");
    assert_eq!(records[4]["images"][0], dcm);
    let png = image::open(lf.join(dcm)).unwrap().to_rgb8();
    assert_eq!(png, dicom_rendering());

    // Paths relative to another media folder (here the data root, as a user sets media_dir).
    let out2 = lf.join("rooted.json");
    export(
        &project,
        &out2,
        &[
            "--format",
            "llamafactory",
            "--media-dir",
            s(&root),
            "--answer",
            "fields",
        ],
    );
    let rooted = read(&out2);
    assert_eq!(rooted[0]["images"][0], format!("img/{n0}"));
    assert_eq!(
        rooted[3]["images"][0],
        "../lf/rooted-media/scans/mr.dcm.png"
    );
    assert!(root
        .join(rooted[3]["images"][0].as_str().unwrap())
        .is_file());
    // The structured fields as JSON text; a plain-text answer stays itself.
    let fields: Value =
        serde_json::from_str(rooted[0]["messages"][1]["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        fields["extractions"]["Clinical Diagnosis Tips"],
        "suggestive of finding 0"
    );
    assert_eq!(rooted[2]["messages"][1]["content"], "a plain-text answer");
    let info = read(&lf.join("dataset_info.json"));
    assert_eq!(info["rooted"]["file_name"], "rooted.json");
    assert_eq!(info["roiscope_train"]["file_name"], "roiscope_train.json");
}

#[test]
fn marker_free_images_and_seed_json_with_dicom_open_in_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, project) = project(tmp.path());
    let out = tmp.path().join("clean.json");
    let stderr = export(
        &project,
        &out,
        &["--format", "llamafactory", "--images", "marker-free"],
    );
    assert!(stderr.contains("marker-free copies"), "{stderr}");
    let records = read(&out);
    let names = roi_images(3);
    for (i, r) in records.as_array().unwrap().iter().enumerate() {
        let rel = r["images"][0].as_str().unwrap();
        if i == 2 {
            // The third test image has no box: no marker-free copy, the original it is.
            assert_eq!(rel, format!("data/img/{}", names[2]));
            continue;
        }
        assert!(rel.starts_with("clean-media/"), "{rel}");
        assert!(rel.ends_with(".png"), "{rel}");
        image::open(tmp.path().join(rel)).expect("a PNG");
    }

    // seed-json: paths stay relative to the data root (the seed's image folder); the DICOM
    // record with a box becomes its rendering there, the one without a box is left out.
    let seed = tmp.path().join("seed.json");
    export(&project, &seed, &["--format", "seed-json"]);
    let records = read(&seed);
    let records = records.as_array().unwrap();
    let dicom: Vec<&Value> = records
        .iter()
        .filter(|r| r["target_diag"] == "suggestive of finding 3")
        .collect();
    assert_eq!(dicom.len(), 1);
    let rel = dicom[0]["images"][0].as_str().unwrap();
    assert_eq!(rel, "../seed-media/scans/mr.dcm.png");
    let png = image::open(root.join(rel)).unwrap().to_rgb8();
    assert_eq!(png, dicom_rendering());
    for r in records {
        assert!(root.join(r["images"][0].as_str().unwrap()).is_file(), "{r}");
        assert!(r["roi_coords"].is_array());
    }
}

#[test]
fn export_options_that_cannot_work_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (_root, project) = project(tmp.path());
    let run = |args: &[&str]| {
        fails(
            roiscope()
                .args(["export", "--project", s(&project)])
                .args(args),
        )
    };
    let err = run(&["--format", "llamafactory", "--out", "-"]);
    assert!(
        err.contains("dataset_info.json") && err.contains("not -"),
        "{err}"
    );
    let err = run(&["--format", "jsonl", "--out", "-", "--name", "x"]);
    assert!(
        err.contains("--name and --answer apply to --format llamafactory"),
        "{err}"
    );
    let err = run(&["--format", "coco", "--out", "-", "--images", "marker-free"]);
    assert!(err.contains("--media-dir and --images apply"), "{err}");
    let missing = tmp.path().join("no-such-folder");
    let out = tmp.path().join("x.json");
    let err = run(&[
        "--format",
        "llamafactory",
        "--out",
        s(&out),
        "--media-dir",
        s(&missing),
    ]);
    assert!(
        err.contains("no-such-folder") && err.contains("must exist"),
        "{err}"
    );
    // A DICOM rendering has nowhere to go when the export goes to standard output.
    let err = run(&["--format", "seed-json", "--out", "-"]);
    assert!(
        err.contains("scans/mr.dcm") && err.contains("--out a file"),
        "{err}"
    );
    // A dataset_info.json that is not a JSON object stops the export before it writes.
    let dir = tmp.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dataset_info.json"), "[1, 2").unwrap();
    let err = run(&["--format", "llamafactory", "--out", s(&dir.join("d.json"))]);
    assert!(err.contains("dataset_info.json is not valid JSON"), "{err}");
    assert!(!dir.join("d.json").exists());
    assert!(!dir.join("d-media").exists());
}

#[test]
fn a_missing_image_is_named_and_exported_by_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, project) = project(tmp.path());
    let n0 = roi_images(1).remove(0);
    std::fs::remove_file(root.join("img").join(&n0)).unwrap();
    let out = tmp.path().join("lf.json");
    let stderr = export(&project, &out, &["--format", "llamafactory"]);
    assert!(
        stderr.contains("1 input images could not be opened") && stderr.contains(&n0),
        "{stderr}"
    );
    assert_eq!(read(&out)[0]["images"][0], format!("data/img/{n0}"));
}

/// `tests/fixtures/llamafactory/reference.json`: samples of an export as LLaMA-Factory 0.9.5's
/// own loader tokenized them (template qwen3_vl_nothink, the tiny init-model folder), written by
/// `tests/fixtures/check_llamafactory_export.py`. roiscope's tokenizer and image processor build
/// the same samples to the same ids: what LLaMA-Factory trains on is what roiscope trains on.
#[test]
fn llamafactory_tokenizes_the_export_as_roiscope_does() {
    use roiscope::model::processor::{smart_resize, ImageProcessorConfig};
    use roiscope::model::tokenizer::QwenTokenizer;

    let fixtures = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
    let reference = read(&fixtures.join("llamafactory/reference.json"));
    assert_eq!(reference["records_loaded"], 25, "every record loaded");
    let tokenizer = QwenTokenizer::bundled().unwrap();
    let config = ImageProcessorConfig::qwen3_vl();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    let mut dicom_seen = false;
    for case in cases {
        let name = case["image"].as_str().unwrap();
        let img = match name.strip_prefix("dicom:") {
            Some(file) => {
                dicom_seen = true;
                load_rgb8(&fixtures.join("dicom").join(file), LoadOptions::default())
            }
            None => load_rgb8(
                &sample_dir().join("images").join(name),
                LoadOptions::default(),
            ),
        }
        .unwrap();
        let (h, w) = smart_resize(
            img.height(),
            img.width(),
            config.factor(),
            config.min_pixels,
            config.max_pixels,
        )
        .unwrap();
        let tokens = ((h / config.patch_size) * (w / config.patch_size)
            / (config.merge_size * config.merge_size)) as usize;
        assert_eq!(case["image_tokens"], tokens, "{name}");
        let chat = tokenizer
            .chat(
                case["question"].as_str().unwrap(),
                tokens,
                Some(case["answer"].as_str().unwrap()),
            )
            .unwrap();
        let want: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        assert_eq!(chat.ids, want, "{name}");
        assert_eq!(case["prompt_positions"], chat.answer.start, "{name}");
    }
    assert!(dicom_seen, "the DICOM record is among the cases");
}

#[test]
fn seed_json_still_exports_when_the_data_root_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, project) = project(tmp.path());
    std::fs::rename(&root, tmp.path().join("moved")).unwrap();
    let out = tmp.path().join("seed.json");
    let stderr = export(&project, &out, &["--format", "seed-json"]);
    assert!(
        stderr.contains("input images could not be opened"),
        "{stderr}"
    );
    let n0 = roi_images(1).remove(0);
    assert_eq!(read(&out)[0]["images"][0], format!("img/{n0}"));
}
