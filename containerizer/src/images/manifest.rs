//! The three archive formats, read into one plan per image: which blobs to verify, which
//! layers to unpack in which order, the image config, and the names the archive gives.
//!
//! - OCI image layout: `oci-layout`, `index.json` (descriptors of manifests or nested
//!   indexes), `blobs/sha256/<hex>`. Names: `org.opencontainers.image.ref.name` (and
//!   `io.containerd.image.name`, which recent Docker writes) annotations.
//! - `docker save`, classic: `manifest.json` (`Config`, `RepoTags`, `Layers`), a config
//!   named `<sha256 hex>.json`, layers `<id>/layer.tar`, verified against the config's
//!   `rootfs.diff_ids`.
//! - `docker save` by Docker 25 and later: an OCI layout plus a classic `manifest.json`
//!   whose `RepoTags` name the images; read as an OCI layout.

use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::source::{invalid, Source};
use crate::error::ContainerizerError;

/// A `sha256:<64 lowercase hex>` content digest, validated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>`; other algorithms are refused (the store only checks sha256).
    pub fn parse(text: &str) -> Result<Digest, String> {
        let Some(hex) = text.strip_prefix("sha256:") else {
            return Err(format!(
                "'{text}' is not a sha256 digest (only sha256 is supported)"
            ));
        };
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!("'{text}' is not a valid sha256 digest"));
        }
        Ok(Digest(text.to_string()))
    }

    pub(crate) fn of_hasher(hasher: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the image asks its containers to run with (the `config` object of the image
/// config), plus the platform it was built for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// Empty means `/`.
    pub working_dir: String,
    /// `name`, `uid`, `name:group` or `uid:gid`; empty means root. See
    /// [`super::lookup_user`].
    pub user: String,
    pub architecture: String,
    pub os: String,
    /// RFC 3339 time the image was built, as the config says (may be empty).
    pub created: String,
}

impl ImageConfig {
    /// What a container of the image runs when the task names no command: `Entrypoint`
    /// followed by `Cmd`, as Docker does. Empty when the image names neither.
    pub fn default_argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }

    /// The image's `Env` with `overrides` applied on top (a task's variables win), in
    /// the image's order, new names after. Entries without `=` are ignored.
    pub fn env_with(&self, overrides: &[(String, String)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in overrides {
            match env.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = v.clone(),
                None => env.push((k.clone(), v.clone())),
            }
        }
        env
    }

    /// The working directory inside the container (`/` when the image names none).
    pub fn working_dir_or_root(&self) -> &str {
        if self.working_dir.is_empty() {
            "/"
        } else {
            &self.working_dir
        }
    }
}

/// The archive format, as detected or as hinted on import.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveFormat {
    OciLayout,
    DockerSave,
    DockerSaveOci,
}

impl ArchiveFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveFormat::OciLayout => "oci-layout",
            ArchiveFormat::DockerSave => "docker-save",
            ArchiveFormat::DockerSaveOci => "docker-save-oci",
        }
    }
}

