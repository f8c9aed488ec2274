//! One subscription attempt to one master, and the task that reads its event stream and
//! watches heartbeats.

use std::fmt;
use std::time::Duration;

use drover_proto::leader::leader_hint;
use drover_proto::pb::{self, event, scheduler_client::SchedulerClient};
use drover_proto::FrameworkId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

/// Heartbeat interval assumed when SUBSCRIBED carries none (Mesos's default).
pub(crate) const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// Missed heartbeats after which the stream counts as lost.
pub(crate) const MISSED_HEARTBEATS: u32 = 3;

/// How long a master may take between accepting the connection and sending SUBSCRIBED.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest event accepted (the link's limit, shared with the master). Offers for thousands
/// of agents exceed tonic's 4 MiB default.
const MAX_EVENT_BYTES: usize = drover_proto::limits::MAX_SCHEDULER_EVENT_BYTES;

/// A subscription that received its SUBSCRIBED event.
pub(crate) struct Subscription {
    pub(crate) client: SchedulerClient<Channel>,
    pub(crate) stream: Streaming<pb::Event>,
    pub(crate) master: String,
    pub(crate) framework_id: FrameworkId,
    pub(crate) stream_id: String,
    pub(crate) heartbeat: Duration,
}

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// No connection could be made.
    Unreachable(String),
    /// The master is a follower; the leader's address, empty when unknown.
    NotLeader(String),
    /// A failure that another attempt may not meet (timeouts, UNAVAILABLE, …).
    Retry(Box<tonic::Status>),
    /// A refusal no retry can fix: the subscription itself is wrong.
    Fatal(Box<tonic::Status>),
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Unreachable(m) => write!(f, "unreachable: {m}"),
            AttemptError::NotLeader(l) if l.is_empty() => {
                f.write_str("not the leader; no leader known yet")
            }
            AttemptError::NotLeader(l) => write!(f, "not the leader; leader is {l}"),
            AttemptError::Retry(s) | AttemptError::Fatal(s) => {
                write!(f, "{:?}: {}", s.code(), s.message())
            }
        }
    }
}

/// Sorts a failed status into what the driver should do about it.
pub(crate) fn classify(status: tonic::Status) -> AttemptError {
    use tonic::Code;
    if let Some(leader) = leader_hint(&status) {
        return AttemptError::NotLeader(leader);
    }
    match status.code() {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::Unimplemented
        | Code::OutOfRange => AttemptError::Fatal(Box::new(status)),
        // A request over the master's message-size limit is refused the same way again.
        Code::ResourceExhausted if drover_proto::limits::exceeded_limit(&status).is_some() => {
            AttemptError::Fatal(Box::new(status))
        }
        _ => AttemptError::Retry(Box::new(status)),
    }
}

