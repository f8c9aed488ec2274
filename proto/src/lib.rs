//! Drover's wire protocol and shared vocabulary.
//!
//! Module map:
//! - [`pb`]: the generated prost messages and tonic services of `proto/drover/v1/*.proto`
//!   (scheduler, agent↔master, agent API, executor, operator and Raft peer services, and
//!   the test-only `RegistryTesting`).
//! - [`ids`]: typed ids (`FrameworkId`, `AgentId`, `OfferId`, `TaskId`, `ExecutorId`) with
//!   constructors and `Display`, so that handlers never pass bare strings around, and
//!   `TaskKey` (framework id, task id), the one task key of master and agent.
//! - [`resources`]: the resource vocabulary (scalars, ranges, sets) with exact fixed-point
//!   arithmetic: add, subtract, contains, split and validation.
//! - [`states`]: task-state helpers (terminal or not, names for people).
//! - [`limits`]: the message-size limit of every gRPC link (both ends use the same
//!   constant) and [`limits::Limited`], the server wrapper answering RESOURCE_EXHAUSTED
//!   for a request over its limit.
//! - [`leader`]: leader following: the `NotLeader` error that followers answer with, and
//!   the rounds, redirect limit and backoff every client of the masters uses to find the leader.

// Every public item documents itself: this crate is the vocabulary framework authors read.
#![deny(missing_docs)]

pub mod ids;
pub mod leader;
pub mod limits;
pub mod resources;
pub mod states;

/// Generated protocol types and services (`drover.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("drover.v1");
}

pub use ids::{AgentId, ExecutorId, FrameworkId, OfferId, TaskId, TaskKey};
pub use resources::{ResourceError, Resources};

/// Largest `data` of a message between a framework and one of its executors (either way).
pub const MAX_EXECUTOR_MESSAGE_BYTES: usize = 64 * 1024;

/// Most characters of a caller-supplied id or name that an error message quotes.
pub const QUOTED_CHARS: usize = 128;

/// Most bytes of an error message sent back to a caller. gRPC carries the message in a
/// trailer, and clients refuse trailers beyond their metadata limit (16 KiB by default),
/// so a longer message would lose the error itself.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// A caller-supplied id or name as an error message quotes it: whole up to
/// [`QUOTED_CHARS`] characters, otherwise its start, an ellipsis and its full length, so
/// that an error about a huge id stays small.
pub fn quote(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(QUOTED_CHARS) {
        None => std::borrow::Cow::Borrowed(s),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}… ({} bytes)", &s[..end], s.len())),
    }
}

/// An error message cut to at most [`MAX_ERROR_MESSAGE_BYTES`] (on a character boundary,
/// ending with an ellipsis): the last guard before a message goes on the wire.
pub fn bound_error_message(mut m: String) -> String {
    if m.len() <= MAX_ERROR_MESSAGE_BYTES {
        return m;
    }
    const MORE: &str = "…";
    let mut end = MAX_ERROR_MESSAGE_BYTES - MORE.len();
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    m.truncate(end);
    m.push_str(MORE);
    m
}

/// Seconds since the Unix epoch, as carried in `TaskStatus.timestamp`.
pub fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_keeps_short_ids_and_bounds_long_ones() {
        assert_eq!(quote("web-1"), "web-1");
        let exact = "é".repeat(QUOTED_CHARS);
        assert_eq!(quote(&exact), exact.as_str());
        let long = "é".repeat(1 << 20);
        let q = quote(&long);
        assert_eq!(
            q,
            format!("{}… ({} bytes)", "é".repeat(QUOTED_CHARS), 2 << 20)
        );
    }

    #[test]
    fn error_messages_are_cut_on_a_character_boundary() {
        assert_eq!(bound_error_message("short".into()), "short");
        let m = bound_error_message("é".repeat(MAX_ERROR_MESSAGE_BYTES));
        assert!(m.len() <= MAX_ERROR_MESSAGE_BYTES, "{}", m.len());
        assert!(m.len() > MAX_ERROR_MESSAGE_BYTES - 8);
        assert!(m.ends_with("é…"));
        let exact = "a".repeat(MAX_ERROR_MESSAGE_BYTES);
        assert_eq!(bound_error_message(exact.clone()), exact);
    }
}
