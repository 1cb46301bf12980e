//! Images for the canvas and the browser's thumbnails, decoded off the UI thread and kept in a
//! bounded cache of textures. A file that fails to decode becomes an error entry (the UI draws
//! an error tile) instead of stopping anything.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egui::{ColorImage, TextureHandle, TextureOptions};

use crate::data::dicom::{decode_grey_values, is_dicom, GreyValues};
use crate::data::image_io::{load_rgb8, LoadOptions};

/// Longest side of a thumbnail, in pixels.
pub const THUMB_SIZE: u32 = 64;
/// Full images kept (decoded or being decoded): the current one and the last few shown.
pub const MAX_FULL: usize = 12;
/// Thumbnails kept (decoded or being decoded).
pub const MAX_THUMBS: usize = 400;
/// A decode still waiting in the queue is dropped when nothing has asked for its image for this
/// long (the user flipped or scrolled past it), so the decoders work on what is on screen.
const STALE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageKey {
    pub path: PathBuf,
    pub thumb: bool,
}

/// A decoded image as the canvas needs it: the pixels (kept for window/level) and whether it is
/// grey (R = G = B everywhere), which is when window/level applies.
pub struct Decoded {
    pub pixels: Arc<ColorImage>,
    pub grey: bool,
    pub texture: TextureHandle,
    /// A greyscale DICOM's modality values (full images only): window/level works on these,
    /// not on the 8-bit rendering in `pixels`.
    pub values: Option<Arc<GreyValues>>,
}

/// What a decoder thread hands back.
struct Image {
    pixels: ColorImage,
    grey: bool,
    values: Option<GreyValues>,
}

pub enum Slot {
    Loading,
    Ready(Decoded),
    Failed(String),
}

struct Entry {
    slot: Slot,
    /// When the UI last asked for this image.
    used: Instant,
}

type Job = (ImageKey, egui::Context);
type Done = (ImageKey, Result<Image, String>);

/// What the cache holds now, for tests and the responsiveness benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub full: usize,
    pub thumbs: usize,
    /// Entries that hold a texture.
    pub textures: usize,
    /// Decodes waiting for a decoder thread.
    pub queued: usize,
}

/// Decoded images by key, at most [`MAX_FULL`] full images and [`MAX_THUMBS`] thumbnails,
/// least recently used dropped first. Nothing decodes on the UI thread: [`ImageCache::get`]
/// queues the work and returns [`Slot::Loading`] until a decoder thread is done.
pub struct ImageCache {
    jobs: Arc<Mutex<VecDeque<Job>>>,
    wake: Sender<()>,
    done: Receiver<Done>,
    entries: HashMap<ImageKey, Entry>,
}

impl ImageCache {
    /// Starts `threads` decoder threads; they end when the cache is dropped.
    pub fn new(threads: usize) -> Self {
        let jobs: Arc<Mutex<VecDeque<Job>>> = Arc::default();
        let (wake_tx, wake_rx) = channel::<()>();
        let wake_rx = Arc::new(Mutex::new(wake_rx));
        let (done_tx, done_rx) = channel();
        for _ in 0..threads.max(1) {
            let jobs = jobs.clone();
            let wake_rx = wake_rx.clone();
            let done_tx: Sender<Done> = done_tx.clone();
            std::thread::spawn(move || loop {
                let job = jobs.lock().ok().and_then(|mut q| q.pop_back());
                let Some((key, ctx)) = job else {
                    // Sleep until woken; a closed channel means the cache is gone.
                    let woke = wake_rx.lock().map(|rx| rx.recv().is_ok());
                    if !matches!(woke, Ok(true)) {
                        return;
                    }
                    continue;
                };
                let result = decode(&key);
                if done_tx.send((key, result)).is_err() {
                    return;
                }
                ctx.request_repaint();
            });
        }
        ImageCache {
            jobs,
            wake: wake_tx,
            done: done_rx,
            entries: HashMap::new(),
        }
    }

    /// Takes finished decodes into textures, drops queued decodes nobody waits for any more and
    /// keeps the cache within its bounds; call once per frame.
    pub fn poll(&mut self, ctx: &egui::Context) {
        while let Ok((key, result)) = self.done.try_recv() {
            // A result for an image dropped meanwhile (or decoded twice) makes no texture.
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if !matches!(entry.slot, Slot::Loading) {
                continue;
            }
            entry.slot = match result {
                Ok(image) => {
                    let name = key.path.display().to_string();
                    let pixels = Arc::new(image.pixels);
                    let texture = ctx.load_texture(name, pixels.clone(), TextureOptions::LINEAR);
                    Slot::Ready(Decoded {
                        pixels,
                        grey: image.grey,
                        texture,
                        values: image.values.map(Arc::new),
                    })
                }
                Err(e) => Slot::Failed(e),
            };
        }
        let now = Instant::now();
        let entries = &mut self.entries;
        if let Ok(mut q) = self.jobs.lock() {
            q.retain(|(key, _)| {
                let fresh = entries
                    .get(key)
                    .is_some_and(|e| now.duration_since(e.used) < STALE);
                if !fresh {
                    entries.remove(key);
                }
                fresh
            });
        }
        self.evict();
    }

