//! [`Framework`]: runs the test framework binary (`drover-testfw`, in this crate) against a
//! [`Cluster`] and reads the JSON [`Report`] it writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{bin_dir, wait_until, Cluster};

/// Job indexes whose task FINISHED, from a test framework's report (task ids end in
/// `-<index>-<attempt>`).
pub fn finished_jobs(report: &Report) -> std::collections::HashSet<String> {
    report
        .final_states
        .iter()
        .filter(|(_, s)| s.as_str() == "FINISHED")
        .filter_map(|(id, _)| id.rsplit('-').nth(1).map(str::to_string))
        .collect()
}

/// Where a test framework's report goes and how to start it.
pub struct Framework {
    pub child: Child,
    pub report: PathBuf,
}

impl Framework {
    /// Starts `drover-testfw` with `args` against the cluster; it writes a JSON report.
    pub fn start(cluster: &Cluster, name: &str, args: &[&str]) -> Framework {
        let report = cluster.dir.path().join(format!("{name}.report.json"));
        let log = cluster.dir.path().join(format!("fw-{name}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let child = Command::new(bin_dir().join("drover-testfw"))
            .arg("--master")
            .arg(cluster.master_list())
            .arg("--name")
            .arg(name)
            .arg("--report")
            .arg(&report)
            .arg("--run-log")
            .arg(cluster.run_log())
            .args(args)
            .stdout(Stdio::from(f.try_clone().expect("dup")))
            .stderr(Stdio::from(f))
            .spawn()
            .expect("spawn drover-testfw");
        Framework { child, report }
    }

    /// Waits for the framework to exit (bounded) and returns its report.
    pub fn finish(mut self, limit: Duration) -> Report {
        let status = wait_until(
            "the test framework to finish",
            limit,
            Duration::from_millis(200),
            || self.child.try_wait().ok().flatten(),
        );
        assert!(status.success(), "test framework failed: {status}");
        Report::read(&self.report)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Framework {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test framework observed, as written to its report.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, Default)]
pub struct Report {
    pub framework_id: String,
    /// Final state of every task it launched, by task id.
    pub final_states: HashMap<String, String>,
    /// How many terminal updates it counted per task id (duplicates included).
    pub terminal_updates: HashMap<String, usize>,
    /// Updates that carried a uuid and were acknowledged.
    pub acknowledged: usize,
    /// Updates received in all.
    pub updates: usize,
    /// Exit codes reported per task id.
    pub exit_codes: HashMap<String, i32>,
    /// Tasks launched (accepted) per job index.
    pub launches: HashMap<String, usize>,
    /// Resource-seconds (cpus x seconds RUNNING) the framework's tasks used.
    pub cpu_seconds: f64,
    /// Times the driver resubscribed after losing the master.
    pub resubscriptions: usize,
}

impl Report {
    pub fn read(path: &Path) -> Report {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("report {}: {e}", path.display()));
        serde_json::from_str(&text).expect("report JSON")
    }
}
