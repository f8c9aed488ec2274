use super::*;
use std::fs;
use std::os::unix::fs::symlink;

fn settings(interval_secs: u64, enforce: bool) -> SandboxSettings {
    SandboxSettings {
        disk_check_interval: Duration::from_secs(interval_secs),
        enforce_disk_limits: enforce,
        ..SandboxSettings::default()
    }
}

/// Writes `n` bytes that really occupy disk blocks.
fn write_real(path: &Path, n: usize) {
    fs::write(path, vec![0x5a; n]).unwrap();
}

#[test]
fn measures_blocks_once_per_inode_and_never_follows_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let sb = dir.path().join("sb");
    let outside = dir.path().join("outside");
    fs::create_dir_all(sb.join("a/b")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    write_real(&sb.join("a/b/one"), 1 << 20);
    write_real(&outside.join("big"), 4 << 20);
    symlink(&outside, sb.join("to_outside")).unwrap();
    symlink(outside.join("big"), sb.join("big_link")).unwrap();
    fs::hard_link(sb.join("a/b/one"), sb.join("one_again")).unwrap();
    let m = measure(&sb, u64::MAX).unwrap();
    assert!(m.complete);
    assert!(
        (1 << 20..(1 << 20) + (256 << 10)).contains(&m.bytes),
        "one MiB of file plus a few directory blocks, not the outside: {m:?}"
    );
    assert_eq!(m.entries, 6);

    // A sparse file costs what it stores.
    let f = fs::File::create(sb.join("sparse")).unwrap();
    f.set_len(1 << 30).unwrap();
    let m2 = measure(&sb, u64::MAX).unwrap();
    assert!(m2.bytes < m.bytes + (64 << 10), "{m2:?}");

    // Bounded: stops once past `stop_above`.
    for i in 0..20 {
        write_real(&sb.join(format!("f{i}")), 64 << 10);
    }
    let m = measure(&sb, 1 << 20).unwrap();
    assert!(!m.complete && m.bytes > 1 << 20, "{m:?}");

    // The root itself must not be a symlink.
    assert!(measure(&sb.join("to_outside"), u64::MAX).is_err());
}

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
    write_real(&outside.path().join("secret"), 1000);
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

#[test]
fn core_schedules_checks_by_the_clock_and_kills_once() {
    let mut core = DiskCore::new(&settings(15, true));
    let t0 = Instant::now();
    let (a, b) = (TaskKey::new("fw", "a"), TaskKey::new("fw", "b"));
    let only_a = vec![a.clone()];
    let only_b = vec![b.clone()];
    let both = vec![a.clone(), b.clone()];
    // First seen: measured one interval later.
    assert!(core.due(t0, &only_a).is_empty());
    assert_eq!(core.next_wake(), Some(t0 + Duration::from_secs(15)));
    // b is first seen at 10 s: due at 25 s.
    assert!(core.due(t0 + Duration::from_secs(10), &both).is_empty());
    assert!(core.due(t0 + Duration::from_secs(14), &both).is_empty());
    assert_eq!(core.due(t0 + Duration::from_secs(15), &both), only_a);
    assert_eq!(core.due(t0 + Duration::from_secs(25), &both), only_b);
    assert_eq!(core.due(t0 + Duration::from_secs(30), &both), only_a);

    // Judging: no limit, within, over (once), then forgotten with the task.
    assert_eq!(core.judge(&a, 10 << 20, None), Verdict::Within);
    assert_eq!(core.judge(&a, 1 << 20, Some(1 << 20)), Verdict::Within);
    let Verdict::Over(message) = core.judge(&a, 3 << 20, Some(1 << 20)) else {
        panic!("over its limit")
    };
    assert!(
        message.contains("3.0 MB") && message.contains("1.0 MB"),
        "{message}"
    );
    assert_eq!(
        core.judge(&a, 3 << 20, Some(1 << 20)),
        Verdict::Within,
        "killed once"
    );
    core.due(t0 + Duration::from_secs(31), &only_b);
    assert!(matches!(
        core.judge(&a, 3 << 20, Some(1 << 20)),
        Verdict::Over(_)
    ));

    // Rotation: due at once, then every ROTATION_INTERVAL.
    assert!(core.rotation_due(t0));
    assert!(!core.rotation_due(t0 + ROTATION_INTERVAL / 2));
    assert!(core.rotation_due(t0 + ROTATION_INTERVAL));

    // Not enforcing: measured and reported, never killed.
    let mut lenient = DiskCore::new(&settings(15, false));
    assert_eq!(lenient.judge(&a, 3 << 20, Some(1 << 20)), Verdict::Within);
}
