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

/// Makes a folder's entries (a file created or renamed in it) survive a power loss.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync the folder {}", dir.display()))
}

/// Writes `path` durably: `write` fills a temporary file in the same folder (named after the
/// target and this process, so two writers never share it), which is flushed to disk (fsync) and
/// then renamed over the target, and the folder is synced. A crash, `kill -9` or a full disk
/// leaves either the old file or the new one, never half of one; the temporary file of a failed
/// write is removed, and every error names the path that failed.
pub fn write_durable<T>(
    path: &Path,
    write: impl FnOnce(&mut dyn std::io::Write) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    use anyhow::Context;
    use std::io::Write;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.partial", std::process::id()));
    let tmp = path.with_file_name(name);
    let result = (|| -> anyhow::Result<T> {
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let value = write(&mut w).with_context(|| format!("cannot write {}", tmp.display()))?;
        w.flush()
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot write {} (fsync)", tmp.display()))?;
        drop(file);
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(value)
    })();
    match result {
        Ok(value) => {
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
            Ok(value)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes a small file durably (see [`write_durable`]).
pub fn write_durable_bytes(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_durable(path, |w| Ok(w.write_all(bytes)?))
}

/// Checks that `out` may be replaced by an export: a regular file or a new name, never a
/// folder, a device, a pipe or a socket, and never one of the project's own files (its
/// database and journals, image cache, runs, lock and prepare report).
pub fn check_export_target(out: &Path, project_dir: &Path) -> anyhow::Result<()> {
    use anyhow::bail;
    if let Ok(meta) = std::fs::metadata(out) {
        let kind = meta.file_type();
        if kind.is_dir() {
            bail!(
                "{} is a folder; give a file name for the export",
                out.display()
            );
        }
        if !kind.is_file() {
            bail!(
                "{} is not a regular file (a device, pipe or socket); an export only writes \
                 regular files, give another path",
                out.display()
            );
        }
    }
    // Where the export would really land: symbolic links and `..` resolved.
    let resolved = match std::fs::canonicalize(out) {
        Ok(p) => p,
        Err(_) => {
            let parent = match out.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let parent = std::fs::canonicalize(parent).map_err(|e| {
                anyhow::anyhow!(
                    "cannot write {}: its folder {}: {e}",
                    out.display(),
                    parent.display()
                )
            })?;
            parent.join(out.file_name().unwrap_or_default())
        }
    };
    let project = std::fs::canonicalize(project_dir).unwrap_or_else(|_| project_dir.into());
    if let Ok(inside) = resolved.strip_prefix(&project) {
        let first = inside
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let own = first.starts_with(crate::data::store::DB_FILE)
            || [
                crate::data::store::CACHE_DIR,
                "runs",
                "prepare.lock",
                "prepare-report.json",
            ]
            .contains(&first.as_str());
        if own || inside.as_os_str().is_empty() {
            bail!(
                "{} is one of the project's own files; an export cannot replace it, give \
                 another path",
                out.display()
            );
        }
    }
    Ok(())
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
