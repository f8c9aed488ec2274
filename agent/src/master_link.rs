//! The agent's one long-lived stream to the leading master (`AgentMaster.Session`).
//!
//! The link owns connection management and nothing else: it dials masters in rounds
//! (following `NotLeader` hints, with the rounds, redirect limit and jittered backoff of
//! `drover_proto::leader` that the SDK and CLI use too), registers with what the agent
//! loop hands it, pings, detects silence, and fences stale leaders by term. Everything it
//! receives goes to the agent loop as a [`LinkEvent`]; everything the agent sends goes
//! through the per-session `outbound` sender, which dies with its session, so nothing
//! meant for an old session can ever be sent on a new stream before its registration.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::leader::{leader_hint, parse_master_address, Backoff, Round};
use drover_proto::pb::{self, agent_master_client::AgentMasterClient, master_message::Msg};
use drover_proto::AgentId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::error::{AgentError, IoContext};
use crate::fsutil::write_atomic;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a master may take to answer a registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Used when a master announces no usable ping interval.
const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// Silence longer than this many ping intervals means the master or the path is gone.
const SILENCE_FACTOR: u32 = 3;
/// What the link tells the agent loop.
#[derive(Debug)]
pub enum LinkEvent {
    /// A new session needs the registration message (built from the agent's state now).
    NeedRegistration(oneshot::Sender<pb::agent_message::Register>),
    /// The master accepted the registration. `outbound` carries messages to it for as
    /// long as this session lives.
    Registered {
        agent_id: AgentId,
        ping_interval: Duration,
        master: String,
        outbound: mpsc::UnboundedSender<pb::AgentMessage>,
    },
    /// A command from the master (already fenced: its term is current). Boxed: a
    /// `RunTask` is far larger than the other events.
    Message(Box<pb::MasterMessage>),
    /// A registered session ended.
    Disconnected { master: String, error: String },
}

/// Keeps the highest master term seen, persisted, and rejects older terms.
#[derive(Debug)]
pub struct TermFence {
    path: PathBuf,
    highest: u64,
}

impl TermFence {
    /// Loads the persisted term (0 when none was ever seen).
    pub fn load(path: PathBuf) -> Result<Self, AgentError> {
        let highest = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|_| {
                AgentError::Config(format!("{} does not hold a term: '{s}'", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(AgentError::io(format!("reading {}", path.display()), e)),
        };
        Ok(TermFence { path, highest })
    }

    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// True when a message of `term` may be acted on. A higher term is persisted first,
    /// so a restarted agent keeps refusing the deposed leader.
    pub fn admit(&mut self, term: u64) -> Result<bool, AgentError> {
        if term < self.highest {
            return Ok(false);
        }
        if term > self.highest {
            write_atomic(&self.path, term.to_string().as_bytes())
                .ctx(|| format!("persisting term {term} to {}", self.path.display()))?;
            self.highest = term;
        }
        Ok(true)
    }
}

struct Failure {
    error: String,
    leader_hint: Option<String>,
    registered: bool,
}

impl Failure {
    fn new(error: impl Into<String>, registered: bool) -> Self {
        Failure {
            error: error.into(),
            leader_hint: None,
            registered,
        }
    }

    fn status(status: tonic::Status, registered: bool) -> Self {
        Failure {
            leader_hint: leader_hint(&status),
            error: format!("{}: {}", status.code(), status.message()),
            registered,
        }
    }
}

/// The connection manager. See the module docs.
pub struct MasterLink {
    masters: Vec<String>,
    fence: TermFence,
    events: mpsc::Sender<LinkEvent>,
    usage: Option<UsageSource>,
}

/// Samples the usage of the agent's containers, for pings (see [`MasterLink::with_usage`]).
pub type UsageSource = Arc<dyn Fn() -> Vec<pb::TaskUsage> + Send + Sync>;

/// Usage rides on pings at most this often: the master's task view needs no more, and
/// sampling reads a few cgroup files per container.
const USAGE_INTERVAL: Duration = Duration::from_secs(1);

/// An error with its sources: tonic's transport errors say only "transport error" at
/// the top, and the reason (connection refused, DNS, …) underneath.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    let mut last = out.clone();
    while let Some(s) = source {
        let msg = s.to_string();
        // hyper wraps errors in layers that repeat the same words.
        if msg != last {
            out.push_str(": ");
            out.push_str(&msg);
        }
        last = msg;
        source = s.source();
    }
    out
}

fn uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

impl MasterLink {
    pub fn new(masters: Vec<String>, fence: TermFence, events: mpsc::Sender<LinkEvent>) -> Self {
        // Normalised as leader hints are, so a round recognises a hint naming a master of
        // the list; an address the parser refuses (such as an `https://` one) is kept as
        // given and dialled as it is.
        let masters = masters
            .into_iter()
            .map(|m| parse_master_address(&m).unwrap_or(m))
            .collect();
        MasterLink {
            masters,
            fence,
            events,
            usage: None,
        }
    }

