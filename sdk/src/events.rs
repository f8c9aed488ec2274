//! The stream form of the SDK: [`subscribe`] hands back a [`Driver`] and [`Events`], a
//! `futures::Stream` of [`Event`]s; the framework is a plain loop over them.
//!
//! Everything the driver does by itself stays here, out of the framework's loop: finding
//! the leader (following NotLeader redirects), subscribing and resubscribing with the same
//! framework id after any loss, watching heartbeats, acknowledging updates, implicit
//! reconciliation after a resubscription, and telling a teardown's closed stream from a
//! lost one. [`crate::run`] is a loop over these events that calls the
//! [`crate::Scheduler`] callbacks.
//!
//! The stream is lazy: nothing connects until it is first polled, and it advances only
//! while polled. Asking for the next event is what says the previous one was handled; that
//! is when an update is acknowledged and when the implicit reconciliation after a
//! resubscription is sent. Its last item is always [`Event::Ended`], after which it yields
//! `None`.
//!
//! A framework that launches one task, stops on Ctrl-C and ticks beside its events, with
//! all its state in one loop (the same example is in `docs/sdk.md`):
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use drover_sdk::proto::states;
//! use drover_sdk::{subscribe, Event, SchedulerConfig, StreamExt as _, TaskBuilder, TaskRequest};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), drover_sdk::SdkError> {
//!     let config = SchedulerConfig::builder("once").build()?;
//!     let (driver, mut events) = subscribe(config); // nothing connects until the first poll
//!     let (mut launched, mut stopping) = (false, false);
//!     let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
//!     let mut tick = tokio::time::interval(Duration::from_secs(10));
//!     loop {
//!         tokio::select! {
//!             event = events.next() => match event {
//!                 Some(Event::Offers(offers)) => {
//!                     let mut ids: Vec<_> = offers.iter().filter_map(|o| o.id.clone()).collect();
//!                     if !launched {
//!                         let task = TaskBuilder::new("hello")
//!                             .shell("echo hello")
//!                             .offer(&offers[0])
//!                             .resources(&TaskRequest::new(0.1, 32.0).resources())
//!                             .build();
//!                         launched = driver.launch(vec![ids.remove(0)], vec![task]).await.is_ok();
//!                     }
//!                     let _ = driver.decline(ids, Some(60.0)).await;
//!                 }
//!                 Some(Event::Update(status)) if states::is_terminal(status.state()) => {
//!                     println!("hello is {}", states::name(status.state()));
//!                     let _ = driver.teardown().await; // the stream ends: Ended(Ok(TornDown))
//!                 }
//!                 Some(Event::Ended(outcome)) => {
//!                     println!("done: {:?}", outcome?);
//!                     return Ok(());
//!                 }
//!                 Some(_) => {} // Subscribed, Disconnected, Rescind, Message, Failure, Error
//!                 None => return Ok(()),
//!             },
//!             _ = tick.tick() => println!("launched: {launched}"),
//!             _ = &mut ctrl_c, if !stopping => {
//!                 stopping = true;
//!                 driver.stop(); // the stream ends: Ended(Ok(Stopped))
//!             }
//!         }
//!     }
//! }
//! ```

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use drover_proto::leader::{Backoff, Round};
use drover_proto::pb::{self, event};
use drover_proto::{AgentId, ExecutorId, FrameworkId, OfferId, TaskId};
use futures::Stream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::SchedulerConfig;
use crate::connection::{
    event_name, spawn_reader, subscribe_to, AbortOnDrop, AttemptError, Loss, StreamItem,
    Subscription,
};
use crate::driver::{Control, Driver, Session};
use crate::error::SdkError;
use crate::runner::RunOutcome;

/// Events buffered between the stream reader and the framework. When the framework falls
/// behind, the reader stops reading and HTTP/2 flow control slows the master down.
const EVENT_BUFFER: usize = 1024;

