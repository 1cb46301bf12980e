//! Chinese text: annotators write fields in Chinese, and egui's built-in fonts have no CJK
//! glyphs. The first CJK font found among the usual system locations is added as a fallback
//! after the default fonts (nothing is bundled; without one, CJK shows as boxes).

use std::path::Path;
use std::sync::Arc;

use egui::{FontData, FontDefinitions, FontFamily};

/// Where Debian/Ubuntu/Fedora packages put CJK fonts (fonts-noto-cjk, fonts-wqy-microhei,
/// fonts-wqy-zenhei, fonts-droid-fallback, google-noto-sans-cjk).
const CANDIDATES: &[&str] = &[
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
];

/// The CJK font file this machine has, if any (`$ROISCOPE_CJK_FONT` first).
pub fn find_cjk_font() -> Option<std::path::PathBuf> {
    std::env::var_os("ROISCOPE_CJK_FONT")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(CANDIDATES.iter().map(|p| Path::new(p).to_path_buf()))
        .find(|p| p.is_file())
}

/// Adds the CJK fallback to the context's fonts; the path used, if one was found.
pub fn install_cjk_fallback(ctx: &egui::Context) -> Option<std::path::PathBuf> {
    let path = find_cjk_font()?;
    let bytes = std::fs::read(&path).ok()?;
    let mut fonts = FontDefinitions::default();
    fonts
        .font_data
        .insert("cjk".into(), Arc::new(FontData::from_owned(bytes)));
    for family in [FontFamily::Proportional, FontFamily::Monospace] {
        fonts.families.entry(family).or_default().push("cjk".into());
    }
    ctx.set_fonts(fonts);
    Some(path)
}
