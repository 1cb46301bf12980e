//! Inference weights for review on a CPU: the text model's linear layers and the LM head stored
//! as GGML blocks (Q8_0, Q4K: candle's `quantized::k_quants` blocks and their AVX2 dot products)
//! or as bf16 read by a matrix-vector kernel, made once at load.
//!
//! [`open_folder`] loads a model folder in a [`WeightFormat`]:
//! - `f32`: every weight widened to f32 at load (what training uses; adapters stay unmerged);
//! - `bf16`: every linear layer (text and vision) and the LM head kept in bf16;
//! - `q8_0` / `q4k`: the text model's linear layers and the LM head quantised, the vision tower's
//!   linear layers in bf16 (it runs once per image, on many rows at a time).
//!
//! Activations stay f32 in every format. A packed layer reads its weight straight from the
//! checkpoint, one matrix at a time, after the LoRA adapter (if any) is attached: `W + s B A` is
//! merged in f32 before it is packed, so the adapter costs nothing per token. The token
//! embeddings stay bf16 (rows are widened as they are looked up).
//!
//! GGML blocks need the input dimension to divide by the block (32 for Q8_0, 256 for Q4K; every
//! one of Qwen3-VL-2B does); a matrix that does not is stored in the next format that fits (Q4K,
//! then Q8_0, then bf16) and [`PackReport`] counts how many did.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context};
use candle_core::quantized::k_quants::{BlockQ4K, BlockQ8_0, GgmlType};
use candle_core::{CpuStorage, DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use half::bf16;
use rayon::prelude::*;

use super::config::Qwen3VlConfig;
use super::folder::ModelFolder;
use super::qwen3_vl::Qwen3Vl;
use super::weights::{self, FileTensors};

/// How the inference weights are stored.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// Every weight in f32 (4 bytes a weight).
    #[default]
    F32,
    /// Linear layers in bf16 (2 bytes a weight).
    Bf16,
    /// Text linear layers and LM head in GGML Q8_0 (8.5 bits a weight).
    #[value(name = "q8_0")]
    #[serde(rename = "q8_0")]
    Q8_0,
    /// Text linear layers and LM head in GGML Q4K (4.5 bits a weight).
    #[value(name = "q4k")]
    #[serde(rename = "q4k")]
    Q4K,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 4] = [
        WeightFormat::F32,
        WeightFormat::Bf16,
        WeightFormat::Q8_0,
        WeightFormat::Q4K,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4K => "q4k",
        }
    }

    /// Bytes per weight of a text linear layer in this format.
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            WeightFormat::F32 => 4.0,
            WeightFormat::Bf16 => 2.0,
            WeightFormat::Q8_0 => 34.0 / 32.0,
            WeightFormat::Q4K => 144.0 / 256.0,
        }
    }

    /// This format, or the next one that fits an input dimension of `inp`.
    fn fitting(self, inp: usize) -> WeightFormat {
        match self {
            WeightFormat::Q4K if !inp.is_multiple_of(256) => WeightFormat::Q8_0.fitting(inp),
            WeightFormat::Q8_0 if !inp.is_multiple_of(32) => WeightFormat::Bf16,
            other => other,
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Up to this many rows go through the matrix-vector kernel of a bf16 layer; more (a prompt, an
/// image) widen the weight to f32 for that call and use the matrix-matrix product.
const MATVEC_ROWS: usize = 8;

enum Packed {
    /// GGML blocks, row after row (`in / 32` blocks a row).
    Q8_0(Vec<BlockQ8_0>),
    /// GGML k-quant blocks (`in / 256` a row).
    Q4K(Vec<BlockQ4K>),
    /// `(out, in)`, contiguous.
    Bf16(Tensor),
}

/// A linear layer's weight `(out, in)` in an inference format; `forward` computes `x W^T`.
///
/// The GGML formats use candle's block types and dot-product kernels (`k_quants`, AVX2 chosen at
/// run time) through a matrix product of our own: candle's `QMatMul` keeps a second, repacked
/// copy of every matrix it has multiplied on CPUs with AVX-512 VNNI (and a third for Q4K's AMX
/// path), which would double the weights' memory.
pub struct PackedLinear {
    packed: Packed,
    format: WeightFormat,
    out: usize,
    inp: usize,
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedLinear({}, {}x{})",
            self.format, self.out, self.inp
        )
    }
}

impl PackedLinear {
    /// Packs `w` `(out, in)` in `format` (or the next format that fits its input dimension).
    /// `format` must not be f32.
    pub fn pack(w: &Tensor, format: WeightFormat) -> candle_core::Result<Self> {
        let (out, inp) = w.dims2()?;
        let format = format.fitting(inp);
        let packed = match format {
            WeightFormat::Q8_0 => Packed::Q8_0(quantize(w)?),
            WeightFormat::Q4K => Packed::Q4K(quantize(w)?),
            WeightFormat::Bf16 => Packed::Bf16(w.to_dtype(DType::BF16)?.contiguous()?),
            WeightFormat::F32 => candle_core::bail!("f32 weights are not packed"),
        };
        Ok(PackedLinear {
            packed,
            format,
            out,
            inp,
        })
    }

    /// The format the weight is stored in.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    /// Bytes the weight occupies.
    pub fn bytes(&self) -> usize {
        match &self.packed {
            Packed::Q8_0(b) => std::mem::size_of_val(&b[..]),
            Packed::Q4K(b) => std::mem::size_of_val(&b[..]),
            Packed::Bf16(_) => self.out * self.inp * 2,
        }
    }

    /// `x W^T` for f32 `x` of any rank whose last dimension is `in`.
    ///
    /// Up to [`MATVEC_ROWS`] rows (a generated token) go through a matrix-vector kernel that
    /// reads each weight once; more rows (a prompt, an image) widen the weight to f32 a slice of
    /// output rows at a time and use the matrix product. Q8_0 and bf16 multiply f32 activations
    /// in both (the same function of the stored weights either way); Q4K's kernel quantises the
    /// activations to Q8K blocks, as llama.cpp does.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        if dims.last() != Some(&self.inp) {
            candle_core::bail!(
                "a {}x{} layer cannot take input {:?}",
                self.out,
                self.inp,
                dims
            );
        }
        if !x.device().is_cpu() {
            candle_core::bail!("packed weights run on the CPU");
        }
        let (out, inp) = (self.out, self.inp);
        let rows = x.elem_count() / inp.max(1);
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = out;
        let x = x.to_dtype(DType::F32)?;
        if rows > MATVEC_ROWS {
            return self
                .wide_product(&x.reshape((rows, inp))?)?
                .reshape(out_dims);
        }
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let xr = |r: usize| &xs[r * inp..(r + 1) * inp];
        let y = match &self.packed {
            Packed::Q8_0(w) => {
                let per_row = inp / 32;
                times_rows(out, rows, |o, r| {
                    dot_q8_0(&w[o * per_row..(o + 1) * per_row], xr(r))
                })
            }
            Packed::Q4K(w) => ggml_matmul(w, out, inp, &xs, rows),
            Packed::Bf16(w) => {
                let (storage, layout) = w.storage_and_layout();
                let candle_core::Storage::Cpu(CpuStorage::BF16(data)) = &*storage else {
                    candle_core::bail!("a bf16 layer lost its bf16 weight");
                };
                let w = &data[layout.start_offset()..layout.start_offset() + out * inp];
                times_rows(out, rows, |o, r| {
                    dot_bf16(&w[o * inp..(o + 1) * inp], xr(r))
                })
            }
        };
        Tensor::from_vec(y, out_dims, x.device())
    }

    /// `x W^T` for many rows `x` `(rows, in)`: the weight widened to f32 about 32 MB at a time.
    fn wide_product(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (out, inp) = (self.out, self.inp);
        let step = ((8 << 20) / inp.max(1)).clamp(16, out.max(16));
        let mut parts = Vec::new();
        for start in (0..out).step_by(step) {
            let n = step.min(out - start);
            let w = match &self.packed {
                Packed::Q8_0(w) => widen_blocks(w, start, n, inp, x.device())?,
                Packed::Q4K(w) => widen_blocks(w, start, n, inp, x.device())?,
                Packed::Bf16(w) => w.narrow(0, start, n)?.to_dtype(DType::F32)?,
            };
            parts.push(x.matmul(&w.t()?)?);
        }
        Tensor::cat(&parts, 1)
    }
}

