//! Exporting a project: the seed's JSON (readable by the seed's trainer), LLaMA-Factory's
//! sharegpt JSON with its `dataset_info.json` entry, JSON lines carrying everything the project
//! knows, and COCO detection JSON.
//!
//! Every export reads one consistent snapshot of the project (another process may be editing
//! it) and streams records to a temporary file in the target's folder that is flushed to disk and
//! renamed into place at the end, so a failed export never leaves a half-written file under the
//! final name. The target must be a regular file (or new), never one of the project's own files.

pub mod llamafactory;
pub mod media;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use super::files::{check_export_target, write_durable};
use super::record::with_fields;
use super::store::{Project, RecordFilter, Split, StoredRecord};
pub use llamafactory::AnswerText;
use media::Media;
pub use media::{ImageChoice, MediaSummary};

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// A JSON array in the seed's format, with `roi_coords` (the corrected box, else the
    /// detected one) and `target_diag`; records without a box are left out.
    SeedJson,
    /// LLaMA-Factory's sharegpt layout with string contents, plus its `dataset_info.json`
    /// entry beside the file.
    Llamafactory,
    /// One JSON object per line: the seed record plus a `roiscope` block with review status,
    /// split, image size and every box with its source, author and time. `prepare` reads it
    /// back losslessly.
    Jsonl,
    /// COCO object detection: one category "roi", boxes in pixels.
    Coco,
}

/// How to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    pub split: Option<Split>,
    /// seed-json and llamafactory: the folder image paths are written relative to (default:
    /// the data root for seed-json, the export's folder for llamafactory, which is
    /// LLaMA-Factory's default `media_dir`).
    pub media_dir: Option<PathBuf>,
    /// seed-json and llamafactory: the input images or the marker-free copies.
    pub images: ImageChoice,
    /// llamafactory: the assistant's answer.
    pub answer: AnswerText,
    /// llamafactory: the dataset's name in `dataset_info.json` (default: the file's stem).
    pub name: Option<String>,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub records: usize,
    /// Records left out of a seed-json export because they have no box.
    pub without_box: usize,
    /// Records left out of a llamafactory export because they have no user question with
    /// exactly one image (their ids, for the message).
    pub without_question: Vec<i64>,
    pub boxes: usize,
    pub media: MediaSummary,
    /// The folder image paths are relative to (seed-json, llamafactory).
    pub media_dir: Option<PathBuf>,
    /// The dataset name written to `dataset_info.json` (llamafactory).
    pub dataset_name: Option<String>,
}

impl ExportSummary {
    /// What an export to `out` did, in lines for a person (`roiscope export` prints them, the
    /// window shows them): what was written, what was left out and why, where images went.
    pub fn lines(&self, out: &Path) -> Vec<String> {
        let mut line = format!("exported {} records", self.records);
        if self.without_box > 0 {
            line += &format!(
                "; left out {} without a box (the seed's trainer needs roi_coords; \
                 `--format jsonl` keeps them)",
                self.without_box
            );
        }
        if !self.without_question.is_empty() {
            let ids: Vec<String> = self
                .without_question
                .iter()
                .take(5)
                .map(i64::to_string)
                .collect();
            line += &format!(
                "; left out {} without a user question holding one <image> (records {}{})",
                self.without_question.len(),
                ids.join(", "),
                if self.without_question.len() > 5 {
                    ", ..."
                } else {
                    ""
                }
            );
        }
        let mut lines = vec![line];
        let m = &self.media;
        if m.rendered + m.copied > 0 {
            lines.push(format!(
                "{} DICOM images rendered and {} marker-free copies placed in {}",
                m.rendered,
                m.copied,
                media_folder(out).display()
            ));
        }
        if let Some(dir) = &self.media_dir {
            lines.push(format!("image paths are relative to {}", dir.display()));
        }
        if m.unreadable > 0 {
            lines.push(format!(
                "warning: {} input images could not be opened (their paths are exported as \
                 they are); first: {}",
                m.unreadable,
                m.first_unreadable.as_deref().unwrap_or("?")
            ));
        }
        if let Some(name) = &self.dataset_name {
            lines.push(format!(
                "dataset \"{name}\" entered in {}",
                out.with_file_name("dataset_info.json").display()
            ));
        }
        lines
    }
}

