//! Image paths in an export that the target tool can open.
//!
//! The seed's `cv2.imread` and LLaMA-Factory's PIL cannot read DICOM, so a record whose image
//! is a DICOM file is exported as its 8-bit rendering (the same one `prepare` and `detect-roi`
//! use), written as PNG into a folder beside the export. With [`ImageChoice::MarkerFree`] every
//! record that has a marker-free copy in the project's cache is exported as that copy (hard
//! linked where the file system allows, else copied). Every path is written relative to the
//! media folder that the user hands the tool (LLaMA-Factory's `media_dir`, the seed's image
//! root), with `..` where the file lies outside it.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};

use crate::data::dicom::is_dicom;
use crate::data::files::{partial_path, save_png_atomic};
use crate::data::image_io::{decode_rgb8, LoadOptions};
use crate::data::store::{Project, StoredRecord};

/// Which pixels an export points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ImageChoice {
    /// The input image as it is (a DICOM file: its rendering, as PNG).
    #[default]
    Original,
    /// The project's marker-free copy (the green outline removed, what `roiscope train` sees)
    /// where the record has one, else the input image.
    MarkerFree,
}

/// What the export did to images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaSummary {
    /// DICOM images rendered to PNG.
    pub rendered: usize,
    /// Marker-free copies linked or copied from the cache.
    pub copied: usize,
    /// Input images that could not be opened (exported by their path all the same, so the
    /// tool names them), and the first of them with the reason.
    pub unreadable: usize,
    pub first_unreadable: Option<String>,
}

/// Turns records' images into paths relative to the media folder.
pub struct Media {
    data_root: PathBuf,
    project_dir: PathBuf,
    media_dir: PathBuf,
    /// Where renderings and copies go; `None` when the export goes to standard output.
    folder: Option<PathBuf>,
    choice: ImageChoice,
    /// Input image (relative to the data root) -> path written, so a shared image is handled
    /// once.
    done: HashMap<String, Option<String>>,
    pub summary: MediaSummary,
}

impl Media {
    /// `folder` receives renderings and copies; `media_dir` is what paths are relative to.
    pub fn new(
        project: &Project,
        media_dir: &Path,
        folder: Option<PathBuf>,
        choice: ImageChoice,
    ) -> anyhow::Result<Media> {
        // The data root (canonical already) may be gone by now: its images are then exported
        // by their paths, and counted as unreadable.
        let media_dir = if media_dir == project.data_root() {
            media_dir.to_path_buf()
        } else {
            media_dir.canonicalize().with_context(|| {
                format!(
                    "media folder {} cannot be opened (it must exist)",
                    media_dir.display()
                )
            })?
        };
        if media_dir != project.data_root() && !media_dir.is_dir() {
            bail!("media folder {} is not a folder", media_dir.display());
        }
        let project_dir = project
            .dir()
            .canonicalize()
            .with_context(|| format!("cannot open {}", project.dir().display()))?;
        Ok(Media {
            data_root: project.data_root().to_path_buf(),
            project_dir,
            media_dir,
            folder,
            choice,
            done: HashMap::new(),
            summary: MediaSummary::default(),
        })
    }

    pub fn media_dir(&self) -> &Path {
        &self.media_dir
    }

    /// The image path to write for `r`, relative to the media folder. `None` when the input
    /// image is exported as it is and lies where the record says relative to the media folder
    /// (the caller may then keep the record's own `images` value).
    pub fn image_for(&mut self, r: &StoredRecord) -> anyhow::Result<Option<String>> {
        if let Some(done) = self.done.get(&r.image) {
            return Ok(done.clone());
        }
        let written = self.resolve(r)?;
        self.done.insert(r.image.clone(), written.clone());
        Ok(written)
    }

    fn resolve(&mut self, r: &StoredRecord) -> anyhow::Result<Option<String>> {
        let original = self.data_root.join(&r.image);
        if self.choice == ImageChoice::MarkerFree {
            if let Some(cache) = &r.cache_image {
                let target = self.target(r)?;
                link_or_copy(&self.project_dir.join(cache), &target).with_context(|| {
                    format!("record {}: cannot export its marker-free image", r.id)
                })?;
                self.summary.copied += 1;
                return relative_path(&self.media_dir, &target).map(Some);
            }
        }
        let dicom = match is_dicom_file(&original) {
            Ok(d) => d,
            Err(e) => {
                self.summary.unreadable += 1;
                if self.summary.first_unreadable.is_none() {
                    self.summary.first_unreadable = Some(format!("record {}: {e:#}", r.id));
                }
                false
            }
        };
        if dicom {
            let target = self.target(r)?;
            let img = decode_rgb8(
                &std::fs::read(&original)
                    .with_context(|| format!("cannot read {}", original.display()))?,
                LoadOptions::default(),
            )
            .with_context(|| format!("record {}: cannot render {}", r.id, original.display()))?;
            save_png_atomic(&img, &target)?;
            self.summary.rendered += 1;
            return relative_path(&self.media_dir, &target).map(Some);
        }
        if self.media_dir == self.data_root {
            return Ok(None);
        }
        relative_path(&self.media_dir, &original).map(Some)
    }

    /// Where the rendering or copy of `r`'s image goes: the image's own path below the folder,
    /// with `.png` added.
    fn target(&self, r: &StoredRecord) -> anyhow::Result<PathBuf> {
        let Some(folder) = &self.folder else {
            bail!(
                "record {}'s image {} must be written as PNG beside the export (DICOM or a \
                 marker-free copy); give --out a file instead of standard output",
                r.id,
                r.image
            );
        };
        Ok(folder.join(format!("{}.png", r.image)))
    }
}

/// Whether the file at `path` starts like a DICOM file (reads 132 bytes at most).
fn is_dicom_file(path: &Path) -> anyhow::Result<bool> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut head = Vec::with_capacity(132);
    file.take(132)
        .read_to_end(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(is_dicom(&head))
}

/// Hard-links `from` to `to` (replacing it), else copies it; through a temporary name either
/// way, so `to` is never half written.
fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = partial_path(to);
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(from, &tmp).is_err() {
        std::fs::copy(from, &tmp)
            .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
    }
    std::fs::rename(&tmp, to).with_context(|| format!("cannot write {}", to.display()))?;
    Ok(())
}

/// `target` relative to the folder `base` (both absolute), `/`-separated, with `..` where
/// `target` is not below `base`.
pub fn relative_path(base: &Path, target: &Path) -> anyhow::Result<String> {
    let parts = |p: &Path| -> Vec<String> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    };
    for p in [base, target] {
        if p.to_str().is_none() {
            bail!("{} is not UTF-8; JSON cannot name it", p.display());
        }
    }
    let (b, t) = (parts(base), parts(target));
    let common = b.iter().zip(&t).take_while(|(x, y)| x == y).count();
    let mut out: Vec<&str> = vec![".."; b.len() - common];
    out.extend(t[common..].iter().map(String::as_str));
    Ok(out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_out_of_the_media_folder_where_needed() {
        let rel = |b: &str, t: &str| relative_path(Path::new(b), Path::new(t)).unwrap();
        assert_eq!(rel("/data", "/data/a/b.png"), "a/b.png");
        assert_eq!(rel("/data/x", "/data/a/b.png"), "../a/b.png");
        assert_eq!(rel("/out/lf", "/data/a.png"), "../../data/a.png");
        assert_eq!(rel("/", "/data/a.png"), "data/a.png");
    }
}