    /// Pings carry the containers' usage from `source`, so the master's task view shows it.
    pub fn with_usage(mut self, source: UsageSource) -> Self {
        self.usage = Some(source);
        self
    }

    /// Runs until `stop` turns true or the agent loop goes away.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        // Where the next round starts: a leader named when a registered session ended.
        let mut preferred: Option<String> = None;
        while !*stop.borrow() {
            let mut round = Round::new(&self.masters, preferred.take().as_deref());
            // A registered session that ended naming the new leader (the master stepped
            // down) is followed at once; the backoff is for masters that do not answer.
            let mut pause = true;
            while let Some(addr) = round.next() {
                let failure = tokio::select! {
                    _ = stop.changed() => return,
                    f = self.session(&addr) => f,
                };
                let Some(failure) = failure else { return };
                let hint = failure.leader_hint.clone();
                if failure.registered {
                    backoff.reset();
                    let event = LinkEvent::Disconnected {
                        master: addr.clone(),
                        error: failure.error.clone(),
                    };
                    if self.events.send(event).await.is_err() {
                        return;
                    }
                    // What this round had left dates from before the session: start a
                    // fresh one, at the leader the master named if it named one.
                    tracing::warn!(master = %addr, "session ended: {}", failure.error);
                    // Compared in normal form: a master naming itself in another spelling
                    // must not send us straight back to it without a pause.
                    preferred = hint
                        .and_then(|h| drover_proto::leader::parse_master_address(&h).ok())
                        .filter(|h| *h != addr);
                    pause = preferred.is_none();
                    break;
                }
                match hint.map(|h| round.follow(&addr, &h)) {
                    Some(redirect) if redirect.followed() => {
                        tracing::info!(master = %addr, ?redirect, "not the leader; following the hint");
                    }
                    redirect => tracing::warn!(
                        master = %addr,
                        ?redirect,
                        "session failed: {}",
                        failure.error
                    ),
                }
            }
            if !pause {
                continue;
            }
            let delay = backoff.next_delay(&mut rand::thread_rng());
            tracing::debug!("next round over the masters in {} ms", delay.as_millis());
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Fences a message; a rejected one is logged and dropped.
    fn admit(&mut self, msg: &pb::MasterMessage, addr: &str) -> bool {
        match self.fence.admit(msg.term) {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(
                    master = %addr,
                    term = msg.term,
                    highest = self.fence.highest(),
                    "dropping a message from a deposed leader (older term)"
                );
                false
            }
            Err(e) => {
                // Cannot persist: refuse rather than act on a term we might forget.
                tracing::error!("{e}");
                false
            }
        }
    }

