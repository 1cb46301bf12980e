//! The model side: Qwen3-VL's inputs (and, to come, the model itself, LoRA and the task heads).
//!
//! - [`processor`]: images to the vision tower's patches and `image_grid_thw`, as Hugging Face's
//!   Qwen-VL image processor makes them;
//! - [`resample`]: Pillow-exact bicubic resizing, which the processor needs;
//! - [`tokenizer`]: the Qwen3 tokenizer and the chat layout of a question with its image.

pub mod processor;
pub mod resample;
pub mod tokenizer;
