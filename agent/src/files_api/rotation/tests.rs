use super::*;
use std::fs;
use std::os::unix::fs::symlink;

#[test]
fn rotation_keeps_the_newest_part_and_a_bounded_number_of_files() {
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path();
    let fd = open_dir(sb).unwrap();
    let mut out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sb.join("stdout"))
        .unwrap();
    use std::io::Write;
    for round in 0..6u8 {
        out.write_all(&[b'a' + round; 150]).unwrap();
        assert!(
            rotate(&fd, "stdout", 100, 3, None).unwrap(),
            "round {round}"
        );
        assert_eq!(fs::metadata(sb.join("stdout")).unwrap().len(), 0);
    }
    // Small enough: nothing happens.
    out.write_all(b"tail\n").unwrap();
    assert!(!rotate(&fd, "stdout", 100, 3, None).unwrap());
    assert_eq!(fs::read(sb.join("stdout")).unwrap(), b"tail\n");
    // The newest 100 bytes of each of the last three rounds; older ones dropped.
    assert_eq!(fs::read(sb.join("stdout.1")).unwrap(), vec![b'f'; 100]);
    assert_eq!(fs::read(sb.join("stdout.2")).unwrap(), vec![b'e'; 100]);
    assert_eq!(fs::read(sb.join("stdout.3")).unwrap(), vec![b'd'; 100]);
    assert!(!sb.join("stdout.4").exists());
    // The O_APPEND writer goes on at the start of the truncated file.
    out.write_all(b"more\n").unwrap();
    assert_eq!(fs::read(sb.join("stdout")).unwrap(), b"tail\nmore\n");

    // A symlink or a hard link planted as stderr is never touched.
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), vec![0x5a; 1000]).unwrap();
    symlink(outside.path().join("secret"), sb.join("stderr")).unwrap();
    assert!(!rotate(&fd, "stderr", 100, 3, None).unwrap());
    fs::remove_file(sb.join("stderr")).unwrap();
    fs::hard_link(outside.path().join("secret"), sb.join("stderr")).unwrap();
    assert!(!rotate(&fd, "stderr", 100, 3, None).unwrap());
    assert_eq!(
        fs::metadata(outside.path().join("secret")).unwrap().len(),
        1000
    );
    assert!(!rotate(&fd, "missing", 100, 3, None).unwrap());
}

/// `len` bytes that tell their offsets apart (a byte pattern that does not repeat
/// within 251 bytes).
fn pattern(from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn bytes_written_during_the_copy_leave_the_copy_at_the_newest_max_bytes() {
    use std::io::Write;
    // How much a writer appends while the first 100 bytes are being copied: nothing,
    // less than the limit, the limit, more than it.
    for appended in [0usize, 30, 100, 250] {
        let dir = tempfile::tempdir().unwrap();
        let sb = dir.path();
        let fd = open_dir(sb).unwrap();
        fs::write(sb.join("stdout"), pattern(0, 150)).unwrap();
        let mut writer = fs::OpenOptions::new()
            .append(true)
            .open(sb.join("stdout"))
            .unwrap();
        let rotations = Rotations::default();
        let key = TaskKey::new("fw", "t");
        let mut write_meanwhile = || writer.write_all(&pattern(150, appended)).unwrap();
        assert!(rotate_with(
            &fd,
            "stdout",
            100,
            2,
            Some((&rotations, &key)),
            &mut write_meanwhile
        )
        .unwrap());
        // The newest 100 of everything written before the truncation, nothing older.
        let end = 150 + appended;
        assert_eq!(
            fs::read(sb.join("stdout.1")).unwrap(),
            pattern(end - 100, 100),
            "{appended} bytes appended during the copy"
        );
        assert_eq!(fs::metadata(sb.join("stdout")).unwrap().len(), 0);
        assert!(!sb.join(".stdout.rotating").exists());
        // What followers are told the copy holds.
        let state = rotations.state(&key, "stdout");
        assert_eq!(state.generation, 2);
        assert_eq!(
            state.last,
            Some(Rotation {
                old_size: end as u64,
                kept_from: (end - 100) as u64,
            })
        );
    }
}

#[test]
fn rotated_copies_keep_the_owner_and_permissions_of_their_file() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path();
    let fd = open_dir(sb).unwrap();
    // Modes no umask or default would give, so that they can only have been copied.
    for mode in [0o604, 0o640] {
        fs::write(sb.join("stdout"), [b'x'; 150]).unwrap();
        fs::set_permissions(sb.join("stdout"), fs::Permissions::from_mode(mode)).unwrap();
        assert!(rotate(&fd, "stdout", 100, 2, None).unwrap());
    }
    let meta = |name: &str| fs::metadata(sb.join(name)).unwrap();
    assert_eq!(meta("stdout.1").mode(), libc::S_IFREG | 0o640);
    assert_eq!(meta("stdout.2").mode(), libc::S_IFREG | 0o604);
    for name in ["stdout.1", "stdout.2"] {
        assert_eq!(
            (meta(name).uid(), meta(name).gid()),
            (meta("stdout").uid(), meta("stdout").gid())
        );
        assert_eq!(fs::read(sb.join(name)).unwrap(), [b'x'; 100]);
    }
}