/// Rows `start..start + n` of GGML blocks `w` (`in` values a row) as an f32 `(n, in)` tensor.
fn widen_blocks<T: GgmlType>(
    w: &[T],
    start: usize,
    n: usize,
    inp: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let per_row = inp / T::BLCK_SIZE;
    let mut out = vec![0f32; n * inp];
    out.par_chunks_mut(inp).enumerate().for_each(|(i, row)| {
        let o = start + i;
        T::to_float(&w[o * per_row..(o + 1) * per_row], row);
    });
    Tensor::from_vec(out, (n, inp), device)
}

/// GGML blocks of `w` `(out, in)`, made a thousand rows at a time (a large matrix, the LM head,
/// is never widened to f32 whole).
fn quantize<T: GgmlType>(w: &Tensor) -> candle_core::Result<Vec<T>> {
    const ROWS: usize = 1024;
    let (out, inp) = w.dims2()?;
    let per_row = inp / T::BLCK_SIZE;
    let mut blocks = vec![T::zeros(); out * per_row];
    for (c, dst) in blocks.chunks_mut(ROWS * per_row).enumerate() {
        let n = dst.len() / per_row;
        let rows: Vec<f32> = w
            .narrow(0, c * ROWS, n)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        dst.par_chunks_mut(per_row)
            .zip(rows.par_chunks(inp))
            .for_each(|(d, r)| T::from_float(r, d));
    }
    Ok(blocks)
}

