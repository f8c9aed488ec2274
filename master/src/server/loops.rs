//! The master's loops: each wakes on a timer (or a notification), asks the leader for
//! one step and carries out its effects.
//!
//! Housekeeping ([`housekeeping_loop`]) is driven by the leader's own deadlines: each
//! [`Effect::Wake`] it returns (an offer made, an agent heard from, a framework
//! disconnected, the next deadline after a tick) lowers the time the loop sleeps until,
//! so offer timeouts, agent liveness and failover deadlines are met when they fall due;
//! a tick every 250 ms stays as a safety net (it retries what a failed proposal left
//! undone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};

use super::Master;
use crate::leader::agents::MAX_BATCH;
use crate::leader::Effect;
use crate::registry::{Command, StatusUpdate};

/// A launch still STAGING this long after its commit is sent to its agent again.
const STAGING_RESEND_MS: u64 = 10_000;

/// How often launches still STAGING are looked for (a retry, with no deadline of its
/// own).
const STAGING_SWEEP: Duration = Duration::from_secs(5);

/// Housekeeping runs at least this often, whatever the leader asked for.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_millis(250);

/// Status-update batches in flight at once (pipelining: the next batch fills while one
/// commits).
const BATCHES_IN_FLIGHT: usize = 4;

/// Takes up to [`MAX_BATCH`] updates: `first` and whatever is already queued behind it.
fn gather(
    first: StatusUpdate,
    rx: &mut mpsc::UnboundedReceiver<StatusUpdate>,
) -> Vec<StatusUpdate> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(u) => batch.push(u),
            Err(_) => break,
        }
    }
    batch
}

impl Master {
    /// One allocation cycle (see [`crate::leader::Leader::allocate`]).
    pub fn allocate_once(self: &Arc<Self>) {
        let started = Instant::now();
        let mut offered = false;
        self.run_now(|leader, reg, now| {
            let effects = leader.allocate(reg, now);
            offered = effects.iter().any(|e| matches!(e, Effect::Event { .. }));
            effects
        });
        if offered {
            self.metrics.allocation_cycle.observe(started.elapsed());
        }
    }

    /// Proposes status updates in batches (one Raft round per batch), then the leader
    /// forwards them.
    pub async fn run_status_batcher(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<StatusUpdate>,
    ) {
        let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let batch = gather(first, &mut rx);
            let count = batch.len();
            let master = self.clone();
            tokio::spawn(async move {
                let committed = master
                    .run(|leader, _, now| Ok(vec![leader.commit_updates(now, batch)]))
                    .await;
                if let Err(e) = committed {
                    // The agents keep these updates and resend them; nothing is lost.
                    tracing::warn!(error = %e, count, "status updates not committed");
                }
                drop(permit);
            });
        }
    }
}

/// A leader stopping on purpose hands leadership to the most up-to-date voter first, so
/// that the cluster does not wait out an election timeout.
pub async fn hand_over_leadership(master: &Master) {
    let role = master.raft.role();
    let (voters, _) = master.raft.configuration();
    if !role.is_leader || voters.len() < 2 {
        return;
    }
    master.raft.transfer_leadership(0);
    let mut rx = master.raft.watch_role();
    let moved = tokio::time::timeout(
        master.config.raft_tick * (master.config.raft_election_ticks as u32) * 2,
        rx.wait_for(|r| !r.is_leader),
    )
    .await;
    match moved {
        Ok(Ok(r)) => tracing::info!(
            term = r.term,
            leader = r.leader_id,
            "leadership handed over"
        ),
        _ => tracing::warn!("leadership was not handed over in time; stopping anyway"),
    }
}

