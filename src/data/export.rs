//! Exporting a project: the seed's JSON (readable by the seed's trainer and LLaMA-Factory),
//! JSON lines carrying everything the project knows, and COCO detection JSON.
//!
//! Every export reads one consistent snapshot of the project (another process may be editing
//! it) and streams records to a temporary file in the target's folder that is flushed to disk and
//! renamed into place at the end, so a failed export never leaves a half-written file under the
//! final name. The target must be a regular file (or new), never one of the project's own files.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::files::{check_export_target, write_durable};
use super::record::with_fields;
use super::store::{Project, RecordFilter, Split, StoredRecord};

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// A JSON array in the seed's format, with `roi_coords` (the corrected box, else the
    /// detected one) and `target_diag`; records without a box are left out.
    SeedJson,
    /// One JSON object per line: the seed record plus a `roiscope` block with review status,
    /// split, image size and every box with its source, author and time. `prepare` reads it
    /// back losslessly.
    Jsonl,
    /// COCO object detection: one category "roi", boxes in pixels.
    Coco,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub records: usize,
    /// Records left out of a seed-json export because they have no box.
    pub without_box: usize,
    pub boxes: usize,
}

/// Exports the records of `split` (or all) in `format` to `out` (`-` for standard output).
pub fn export(
    project: &Project,
    format: ExportFormat,
    split: Option<Split>,
    out: &Path,
) -> anyhow::Result<ExportSummary> {
    if out == Path::new("-") {
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        let summary = write_export(project, format, split, &mut w)?;
        w.flush()?;
        return Ok(summary);
    }
    check_export_target(out, project.dir())?;
    write_durable(out, |w| write_export(project, format, split, w))
}

/// Writes the export to any writer.
pub fn write_export(
    project: &Project,
    format: ExportFormat,
    split: Option<Split>,
    w: &mut dyn Write,
) -> anyhow::Result<ExportSummary> {
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
                w.write_all(if summary.records == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *w, &seed_record(&r))?;
                summary.records += 1;
                summary.boxes += 1;
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
