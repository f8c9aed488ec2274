//! The agent's counters and gauges, rendered in the Prometheus text format by
//! [`http`] at `GET /metrics`.

pub mod http;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use drover_proto::pb::TaskState;
use drover_proto::states;

/// Terminal states a task can reach on an agent, pre-registered so every series exists
/// from the start (absent series make rate() and alerting awkward).
const TERMINAL_STATES: [TaskState; 5] = [
    TaskState::TaskFinished,
    TaskState::TaskFailed,
    TaskState::TaskKilled,
    TaskState::TaskError,
    TaskState::TaskDropped,
];

/// All metrics; shared between the agent loop (writer) and the HTTP endpoint (reader).
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    tasks_launched: AtomicU64,
    tasks_running: AtomicU64,
    tasks_terminal: Mutex<BTreeMap<String, u64>>,
    updates_sent: AtomicU64,
    updates_acknowledged: AtomicU64,
    updates_pending: AtomicU64,
    registrations: AtomicU64,
    checkpoint_syncs: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let terminal = TERMINAL_STATES.iter().map(|s| (label(*s), 0)).collect();
        Metrics {
            started: Instant::now(),
            tasks_launched: AtomicU64::new(0),
            tasks_running: AtomicU64::new(0),
            tasks_terminal: Mutex::new(terminal),
            updates_sent: AtomicU64::new(0),
            updates_acknowledged: AtomicU64::new(0),
            updates_pending: AtomicU64::new(0),
            registrations: AtomicU64::new(0),
            checkpoint_syncs: AtomicU64::new(0),
        }
    }

    pub fn task_launched(&self) {
        self.tasks_launched.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_tasks_running(&self, n: usize) {
        self.tasks_running.store(n as u64, Ordering::Relaxed);
    }

    pub fn task_terminal(&self, state: TaskState) {
        let mut map = self
            .tasks_terminal
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *map.entry(label(state)).or_insert(0) += 1;
    }

    pub fn updates_sent(&self, n: usize) {
        self.updates_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn update_acknowledged(&self) {
        self.updates_acknowledged.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_updates_pending(&self, n: usize) {
        self.updates_pending.store(n as u64, Ordering::Relaxed);
    }

    pub fn registered(&self) {
        self.registrations.fetch_add(1, Ordering::Relaxed);
    }

    /// One durability point of the agent's checkpoint log (a batch of checkpoints made
    /// durable together, or a compaction).
    pub fn checkpoint_synced(&self) {
        self.checkpoint_syncs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn checkpoint_syncs(&self) -> u64 {
        self.checkpoint_syncs.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        metric(
            "drover_agent_tasks_launched_total",
            "counter",
            "Tasks whose container was started.",
            load(&self.tasks_launched),
        );
        metric(
            "drover_agent_tasks_running",
            "gauge",
            "Tasks known to the agent that have not reached a terminal state.",
            load(&self.tasks_running),
        );
        metric(
            "drover_agent_status_updates_sent_total",
            "counter",
            "Status updates sent to the master, retries included.",
            load(&self.updates_sent),
        );
        metric(
            "drover_agent_status_updates_acknowledged_total",
            "counter",
            "Status updates acknowledged by their framework.",
            load(&self.updates_acknowledged),
        );
        metric(
            "drover_agent_status_updates_pending",
            "gauge",
            "Status updates checkpointed and not yet acknowledged.",
            load(&self.updates_pending),
        );
        metric(
            "drover_agent_registrations_total",
            "counter",
            "Successful (re)registrations with a master.",
            load(&self.registrations),
        );
        metric(
            "drover_agent_checkpoint_syncs_total",
            "counter",
            "Durability points of the checkpoint log: each makes a whole batch of task and status update checkpoints durable at once.",
            load(&self.checkpoint_syncs),
        );
        metric(
            "drover_agent_uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
            format!("{:.3}", self.started.elapsed().as_secs_f64()),
        );
        let name = "drover_agent_tasks_terminal_total";
        let _ = writeln!(
            out,
            "# HELP {name} Tasks that reached a terminal state, by state.\n# TYPE {name} counter"
        );
        let map = self
            .tasks_terminal
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (state, n) in map.iter() {
            let _ = writeln!(out, "{name}{{state=\"{state}\"}} {n}");
        }
        out
    }
}

fn label(state: TaskState) -> String {
    states::name(state).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric() {
        let m = Metrics::new();
        m.task_launched();
        m.task_terminal(TaskState::TaskFinished);
        m.task_terminal(TaskState::TaskFinished);
        m.set_updates_pending(4);
        let text = m.render();
        for needle in [
            "drover_agent_tasks_launched_total 1",
            "drover_agent_tasks_running 0",
            "drover_agent_tasks_terminal_total{state=\"finished\"} 2",
            "drover_agent_tasks_terminal_total{state=\"killed\"} 0",
            "drover_agent_status_updates_sent_total 0",
            "drover_agent_status_updates_acknowledged_total 0",
            "drover_agent_status_updates_pending 4",
            "drover_agent_registrations_total 0",
            "drover_agent_checkpoint_syncs_total 0",
            "# TYPE drover_agent_uptime_seconds gauge",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
