//! The evaluation metrics, each matched against an independent reference
//! (`tests/fixtures/make_metric_fixtures.py`, `tests/eval_metrics.rs`):
//! - boxes: IoU of normalised `x1, y1, x2, y2` boxes;
//! - matching: ROC curve and AUC as scikit-learn computes them (`roc_curve` with
//!   `drop_intermediate=False`, `roc_auc_score`: tied scores form one step, the trapezoid over
//!   it counts a tie as half), false-negative and false-positive rates at a threshold, and the
//!   threshold that reaches a target sensitivity;
//! - text: ROUGE-L F1 as Google's `rouge-score` (`RougeScorer(["rougeL"])`, no stemmer) with its
//!   English tokenisation, and BLEU-4 as NLTK's `sentence_bleu` with `SmoothingFunction().method3`
//!   (the smoothing LLaMA-Factory uses) on the same tokens. For CJK text, where rouge-score's
//!   tokeniser keeps nothing, each CJK character is one token (LLaMA-Factory segments Chinese
//!   with jieba instead; a character split needs no dictionary and is what its BLEU does).

use std::collections::HashMap;

/// Intersection over union of two `x1, y1, x2, y2` boxes (0 when both are empty).
pub fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let area = |r: [f64; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// One ROC point per distinct score (highest first) after the `(0, 0)` start, as scikit-learn's
/// `roc_curve(..., drop_intermediate=False)`; `thresholds[i]` is the score whose inclusion gives
/// point `i + 1`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Roc {
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    pub thresholds: Vec<f64>,
}

/// The ROC curve of `scores` for `labels` (true = positive). `None` when either class is
/// missing (scikit-learn returns NaN rates there and refuses the AUC).
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Option<Roc> {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut roc = Roc {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: Vec::new(),
    };
    let mut i = 0;
    while i < order.len() {
        let s = scores[order[i]];
        while i < order.len() && scores[order[i]] == s {
            if labels[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        roc.fpr.push(fp as f64 / neg as f64);
        roc.tpr.push(tp as f64 / pos as f64);
        roc.thresholds.push(s);
    }
    Some(roc)
}

/// Area under the ROC curve by the trapezoidal rule (scikit-learn's `roc_auc_score`).
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let roc = roc_curve(scores, labels)?;
    Some(
        roc.fpr
            .windows(2)
            .zip(roc.tpr.windows(2))
            .map(|(x, y)| (x[1] - x[0]) * (y[1] + y[0]) / 2.0)
            .sum(),
    )
}

/// Error rates when a score `>= threshold` means "match".
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Rates {
    /// Positives scored below the threshold, of all positives (`None` without positives).
    pub false_negative_rate: Option<f64>,
    /// Negatives scored at or above it, of all negatives.
    pub false_positive_rate: Option<f64>,
}

pub fn rates_at(scores: &[f64], labels: &[bool], threshold: f64) -> Rates {
    let (mut pos, mut neg, mut fn_, mut fp) = (0usize, 0usize, 0usize, 0usize);
    for (&s, &l) in scores.iter().zip(labels) {
        if l {
            pos += 1;
            fn_ += usize::from(s < threshold);
        } else {
            neg += 1;
            fp += usize::from(s >= threshold);
        }
    }
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    Rates {
        false_negative_rate: ratio(fn_, pos),
        false_positive_rate: ratio(fp, neg),
    }
}

/// The highest threshold at which at least `target` of the positives score `>=` it (so the
/// fewest negatives pass for that sensitivity). `None` without positives.
pub fn threshold_for_sensitivity(scores: &[f64], labels: &[bool], target: f64) -> Option<f64> {
    let mut pos: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|(_, &l)| l)
        .map(|(&s, _)| s)
        .collect();
    if pos.is_empty() {
        return None;
    }
    pos.sort_by(|a, b| b.total_cmp(a));
    let need = ((target.clamp(0.0, 1.0) * pos.len() as f64) - 1e-9)
        .ceil()
        .max(1.0) as usize;
    Some(pos[need.min(pos.len()) - 1])
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // kana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // compatibility ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0x20000..=0x2FFFF) // extensions B-F
}

