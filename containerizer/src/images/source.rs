//! Reading the files of an image archive without extracting it: a directory (an OCI image
//! layout) or an uncompressed tar of one (`docker save`, `tar -cf` of a layout).
//!
//! A tar is indexed once (name → byte range inside the tar); files are then read in place
//! with `pread`. Nothing from the outer archive is ever written to disk, so its own paths
//! (`../x`, absolute names) cannot do harm: they are only looked up, never created.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{ContainerizerError, IoContext};

/// JSON documents (index, manifests, configs) are read into memory; none is this large.
pub(crate) const MAX_JSON_BYTES: u64 = 8 << 20;

/// The files of one archive.
pub(crate) enum Source {
    Dir(PathBuf),
    Tar {
        file: File,
        shown: String,
        files: HashMap<String, (u64, u64)>,
        symlinks: HashMap<String, String>,
    },
}

/// `a/./b/` → `a/b`; `None` for names with `..`, or absolute ones (never looked up).
pub(crate) fn normalize(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

impl Source {
    /// Opens `path`: a directory is read as it is; a file must be an uncompressed tar.
    /// `shown` names the archive in errors.
    pub(crate) fn open(path: &Path, shown: &str) -> Result<Source, ContainerizerError> {
        let meta = std::fs::metadata(path).ctx(|| format!("opening {}", path.display()))?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let shown = shown.to_string();
        let file = File::open(path).ctx(|| format!("opening {shown}"))?;
        let mut files = HashMap::new();
        let mut symlinks = HashMap::new();
        let mut archive = tar::Archive::new(&file);
        let entries = archive
            .entries_with_seek()
            .map_err(|e| invalid(format!("{shown} is not a tar archive: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| invalid(format!("{shown}: corrupt tar entry: {e}")))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = normalize(&name) else {
                continue;
            };
            let kind = entry.header().entry_type();
            if kind.is_file() {
                files.insert(name, (entry.raw_file_position(), entry.size()));
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                // A hard link names its target from the archive root, a symlink from
                // its own directory; store both as archive-root paths.
                let resolved = if kind.is_hard_link() {
                    normalize(&target)
                } else {
                    let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                    resolve_relative(dir, &target)
                };
                if let Some(t) = resolved {
                    symlinks.insert(name, t);
                }
            }
        }
        if files.is_empty() {
            return Err(invalid(format!(
                "{shown} holds no files: not an image archive"
            )));
        }
        Ok(Source::Tar {
            file,
            shown,
            files,
            symlinks,
        })
    }

    /// How the archive is named in errors.
    pub(crate) fn shown(&self) -> String {
        match self {
            Source::Dir(p) => p.display().to_string(),
            Source::Tar { shown, .. } => shown.clone(),
        }
    }

    /// Where a name points inside a tar after following the archive's own links.
    fn tar_range(&self, name: &str) -> Option<(u64, u64)> {
        let Source::Tar {
            files, symlinks, ..
        } = self
        else {
            return None;
        };
        let mut name = normalize(name)?;
        // docker save links duplicate layers (`<id>/layer.tar -> ../<other>/layer.tar`).
        for _ in 0..16 {
            if let Some(r) = files.get(&name) {
                return Some(*r);
            }
            name = symlinks.get(&name)?.clone();
        }
        None
    }

    fn dir_path(root: &Path, name: &str) -> Option<PathBuf> {
        let rel = normalize(name)?;
        let mut path = root.to_path_buf();
        for part in rel.split('/') {
            path.push(part);
            // The layout's own files only: a symlink inside it could point anywhere.
            let meta = std::fs::symlink_metadata(&path).ok()?;
            if meta.file_type().is_symlink() {
                return None;
            }
        }
        Some(path)
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir(root) => Self::dir_path(root, name).is_some_and(|p| p.is_file()),
            Source::Tar { .. } => self.tar_range(name).is_some(),
        }
    }

    /// A reader over the file's bytes, and its size.
    pub(crate) fn open_file(
        &self,
        name: &str,
    ) -> Result<(Box<dyn Read + '_>, u64), ContainerizerError> {
        let missing = || {
            invalid(format!(
                "{}: the archive has no file '{name}' (or it is a symlink)",
                self.shown()
            ))
        };
        match self {
            Source::Dir(root) => {
                let path = Self::dir_path(root, name).ok_or_else(missing)?;
                let file = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
                let size = file
                    .metadata()
                    .ctx(|| format!("reading {}", path.display()))?
                    .len();
                Ok((Box::new(file), size))
            }
            Source::Tar { file, .. } => {
                let (offset, size) = self.tar_range(name).ok_or_else(missing)?;
                Ok((
                    Box::new(RangeReader {
                        file,
                        pos: offset,
                        end: offset + size,
                    }),
                    size,
                ))
            }
        }
    }

    /// A small file read whole (JSON documents), refusing oversized ones.
    pub(crate) fn read_small(&self, name: &str) -> Result<Vec<u8>, ContainerizerError> {
        let (mut reader, size) = self.open_file(name)?;
        if size > MAX_JSON_BYTES {
            return Err(invalid(format!(
                "{}: '{name}' is {size} bytes, more than the {MAX_JSON_BYTES} allowed for \
                 a manifest or config",
                self.shown()
            )));
        }
        let mut buf = Vec::with_capacity(size as usize);
        reader
            .read_to_end(&mut buf)
            .ctx(|| format!("reading '{name}' from {}", self.shown()))?;
        Ok(buf)
    }
}

/// `target` relative to `dir`, inside the archive root (`None` if it climbs out).
fn resolve_relative(dir: &Path, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<String> = dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => p.to_str().map(str::to_string),
            _ => None,
        })
        .collect();
    for c in Path::new(target).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// A byte range of the tar, read with `pread` so readers need no `&mut File`.
struct RangeReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(left as usize);
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a file",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

pub(crate) fn invalid(msg: String) -> ContainerizerError {
    ContainerizerError::InvalidImage(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_links_stay_inside() {
        assert_eq!(normalize("./a//b/").as_deref(), Some("a/b"));
        assert_eq!(normalize("../a"), None);
        assert_eq!(normalize("/a"), None);
        assert_eq!(
            resolve_relative(Path::new("x"), "../y/layer.tar").as_deref(),
            Some("y/layer.tar")
        );
        assert_eq!(resolve_relative(Path::new("x"), "../../etc/passwd"), None);
        assert_eq!(resolve_relative(Path::new("x"), "/etc/passwd"), None);
    }
}
