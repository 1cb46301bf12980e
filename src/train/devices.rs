//! The devices a run trains on (`--devices`), and the reduction of the replicas' gradients.
//!
//! Data parallel: one replica per device, each on its part of every batch. Their gradients are
//! summed on the first device (the losses are already divided by whole-batch counts, so the sum
//! is the whole batch's gradient), one optimiser step is taken there, and the new parameters are
//! copied back to the other replicas. Tensors move between devices through candle's copies; an
//! NCCL all-reduce is not used (see README, Devices).

use std::collections::HashMap;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};

/// Parses `cpu`, `cpu,cpu` (two CPU replicas: the data-parallel logic without a GPU),
/// `cuda:0`, `cuda:0,1` or `cuda:0,cuda:1`.
pub fn parse(spec: &str) -> anyhow::Result<Vec<DeviceSpec>> {
    let mut out = Vec::new();
    let mut last_was_cuda = false;
    for item in spec.split(',').map(str::trim) {
        let parsed = if item == "cpu" {
            DeviceSpec::Cpu
        } else if let Some(n) = item.strip_prefix("cuda:") {
            DeviceSpec::Cuda(
                n.parse()
                    .with_context(|| format!("--devices {spec}: `{item}` is not cuda:<number>"))?,
            )
        } else if item == "cuda" {
            DeviceSpec::Cuda(0)
        } else if let (true, Ok(n)) = (last_was_cuda, item.parse::<usize>()) {
            DeviceSpec::Cuda(n)
        } else {
            bail!("--devices {spec}: `{item}` is not cpu, cuda or cuda:<number>");
        };
        last_was_cuda = matches!(parsed, DeviceSpec::Cuda(_));
        if let DeviceSpec::Cuda(n) = parsed {
            if out.contains(&parsed) {
                bail!("--devices {spec}: cuda:{n} is listed twice");
            }
        }
        out.push(parsed);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    bail!(
                        "cuda:{n}: this roiscope was built without CUDA; build it with \
                         `cargo build --release --features cuda` (needs nvcc)"
                    );
                }
                Device::new_cuda(n).with_context(|| format!("cannot open cuda:{n}"))
            }
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Splits `n` samples over `replicas` as evenly as possible, in order: the ranges of each.
pub fn split(n: usize, replicas: usize) -> Vec<std::ops::Range<usize>> {
    let base = n / replicas;
    let extra = n % replicas;
    let mut start = 0;
    (0..replicas)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// Sums the replicas' gradients by name on `device`, adding in replica order so the result does
/// not depend on which replica finished first.
pub fn reduce(
    parts: Vec<HashMap<String, Tensor>>,
    device: &Device,
) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut sum: HashMap<String, Tensor> = HashMap::new();
    for part in parts {
        for (name, g) in part {
            let g = g.to_device(device)?;
            let g = match sum.remove(&name) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            sum.insert(name, g);
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists() {
        use DeviceSpec::*;
        assert_eq!(parse("cpu").unwrap(), [Cpu]);
        assert_eq!(parse("cpu,cpu").unwrap(), [Cpu, Cpu]);
        assert_eq!(parse("cuda:0,1").unwrap(), [Cuda(0), Cuda(1)]);
        assert_eq!(parse("cuda:0, cuda:2").unwrap(), [Cuda(0), Cuda(2)]);
        assert!(parse("gpu").is_err());
        assert!(parse("cpu,1").is_err());
        assert!(parse("cuda:0,0").is_err());
        if !cfg!(feature = "cuda") {
            let e = Cuda(0).open().unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }

    #[test]
    fn splits_are_even_and_in_order() {
        assert_eq!(split(5, 2), [0..3, 3..5]);
        assert_eq!(split(4, 4), [0..1, 1..2, 2..3, 3..4]);
        assert_eq!(split(2, 1), vec![0..2]);
    }
}
