//! [`run`]: the driver's event loop. It finds the leader, subscribes, hands events to the
//! scheduler one at a time, acknowledges updates, and resubscribes after any failure.

use std::time::{Duration, Instant};

use drover_proto::leader::{Backoff, Round};
use drover_proto::pb::{self, event};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::SchedulerConfig;
use crate::connection::{
    event_name, spawn_reader, subscribe_to, AbortOnDrop, AttemptError, Loss, StreamItem,
    Subscription,
};
use crate::driver::{Control, Driver, Session};
use crate::error::SdkError;
use crate::scheduler::Scheduler;

/// Events buffered between the stream reader and the scheduler. When callbacks fall
/// behind, the reader stops reading and HTTP/2 flow control slows the master down.
const EVENT_BUFFER: usize = 1024;

/// How [`run`] ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// [`Driver::stop`] was called. The framework is still registered: its tasks keep
    /// running for the failover timeout, waiting for a scheduler with the same framework id.
    Stopped,
    /// [`Driver::teardown`] succeeded: the master removed the framework and its tasks.
    TornDown,
}

/// Runs `scheduler` against the cluster until it stops, tears down, or fails.
///
/// Connects to the first reachable master of the configuration, following NotLeader
/// redirects to the leader, and subscribes. After any failure (stream closed or broken,
/// three heartbeat intervals without an event, a call answered NotLeader) it calls
/// [`Scheduler::disconnected`], then resubscribes with the same framework id, trying every
/// master with exponential backoff and jitter, and calls [`Scheduler::subscribed`] with
/// `resubscribed = true`.
///
/// Errors: [`SdkError::Subscribe`] when a master refuses the subscription for good,
/// [`SdkError::NoMaster`] when the configured reconnect timeout passes, and
/// [`SdkError::Framework`] after an ERROR event.
pub async fn run<S: Scheduler>(
    config: SchedulerConfig,
    mut scheduler: S,
) -> Result<RunOutcome, SdkError> {
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let driver = Driver::new(&config, control_tx);
    let mut runner = Runner {
        backoff: Backoff::new(config.backoff.initial, config.backoff.max),
        config,
        driver: driver.clone(),
        control: control_rx,
    };
    let result = runner.run(&mut scheduler).await;
    driver.finish();
    result
}

struct Runner {
    config: SchedulerConfig,
    driver: Driver,
    control: mpsc::UnboundedReceiver<Control>,
    /// Kept across reconnections: it is reset only by a successful subscription.
    backoff: Backoff,
}

/// Why serving one subscription ended.
enum Served {
    /// The subscription was lost: resubscribe.
    Lost(Loss),
    /// `run` must end with this result.
    Done(Result<RunOutcome, SdkError>),
}

/// What woke the event loop up.
enum Wake {
    Control(Option<Control>),
    Item(Option<StreamItem>),
}

impl Runner {
    async fn run<S: Scheduler>(&mut self, scheduler: &mut S) -> Result<RunOutcome, SdkError> {
        // Where to look first: a leader named by the last failure, else the last leader.
        let mut preferred: Option<String> = None;
        loop {
            let sub = tokio::select! {
                biased;
                ctl = self.control.recv() => match ctl {
                    Some(Control::Stop) | None => return Ok(RunOutcome::Stopped),
                    Some(Control::TornDown) => return Ok(RunOutcome::TornDown),
                    // Stale: that stream is already gone.
                    Some(Control::Resubscribe { .. }) => continue,
                },
                sub = Self::connect(&self.config, &self.driver, &mut self.backoff, preferred.clone()) => sub?,
            };
            let master = sub.master.clone();
            preferred = Some(master.clone());
            match self.serve(scheduler, sub).await {
                Served::Done(result) => return result,
                Served::Lost(loss) => {
                    if self.driver.is_tearing_down() {
                        if let Some(outcome) = self.await_teardown().await {
                            return Ok(outcome);
                        }
                    }
                    self.driver.clear_session();
                    warn!(%master, "lost the subscription: {loss}; resubscribing");
                    if let Some(leader) = loss.leader() {
                        preferred = Some(leader);
                    }
                    scheduler.disconnected(&self.driver).await;
                }
            }
        }
    }