/// Where renderings and marker-free copies of an export to `out` go: `<stem>-media/` beside it.
pub fn media_folder(out: &Path) -> PathBuf {
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    out.with_file_name(format!("{stem}-media"))
}

/// Exports the records of `opts.split` (or all) in `format` to `out` (`-` for standard output).
pub fn export(
    project: &Project,
    format: ExportFormat,
    opts: &ExportOptions,
    out: &Path,
) -> anyhow::Result<ExportSummary> {
    let to_stdout = out == Path::new("-");
    if !to_stdout {
        check_export_target(out, project.dir())?;
    }
    let uses_media = matches!(format, ExportFormat::SeedJson | ExportFormat::Llamafactory);
    if !uses_media && (opts.media_dir.is_some() || opts.images != ImageChoice::Original) {
        bail!("--media-dir and --images apply to --format seed-json and llamafactory");
    }
    if format != ExportFormat::Llamafactory
        && (opts.name.is_some() || opts.answer != AnswerText::Diagnosis)
    {
        bail!("--name and --answer apply to --format llamafactory");
    }
    if format == ExportFormat::Llamafactory && to_stdout {
        bail!(
            "--format llamafactory writes a file and its dataset_info.json entry beside it; \
             give --out a file, not -"
        );
    }
    // The export's folder, absolute, for the media folder and dataset_info.json.
    let out_dir = if to_stdout {
        None
    } else {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Some(
            parent
                .canonicalize()
                .with_context(|| format!("cannot write into {}", parent.display()))?,
        )
    };
    let out_name = out.file_name().unwrap_or_default().to_os_string();
    let mut media = if uses_media {
        let media_dir = match (&opts.media_dir, format, &out_dir) {
            (Some(d), _, _) => d.clone(),
            (None, ExportFormat::Llamafactory, Some(d)) => d.clone(),
            _ => project.data_root().to_path_buf(),
        };
        let folder = out_dir.as_ref().map(|d| media_folder(&d.join(&out_name)));
        Some(Media::new(project, &media_dir, folder, opts.images)?)
    } else {
        None
    };
    let dataset_name = match format {
        ExportFormat::Llamafactory => Some(match &opts.name {
            Some(n) if n.trim().is_empty() => bail!("--name must not be empty"),
            Some(n) => n.clone(),
            None => out
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        }),
        _ => None,
    };
    // A dataset_info.json that cannot take the entry stops the export before anything is written.
    let dataset_info = match (&dataset_name, &out_dir) {
        (Some(_), Some(dir)) => Some(llamafactory::read_dataset_info(dir)?),
        _ => None,
    };
    let mut summary = if to_stdout {
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        let summary = write_export(project, format, opts, media.as_mut(), &mut w)?;
        w.flush()?;
        summary
    } else {
        write_durable(out, |w| {
            write_export(project, format, opts, media.as_mut(), w)
        })?
    };
    if let (Some(name), Some(dir), Some(info)) = (&dataset_name, &out_dir, dataset_info) {
        let file_name = out_name
            .to_str()
            .with_context(|| format!("{} is not UTF-8", out.display()))?;
        llamafactory::write_dataset_info(dir, info, name, file_name)?;
    }
    if let Some(m) = media {
        summary.media = m.summary.clone();
        summary.media_dir = Some(m.media_dir().to_path_buf());
    }
    summary.dataset_name = dataset_name;
    Ok(summary)
}

