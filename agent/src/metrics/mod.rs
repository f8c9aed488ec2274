//! The agent's counters and gauges, kept in a `prometheus-client` registry and rendered in
//! the Prometheus text format by [`http`] at `GET /metrics`.
//!
//! The series names are an interface (dashboards, alerts, docs/operations.md): counters are
//! registered without their `_total` suffix because the encoder appends it (see
//! [`drover_http::prometheus`]), so `tasks_launched` is served as
//! `drover_agent_tasks_launched_total`, exactly as documented.

pub mod http;

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

/// The label of `drover_agent_tasks_terminal_total`: the state, lower case (`finished`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TerminalState {
    state: String,
}

/// All metrics; shared between the agent loop (writer) and the HTTP endpoint (reader).
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    tasks_launched: Counter,
    tasks_running: Gauge,
    tasks_terminal: Family<TerminalState, Counter>,
    updates_sent: Counter,
    updates_acknowledged: Counter,
    updates_pending: Gauge,
    registrations: Counter,
    checkpoint_syncs: Counter,
    /// Set from `started` when the metrics are read.
    uptime: Gauge<f64, std::sync::atomic::AtomicU64>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            started: Instant::now(),
            tasks_launched: Counter::default(),
            tasks_running: Gauge::default(),
            tasks_terminal: Family::default(),
            updates_sent: Counter::default(),
            updates_acknowledged: Counter::default(),
            updates_pending: Gauge::default(),
            registrations: Counter::default(),
            checkpoint_syncs: Counter::default(),
            uptime: Gauge::default(),
            registry: Registry::default(),
        };
        for state in TERMINAL_STATES {
            // Creates the series at 0; the guard is only a read lock on the family.
            drop(m.tasks_terminal.get_or_create(&terminal(state)));
        }
        // Names without `_total` and help without its final period: the crate adds both.
        let mut registry = Registry::default();
        registry.register(
            "drover_agent_tasks_launched",
            "Tasks whose container was started",
            m.tasks_launched.clone(),
        );
        registry.register(
            "drover_agent_tasks_running",
            "Tasks known to the agent that have not reached a terminal state",
            m.tasks_running.clone(),
        );
        registry.register(
            "drover_agent_status_updates_sent",
            "Status updates sent to the master, retries included",
            m.updates_sent.clone(),
        );
        registry.register(
            "drover_agent_status_updates_acknowledged",
            "Status updates acknowledged by their framework",
            m.updates_acknowledged.clone(),
        );
        registry.register(
            "drover_agent_status_updates_pending",
            "Status updates checkpointed and not yet acknowledged",
            m.updates_pending.clone(),
        );
        registry.register(
            "drover_agent_registrations",
            "Successful (re)registrations with a master",
            m.registrations.clone(),
        );
        registry.register(
            "drover_agent_checkpoint_syncs",
            "Durability points of the checkpoint log: each makes a whole batch of task and \
             status update checkpoints durable at once",
            m.checkpoint_syncs.clone(),
        );
        registry.register(
            "drover_agent_uptime_seconds",
            "Seconds since the agent started",
            m.uptime.clone(),
        );
        registry.register(
            "drover_agent_tasks_terminal",
            "Tasks that reached a terminal state, by state",
            m.tasks_terminal.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn task_launched(&self) {
        self.tasks_launched.inc();
    }

    pub fn set_tasks_running(&self, n: usize) {
        self.tasks_running.set(gauge_value(n));
    }

    pub fn task_terminal(&self, state: TaskState) {
        self.tasks_terminal.get_or_create(&terminal(state)).inc();
    }

    pub fn updates_sent(&self, n: usize) {
        self.updates_sent.inc_by(n as u64);
    }

    pub fn update_acknowledged(&self) {
        self.updates_acknowledged.inc();
    }

    pub fn set_updates_pending(&self, n: usize) {
        self.updates_pending.set(gauge_value(n));
    }

    pub fn registered(&self) {
        self.registrations.inc();
    }

    /// One durability point of the agent's checkpoint log (a batch of checkpoints made
    /// durable together, or a compaction).
    pub fn checkpoint_synced(&self) {
        self.checkpoint_syncs.inc();
    }

    /// Status updates handed to a master's stream so far.
    pub fn updates_sent_count(&self) -> u64 {
        self.updates_sent.get()
    }

    pub fn checkpoint_syncs(&self) -> u64 {
        self.checkpoint_syncs.get()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        drover_http::prometheus::render(&self.registry)
    }
}

fn terminal(state: TaskState) -> TerminalState {
    TerminalState {
        state: states::name(state).to_ascii_lowercase(),
    }
}

/// Gauges are signed; a count never comes near the limit, and saturating keeps it honest.
fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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
            "# HELP drover_agent_tasks_launched_total Tasks whose container was started.",
            "# TYPE drover_agent_tasks_terminal_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == needle),
                "missing {needle} in\n{text}"
            );
        }
    }
}
