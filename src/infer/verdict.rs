//! The verdict of locate -> diagnose -> verify with its reason, so that "unverified" never
//! stands alone: "match 0.41 < threshold 0.68", "no diagnosis generated".

use super::Outcome;

/// The verdict with why: "verified: match 0.85 >= threshold 0.50", "unverified: match 0.41 <
/// threshold 0.68", "unverified: no diagnosis generated (match 0.85 not used)".
pub fn verdict_with_reason(o: &Outcome) -> String {
    let score = f64::from(o.match_score);
    if o.verified {
        format!("verified: match {score:.3} >= threshold {:.2}", o.threshold)
    } else if o.generated.trim().is_empty() {
        format!("unverified: no diagnosis generated (match {score:.3} not used)")
    } else if score < o.threshold {
        format!(
            "unverified: match {score:.3} < threshold {:.2}",
            o.threshold
        )
    } else {
        // Not reached by the pipeline today; said plainly rather than left unexplained.
        format!(
            "unverified: match {score:.3}, threshold {:.2} (the pipeline withheld it)",
            o.threshold
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(score: f32, threshold: f64, text: &str) -> Outcome {
        Outcome {
            roi: [0.1, 0.1, 0.5, 0.5],
            box_px: [10, 10, 40, 40],
            width: 100,
            height: 100,
            match_score: score,
            threshold,
            // As the pipeline decides it.
            verified: f64::from(score) >= threshold && !text.trim().is_empty(),
            generated: text.into(),
            generated_tokens: text.split_whitespace().count(),
            verify_tokens: 2,
            timings: Default::default(),
        }
    }

    #[test]
    fn every_verdict_says_why() {
        assert_eq!(
            verdict_with_reason(&outcome(0.852, 0.5, " \n")),
            "unverified: no diagnosis generated (match 0.852 not used)"
        );
        assert_eq!(
            verdict_with_reason(&outcome(0.41, 0.68, "a cyst")),
            "unverified: match 0.410 < threshold 0.68"
        );
        assert_eq!(
            verdict_with_reason(&outcome(0.9, 0.68, "a cyst")),
            "verified: match 0.900 >= threshold 0.68"
        );
    }
}
