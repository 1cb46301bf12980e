//! `report.json` and a self-contained `report.html` (inline SVG charts, thumbnails as PNG data
//! URIs): summary table, IoU histogram, ROC curve with the threshold in use, worst cases.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use image::Rgb;
use serde_json::{json, Value};

use super::{Case, Summary};
use crate::data::image_io::{self, LoadOptions};
use crate::infer::overlay;

/// How many worst cases the page shows.
pub const WORST_CASES: usize = 6;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"))
}

/// The cases with the lowest IoU (then the lowest ROUGE-L), errors first.
pub fn worst(cases: &[Case], n: usize) -> Vec<&Case> {
    let key = |c: &Case| {
        if c.error.is_some() {
            -1.0
        } else {
            c.iou.unwrap_or(1.0) + c.rouge_l.unwrap_or(1.0) * 1e-3
        }
    };
    let mut v: Vec<&Case> = cases.iter().collect();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v.truncate(n);
    v
}

fn histogram_svg(bins: &[usize]) -> String {
    let (w, h, pad) = (360.0, 200.0, 30.0);
    let max = bins.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bw = (w - 2.0 * pad) / bins.len() as f64;
    let mut s = format!(r#"<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">"#);
    for (i, &c) in bins.iter().enumerate() {
        let bh = (h - 2.0 * pad) * c as f64 / max;
        let x = pad + i as f64 * bw;
        let _ = write!(
            s,
            r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="#4a7bd0"><title>{c}</title></rect>"##,
            h - pad - bh,
            bw - 2.0
        );
    }
    let _ = write!(
        s,
        r#"<line x1="{pad}" y1="{y}" x2="{x2}" y2="{y}" stroke="black"/><text x="{pad}" y="{t}" font-size="11">0</text><text x="{x3}" y="{t}" font-size="11">1</text><text x="{mid}" y="{t}" font-size="11">IoU</text><text x="2" y="{top}" font-size="11">{max}</text></svg>"#,
        y = h - pad,
        x2 = w - pad,
        t = h - pad + 14.0,
        x3 = w - pad - 6.0,
        mid = w / 2.0 - 8.0,
        top = pad + 4.0,
    );
    s
}

fn roc_svg(summary: &Summary) -> String {
    let (size, pad) = (240.0, 30.0);
    let side = size - 2.0 * pad;
    let mut s = format!(
        r##"<svg width="{size}" height="{size}" xmlns="http://www.w3.org/2000/svg"><rect x="{pad}" y="{pad}" width="{side}" height="{side}" fill="none" stroke="black"/><line x1="{pad}" y1="{b}" x2="{r}" y2="{pad}" stroke="#bbb" stroke-dasharray="4"/>"##,
        b = pad + side,
        r = pad + side
    );
    let at = |fpr: f64, tpr: f64| (pad + fpr * side, pad + (1.0 - tpr) * side);
    match &summary.matching.roc {
        Some(roc) => {
            let pts: Vec<String> = roc
                .fpr
                .iter()
                .zip(&roc.tpr)
                .chain(std::iter::once((&1.0, &1.0)))
                .map(|(&f, &t)| {
                    let (x, y) = at(f, t);
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            let _ = write!(
                s,
                r##"<polyline points="{}" fill="none" stroke="#c0392b" stroke-width="2"/>"##,
                pts.join(" ")
            );
            let r = summary.matching.rates;
            if let (Some(fnr), Some(fpr)) = (r.false_negative_rate, r.false_positive_rate) {
                let (x, y) = at(fpr, 1.0 - fnr);
                let _ = write!(
                    s,
                    r##"<circle cx="{x:.1}" cy="{y:.1}" r="5" fill="#f1c40f" stroke="black"><title>threshold {:.3}</title></circle>"##,
                    summary.matching.threshold
                );
            }
        }
        None => {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" font-size="12">one class only: no ROC</text>"#,
                pad + 10.0,
                size / 2.0
            );
        }
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" font-size="11">false positive rate</text><text x="2" y="{}" font-size="11">TPR</text></svg>"#,
        pad + 40.0,
        size - 6.0,
        pad - 8.0
    );
    s
}

/// A thumbnail (PNG data URI) with the ground truth (cyan) and prediction (verdict colour).
fn thumbnail(case: &Case) -> Option<String> {
    let img = image_io::load_rgb8(&case.image, LoadOptions::default()).ok()?;
    let (w, h) = img.dimensions();
    let mut img = match case.truth {
        Some(t) => {
            let mut img = img;
            let px = crate::infer::box_to_px(t.map(|v| v as f32), w, h);
            overlay::draw_rect(&mut img, px, (w.max(h) / 200).max(2), Rgb([0, 200, 255]));
            img
        }
        None => img,
    };
    if let Some(px) = case.box_px {
        let colour = overlay::verdict_colour(case.released == Some(true));
        overlay::draw_rect(&mut img, px, (w.max(h) / 200).max(2), colour);
    }
    let scale = 200.0 / w.max(h) as f64;
    if scale < 1.0 {
        img = image::imageops::resize(
            &img,
            ((w as f64 * scale) as u32).max(1),
            ((h as f64 * scale) as u32).max(1),
            image::imageops::FilterType::Triangle,
        );
    }
    let png = overlay::png_bytes(&img).ok()?;
    Some(format!("data:image/png;base64,{}", overlay::base64(&png)))
}

/// Writes `report.json` and `report.html` into `out`; their paths.
pub fn write(
    out: &Path,
    meta: &Value,
    summary: &Summary,
    cases: &[Case],
) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let report = json!({ "meta": meta, "summary": summary, "cases": cases });
    let json_path = out.join("report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let mut h = String::new();
    h.push_str("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>roiscope evaluation</title><style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}.cases td{font-size:12px}.charts{display:flex;gap:3em}</style></head><body>");
    let _ = write!(
        h,
        "<h1>roiscope evaluation</h1><p>{}</p>",
        esc(&format!(
            "model {} · checkpoint {} · split {} · {} records · {:.2} images/s",
            meta["model"].as_str().unwrap_or(""),
            meta["checkpoint"].as_str().unwrap_or(""),
            meta["split"].as_str().unwrap_or(""),
            summary.records,
            summary.images_per_second
        ))
    );
    let m = &summary.matching;
    let g = &summary.gate;
    let rows = [
        ("ROI mean IoU", num(summary.roi.mean_iou)),
        ("ROI IoU@0.5", num(summary.roi.iou_at_0_5)),
        ("match AUC", num(m.auc)),
        ("verify threshold", format!("{:.3}", m.threshold)),
        ("false-negative rate", num(m.rates.false_negative_rate)),
        ("false-positive rate", num(m.rates.false_positive_rate)),
        ("ROUGE-L F1", num(summary.text.rouge_l)),
        ("BLEU-4", num(summary.text.bleu4)),
        ("exact match", num(summary.text.exact_match)),
        ("gate coverage", num(g.coverage)),
        ("accuracy of released", num(g.released_accuracy)),
        ("accuracy of withheld", num(g.withheld_accuracy)),
        ("errors", summary.errors.to_string()),
    ];
    h.push_str("<table>");
    for (k, v) in rows {
        let _ = write!(h, "<tr><th>{k}</th><td>{}</td></tr>", esc(&v));
    }
    let _ = write!(
        h,
        "</table><p>Correct means: {}. Pairs: {} true, {} mismatched.</p>",
        esc(&g.correct_means),
        m.positives,
        m.negatives
    );
    let _ = write!(
        h,
        "<div class=\"charts\"><div><h2>IoU histogram</h2>{}</div><div><h2>ROC (match head)</h2>{}</div></div>",
        histogram_svg(&summary.roi.histogram),
        roc_svg(summary)
    );
    h.push_str("<h2>Worst cases</h2><p>Cyan: ground truth; amber: prediction, diagnosis released; red: prediction, diagnosis withheld.</p><table class=\"cases\"><tr><th>image</th><th>record</th><th>IoU</th><th>score</th><th>generated</th><th>reference</th></tr>");
    for c in worst(cases, WORST_CASES) {
        let img = thumbnail(c)
            .map(|uri| format!("<img src=\"{uri}\">"))
            .unwrap_or_else(|| "(no image)".into());
        let text = match &c.error {
            Some(e) => format!("error: {e}"),
            None => c.generated.clone().unwrap_or_default(),
        };
        let _ = write!(
            h,
            "<tr><td>{img}</td><td>{}<br>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.record_id,
            esc(&c.image.display().to_string()),
            num(c.iou),
            num(c.generated_score),
            esc(&text),
            esc(&c.reference)
        );
    }
    h.push_str("</table></body></html>\n");
    let html_path = out.join("report.html");
    std::fs::write(&html_path, h)
        .with_context(|| format!("cannot write {}", html_path.display()))?;
    Ok((json_path, html_path))
}
