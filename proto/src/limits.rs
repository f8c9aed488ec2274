//! The message-size limits of every gRPC link, defined once so that both ends of a link
//! agree (docs/api.md, "Message sizes"), and [`Limited`], the server wrapper that refuses a
//! request message over its service's limit with RESOURCE_EXHAUSTED naming the limit.
//!
//! Each limit bounds one encoded protobuf message (not a whole stream). The receiving end
//! enforces it: servers through [`Limited`] (and tonic's own decoding limit, set to the
//! same value), clients through `max_decoding_message_size`. Along a launch the limits only
//! grow or stay equal, so that what one hop accepted the next can carry: a framework's
//! call (≤ [`MAX_SCHEDULER_CALL_BYTES`]) becomes a RunTask to the agent, which the
//! master's ACCEPT gate refuses (TASK_ERROR) beyond [`MAX_MASTER_MESSAGE_BYTES`]; the
//! agent hands the task to its executor in a smaller ExecutorEvent (≤
//! [`MAX_EXECUTOR_EVENT_BYTES`], the same limit); the executor's updates (≤
//! [`MAX_EXECUTOR_CALL_BYTES`]) travel on to the master (≤ [`MAX_AGENT_MESSAGE_BYTES`])
//! and the framework (≤ [`MAX_SCHEDULER_EVENT_BYTES`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tonic::body::BoxBody;
use tonic::codegen::{http, Bytes, Service};
use tonic::server::NamedService;
use tonic::Status;

const MIB: usize = 1024 * 1024;

/// Largest call a framework sends the master (`Scheduler` requests).
pub const MAX_SCHEDULER_CALL_BYTES: usize = 16 * MIB;
/// Largest event the master sends a framework on its `Subscribe` stream (an offer event
/// grows with the cluster).
pub const MAX_SCHEDULER_EVENT_BYTES: usize = 256 * MIB;
/// Largest request an operator sends the master (`Operator` requests).
pub const MAX_OPERATOR_CALL_BYTES: usize = 16 * MIB;
/// Largest answer an operator client takes from the master (`/state`-like answers grow
/// with the cluster).
pub const MAX_OPERATOR_RESPONSE_BYTES: usize = 256 * MIB;
/// Largest `AgentMessage` an agent sends the master on its session (a registration lists
/// every task of the agent).
pub const MAX_AGENT_MESSAGE_BYTES: usize = 16 * MIB;
/// Largest `MasterMessage` the master sends an agent on its session. A RunTask or
/// RunTaskGroup that would be larger is refused at ACCEPT (TASK_ERROR), never committed.
pub const MAX_MASTER_MESSAGE_BYTES: usize = 4 * MIB;
/// Largest `ExecutorEvent` an agent sends an executor: the same as what the agent takes
/// from the master, since a Launch event is a part of the RunTask that brought it.
pub const MAX_EXECUTOR_EVENT_BYTES: usize = MAX_MASTER_MESSAGE_BYTES;
/// Largest call an executor sends its agent (`Executor` requests).
pub const MAX_EXECUTOR_CALL_BYTES: usize = 4 * MIB;
/// Largest request a client sends an agent's `AgentApi` (one image chunk, a file read).
pub const MAX_AGENT_API_CALL_BYTES: usize = 4 * MIB;

/// The metadata key of a RESOURCE_EXHAUSTED that [`Limited`] answers: the name of the
/// limit exceeded. It tells such a refusal, which sending again cannot cure, from a
/// passing one (a rate limit).
pub const LIMIT_METADATA: &str = "drover-limit";

/// The limit a refusal names when the call was refused for a message over that limit
/// ([`Limited`]); `None` for any other status.
pub fn exceeded_limit(status: &Status) -> Option<&str> {
    if status.code() != tonic::Code::ResourceExhausted {
        return None;
    }
    status.metadata().get(LIMIT_METADATA)?.to_str().ok()
}