/// `x W^T` for GGML blocks `w` `(out, in)` and a few f32 rows `x` `(rows, in)` with candle's
/// dot products: each row of `x` is quantised to the blocks the weight's dot product takes (Q8K
/// for Q4K), as llama.cpp and candle do.
fn ggml_matmul<T: GgmlType>(w: &[T], out: usize, inp: usize, x: &[f32], rows: usize) -> Vec<f32> {
    let per_row = inp / T::BLCK_SIZE;
    let x_blocks = inp / T::VecDotType::BLCK_SIZE;
    let mut xq = vec![T::VecDotType::zeros(); rows * x_blocks];
    xq.par_chunks_mut(x_blocks)
        .zip(x.par_chunks(inp))
        .for_each(|(d, r)| T::VecDotType::from_float(r, d));
    times_rows(out, rows, |o, r| {
        T::vec_dot(
            inp,
            &w[o * per_row..(o + 1) * per_row],
            &xq[r * x_blocks..(r + 1) * x_blocks],
        )
    })
}

/// `y` `(rows, out)` with `y[r][o] = f(o, r)`, computed in parallel over chunks of output rows
/// (each weight row read once, for every input row, while it is in cache).
fn times_rows(out: usize, rows: usize, f: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
    const CHUNK: usize = 16;
    let mut yt = vec![0f32; out * rows];
    yt.par_chunks_mut(CHUNK * rows)
        .enumerate()
        .for_each(|(c, dst)| {
            for (j, d) in dst.chunks_mut(rows).enumerate() {
                for (r, v) in d.iter_mut().enumerate() {
                    *v = f(c * CHUNK + j, r);
                }
            }
        });
    if rows == 1 {
        return yt;
    }
    let mut y = vec![0f32; out * rows];
    for o in 0..out {
        for r in 0..rows {
            y[r * out + o] = yt[o * rows + r];
        }
    }
    y
}

