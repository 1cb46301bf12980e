//! AdamW with parameter groups, a cosine schedule with warmup, and global-norm clipping
//! (DESIGN 4.10: the seed used one learning rate for LoRA and fresh heads alike).
//!
//! Written here rather than taken from candle-nn so that the moments can be saved and restored
//! with a checkpoint, and gradients accumulated over several batches.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Result, Tensor, Var};

/// Parameters sharing a learning rate and weight decay.
pub struct Group {
    pub name: String,
    pub vars: Vec<(String, Var)>,
    pub lr: f64,
    pub weight_decay: f64,
}

pub struct AdamW {
    pub groups: Vec<Group>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Updates taken so far.
    pub step: usize,
    /// First and second moments by parameter name.
    pub moments: HashMap<String, (Tensor, Tensor)>,
}

/// Gradients summed over the batches of one optimiser step.
#[derive(Default)]
pub struct Accumulated {
    pub grads: HashMap<String, Tensor>,
    pub batches: usize,
}

impl Accumulated {
    /// Adds this batch's gradients of the groups' parameters.
    pub fn add(&mut self, opt: &AdamW, grads: &GradStore) -> Result<()> {
        let mut named = HashMap::new();
        for group in &opt.groups {
            for (name, var) in &group.vars {
                if let Some(g) = grads.get(var.as_tensor()) {
                    named.insert(name.clone(), g.clone());
                }
            }
        }
        self.add_named(named)
    }

    /// Adds this batch's gradients, by parameter name (reduced over replicas).
    pub fn add_named(&mut self, grads: HashMap<String, Tensor>) -> Result<()> {
        for (name, g) in grads {
            let g = match self.grads.remove(&name) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            self.grads.insert(name, g);
        }
        self.batches += 1;
        Ok(())
    }

    /// The global L2 norm of the averaged gradients.
    pub fn norm(&self) -> Result<f64> {
        let mut sq = 0f64;
        // In name order, so the sum does not depend on the map's order.
        let mut names: Vec<&String> = self.grads.keys().collect();
        names.sort();
        for g in names.into_iter().map(|n| &self.grads[n]) {
            sq += f64::from(
                g.sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_scalar::<f32>()?,
            );
        }
        Ok(sq.sqrt() / self.batches.max(1) as f64)
    }
}

/// Learning-rate factor at `step` of `total`: linear warmup, then cosine down to 0.
pub fn cosine_with_warmup(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

impl AdamW {
    pub fn new(groups: Vec<Group>) -> Self {
        AdamW {
            groups,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            moments: HashMap::new(),
        }
    }

    /// One update from the accumulated gradients (averaged over their batches), clipped to
    /// `max_norm` (global, over every group), with the learning rates scaled by `lr_factor`.
    /// Returns the norm before clipping.
    pub fn update(
        &mut self,
        acc: &Accumulated,
        lr_factor: f64,
        max_norm: Option<f64>,
    ) -> Result<f64> {
        let norm = acc.norm()?;
        let clip = match max_norm {
            Some(m) if norm > m => m / (norm + 1e-6),
            _ => 1.0,
        };
        let scale = clip / acc.batches.max(1) as f64;
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let correction1 = 1.0 - b1.powi(t);
        let correction2 = 1.0 - b2.powi(t);
        for group in &self.groups {
            let lr = group.lr * lr_factor;
            for (name, var) in &group.vars {
                let Some(g) = acc.grads.get(name) else {
                    continue;
                };
                let g = (g * scale)?;
                let (m0, v0) = match self.moments.remove(name) {
                    Some((m, v)) => ((m * b1)?, (v * b2)?),
                    None => (g.zeros_like()?, g.zeros_like()?),
                };
                let m = (m0 + (&g * (1.0 - b1))?)?;
                let v = (v0 + (g.sqr()? * (1.0 - b2))?)?;
                let m_hat = (&m / correction1)?;
                let v_hat = (&v / correction2)?;
                let decayed = (var.as_tensor() * (1.0 - lr * group.weight_decay))?;
                let step = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
                var.set(&(decayed - (step * lr)?)?)?;
                self.moments.insert(name.clone(), (m, v));
            }
        }
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((cosine_with_warmup(0, 4, 20) - 0.25).abs() < 1e-12);
        assert!((cosine_with_warmup(3, 4, 20) - 1.0).abs() < 1e-12);
        assert!((cosine_with_warmup(4, 4, 20) - 1.0).abs() < 1e-12);
        assert!((cosine_with_warmup(12, 4, 20) - 0.5).abs() < 1e-12);
        assert!(cosine_with_warmup(20, 4, 20).abs() < 1e-12);
    }

    /// One step on f(w) = sum(w^2) matches AdamW written out by hand, and clipping bounds the norm.
    #[test]
    fn one_step_matches_the_formula() {
        let dev = Device::Cpu;
        let w = Var::new(&[1.0f32, -2.0], &dev).unwrap();
        let mut opt = AdamW::new(vec![Group {
            name: "w".into(),
            vars: vec![("w".into(), w.clone())],
            lr: 0.1,
            weight_decay: 0.01,
        }]);
        let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
        let mut acc = Accumulated::default();
        acc.add(&opt, &loss.backward().unwrap()).unwrap();
        let norm = opt.update(&acc, 1.0, None).unwrap();
        assert!((norm - 20f64.sqrt()).abs() < 1e-5);
        // First step: m_hat = g, v_hat = g^2, so the step is lr * sign(g), after decay.
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        let want = [1.0 * (1.0 - 0.001) - 0.1, -2.0 * (1.0 - 0.001) + 0.1];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w as f32).abs() < 1e-5, "{got:?}");
        }
        // Two accumulated batches average; clipping to 1 scales the gradient down.
        let mut acc = Accumulated::default();
        for _ in 0..2 {
            let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
            acc.add(&opt, &loss.backward().unwrap()).unwrap();
        }
        let single = w
            .as_tensor()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let norm = opt.update(&acc, 1.0, Some(1.0)).unwrap();
        assert!((norm - 2.0 * f64::from(single).sqrt()).abs() < 1e-4);
    }

    /// DESIGN 4.10: the seed trained fresh heads with LoRA's learning rate. Each group steps by
    /// its own rate (the first AdamW step moves every weight by about its learning rate).
    #[test]
    fn groups_step_at_their_own_rates() {
        let dev = Device::Cpu;
        let a = Var::new(&[1.0f32], &dev).unwrap();
        let h = Var::new(&[1.0f32], &dev).unwrap();
        let group = |name: &str, var: &Var, lr: f64| Group {
            name: name.into(),
            vars: vec![(name.into(), var.clone())],
            lr,
            weight_decay: 0.0,
        };
        let mut opt = AdamW::new(vec![group("lora", &a, 1e-4), group("heads", &h, 1e-3)]);
        let loss = (a.as_tensor() + h.as_tensor()).unwrap().sum_all().unwrap();
        let mut acc = Accumulated::default();
        acc.add(&opt, &loss.backward().unwrap()).unwrap();
        opt.update(&acc, 1.0, None).unwrap();
        let moved = |v: &Var| 1.0 - v.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((moved(&a) - 1e-4).abs() < 1e-6, "{}", moved(&a));
        assert!((moved(&h) - 1e-3).abs() < 1e-6, "{}", moved(&h));
    }
}
