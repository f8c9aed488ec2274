//! cgroups for linux containers: which hierarchy holds which controller, a container's
//! cgroup directories, its limits, its usage, its OOM counter and its teardown.
//!
//! Machines differ: many are hybrid, with cpu, cpuacct, memory, pids and freezer on
//! separate (or co-mounted) v1 hierarchies and an almost empty cgroup2 next to them. Each
//! controller is therefore looked up on its own in `/proc/self/mountinfo` (which v1
//! hierarchy mounts it) and `/proc/cgroups` (whether the kernel enables it). This module
//! drives v1 controllers; a controller that only cgroup2 holds is reported as such, and
//! the linux containerizer is not offered when a required one is missing (see
//! [`Hierarchies::usable`]).
//!
//! A container's cgroup is `<hierarchy>/<root>/<container-id>`, where `<root>` is
//! `--cgroups-root` plus a hash of the agent's work dir, created at the top of each
//! hierarchy and never under the agent's own cgroup: restarting the agent's service (which
//! kills the service's cgroup) must not kill its tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_proto::pb;
use serde::{Deserialize, Serialize};

/// Controllers the linux containerizer cannot do without.
pub const REQUIRED: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];
/// Controllers used when present: freezer makes teardown atomic (no fork races).
pub const OPTIONAL: [&str; 1] = ["freezer"];

/// CFS period for every container: 100 ms, the kernel's default.
pub const CFS_PERIOD_US: u64 = 100_000;
/// Smallest quota the kernel accepts.
const MIN_CFS_QUOTA_US: u64 = 1_000;
/// `cpu.shares` per cpu, the kernel's default weight of one cgroup.
pub const SHARES_PER_CPU: f64 = 1024.0;
/// Smallest `cpu.shares` the kernel accepts.
const MIN_SHARES: u64 = 2;
/// The kernel's largest pid count (`PID_MAX_LIMIT` on 64-bit), the most `pids.max` takes.
pub const MAX_PIDS: u64 = 4_194_304;
/// Smallest memory limit a task may ask for: below this the container's own init and
/// the shell starting the command are OOM-killed before the task does anything.
pub const MIN_MEM_MB: f64 = 4.0;

/// Where each controller lives on this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// Controller → mount point of the v1 hierarchy that holds it.
    v1: BTreeMap<String, PathBuf>,
    /// The cgroup2 mount point, if any, and the controllers it holds.
    v2: Option<(PathBuf, BTreeSet<String>)>,
    /// Controllers the kernel knows and enables (`/proc/cgroups`).
    enabled: BTreeSet<String>,
}

