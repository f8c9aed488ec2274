//! The flags that govern sandboxes once tasks run in them: disk enforcement
//! ([`crate::disk`]), output rotation, the task's user ([`crate::users`]) and garbage
//! collection ([`crate::gc`]). Flattened into [`crate::Config`].

use std::time::Duration;

use clap::{ArgAction, Args};
use serde::Serialize;

use crate::error::AgentError;

/// Sandbox flags (see the module docs). Flattened into the agent's flat settings, so their
/// file keys and environment names are as unprefixed as the others'.
#[derive(Args, Serialize, Debug, Clone)]
#[serde(rename_all = "kebab-case")]
pub struct SandboxFlags {
    /// Seconds between two measurements of a task's sandbox against its `disk` resource.
    #[arg(long, default_value_t = 15.0, value_name = "SECS")]
    pub disk_check_interval_secs: f64,

    /// Kill a task whose sandbox holds more than its `disk` resource (TASK_FAILED,
    /// REASON_CONTAINER_LIMITATION_DISK). With false, usage is still measured and
    /// reported, and nothing is killed.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub enforce_disk_limits: bool,

    /// Rotate a task's `stdout` and `stderr` once one is larger than this many MiB: its
    /// newest part moves to `stdout.1` (older ones shift to `stdout.2`, …). 0 turns
    /// rotation off.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub log_max_size_mb: u64,

    /// How many rotated files (`stdout.1` … `stdout.N`) to keep per stream.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub log_max_files: u32,

    /// Run each task as the user its framework names (`FrameworkInfo.user`, or
    /// `CommandInfo.user` when set) when the agent runs as root. With false, every task
    /// runs as the agent's own user. A non-root agent cannot switch users and always runs
    /// tasks as itself.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub switch_user: bool,

    /// Seconds after a task's terminal update was acknowledged before its sandbox and
    /// its records are removed (default: one week, as in Mesos).
    #[arg(long, default_value_t = 604_800.0, value_name = "SECS")]
    pub gc_delay_secs: f64,
}

/// Validated [`SandboxFlags`].
#[derive(Clone, Debug)]
pub struct SandboxSettings {
    pub disk_check_interval: Duration,
    pub enforce_disk_limits: bool,
    /// `None`: no rotation.
    pub log_max_bytes: Option<u64>,
    pub log_max_files: u32,
    pub switch_user: bool,
    pub gc_delay: Duration,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            disk_check_interval: Duration::from_secs(15),
            enforce_disk_limits: true,
            log_max_bytes: Some(64 << 20),
            log_max_files: 5,
            switch_user: true,
            gc_delay: Duration::from_secs(604_800),
        }
    }
}

impl SandboxFlags {
    pub fn validate(&self) -> Result<SandboxSettings, AgentError> {
        let interval = self.disk_check_interval_secs;
        if !interval.is_finite() || !(0.1..=86_400.0).contains(&interval) {
            return Err(AgentError::Config(format!(
                "--disk-check-interval-secs must be between 0.1 and 86400, not {interval}"
            )));
        }
        if self.log_max_size_mb > 1 << 30 {
            return Err(AgentError::Config(format!(
                "--log-max-size-mb must be at most {}, not {}",
                1u64 << 30,
                self.log_max_size_mb
            )));
        }
        if !(1..=1000).contains(&self.log_max_files) {
            return Err(AgentError::Config(format!(
                "--log-max-files must be between 1 and 1000, not {}",
                self.log_max_files
            )));
        }
        let gc = self.gc_delay_secs;
        // Up to ten years; a typo must not make a Duration overflow.
        if !gc.is_finite() || !(0.0..=315_360_000.0).contains(&gc) {
            return Err(AgentError::Config(format!(
                "--gc-delay-secs must be between 0 and 315360000, not {gc}"
            )));
        }
        Ok(SandboxSettings {
            disk_check_interval: Duration::from_secs_f64(interval),
            enforce_disk_limits: self.enforce_disk_limits,
            log_max_bytes: (self.log_max_size_mb > 0).then_some(self.log_max_size_mb << 20),
            log_max_files: self.log_max_files,
            switch_user: self.switch_user,
            gc_delay: Duration::from_secs_f64(gc),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn defaults_and_refusals() {
        let s = Config::from_args(["--work-dir", "/w"])
            .unwrap()
            .validate()
            .unwrap()
            .sandbox;
        assert_eq!(s.disk_check_interval.as_secs(), 15);
        assert!(s.enforce_disk_limits && s.switch_user);
        assert_eq!(s.log_max_bytes, Some(64 << 20));
        assert_eq!(s.gc_delay.as_secs(), 7 * 24 * 3600);

        let s = Config::from_args([
            "--enforce-disk-limits",
            "false",
            "--switch-user",
            "false",
            "--log-max-size-mb",
            "0",
            "--gc-delay-secs",
            "0.5",
        ])
        .unwrap()
        .validate()
        .unwrap()
        .sandbox;
        assert!(!s.enforce_disk_limits && !s.switch_user);
        assert_eq!(s.log_max_bytes, None);
        assert_eq!(s.gc_delay.as_millis(), 500);

        for bad in [
            &["--disk-check-interval-secs", "0"][..],
            &["--log-max-files", "0"],
            &["--gc-delay-secs=-1"],
            &["--gc-delay-secs", "inf"],
        ] {
            let e = Config::from_args(bad).unwrap().validate().unwrap_err();
            let flag = bad[0].split('=').next().unwrap();
            assert!(e.to_string().contains(flag), "{bad:?}: {e}");
        }
    }
}
