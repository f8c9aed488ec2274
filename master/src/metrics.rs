//! The master's metrics, rendered in the Prometheus text format at `/metrics` (HTTP) and
//! through `Operator.GetMetrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// A running summary of durations: count, sum, max and a fixed-bucket histogram.
#[derive(Default)]
pub struct Timing {
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS_US.len()],
}

/// Histogram bucket bounds in microseconds.
const BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

impl Timing {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
        for (i, b) in BUCKETS_US.iter().enumerate() {
            if us <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (i, b) in BUCKETS_US.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {}",
                *b as f64 / 1e6,
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Every counter and timing the master keeps.
#[derive(Default)]
pub struct Metrics {
    pub offers_sent: AtomicU64,
    pub offers_declined: AtomicU64,
    pub offers_rescinded: AtomicU64,
    pub offers_accepted: AtomicU64,
    pub tasks_launched: AtomicU64,
    pub tasks_error: AtomicU64,
    pub status_updates: AtomicU64,
    pub status_update_batches: AtomicU64,
    pub acknowledgements: AtomicU64,
    pub calls_refused: AtomicU64,
    pub agents_registered: AtomicU64,
    pub agents_unreachable: AtomicU64,
    pub frameworks_removed: AtomicU64,
    /// Registry snapshots installed from a leader (a lagging or new member catching up).
    pub snapshots_received: AtomicU64,
    /// Registry snapshots streamed to other masters.
    pub snapshots_sent: AtomicU64,
    pub allocation_cycle: Timing,
    pub raft_commit: Timing,
    gauges: Mutex<Vec<(String, String, f64)>>,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn observe_commit(&self, d: Duration) {
        self.raft_commit.observe(d);
    }

    /// Replaces the gauges (name, help, value) computed from current state.
    pub fn set_gauges(&self, gauges: Vec<(String, String, f64)>) {
        *self.gauges.lock().expect("gauges lock") = gauges;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &AtomicU64); 15] = [
            (
                "drover_master_offers_sent_total",
                "Offers sent to frameworks.",
                &self.offers_sent,
            ),
            (
                "drover_master_offers_declined_total",
                "Offers declined by frameworks.",
                &self.offers_declined,
            ),
            (
                "drover_master_offers_rescinded_total",
                "Offers rescinded by the master.",
                &self.offers_rescinded,
            ),
            (
                "drover_master_offers_accepted_total",
                "Offers accepted by frameworks.",
                &self.offers_accepted,
            ),
            (
                "drover_master_tasks_launched_total",
                "Tasks committed for launch.",
                &self.tasks_launched,
            ),
            (
                "drover_master_tasks_error_total",
                "Tasks refused by the accept gate (TASK_ERROR).",
                &self.tasks_error,
            ),
            (
                "drover_master_status_updates_total",
                "Status updates received from agents.",
                &self.status_updates,
            ),
            (
                "drover_master_status_update_batches_total",
                "Raft proposals carrying status updates.",
                &self.status_update_batches,
            ),
            (
                "drover_master_acknowledgements_total",
                "Acknowledgements relayed to agents.",
                &self.acknowledgements,
            ),
            (
                "drover_master_calls_refused_total",
                "Scheduler calls refused as invalid.",
                &self.calls_refused,
            ),
            (
                "drover_master_agent_registrations_total",
                "Agent registrations and re-registrations.",
                &self.agents_registered,
            ),
            (
                "drover_master_agents_marked_unreachable_total",
                "Agents marked unreachable.",
                &self.agents_unreachable,
            ),
            (
                "drover_master_frameworks_removed_total",
                "Frameworks removed.",
                &self.frameworks_removed,
            ),
            (
                "drover_master_raft_snapshots_received_total",
                "Registry snapshots installed from the leader.",
                &self.snapshots_received,
            ),
            (
                "drover_master_raft_snapshots_sent_total",
                "Registry snapshots streamed to other masters.",
                &self.snapshots_sent,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Relaxed)
            );
        }
        self.allocation_cycle.render(
            &mut out,
            "drover_master_allocation_cycle_seconds",
            "Time of one allocation cycle.",
        );
        self.raft_commit.render(
            &mut out,
            "drover_master_raft_commit_seconds",
            "Time from proposal to apply on the leader.",
        );
        for (name, help, v) in self.gauges.lock().expect("gauges lock").iter() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::inc(&m.offers_sent);
        m.raft_commit.observe(Duration::from_micros(300));
        m.set_gauges(vec![("drover_master_agents".into(), "Agents.".into(), 2.0)]);
        let text = m.render();
        assert!(text.contains("drover_master_offers_sent_total 1"));
        assert!(text.contains("drover_master_raft_commit_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("drover_master_raft_commit_seconds_count 1"));
        assert!(text.contains("drover_master_agents 2"));
    }
}
