//! `roiscope sample`: a summary of the bundled sample project (`roiscope` with no command opens
//! the workbench on it).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::data::image_io::{load_rgb8, LoadOptions};
use crate::data::roi::{detect, DetectMode};
use crate::data::sample::{read_records, sample_dir};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Project folder holding raw_data.json [default: the bundled sample]
    #[arg(long, value_name = "DIR")]
    project: Option<PathBuf>,
    /// Structured field that holds the diagnosis
    #[arg(long, default_value = "Clinical Diagnosis Tips")]
    diagnosis_field: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = args.project.unwrap_or_else(sample_dir);
    let records = read_records(&dir.join("raw_data.json"), &args.diagnosis_field)?;
    println!("Project {}: {} records", dir.display(), records.len());
    println!();
    let (mut boxed, mut unboxed, mut failed) = (0, 0, 0);
    for (i, r) in records.iter().enumerate() {
        let field = |name: &str| {
            r.fields
                .iter()
                .find(|(k, _)| k == name)
                .map_or("-", |(_, v)| v.as_str())
        };
        let roi = match load_rgb8(&dir.join(&r.image), LoadOptions::default()) {
            Ok(img) => {
                let d = detect(&img, DetectMode::Robust);
                match d.primary() {
                    Some(roi) => {
                        boxed += 1;
                        let b = roi.bbox;
                        format!("box {}x{} at ({}, {})", b.width(), b.height(), b.x0, b.y0)
                    }
                    None => {
                        unboxed += 1;
                        "no box".to_string()
                    }
                }
            }
            Err(e) => {
                failed += 1;
                format!("unreadable: {e}")
            }
        };
        let diagnosis = r.diagnosis.as_deref().unwrap_or("(no diagnosis field)");
        println!(
            "{:>3}. {:<32} {:<18} {:<16} {:<26} {}",
            i + 1,
            truncate(&r.image, 32),
            truncate(field("Modality"), 18),
            truncate(field("Organ"), 16),
            roi,
            truncate(diagnosis, 60)
        );
    }
    println!();
    println!("{boxed} records with a detected box, {unboxed} without, {failed} unreadable.");
    Ok(ExitCode::SUCCESS)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}