/// `sum w[i] x[i]` with `w` in bf16, accumulated in f32.
fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd::available() {
            // SAFETY: the features were just detected.
            return unsafe { simd::dot_bf16(w, x) };
        }
    }
    let mut acc = [0f32; 8];
    let mut wc = w.chunks_exact(8);
    let mut xc = x.chunks_exact(8);
    for (w8, x8) in (&mut wc).zip(&mut xc) {
        for k in 0..8 {
            acc[k] += w8[k].to_f32() * x8[k];
        }
    }
    let tail: f32 = wc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .map(|(a, b)| a.to_f32() * b)
        .sum();
    acc.iter().sum::<f32>() + tail
}

// The kernels read GGML's Q8_0 block as it is laid out: an f16 scale, then 32 signed bytes.
const Q8_0_BYTES: usize = 34;
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == Q8_0_BYTES);

/// `sum_b d_b sum_i q_bi x_bi` for one row of Q8_0 blocks and f32 `x`.
fn dot_q8_0(w: &[BlockQ8_0], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd::available() {
            // SAFETY: the features were just detected.
            return unsafe { simd::dot_q8_0(w, x) };
        }
    }
    let mut row = vec![0f32; x.len()];
    BlockQ8_0::to_float(w, &mut row);
    row.iter().zip(x).map(|(a, b)| a * b).sum()
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{BlockQ8_0, Q8_0_BYTES};
    use half::bf16;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Eight bf16 at `p` as f32: bf16 is the top half of an f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen_bf16(p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }

    /// Eight signed bytes at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen_i8(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let (wp, xp) = (w.as_ptr() as *const u16, x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let off = i + 8 * k;
                *a = _mm256_fmadd_ps(widen_bf16(wp.add(off)), _mm256_loadu_ps(xp.add(off)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(widen_bf16(wp.add(i)), _mm256_loadu_ps(xp.add(i)), acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = hsum(s);
        while i < n {
            total += w[i].to_f32() * x[i];
            i += 1;
        }
        total
    }

    /// One Q8_0 block's `sum q_i x_i` (8 lanes) and its scale, broadcast.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_block(base: *const u8, b: usize, x: *const f32) -> (__m256, __m256) {
        let blk = base.add(b * Q8_0_BYTES);
        let d = (blk as *const u16).read_unaligned();
        let scale = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(d))));
        let (q, xb) = (blk.add(2), x.add(b * 32));
        let mut t = _mm256_mul_ps(widen_i8(q), _mm256_loadu_ps(xb));
        for k in 1..4 {
            t = _mm256_fmadd_ps(widen_i8(q.add(8 * k)), _mm256_loadu_ps(xb.add(8 * k)), t);
        }
        (t, scale)
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available; `x` holds `32 * w.len()` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[f32]) -> f32 {
        assert!(x.len() >= 32 * w.len());
        let base = w.as_ptr() as *const u8;
        let xp = x.as_ptr();
        let nb = w.len();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut b = 0;
        // Four blocks at a time: four independent chains hide the multiply-add latency.
        while b + 4 <= nb {
            for (k, a) in acc.iter_mut().enumerate() {
                let (t, scale) = q8_0_block(base, b + k, xp);
                *a = _mm256_fmadd_ps(scale, t, *a);
            }
            b += 4;
        }
        while b < nb {
            let (t, scale) = q8_0_block(base, b, xp);
            acc[0] = _mm256_fmadd_ps(scale, t, acc[0]);
            b += 1;
        }
        hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }
}

/// A zero-stride tensor of `shape`: what a packed layer keeps in place of its full weight (the
/// shape is still read, by adapters and checks; the values never are).
pub fn placeholder(shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    Tensor::zeros((), DType::F32, device)?.broadcast_as(shape)
}

/// What [`open_folder`] packed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PackReport {
    pub format: WeightFormat,
    /// Text linear layers and LM head in the requested format.
    pub packed: usize,
    /// Of those, how many took another format because their input dimension does not divide
    /// by the block size.
    pub fell_back: usize,
    /// Vision linear layers (bf16).
    pub vision_bf16: usize,
    /// Adapters merged into the packed weights.
    pub merged_adapters: usize,
    /// Bytes of every packed weight.
    pub packed_bytes: usize,
}

