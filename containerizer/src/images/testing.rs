//! Image archives built on the spot, for the image store's tests and for the agent's
//! tests of its image API (behind the `testing` feature): tar layers with any entry
//! (hostile ones included), OCI layouts and both `docker save` formats, and a reference
//! image that exercises whiteouts, opaque directories and links.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use sha2::{Digest as _, Sha256};

// ------------------------------------------------------------------ archive builders

/// One tar entry. Names are written raw, so hostile ones (`../x`, `/x`) stay as given.
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str),
}

pub fn raw_name(field: &mut [u8], name: &str) {
    assert!(name.len() < field.len(), "test names fit the old header");
    field[..name.len()].copy_from_slice(name.as_bytes());
}

pub fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_old();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        let (name, data): (&str, &[u8]) = match e {
            E::Dir(n, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                (n, b"")
            }
            E::File(n, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                (n, data)
            }
            E::Symlink(n, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                raw_name(&mut h.as_old_mut().linkname, target);
                (n, b"")
            }
            E::Hard(n, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                raw_name(&mut h.as_old_mut().linkname, target);
                (n, b"")
            }
            E::Char(n) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                (n, b"")
            }
        };
        raw_name(&mut h.as_old_mut().name, name);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

pub fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

/// The files of an archive, by path.
pub type Files = BTreeMap<String, Vec<u8>>;

/// A layer as stored (maybe gzipped) and its uncompressed tar.
pub struct Layer {
    pub stored: Vec<u8>,
    pub plain: Vec<u8>,
}

pub fn plain(l: Vec<u8>) -> Layer {
    Layer {
        stored: l.clone(),
        plain: l,
    }
}

pub fn gzipped(l: Vec<u8>) -> Layer {
    Layer {
        stored: gzip(&l),
        plain: l,
    }
}

pub fn config_json(layers: &[Layer]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": {
            "Env": ["PATH=/bin", "GREETING=hi"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "WorkingDir": "/opt",
            "User": "app",
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| sha(&l.plain)).collect::<Vec<_>>(),
        },
    }))
    .unwrap()
}

/// An OCI layout; returns its files and the manifest digest.
pub fn oci_files(layers: &[Layer], annotations: serde_json::Value) -> (Files, String) {
    let mut files = Files::new();
    let config = config_json(layers);
    let config_digest = sha(&config);
    files.insert(
        format!("blobs/sha256/{}", hex_of(&config_digest)),
        config.clone(),
    );
    let mut descriptors = Vec::new();
    for l in layers {
        let d = sha(&l.stored);
        files.insert(format!("blobs/sha256/{}", hex_of(&d)), l.stored.clone());
        descriptors.push(serde_json::json!({
            "mediaType": if l.stored == l.plain {
                "application/vnd.oci.image.layer.v1.tar"
            } else {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            },
            "digest": d,
            "size": l.stored.len(),
        }));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": descriptors,
    }))
    .unwrap();
    let manifest_digest = sha(&manifest);
    files.insert(
        format!("blobs/sha256/{}", hex_of(&manifest_digest)),
        manifest.clone(),
    );
    files.insert(
        "index.json".into(),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": annotations,
            }],
        }))
        .unwrap(),
    );
    files.insert(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    );
    (files, manifest_digest)
}

/// Docker 25+'s `docker save`: an OCI layout plus a classic manifest.json.
pub fn docker_oci_files(layers: &[Layer], tag: &str) -> (Files, String) {
    let (mut files, digest) = oci_files(
        layers,
        serde_json::json!({
            "io.containerd.image.name": format!("docker.io/library/{tag}"),
            "org.opencontainers.image.ref.name": "1.0",
        }),
    );
    let config_digest = sha(&config_json(layers));
    files.insert(
        "manifest.json".into(),
        serde_json::to_vec(&serde_json::json!([{
            "Config": format!("blobs/sha256/{}", hex_of(&config_digest)),
            "RepoTags": [tag],
            "Layers": layers.iter().map(|l| format!("blobs/sha256/{}", hex_of(&sha(&l.stored)))).collect::<Vec<_>>(),
        }]))
        .unwrap(),
    );
    (files, digest)
}

/// Classic `docker save`; returns its files and the config digest (the image id).
pub fn docker_classic_files(layers: &[Layer], tags: &[&str]) -> (Files, String) {
    let mut files = Files::new();
    let config = config_json(layers);
    let config_digest = sha(&config);
    files.insert(format!("{}.json", hex_of(&config_digest)), config);
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let id = hex_of(&sha(format!("layer{i}").as_bytes())).to_string();
        files.insert(format!("{id}/layer.tar"), l.stored.clone());
        files.insert(format!("{id}/VERSION"), b"1.0".to_vec());
        paths.push(format!("{id}/layer.tar"));
    }
    files.insert(
        "manifest.json".into(),
        serde_json::to_vec(&serde_json::json!([{
            "Config": format!("{}.json", hex_of(&config_digest)),
            "RepoTags": tags,
            "Layers": paths,
        }]))
        .unwrap(),
    );
    (files, config_digest)
}

pub fn write_dir(files: &Files, dir: &Path) {
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

pub fn write_tar(files: &Files, path: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, bytes.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

// ------------------------------------------------------------------ the reference image

/// Two layers exercising files, modes, symlinks, hard links, a whiteout of a file and of
/// a directory, and an opaque directory whose new content comes before its marker.
pub fn reference_layers() -> Vec<Layer> {
    let l1 = layer(&[
        E::Dir("etc/", 0o755),
        E::File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
        E::Dir("bin/", 0o755),
        E::File("bin/sh", b"#!shell", 0o755),
        E::Symlink("bin/host-passwd", "/etc/passwd"),
        E::File("opt/a/x", b"x", 0o600),
        E::File("opt/a/y", b"y", 0o644),
        E::Dir("keep/", 0o750),
        E::File("keep/file", b"kept", 0o644),
        E::File("gone-file", b"bye", 0o644),
        E::File("gone-dir/sub/f", b"bye", 0o644),
        E::Char("dev-null"),
    ]);
    let l2 = layer(&[
        E::File(".wh.gone-file", b"", 0o644),
        E::File(".wh.gone-dir", b"", 0o644),
        E::File("opt/a/new", b"new", 0o644),
        E::File("opt/a/.wh..wh..opq", b"", 0o644),
        E::File("keep/file2", b"also", 0o644),
        E::Hard("bin/sh2", "bin/sh"),
        E::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            0o644,
        ),
        E::File(
            "etc/group",
            b"root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
            0o644,
        ),
        // Whiteouts of what never was: no-ops that create nothing.
        E::File("nowhere/deep/.wh.thing", b"", 0o644),
        E::File("etc/.wh.not-there", b"", 0o644),
    ]);
    vec![plain(l1), gzipped(l2)]
}