    /// The slot for `key`, queueing a decode the first time. The newest request is decoded
    /// first (the list scrolls, the user flips records: what is on screen now matters most).
    pub fn get(&mut self, ctx: &egui::Context, key: &ImageKey) -> &Slot {
        let now = Instant::now();
        if !self.entries.contains_key(key) {
            // Make room first, so the cache never holds more than its bound.
            let max = if key.thumb { MAX_THUMBS } else { MAX_FULL };
            self.evict_kind(key.thumb, max - 1);
        }
        let entry = self.entries.entry(key.clone()).or_insert_with(|| {
            if let Ok(mut q) = self.jobs.lock() {
                q.push_back((key.clone(), ctx.clone()));
            }
            let _ = self.wake.send(());
            Entry {
                slot: Slot::Loading,
                used: now,
            }
        });
        entry.used = now;
        &entry.slot
    }

    /// The slot for `key` if the cache has it, without queueing or counting it as a use.
    pub fn peek(&self, key: &ImageKey) -> Option<&Slot> {
        self.entries.get(key).map(|e| &e.slot)
    }

    /// Whether nothing is waiting to be decoded.
    pub fn idle(&self) -> bool {
        !self
            .entries
            .values()
            .any(|e| matches!(e.slot, Slot::Loading))
    }

    pub fn stats(&self) -> CacheStats {
        let mut s = CacheStats {
            queued: self.jobs.lock().map_or(0, |q| q.len()),
            ..CacheStats::default()
        };
        for (key, e) in &self.entries {
            if key.thumb {
                s.thumbs += 1;
            } else {
                s.full += 1;
            }
            s.textures += usize::from(matches!(e.slot, Slot::Ready(_)));
        }
        s
    }

    /// Drops the least recently used entries beyond the bounds, with their queued decodes.
    fn evict(&mut self) {
        self.evict_kind(false, MAX_FULL);
        self.evict_kind(true, MAX_THUMBS);
    }

    /// Keeps at most `max` thumbnails (`thumb`) or full images, the most recently used.
    fn evict_kind(&mut self, thumb: bool, max: usize) {
        let count = self.entries.keys().filter(|k| k.thumb == thumb).count();
        if count <= max {
            return;
        }
        let mut kind: Vec<(Instant, ImageKey)> = self
            .entries
            .iter()
            .filter(|(k, _)| k.thumb == thumb)
            .map(|(k, e)| (e.used, k.clone()))
            .collect();
        kind.sort_by_key(|(used, _)| *used);
        let over = kind.len() - max;
        let gone: Vec<ImageKey> = kind.into_iter().take(over).map(|(_, k)| k).collect();
        for k in &gone {
            self.entries.remove(k);
        }
        if let Ok(mut q) = self.jobs.lock() {
            q.retain(|(k, _)| !gone.contains(k));
        }
    }
}

fn decode(key: &ImageKey) -> Result<Image, String> {
    let opts = LoadOptions::default();
    let img = load_rgb8(&key.path, opts).map_err(|e| e.to_string())?;
    let img = if key.thumb {
        // Longest side THUMB_SIZE, aspect ratio kept.
        let scale = THUMB_SIZE as f32 / img.width().max(img.height()).max(1) as f32;
        let w = ((img.width() as f32 * scale).round() as u32).max(1);
        let h = ((img.height() as f32 * scale).round() as u32).max(1);
        image::imageops::thumbnail(&img, w, h)
    } else {
        img
    };
    let values = if key.thumb {
        None
    } else {
        dicom_values(&key.path, opts.max_pixels)?
    };
    let grey = img.pixels().all(|p| p[0] == p[1] && p[1] == p[2]);
    let size = [img.width() as usize, img.height() as usize];
    Ok(Image {
        pixels: ColorImage::from_rgb(size, img.as_raw()),
        grey,
        values,
    })
}

/// The modality values of a greyscale DICOM file; `None` for any other image.
fn dicom_values(path: &std::path::Path, max_pixels: u64) -> Result<Option<GreyValues>, String> {
    use std::io::Read;
    let mut head = Vec::with_capacity(132);
    let opened = std::fs::File::open(path).and_then(|f| f.take(132).read_to_end(&mut head));
    if opened.is_err() || !is_dicom(&head) {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    decode_grey_values(&bytes, max_pixels).map_err(|e| e.to_string())
}

/// The grey image of `values` through a window in modality units (centre, width).
pub fn window_values(values: &GreyValues, centre: f64, width: f64) -> ColorImage {
    let pixels = values
        .levels(centre, width)
        .into_iter()
        .map(egui::Color32::from_gray)
        .collect();
    ColorImage::new([values.width as usize, values.height as usize], pixels)
}

/// Applies a window (centre, width, on the 0-255 display scale) to a grey image.
pub fn window_level(src: &ColorImage, centre: f32, width: f32) -> ColorImage {
    let width = width.max(1.0);
    let lo = centre - width / 2.0;
    let lut: Vec<u8> = (0..=255u32)
        .map(|v| (((v as f32 - lo) / width) * 255.0).clamp(0.0, 255.0) as u8)
        .collect();
    let pixels = src
        .pixels
        .iter()
        .map(|c| {
            let v = lut[c.r() as usize];
            egui::Color32::from_gray(v)
        })
        .collect();
    ColorImage::new(src.size, pixels)
}