/// Follows Raft leadership: a new leader commits a no-op (so everything committed before
/// its term is applied) before serving; a node that stops leading drops all soft state.
pub async fn leadership_loop(master: Arc<Master>) {
    let mut role_rx = master.raft.watch_role();
    loop {
        let role = *role_rx.borrow_and_update();
        master.reset_soft(role.term);
        if role.is_leader {
            let mut started = master.raft.propose(&Command::Noop).await;
            if started.is_ok() && !master.config.weights.is_empty() {
                // Weights given by flag are replicated like any operator change.
                started = master
                    .raft
                    .propose(&Command::SetWeights {
                        weights: master.config.weights.clone(),
                    })
                    .await;
            }
            match started {
                Ok(_) => {
                    if master.raft.role() == role {
                        tracing::info!(term = role.term, "leading: serving frameworks and agents");
                        master
                            .run_now(|leader, reg, now| leader.start_serving(reg, role.term, now));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not start leading"),
            }
            master.allocate_now.notify_one();
        }
        if role_rx.changed().await.is_err() {
            return;
        }
    }
}

pub async fn allocation_loop(master: Arc<Master>) {
    let mut tick = tokio::time::interval(master.config.allocation_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = master.allocate_now.notified() => {
                // Let a burst of events settle into one cycle.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        master.allocate_once();
    }
}

/// Offer timeouts and filters, agent liveness, failover deadlines ([`Leader::tick`]),
/// and launches to send again. Sleeps until the earliest wake the leader asked for or
/// the end of its period, whichever comes first. A round's proposals are awaited before
/// the next round, so that one round's UNREACHABLE or removal is applied before the
/// next round looks again.
///
/// [`Leader::tick`]: crate::leader::Leader::tick
pub async fn housekeeping_loop(master: Arc<Master>) {
    let mut wake = master.wake.subscribe();
    let mut next_sweep = tokio::time::Instant::now() + STAGING_SWEEP;
    loop {
        let period_end = tokio::time::Instant::now() + HOUSEKEEPING_PERIOD;
        loop {
            // The wake is in the master's clock; it is read again whenever it moves.
            let until = match *wake.borrow_and_update() {
                Some(at_ms) => {
                    let wait = Duration::from_millis(at_ms.saturating_sub(master.now_ms()));
                    period_end.min(tokio::time::Instant::now() + wait)
                }
                None => period_end,
            };
            tokio::select! {
                () = tokio::time::sleep_until(until) => break,
                changed = wake.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
        // This round looks at every deadline that has passed and asks for the next one;
        // a wake asked for from now on is one more.
        master.wake.send_replace(None);
        if tokio::time::Instant::now() >= next_sweep {
            next_sweep = tokio::time::Instant::now() + STAGING_SWEEP;
            master.run_now(|leader, reg, now| leader.resend_staging(reg, now, STAGING_RESEND_MS));
        }
        let result = master
            .run(|leader, reg, now| Ok(leader.tick(reg, now)))
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not mark an agent unreachable or remove a framework past its failover timeout");
        }
    }
}

/// The leader's upkeep of the registry version and cluster id (see [`super::upgrade`]).
/// A loop of its own: a proposal may wait for a quorum, which must not hold up agent
/// liveness or offer expiry.
pub async fn upgrade_loop(master: Arc<Master>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        master.upgrade_registry().await;
    }
}

pub async fn heartbeat_loop(master: Arc<Master>) {
    let mut tick = tokio::time::interval(master.config.heartbeat_interval);
    loop {
        tick.tick().await;
        master.run_now(|leader, _, _| leader.heartbeats());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(n: usize) -> StatusUpdate {
        StatusUpdate {
            agent_id: drover_proto::AgentId::new("a"),
            framework_id: drover_proto::FrameworkId::new("f"),
            status: drover_proto::pb::TaskStatus {
                task_id: Some(drover_proto::TaskId::new(format!("t{n}"))),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_batch_takes_what_is_queued_up_to_the_limit_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for n in 1..MAX_BATCH + 5 {
            tx.send(update(n)).unwrap();
        }
        let batch = gather(update(0), &mut rx);
        assert_eq!(batch.len(), MAX_BATCH);
        assert_eq!(batch[0], update(0));
        assert_eq!(batch[MAX_BATCH - 1], update(MAX_BATCH - 1));
        let first = rx.try_recv().unwrap();
        let rest = gather(first, &mut rx);
        assert_eq!(rest.len(), 5, "the rest goes in the next batch");
        assert_eq!(rest[4], update(MAX_BATCH + 4));
    }
}