impl Hierarchies {
    /// Reads this process's view of the machine.
    pub fn detect() -> io::Result<Hierarchies> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let proc_cgroups = fs::read_to_string("/proc/cgroups").unwrap_or_default();
        let mut h = Hierarchies::parse(&mountinfo, &proc_cgroups);
        if let Some((path, controllers)) = &mut h.v2 {
            let text = fs::read_to_string(path.join("cgroup.controllers")).unwrap_or_default();
            controllers.extend(text.split_whitespace().map(str::to_string));
        }
        Ok(h)
    }

    /// Parses `/proc/self/mountinfo` and `/proc/cgroups` text. The cgroup2 controllers
    /// (read from its `cgroup.controllers`) are left empty.
    pub fn parse(mountinfo: &str, proc_cgroups: &str) -> Hierarchies {
        let mut h = Hierarchies::default();
        for line in proc_cgroups.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 4 && f[3] == "1" {
                h.enabled.insert(f[0].to_string());
            }
        }
        for line in mountinfo.lines() {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split_whitespace().collect();
            let right: Vec<&str> = right.split_whitespace().collect();
            let (Some(mount_point), Some(fstype)) = (left.get(4), right.first()) else {
                continue;
            };
            let mount_point = PathBuf::from(unescape_mountinfo(mount_point));
            match *fstype {
                "cgroup" => {
                    let options = right.get(2).copied().unwrap_or("");
                    for opt in options.split(',') {
                        let known = h.enabled.contains(opt)
                            || REQUIRED.contains(&opt)
                            || OPTIONAL.contains(&opt);
                        // The first mount of a hierarchy wins; later ones are bind mounts
                        // of the same hierarchy.
                        if known && !h.v1.contains_key(opt) {
                            h.v1.insert(opt.to_string(), mount_point.clone());
                        }
                    }
                }
                "cgroup2" if h.v2.is_none() => {
                    h.v2 = Some((mount_point, BTreeSet::new()));
                }
                _ => {}
            }
        }
        h
    }

    /// The mount point of the v1 hierarchy holding `controller`.
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1.get(controller).map(PathBuf::as_path)
    }

    /// Why the linux containerizer cannot work here, if it cannot.
    pub fn usable(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for c in REQUIRED {
            if self.v1.contains_key(c) && self.enabled.contains(c) {
                continue;
            }
            let in_v2 = self.v2.as_ref().is_some_and(|(_, set)| set.contains(c));
            problems.push(if !self.enabled.contains(c) {
                format!("the kernel does not enable the '{c}' controller")
            } else if in_v2 {
                format!(
                    "the '{c}' controller is on cgroup2, which this agent does not drive yet \
                     (it needs v1 hierarchies)"
                )
            } else {
                format!("no v1 hierarchy mounts the '{c}' controller")
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// One line for the agent's log: where each controller was found.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = REQUIRED
            .iter()
            .chain(OPTIONAL.iter())
            .map(|c| match self.v1.get(*c) {
                Some(p) => format!("{c}=v1:{}", p.display()),
                None => format!("{c}=missing"),
            })
            .collect();
        if let Some((p, set)) = &self.v2 {
            let held: Vec<&str> = set.iter().map(String::as_str).collect();
            parts.push(format!("cgroup2={} [{}]", p.display(), held.join(" ")));
        }
        parts.join(", ")
    }

    /// The directories of a container's cgroup, `<hierarchy>/<relative>` for every
    /// controller used. Nothing is created.
    pub fn container(&self, relative: &Path) -> ContainerCgroups {
        let mut dirs = BTreeMap::new();
        for c in REQUIRED.iter().chain(OPTIONAL.iter()) {
            if let Some(mount) = self.v1.get(*c) {
                dirs.insert(c.to_string(), mount.join(relative));
            }
        }
        ContainerCgroups { dirs }
    }

    /// The cgroups a running process is in, for every v1 controller this agent knows,
    /// from `/proc/<pid>/cgroup`: how the agent measures containers it did not create
    /// (Docker's). `None` when the process is gone.
    pub fn of_process(&self, pid: u32) -> Option<ContainerCgroups> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        Some(self.from_proc_cgroup(&text))
    }

    /// Parses `/proc/<pid>/cgroup` text (`ID:CONTROLLERS:PATH` lines); the cgroup2 line
    /// (empty controller list) is ignored, as the agent drives v1 only.
    pub fn from_proc_cgroup(&self, text: &str) -> ContainerCgroups {
        let mut dirs = BTreeMap::new();
        for line in text.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            for c in controllers.split(',') {
                let known = REQUIRED.contains(&c) || OPTIONAL.contains(&c);
                if let Some(mount) = self.v1.get(c).filter(|_| known) {
                    dirs.insert(c.to_string(), mount.join(path.trim_start_matches('/')));
                }
            }
        }
        ContainerCgroups { dirs }
    }

    /// Removes `<hierarchy>/<relative>` in every hierarchy if it is empty (no cgroups,
    /// no processes below it). For tests and operators cleaning up an agent's root.
    pub fn remove_if_empty(&self, relative: &Path) {
        let mounts: BTreeSet<&PathBuf> = self.v1.values().collect();
        for m in mounts {
            let _ = fs::remove_dir(m.join(relative));
        }
    }
}

impl Hierarchies {
    /// Kills every container below `<hierarchy>/<relative>` (an agent's root) and removes
    /// their cgroups and the root. For tests that must leave nothing behind even when they
    /// fail, and for operators retiring an agent's work dir.
    pub fn destroy_all_below(&self, relative: &Path) {
        let mut names = BTreeSet::new();
        for mount in self.v1.values() {
            if let Ok(entries) = fs::read_dir(mount.join(relative)) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        names.insert(e.file_name());
                    }
                }
            }
        }
        for name in names {
            let _ = self.container(&relative.join(name)).destroy();
        }
        self.remove_if_empty(relative);
    }
}

