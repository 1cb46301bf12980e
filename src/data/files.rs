//! Turning command-line paths into the list of image files to process.

use std::path::{Path, PathBuf};

use super::image_io::IMAGE_EXTENSIONS;

/// One input: the path to open, and the path as the user should see it.
#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: PathBuf,
    /// Where it sits below the folder it was found in (the file name for a path given
    /// directly); used to mirror outputs into another folder.
    pub relative: PathBuf,
}

/// A path that could not be listed (a missing file, an unreadable folder).
#[derive(Debug, Clone)]
pub struct ListError {
    pub path: PathBuf,
    pub message: String,
}

/// Expands files and folders (recursively, entries sorted by name, image extensions only) in
/// the order given. Files named directly are kept whatever their extension, so a wrong file
/// gets an error line instead of vanishing.
pub fn expand_inputs(paths: &[PathBuf]) -> Vec<Result<InputFile, ListError>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, p, &mut out);
        } else {
            let relative = p
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| p.clone());
            out.push(Ok(InputFile {
                path: p.clone(),
                relative,
            }));
        }
    }
    out
}

/// What a path is when it is not a regular file (after symbolic links): reading a FIFO or a
/// device would block or never end, so such entries are skipped with this as the reason.
pub fn not_regular(meta: &std::fs::Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a folder");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if t.is_socket() {
            return Some("a socket");
        }
        if t.is_char_device() || t.is_block_device() {
            return Some("a device");
        }
    }
    Some("not a regular file")
}

fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<Result<InputFile, ListError>>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            out.push(Err(ListError {
                path: dir.to_path_buf(),
                message: format!("cannot list folder: {e}"),
            }));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            walk(root, &p, out);
        } else if has_image_extension(&p) {
            if let Some(kind) = std::fs::metadata(&p).ok().as_ref().and_then(not_regular) {
                out.push(Err(ListError {
                    path: p,
                    message: format!("{kind}, not a regular file: skipped"),
                }));
                continue;
            }
            let relative = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
            out.push(Ok(InputFile { path: p, relative }));
        }
    }
}

/// Writes a PNG through a temporary file and a rename, so an interrupted run never leaves half
/// a file under the final name. Fast compression: these are working copies, written by the
/// thousand.
pub fn save_png_atomic(img: &image::RgbImage, target: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;

    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = partial_path(target);
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut out = std::io::BufWriter::new(file);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    use std::io::Write;
    out.flush()
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(out);
    std::fs::rename(&tmp, target).with_context(|| format!("cannot write {}", target.display()))?;
    Ok(())
}

/// Where a file is written before it is renamed to `path`: the same name plus `.partial`.
pub fn partial_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Writes a small file through a temporary name and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    let tmp = partial_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads a JSON file; the error says which file and whether it was unreadable or malformed.
pub fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}
