//! Counter-based dropout masks.
//!
//! Whether an element is dropped depends only on the batch's seed, the sample's place in the
//! global batch, which dropout site of the forward pass this is, the row within the sample and
//! the feature. So a sample gets the same masks whichever replica runs it and however much
//! padding its shard adds, and a run on several replicas equals the run on one (DESIGN 4,
//! devices). A sequential generator would hand out different masks as soon as the batch is split.

use std::sync::Mutex;

use candle_core::{Error, Result};

use super::random::mix;

/// Dropout site number of the ROI head (adapters count up from 0).
pub const ROI_HEAD_SITE: u64 = u64::MAX;

/// The random identity of one forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct DropoutPlan {
    pub seed: u64,
    /// The place of each row of this (shard of the) batch in the global batch.
    pub samples: Vec<u64>,
    /// Patches of each image, in batch order: the vision tower's rows are its images' patches
    /// (or merged groups of them).
    pub image_patches: Vec<usize>,
}

impl DropoutPlan {
    fn row_key(&self, site: u64, sample: u64, row: u64) -> u64 {
        mix(mix(mix(self.seed ^ mix(sample)) ^ site) ^ row)
    }

    /// Keep factors (`0` or `1 / (1 - p)`) for `features` elements of a row.
    fn fill(&self, p: f64, key: u64, features: usize, out: &mut Vec<f32>) {
        let keep = (1.0 / (1.0 - p)) as f32;
        out.extend((0..features as u64).map(|f| {
            let u = (mix(key ^ f.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 11) as f64
                / (1u64 << 53) as f64;
            if u < p {
                0.0
            } else {
                keep
            }
        }));
    }

    /// Mask for an input of `dims` at dropout site `site`:
    /// - `(batch, seq, features)`: text rows, counted from the end of the sequence because
    ///   batches are padded on the left;
    /// - `(rows, features)` with one row per sample: head inputs;
    /// - `(rows, features)` otherwise: the vision tower's rows, split over the images.
    pub fn mask(&self, p: f64, site: u64, dims: &[usize]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(dims.iter().product());
        match *dims {
            [batch, seq, features] => {
                if batch != self.samples.len() {
                    return Err(Error::Msg(format!(
                        "dropout plan has {} samples, the input {batch} rows",
                        self.samples.len()
                    )));
                }
                for &sample in &self.samples {
                    for t in 0..seq {
                        let key = self.row_key(site, sample, (seq - 1 - t) as u64);
                        self.fill(p, key, features, &mut out);
                    }
                }
            }
            [rows, features] if rows == self.samples.len() && site == ROI_HEAD_SITE => {
                for &sample in &self.samples {
                    self.fill(p, self.row_key(site, sample, 0), features, &mut out);
                }
            }
            [rows, features] => {
                let total: usize = self.image_patches.iter().sum();
                if rows == 0
                    || !total.is_multiple_of(rows)
                    || self.image_patches.len() != self.samples.len()
                {
                    return Err(Error::Msg(format!(
                        "dropout plan cannot place {rows} vision rows over images of {:?} patches",
                        self.image_patches
                    )));
                }
                let group = total / rows;
                for (&sample, &patches) in self.samples.iter().zip(&self.image_patches) {
                    for r in 0..patches / group {
                        // Vision rows get their own keys, apart from the text rows of a sample.
                        let key = self.row_key(site, sample, (1u64 << 63) | r as u64);
                        self.fill(p, key, features, &mut out);
                    }
                }
            }
            _ => return Err(Error::Msg(format!("dropout on an input of shape {dims:?}"))),
        }
        Ok(out)
    }
}

/// The dropout of one model replica's adapters: off until a plan is set; each adapter draws its
/// masks at its own site number.
#[derive(Debug, Default)]
pub struct Dropout {
    plan: Mutex<Option<DropoutPlan>>,
}

impl Dropout {
    /// Masks from now on come from `plan` (until [`Self::end`], after the backward pass, which
    /// may run blocks again).
    pub fn begin(&self, plan: DropoutPlan) {
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = Some(plan);
    }

    /// Dropout off (evaluation).
    pub fn end(&self) {
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The mask of dropout site `site` for an input of `dims`, or `None` while dropout is off.
    pub fn mask(&self, p: f64, site: u64, dims: &[usize]) -> Result<Option<Vec<f32>>> {
        let plan = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        match plan.as_ref() {
            Some(plan) => Ok(Some(plan.mask(p, site, dims)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(samples: Vec<u64>, image_patches: Vec<usize>) -> DropoutPlan {
        DropoutPlan {
            seed: 7,
            samples,
            image_patches,
        }
    }

    /// A sample's text mask is the same alone or in a batch with more padding.
    #[test]
    fn a_sample_keeps_its_mask_when_the_batch_is_split() {
        let whole = plan(vec![0, 1], vec![4, 8]);
        let m = whole.mask(0.5, 3, &[2, 5, 6]).unwrap();
        let alone = plan(vec![1], vec![8]).mask(0.5, 3, &[1, 3, 6]).unwrap();
        // Sample 1's last three positions.
        assert_eq!(&m[5 * 6 + 2 * 6..], &alone[..]);
        // Vision rows: merged groups of 4 patches, 1 row for image 0 and 2 for image 1.
        let v = whole.mask(0.5, 4, &[3, 10]).unwrap();
        let v1 = plan(vec![1], vec![8]).mask(0.5, 4, &[2, 10]).unwrap();
        assert_eq!(&v[10..], &v1[..]);
        let dropped = m.iter().filter(|&&x| x == 0.0).count() as f64 / m.len() as f64;
        assert!((0.3..0.7).contains(&dropped), "{dropped}");
        assert!(m.iter().all(|&x| x == 0.0 || x == 2.0));
    }

    #[test]
    fn sites_and_seeds_give_different_masks() {
        let p = plan(vec![0], vec![4]);
        let a = p.mask(0.5, 0, &[1, 4, 16]).unwrap();
        assert_ne!(a, p.mask(0.5, 1, &[1, 4, 16]).unwrap());
        let q = DropoutPlan { seed: 8, ..p };
        assert_ne!(a, q.mask(0.5, 0, &[1, 4, 16]).unwrap());
    }

    #[test]
    fn off_until_a_plan_is_set() {
        let d = Dropout::default();
        assert!(d.mask(0.1, 0, &[1, 2, 3]).unwrap().is_none());
        d.begin(plan(vec![0], vec![4]));
        let first = d.mask(0.1, 5, &[1, 2, 3]).unwrap().unwrap();
        // The same site draws the same mask again (a block computed twice for backward).
        assert_eq!(d.mask(0.1, 5, &[1, 2, 3]).unwrap().unwrap(), first);
        d.end();
        assert!(d.mask(0.1, 0, &[1, 2, 3]).unwrap().is_none());
    }
}