/// One layer to verify and unpack.
#[derive(Clone, Debug)]
pub(crate) struct LayerPlan {
    /// The file inside the archive.
    pub path: String,
    /// Digest and size of the blob as stored (OCI descriptors); `None` for classic
    /// `docker save`, whose layers are checked against `diff_id` only.
    pub blob: Option<(Digest, u64)>,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// One image of an archive, its JSON documents already verified.
#[derive(Clone, Debug)]
pub(crate) struct ImagePlan {
    /// The manifest's digest; for classic `docker save` (which has no manifest) the
    /// config's digest, which is Docker's image id.
    pub digest: Digest,
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub layers: Vec<LayerPlan>,
    pub names: Vec<String>,
    pub format: ArchiveFormat,
}

/// Reads every image the archive holds. `hint`: "" (detect), "oci" or "docker".
pub(crate) fn plan(source: &Source, hint: &str) -> Result<Vec<ImagePlan>, ContainerizerError> {
    let has_index = source.exists("index.json");
    let has_manifest = source.exists("manifest.json");
    let shown = source.shown();
    let use_oci = match hint {
        "" => {
            if !has_index && !has_manifest {
                return Err(invalid(format!(
                    "{shown} is neither an OCI image layout (no index.json) nor a docker save \
                     archive (no manifest.json)"
                )));
            }
            has_index
        }
        "oci" if has_index => true,
        "oci" => {
            return Err(invalid(format!(
                "{shown} is not an OCI image layout: it has no index.json"
            )))
        }
        "docker" if has_manifest => false,
        "docker" => {
            return Err(invalid(format!(
                "{shown} is not a docker save archive: it has no manifest.json"
            )))
        }
        other => {
            return Err(invalid(format!(
                "unknown image format '{other}' (expected 'oci', 'docker' or nothing to detect)"
            )))
        }
    };
    let docker_entries = if has_manifest {
        let bytes = source.read_small("manifest.json")?;
        serde_json::from_slice::<Vec<DockerEntry>>(&bytes)
            .map_err(|e| invalid(format!("{shown}: manifest.json is not valid: {e}")))?
    } else {
        Vec::new()
    };
    let plans = if use_oci {
        let format = if has_manifest {
            ArchiveFormat::DockerSaveOci
        } else {
            ArchiveFormat::OciLayout
        };
        oci_plans(source, format, &docker_entries)?
    } else {
        docker_entries
            .iter()
            .map(|e| docker_plan(source, e))
            .collect::<Result<Vec<_>, _>>()?
    };
    if plans.is_empty() {
        return Err(invalid(format!("{shown} holds no image")));
    }
    Ok(plans)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: String,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    config: Option<RawRunConfig>,
    rootfs: RawRootfs,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Reads a blob named by a descriptor, checking its size and sha256.
fn read_blob(source: &Source, digest: &Digest, size: u64) -> Result<Vec<u8>, ContainerizerError> {
    let bytes = source.read_small(&format!("blobs/sha256/{}", digest.hex()))?;
    let actual = Digest::of_hasher(Sha256::new_with_prefix(&bytes));
    check_blob(source, digest, size, &actual, bytes.len() as u64)?;
    Ok(bytes)
}

fn check_blob(
    source: &Source,
    want: &Digest,
    want_size: u64,
    actual: &Digest,
    actual_size: u64,
) -> Result<(), ContainerizerError> {
    if actual != want {
        return Err(invalid(format!(
            "{}: blob {want} does not match its digest: its content hashes to {actual}",
            source.shown()
        )));
    }
    if actual_size != want_size {
        return Err(invalid(format!(
            "{}: blob {want} is {actual_size} bytes but its descriptor says {want_size}",
            source.shown()
        )));
    }
    Ok(())
}

/// Hashes a whole layer blob as stored (before unpacking anything from it).
pub(crate) fn verify_layer_blob(
    source: &Source,
    layer: &LayerPlan,
) -> Result<(), ContainerizerError> {
    let Some((digest, size)) = &layer.blob else {
        return Ok(());
    };
    let (mut reader, _) = source.open_file(&layer.path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| {
            ContainerizerError::io(format!("reading {} from {}", layer.path, source.shown()), e)
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    check_blob(source, digest, *size, &Digest::of_hasher(hasher), total)
}

fn parse_digest(source: &Source, text: &str, what: &str) -> Result<Digest, ContainerizerError> {
    Digest::parse(text).map_err(|e| invalid(format!("{}: {what}: {e}", source.shown())))
}

fn parse_config(
    source: &Source,
    bytes: &[u8],
) -> Result<(ImageConfig, Vec<Digest>), ContainerizerError> {
    let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| {
        invalid(format!(
            "{}: the image config is not valid: {e}",
            source.shown()
        ))
    })?;
    let run = raw.config.unwrap_or(RawRunConfig {
        env: None,
        cmd: None,
        entrypoint: None,
        working_dir: None,
        user: None,
    });
    let diff_ids = raw
        .rootfs
        .diff_ids
        .iter()
        .map(|d| parse_digest(source, d, "rootfs.diff_ids"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        ImageConfig {
            env: run.env.unwrap_or_default(),
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            working_dir: run.working_dir.unwrap_or_default(),
            user: run.user.unwrap_or_default(),
            architecture: raw.architecture.unwrap_or_default(),
            os: raw.os.unwrap_or_default(),
            created: raw.created.unwrap_or_default(),
        },
        diff_ids,
    ))
}

fn oci_plans(
    source: &Source,
    format: ArchiveFormat,
    docker_entries: &[DockerEntry],
) -> Result<Vec<ImagePlan>, ContainerizerError> {
    let shown = source.shown();
    if source.exists("oci-layout") {
        let layout: serde_json::Value =
            serde_json::from_slice(&source.read_small("oci-layout")?)
                .map_err(|e| invalid(format!("{shown}: oci-layout is not valid: {e}")))?;
        if layout
            .get("imageLayoutVersion")
            .and_then(|v| v.as_str())
            .is_none()
        {
            return Err(invalid(format!(
                "{shown}: oci-layout has no imageLayoutVersion"
            )));
        }
    }
    let index: Index = serde_json::from_slice(&source.read_small("index.json")?)
        .map_err(|e| invalid(format!("{shown}: index.json is not valid: {e}")))?;
    let mut plans: Vec<ImagePlan> = Vec::new();
    collect_manifests(source, format, &index.manifests, &[], 0, &mut plans)?;
    // Docker's manifest.json names the images by RepoTags; match them by config.
    for entry in docker_entries {
        let Some(hex) = blob_hex(&entry.config) else {
            continue;
        };
        for plan in plans.iter_mut().filter(|p| p.config_digest.hex() == hex) {
            for tag in entry.repo_tags.iter().flatten() {
                push_name(&mut plan.names, tag);
            }
        }
    }
    Ok(plans)
}

fn names_from(annotations: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut names = Vec::new();
    // Docker writes the full reference here and only the tag in ref.name; a bare tag
    // ("latest") names nothing useful, so ref.name counts only without the former.
    if let Some(n) = annotations.get("io.containerd.image.name") {
        push_name(&mut names, n);
    } else if let Some(n) = annotations.get("org.opencontainers.image.ref.name") {
        push_name(&mut names, n);
    }
    names
}

fn push_name(names: &mut Vec<String>, name: &str) {
    if let Ok(n) = super::normalize_name(name) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
}

fn collect_manifests(
    source: &Source,
    format: ArchiveFormat,
    descriptors: &[Descriptor],
    inherited_names: &[String],
    depth: usize,
    plans: &mut Vec<ImagePlan>,
) -> Result<(), ContainerizerError> {
    if depth > 4 {
        return Err(invalid(format!(
            "{}: image indexes nest more than 4 deep",
            source.shown()
        )));
    }
    for d in descriptors {
        if let Some(p) = &d.platform {
            // Attestations and other artefacts carry "unknown"; other platforms cannot
            // run here.
            if p.os != "linux" || !arch_matches(&p.architecture) {
                continue;
            }
        }
        let digest = parse_digest(source, &d.digest, "manifest descriptor")?;
        let mut names = inherited_names.to_vec();
        for n in names_from(&d.annotations) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let bytes = read_blob(source, &digest, d.size)?;
        let kind = if d.media_type.is_empty() {
            // Some writers leave mediaType to the document itself.
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get("mediaType")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_default()
        } else {
            d.media_type.clone()
        };
        if INDEX_TYPES.contains(&kind.as_str()) {
            let nested: Index = serde_json::from_slice(&bytes).map_err(|e| {
                invalid(format!(
                    "{}: index {digest} is not valid: {e}",
                    source.shown()
                ))
            })?;
            collect_manifests(source, format, &nested.manifests, &names, depth + 1, plans)?;
        } else if MANIFEST_TYPES.contains(&kind.as_str()) {
            if let Some(existing) = plans.iter_mut().find(|p| p.digest == digest) {
                for n in names {
                    if !existing.names.contains(&n) {
                        existing.names.push(n);
                    }
                }
                continue;
            }
            plans.push(manifest_plan(source, format, digest, &bytes, names)?);
        } else {
            return Err(invalid(format!(
                "{}: descriptor {digest} has media type '{kind}', which is neither an image \
                 manifest nor an index",
                source.shown()
            )));
        }
    }
    Ok(())
}

fn arch_matches(arch: &str) -> bool {
    let here = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    arch == here
}

fn manifest_plan(
    source: &Source,
    format: ArchiveFormat,
    digest: Digest,
    bytes: &[u8],
    names: Vec<String>,
) -> Result<ImagePlan, ContainerizerError> {
    let shown = source.shown();
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("{shown}: manifest {digest} is not valid: {e}")))?;
    if !manifest.media_type.is_empty() && !MANIFEST_TYPES.contains(&manifest.media_type.as_str()) {
        return Err(invalid(format!(
            "{shown}: manifest {digest} has media type '{}'",
            manifest.media_type
        )));
    }
    let config_digest = parse_digest(source, &manifest.config.digest, "config descriptor")?;
    let config_bytes = read_blob(source, &config_digest, manifest.config.size)?;
    let (config, diff_ids) = parse_config(source, &config_bytes)?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(invalid(format!(
            "{shown}: manifest {digest} has {} layers but its config lists {} diff_ids",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (d, diff_id) in manifest.layers.iter().zip(diff_ids) {
        if !d.media_type.contains(".tar") && !d.media_type.contains("rootfs.diff") {
            return Err(invalid(format!(
                "{shown}: layer {} has media type '{}', which is not a filesystem layer",
                d.digest, d.media_type
            )));
        }
        let blob = parse_digest(source, &d.digest, "layer descriptor")?;
        layers.push(LayerPlan {
            path: format!("blobs/sha256/{}", blob.hex()),
            blob: Some((blob, d.size)),
            diff_id,
        });
    }
    Ok(ImagePlan {
        digest,
        config_digest,
        config,
        layers,
        names,
        format,
    })
}

/// The sha256 hex a docker save file name carries: `<hex>.json` or `blobs/sha256/<hex>`.
fn blob_hex(path: &str) -> Option<String> {
    let last = path.rsplit('/').next()?;
    let hex = last.strip_suffix(".json").unwrap_or(last);
    Digest::parse(&format!("sha256:{hex}"))
        .ok()
        .map(|d| d.hex().to_string())
}

fn docker_plan(source: &Source, entry: &DockerEntry) -> Result<ImagePlan, ContainerizerError> {
    let shown = source.shown();
    let hex = blob_hex(&entry.config).ok_or_else(|| {
        invalid(format!(
            "{shown}: manifest.json names the config '{}', which is not named by its digest",
            entry.config
        ))
    })?;
    let config_digest = Digest(format!("sha256:{hex}"));
    let bytes = source.read_small(&entry.config)?;
    let actual = Digest::of_hasher(Sha256::new_with_prefix(&bytes));
    if actual != config_digest {
        return Err(invalid(format!(
            "{shown}: config '{}' does not match its digest: its content hashes to {actual}",
            entry.config
        )));
    }
    let (config, diff_ids) = parse_config(source, &bytes)?;
    if diff_ids.len() != entry.layers.len() {
        return Err(invalid(format!(
            "{shown}: manifest.json lists {} layers but the config lists {} diff_ids",
            entry.layers.len(),
            diff_ids.len()
        )));
    }
    let mut names = Vec::new();
    for tag in entry.repo_tags.iter().flatten() {
        push_name(&mut names, tag);
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(path, diff_id)| LayerPlan {
            path: path.clone(),
            blob: None,
            diff_id,
        })
        .collect();
    Ok(ImagePlan {
        digest: config_digest.clone(),
        config_digest,
        config,
        layers,
        names,
        format: ArchiveFormat::DockerSave,
    })
}
