//! The agent's local image store: images imported from archives, no registry.
//!
//! ```text
//! <work_dir>/images/            mode 0700: image files (set-uid binaries included) are
//!                               not reachable by other users of the host
//!   index.json                  every image: digest, names, config, sizes (written
//!                               atomically and fsync'd; the only thing that makes an
//!                               image visible)
//!   rootfs/<digest hex>/        one immutable root filesystem per image, all its layers
//!                               applied in order; never written after the import
//!   staging/<uuid>/             imports under way; removed when the store opens
//!   uploads/<uuid>.tar          archives arriving over the API; removed likewise
//! ```
//!
//! An import ([`ImageStore::import`]) reads the archive in place (see [`source`]), reads
//! and verifies its manifests and configs ([`manifest`]), hashes every layer blob against
//! its digest before unpacking anything, unpacks the layers into a staging directory
//! ([`unpack`], which refuses anything that would leave it), checks each layer's
//! uncompressed digest against the config's `diff_ids`, syncs, renames the directory into
//! `rootfs/` and only then adds the image to the index. A crash or an error at any step
//! leaves the index as it was; leftovers are removed when the store next opens.
//!
//! Containers use an image through [`ImageStore::prepare_rootfs`] (an overlay whose lower
//! layer is the image's root filesystem, falling back to a copy) and
//! [`cleanup_rootfs`]; the task's user comes from [`lookup_user`].

mod manifest;
mod rootfs;
mod source;
mod unpack;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{ContainerizerError, IoContext};
use crate::fsutil::{self, create_dir_all_durable};

pub use manifest::{ArchiveFormat, Digest, ImageConfig};
pub use rootfs::{
    cleanup_rootfs, lookup_user, mount_point_beneath, PreparedRootfs, ResolvedUser, RootfsMode,
};

/// Size limits of imports (agent flags `--image-max-archive-mb`,
/// `--image-max-unpacked-mb`).
#[derive(Clone, Copy, Debug)]
pub struct ImportLimits {
    /// Largest archive accepted over the API, in bytes.
    pub max_archive_bytes: u64,
    /// Largest total of file sizes one image may unpack to, in bytes.
    pub max_unpacked_bytes: u64,
}

impl Default for ImportLimits {
    fn default() -> Self {
        ImportLimits {
            max_archive_bytes: 4 << 30,
            max_unpacked_bytes: 16 << 30,
        }
    }
}

/// One image of the store, as the index records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The manifest digest (for classic `docker save` archives, which carry no manifest:
    /// the config digest, Docker's image id).
    pub digest: Digest,
    pub config_digest: Digest,
    /// `repository:tag` names, unique across the store.
    pub names: Vec<String>,
    pub format: ArchiveFormat,
    pub layers: u32,
    /// Total size of the unpacked files, in bytes.
    pub size_bytes: u64,
    /// Unix time of the import, in milliseconds (an integer: JSON keeps it exactly).
    pub imported_at_ms: u64,
    pub config: ImageConfig,
}

#[derive(Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<Digest, ImageRecord>,
}

/// The image store under `<work_dir>/images`. Blocking: call it from a blocking thread.
pub struct ImageStore {
    dir: PathBuf,
    limits: ImportLimits,
    /// Held while the index changes; imports unpack without it, in parallel.
    index: Mutex<Index>,
}

/// `name` → `name:latest`; refuses empty names, whitespace and other odd characters.
pub fn normalize_name(name: &str) -> Result<String, ContainerizerError> {
    let name = name.trim();
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with("sha256:")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b));
    if !ok {
        return Err(ContainerizerError::InvalidImage(format!(
            "'{name}' is not a valid image name (letters, digits and . _ - / : @, at most \
             255 characters, not a digest)"
        )));
    }
    let name = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || last.contains('@') {
        Ok(name.to_string())
    } else {
        Ok(format!("{name}:latest"))
    }
}