/// Decodes the octal escapes (`\040` for a space) of mountinfo paths.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A short, stable name for an agent's work dir: two agents on one machine (tests,
/// `drover local`) get separate cgroup roots, and a restarted agent finds its own again.
pub fn work_dir_tag(work_dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in work_dir.as_os_str().as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("agent-{hash:016x}")
}

/// Limits derived from a task's resources and the pids limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// `cpus`; `None`: default weight, no quota.
    pub cpus: Option<f64>,
    /// `mem` in MB; `None`: no memory limit.
    pub mem_mb: Option<f64>,
    pub pids: u64,
}

impl Limits {
    /// Checks the values a task asked for; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(c) = self.cpus {
            if !c.is_finite() || c <= 0.0 {
                return Err(format!("cpus must be positive, not {c}"));
            }
        }
        if let Some(m) = self.mem_mb {
            if !m.is_finite() || m < MIN_MEM_MB {
                return Err(format!(
                    "mem must be at least {MIN_MEM_MB} MB for a linux container, not {m}"
                ));
            }
        }
        if self.pids == 0 || self.pids > MAX_PIDS {
            return Err(format!(
                "the pids limit must be between 1 and {MAX_PIDS}, not {}",
                self.pids
            ));
        }
        Ok(())
    }

    pub fn cpu_shares(&self) -> u64 {
        match self.cpus {
            Some(c) => ((c * SHARES_PER_CPU).round() as u64).max(MIN_SHARES),
            None => SHARES_PER_CPU as u64,
        }
    }

    /// `cpu.cfs_quota_us`: `cpus` × period, or none.
    pub fn cfs_quota_us(&self) -> Option<u64> {
        self.cpus
            .map(|c| ((c * CFS_PERIOD_US as f64).round() as u64).max(MIN_CFS_QUOTA_US))
    }

    pub fn mem_bytes(&self) -> Option<u64> {
        self.mem_mb.map(|m| (m * 1024.0 * 1024.0).round() as u64)
    }
}

/// One container's cgroup directories, controller → directory (co-mounted controllers
/// share a directory). Checkpointed in the task's meta directory, so a restarted agent
/// can measure and tear down what an earlier one created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCgroups {
    pub dirs: BTreeMap<String, PathBuf>,
}

/// What the memory cgroup says about OOM kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEvents {
    /// `oom_kill` of `memory.oom_control` (kernels since 4.13); `None` when absent.
    pub oom_kills: Option<u64>,
    /// `memory.failcnt`: how often usage hit the limit.
    pub failcnt: u64,
    pub max_usage_bytes: u64,
    pub limit_bytes: Option<u64>,
}

impl MemoryEvents {
    /// True when the kernel OOM-killed something in the container. Without the
    /// `oom_kill` counter (old kernels), a SIGKILL of the task with usage pressed against
    /// the limit counts as an OOM kill.
    pub fn oom_killed(&self, task_sigkilled: bool) -> bool {
        match self.oom_kills {
            Some(n) => n > 0,
            None => {
                task_sigkilled
                    && self.failcnt > 0
                    && self
                        .limit_bytes
                        .is_some_and(|l| self.max_usage_bytes + (1 << 20) >= l)
            }
        }
    }
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing '{value}' to {}: {e}", path.display()),
        )
    })
}

fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
}