    /// The stream ended while a teardown call was in flight (the master closes the stream
    /// of a framework it removes, possibly before answering): wait for the call's verdict
    /// instead of reporting a disconnection and resubscribing a removed framework.
    async fn await_teardown(&mut self) -> Option<RunOutcome> {
        let deadline = Instant::now() + self.config.call_timeout + Duration::from_secs(1);
        while Instant::now() < deadline {
            let tick = tokio::time::timeout(Duration::from_millis(20), self.control.recv()).await;
            match tick {
                Ok(Some(Control::TornDown)) => return Some(RunOutcome::TornDown),
                Ok(Some(Control::Stop) | None) => return Some(RunOutcome::Stopped),
                Ok(Some(Control::Resubscribe { .. })) => {}
                // `teardown` clears the flag and queues TornDown under one lock, so once
                // the flag is down the verdict (if any) is already queued.
                Err(_) if !self.driver.is_tearing_down() => {
                    return match self.control.try_recv() {
                        Ok(Control::TornDown) => Some(RunOutcome::TornDown),
                        Ok(Control::Stop) => Some(RunOutcome::Stopped),
                        _ => None,
                    };
                }
                Err(_) => {}
            }
        }
        None
    }

    /// Subscribes to the leader, trying every master in rounds with backoff in between.
    async fn connect(
        config: &SchedulerConfig,
        driver: &Driver,
        backoff: &mut Backoff,
        preferred: Option<String>,
    ) -> Result<Subscription, SdkError> {
        let started = Instant::now();
        let mut preferred = preferred;
        loop {
            let mut round = Round::new(&config.masters, preferred.take().as_deref());
            let mut failures: Vec<String> = Vec::new();
            while let Some(master) = round.next() {
                let mut framework = config.framework.clone();
                framework.id = driver.framework_id();
                let request = pb::SubscribeRequest {
                    framework_info: Some(framework),
                    suppressed_roles: driver.suppressed_roles(),
                };
                match subscribe_to(&master, request, config.connect_timeout).await {
                    Ok(sub) => {
                        backoff.reset();
                        return Ok(sub);
                    }
                    Err(AttemptError::Fatal(status)) => {
                        return Err(SdkError::Subscribe { master, status });
                    }
                    Err(AttemptError::NotLeader(leader)) => {
                        let redirect = round.follow(&master, &leader);
                        debug!(%master, %leader, ?redirect, "not the leader");
                        failures.push(format!("{master}: {}", AttemptError::NotLeader(leader)));
                    }
                    Err(e) => {
                        debug!(%master, "subscription attempt failed: {e}");
                        failures.push(format!("{master}: {e}"));
                    }
                }
            }
            let last_error = failures.last().cloned().unwrap_or_default();
            if let Some(limit) = config.reconnect_timeout {
                if started.elapsed() >= limit {
                    return Err(SdkError::NoMaster {
                        masters: config.masters.join(","),
                        waited_secs: started.elapsed().as_secs_f64(),
                        last_error,
                    });
                }
            }
            let delay = backoff.next_delay(&mut rand::thread_rng());
            warn!(
                "no leading master subscribed ({}); retrying in {:.1}s",
                failures.join("; "),
                delay.as_secs_f64()
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Serves one subscription until it is lost or `run` must end.
    async fn serve<S: Scheduler>(&mut self, scheduler: &mut S, sub: Subscription) -> Served {
        let resubscribed = self.driver.framework_id().is_some();
        let Subscription {
            client,
            stream,
            master,
            framework_id,
            stream_id,
            heartbeat,
        } = sub;
        if let Some(old) = self
            .driver
            .framework_id()
            .filter(|old| *old != framework_id)
        {
            warn!(%old, new = %framework_id, "the master assigned a different framework id");
        }
        info!(%master, %framework_id, resubscribed, "subscribed");
        self.driver.set_session(
            Session {
                client,
                stream_id: stream_id.clone(),
                master,
            },
            framework_id.clone(),
        );
        let (tx, mut rx) = mpsc::channel(EVENT_BUFFER);
        let _reader = AbortOnDrop(spawn_reader(stream, heartbeat, tx));

        scheduler
            .subscribed(&self.driver, framework_id, resubscribed)
            .await;
        if resubscribed && self.config.reconcile_on_resubscribe && self.driver.is_connected() {
            if let Err(e) = self.driver.reconcile(Vec::new()).await {
                warn!("implicit reconciliation after resubscribing failed: {e}");
            }
        }

        loop {
            let wake = tokio::select! {
                // Control first: after `stop` or `teardown`, no further event is handed out.
                biased;
                ctl = self.control.recv() => Wake::Control(ctl),
                item = rx.recv() => Wake::Item(item),
            };
            match wake {
                Wake::Control(Some(Control::Stop) | None) => {
                    return Served::Done(Ok(RunOutcome::Stopped))
                }
                Wake::Control(Some(Control::TornDown)) => {
                    return Served::Done(Ok(RunOutcome::TornDown))
                }
                Wake::Control(Some(Control::Resubscribe {
                    stream_id: s,
                    leader,
                })) => {
                    // A NotLeader answer to a call made on an older stream says nothing
                    // about this one.
                    if s == stream_id {
                        return Served::Lost(Loss::NotLeader(leader));
                    }
                }
                Wake::Item(Some(StreamItem::Event(e))) => {
                    if let Some(done) = self.dispatch(scheduler, e).await {
                        return Served::Done(done);
                    }
                }
                Wake::Item(Some(StreamItem::Lost(loss))) => return Served::Lost(loss),
                Wake::Item(None) => return Served::Lost(Loss::Ended),
            }
        }
    }

    /// Hands one event to the scheduler; `Some` when `run` must end.
    async fn dispatch<S: Scheduler>(
        &mut self,
        scheduler: &mut S,
        e: event::Event,
    ) -> Option<Result<RunOutcome, SdkError>> {
        let d = &self.driver;
        debug!(event = event_name(&e), "event");
        match e {
            event::Event::Offers(o) => scheduler.offers(d, o.offers).await,
            event::Event::Rescind(r) => {
                if let Some(id) = r.offer_id {
                    scheduler.rescinded(d, id).await;
                }
            }
            event::Event::Update(u) => {
                let Some(status) = u.status else {
                    return None; // nothing to act on
                };
                let ack = (self.config.auto_acknowledge && !status.uuid.is_empty()).then(|| {
                    (
                        status.agent_id.clone().unwrap_or_default(),
                        status.task_id.clone().unwrap_or_default(),
                        status.uuid.clone(),
                    )
                });
                scheduler.update(d, status).await;
                if let Some((agent_id, task_id, uuid)) = ack {
                    // Acknowledgements are independent of one another; sending them in
                    // the background keeps a burst of updates from queueing behind RPCs.
                    // A lost one is harmless: the agent resends the update.
                    let d = d.clone();
                    tokio::spawn(async move {
                        if let Err(e) = d.acknowledge(agent_id, task_id.clone(), uuid).await {
                            debug!(%task_id, "acknowledgement not sent: {e}");
                        }
                    });
                }
            }
            event::Event::Message(m) => {
                scheduler
                    .message(
                        d,
                        m.agent_id.unwrap_or_default(),
                        m.executor_id.unwrap_or_default(),
                        m.data,
                    )
                    .await
            }
            event::Event::Failure(f) => {
                scheduler
                    .failure(d, f.agent_id.unwrap_or_default(), f.executor_id, f.status)
                    .await
            }
            event::Event::Error(err) => {
                warn!("the master reported an error: {}", err.message);
                scheduler.error(d, err.message.clone()).await;
                return Some(Err(SdkError::Framework(err.message)));
            }
            event::Event::Subscribed(_) => warn!("ignoring a second SUBSCRIBED on one stream"),
            event::Event::Heartbeat(_) | event::Event::InverseOffers(_) => {}
        }
        None
    }
}
