//! Deterministic, stratified train/val/test splits.
//!
//! Records without a split are assigned stratum by stratum (modality and organ, see
//! [`crate::data::record::stratum`]) in the order of their content key, each to the split that is
//! furthest below its share, counting both its stratum and the whole project: large strata get
//! their shares within a record, and strata of one or two records still fill val and test
//! together instead of all landing in train. The result depends only on the set of records, not
//! on input order or thread count, and records that already have a split keep it, so a resumed
//! or extended `prepare` never moves a record between splits.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::{bail, Context};
use rusqlite::{params, TransactionBehavior};

use super::{Project, Split};

/// Target shares of train, val and test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitRatios(pub [f64; 3]);

impl Default for SplitRatios {
    fn default() -> Self {
        SplitRatios([0.8, 0.1, 0.1])
    }
}

impl FromStr for SplitRatios {
    type Err = anyhow::Error;
    /// `"80,10,10"`: three non-negative numbers, scaled to sum to one.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let parts: Vec<f64> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("split ratios {s:?}: expected three numbers like 80,10,10"))?;
        let [a, b, c] = parts[..] else {
            bail!("split ratios {s:?}: expected three numbers (train,val,test)");
        };
        let sum = a + b + c;
        if [a, b, c].iter().any(|v| !v.is_finite() || *v < 0.0) || sum <= 0.0 {
            bail!("split ratios {s:?}: need non-negative numbers with a positive sum");
        }
        Ok(SplitRatios([a / sum, b / sum, c / sum]))
    }
}

impl Project {
    /// Assigns a split to every record that has none, in one transaction; returns how many.
    pub fn assign_splits(&mut self, ratios: SplitRatios) -> anyhow::Result<usize> {
        let tx = self
            .conn_mut()
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut counts: HashMap<String, [u64; 3]> = HashMap::new();
        {
            let mut stmt = tx.prepare(
                "SELECT stratum, split, count(*) FROM records WHERE split IS NOT NULL \
                 GROUP BY stratum, split",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let split: String = row.get(1)?;
                let slot = Split::ALL
                    .iter()
                    .position(|s| s.as_str() == split)
                    .context("unknown split in the project")?;
                counts.entry(row.get(0)?).or_default()[slot] += row.get::<_, i64>(2)? as u64;
            }
        }
        let pending: Vec<(i64, String)> = {
            let mut stmt = tx.prepare(
                "SELECT id, stratum FROM records WHERE split IS NULL ORDER BY stratum, key",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut global = [0u64; 3];
        for c in counts.values() {
            for slot in 0..3 {
                global[slot] += c[slot];
            }
        }
        {
            let mut update = tx.prepare("UPDATE records SET split = ?1 WHERE id = ?2")?;
            for (id, stratum) in &pending {
                let c = counts.entry(stratum.clone()).or_default();
                let slot = next_split(c, &global, ratios);
                c[slot] += 1;
                global[slot] += 1;
                update.execute(params![Split::ALL[slot].as_str(), id])?;
            }
        }
        tx.commit()?;
        Ok(pending.len())
    }
}

/// The split furthest below its target share, in the stratum plus in the project, once one more
/// record is added (ties: train, val, test).
fn next_split(stratum: &[u64; 3], global: &[u64; 3], ratios: SplitRatios) -> usize {
    let deficit_in = |counts: &[u64; 3], slot: usize| {
        let n = (counts.iter().sum::<u64>() + 1) as f64;
        ratios.0[slot] * n - counts[slot] as f64
    };
    let mut best = 0;
    let mut best_deficit = f64::NEG_INFINITY;
    for slot in 0..3 {
        let deficit = deficit_in(stratum, slot) + deficit_in(global, slot);
        if ratios.0[slot] > 0.0 && deficit > best_deficit + 1e-9 {
            best = slot;
            best_deficit = deficit;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_parse_and_normalise() {
        assert_eq!(
            "8,1,1".parse::<SplitRatios>().unwrap(),
            SplitRatios([0.8, 0.1, 0.1])
        );
        assert!("80,20".parse::<SplitRatios>().is_err());
        assert!("80,-5,25".parse::<SplitRatios>().is_err());
        assert!("0,0,0".parse::<SplitRatios>().is_err());
        assert!("a,b,c".parse::<SplitRatios>().is_err());
    }

    #[test]
    fn shares_hold_in_large_strata_and_across_tiny_ones() {
        let ratios = SplitRatios::default();
        let (mut counts, mut global) = ([0u64; 3], [0u64; 3]);
        for _ in 0..1000 {
            let s = next_split(&counts, &global, ratios);
            counts[s] += 1;
            global[s] += 1;
        }
        assert_eq!(counts, [800, 100, 100]);
        // 100 strata of one record each: val and test still get their share overall.
        let mut global = [0u64; 3];
        for _ in 0..100 {
            let s = next_split(&[0; 3], &global, ratios);
            global[s] += 1;
        }
        assert!(global[1] >= 8 && global[2] >= 8, "{global:?}");
        let (mut counts, mut global) = ([0u64; 3], [0u64; 3]);
        for _ in 0..10 {
            let s = next_split(&counts, &global, SplitRatios([1.0, 0.0, 0.0]));
            counts[s] += 1;
            global[s] += 1;
        }
        assert_eq!(counts, [10, 0, 0]);
    }
}