impl PackReport {
    pub fn summary(&self) -> String {
        if self.format == WeightFormat::F32 {
            return "weights f32".into();
        }
        let mut s = format!(
            "weights {}: {} text layers and LM head packed, {} vision layers in bf16, {:.2} GB",
            self.format,
            self.packed,
            self.vision_bf16,
            self.packed_bytes as f64 / 1e9
        );
        if self.fell_back > 0 {
            s.push_str(&format!(
                "; {} whose input size does not divide by the {} block took the next format that fits",
                self.fell_back, self.format
            ));
        }
        if self.merged_adapters > 0 {
            s.push_str(&format!("; {} adapters merged", self.merged_adapters));
        }
        s
    }
}

/// The checkpoint as the model reads it while packing: every linear weight is only noted (a
/// placeholder goes into the model), the token embeddings come as bf16, the rest as f32.
struct PackingBackend {
    files: Arc<FileTensors>,
    linears: BTreeSet<String>,
}

const EMBED: &str = "model.language_model.embed_tokens.weight";
const LM_HEAD: &str = "lm_head.weight";

impl candle_nn::var_builder::SimpleBackend for PackingBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = if self.linears.contains(name) {
            placeholder(s.dims(), dev)?
        } else if name == EMBED || name == LM_HEAD {
            self.files.read(name, DType::BF16, dev)?
        } else {
            self.files.read(name, dtype, dev)?
        };
        if t.shape() != &s {
            candle_core::bail!("{name} is {:?}, the model needs {:?}", t.dims(), s.dims());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.files.read(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.files.contains(name)
    }
}

/// The names of the weights that are packed: every linear layer of the text model and of the
/// vision tower (rank-2 `.weight`s other than embeddings).
fn linear_names(config: &Qwen3VlConfig) -> BTreeSet<String> {
    weights::expected_shapes(config)
        .into_iter()
        .filter(|(name, shape)| {
            shape.len() == 2
                && name.ends_with(".weight")
                && (name.starts_with("model.language_model.layers.")
                    || (name.starts_with("model.visual.") && !name.ends_with("pos_embed.weight")))
        })
        .map(|(name, _)| name)
        .collect()
}