impl ImageStore {
    /// Opens (creating) the store in `dir`, removing leftovers of interrupted imports.
    pub fn open(
        dir: impl Into<PathBuf>,
        limits: ImportLimits,
    ) -> Result<ImageStore, ContainerizerError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = dir.into();
        create_dir_all_durable(&dir).ctx(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .ctx(|| format!("restricting {}", dir.display()))?;
        for sub in ["staging", "uploads"] {
            let p = dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).ctx(|| format!("removing {}", p.display()))?;
            }
        }
        for sub in ["rootfs", "staging", "uploads"] {
            let p = dir.join(sub);
            create_dir_all_durable(&p).ctx(|| format!("creating {}", p.display()))?;
        }
        let index: Index = fsutil::read_json(&dir.join("index.json"))
            .ctx(|| format!("reading {}", dir.join("index.json").display()))?
            .unwrap_or_default();
        // A root filesystem renamed into place just before a crash, before the index
        // named it: nobody can use it, remove it.
        let rootfs_dir = dir.join("rootfs");
        for entry in
            std::fs::read_dir(&rootfs_dir).ctx(|| format!("listing {}", rootfs_dir.display()))?
        {
            let entry = entry.ctx(|| format!("listing {}", rootfs_dir.display()))?;
            let known = entry
                .file_name()
                .to_str()
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
                .is_some_and(|d| index.images.contains_key(&d));
            if !known {
                tracing::info!(path = %entry.path().display(), "removing an image root filesystem no index entry names");
                std::fs::remove_dir_all(entry.path())
                    .ctx(|| format!("removing {}", entry.path().display()))?;
            }
        }
        Ok(ImageStore {
            dir,
            limits,
            index: Mutex::new(index),
        })
    }

    pub fn limits(&self) -> ImportLimits {
        self.limits
    }

    /// A fresh path for an archive arriving over the API (removed by the caller, or when
    /// the store next opens).
    pub fn upload_path(&self) -> PathBuf {
        self.dir
            .join("uploads")
            .join(format!("{}.tar", uuid::Uuid::new_v4()))
    }

    /// The immutable root filesystem of an image (the overlay's lower layer).
    pub fn rootfs_dir(&self, digest: &Digest) -> PathBuf {
        self.dir.join("rootfs").join(digest.hex())
    }

    /// Every image, by digest.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.index
            .lock()
            .unwrap()
            .images
            .values()
            .cloned()
            .collect()
    }

    /// Finds an image by digest (`sha256:<hex>`, or a unique prefix of at least 12 hex
    /// digits), config digest, or name (`busybox` means `busybox:latest`).
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord, ContainerizerError> {
        let index = self.index.lock().unwrap();
        let reference = reference.trim();
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        let is_hex = hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if is_hex {
            let found: Vec<&ImageRecord> = index
                .images
                .values()
                .filter(|r| {
                    r.digest.hex().starts_with(hex) || r.config_digest.hex().starts_with(hex)
                })
                .collect();
            match found.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                _ => {
                    return Err(ContainerizerError::InvalidImage(format!(
                        "'{reference}' matches {} images; give more digits",
                        found.len()
                    )))
                }
            }
        }
        if let Ok(name) = normalize_name(reference) {
            if let Some(r) = index.images.values().find(|r| r.names.contains(&name)) {
                return Ok(r.clone());
            }
        }
        Err(ContainerizerError::ImageNotFound(format!(
            "no image '{reference}' in this agent's image store (import it with `drover images \
             import`)"
        )))
    }

    /// Imports every image of an archive: a directory holding an OCI image layout, or a
    /// tar file (`docker save`, classic or OCI, or a tar of an OCI layout; gzip-compressed
    /// archives are unpacked first). `name` adds a name (only for archives of one
    /// image); `format` is "" (detect), "oci" or "docker". Returns the imported images.
    pub fn import(
        &self,
        archive: &Path,
        name: Option<&str>,
        format: &str,
    ) -> Result<Vec<ImageRecord>, ContainerizerError> {
        self.import_as(archive, &archive.display().to_string(), name, format)
    }

    /// [`ImageStore::import`], naming the archive `shown` in errors (the API says "the
    /// uploaded archive" rather than the agent's own file name for it).
    pub fn import_as(
        &self,
        archive: &Path,
        shown: &str,
        name: Option<&str>,
        format: &str,
    ) -> Result<Vec<ImageRecord>, ContainerizerError> {
        let extra = name.map(normalize_name).transpose()?;
        let staging = self
            .dir
            .join("staging")
            .join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir(&staging).ctx(|| format!("creating {}", staging.display()))?;
        let result = self.import_in(archive, shown, extra, format, &staging);
        if let Err(e) = std::fs::remove_dir_all(&staging) {
            tracing::warn!(path = %staging.display(), error = %e, "could not remove an import's staging directory");
        }
        result
    }

    fn import_in(
        &self,
        archive: &Path,
        shown: &str,
        extra: Option<String>,
        format: &str,
        staging: &Path,
    ) -> Result<Vec<ImageRecord>, ContainerizerError> {
        let archive = self.gunzip_if_needed(archive, shown, staging)?;
        let src = source::Source::open(&archive, shown)?;
        let mut plans = manifest::plan(&src, format)?;
        if extra.is_some() && plans.len() != 1 {
            return Err(ContainerizerError::InvalidImage(format!(
                "the archive holds {} images; a name can only be given to an archive of one",
                plans.len()
            )));
        }
        // Everything is verified before anything is unpacked or becomes visible.
        for plan in &plans {
            for layer in &plan.layers {
                if layer.blob.is_some() {
                    manifest::verify_layer_blob(&src, layer)?;
                } else {
                    let (raw, _) = src.open_file(&layer.path)?;
                    let mut plain =
                        unpack::HashingReader::new(unpack::decompressed(raw, &layer.path)?);
                    io_copy_sink(&mut plain, &layer.path)?;
                    let got = plain
                        .finish()
                        .ctx(|| format!("reading layer {}", layer.path))?;
                    if got != layer.diff_id {
                        return Err(ContainerizerError::InvalidImage(format!(
                            "{}: layer {} does not match its digest: the config says {} but its \
                             content hashes to {got}",
                            src.shown(),
                            layer.path,
                            layer.diff_id
                        )));
                    }
                }
            }
        }
        let mut out = Vec::new();
        for plan in plans.iter_mut() {
            if let Some(n) = &extra {
                if !plan.names.contains(n) {
                    plan.names.push(n.clone());
                }
            }
            let known = self.index.lock().unwrap().images.contains_key(&plan.digest);
            let unpacked = if known {
                None
            } else {
                Some(self.unpack(&src, plan, staging)?)
            };
            out.push(self.commit(plan, unpacked)?);
        }
        Ok(out)
    }

    /// Archives arrive gzip-compressed (`docker save | gzip`) as often as not; tar needs
    /// to seek, so such an archive is decompressed into the staging directory first.
    fn gunzip_if_needed(
        &self,
        archive: &Path,
        shown: &str,
        staging: &Path,
    ) -> Result<PathBuf, ContainerizerError> {
        use std::io::Read;
        if archive.is_dir() {
            return Ok(archive.to_path_buf());
        }
        let mut file =
            std::fs::File::open(archive).ctx(|| format!("opening {}", archive.display()))?;
        let mut magic = [0u8; 2];
        let n = file
            .read(&mut magic)
            .ctx(|| format!("reading {}", archive.display()))?;
        if n < 2 || magic != [0x1f, 0x8b] {
            return Ok(archive.to_path_buf());
        }
        let file = std::fs::File::open(archive).ctx(|| format!("opening {}", archive.display()))?;
        let target = staging.join("archive.tar");
        let mut out =
            std::fs::File::create(&target).ctx(|| format!("creating {}", target.display()))?;
        let limit = self.limits.max_archive_bytes;
        let mut decoder = flate2::read::MultiGzDecoder::new(file).take(limit + 1);
        let n = std::io::copy(&mut decoder, &mut out).map_err(|e| {
            ContainerizerError::InvalidImage(format!("{shown} is not valid gzip: {e}"))
        })?;
        if n > limit {
            return Err(ContainerizerError::ImageTooLarge(format!(
                "{shown} decompresses to more than the {} MiB allowed (--image-max-archive-mb)",
                limit >> 20
            )));
        }
        Ok(target)
    }

    /// Unpacks an image's layers into `staging/<hex>`; returns it and the unpacked size.
    fn unpack(
        &self,
        src: &source::Source,
        plan: &manifest::ImagePlan,
        staging: &Path,
    ) -> Result<(PathBuf, u64), ContainerizerError> {
        let root = staging.join(plan.digest.hex());
        std::fs::create_dir(&root).ctx(|| format!("creating {}", root.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
                .ctx(|| format!("setting the mode of {}", root.display()))?;
        }
        let mut unpacker = unpack::Unpacker::new(&root, self.limits.max_unpacked_bytes)
            .ctx(|| format!("opening {}", root.display()))?;
        for layer in &plan.layers {
            let (raw, _) = src.open_file(&layer.path)?;
            let mut plain = unpack::HashingReader::new(unpack::decompressed(raw, &layer.path)?);
            unpacker.apply(&mut plain, &layer.path)?;
            let got = plain
                .finish()
                .ctx(|| format!("reading layer {}", layer.path))?;
            if got != layer.diff_id {
                return Err(ContainerizerError::InvalidImage(format!(
                    "{}: layer {} uncompresses to content hashing to {got}, but the config's \
                     diff_id says {}",
                    src.shown(),
                    layer.path,
                    layer.diff_id
                )));
            }
        }
        if unpacker.skipped_devices > 0 {
            tracing::warn!(image = %plan.digest, count = unpacker.skipped_devices, "skipped device nodes in the image's layers (containers get their devices from the containerizer)");
        }
        unpacker
            .sync()
            .ctx(|| format!("syncing {}", root.display()))?;
        Ok((root, unpacker.budget.used))
    }

    /// Makes an image visible: its root filesystem renamed into place, then the index.
    fn commit(
        &self,
        plan: &manifest::ImagePlan,
        unpacked: Option<(PathBuf, u64)>,
    ) -> Result<ImageRecord, ContainerizerError> {
        let mut index = self.index.lock().unwrap();
        let mut next = Index {
            images: index.images.clone(),
        };
        let target = self.rootfs_dir(&plan.digest);
        if !next.images.contains_key(&plan.digest) {
            // A concurrent import of the same image may have committed first.
            let Some((root, size)) = unpacked else {
                return Err(ContainerizerError::ImageNotFound(format!(
                    "image {} was removed while it was being imported; import it again",
                    plan.digest
                )));
            };
            if target.exists() {
                std::fs::remove_dir_all(&target)
                    .ctx(|| format!("removing {}", target.display()))?;
            }
            std::fs::rename(&root, &target)
                .ctx(|| format!("moving {} to {}", root.display(), target.display()))?;
            fsutil::fsync_dir(&self.dir.join("rootfs"))
                .ctx(|| format!("syncing {}", self.dir.join("rootfs").display()))?;
            next.images.insert(
                plan.digest.clone(),
                ImageRecord {
                    digest: plan.digest.clone(),
                    config_digest: plan.config_digest.clone(),
                    names: Vec::new(),
                    format: plan.format,
                    layers: plan.layers.len() as u32,
                    size_bytes: size,
                    imported_at_ms: (drover_proto::unix_seconds() * 1000.0) as u64,
                    config: plan.config.clone(),
                },
            );
        }
        // A name moves to the image imported last, as `docker tag` would move it.
        for name in &plan.names {
            for other in next.images.values_mut() {
                if other.digest != plan.digest {
                    other.names.retain(|n| n != name);
                }
            }
            let rec = next.images.get_mut(&plan.digest).expect("inserted above");
            if !rec.names.contains(name) {
                rec.names.push(name.clone());
            }
        }
        let path = self.dir.join("index.json");
        fsutil::write_json_atomic(&path, &next).ctx(|| format!("writing {}", path.display()))?;
        *index = next;
        Ok(index.images[&plan.digest].clone())
    }

    /// Removes an image from the index and deletes its root filesystem. Refused while an
    /// overlay mounted on this host uses it (copies made by the fallback are independent).
    pub fn remove(&self, reference: &str) -> Result<ImageRecord, ContainerizerError> {
        let record = self.resolve(reference)?;
        let root = self.rootfs_dir(&record.digest);
        if rootfs::overlay_uses(&root).ctx(|| "reading /proc/self/mountinfo".into())? {
            return Err(ContainerizerError::ImageInUse(format!(
                "image {} is in use by a running container's root filesystem",
                record.digest
            )));
        }
        let mut index = self.index.lock().unwrap();
        let mut next = Index {
            images: index.images.clone(),
        };
        next.images.remove(&record.digest);
        let path = self.dir.join("index.json");
        fsutil::write_json_atomic(&path, &next).ctx(|| format!("writing {}", path.display()))?;
        *index = next;
        drop(index);
        // Once out of the index the directory is garbage: a crash here leaves it for open().
        std::fs::remove_dir_all(&root).ctx(|| format!("removing {}", root.display()))?;
        Ok(record)
    }

    /// Prepares `container_dir/rootfs` for a container of the image `reference`: an
    /// overlay (lower: the image, upper and work: `container_dir/overlay/`), or, where
    /// overlay cannot be mounted, a private copy (logged). Undo with [`cleanup_rootfs`].
    pub fn prepare_rootfs(
        &self,
        reference: &str,
        container_dir: &Path,
    ) -> Result<PreparedRootfs, ContainerizerError> {
        let image = self.resolve(reference)?;
        let lower = self.rootfs_dir(&image.digest);
        rootfs::prepare(image, &lower, container_dir, true)
    }

    #[cfg(test)]
    fn prepare_rootfs_copy(
        &self,
        reference: &str,
        container_dir: &Path,
    ) -> Result<PreparedRootfs, ContainerizerError> {
        let image = self.resolve(reference)?;
        let lower = self.rootfs_dir(&image.digest);
        rootfs::prepare(image, &lower, container_dir, false)
    }
}

fn io_copy_sink(r: &mut impl std::io::Read, shown: &str) -> Result<(), ContainerizerError> {
    std::io::copy(r, &mut std::io::sink())
        .map(|_| ())
        .map_err(|e| ContainerizerError::InvalidImage(format!("layer {shown} cannot be read: {e}")))
}
