//! `roiscope project`: look into a project and edit it from a script.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::Deserialize;

use crate::data::store::{Edit, Project};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Counts by review status, split, box source, and the last prepare's skipped reasons
    Info {
        /// Project folder
        dir: PathBuf,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Apply edits read as JSON lines from standard input, each in its own transaction
    #[command(long_about = EDIT_ABOUT)]
    Edit {
        /// Project folder
        dir: PathBuf,
        /// Who makes the edits (stored with each) [default: $USER]
        #[arg(long)]
        who: Option<String>,
    },
    /// The edit history, oldest first
    History {
        /// Project folder
        dir: PathBuf,
        /// Only this record
        #[arg(long)]
        record: Option<i64>,
    },
}

const EDIT_ABOUT: &str = "Apply edits read as JSON lines from standard input.\n\n\
    Each line is one edit, applied in its own transaction; after it is committed a line \
    {\"ok\": EDIT_ID} (or {\"error\": MESSAGE}) is printed, so a caller knows exactly which edits \
    are stored. Lines:\n  \
    {\"record\": 3, \"edit\": \"set_box\", \"source\": \"corrected\", \"box\": [x0, y0, x1, y1]}\n  \
    {\"record\": 3, \"edit\": \"set_status\", \"status\": \"accepted\"}\n  \
    {\"record\": 3, \"edit\": \"set_field\", \"name\": \"Organ\", \"value\": \"Liver\"}\n  \
    {\"record\": 3, \"edit\": \"set_diagnosis\", \"text\": \"...\"}\n  \
    {\"record\": 3, \"edit\": \"set_split\", \"split\": \"val\"}\n  \
    {\"undo\": true}   {\"redo\": true}\n\
    Boxes are normalised to [0, 1]; \"box\": null or \"value\": null removes.";

#[derive(Deserialize)]
#[serde(untagged)]
enum EditLine {
    Undo {
        #[allow(dead_code)]
        undo: bool,
    },
    Redo {
        #[allow(dead_code)]
        redo: bool,
    },
    Edit {
        record: i64,
        #[serde(flatten)]
        edit: Edit,
    },
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Info { dir, json } => {
            let summary = Project::open(&dir)?.summary()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", render_info(&summary));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Edit { dir, who } => {
            let who = who
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "unknown".into());
            edit_stream(&dir, &who)
        }
        Command::History { dir, record } => {
            let project = Project::open(&dir)?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for e in project.history(record)? {
                writeln!(out, "{}", serde_json::to_string(&e)?)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn edit_stream(dir: &std::path::Path, who: &str) -> anyhow::Result<ExitCode> {
    let mut project = Project::open(dir)?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failures = 0;
    for (n, line) in stdin.lock().lines().enumerate() {
        let line = line.context("cannot read standard input")?;
        if line.trim().is_empty() {
            continue;
        }
        let result = serde_json::from_str::<EditLine>(&line)
            .with_context(|| format!("line {}: not an edit", n + 1))
            .and_then(|e| match e {
                EditLine::Undo { .. } => Ok(project.undo()?.map(|i| i.id)),
                EditLine::Redo { .. } => Ok(project.redo()?.map(|i| i.id)),
                EditLine::Edit { record, edit } => {
                    Ok(Some(project.apply_edit(record, &edit, who)?))
                }
            });
        let reply = match result {
            Ok(id) => serde_json::json!({ "ok": id }),
            Err(e) => {
                failures += 1;
                serde_json::json!({ "error": format!("{e:#}") })
            }
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn render_info(s: &crate::data::store::Summary) -> String {
    let mut t = format!(
        "Project {}\n  images from      {}\n  diagnosis field  {}\n  schema version   {}\n  records          {}\n",
        s.project, s.data_root, s.diagnosis_field, s.schema_version, s.records
    );
    let mut table = |title: &str, rows: &[(String, i64)]| {
        t += &format!("  {title}\n");
        for (k, n) in rows {
            t += &format!("    {k:<28} {n:>8}\n");
        }
    };
    table("review status", &s.by_status);
    table("split", &s.by_split);
    let mut boxes = s.by_box_source.clone();
    boxes.push(("(no detected or corrected box)".into(), s.without_box));
    table("boxes by source", &boxes);
    t += &format!("  edits in effect  {}\n", s.edits);
    if let Some(run) = &s.last_prepare {
        t += &format!(
            "  last prepare     run {} of {}{}\n",
            run.id,
            run.input,
            if run.finished {
                ""
            } else {
                " (not finished: run prepare again to complete it)"
            }
        );
        if run.skipped.is_empty() {
            t += "    nothing skipped\n";
        }
        for (reason, n) in &run.skipped {
            t += &format!("    skipped: {reason:<19} {n:>8}\n");
        }
    }
    t
}
