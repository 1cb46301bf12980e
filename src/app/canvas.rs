//! The image canvas: zoom at the cursor, pan, fit and 1:1, window/level for grey images, the
//! overlay layers, and box editing with the mouse. Boxes are edited in image pixels, so an edit
//! means the same thing at every zoom; a drag shows a draft and becomes one store edit (one undo
//! step) when the button is released.

use std::sync::Arc;

use egui::{
    Align2, Color32, CursorIcon, FontId, Galley, PointerButton, Pos2, Rect, Sense, Stroke,
    StrokeKind, TextureHandle, Ui, Vec2,
};

use super::images::{window_level, window_values, Decoded, Slot};
use super::settings::Layers;
use crate::data::dicom::GreyValues;

pub const DETECTED_COLOUR: Color32 = Color32::from_rgb(40, 220, 60);
pub const CORRECTED_COLOUR: Color32 = Color32::from_rgb(255, 170, 0);
pub const PREDICTED_COLOUR: Color32 = Color32::from_rgb(230, 60, 230);

/// Screen distance (points) within which a handle or an edge is grabbed.
const GRAB: f32 = 7.0;
/// Smallest box a drag may leave, in image pixels.
const MIN_SIDE: f32 = 2.0;

/// A box in image pixels, `[x0, y0, x1, y1]`.
pub type PxBox = [f32; 4];

/// What the canvas shows for the current record.
pub struct CanvasInput<'a> {
    pub slot: &'a Slot,
    /// The image's size in pixels as the store records it.
    pub size: [u32; 2],
    /// Normalised boxes.
    pub detected: Option<[f64; 4]>,
    pub corrected: Option<[f64; 4]>,
    pub predicted: Option<([f64; 4], Option<f64>)>,
    pub layers: Layers,
    /// Which record and image this is, so the view refits on a change.
    pub identity: (i64, bool),
}

/// One of the eight resize handles: which edges it moves (x0, y0, x1, y1).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Handle([bool; 4]);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Drag {
    Draw {
        start: Pos2,
    },
    Move {
        grab: Pos2,
        orig: PxBox,
    },
    Resize {
        handle: Handle,
        orig: PxBox,
        grab: Pos2,
    },
    Pan,
    WindowLevel,
}

/// A window: on the 0-255 display scale of a grey image, or in a DICOM's modality units.
#[derive(Debug, Clone, Copy, PartialEq)]
enum WindowKey {
    Display(f32, f32),
    Values(f64, f64),
}

/// The window/level texture of the shown image: the window, the image's identity, the texture.
type Windowed = (WindowKey, (i64, bool), TextureHandle);

pub struct Canvas {
    /// Screen points per image pixel.
    zoom: f32,
    /// Where the image's top-left corner is, relative to the canvas's top-left corner.
    offset: Vec2,
    fit_next: bool,
    one_to_one_next: bool,
    identity: Option<(i64, bool)>,
    drag: Option<Drag>,
    /// The box being dragged, in image pixels.
    draft: Option<PxBox>,
    /// Window centre and width on the 0-255 display scale; `None`: the pixels as they are.
    pub window: Option<(f32, f32)>,
    /// For a greyscale DICOM: window centre and width in its modality units (Hounsfield units
    /// for CT), applied to the 16-bit values; set to the file's window when the image changes.
    pub raw_window: Option<(f64, f64)>,
    windowed: Option<Windowed>,
    /// The last canvas rectangle, for tests and screen-to-image mapping.
    pub rect: Rect,
}

impl Default for Canvas {
    fn default() -> Self {
        Canvas {
            zoom: 1.0,
            offset: Vec2::ZERO,
            fit_next: true,
            one_to_one_next: false,
            identity: None,
            drag: None,
            draft: None,
            window: None,
            raw_window: None,
            windowed: None,
            rect: Rect::NOTHING,
        }
    }
}