/// Opens a model folder in `format`. `attach` runs on the model before anything is packed (to
/// attach a LoRA adapter, which is then merged into the packed weights); `progress` sees
/// `(done, total)` layers.
pub fn open_folder(
    dir: &Path,
    format: WeightFormat,
    device: &Device,
    attach: impl FnOnce(&mut Qwen3Vl) -> anyhow::Result<()>,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<(ModelFolder, PackReport)> {
    let mut report = PackReport {
        format,
        ..PackReport::default()
    };
    if format == WeightFormat::F32 {
        let mut folder = ModelFolder::open(dir, DType::F32, device)?;
        attach(&mut folder.model)?;
        return Ok((folder, report));
    }
    ensure!(
        device.is_cpu(),
        "--weights {format} runs on the CPU; on a GPU use --weights f32"
    );
    let mut files = None;
    let mut folder = ModelFolder::open_with(dir, |config| {
        let f = Arc::new(weights::open_checked(config, dir)?);
        files = Some(f.clone());
        let backend = PackingBackend {
            files: f,
            linears: linear_names(config),
        };
        Ok(VarBuilder::from_backend(
            Box::new(backend),
            DType::F32,
            device.clone(),
        ))
    })?;
    let files = files.context("the checkpoint was not opened")?;
    attach(&mut folder.model)?;
    let model = &mut folder.model;
    // The LM head first, while little else is in memory: from the bf16 embeddings when tied.
    let head = PackedLinear::pack(model.lm_head(), format)?;
    report.fell_back += usize::from(head.format() != format);
    report.packed += 1;
    report.packed_bytes += head.bytes();
    model.set_packed_lm_head(Arc::new(head), device)?;
    let linears = model.linears_mut();
    let total = linears.len();
    for (done, (module, linear)) in linears.into_iter().enumerate() {
        let name = format!("{module}.weight");
        let vision = module.starts_with("model.visual.");
        let target = if vision { WeightFormat::Bf16 } else { format };
        let mut w = files
            .read(&name, DType::F32, device)
            .with_context(|| format!("cannot read {name}"))?;
        if let Some(lora) = linear.lora.take() {
            let delta = (lora
                .b
                .to_dtype(DType::F32)?
                .matmul(&lora.a.to_dtype(DType::F32)?)?
                * lora.scale)?;
            w = (w + delta)?;
            report.merged_adapters += 1;
        }
        let packed = PackedLinear::pack(&w, target)?;
        drop(w);
        if vision {
            report.vision_bf16 += 1;
        } else {
            report.packed += 1;
            report.fell_back += usize::from(packed.format() != format);
        }
        report.packed_bytes += packed.bytes();
        linear.packed = Some(Arc::new(packed));
        progress(done + 1, total);
    }
    Ok((folder, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::Module;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all());
        d.and_then(|d| d.to_scalar()).unwrap()
    }

    /// The bf16 kernel equals widening the weight and multiplying in f32, for one row, a few
    /// rows, more rows than the kernel takes, and lengths that are no multiple of the vector.
    #[test]
    fn bf16_layer_equals_the_widened_product() {
        let dev = Device::Cpu;
        for (rows, inp, out) in [(1, 256, 40), (3, 100, 17), (12, 64, 9), (1, 7, 3)] {
            let w = Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (1, rows, inp), &dev).unwrap();
            let layer = PackedLinear::pack(&w, WeightFormat::Bf16).unwrap();
            let widened = w
                .to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let want = super::super::ops::matmul_last(&x, &widened).unwrap();
            let got = layer.forward(&x).unwrap();
            assert_eq!(got.dims(), &[1, rows, out]);
            assert!(max_diff(&got, &want) < 1e-3, "{rows}x{inp}x{out}");
        }
    }

    /// Q8_0 and Q4K stay close to the f32 product (relative to its scale) and to candle's own
    /// quantised matmul; a generated token (the matrix-vector kernel) and a prompt (the widened
    /// product) get the same numbers; a size that does not fit the block takes the next format.
    #[test]
    fn quantised_layers_stay_close_and_fall_back_when_they_must() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (1100, 512), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (12, 512), &dev).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        let scale: f32 = want.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        for (format, bound, paths) in [
            (WeightFormat::Q8_0, 0.02, 1e-5),
            (WeightFormat::Q4K, 0.15, 0.02),
        ] {
            let layer = PackedLinear::pack(&w, format).unwrap();
            assert_eq!(layer.format(), format);
            let wide = layer.forward(&x).unwrap();
            let err = max_diff(&wide, &want) / scale;
            assert!(err < bound, "{format}: relative error {err}");
            let first = layer.forward(&x.narrow(0, 0, 2).unwrap()).unwrap();
            let apart = max_diff(&first, &wide.narrow(0, 0, 2).unwrap()) / scale;
            assert!(apart < paths, "{format}: matrix-vector vs widened {apart}");
            let dtype = match format {
                WeightFormat::Q8_0 => GgmlDType::Q8_0,
                _ => GgmlDType::Q4K,
            };
            let theirs = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap())
                .unwrap()
                .forward(&x)
                .unwrap();
            let agree = max_diff(&wide, &theirs) / scale;
            assert!(
                agree < 0.02,
                "{format}: candle's QMatMul differs by {agree}"
            );
        }
        let odd = Tensor::randn(0f32, 1.0, (8, 96), &dev).unwrap();
        assert_eq!(
            PackedLinear::pack(&odd, WeightFormat::Q4K)
                .unwrap()
                .format(),
            WeightFormat::Q8_0
        );
        let odder = Tensor::randn(0f32, 1.0, (8, 48), &dev).unwrap();
        assert_eq!(
            PackedLinear::pack(&odder, WeightFormat::Q8_0)
                .unwrap()
                .format(),
            WeightFormat::Bf16
        );
    }
}