/// `key value` lines (cpu.stat, cpuacct.stat, memory.stat, memory.oom_control).
fn read_keyed(dir: &Path, file: &str) -> BTreeMap<String, u64> {
    fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// v1 reports "no limit" as a huge page-aligned number.
fn as_limit(v: Option<u64>) -> Option<u64> {
    v.filter(|v| *v < (1u64 << 62))
}

impl ContainerCgroups {
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs.get(controller).map(PathBuf::as_path)
    }

    /// Each distinct directory once.
    fn unique_dirs(&self) -> Vec<&Path> {
        let set: BTreeSet<&Path> = self.dirs.values().map(PathBuf::as_path).collect();
        set.into_iter().collect()
    }

    /// The `cgroup.procs` files a process writes itself into to join the container.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.unique_dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    pub fn exists(&self) -> bool {
        self.dirs.values().any(|d| d.exists())
    }

    /// Creates the directories and writes the limits. On error, whatever was created is
    /// removed again.
    pub fn create(&self, limits: &Limits) -> io::Result<()> {
        let result = self.create_inner(limits);
        if result.is_err() {
            let _ = self.destroy();
        }
        result
    }

    fn create_inner(&self, limits: &Limits) -> io::Result<()> {
        for d in self.unique_dirs() {
            // The agent's directory above may be removed by a concurrent teardown that
            // found it empty (see `remove_if_empty`): try again then.
            let mut attempt = 0;
            while let Err(e) = fs::create_dir_all(d) {
                attempt += 1;
                if e.kind() != io::ErrorKind::NotFound || attempt >= 5 {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("creating {}: {e}", d.display()),
                    ));
                }
            }
        }
        if let Some(d) = self.dir("cpu") {
            write(d, "cpu.shares", &limits.cpu_shares().to_string())?;
            write(d, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
            let quota = limits
                .cfs_quota_us()
                .map_or("-1".to_string(), |q| q.to_string());
            write(d, "cpu.cfs_quota_us", &quota)?;
        }
        if let (Some(d), Some(bytes)) = (self.dir("memory"), limits.mem_bytes()) {
            write(d, "memory.limit_in_bytes", &bytes.to_string())?;
            // With swap accounting, memory+swap gets the same limit, so the task cannot
            // spill into swap; without it, the cgroup is told not to swap.
            if d.join("memory.memsw.limit_in_bytes").exists() {
                write(d, "memory.memsw.limit_in_bytes", &bytes.to_string())?;
            } else {
                write(d, "memory.swappiness", "0")?;
            }
        }
        if let Some(d) = self.dir("pids") {
            write(d, "pids.max", &limits.pids.to_string())?;
        }
        Ok(())
    }

    /// The pids of every process in the container's cgroups.
    pub fn pids(&self) -> Vec<i32> {
        let mut out = BTreeSet::new();
        for f in self.procs_files() {
            for line in fs::read_to_string(f).unwrap_or_default().lines() {
                if let Ok(p) = line.trim().parse() {
                    out.insert(p);
                }
            }
        }
        out.into_iter().collect()
    }

    pub fn memory_events(&self) -> Option<MemoryEvents> {
        let d = self.dir("memory")?;
        if !d.exists() {
            return None;
        }
        Some(MemoryEvents {
            oom_kills: read_keyed(d, "memory.oom_control").get("oom_kill").copied(),
            failcnt: read_u64(d, "memory.failcnt").unwrap_or(0),
            max_usage_bytes: read_u64(d, "memory.max_usage_in_bytes").unwrap_or(0),
            limit_bytes: as_limit(read_u64(d, "memory.limit_in_bytes")),
        })
    }

    /// A usage sample. Fields whose files are missing stay 0.
    pub fn statistics(&self) -> pb::ResourceStatistics {
        let mut s = pb::ResourceStatistics {
            timestamp: drover_proto::unix_seconds(),
            ..Default::default()
        };
        if let Some(d) = self.dir("cpuacct") {
            // SAFETY: sysconf with a valid name.
            let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            let stat = read_keyed(d, "cpuacct.stat");
            s.cpus_user_time_secs = stat.get("user").copied().unwrap_or(0) as f64 / ticks;
            s.cpus_system_time_secs = stat.get("system").copied().unwrap_or(0) as f64 / ticks;
        }
        if let Some(d) = self.dir("cpu") {
            let stat = read_keyed(d, "cpu.stat");
            s.cpus_nr_periods = stat.get("nr_periods").copied().unwrap_or(0);
            s.cpus_nr_throttled = stat.get("nr_throttled").copied().unwrap_or(0);
            s.cpus_throttled_time_secs =
                stat.get("throttled_time").copied().unwrap_or(0) as f64 / 1e9;
            let quota = fs::read_to_string(d.join("cpu.cfs_quota_us"))
                .ok()
                .and_then(|q| q.trim().parse::<i64>().ok());
            let period = read_u64(d, "cpu.cfs_period_us").unwrap_or(CFS_PERIOD_US);
            s.cpus_limit = match quota {
                Some(q) if q > 0 && period > 0 => q as f64 / period as f64,
                _ => read_u64(d, "cpu.shares").unwrap_or(0) as f64 / SHARES_PER_CPU,
            };
        }
        if let Some(d) = self.dir("memory") {
            let stat = read_keyed(d, "memory.stat");
            s.mem_rss_bytes = stat
                .get("total_rss")
                .or_else(|| stat.get("rss"))
                .copied()
                .unwrap_or(0);
            s.mem_max_usage_bytes = read_u64(d, "memory.max_usage_in_bytes").unwrap_or(0);
            s.mem_limit_bytes = as_limit(read_u64(d, "memory.limit_in_bytes")).unwrap_or(0);
        }
        if let Some(d) = self.dir("pids") {
            s.pids_current = read_u64(d, "pids.current").unwrap_or(0);
            // "max" (no limit) does not parse and stays 0.
            s.pids_limit = read_u64(d, "pids.max").unwrap_or(0);
        }
        s
    }

    /// Kills every process in the container and removes its cgroups. v1 has no
    /// `cgroup.kill`: the freezer cgroup is frozen first, so nothing can fork while the
    /// pids are collected and killed, then thawed so the SIGKILLs are delivered. Safe to
    /// call again and on cgroups that are already gone.
    pub fn destroy(&self) -> io::Result<()> {
        let freezer = self.dir("freezer").filter(|d| d.exists());
        if let Some(d) = freezer {
            if write(d, "freezer.state", "FROZEN").is_ok() {
                for _ in 0..500 {
                    match fs::read_to_string(d.join("freezer.state")) {
                        Ok(s) if s.trim() == "FROZEN" => break,
                        Ok(_) => std::thread::sleep(Duration::from_millis(2)),
                        Err(_) => break,
                    }
                }
            }
        }
        for pid in self.pids() {
            // SAFETY: kill with integer arguments.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(d) = freezer {
            let _ = write(d, "freezer.state", "THAWED");
        }
        // Killed processes leave their cgroups once they are fully gone; without a
        // freezer, a process forked between listing and killing is caught next round.
        let mut last_err = None;
        for _ in 0..1000 {
            let pids = self.pids();
            for pid in &pids {
                // SAFETY: kill with integer arguments.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            last_err = None;
            for d in self.unique_dirs() {
                match fs::remove_dir(d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        last_err = Some(io::Error::new(
                            e.kind(),
                            format!("removing {}: {e}", d.display()),
                        ))
                    }
                }
            }
            if last_err.is_none() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("cgroup teardown did not finish")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PROC_CGROUPS: &str = "\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpu\t1\t1\t1
cpuacct\t2\t1\t1
memory\t4\t41\t1
freezer\t6\t1\t1
pids\t8\t1\t1
";

    #[test]
    fn finds_each_controller_on_a_hybrid_machine() {
        let h = Hierarchies::parse(HYBRID, PROC_CGROUPS);
        assert_eq!(h.v1_mount("cpu"), Some(Path::new("/sys/fs/cgroup/cpu")));
        assert_eq!(h.v1_mount("pids"), Some(Path::new("/sys/fs/cgroup/pids")));
        assert_eq!(h.v1_mount("name=systemd"), None);
        assert!(h.usable().is_ok());
        let c = h.container(Path::new("drover/agent-x/c1"));
        assert_eq!(
            c.dir("memory"),
            Some(Path::new("/sys/fs/cgroup/memory/drover/agent-x/c1"))
        );
        assert_eq!(c.procs_files().len(), 5);
    }

    #[test]
    fn a_process_cgroups_are_read_from_proc_cgroup() {
        let h = Hierarchies::parse(HYBRID, PROC_CGROUPS);
        let proc_cgroup = "\
12:pids:/docker/abc
9:memory:/docker/abc
6:freezer:/docker/abc
3:cpu:/docker/abc
2:cpuacct:/docker/abc
1:name=systemd:/docker/abc
0::/system.slice/docker.service
";
        let c = h.from_proc_cgroup(proc_cgroup);
        assert_eq!(
            c.dir("memory"),
            Some(Path::new("/sys/fs/cgroup/memory/docker/abc"))
        );
        assert_eq!(
            c.dir("cpuacct"),
            Some(Path::new("/sys/fs/cgroup/cpuacct/docker/abc"))
        );
        // The named systemd hierarchy and the cgroup2 line are not controllers we use.
        assert_eq!(c.procs_files().len(), 5);
        assert!(h.of_process(u32::MAX).is_none());
    }

    #[test]
    fn co_mounted_controllers_share_a_directory() {
        let mi = "\
1 0 0:1 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
2 0 0:2 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
3 0 0:3 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
        let h = Hierarchies::parse(mi, PROC_CGROUPS);
        assert_eq!(h.v1_mount("cpuacct"), h.v1_mount("cpu"));
        let c = h.container(Path::new("x"));
        // cpu,cpuacct once; memory; pids. No freezer: teardown kills without freezing.
        assert_eq!(c.procs_files().len(), 3);
        assert!(h.usable().is_ok());
    }

    #[test]
    fn explains_missing_and_v2_only_controllers() {
        let mi = "41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let mut h = Hierarchies::parse(mi, PROC_CGROUPS);
        h.v2.as_mut().unwrap().1.insert("memory".into());
        let err = h.usable().unwrap_err();
        assert!(err.contains("'memory' controller is on cgroup2"), "{err}");
        assert!(err.contains("no v1 hierarchy mounts the 'cpu'"), "{err}");
        let err = Hierarchies::parse(HYBRID, "").usable().unwrap_err();
        assert!(err.contains("does not enable"), "{err}");
    }

    #[test]
    fn limits_from_resources() {
        let l = Limits {
            cpus: Some(0.5),
            mem_mb: Some(32.0),
            pids: 64,
        };
        assert!(l.validate().is_ok());
        assert_eq!(l.cpu_shares(), 512);
        assert_eq!(l.cfs_quota_us(), Some(50_000));
        assert_eq!(l.mem_bytes(), Some(32 << 20));
        let none = Limits {
            cpus: None,
            mem_mb: None,
            pids: 1,
        };
        assert_eq!((none.cpu_shares(), none.cfs_quota_us()), (1024, None));
        let tiny = Limits {
            cpus: Some(0.0001),
            mem_mb: None,
            pids: 1,
        };
        assert_eq!((tiny.cpu_shares(), tiny.cfs_quota_us()), (2, Some(1000)));
        for bad in [
            Limits {
                cpus: Some(-1.0),
                ..l
            },
            Limits {
                cpus: Some(f64::NAN),
                ..l
            },
            Limits {
                mem_mb: Some(1.0),
                ..l
            },
            Limits { pids: 0, ..l },
            Limits {
                pids: MAX_PIDS + 1,
                ..l
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn oom_from_counters() {
        let ev = MemoryEvents {
            oom_kills: Some(1),
            failcnt: 0,
            max_usage_bytes: 0,
            limit_bytes: None,
        };
        assert!(ev.oom_killed(false));
        let old_kernel = MemoryEvents {
            oom_kills: None,
            failcnt: 3,
            max_usage_bytes: 32 << 20,
            limit_bytes: Some(32 << 20),
        };
        assert!(old_kernel.oom_killed(true));
        assert!(!old_kernel.oom_killed(false));
        assert!(!MemoryEvents {
            oom_kills: Some(0),
            ..ev
        }
        .oom_killed(true));
    }

    #[test]
    fn tags_and_escapes() {
        assert_eq!(
            work_dir_tag(Path::new("/var/lib/drover/agent")),
            work_dir_tag(Path::new("/var/lib/drover/agent"))
        );
        assert_ne!(work_dir_tag(Path::new("/a")), work_dir_tag(Path::new("/b")));
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain\\"), "/plain\\");
    }
}