/// What a framework sees, one item of [`Events`]. The variants match the
/// [`crate::Scheduler`] callbacks, plus [`Event::Ended`].
#[derive(Debug)]
pub enum Event {
    /// The framework is subscribed. `resubscribed` is true when it reuses an existing
    /// framework id: after a lost connection, a master failover, or a scheduler restart
    /// configured with [`crate::SchedulerConfigBuilder::framework_id`]. After a
    /// resubscription the driver (by default) asks for implicit reconciliation when the
    /// next event is asked for, so UPDATE events describing the tasks' current states
    /// follow.
    Subscribed {
        /// The framework's id, assigned by the master on the first subscription.
        framework_id: FrameworkId,
        /// Whether an existing framework id was reused.
        resubscribed: bool,
    },
    /// New resource offers: accept them ([`Driver::launch`], [`Driver::accept`]) or
    /// decline them ([`Driver::decline`]).
    Offers(Vec<pb::Offer>),
    /// The master withdrew an offer (its agent went away, or it timed out).
    Rescind(OfferId),
    /// A task changed state. Unless auto-acknowledgement is off, the driver acknowledges
    /// the update (when it carries a uuid) once the next event is asked for, that is once
    /// this one was handled. Duplicates happen: reconciliation answers repeat known states.
    Update(pb::TaskStatus),
    /// A custom executor sent the framework a message.
    Message {
        /// The agent the executor runs on.
        agent_id: AgentId,
        /// The executor that sent it.
        executor_id: ExecutorId,
        /// What it sent.
        data: Vec<u8>,
    },
    /// An agent was lost (no `executor_id`) or a custom executor exited with `status`.
    Failure {
        /// The agent.
        agent_id: AgentId,
        /// The executor that exited, if this is about one.
        executor_id: Option<ExecutorId>,
        /// The executor's exit status, when known.
        status: Option<i32>,
    },
    /// The master reported an unrecoverable error for this framework (for example, it was
    /// removed after its failover timeout). [`Event::Ended`] with
    /// [`SdkError::Framework`] follows.
    Error(String),
    /// The event stream was lost. The driver reconnects when the next event is asked for;
    /// calls fail with [`SdkError::Disconnected`] until the next [`Event::Subscribed`].
    /// Offers received before are likely invalid now.
    Disconnected,
    /// The last item: why the stream ended. `Ok(Stopped)` after [`Driver::stop`],
    /// `Ok(TornDown)` after a successful [`Driver::teardown`],
    /// [`SdkError::Subscribe`] when a master refused the subscription for good,
    /// [`SdkError::NoMaster`] when the configured reconnect timeout passed, and
    /// [`SdkError::Framework`] after [`Event::Error`]. Every [`Driver`] call fails with
    /// [`SdkError::Stopped`] from here on.
    Ended(Result<RunOutcome, SdkError>),
}

/// The events of one framework, in order: a `futures::Stream<Item = Event>` ending with
/// [`Event::Ended`]. Made by [`subscribe`].
///
/// Cancel-safe: a `next()` dropped before it completed (the losing branch of a
/// `tokio::select!`) loses no event; the next call picks up where it stopped. Dropping
/// `Events` ends the framework's connection like [`Driver::stop`]: the framework stays
/// registered for its failover timeout, and driver calls fail with [`SdkError::Stopped`].
pub struct Events {
    inner: Pin<Box<dyn Stream<Item = Event> + Send>>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Starts a framework: the [`Driver`] to make calls with, and the [`Events`] to loop over.
///
/// Nothing connects until `events` is first polled; from then on the stream finds the
/// leading master (following NotLeader redirects), subscribes, and after any failure
/// (stream closed or broken, three heartbeat intervals without an event, a call answered
/// NotLeader) yields [`Event::Disconnected`] and resubscribes with the same framework id,
/// trying every master with exponential backoff and jitter.
///
/// The driver exists before the first subscription. Until the first
/// [`Event::Subscribed`] (as while reconnecting) its calls are not queued: they fail at
/// once with [`SdkError::Disconnected`]. [`Driver::stop`] and [`Driver::teardown`] work at
/// any time and end the stream; see each for what it does before the first subscription.
pub fn subscribe(config: SchedulerConfig) -> (Driver, Events) {
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let driver = Driver::new(&config, control_tx);
    let engine = Engine {
        backoff: Backoff::new(config.backoff.initial, config.backoff.max),
        config,
        driver: driver.clone(),
        control: control_rx,
        preferred: None,
        live: None,
        owed: None,
        ended: false,
    };
    let inner = futures::stream::unfold(engine, |mut engine| async move {
        let event = engine.next().await?;
        Some((event, engine))
    });
    (
        driver,
        Events {
            inner: Box::pin(inner),
        },
    )
}

/// The subscription being served.
struct Live {
    stream_id: String,
    master: String,
    items: mpsc::Receiver<StreamItem>,
    /// Aborts the stream reader when the subscription is dropped.
    _reader: AbortOnDrop,
}

/// Work owed once the framework asks for the next event (it handled the previous one).
enum Owed {
    /// Acknowledge the update just handed out.
    Acknowledge {
        agent_id: AgentId,
        task_id: TaskId,
        uuid: Vec<u8>,
    },
    /// Ask for implicit reconciliation after a resubscription.
    Reconcile,
    /// End the stream with this outcome (after an ERROR event).
    End(Result<RunOutcome, SdkError>),
}

/// The state machine behind [`Events`]: one call of [`Engine::next`] per event.
struct Engine {
    config: SchedulerConfig,
    driver: Driver,
    control: mpsc::UnboundedReceiver<Control>,
    /// Kept across reconnections: it is reset only by a successful subscription.
    backoff: Backoff,
    /// Where to look first: a leader named by the last failure, else the last leader.
    preferred: Option<String>,
    live: Option<Live>,
    owed: Option<Owed>,
    ended: bool,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Nobody reads the events any more: calls can only fail from here on.
        self.driver.finish();
    }
}

