//! What this machine offers: detected resources, with `--resources` overriding by name.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use drover_proto::Resources;

/// The ports offered when `--resources` names none (Mesos's default range).
pub const DEFAULT_PORTS: (u64, u64) = (31000, 32000);

/// Detects cpus, mem (MB), disk (MB free under `work_dir`) and ports. A value that cannot
/// be detected is left out (and logged) rather than guessed.
pub fn detect(work_dir: &Path) -> Resources {
    let mut r = Resources::new();
    match std::thread::available_parallelism() {
        Ok(n) => r.add(&Resources::scalar("cpus", n.get() as f64)),
        Err(e) => tracing::warn!("cannot detect cpus: {e}"),
    }
    match std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| mem_total_mb(&s))
    {
        Some(mb) => r.add(&Resources::scalar("mem", mb)),
        None => tracing::warn!("cannot detect mem: no MemTotal in /proc/meminfo"),
    }
    match free_disk_mb(work_dir) {
        Ok(mb) => r.add(&Resources::scalar("disk", mb)),
        Err(e) => tracing::warn!("cannot detect disk under {}: {e}", work_dir.display()),
    }
    r.add(&Resources::ranges(
        "ports",
        vec![(DEFAULT_PORTS.0, DEFAULT_PORTS.1)],
    ));
    r
}

/// The memory kept for the agent and the system when `--reserved-mem-mb` is not given:
/// 10% of the machine's, at least 256 MB, at most 4096 MB (never more than there is).
pub fn default_reserved_mem_mb(total_mb: f64) -> f64 {
    (total_mb * 0.1).clamp(256.0, 4096.0).min(total_mb)
}

/// `detected` minus the headroom kept for the agent and the system (`--reserved-cpus`,
/// `--reserved-mem-mb`, see [`default_reserved_mem_mb`]). Never below zero; applied before
/// `--resources` overrides, which are taken as given.
pub fn reserve(detected: &Resources, cpus: f64, mem_mb: Option<f64>) -> Resources {
    let mut out = Resources::from_proto(
        &detected
            .to_proto()
            .into_iter()
            .filter(|r| r.name != "cpus" && r.name != "mem")
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default();
    let total_cpus = detected.cpus();
    if total_cpus > 0.0 {
        let left = (total_cpus - cpus).max(0.0);
        if left == 0.0 {
            tracing::warn!("--reserved-cpus {cpus} leaves no cpus of {total_cpus} to offer");
        } else {
            out.add(&Resources::scalar("cpus", left));
        }
    }
    let total_mem = detected.mem();
    if total_mem > 0.0 {
        let reserved = mem_mb.unwrap_or_else(|| default_reserved_mem_mb(total_mem));
        let left = (total_mem - reserved).max(0.0).floor();
        if left == 0.0 {
            tracing::warn!("--reserved-mem-mb {reserved} leaves no mem of {total_mem} MB to offer");
        } else {
            out.add(&Resources::scalar("mem", left));
        }
    }
    out
}

/// `detected` with every resource named in `overrides` replaced by the override.
pub fn apply_overrides(detected: &Resources, overrides: &Resources) -> Resources {
    let named: Vec<String> = overrides.to_proto().into_iter().map(|r| r.name).collect();
    let kept: Vec<_> = detected
        .to_proto()
        .into_iter()
        .filter(|r| !named.contains(&r.name))
        .collect();
    let mut out = Resources::from_proto(&kept).unwrap_or_default();
    out.add(overrides);
    out
}

/// MemTotal from `/proc/meminfo` text, in MB.
pub fn mem_total_mb(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024) as f64)
}

/// Free space (available to unprivileged users) of the filesystem holding `path`, in MB.
pub fn free_disk_mb(path: &Path) -> io::Result<f64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path contains NUL"))?;
    // SAFETY: zeroed statvfs is a valid out-parameter; c is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes = st.f_bavail as u128 * st.f_frsize as u128;
    Ok((bytes / (1024 * 1024)) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_and_overrides_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let detected = detect(dir.path());
        assert!(detected.cpus() >= 1.0);
        assert!(detected.mem() > 0.0);
        assert_eq!(detected.get_ranges("ports").count(), 1001);

        let overrides = Resources::parse("cpus:2;ports:[5000-5001];gpus:1").unwrap();
        let r = apply_overrides(&detected, &overrides);
        assert_eq!(r.cpus(), 2.0);
        assert_eq!(r.mem(), detected.mem());
        assert_eq!(r.get_scalar("gpus"), 1.0);
        assert_eq!(r.ports(), vec![5000, 5001]);
    }

    #[test]
    fn keeps_headroom_for_the_agent_and_the_system() {
        let detected = Resources::parse("cpus:2;mem:24000;disk:100;ports:[1-2]").unwrap();
        let r = reserve(&detected, 0.5, None);
        assert_eq!(r.cpus(), 1.5);
        assert_eq!(r.mem(), 24000.0 - 2400.0);
        assert_eq!(r.disk(), 100.0);
        assert_eq!(r.ports(), vec![1, 2]);
        let small = Resources::parse("cpus:1;mem:1000").unwrap();
        let r = reserve(&small, 0.0, None);
        assert_eq!((r.cpus(), r.mem()), (1.0, 744.0));
        let r = reserve(&small, 2.0, Some(5000.0));
        assert_eq!((r.cpus(), r.mem()), (0.0, 0.0));
        assert_eq!(default_reserved_mem_mb(100_000.0), 4096.0);
        assert_eq!(default_reserved_mem_mb(100.0), 100.0);
    }

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal:       16303428 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_mb(text), Some(15921.0));
        assert_eq!(mem_total_mb("nothing"), None);
    }
}