/// rouge-score's tokenisation (`tokenize.tokenize` without stemming): lower-case, every run of
/// characters outside `[a-z0-9]` is a separator. Extension: each CJK character is a token of
/// its own (rouge-score would drop it).
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if is_cjk(c) {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn lcs(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L F1 of `prediction` against `reference` (rouge-score's `fmeasure`).
pub fn rouge_l(reference: &str, prediction: &str) -> f64 {
    rouge_l_tokens(&tokens(reference), &tokens(prediction))
}

pub fn rouge_l_tokens(reference: &[String], prediction: &[String]) -> f64 {
    if reference.is_empty() || prediction.is_empty() {
        return 0.0;
    }
    let l = lcs(reference, prediction) as f64;
    let p = l / prediction.len() as f64;
    let r = l / reference.len() as f64;
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

/// BLEU-4 of `prediction` against one `reference`, as NLTK's `sentence_bleu(weights=(0.25,)*4,
/// smoothing_function=SmoothingFunction().method3)` on [`tokens`].
pub fn bleu4(reference: &str, prediction: &str) -> f64 {
    bleu4_tokens(&tokens(reference), &tokens(prediction))
}

pub fn bleu4_tokens(reference: &[String], hypothesis: &[String]) -> f64 {
    // Clipped n-gram matches over hypothesis n-grams, the denominator at least 1 (NLTK).
    let mut precisions = [(0usize, 1usize); 4];
    for (n, p) in precisions.iter_mut().enumerate() {
        let hyp = ngrams(hypothesis, n + 1);
        let refs = ngrams(reference, n + 1);
        let matched: usize = hyp
            .iter()
            .map(|(g, &c)| c.min(refs.get(g).copied().unwrap_or(0)))
            .sum();
        *p = (matched, hyp.values().sum::<usize>().max(1));
    }
    // NLTK returns 0 when not even one unigram matches.
    if precisions[0].0 == 0 {
        return 0.0;
    }
    let (c, r) = (hypothesis.len(), reference.len());
    let bp = if c > r {
        1.0
    } else if c == 0 {
        0.0
    } else {
        (1.0 - r as f64 / c as f64).exp()
    };
    // method3: the k-th zero precision becomes 1 / (2^k * denominator).
    let mut k = 1;
    let mut sum = 0.0;
    for (num, den) in precisions {
        let p = if num == 0 {
            let v = 1.0 / (2f64.powi(k) * den as f64);
            k += 1;
            v
        } else {
            num as f64 / den as f64
        };
        sum += 0.25 * p.ln();
    }
    bp * sum.exp()
}

/// Text normalised for exact-match comparison of categorical labels: lower case, whitespace
/// collapsed, surrounding punctuation and spaces trimmed.
pub fn normalise_label(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
        .trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
        .to_string()
}

pub fn exact_match(reference: &str, prediction: &str) -> bool {
    normalise_label(reference) == normalise_label(prediction)
}

/// A list of values as a histogram of `bins` equal bins over `[0, 1]` (1.0 in the last bin).
pub fn histogram01(values: &[f64], bins: usize) -> Vec<usize> {
    let mut h = vec![0; bins];
    for &v in values {
        let i = ((v.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        h[i] += 1;
    }
    h
}

pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_simple_boxes() {
        assert_eq!(iou([0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]), 1.0);
        assert_eq!(iou([0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]), 0.0);
        assert!((iou([0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5]) - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn calibration_reaches_the_target() {
        let scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05];
        let labels = [true; 10];
        let t = threshold_for_sensitivity(&scores, &labels, 0.95).unwrap();
        assert_eq!(t, 0.05);
        let t = threshold_for_sensitivity(&scores, &labels, 0.8).unwrap();
        assert_eq!(t, 0.2);
        let r = rates_at(&scores, &labels, t);
        assert!((r.false_negative_rate.unwrap() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn rouge_tokens_follow_rouge_score() {
        assert_eq!(
            tokens("The cat's 2nd-hat!"),
            ["the", "cat", "s", "2nd", "hat"]
        );
        assert_eq!(tokens("右肺 nodule"), ["右", "肺", "nodule"]);
    }
}