/// What woke the event loop up while it served a subscription.
enum Wake {
    Control(Option<Control>),
    Item(Option<StreamItem>),
}

impl Engine {
    /// The next event, or `None` after [`Event::Ended`].
    async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        match self.owed.take() {
            None => {}
            Some(Owed::End(result)) => return Some(self.end(result)),
            Some(Owed::Acknowledge {
                agent_id,
                task_id,
                uuid,
            }) => {
                // Acknowledgements are independent of one another; sending them in the
                // background keeps a burst of updates from queueing behind RPCs. A lost
                // one is harmless: the agent resends the update.
                let d = self.driver.clone();
                tokio::spawn(async move {
                    if let Err(e) = d.acknowledge(agent_id, task_id.clone(), uuid).await {
                        debug!(%task_id, "acknowledgement not sent: {e}");
                    }
                });
            }
            Some(Owed::Reconcile) if self.driver.is_connected() => {
                if let Err(e) = self.driver.reconcile(Vec::new()).await {
                    warn!("implicit reconciliation after resubscribing failed: {e}");
                }
            }
            // No session any more (a teardown succeeded meanwhile): nothing to reconcile.
            Some(Owed::Reconcile) => {}
        }
        loop {
            let step = match self.live.as_mut() {
                None => self.subscribe().await,
                Some(live) => {
                    let wake = tokio::select! {
                        // Control first: after `stop` or `teardown`, no further event is
                        // handed out.
                        biased;
                        ctl = self.control.recv() => Wake::Control(ctl),
                        item = live.items.recv() => Wake::Item(item),
                    };
                    self.serve(wake).await
                }
            };
            if let Some(event) = step {
                return Some(event);
            }
        }
    }

    /// The last event: ends the stream and the driver.
    fn end(&mut self, result: Result<RunOutcome, SdkError>) -> Event {
        self.ended = true;
        self.live = None;
        self.driver.finish();
        Event::Ended(result)
    }

    /// Subscribes (or learns that the stream must end); `None` to go round again.
    async fn subscribe(&mut self) -> Option<Event> {
        let preferred = self.preferred.clone();
        let woke = tokio::select! {
            biased;
            ctl = self.control.recv() => Err(ctl),
            sub = connect(&self.config, &self.driver, &mut self.backoff, preferred) => Ok(sub),
        };
        let sub = match woke {
            Err(Some(Control::Stop) | None) => return Some(self.end(Ok(RunOutcome::Stopped))),
            Err(Some(Control::TornDown)) => return Some(self.end(Ok(RunOutcome::TornDown))),
            // Stale: that stream is already gone.
            Err(Some(Control::Resubscribe { .. })) => return None,
            Ok(Err(e)) => return Some(self.end(Err(e))),
            Ok(Ok(sub)) => sub,
        };
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
        self.preferred = Some(master.clone());
        self.driver.set_session(
            Session {
                client,
                stream_id: stream_id.clone(),
                master: master.clone(),
            },
            framework_id.clone(),
        );
        let (tx, items) = mpsc::channel(EVENT_BUFFER);
        self.live = Some(Live {
            stream_id,
            master,
            items,
            _reader: AbortOnDrop(spawn_reader(stream, heartbeat, tx)),
        });
        if resubscribed && self.config.reconcile_on_resubscribe {
            self.owed = Some(Owed::Reconcile);
        }
        Some(Event::Subscribed {
            framework_id,
            resubscribed,
        })
    }

    /// Acts on what woke the loop up while serving a subscription; `None` to go on.
    async fn serve(&mut self, wake: Wake) -> Option<Event> {
        match wake {
            Wake::Control(Some(Control::Stop) | None) => Some(self.end(Ok(RunOutcome::Stopped))),
            Wake::Control(Some(Control::TornDown)) => Some(self.end(Ok(RunOutcome::TornDown))),
            Wake::Control(Some(Control::Resubscribe { stream_id, leader })) => {
                // A NotLeader answer to a call made on an older stream says nothing about
                // this one.
                let current = self.live.as_ref().map(|l| l.stream_id.as_str());
                if current == Some(stream_id.as_str()) {
                    self.lost(Loss::NotLeader(leader)).await
                } else {
                    None
                }
            }
            Wake::Item(Some(StreamItem::Event(e))) => self.translate(e),
            Wake::Item(Some(StreamItem::Lost(loss))) => self.lost(loss).await,
            Wake::Item(None) => self.lost(Loss::Ended).await,
        }
    }

    /// The subscription is gone: report a disconnection, or end the stream when a
    /// teardown closed it.
    async fn lost(&mut self, loss: Loss) -> Option<Event> {
        let master = self.live.take().map(|l| l.master).unwrap_or_default();
        if self.driver.is_tearing_down() {
            if let Some(outcome) = self.await_teardown().await {
                return Some(self.end(Ok(outcome)));
            }
        }
        self.driver.clear_session();
        warn!(%master, "lost the subscription: {loss}; resubscribing");
        if let Some(leader) = loss.leader() {
            self.preferred = Some(leader);
        }
        Some(Event::Disconnected)
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

    /// Turns a master's event into the framework's; `None` for what it need not see.
    fn translate(&mut self, e: event::Event) -> Option<Event> {
        debug!(event = event_name(&e), "event");
        match e {
            event::Event::Offers(o) => Some(Event::Offers(o.offers)),
            event::Event::Rescind(r) => r.offer_id.map(Event::Rescind),
            event::Event::Update(u) => {
                let status = u.status?; // nothing to act on
                if self.config.auto_acknowledge && !status.uuid.is_empty() {
                    self.owed = Some(Owed::Acknowledge {
                        agent_id: status.agent_id.clone().unwrap_or_default(),
                        task_id: status.task_id.clone().unwrap_or_default(),
                        uuid: status.uuid.clone(),
                    });
                }
                Some(Event::Update(status))
            }
            event::Event::Message(m) => Some(Event::Message {
                agent_id: m.agent_id.unwrap_or_default(),
                executor_id: m.executor_id.unwrap_or_default(),
                data: m.data,
            }),
            event::Event::Failure(f) => Some(Event::Failure {
                agent_id: f.agent_id.unwrap_or_default(),
                executor_id: f.executor_id,
                status: f.status,
            }),
            event::Event::Error(err) => {
                warn!("the master reported an error: {}", err.message);
                self.owed = Some(Owed::End(Err(SdkError::Framework(err.message.clone()))));
                Some(Event::Error(err.message))
            }
            event::Event::Subscribed(_) => {
                warn!("ignoring a second SUBSCRIBED on one stream");
                None
            }
            event::Event::Heartbeat(_) | event::Event::InverseOffers(_) => None,
        }
    }
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

#[cfg(test)]
mod tests {
    /// The stream-form example of `docs/sdk.md` is this module's doctest, so it compiles.
    #[test]
    fn the_guide_shows_the_compiled_example() {
        let guide = include_str!("../../docs/sdk.md");
        let start = guide
            .find("```rust,no_run\nuse std::time::Duration;")
            .expect("the stream form example in docs/sdk.md");
        let body = &guide[start + "```rust,no_run\n".len()..];
        let example = &body[..body.find("```\n").expect("the example's end")];
        let module = include_str!("events.rs");
        let doctest: String = module
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.strip_prefix("//! ").unwrap_or("").to_string() + "\n")
            .collect();
        assert!(
            doctest.contains(example),
            "docs/sdk.md's stream example differs from the doctest in sdk/src/events.rs"
        );
    }
}
