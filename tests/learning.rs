//! Learning, not just running (issues 5 and 22): a tiny random Qwen3-VL trained with LoRA and the
//! heads, at the default settings (only the step count and the batch given), on each synthetic
//! task (`data::synthetic`: what kind a finding is, where a blob lies) and scored on held-out
//! images drawn with another seed. This is the short form for CI; `examples/learn_synthetic.rs`
//! runs the long one (BENCHMARKS.md, learning proof).
//!
//! What it proves: on both tasks the ROI head learns where the finding is (held-out mean IoU well
//! above what always answering the training set's mean box scores); on the place task it reaches
//! the bars (mean IoU >= 0.5) and the match head tells true pairs from mismatched ones
//! (AUC >= 0.9) where a text-only scorer cannot. On the kind task the match head does not learn
//! yet (BENCHMARKS.md, issue 22).

#[path = "support/learning.rs"]
mod learning;

use roiscope::data::synthetic::SyntheticTask;

fn short_run(task: SyntheticTask) -> learning::Outcome {
    let tmp = tempfile::tempdir().unwrap();
    let setup = learning::Setup {
        task,
        train_images: 200,
        test_images: 48,
        size: 64,
        config: learning::proof_config(STEPS),
        seed: 1,
    };
    let outcome = learning::run(tmp.path(), &setup, |_| {});
    eprintln!("{task:?}: {outcome:?}");
    assert!(
        outcome.last_loss[0] < 0.75 * outcome.first_loss[0],
        "{outcome:?}"
    );
    assert!(outcome.last_loss[2] < outcome.first_loss[2], "{outcome:?}");
    assert!(
        outcome.mean_iou >= 2.0 * outcome.mean_box_iou,
        "{outcome:?}"
    );
    outcome
}

/// The match head's bars of the short form: it tells true pairs from mismatched ones, where a
/// text-only scorer cannot.
fn assert_match_learns(outcome: &learning::Outcome) {
    assert!(
        outcome.match_means[0] > outcome.match_means[1] + 0.05,
        "{outcome:?}"
    );
    assert!(
        outcome.far_auc >= outcome.text_only_auc + 0.1,
        "{outcome:?}"
    );
}

/// Optimiser steps of the short form (batch 8).
const STEPS: usize = 200;

#[test]
fn the_roi_head_finds_a_finding_of_any_kind() {
    // Only the ROI head learns here in 200 steps (measured: mean IoU 0.152 against 0.051 for the
    // mean box; match AUC against another kind 0.58, true and mismatched pairs scored alike).
    // The match head does not reach its bar on this task (BENCHMARKS.md, issue 22), so its bar
    // is not asserted: a test that waits for it would only be red.
    let outcome = short_run(SyntheticTask::Kind);
    assert!(outcome.mean_iou >= 0.12, "{outcome:?}");
}

#[test]
fn the_heads_learn_where_the_lesion_is() {
    // Measured: mean IoU 0.655 (IoU >= 0.5 on 92%), AUC against a place not beside 0.976.
    let outcome = short_run(SyntheticTask::Place);
    assert_match_learns(&outcome);
    assert!(outcome.mean_iou >= 0.5, "{outcome:?}");
    assert!(outcome.far_auc >= 0.9, "{outcome:?}");
}
