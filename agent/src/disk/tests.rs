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
