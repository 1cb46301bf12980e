//! The model side: Qwen3-VL in candle, its inputs, and generation.
//!
//! - [`config`]: the architecture from a Hugging Face `config.json`;
//! - [`weights`]: strict safetensors loading (every tensor named and shaped by the config);
//! - [`dropout`]: counter-based dropout masks, the same for a sample on any replica;
//! - [`ops`]: the operations that exist in a differentiable and a fused form;
//! - [`grad`]: backward passes that cost only what training needs (frozen weights get no
//!   gradient, activation recompute);
//! - [`positions`]: MRoPE positions and the vision tower's patch positions;
//! - [`vision`], [`text`], [`qwen3_vl`]: the vision tower, the text model, and the two joined;
//! - [`quantized`]: inference weights (Q8_0, Q4K, bf16) made at load, adapters merged;
//! - [`generate`]: greedy and top-p generation with a resettable cache;
//! - [`folder`]: a model folder (config, weights, tokenizer, processor) and `init-model`;
//! - [`processor`]: images to the vision tower's patches and `image_grid_thw`, as Hugging Face's
//!   Qwen-VL image processor makes them;
//! - [`resample`]: Pillow-exact bicubic resizing, which the processor needs;
//! - [`tokenizer`]: the Qwen3 tokenizer and the chat layout of a question with its image.

pub mod config;
pub mod dropout;
pub mod folder;
pub mod generate;
pub mod grad;
pub mod ops;
pub mod positions;
pub mod processor;
pub mod quantized;
pub mod qwen3_vl;
pub mod random;
pub mod resample;
pub mod text;
pub mod tokenizer;
pub mod vision;
pub mod weights;
