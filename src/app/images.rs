//! Images for the canvas and the browser's thumbnails, decoded off the UI thread and kept in a
//! bounded cache of textures. A file that fails to decode becomes an error entry (the UI draws
//! an error tile) instead of stopping anything.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use egui::{ColorImage, TextureHandle, TextureOptions};

use crate::data::image_io::{load_rgb8, LoadOptions};

/// Longest side of a thumbnail, in pixels.
pub const THUMB_SIZE: u32 = 64;
/// Full images kept as textures (the current one and its neighbours).
const MAX_FULL: usize = 12;
/// Thumbnails kept as textures.
const MAX_THUMBS: usize = 400;

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
}

pub enum Slot {
    Loading,
    Ready(Decoded),
    Failed(String),
}

type Job = (ImageKey, egui::Context);
type Done = (ImageKey, Result<(ColorImage, bool), String>);

pub struct ImageCache {
    jobs: Arc<Mutex<VecDeque<Job>>>,
    wake: Sender<()>,
    done: Receiver<Done>,
    slots: HashMap<ImageKey, Slot>,
    /// Use order, oldest first, per kind, for eviction.
    order: VecDeque<ImageKey>,
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
            slots: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Takes finished decodes into textures; call once per frame.
    pub fn poll(&mut self, ctx: &egui::Context) {
        while let Ok((key, result)) = self.done.try_recv() {
            let slot = match result {
                Ok((image, grey)) => {
                    let name = key.path.display().to_string();
                    let pixels = Arc::new(image);
                    let texture = ctx.load_texture(name, pixels.clone(), TextureOptions::LINEAR);
                    Slot::Ready(Decoded {
                        pixels,
                        grey,
                        texture,
                    })
                }
                Err(e) => Slot::Failed(e),
            };
            self.slots.insert(key, slot);
        }
        self.evict();
    }

    /// The slot for `key`, queueing a decode the first time. The newest request is decoded
    /// first (the list scrolls, the user flips records: what is on screen now matters most).
    pub fn get(&mut self, ctx: &egui::Context, key: &ImageKey) -> &Slot {
        if !self.slots.contains_key(key) {
            if let Ok(mut q) = self.jobs.lock() {
                q.push_back((key.clone(), ctx.clone()));
            }
            let _ = self.wake.send(());
            self.slots.insert(key.clone(), Slot::Loading);
        }
        if let Some(i) = self.order.iter().position(|k| k == key) {
            self.order.remove(i);
        }
        self.order.push_back(key.clone());
        &self.slots[key]
    }

    /// Whether nothing is waiting to be decoded.
    pub fn idle(&self) -> bool {
        !self.slots.values().any(|s| matches!(s, Slot::Loading))
    }

    fn evict(&mut self) {
        for thumb in [false, true] {
            let max = if thumb { MAX_THUMBS } else { MAX_FULL };
            let mut count = self.order.iter().filter(|k| k.thumb == thumb).count();
            while count > max {
                let Some(i) = self.order.iter().position(|k| k.thumb == thumb) else {
                    break;
                };
                if let Some(k) = self.order.remove(i) {
                    // A slot still loading is kept: its result would only be decoded again.
                    if !matches!(self.slots.get(&k), Some(Slot::Loading)) {
                        self.slots.remove(&k);
                    }
                }
                count -= 1;
            }
        }
    }
}

fn decode(key: &ImageKey) -> Result<(ColorImage, bool), String> {
    let img = load_rgb8(&key.path, LoadOptions::default()).map_err(|e| e.to_string())?;
    let img = if key.thumb {
        // Longest side THUMB_SIZE, aspect ratio kept.
        let scale = THUMB_SIZE as f32 / img.width().max(img.height()).max(1) as f32;
        let w = ((img.width() as f32 * scale).round() as u32).max(1);
        let h = ((img.height() as f32 * scale).round() as u32).max(1);
        image::imageops::thumbnail(&img, w, h)
    } else {
        img
    };
    let grey = img.pixels().all(|p| p[0] == p[1] && p[1] == p[2]);
    let size = [img.width() as usize, img.height() as usize];
    Ok((ColorImage::from_rgb(size, img.as_raw()), grey))
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