    /// One session. `None` when the agent loop is gone (shutting down).
    async fn session(&mut self, addr: &str) -> Option<Failure> {
        let endpoint = match tonic::transport::Endpoint::from_shared(uri(addr)) {
            Ok(e) => e
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20)),
            Err(e) => return Some(Failure::new(format!("bad master address: {e}"), false)),
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                return Some(Failure::new(
                    format!("cannot connect: {}", error_chain(&e)),
                    false,
                ))
            }
        };
        // The master's gate keeps every launch within this limit (see drover_proto::limits).
        let mut client = AgentMasterClient::new(channel)
            .max_decoding_message_size(drover_proto::limits::MAX_MASTER_MESSAGE_BYTES);

        let (reply_tx, reply_rx) = oneshot::channel();
        self.events
            .send(LinkEvent::NeedRegistration(reply_tx))
            .await
            .ok()?;
        let register = reply_rx.await.ok()?;
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let _ = out_tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Register(register)),
        });
        let response = match tokio::time::timeout(
            REGISTER_TIMEOUT,
            client.session(UnboundedReceiverStream::new(out_rx)),
        )
        .await
        {
            Err(_) => return Some(Failure::new("the master did not answer", false)),
            Ok(Err(status)) => return Some(Failure::status(status, false)),
            Ok(Ok(r)) => r,
        };
        let mut inbound = response.into_inner();

        let deadline = Instant::now() + REGISTER_TIMEOUT;
        let registered = loop {
            let msg = match tokio::time::timeout_at(deadline, inbound.message()).await {
                Err(_) => return Some(Failure::new("no answer to the registration", false)),
                Ok(Err(status)) => return Some(Failure::status(status, false)),
                Ok(Ok(None)) => return Some(Failure::new("the master closed the stream", false)),
                Ok(Ok(Some(msg))) => msg,
            };
            if !self.admit(&msg, addr) {
                return Some(Failure::new("the master answered with a stale term", false));
            }
            match msg.msg {
                Some(Msg::Registered(r)) => break r,
                Some(Msg::Shutdown(_)) => {
                    self.events
                        .send(LinkEvent::Message(Box::new(msg)))
                        .await
                        .ok()?;
                    return Some(Failure::new("shut down by the master", false));
                }
                other => tracing::debug!("ignoring {other:?} before registration"),
            }
        };
        let agent_id = registered.agent_id.unwrap_or_default();
        if agent_id.is_empty() {
            return Some(Failure::new(
                "the master registered us without an agent id",
                false,
            ));
        }
        let secs = registered.ping_interval_seconds;
        let ping = if secs.is_finite() && secs > 0.0 {
            Duration::from_secs_f64(secs.clamp(0.01, 3600.0))
        } else {
            DEFAULT_PING_INTERVAL
        };
        tracing::info!(master = %addr, agent_id = %agent_id, ?ping, "registered");
        self.events
            .send(LinkEvent::Registered {
                agent_id,
                ping_interval: ping,
                master: addr.to_string(),
                outbound: out_tx.clone(),
            })
            .await
            .ok()?;

        let silence = ping * SILENCE_FACTOR;
        let mut ticker = tokio::time::interval_at(Instant::now() + ping, ping);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut usage_sent: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let mut usage = Vec::new();
                    if let Some(source) = &self.usage {
                        if usage_sent.is_none_or(|t| t.elapsed() >= USAGE_INTERVAL) {
                            usage = source();
                            usage_sent = Some(Instant::now());
                        }
                    }
                    let ping = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Ping(pb::agent_message::Ping { usage })) };
                    if out_tx.send(ping).is_err() {
                        return Some(Failure::new("the stream's sender closed", true));
                    }
                }
                r = tokio::time::timeout_at(last_heard + silence, inbound.message()) => {
                    let msg = match r {
                        Err(_) => return Some(Failure::new(
                            format!("nothing from the master for {} ms", silence.as_millis()),
                            true,
                        )),
                        Ok(Err(status)) => return Some(Failure::status(status, true)),
                        Ok(Ok(None)) => return Some(Failure::new("the master closed the stream", true)),
                        Ok(Ok(Some(msg))) => msg,
                    };
                    last_heard = Instant::now();
                    if !self.admit(&msg, addr) {
                        continue;
                    }
                    match &msg.msg {
                        Some(Msg::Pong(_)) | None => {}
                        Some(Msg::Registered(_)) => tracing::debug!("ignoring a repeated registration answer"),
                        Some(_) => {
                            self.events.send(LinkEvent::Message(Box::new(msg))).await.ok()?;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_rejects_older_terms_and_persists_the_highest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("term");
        let mut f = TermFence::load(path.clone()).unwrap();
        assert!(f.admit(0).unwrap());
        assert!(f.admit(5).unwrap());
        assert!(f.admit(5).unwrap());
        assert!(!f.admit(4).unwrap());
        let mut again = TermFence::load(path).unwrap();
        assert_eq!(again.highest(), 5);
        assert!(!again.admit(3).unwrap());
        assert!(again.admit(6).unwrap());
    }

    #[test]
    fn addresses_become_uris() {
        assert_eq!(uri("127.0.0.1:5050"), "http://127.0.0.1:5050");
        assert_eq!(uri("https://m:1"), "https://m:1");
    }
}