/// A gRPC service whose request messages are held to `limit` bytes: a bigger message ends
/// the call with RESOURCE_EXHAUSTED naming the limit, before it is buffered. (tonic's own
/// `max_decoding_message_size` answers OUT_OF_RANGE; the gRPC convention, and what Drover
/// documents, is RESOURCE_EXHAUSTED.) Set tonic's limit to the same value as a backstop.
#[derive(Debug, Clone)]
pub struct Limited<S> {
    inner: S,
    limit: usize,
    name: &'static str,
}

impl<S> Limited<S> {
    /// `inner` with its request messages held to `limit` bytes; `name` is the limit's name
    /// as documented (e.g. `"MAX_SCHEDULER_CALL_BYTES"`), quoted in the error.
    pub fn new(inner: S, limit: usize, name: &'static str) -> Self {
        Limited { inner, limit, name }
    }
}

impl<S: NamedService> NamedService for Limited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<BoxBody>> for Limited<S>
where
    S: Service<http::Request<BoxBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<BoxBody>) -> Self::Future {
        let (limit, name) = (self.limit, self.name);
        self.inner.call(req.map(|body| {
            BoxBody::new(LimitedBody {
                inner: body,
                framing: Framing::default(),
                limit,
                name,
                failed: None,
            })
        }))
    }
}

/// A request body checked against the limit as it streams in.
struct LimitedBody {
    inner: BoxBody,
    framing: Framing,
    limit: usize,
    name: &'static str,
    /// The refusal, repeated if the body is polled again.
    failed: Option<Status>,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(s) = &this.failed {
            return Poll::Ready(Some(Err(s.clone())));
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            if let Err(found) = this.framing.feed(data, this.limit) {
                let mut status = Status::resource_exhausted(format!(
                    "message of {found} bytes is larger than {} ({} bytes); see docs/api.md, \"Message sizes\"",
                    this.name, this.limit
                ));
                status.metadata_mut().insert(
                    LIMIT_METADATA,
                    tonic::metadata::MetadataValue::from_static(this.name),
                );
                this.failed = Some(status.clone());
                return Poll::Ready(Some(Err(status)));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Follows gRPC's length-prefixed framing (a compression flag byte, a 4-byte big-endian
/// length, the message) across arbitrary chunk boundaries, reading only the headers.
#[derive(Debug, Default)]
struct Framing {
    header: [u8; 5],
    /// Bytes of the current header seen so far.
    have: usize,
    /// Bytes of the current message still to pass.
    skip: usize,
}

impl Framing {
    /// Takes the next chunk of the body; `Err(length)` when a message header announces
    /// more than `limit` bytes.
    fn feed(&mut self, mut data: &[u8], limit: usize) -> Result<(), usize> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (self.header.len() - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == self.header.len() {
                self.have = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len > limit {
                    return Err(len);
                }
                self.skip = len;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn messages_up_to_the_limit_pass_in_any_chunking() {
        let body: Vec<u8> = [message(10), message(0), message(3), message(10)].concat();
        for chunk in 1..=body.len() {
            let mut f = Framing::default();
            for c in body.chunks(chunk) {
                assert_eq!(f.feed(c, 10), Ok(()), "chunks of {chunk}");
            }
            assert_eq!((f.have, f.skip), (0, 0), "ends between messages");
        }
    }

    #[test]
    fn a_header_over_the_limit_is_caught_however_it_is_split() {
        let body: Vec<u8> = [message(4), message(11)].concat();
        for chunk in 1..=body.len() {
            let mut f = Framing::default();
            let found = body.chunks(chunk).find_map(|c| f.feed(c, 10).err());
            assert_eq!(found, Some(11), "chunks of {chunk}");
        }
        // Only the header counts: the message need not have arrived.
        assert_eq!(
            Framing::default().feed(&message(1 << 20)[..5], 10),
            Err(1 << 20)
        );
    }
}
