//! The `NotLeader` answer. A follower answers every call with gRPC `UNAVAILABLE` whose
//! details carry an encoded [`crate::pb::NotLeader`] naming the leader, so that the SDK,
//! agents and CLI can follow it by themselves.

use prost::Message;

/// Message prefix of every NotLeader status, for people reading logs.
pub const NOT_LEADER_PREFIX: &str = "not the leader";

/// Builds the status a non-leader master answers with.
pub fn not_leader_status(leader_address: Option<&str>) -> tonic::Status {
    let details = crate::pb::NotLeader {
        leader_address: leader_address.unwrap_or_default().to_string(),
    }
    .encode_to_vec();
    let msg = match leader_address {
        Some(a) if !a.is_empty() => format!("{NOT_LEADER_PREFIX}; leader is {a}"),
        _ => format!("{NOT_LEADER_PREFIX}; no leader known yet"),
    };
    tonic::Status::with_details(tonic::Code::Unavailable, msg, details.into())
}

/// If `status` is a NotLeader answer, the leader's address it carries (empty string when
/// the follower knew no leader). `None` for every other status.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable || !status.message().starts_with(NOT_LEADER_PREFIX)
    {
        return None;
    }
    crate::pb::NotLeader::decode(status.details())
        .ok()
        .map(|n| n.leader_address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = not_leader_status(Some("127.0.0.1:5050"));
        assert_eq!(leader_hint(&s).as_deref(), Some("127.0.0.1:5050"));
        let s = not_leader_status(None);
        assert_eq!(leader_hint(&s).as_deref(), Some(""));
        assert_eq!(leader_hint(&tonic::Status::internal("x")), None);
    }
}
