//! Image store tests on archives built here: the three formats, whiteouts and opaque
//! directories, hostile layers (each refused with nothing left behind), durability of the
//! index, names, concurrency, per-container root filesystems and user lookup.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;

use super::testing::*;

/// What the reference image unpacks to: path → kind, mode and content.
fn reference_tree() -> BTreeMap<String, String> {
    [
        ("bin", "dir 755"),
        ("bin/host-passwd", "link /etc/passwd"),
        ("bin/sh", "file 755 #!shell"),
        ("bin/sh2", "file 755 #!shell"),
        ("etc", "dir 755"),
        (
            "etc/group",
            "file 644 root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
        ),
        (
            "etc/passwd",
            "file 644 root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        ),
        ("keep", "dir 750"),
        ("keep/file", "file 644 kept"),
        ("keep/file2", "file 644 also"),
        ("opt", "dir 755"),
        ("opt/a", "dir 755"),
        ("opt/a/new", "file 644 new"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.mode() & 0o7777;
            let v = if m.is_dir() {
                walk(root, &p, out);
                format!("dir {mode:o}")
            } else if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else {
                format!(
                    "file {mode:o} {}",
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap())
                )
            };
            out.insert(rel, v);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn store(dir: &Path) -> ImageStore {
    ImageStore::open(dir.join("images"), ImportLimits::default()).unwrap()
}

/// Nothing of a failed import is visible or left on disk.
fn assert_empty(store: &ImageStore, dir: &Path) {
    assert!(store.list().is_empty(), "{:?}", store.list());
    for sub in ["rootfs", "staging"] {
        let left: Vec<_> = std::fs::read_dir(dir.join("images").join(sub))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{sub} holds {left:?}");
    }
}

fn check_reference_image(store: &ImageStore, rec: &ImageRecord) {
    assert_eq!(tree(&store.rootfs_dir(&rec.digest)), reference_tree());
    assert_eq!(rec.layers, 2);
    assert_eq!(
        rec.config,
        ImageConfig {
            env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo hi".into()],
            working_dir: "/opt".into(),
            user: "app".into(),
            architecture: "amd64".into(),
            os: "linux".into(),
            created: "2024-01-02T03:04:05Z".into(),
        }
    );
    // Hard links stay links: one inode.
    let root = store.rootfs_dir(&rec.digest);
    assert_eq!(
        std::fs::metadata(root.join("bin/sh")).unwrap().ino(),
        std::fs::metadata(root.join("bin/sh2")).unwrap().ino()
    );
}

// ------------------------------------------------------------------ the formats

#[test]
fn oci_layout_directory_unpacks_with_whiteouts_and_opaque_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let (files, digest) = oci_files(
        &reference_layers(),
        serde_json::json!({"org.opencontainers.image.ref.name": "example.com/app:2"}),
    );
    let layout = dir.path().join("layout");
    write_dir(&files, &layout);
    let store = store(dir.path());
    let got = store.import(&layout, None, "").unwrap();
    assert_eq!(got.len(), 1);
    let rec = &got[0];
    assert_eq!(rec.digest.as_str(), digest);
    assert_eq!(rec.names, ["example.com/app:2"]);
    assert_eq!(rec.format, ArchiveFormat::OciLayout);
    check_reference_image(&store, rec);
    // Size: the regular files written, each counted once per write.
    assert!(rec.size_bytes > 0);
    assert_eq!(store.list(), got);
    assert_eq!(
        store.resolve("example.com/app:2").unwrap().digest,
        rec.digest
    );
    assert_eq!(store.resolve(&digest[..19]).unwrap().digest, rec.digest);
}

#[test]
fn docker_save_classic_tar_and_gzipped_tar() {
    let dir = tempfile::tempdir().unwrap();
    let (files, config_digest) = docker_classic_files(&reference_layers(), &["test/app:1.0"]);
    let archive = dir.path().join("app.tar");
    write_tar(&files, &archive);
    let store = store(dir.path());
    let got = store.import(&archive, Some("other"), "").unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].digest.as_str(), config_digest);
    assert_eq!(got[0].config_digest.as_str(), config_digest);
    assert_eq!(got[0].format, ArchiveFormat::DockerSave);
    assert_eq!(got[0].names, ["test/app:1.0", "other:latest"]);
    check_reference_image(&store, &got[0]);

    // The same archive gzipped: same image, no second copy, same names.
    let gz = dir.path().join("app.tar.gz");
    std::fs::write(&gz, gzip(&std::fs::read(&archive).unwrap())).unwrap();
    let again = store.import(&gz, None, "docker").unwrap();
    assert_eq!(again[0].digest, got[0].digest);
    assert_eq!(store.list().len(), 1);
    assert_eq!(
        std::fs::read_dir(dir.path().join("images/rootfs"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn docker_save_oci_tar_takes_repo_tags_as_names() {
    let dir = tempfile::tempdir().unwrap();
    let (files, digest) = docker_oci_files(&reference_layers(), "app:1.0");
    let archive = dir.path().join("app.tar");
    write_tar(&files, &archive);
    let store = store(dir.path());
    let got = store.import(&archive, None, "").unwrap();
    assert_eq!(got[0].digest.as_str(), digest);
    assert_eq!(got[0].format, ArchiveFormat::DockerSaveOci);
    assert_eq!(got[0].names, ["app:1.0"]);
    check_reference_image(&store, &got[0]);
    // The same archive read through its classic manifest.json gives the same tree.
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = self::store(dir2.path());
    let classic = store2.import(&archive, None, "docker").unwrap();
    assert_eq!(classic[0].format, ArchiveFormat::DockerSave);
    check_reference_image(&store2, &classic[0]);
}

#[test]
fn format_hints_and_non_archives_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (files, _) = oci_files(&reference_layers(), serde_json::json!({}));
    let archive = dir.path().join("oci.tar");
    write_tar(&files, &archive);
    let err = store
        .import(&archive, None, "docker")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no manifest.json"), "{err}");
    let err = store.import(&archive, None, "rpm").unwrap_err().to_string();
    assert!(err.contains("unknown image format 'rpm'"), "{err}");
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a tar at all, clearly").unwrap();
    assert!(matches!(
        store.import(&junk, None, ""),
        Err(ContainerizerError::InvalidImage(_))
    ));
    let err = store
        .import(&archive, Some("bad name!"), "")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a valid image name"), "{err}");
    assert_empty(&store, dir.path());
}

// ------------------------------------------------------------------ hostile archives

fn hostile_import(layers: Vec<Layer>) -> (tempfile::TempDir, ContainerizerError) {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = oci_files(&layers, serde_json::json!({}));
    let archive = dir.path().join("evil.tar");
    write_tar(&files, &archive);
    let store = store(dir.path());
    let err = store.import(&archive, Some("evil"), "").unwrap_err();
    assert!(
        matches!(err, ContainerizerError::InvalidImage(_)),
        "{err:?}"
    );
    assert_empty(&store, dir.path());
    (dir, err)
}

fn assert_refused(layers: Vec<Layer>, expected: &str) {
    let (_dir, err) = hostile_import(layers);
    let msg = err.to_string();
    assert!(msg.contains(expected), "expected '{expected}' in: {msg}");
}

#[test]
fn entries_leaving_the_root_are_refused() {
    assert_refused(
        vec![plain(layer(&[E::File("../escaped", b"x", 0o644)]))],
        "entry '../escaped' contains '..'",
    );
    assert_refused(
        vec![plain(layer(&[E::File("a/../../escaped", b"x", 0o644)]))],
        "contains '..'",
    );
    assert_refused(
        vec![plain(layer(&[E::File("/etc/escaped", b"x", 0o644)]))],
        "entry '/etc/escaped' is an absolute path",
    );
}

#[test]
fn hard_links_out_of_the_root_are_refused() {
    assert_refused(
        vec![plain(layer(&[E::Hard("pw", "/etc/passwd")]))],
        "is a hard link to '/etc/passwd', which is an absolute path",
    );
    assert_refused(
        vec![plain(layer(&[E::Hard("pw", "../../../../etc/passwd")]))],
        "which contains '..'",
    );
    // Through a symlink the layer planted: the link target is resolved beneath the root.
    assert_refused(
        vec![plain(layer(&[
            E::Symlink("etc", "/etc"),
            E::Hard("pw", "etc/passwd"),
        ]))],
        "goes through the symlink 'etc'",
    );
    assert_refused(
        vec![plain(layer(&[E::Hard("pw", "missing")]))],
        "which does not exist",
    );
}

#[test]
fn writes_through_symlinks_are_refused_and_nothing_escapes() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().display().to_string();
    // In one layer.
    let (_d, err) = hostile_import(vec![plain(layer(&[
        E::Symlink("escape", &target),
        E::File("escape/pwned", b"x", 0o644),
    ]))]);
    assert!(
        err.to_string()
            .contains("goes through the symlink 'escape'"),
        "{err}"
    );
    // Planted by a lower layer, used by an upper one; relative this time.
    let (_d, err) = hostile_import(vec![
        plain(layer(&[
            E::Dir("a/", 0o755),
            E::Symlink("a/up", "../../../../../.."),
        ])),
        plain(layer(&[
            E::Dir("a/up/tmp/", 0o755),
            E::File("a/up/tmp/pwned", b"x", 0o644),
        ])),
    ]);
    assert!(
        err.to_string().contains("goes through the symlink 'a/up'"),
        "{err}"
    );
    // Whiteouts do not follow symlinks either.
    let (_d, err) = hostile_import(vec![
        plain(layer(&[E::Symlink("escape", &target)])),
        plain(layer(&[E::File("escape/.wh.victim", b"", 0o644)])),
    ]);
    assert!(
        err.to_string()
            .contains("goes through the symlink 'escape'"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn blobs_that_do_not_match_their_digests_are_refused() {
    // An OCI layer blob swapped after the manifest was written.
    let dir = tempfile::tempdir().unwrap();
    let layers = vec![plain(layer(&[E::File("a", b"good", 0o644)]))];
    let (mut files, _) = oci_files(&layers, serde_json::json!({}));
    let name = format!("blobs/sha256/{}", hex_of(&sha(&layers[0].stored)));
    files.insert(name.clone(), layer(&[E::File("a", b"evil", 0o644)]));
    let archive = dir.path().join("swapped.tar");
    write_tar(&files, &archive);
    let store = store(dir.path());
    let err = store.import(&archive, None, "").unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "blob {} does not match its digest",
            sha(&layers[0].stored)
        )),
        "{err}"
    );
    assert_empty(&store, dir.path());

    // A classic docker save layer that does not match the config's diff_id.
    let (mut files, _) = docker_classic_files(&layers, &["x:1"]);
    let key = files
        .keys()
        .find(|k| k.ends_with("layer.tar"))
        .unwrap()
        .clone();
    files.insert(key, layer(&[E::File("a", b"evil", 0o644)]));
    let archive = dir.path().join("classic.tar");
    write_tar(&files, &archive);
    let err = store.import(&archive, None, "").unwrap_err().to_string();
    assert!(err.contains("does not match its digest"), "{err}");
    assert_empty(&store, dir.path());

    // A config whose content is not what its name says.
    let (mut files, config_digest) = docker_classic_files(&layers, &["x:1"]);
    let key = format!("{}.json", hex_of(&config_digest));
    let mut config = files[&key].clone();
    config.push(b' ');
    files.insert(key, config);
    write_tar(&files, &archive);
    let err = store.import(&archive, None, "").unwrap_err().to_string();
    assert!(err.contains("does not match its digest"), "{err}");
    assert_empty(&store, dir.path());
}

#[test]
fn oversized_images_zstd_layers_and_devices() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(
        dir.path().join("images"),
        ImportLimits {
            max_archive_bytes: 1 << 20,
            max_unpacked_bytes: 1000,
        },
    )
    .unwrap();
    let big = vec![b'x'; 2000];
    let (files, _) = oci_files(
        &[plain(layer(&[E::File("big", &big, 0o644)]))],
        serde_json::json!({}),
    );
    let layout = dir.path().join("big");
    write_dir(&files, &layout);
    let err = store.import(&layout, None, "").unwrap_err();
    assert!(
        matches!(err, ContainerizerError::ImageTooLarge(_)),
        "{err:?}"
    );
    assert_empty(&store, dir.path());

    let mut zstd = vec![0x28, 0xb5, 0x2f, 0xfd];
    zstd.extend_from_slice(&[0u8; 64]);
    let (files, _) = oci_files(
        &[Layer {
            stored: zstd,
            plain: layer(&[]),
        }],
        serde_json::json!({}),
    );
    let layout = dir.path().join("zstd");
    write_dir(&files, &layout);
    let err = store.import(&layout, None, "").unwrap_err().to_string();
    assert!(err.contains("zstd-compressed"), "{err}");
    assert_empty(&store, dir.path());

    // Device nodes are skipped; the rest of the layer is there.
    let (files, _) = oci_files(
        &[plain(layer(&[
            E::Char("dev/sda"),
            E::File("ok", b"ok", 0o644),
        ]))],
        serde_json::json!({}),
    );
    let layout = dir.path().join("dev");
    write_dir(&files, &layout);
    let rec = store.import(&layout, None, "").unwrap().remove(0);
    let t = tree(&store.rootfs_dir(&rec.digest));
    assert_eq!(t.keys().collect::<Vec<_>>(), ["dev", "ok"]);
}

// ------------------------------------------------------------------ the index

#[test]
fn the_index_survives_a_restart_and_leftovers_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (files, digest) = oci_files(&reference_layers(), serde_json::json!({}));
    let layout = dir.path().join("layout");
    write_dir(&files, &layout);
    let before = {
        let store = store(dir.path());
        store.import(&layout, Some("app:1"), "").unwrap()
    };
    // An import that died after unpacking and one that died after the rename.
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("staging/dead/x")).unwrap();
    std::fs::create_dir_all(images.join(format!("rootfs/{}", "ab".repeat(32)))).unwrap();
    std::fs::write(images.join("uploads/dead.tar"), b"partial").unwrap();
    let store = store(dir.path());
    assert_eq!(store.list(), before);
    assert_eq!(store.resolve("app:1").unwrap().digest.as_str(), digest);
    let roots: Vec<_> = std::fs::read_dir(images.join("rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(roots, [hex_of(&digest)]);
    assert_eq!(
        std::fs::read_dir(images.join("staging")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(images.join("uploads")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::metadata(&images).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn names_move_to_the_latest_import_and_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mk = |content: &[u8], n: &str| {
        let (files, _) = oci_files(
            &[plain(layer(&[E::File("f", content, 0o644)]))],
            serde_json::json!({}),
        );
        let p = dir.path().join(n);
        write_dir(&files, &p);
        p
    };
    let a = store
        .import(&mk(b"a", "a"), Some("app"), "")
        .unwrap()
        .remove(0);
    let b = store
        .import(&mk(b"b", "b"), Some("app:latest"), "")
        .unwrap()
        .remove(0);
    assert_eq!(store.resolve("app").unwrap().digest, b.digest);
    assert!(store.resolve(a.digest.as_str()).unwrap().names.is_empty());
    let err = store.resolve("nope").unwrap_err();
    assert!(
        matches!(err, ContainerizerError::ImageNotFound(_)),
        "{err:?}"
    );
    assert_eq!(
        normalize_name("docker.io/library/busybox").unwrap(),
        "busybox:latest"
    );
    assert_eq!(
        normalize_name("host:5000/app").unwrap(),
        "host:5000/app:latest"
    );
    assert_eq!(normalize_name("app@sha256:00").unwrap(), "app@sha256:00");
    // Removal.
    let removed = store.remove("app").unwrap();
    assert_eq!(removed.digest, b.digest);
    assert!(!store.rootfs_dir(&b.digest).exists());
    assert_eq!(store.list().len(), 1);
}

#[test]
fn concurrent_imports_of_one_and_of_different_images() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(store(dir.path()));
    let mut archives = Vec::new();
    for i in 0..3 {
        let (files, _) = oci_files(
            &[plain(layer(&[E::File(
                "f",
                format!("{i}").as_bytes(),
                0o644,
            )]))],
            serde_json::json!({}),
        );
        let p = dir.path().join(format!("img{i}.tar"));
        write_tar(&files, &p);
        archives.push(p);
    }
    // Each archive imported twice at once.
    let handles: Vec<_> = archives
        .iter()
        .chain(archives.iter())
        .cloned()
        .map(|p: PathBuf| {
            let store = store.clone();
            std::thread::spawn(move || store.import(&p, None, "").unwrap())
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(store.list().len(), 3);
    assert_eq!(
        std::fs::read_dir(dir.path().join("images/rootfs"))
            .unwrap()
            .count(),
        3
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("images/staging"))
            .unwrap()
            .count(),
        0
    );
}

// ------------------------------------------------------------------ containers

fn imported_reference(dir: &Path) -> (ImageStore, ImageRecord) {
    let (files, _) = oci_files(&reference_layers(), serde_json::json!({}));
    let layout = dir.join("layout");
    write_dir(&files, &layout);
    let store = store(dir);
    let rec = store.import(&layout, Some("ref"), "").unwrap().remove(0);
    (store, rec)
}

#[test]
fn overlay_rootfs_keeps_the_image_immutable() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = imported_reference(dir.path());
    let container = dir.path().join("containers/c1");
    let prepared = store.prepare_rootfs("ref", &container).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // Overlay needs root; without it the copy fallback is the expected path.
    assert_eq!(
        prepared.mode,
        if root {
            RootfsMode::Overlay
        } else {
            RootfsMode::Copy
        }
    );
    assert_eq!(prepared.rootfs, container.join("rootfs"));
    assert_eq!(prepared.image.digest, rec.digest);
    assert_eq!(tree(&prepared.rootfs), reference_tree());
    std::fs::write(prepared.rootfs.join("keep/file"), b"changed").unwrap();
    std::fs::remove_file(prepared.rootfs.join("bin/sh")).unwrap();
    std::fs::write(prepared.rootfs.join("new"), b"new").unwrap();
    // The image is untouched, and so is a second container of it.
    assert_eq!(tree(&store.rootfs_dir(&rec.digest)), reference_tree());
    let other = dir.path().join("containers/c2");
    let p2 = store.prepare_rootfs(rec.digest.as_str(), &other).unwrap();
    assert_eq!(tree(&p2.rootfs), reference_tree());
    if root {
        // In use: not removable.
        let err = store.remove("ref").unwrap_err();
        assert!(matches!(err, ContainerizerError::ImageInUse(_)), "{err:?}");
        // A bind mount inside (as a containerizer mounts the sandbox) goes too, and
        // what it showed survives.
        let sandbox = dir.path().join("sandbox");
        std::fs::create_dir(&sandbox).unwrap();
        std::fs::write(sandbox.join("stdout"), b"out").unwrap();
        let mnt = prepared.rootfs.join("keep");
        let (s, t) = (
            std::ffi::CString::new(sandbox.to_str().unwrap()).unwrap(),
            std::ffi::CString::new(mnt.to_str().unwrap()).unwrap(),
        );
        // SAFETY: NUL-terminated paths.
        let r = unsafe {
            libc::mount(
                s.as_ptr(),
                t.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        cleanup_rootfs(&container).unwrap();
        assert_eq!(std::fs::read(sandbox.join("stdout")).unwrap(), b"out");
    } else {
        cleanup_rootfs(&container).unwrap();
    }
    assert!(!container.join("rootfs").exists());
    assert!(!container.join("overlay").exists());
    cleanup_rootfs(&container).unwrap();
    cleanup_rootfs(&other).unwrap();
    assert_eq!(tree(&store.rootfs_dir(&rec.digest)), reference_tree());
    store.remove("ref").unwrap();
    assert!(matches!(
        store.prepare_rootfs("ref", &container),
        Err(ContainerizerError::ImageNotFound(_))
    ));
}

#[test]
fn copy_fallback_makes_a_private_tree() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = imported_reference(dir.path());
    let container = dir.path().join("c");
    // A stale upper layer from an interrupted cleanup does not show through.
    std::fs::create_dir_all(container.join("overlay/upper")).unwrap();
    std::fs::write(container.join("overlay/upper/stale"), b"old").unwrap();
    let prepared = store.prepare_rootfs_copy("ref", &container).unwrap();
    assert_eq!(prepared.mode, RootfsMode::Copy);
    assert_eq!(tree(&prepared.rootfs), reference_tree());
    assert!(!container.join("overlay").exists());
    std::fs::write(prepared.rootfs.join("keep/file"), b"changed").unwrap();
    assert_eq!(tree(&store.rootfs_dir(&rec.digest)), reference_tree());
    // Mount points are made inside, never through the image's symlinks.
    let target = prepared.mount_point("/mnt/sandbox").unwrap();
    assert_eq!(target, prepared.rootfs.join("mnt/sandbox"));
    assert!(target.is_dir());
    assert_eq!(prepared.mount_point("mnt/sandbox").unwrap(), target);
    let err = prepared
        .mount_point("/bin/host-passwd/x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/bin/host-passwd is a symlink"), "{err}");
    std::os::unix::fs::symlink("/tmp", prepared.rootfs.join("tmp-link")).unwrap();
    assert!(prepared.mount_point("/tmp-link/sandbox").is_err());
    assert!(prepared.mount_point("/../x").is_err());
    assert!(prepared.mount_point("/").is_err());
    // Preparing twice is refused rather than mounting over a live root.
    assert!(store.prepare_rootfs("ref", &container).is_err());
    cleanup_rootfs(&container).unwrap();
    assert!(!container.join("rootfs").exists());
}

#[test]
fn users_come_from_the_images_own_passwd_and_group() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = imported_reference(dir.path());
    let root = store.rootfs_dir(&rec.digest);
    let app = lookup_user(&root, "app").unwrap();
    assert_eq!(
        app,
        ResolvedUser {
            uid: 1000,
            gid: 1000,
            home: "/home/app".into(),
            groups: vec![10],
        }
    );
    assert_eq!(
        lookup_user(&root, "1000").unwrap().home,
        Path::new("/home/app")
    );
    assert_eq!(lookup_user(&root, "app:wheel").unwrap().gid, 10);
    assert_eq!(lookup_user(&root, "app:7").unwrap().gid, 7);
    let unknown_uid = lookup_user(&root, "4242").unwrap();
    assert_eq!((unknown_uid.uid, unknown_uid.gid), (4242, 0));
    assert_eq!(lookup_user(&root, "").unwrap().uid, 0);
    let err = lookup_user(&root, "nobody").unwrap_err();
    assert!(matches!(err, ContainerizerError::UnknownUser(_)), "{err:?}");
    assert!(err
        .to_string()
        .contains("'nobody' is not in the image's /etc/passwd"));
    assert!(lookup_user(&root, "app:nogroup").is_err());

    // An image whose /etc/passwd (or /etc) is a symlink to the host's is not read.
    let fake = dir.path().join("fake");
    std::fs::create_dir_all(fake.join("etc")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", fake.join("etc/passwd")).unwrap();
    let err = lookup_user(&fake, "root").unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    let fake2 = dir.path().join("fake2");
    std::fs::create_dir_all(&fake2).unwrap();
    std::os::unix::fs::symlink("/etc", fake2.join("etc")).unwrap();
    let err = lookup_user(&fake2, "root").unwrap_err().to_string();
    assert!(err.contains("through a symlink"), "{err}");
}

#[test]
fn config_helpers_merge_like_docker() {
    let config = ImageConfig {
        env: vec!["PATH=/bin".into(), "A=1".into(), "junk".into()],
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec!["echo hi".into()],
        ..Default::default()
    };
    assert_eq!(config.default_argv(), ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(
        config.env_with(&[("A".into(), "2".into()), ("B".into(), "3".into())]),
        [
            ("PATH".to_string(), "/bin".to_string()),
            ("A".to_string(), "2".to_string()),
            ("B".to_string(), "3".to_string()),
        ]
    );
    assert_eq!(config.working_dir_or_root(), "/");
}

#[test]
fn classic_docker_save_with_shared_layers_as_symlinks() {
    // docker save stores a layer used twice once, and links the second to the first.
    let dir = tempfile::tempdir().unwrap();
    let base = layer(&[E::File("a", b"1", 0o644)]);
    let top = layer(&[E::File("b", b"2", 0o644)]);
    let layers = vec![plain(base.clone()), plain(top), plain(base)];
    let (files, _) = docker_classic_files(&layers, &["shared:1"]);
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let first = manifest[0]["Layers"][0].as_str().unwrap().to_string();
    let third = manifest[0]["Layers"][2].as_str().unwrap().to_string();
    assert_ne!(first, third);
    let archive = dir.path().join("shared.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    for (name, bytes) in &files {
        let mut h = tar::Header::new_gnu();
        if *name == third {
            let first_id = first.split('/').next().unwrap();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, name, format!("../{first_id}/layer.tar"))
                .unwrap();
            continue;
        }
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, bytes.as_slice()).unwrap();
    }
    b.finish().unwrap();
    drop(b);
    let store = store(dir.path());
    let rec = store.import(&archive, None, "").unwrap().remove(0);
    assert_eq!(rec.layers, 3);
    let t = tree(&store.rootfs_dir(&rec.digest));
    assert_eq!(t["a"], "file 644 1");
    assert_eq!(t["b"], "file 644 2");
}

#[test]
fn an_opaque_marker_keeps_what_its_layer_put_deeper_down() {
    let dir = tempfile::tempdir().unwrap();
    let layers = vec![
        plain(layer(&[
            E::File("opt/a/x", b"x", 0o644),
            E::File("opt/b", b"b", 0o644),
        ])),
        // No entries for opt/ or opt/a/: they come from the lower layer.
        plain(layer(&[
            E::File("opt/a/new", b"new", 0o644),
            E::File("opt/.wh..wh..opq", b"", 0o644),
        ])),
    ];
    let (files, _) = oci_files(&layers, serde_json::json!({}));
    let layout = dir.path().join("layout");
    write_dir(&files, &layout);
    let store = store(dir.path());
    let rec = store.import(&layout, None, "").unwrap().remove(0);
    let t = tree(&store.rootfs_dir(&rec.digest));
    assert_eq!(
        t.keys().collect::<Vec<_>>(),
        ["opt", "opt/a", "opt/a/new"],
        "{t:?}"
    );
}