/// Window/level presets (centre, width) on the 0-255 display scale.
pub const WINDOW_PRESETS: [(&str, Option<(f32, f32)>); 4] = [
    ("Full", None),
    ("Soft", Some((128.0, 160.0))),
    ("Contrast", Some((128.0, 90.0))),
    ("Bright", Some((90.0, 180.0))),
];

/// Window presets (centre, width) in modality units for a greyscale DICOM: the file's own
/// window, the image's whole range, and for CT the usual Hounsfield windows.
pub fn value_presets(v: &GreyValues) -> Vec<(&'static str, (f64, f64))> {
    let (lo, hi) = (f64::from(v.range.0), f64::from(v.range.1));
    let mut presets = vec![
        ("File", v.default_window()),
        ("Range", ((lo + hi) / 2.0 + 0.5, (hi - lo).max(1.0) + 1.0)),
    ];
    if v.modality
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("CT"))
    {
        presets.extend([
            ("Soft tissue", (40.0, 400.0)),
            ("Lung", (-600.0, 1500.0)),
            ("Bone", (400.0, 1800.0)),
            ("Brain", (40.0, 80.0)),
        ]);
    }
    presets
}

impl Canvas {
    pub fn fit(&mut self) {
        self.fit_next = true;
    }
    pub fn one_to_one(&mut self) {
        self.one_to_one_next = true;
    }
    pub fn zoom(&self) -> f32 {
        self.zoom
    }

    /// The screen position of an image pixel coordinate.
    pub fn to_screen(&self, p: [f32; 2]) -> Pos2 {
        self.rect.min + self.offset + Vec2::new(p[0], p[1]) * self.zoom
    }
    /// The image pixel coordinate under a screen position.
    pub fn to_image(&self, p: Pos2) -> [f32; 2] {
        let v = (p - self.rect.min - self.offset) / self.zoom;
        [v.x, v.y]
    }

