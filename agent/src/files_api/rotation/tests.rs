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
