//! The task heads and losses against an independent PyTorch implementation
//! (`tests/fixtures/make_heads_fixtures.py`): outputs, every loss term, the weighted total, and
//! the gradients of every head parameter, the task weights and the hidden states.

#[path = "support/qwen3vl.rs"]
mod support;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use roiscope::train::heads::{image_token_coords, HeadsConfig, MatchHead, RoiHead, TaskWeights};
use roiscope::train::losses::{
    focal_loss, focus_loss, lm_loss, roi_loss, FocalConfig, RoiLossConfig,
};
use support::{max_abs_diff as absolute, relative_diff as relative};

fn reference() -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/heads/reference.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

#[test]
fn heads_and_losses_match_pytorch() {
    let r = reference();
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in &r {
            if let Some(param) = name.strip_prefix("param.") {
                data.insert(param.to_string(), Var::from_tensor(t).unwrap());
            }
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let config = HeadsConfig {
        pool_hidden: 16,
        roi_hidden: 12,
        roi_dropout: 0.1,
        match_hidden: 8,
    };
    let hidden = r["states"].dim(2).unwrap();
    let roi = RoiHead::load(vb.pp("roi"), hidden, &config).unwrap();
    let matcher = MatchHead::load(vb.pp("match"), hidden, &config).unwrap();
    let task = TaskWeights::load(vb.pp("task")).unwrap();
    // Loading found every parameter the fixture has and made none of its own.
    assert_eq!(
        varmap.all_vars().len(),
        r.keys().filter(|k| k.starts_with("param.")).count()
    );

    let states = Var::from_tensor(&r["states"]).unwrap();
    let (_, roi_weights) = roi.pool.forward(states.as_tensor(), &r["image"]).unwrap();
    assert!(absolute(&roi_weights, &r["roi_pool_weights"]) < 1e-6);
    let (_, match_weights) = matcher
        .pool
        .forward(states.as_tensor(), &r["valid"])
        .unwrap();
    assert!(absolute(&match_weights, &r["match_pool_weights"]) < 1e-6);
    // Padding and non-image positions get exactly zero weight.
    let w = roi_weights.to_vec2::<f32>().unwrap();
    let image = r["image"].to_vec2::<f32>().unwrap();
    for (wr, ir) in w.iter().zip(&image) {
        for (&wv, &iv) in wr.iter().zip(ir) {
            if iv == 0.0 {
                assert_eq!(wv, 0.0);
            }
        }
    }
    assert_eq!(match_weights.to_vec2::<f32>().unwrap()[3][..2], [0.0, 0.0]);

    // The image tokens' coordinates, from the mask and the grids as the trainer computes them.
    let image_rows: Vec<Vec<bool>> = image
        .iter()
        .map(|row| row.iter().map(|&v| v > 0.0).collect())
        .collect();
    let grids: Vec<[u32; 3]> = r["grids"]
        .to_vec2::<i64>()
        .unwrap()
        .iter()
        .map(|g| [g[0] as u32, g[1] as u32, g[2] as u32])
        .collect();
    let coords = image_token_coords(&image_rows, &grids, &dev).unwrap();
    assert!(absolute(&coords, &r["coords"]) < 1e-7);
    let (pred, region, log_weights) = roi
        .locate_with_focus(states.as_tensor(), &r["image"], &coords, None)
        .unwrap();
    assert!(absolute(&region.locus, &r["locus"]) < 1e-6);
    assert!(absolute(&pred, &r["pred_boxes"]) < 1e-6);
    let logits = matcher
        .forward(
            states.as_tensor(),
            &r["valid"],
            &r["image"],
            &r["embeds"],
            &coords,
            &region,
        )
        .unwrap();
    assert!(absolute(&logits, &r["match_logits"]) < 1e-5);

    let scalar = |t: &Tensor| t.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let roi_rows = scalar(&r["roi_weight"]);
    let focus = focus_loss(
        &log_weights,
        &coords,
        &r["image"],
        &r["boxes"],
        &r["roi_weight"],
        roi_rows,
    )
    .unwrap();
    let l_roi = (roi_loss(
        &pred,
        &r["boxes"],
        &r["roi_weight"],
        RoiLossConfig::default(),
        roi_rows,
    )
    .unwrap()
        + (focus * RoiLossConfig::default().focus_weight).unwrap())
    .unwrap();
    let samples = r["labels"].elem_count() as f64;
    let l_match = focal_loss(&logits, &r["labels"], FocalConfig::default(), samples).unwrap();
    let targets: Vec<(usize, usize, u32)> = r["lm_targets"]
        .to_vec2::<i64>()
        .unwrap()
        .iter()
        .map(|t| (t[0] as usize, t[1] as usize, t[2] as u32))
        .collect();
    // Chunks of 2 rows: the split must not change the loss.
    let l_lm = lm_loss(
        states.as_tensor(),
        &r["lm_head"],
        &targets,
        2,
        targets.len() as f64,
    )
    .unwrap();
    let losses = Tensor::stack(&[l_roi, l_match, l_lm], 0).unwrap();
    assert!(
        absolute(&losses, &r["losses"]) < 1e-4,
        "{losses} vs {}",
        r["losses"]
    );
    let (total, terms) = task.combine(&losses, [true; 3], 1.0).unwrap();
    assert!(absolute(&terms, &r["terms"]) < 1e-4);
    assert!(absolute(&total.reshape(1).unwrap(), &r["total"]) < 1e-4);

    let grads = total.backward().unwrap();
    let mut checked = 0;
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let rel = relative(g, &r[&format!("grad.{name}")]);
        assert!(rel < 1e-3, "gradient of {name}: relative difference {rel}");
        checked += 1;
    }
    let g = grads.get(states.as_tensor()).unwrap();
    assert!(relative(g, &r["grad.states"]) < 1e-3);
    assert_eq!(checked, 32);
}

#[test]
fn missed_diagnoses_are_weighted_and_false_positives_are_not() {
    let dev = Device::Cpu;
    let c = FocalConfig::default();
    let one = |logit: f32, label: f32| {
        let l = Tensor::new(&[logit], &dev).unwrap();
        let y = Tensor::new(&[label], &dev).unwrap();
        focal_loss(&l, &y, c, 1.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    // The focal loss of one sample, written out.
    let focal = |logit: f32, label: f32| -> f32 {
        let p = 1.0 / (1.0 + (-logit).exp());
        let (p_t, alpha_t) = if label == 1.0 {
            (p, c.alpha as f32)
        } else {
            (1.0 - p, 1.0 - c.alpha as f32)
        };
        alpha_t * (1.0 - p_t).powf(c.gamma as f32) * -p_t.ln()
    };
    // A true pair scored 0.4 (missed) costs 10x its focal loss; scored 0.6 it costs 1x.
    assert!((one(-0.405, 1.0) / focal(-0.405, 1.0) - 10.0).abs() < 1e-3);
    assert!((one(0.405, 1.0) / focal(0.405, 1.0) - 1.0).abs() < 1e-4);
    // The seed's inverted rule weighted false positives; here a negative scored 0.6 is not.
    assert!((one(0.405, 0.0) / focal(0.405, 0.0) - 1.0).abs() < 1e-4);
}
