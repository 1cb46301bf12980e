//! roiscope's evaluation metrics against scikit-learn, rouge-score and NLTK
//! (tests/fixtures/make_metric_fixtures.py wrote the reference; no Python is needed here).

use roiscope::eval::metrics;
use serde_json::Value;

fn reference() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/metrics/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-12, "{what}: roiscope {a}, reference {b}");
}

#[test]
fn roc_and_auc_match_scikit_learn() {
    let r = reference();
    for case in r["roc"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let scores = floats(&case["scores"]);
        let labels: Vec<bool> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_bool().unwrap())
            .collect();
        let auc = metrics::roc_auc(&scores, &labels).unwrap();
        close(auc, case["auc"].as_f64().unwrap(), name);
        let roc = metrics::roc_curve(&scores, &labels).unwrap();
        assert_eq!(roc.fpr, floats(&case["fpr"]), "{name} fpr");
        assert_eq!(roc.tpr, floats(&case["tpr"]), "{name} tpr");
        assert_eq!(
            roc.thresholds,
            floats(&case["thresholds"]),
            "{name} thresholds"
        );
    }
}

#[test]
fn one_class_has_no_auc() {
    assert_eq!(metrics::roc_auc(&[0.1, 0.9], &[true, true]), None);
    assert_eq!(metrics::roc_auc(&[0.1, 0.9], &[false, false]), None);
}

#[test]
fn rouge_l_and_bleu4_match_rouge_score_and_nltk() {
    let r = reference();
    for case in r["text"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let reference = case["reference"].as_str().unwrap();
        let prediction = case["prediction"].as_str().unwrap();
        let want: Vec<&str> = case["prediction_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(metrics::tokens(prediction), want, "{name} tokens");
        close(
            metrics::rouge_l(reference, prediction),
            case["rouge_l"].as_f64().unwrap(),
            &format!("{name} ROUGE-L"),
        );
        close(
            metrics::bleu4(reference, prediction),
            case["bleu4"].as_f64().unwrap(),
            &format!("{name} BLEU-4"),
        );
    }
}

#[test]
fn rates_and_calibration_at_a_threshold() {
    let scores = [0.9, 0.8, 0.4, 0.7, 0.2, 0.1];
    let labels = [true, true, true, false, false, false];
    let r = metrics::rates_at(&scores, &labels, 0.5);
    close(r.false_negative_rate.unwrap(), 1.0 / 3.0, "FNR");
    close(r.false_positive_rate.unwrap(), 1.0 / 3.0, "FPR");
    // Every positive released: the lowest positive score.
    assert_eq!(
        metrics::threshold_for_sensitivity(&scores, &labels, 1.0),
        Some(0.4)
    );
    assert_eq!(
        metrics::threshold_for_sensitivity(&scores, &labels, 0.6),
        Some(0.8)
    );
    assert_eq!(
        metrics::threshold_for_sensitivity(&[0.3], &[false], 0.9),
        None
    );
}