/// Writes the export to any writer; `media` (seed-json and llamafactory) places the images.
fn write_export(
    project: &Project,
    format: ExportFormat,
    opts: &ExportOptions,
    mut media: Option<&mut Media>,
    w: &mut dyn Write,
) -> anyhow::Result<ExportSummary> {
    let split = opts.split;
    let filter = split.map_or(RecordFilter::All, RecordFilter::Split);
    let mut summary = ExportSummary::default();
    match format {
        ExportFormat::SeedJson => {
            w.write_all(b"[")?;
            project.for_each_record(filter, |r| {
                if r.ground_truth().is_none() {
                    summary.without_box += 1;
                    return Ok(());
                }
                let mut obj = seed_record(&r);
                if let Some(m) = media.as_deref_mut() {
                    if let Some(path) = m.image_for(&r)? {
                        obj.insert("images".into(), json!([path]));
                    }
                }
                w.write_all(if summary.records == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *w, &obj)?;
                summary.records += 1;
                summary.boxes += 1;
                Ok(())
            })?;
            w.write_all(b"\n]\n")?;
        }
        ExportFormat::Llamafactory => {
            let m = media.context("a llamafactory export places its images")?;
            w.write_all(b"[")?;
            project.for_each_record(filter, |r| {
                let image = match m.image_for(&r)? {
                    Some(p) => p,
                    // The input image, where the record says, relative to the data root.
                    None => r.image.clone(),
                };
                let Some(obj) = llamafactory::record(&r, opts.answer, &image) else {
                    summary.without_question.push(r.id);
                    return Ok(());
                };
                w.write_all(if summary.records == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *w, &obj)?;
                summary.records += 1;
                summary.boxes += usize::from(r.ground_truth().is_some());
                Ok(())
            })?;
            w.write_all(b"\n]\n")?;
        }
        ExportFormat::Jsonl => {
            project.for_each_record(filter, |r| {
                let mut obj = seed_record(&r);
                obj.insert(
                    "roiscope".into(),
                    json!({
                        "id": r.id,
                        "status": r.status.as_str(),
                        "split": r.split.map(Split::as_str),
                        "image_size": [r.width, r.height],
                        "boxes": r.boxes,
                    }),
                );
                serde_json::to_writer(&mut *w, &obj)?;
                w.write_all(b"\n")?;
                summary.records += 1;
                summary.boxes += r.boxes.len();
                Ok(())
            })?;
        }
        ExportFormat::Coco => {
            let mut annotations = Vec::new();
            w.write_all(b"{\"info\":")?;
            serde_json::to_writer(
                &mut *w,
                &json!({
                    "description": format!("roiscope export of {}", project.dir().display()),
                    "version": env!("CARGO_PKG_VERSION"),
                    "split": split.map(Split::as_str),
                }),
            )?;
            w.write_all(b",\n\"images\":[")?;
            project.for_each_record(filter, |r| {
                w.write_all(if summary.records == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(
                    &mut *w,
                    &json!({
                        "id": r.id,
                        "file_name": r.image,
                        "width": r.width,
                        "height": r.height,
                    }),
                )?;
                summary.records += 1;
                if let Some(b) = r.ground_truth() {
                    let (wf, hf) = (f64::from(r.width), f64::from(r.height));
                    let [x0, y0, x1, y1] = b.coords;
                    let (x, y, bw, bh) = (x0 * wf, y0 * hf, (x1 - x0) * wf, (y1 - y0) * hf);
                    annotations.push(json!({
                        "id": annotations.len() + 1,
                        "image_id": r.id,
                        "category_id": 1,
                        "bbox": [x, y, bw, bh],
                        "area": bw * bh,
                        "iscrowd": 0,
                        "source": b.source,
                    }));
                }
                Ok(())
            })?;
            w.write_all(b"\n],\n\"annotations\":[")?;
            for (i, a) in annotations.iter().enumerate() {
                w.write_all(if i == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *w, a)?;
            }
            summary.boxes = annotations.len();
            w.write_all(
                b"\n],\n\"categories\":[{\"id\":1,\"name\":\"roi\",\"supercategory\":\"roi\"}]}\n",
            )?;
        }
    }
    Ok(summary)
}

/// A record in the seed's format as the project holds it now.
fn seed_record(r: &StoredRecord) -> Map<String, Value> {
    let mut obj = match &r.fields {
        Some(fields) => with_fields(&r.record, fields),
        None => r.record.clone(),
    };
    if let Some(b) = r.ground_truth() {
        obj.insert("roi_coords".into(), json!(b.coords));
    }
    obj.insert("target_diag".into(), json!(r.diagnosis));
    obj
}
