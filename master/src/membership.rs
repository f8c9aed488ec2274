//! Joining and seeding a cluster safely, before the Raft thread starts.
//!
//! A master with an empty data folder has no votes and no log. Raft's safety depends on a
//! member never forgetting either, so such a master may only:
//! - seed a brand-new cluster with `--peers`, when none of the named peers already holds
//!   cluster state ([`refuse_if_cluster_exists`]); or
//! - join an existing cluster under a new id with `--join`, as a learner ([`join`]).
//!
//! A member whose folder was wiped is therefore refused under its old id, and is replaced
//! by a new id (`drover masters replace OLD NEW=HOST:PORT`).

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::transport::Endpoint;

use drover_proto::pb::{self, operator_client::OperatorClient, raft_peer_client::RaftPeerClient};

use crate::error::{MasterError, Result};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `--join` keeps trying to reach the cluster and be added.
const JOIN_PATIENCE: Duration = Duration::from_secs(120);

fn endpoint(addr: &str) -> Result<Endpoint> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(url)
        .map_err(|source| MasterError::Grpc {
            context: format!("'{addr}' is not a master's address"),
            source,
        })?
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT))
}

/// A refusal or failure of seeding or joining, formatted like `format!`.
macro_rules! refusal {
    ($($arg:tt)*) => {
        MasterError::Membership(format!($($arg)*))
    };
}

/// One master's Raft status, or None when it does not answer.
pub async fn status(addr: &str) -> Option<pb::RaftStatusResponse> {
    let ch = endpoint(addr).ok()?.connect().await.ok()?;
    RaftPeerClient::new(ch)
        .status(pb::RaftStatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Seeding with `--peers` is refused when any other named master already belongs to a
/// formed cluster: this master's empty folder means its state was lost.
pub async fn refuse_if_cluster_exists(my_id: u64, peers: &BTreeMap<u64, String>) -> Result<()> {
    for (&id, addr) in peers.iter().filter(|(id, _)| **id != my_id) {
        if let Some(st) = status(addr).await {
            let formed = st.applied_index > 0 || st.commit_index > 0 || st.term > 1;
            if formed {
                return Err(refusal!(
                    "the data folder is empty, but master {id} ({addr}) already belongs to a \
                     running cluster (term {}, applied index {}): master {my_id} has lost its \
                     votes and log and must not rejoin under its old id. Replace it with a new \
                     id: start the new master with --join and run \
                     `drover masters replace {my_id} NEW_ID=HOST:PORT`",
                    st.term,
                    st.applied_index
                ));
            }
        }
    }
    Ok(())
}

/// Joins the cluster reachable through `seeds` as master `my_id` at `advertise`: checks
/// that the id is new (or already added as a learner), asks the leader to add it as a
/// learner when needed (saying which registry versions it supports, `max_version`: the
/// leader refuses a master older than its registry), and returns the members' addresses
/// (so that this master can answer the leader before its snapshot arrives).
pub async fn join(
    my_id: u64,
    advertise: &str,
    max_version: u32,
    seeds: &[String],
) -> Result<BTreeMap<u64, String>> {
    let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
    let mut last_err = refusal!("no master of {seeds:?} answered");
    loop {
        match try_join(my_id, advertise, max_version, seeds).await {
            Ok(Some(book)) => return Ok(book),
            Ok(None) => {}
            Err(JoinError::Fatal(e)) => return Err(e),
            Err(JoinError::Retry(e)) => last_err = e,
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(refusal!(
                "could not join the cluster through {seeds:?} within {JOIN_PATIENCE:?}: {last_err}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

enum JoinError {
    Fatal(MasterError),
    Retry(MasterError),
}

async fn try_join(
    my_id: u64,
    advertise: &str,
    max_version: u32,
    seeds: &[String],
) -> Result<Option<BTreeMap<u64, String>>, JoinError> {
    // Any member's view will do to find the leader; the leader then decides.
    let mut view = None;
    for s in seeds {
        if let Some(st) = status(s).await {
            if st.leader_id != 0 {
                view = Some(st);
                break;
            }
        }
    }
    let Some(st) = view else {
        return Err(JoinError::Retry(refusal!(
            "no master of {seeds:?} answered with a known leader"
        )));
    };
    if st.voters.contains(&my_id) {
        return Err(JoinError::Fatal(refusal!(
            "master {my_id} is a voter of this cluster, but its data folder is empty: its votes \
             and log are lost and it must not rejoin under the same id. Replace it with a new \
             id: `drover masters replace {my_id} NEW_ID=HOST:PORT`, then start the new master \
             with --join"
        )));
    }
    // Checked here as well as by the leader's AddMaster: an operator may have added this id
    // already (`drover masters add` cannot know the binary's version), and a learner that
    // cannot read the registry would only halt on its first snapshot, again and again.
    // A master of a release before registry versions reports 0, meaning version 1.
    let recorded = st.registry_version.max(1);
    if let Err(e) = crate::registry::version::check_member(my_id, max_version, recorded) {
        return Err(JoinError::Fatal(refusal!("{e}")));
    }
    let mut book: BTreeMap<u64, String> = st.addresses.into_iter().collect();
    if st.learners.contains(&my_id) {
        match book.get(&my_id) {
            Some(a) if a != advertise => {
                return Err(JoinError::Fatal(refusal!(
                    "master {my_id} was added with address {a}, but this master advertises \
                     {advertise}: remove it (`drover masters remove {my_id}`) and add it again"
                )))
            }
            _ => {}
        }
        book.remove(&my_id);
        tracing::info!(
            id = my_id,
            "already added as a learner; waiting for the leader"
        );
        return Ok(Some(book));
    }
    let Some(leader) = book.get(&st.leader_id).cloned() else {
        return Err(JoinError::Retry(refusal!(
            "the leader's address (master {}) is unknown",
            st.leader_id
        )));
    };
    let ch = endpoint(&leader)
        .map_err(JoinError::Fatal)?
        .connect()
        .await
        .map_err(|source| {
            JoinError::Retry(MasterError::Grpc {
                context: format!("cannot reach the leader at {leader}"),
                source,
            })
        })?;
    let added = OperatorClient::new(ch)
        .add_master(pb::AddMasterRequest {
            id: my_id,
            address: advertise.to_string(),
            max_registry_version: max_version,
        })
        .await;
    match added {
        Ok(_) => {
            tracing::info!(id = my_id, %leader, "added to the cluster as a learner");
            book.remove(&my_id);
            Ok(Some(book))
        }
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::DeadlineExceeded
            ) =>
        {
            Err(JoinError::Retry(refusal!(
                "the leader did not add us yet: {}",
                s.message()
            )))
        }
        Err(s) => Err(JoinError::Fatal(refusal!(
            "the leader refused to add master {my_id}: {}",
            s.message()
        ))),
    }
}
