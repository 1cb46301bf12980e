//! Multi-task fine-tuning: the task heads and the losses (the trainer loop, LoRA, negatives and
//! checkpoints come with issue 5's next steps).

pub mod heads;
pub mod lora;
pub mod losses;