/// Connects to `master` (a `host:port`), opens Subscribe and waits for SUBSCRIBED.
pub(crate) async fn subscribe_to(
    master: &str,
    request: pb::SubscribeRequest,
    connect_timeout: Duration,
) -> Result<Subscription, AttemptError> {
    let endpoint = Endpoint::from_shared(format!("http://{master}"))
        .map_err(|e| AttemptError::Unreachable(format!("bad address: {e}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // Keepalive pings notice a dead peer even when no call is in flight.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| AttemptError::Unreachable(error_chain(&e)))?;
    let mut client = SchedulerClient::new(channel).max_decoding_message_size(MAX_EVENT_BYTES);
    let subscribed = async {
        let mut stream = client
            .subscribe(request)
            .await
            .map_err(classify)?
            .into_inner();
        match stream.message().await.map_err(classify)? {
            Some(pb::Event {
                event: Some(event::Event::Subscribed(s)),
            }) => Ok((stream, s)),
            Some(other) => Err(AttemptError::Retry(Box::new(tonic::Status::internal(
                format!(
                    "the first event was not SUBSCRIBED but {:?}",
                    other.event.as_ref().map(event_name)
                ),
            )))),
            None => Err(AttemptError::Retry(Box::new(tonic::Status::unavailable(
                "the stream ended before SUBSCRIBED",
            )))),
        }
    };
    let (stream, s) = tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribed)
        .await
        .map_err(|_| {
            AttemptError::Retry(Box::new(tonic::Status::deadline_exceeded(format!(
                "no SUBSCRIBED within {SUBSCRIBE_TIMEOUT:?}"
            ))))
        })??;
    let framework_id = s.framework_id.filter(|id| !id.is_empty()).ok_or_else(|| {
        AttemptError::Retry(Box::new(tonic::Status::internal(
            "SUBSCRIBED carries no framework id",
        )))
    })?;
    Ok(Subscription {
        client,
        stream,
        master: master.to_string(),
        framework_id,
        stream_id: s.stream_id,
        heartbeat: heartbeat_interval(s.heartbeat_interval_seconds),
    })
}

/// The heartbeat interval announced in SUBSCRIBED, or the default when it is unusable.
pub(crate) fn heartbeat_interval(seconds: f64) -> Duration {
    if seconds.is_finite() && seconds > 0.0 {
        Duration::from_secs_f64(seconds.min(3600.0))
    } else {
        DEFAULT_HEARTBEAT
    }
}

/// Why an event stream ended.
#[derive(Debug)]
pub(crate) enum Loss {
    /// The master closed the stream.
    Ended,
    /// The stream failed.
    Failed(Box<tonic::Status>),
    /// Nothing arrived for this long (three heartbeat intervals).
    Silent(Duration),
    /// A call was answered NotLeader, naming this leader (possibly empty).
    NotLeader(String),
}

impl Loss {
    /// The leader to try first when resubscribing, if the loss named one.
    pub(crate) fn leader(&self) -> Option<String> {
        let hint = match self {
            Loss::NotLeader(l) => Some(l.clone()),
            Loss::Failed(s) => leader_hint(s),
            _ => None,
        };
        hint.filter(|l| !l.is_empty())
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loss::Ended => f.write_str("the master closed the event stream"),
            Loss::Failed(s) => write!(
                f,
                "the event stream failed: {:?}: {}",
                s.code(),
                s.message()
            ),
            Loss::Silent(d) => write!(f, "no event or heartbeat for {:.1}s", d.as_secs_f64()),
            Loss::NotLeader(l) if l.is_empty() => f.write_str("the master is no longer the leader"),
            Loss::NotLeader(l) => write!(f, "the master is no longer the leader; {l} is"),
        }
    }
}

/// What the reader hands to the event loop.
#[derive(Debug)]
pub(crate) enum StreamItem {
    Event(event::Event),
    Lost(Loss),
}

/// Reads `stream` until it fails, forwarding events (heartbeats excepted) in order. Runs
/// apart from the event loop so that a slow callback is never mistaken for a silent
/// master: the silence clock runs only while the reader waits on the network.
pub(crate) fn spawn_reader(
    mut stream: Streaming<pb::Event>,
    heartbeat: Duration,
    tx: mpsc::Sender<StreamItem>,
) -> JoinHandle<()> {
    let silence = heartbeat * MISSED_HEARTBEATS;
    tokio::spawn(async move {
        let loss = loop {
            match tokio::time::timeout(silence, stream.message()).await {
                Err(_) => break Loss::Silent(silence),
                Ok(Ok(None)) => break Loss::Ended,
                Ok(Err(status)) => break Loss::Failed(Box::new(status)),
                Ok(Ok(Some(pb::Event { event }))) => match event {
                    None | Some(event::Event::Heartbeat(_)) => {}
                    Some(e) => {
                        if tx.send(StreamItem::Event(e)).await.is_err() {
                            return; // the event loop is gone
                        }
                    }
                },
            }
        };
        let _ = tx.send(StreamItem::Lost(loss)).await;
    })
}

/// Aborts a spawned task when dropped, so no reader outlives its subscription.
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The event's name, for logs.
pub(crate) fn event_name(e: &event::Event) -> &'static str {
    match e {
        event::Event::Subscribed(_) => "SUBSCRIBED",
        event::Event::Offers(_) => "OFFERS",
        event::Event::Rescind(_) => "RESCIND",
        event::Event::Update(_) => "UPDATE",
        event::Event::Message(_) => "MESSAGE",
        event::Event::Failure(_) => "FAILURE",
        event::Event::Error(_) => "ERROR",
        event::Event::Heartbeat(_) => "HEARTBEAT",
        event::Event::InverseOffers(_) => "INVERSE_OFFERS",
    }
}

/// An error with its sources, since tonic's transport errors say little at the top level.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::leader::not_leader_status;

    #[test]
    fn classifies_answers() {
        assert!(matches!(
            classify(not_leader_status(Some("m2:5050"))),
            AttemptError::NotLeader(l) if l == "m2:5050"
        ));
        assert!(
            matches!(classify(not_leader_status(None)), AttemptError::NotLeader(l) if l.is_empty())
        );
        assert!(matches!(
            classify(tonic::Status::unavailable("x")),
            AttemptError::Retry(_)
        ));
        assert!(matches!(
            classify(tonic::Status::internal("x")),
            AttemptError::Retry(_)
        ));
        assert!(matches!(
            classify(tonic::Status::invalid_argument("x")),
            AttemptError::Fatal(_)
        ));
        assert!(matches!(
            classify(tonic::Status::not_found("x")),
            AttemptError::Fatal(_)
        ));
        // A message over the master's limit is refused again; a passing shortage is not.
        let mut over = tonic::Status::resource_exhausted("x");
        over.metadata_mut().insert(
            drover_proto::limits::LIMIT_METADATA,
            tonic::metadata::MetadataValue::from_static("MAX_SCHEDULER_CALL_BYTES"),
        );
        assert!(matches!(classify(over), AttemptError::Fatal(_)));
        assert!(matches!(
            classify(tonic::Status::resource_exhausted("x")),
            AttemptError::Retry(_)
        ));
    }

    #[test]
    fn heartbeat_defaults_and_losses() {
        assert_eq!(heartbeat_interval(0.0), DEFAULT_HEARTBEAT);
        assert_eq!(heartbeat_interval(f64::NAN), DEFAULT_HEARTBEAT);
        assert_eq!(heartbeat_interval(2.5), Duration::from_millis(2500));
        assert_eq!(
            Loss::Failed(Box::new(not_leader_status(Some("m3:1"))))
                .leader()
                .as_deref(),
            Some("m3:1")
        );
        assert_eq!(Loss::NotLeader(String::new()).leader(), None);
        assert_eq!(Loss::Ended.leader(), None);
    }
}
