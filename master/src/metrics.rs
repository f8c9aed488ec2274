//! The master's metrics, kept in a `prometheus-client` registry and rendered in the
//! Prometheus text format at `/metrics` (HTTP) and through `Operator.GetMetrics`.
//!
//! The series names are an interface (dashboards, alerts, docs/operations.md): counters are
//! registered without their `_total` suffix because the encoder appends it (see
//! [`drover_http::prometheus`]), so `offers_sent` is served as
//! `drover_master_offers_sent_total`, exactly as documented.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Histogram bucket bounds in seconds, from 100 µs to 1 s.
const BUCKETS_SECONDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A histogram of durations in seconds.
#[derive(Clone, Debug)]
pub struct Timing(Histogram);

impl Default for Timing {
    fn default() -> Self {
        Timing(Histogram::new(BUCKETS_SECONDS))
    }
}

impl Timing {
    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

/// One gauge computed from the master's state when the metrics are read.
#[derive(Clone, Debug, PartialEq)]
pub struct Gauge {
    pub name: String,
    pub help: String,
    pub value: i64,
}

/// The gauges last computed by `Master::update_gauges`. Their set changes with the state
/// (`drover_master_tasks_<state>` exists only for states some task is in), so they are
/// encoded on each read by this collector rather than registered once.
#[derive(Debug, Default)]
struct Gauges(Mutex<Vec<Gauge>>);

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauges = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for g in gauges.iter() {
            let gauge = ConstGauge::new(g.value);
            // A collector's help goes out as given (no period appended).
            let metric = encoder.encode_descriptor(&g.name, &g.help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// Every counter and timing the master keeps.
#[derive(Debug)]
pub struct Metrics {
    pub offers_sent: Counter,
    pub offers_declined: Counter,
    pub offers_rescinded: Counter,
    pub offers_accepted: Counter,
    pub tasks_launched: Counter,
    pub tasks_error: Counter,
    pub status_updates: Counter,
    pub status_update_batches: Counter,
    pub acknowledgements: Counter,
    pub calls_refused: Counter,
    pub agents_registered: Counter,
    pub agents_unreachable: Counter,
    pub frameworks_removed: Counter,
    /// Registry snapshots installed from a leader (a lagging or new member catching up).
    pub snapshots_received: Counter,
    /// Registry snapshots streamed to other masters.
    pub snapshots_sent: Counter,
    /// Registry snapshots whose serialisation failed (the log was not compacted).
    pub snapshot_failures: Counter,
    pub allocation_cycle: Timing,
    pub raft_commit: Timing,
    gauges: Arc<Gauges>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let counter = Counter::default;
        let mut m = Metrics {
            offers_sent: counter(),
            offers_declined: counter(),
            offers_rescinded: counter(),
            offers_accepted: counter(),
            tasks_launched: counter(),
            tasks_error: counter(),
            status_updates: counter(),
            status_update_batches: counter(),
            acknowledgements: counter(),
            calls_refused: counter(),
            agents_registered: counter(),
            agents_unreachable: counter(),
            frameworks_removed: counter(),
            snapshots_received: counter(),
            snapshots_sent: counter(),
            snapshot_failures: counter(),
            allocation_cycle: Timing::default(),
            raft_commit: Timing::default(),
            gauges: Arc::default(),
            registry: Registry::default(),
        };
        // Names without `_total` and help without its final period: the crate adds both.
        let counters = [
            ("offers_sent", "Offers sent to frameworks", &m.offers_sent),
            (
                "offers_declined",
                "Offers declined by frameworks",
                &m.offers_declined,
            ),
            (
                "offers_rescinded",
                "Offers rescinded by the master",
                &m.offers_rescinded,
            ),
            (
                "offers_accepted",
                "Offers accepted by frameworks",
                &m.offers_accepted,
            ),
            (
                "tasks_launched",
                "Tasks committed for launch",
                &m.tasks_launched,
            ),
            (
                "tasks_error",
                "Tasks refused by the accept gate (TASK_ERROR)",
                &m.tasks_error,
            ),
            (
                "status_updates",
                "Status updates received from agents",
                &m.status_updates,
            ),
            (
                "status_update_batches",
                "Raft proposals carrying status updates",
                &m.status_update_batches,
            ),
            (
                "acknowledgements",
                "Acknowledgements relayed to agents",
                &m.acknowledgements,
            ),
            (
                "calls_refused",
                "Scheduler calls refused as invalid",
                &m.calls_refused,
            ),
            (
                "agent_registrations",
                "Agent registrations and re-registrations",
                &m.agents_registered,
            ),
            (
                "agents_marked_unreachable",
                "Agents marked unreachable",
                &m.agents_unreachable,
            ),
            (
                "frameworks_removed",
                "Frameworks removed",
                &m.frameworks_removed,
            ),
            (
                "raft_snapshots_received",
                "Registry snapshots installed from the leader",
                &m.snapshots_received,
            ),
            (
                "raft_snapshots_sent",
                "Registry snapshots streamed to other masters",
                &m.snapshots_sent,
            ),
            (
                "raft_snapshot_failures",
                "Registry snapshots that failed to serialise (the log was not compacted)",
                &m.snapshot_failures,
            ),
        ];
        let mut registry = Registry::default();
        for (name, help, c) in counters {
            registry.register(format!("drover_master_{name}"), help, c.clone());
        }
        registry.register(
            "drover_master_allocation_cycle_seconds",
            "Time of one allocation cycle",
            m.allocation_cycle.0.clone(),
        );
        registry.register(
            "drover_master_raft_commit_seconds",
            "Time from proposal to apply on the leader",
            m.raft_commit.0.clone(),
        );
        registry.register_collector(Box::new(m.gauges.clone()));
        m.registry = registry;
        m
    }
}

impl Metrics {
    pub fn inc(c: &Counter) {
        c.inc();
    }

    pub fn add(c: &Counter, n: u64) {
        c.inc_by(n);
    }

    pub fn observe_commit(&self, d: Duration) {
        self.raft_commit.observe(d);
    }

    /// Replaces the gauges computed from current state.
    pub fn set_gauges(&self, gauges: Vec<Gauge>) {
        *self.gauges.0.lock().unwrap_or_else(|p| p.into_inner()) = gauges;
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        drover_http::prometheus::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::inc(&m.offers_sent);
        Metrics::add(&m.offers_accepted, 3);
        m.raft_commit.observe(Duration::from_micros(300));
        m.set_gauges(vec![Gauge {
            name: "drover_master_agents".into(),
            help: "Agents.".into(),
            value: 2,
        }]);
        let text = m.render();
        for line in [
            "# HELP drover_master_offers_sent_total Offers sent to frameworks.",
            "# TYPE drover_master_offers_sent_total counter",
            "drover_master_offers_sent_total 1",
            "drover_master_offers_accepted_total 3",
            "# TYPE drover_master_raft_commit_seconds histogram",
            "drover_master_raft_commit_seconds_bucket{le=\"0.00025\"} 0",
            "drover_master_raft_commit_seconds_bucket{le=\"0.0005\"} 1",
            "drover_master_raft_commit_seconds_bucket{le=\"1\"} 1",
            "drover_master_raft_commit_seconds_bucket{le=\"+Inf\"} 1",
            "drover_master_raft_commit_seconds_sum 0.0003",
            "drover_master_raft_commit_seconds_count 1",
            "# HELP drover_master_agents Agents.",
            "# TYPE drover_master_agents gauge",
            "drover_master_agents 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    /// The names docs/operations.md lists; dashboards and alerts depend on them.
    #[test]
    fn keeps_the_documented_names() {
        let text = Metrics::default().render();
        let counters = [
            "offers_sent",
            "offers_declined",
            "offers_rescinded",
            "offers_accepted",
            "tasks_launched",
            "tasks_error",
            "status_updates",
            "status_update_batches",
            "acknowledgements",
            "calls_refused",
            "agent_registrations",
            "agents_marked_unreachable",
            "frameworks_removed",
            "raft_snapshots_received",
            "raft_snapshots_sent",
            "raft_snapshot_failures",
        ];
        for name in counters {
            let sample = format!("drover_master_{name}_total 0");
            assert!(text.lines().any(|l| l == sample), "no {sample} in\n{text}");
        }
        for name in ["allocation_cycle_seconds", "raft_commit_seconds"] {
            let sample = format!("drover_master_{name}_count 0");
            assert!(text.lines().any(|l| l == sample), "no {sample} in\n{text}");
        }
    }
}