    /// Draws the canvas; returns the corrected box a finished drag set (normalised).
    pub fn ui(&mut self, ui: &mut Ui, input: &CanvasInput) -> Option<[f64; 4]> {
        let (rect, response) = ui.allocate_exact_size(ui.available_size(), Sense::click_and_drag());
        // No tooltip: one would cover the toolbar whenever the pointer rests on the image. The
        // same help is the line at the canvas's bottom while the pointer is over it.
        self.rect = rect;
        let painter = ui.painter_at(rect);
        painter.rect_filled(rect, 0.0, Color32::from_gray(20));
        let [w, h] = [input.size[0].max(1) as f32, input.size[1].max(1) as f32];

        if self.identity != Some(input.identity) {
            self.identity = Some(input.identity);
            self.raw_window = None;
            self.fit_next = true;
            self.drag = None;
            self.draft = None;
        }
        if self.fit_next {
            self.fit_next = false;
            self.zoom = (rect.width() / w).min(rect.height() / h) * 0.96;
            if !self.zoom.is_finite() || self.zoom <= 0.0 {
                self.zoom = 1.0;
            }
            self.offset = (rect.size() - Vec2::new(w, h) * self.zoom) / 2.0;
        }
        if self.one_to_one_next {
            self.one_to_one_next = false;
            let centre = self.to_image(rect.center());
            self.zoom = 1.0 / ui.ctx().pixels_per_point();
            self.offset = rect.size() / 2.0 - Vec2::new(centre[0], centre[1]) * self.zoom;
        }

        let values = match input.slot {
            Slot::Ready(d) => d.values.as_deref(),
            _ => None,
        };
        self.zoom_and_pan(ui, &response, values);

        // The image (or its tile while loading or failed).
        let image_rect =
            Rect::from_min_size(self.to_screen([0.0, 0.0]), Vec2::new(w, h) * self.zoom);
        let uv = Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0));
        match input.slot {
            Slot::Ready(decoded) => {
                let texture = self.texture_for(ui.ctx(), decoded, input.identity);
                painter.image(texture.id(), image_rect, uv, Color32::WHITE);
            }
            Slot::Loading => {
                painter.rect_filled(image_rect, 0.0, Color32::from_gray(40));
                painter.text(
                    rect.center(),
                    Align2::CENTER_CENTER,
                    "decoding…",
                    FontId::proportional(16.0),
                    Color32::GRAY,
                );
            }
            Slot::Failed(e) => {
                painter.rect_filled(image_rect, 0.0, Color32::from_rgb(70, 20, 20));
                painter.text(
                    rect.center(),
                    Align2::CENTER_CENTER,
                    format!("cannot show this image:\n{e}"),
                    FontId::proportional(15.0),
                    Color32::from_rgb(255, 160, 160),
                );
            }
        }

        let to_px = |b: [f64; 4]| -> PxBox {
            [
                b[0] as f32 * w,
                b[1] as f32 * h,
                b[2] as f32 * w,
                b[3] as f32 * h,
            ]
        };
        let editable = self
            .draft
            .or(input.corrected.map(to_px))
            .or(input.detected.map(to_px));

        // Overlays, bottom to top: detected, predicted, corrected (the one being edited). Their
        // labels never overprint: one that would is moved up a line.
        let mut labels = Vec::new();
        if input.layers.detected {
            if let Some(b) = input.detected {
                self.draw_box(
                    &painter,
                    to_px(b),
                    DETECTED_COLOUR,
                    "detected",
                    false,
                    &mut labels,
                );
            }
        }
        if input.layers.predicted {
            if let Some((b, score)) = input.predicted {
                let label = match score {
                    Some(s) => format!("predicted {s:.2}"),
                    None => "predicted".into(),
                };
                self.draw_box(
                    &painter,
                    to_px(b),
                    PREDICTED_COLOUR,
                    &label,
                    false,
                    &mut labels,
                );
            }
        }
        let shown_corrected = self.draft.or(input.corrected.map(to_px));
        if input.layers.corrected {
            if let Some(b) = shown_corrected {
                self.draw_box(
                    &painter,
                    b,
                    CORRECTED_COLOUR,
                    "corrected",
                    true,
                    &mut labels,
                );
            }
        }

        // Labels over every box's outline: a later box's side never crosses an earlier label.
        for (at, galley, colour) in labels {
            // A dark backing so a label stays readable over a bright image.
            painter.rect_filled(at.expand(1.0), 2.0, Color32::from_black_alpha(140));
            painter.galley(at.min, galley, colour);
        }

        let committed = self.edit(ui, &response, editable, [w, h]);
        if let Some(pos) = response.hover_pos() {
            let p = self.to_image(pos);
            let zoom = self.zoom * ui.ctx().pixels_per_point() * 100.0;
            let place = format!("x {:.0}  y {:.0}   zoom {zoom:.0}%", p[0], p[1]);
            readout(&painter, rect, &place);
        }
        committed.map(|b| {
            [
                (b[0] / w).clamp(0.0, 1.0) as f64,
                (b[1] / h).clamp(0.0, 1.0) as f64,
                (b[2] / w).clamp(0.0, 1.0) as f64,
                (b[3] / h).clamp(0.0, 1.0) as f64,
            ]
        })
    }

    fn texture_for<'a>(
        &'a mut self,
        ctx: &egui::Context,
        decoded: &'a Decoded,
        identity: (i64, bool),
    ) -> &'a TextureHandle {
        let window = match &decoded.values {
            Some(v) => {
                let file = v.default_window();
                let w = *self.raw_window.get_or_insert(file);
                // The file's window is what the decoder rendered already.
                (w != file).then_some(WindowKey::Values(w.0, w.1))
            }
            None => self
                .window
                .filter(|_| decoded.grey)
                .map(|(c, w)| WindowKey::Display(c, w)),
        };
        let Some(window) = window else {
            return &decoded.texture;
        };
        let stale = self
            .windowed
            .as_ref()
            .is_none_or(|(w, id, _)| *w != window || *id != identity);
        if stale {
            let image = match (window, &decoded.values) {
                (WindowKey::Values(c, w), Some(v)) => window_values(v, c, w),
                (WindowKey::Values(c, w), None) => {
                    window_level(&decoded.pixels, c as f32, w as f32)
                }
                (WindowKey::Display(c, w), _) => window_level(&decoded.pixels, c, w),
            };
            let texture = ctx.load_texture("windowed", image, egui::TextureOptions::LINEAR);
            self.windowed = Some((window, identity, texture));
        }
        match &self.windowed {
            Some((_, _, t)) => t,
            None => &decoded.texture,
        }
    }

    fn zoom_and_pan(&mut self, ui: &Ui, response: &egui::Response, values: Option<&GreyValues>) {
        if let Some(pos) = response.hover_pos() {
            let (scroll, zoom) = ui.input(|i| (i.smooth_scroll_delta.y, i.zoom_delta()));
            let factor = zoom * (scroll * 0.0015).exp();
            if (factor - 1.0).abs() > 1e-4 {
                let anchor = self.to_image(pos);
                self.zoom = (self.zoom * factor).clamp(0.02, 64.0);
                // Keep the pixel under the cursor where it is.
                self.offset = pos - self.rect.min - Vec2::new(anchor[0], anchor[1]) * self.zoom;
            }
        }
        let space = ui.input(|i| i.key_down(egui::Key::Space));
        if response.dragged_by(PointerButton::Middle)
            || (space && response.dragged_by(PointerButton::Primary))
        {
            self.offset += response.drag_delta();
            self.drag = Some(Drag::Pan);
        }
        if response.dragged_by(PointerButton::Secondary) {
            // Right drag: horizontal changes the width, vertical the centre (as in most viewers).
            let d = response.drag_delta();
            if let Some(v) = values {
                // In modality units: a 256-point drag spans the image's whole range.
                let (lo, hi) = (f64::from(v.range.0), f64::from(v.range.1));
                let step = (hi - lo).max(1.0) / 256.0;
                let (c, w) = self.raw_window.unwrap_or_else(|| v.default_window());
                let span = hi - lo + 1.0;
                self.raw_window = Some((
                    (c - f64::from(d.y) * step).clamp(lo - span, hi + span),
                    (w + f64::from(d.x) * step).clamp(1.0, 4.0 * span),
                ));
            } else {
                let (c, w) = self.window.unwrap_or((128.0, 256.0));
                self.window = Some(((c - d.y).clamp(0.0, 255.0), (w + d.x).clamp(2.0, 512.0)));
            }
            self.drag = Some(Drag::WindowLevel);
        }
    }

    /// Mouse editing of the box; returns the box a finished drag leaves (image pixels).
    fn edit(
        &mut self,
        ui: &Ui,
        response: &egui::Response,
        current: Option<PxBox>,
        size: [f32; 2],
    ) -> Option<PxBox> {
        let space = ui.input(|i| i.key_down(egui::Key::Space));
        if let Some(pos) = response.hover_pos() {
            if self.drag.is_none() && !space {
                match current.and_then(|b| self.hit(b, pos)) {
                    Some(Ok(handle)) => ui.ctx().set_cursor_icon(cursor_for(handle)),
                    Some(Err(())) => ui.ctx().set_cursor_icon(CursorIcon::Move),
                    None => ui.ctx().set_cursor_icon(CursorIcon::Crosshair),
                }
            }
        }
        if response.drag_started_by(PointerButton::Primary) && !space {
            // Where the button went down, not where the drag was recognised a few points later.
            let origin = ui.input(|i| i.pointer.press_origin());
            if let Some(pos) = origin.or(response.interact_pointer_pos()) {
                self.drag = Some(match current.and_then(|b| self.hit(b, pos)) {
                    Some(Ok(handle)) => Drag::Resize {
                        handle,
                        orig: current.unwrap_or_default(),
                        grab: pos,
                    },
                    Some(Err(())) => Drag::Move {
                        grab: pos,
                        orig: current.unwrap_or_default(),
                    },
                    None => Drag::Draw { start: pos },
                });
            }
        }
        // On the frame the button comes up, the box ends where it came up, even if the pointer
        // moved on within the same frame.
        let released_at = ui.input(|i| {
            i.events.iter().rev().find_map(|e| match e {
                egui::Event::PointerButton {
                    pos,
                    button: PointerButton::Primary,
                    pressed: false,
                    ..
                } => Some(*pos),
                _ => None,
            })
        });
        let pointer = released_at
            .or(response.interact_pointer_pos())
            .or(response.hover_pos());
        if let (Some(drag), Some(pos)) = (self.drag, pointer) {
            let clamp = |b: PxBox| clamp_box(b, size);
            match drag {
                Drag::Draw { start } => {
                    let a = self.to_image(start);
                    let b = self.to_image(pos);
                    self.draft = Some(clamp([
                        a[0].min(b[0]),
                        a[1].min(b[1]),
                        a[0].max(b[0]),
                        a[1].max(b[1]),
                    ]));
                }
                Drag::Move { grab, orig } => {
                    let d = (pos - grab) / self.zoom;
                    let (bw, bh) = (orig[2] - orig[0], orig[3] - orig[1]);
                    let x0 = (orig[0] + d.x).clamp(0.0, (size[0] - bw).max(0.0));
                    let y0 = (orig[1] + d.y).clamp(0.0, (size[1] - bh).max(0.0));
                    self.draft = Some([x0, y0, x0 + bw, y0 + bh]);
                }
                Drag::Resize { handle, orig, grab } => {
                    let d = (pos - grab) / self.zoom;
                    let mut b = orig;
                    for (i, moves) in handle.0.iter().enumerate() {
                        if *moves {
                            b[i] += if i % 2 == 0 { d.x } else { d.y };
                        }
                    }
                    // Dragging an edge past the opposite one flips the box instead of inverting it.
                    self.draft = Some(clamp([
                        b[0].min(b[2]),
                        b[1].min(b[3]),
                        b[0].max(b[2]),
                        b[1].max(b[3]),
                    ]));
                }
                Drag::Pan | Drag::WindowLevel => {}
            }
        }
        let released = ui.input(|i| !i.pointer.any_down());
        if self.drag.is_some() && (response.drag_stopped() || released) {
            self.drag = None;
            let draft = self.draft.take()?;
            let rounded = draft.map(f32::round);
            if rounded[2] - rounded[0] >= MIN_SIDE && rounded[3] - rounded[1] >= MIN_SIDE {
                return Some(rounded);
            }
        }
        None
    }

    /// A handle (Ok) or the inside (Err) of box `b` under screen position `p`.
    fn hit(&self, b: PxBox, p: Pos2) -> Option<Result<Handle, ()>> {
        let min = self.to_screen([b[0], b[1]]);
        let max = self.to_screen([b[2], b[3]]);
        let near = |a: f32, v: f32| (a - v).abs() <= GRAB;
        let inside_x = p.x >= min.x - GRAB && p.x <= max.x + GRAB;
        let inside_y = p.y >= min.y - GRAB && p.y <= max.y + GRAB;
        if !(inside_x && inside_y) {
            return None;
        }
        let left = near(p.x, min.x);
        let right = near(p.x, max.x) && !left;
        let top = near(p.y, min.y);
        let bottom = near(p.y, max.y) && !top;
        let mid_x = near(p.x, (min.x + max.x) / 2.0);
        let mid_y = near(p.y, (min.y + max.y) / 2.0);
        // Corners, then the edge midpoints: the eight handles.
        let handle = match (left, right, top, bottom) {
            (true, _, true, _) | (true, _, _, true) | (_, true, true, _) | (_, true, _, true) => {
                Some([left, top, right, bottom])
            }
            (true, _, false, false) | (_, true, false, false) if mid_y => {
                Some([left, false, right, false])
            }
            (false, false, true, _) | (false, false, _, true) if mid_x => {
                Some([false, top, false, bottom])
            }
            _ => None,
        };
        match handle {
            Some(h) => Some(Ok(Handle(h))),
            None if p.x > min.x && p.x < max.x && p.y > min.y && p.y < max.y => Some(Err(())),
            None => None,
        }
    }

    /// Draws a box and its label above its top-left corner, or higher where that would overlap
    /// a label already placed (`labels`, which gets this one; the caller paints them last).
    fn draw_box(
        &self,
        painter: &egui::Painter,
        b: PxBox,
        colour: Color32,
        label: &str,
        handles: bool,
        labels: &mut Vec<(Rect, Arc<Galley>, Color32)>,
    ) {
        let r = Rect::from_min_max(self.to_screen([b[0], b[1]]), self.to_screen([b[2], b[3]]));
        painter.rect_stroke(r, 0.0, Stroke::new(2.0, colour), StrokeKind::Outside);
        let galley = painter.layout_no_wrap(label.to_string(), FontId::proportional(13.0), colour);
        let size = galley.size();
        let mut bottom_left = r.left_top() + Vec2::new(0.0, -3.0);
        for _ in 0..labels.len() {
            let at = Rect::from_min_size(bottom_left - Vec2::new(0.0, size.y), size);
            match labels
                .iter()
                .map(|l| l.0)
                .find(|l| l.expand(1.0).intersects(at))
            {
                Some(l) => bottom_left.y = l.top() - 1.0,
                None => break,
            }
        }
        let at = Rect::from_min_size(bottom_left - Vec2::new(0.0, size.y), size);
        labels.push((at, galley, colour));
        if handles {
            for p in handle_points(r) {
                painter.rect_filled(Rect::from_center_size(p, Vec2::splat(7.0)), 1.0, colour);
            }
        }
    }
}

/// The pointer's place and the canvas's mouse help on a dark backing at the canvas's bottom
/// (boxes drawn under it stay readable); the help is left out where the line would be cut off.
fn readout(painter: &egui::Painter, rect: Rect, place: &str) {
    const HELP: &str =
        "   drag: box · wheel: zoom · middle or Space+drag: pan · right drag: window/level";
    let font = FontId::monospace(12.0);
    let mut galley =
        painter.layout_no_wrap(format!("{place}{HELP}"), font.clone(), Color32::LIGHT_GRAY);
    if galley.size().x > rect.width() - 12.0 {
        galley = painter.layout_no_wrap(place.to_string(), font, Color32::LIGHT_GRAY);
    }
    let at = rect.left_bottom() + Vec2::new(6.0, -6.0 - galley.size().y);
    let back = Rect::from_min_size(at, galley.size()).expand(2.0);
    painter.rect_filled(back, 2.0, Color32::from_black_alpha(160));
    painter.galley(at, galley, Color32::LIGHT_GRAY);
}

/// The eight handle positions of a screen rectangle.
pub fn handle_points(r: Rect) -> [Pos2; 8] {
    let c = r.center();
    [
        r.left_top(),
        Pos2::new(c.x, r.top()),
        r.right_top(),
        Pos2::new(r.right(), c.y),
        r.right_bottom(),
        Pos2::new(c.x, r.bottom()),
        r.left_bottom(),
        Pos2::new(r.left(), c.y),
    ]
}

fn cursor_for(h: Handle) -> CursorIcon {
    match h.0 {
        [true, true, _, _] | [_, _, true, true] => CursorIcon::ResizeNwSe,
        [true, _, _, true] | [_, true, true, _] => CursorIcon::ResizeNeSw,
        [true, false, false, false] | [false, false, true, false] => CursorIcon::ResizeHorizontal,
        _ => CursorIcon::ResizeVertical,
    }
}

/// `b` kept inside the image.
pub fn clamp_box(b: PxBox, size: [f32; 2]) -> PxBox {
    [
        b[0].clamp(0.0, size[0]),
        b[1].clamp(0.0, size[1]),
        b[2].clamp(0.0, size[0]),
        b[3].clamp(0.0, size[1]),
    ]
}
