//! Replication of the registry with raft-rs over RocksDB.
//!
//! - [`storage`]: [`LogStore`], what the node writes (append, hard state, commit,
//!   snapshot, `sync`), on RocksDB for the daemon and in memory for tests and the
//!   simulator; raft-rs's `Storage` over either.
//! - [`ready`]: handling one raft-rs `Ready`, a synchronous step (store, sync, send, and
//!   what the state machine must apply).
//! - [`node`]: the dedicated Raft thread, proposals with (index, term) tracking, apply,
//!   registry snapshots serialised off the thread.
//! - [`transport`]: Raft messages to the other masters over gRPC, one bounded queue and
//!   one sender task per peer.

pub mod node;
pub mod ready;
pub mod storage;
pub mod transport;

pub use node::{NoPeers, NodeConfig, ProposeError, RaftHandle, RaftRole, Transport};
pub use storage::{LogStore, MemLogStore, RaftStorage, RocksStorage};
pub use transport::GrpcTransport;

/// Forwards raft-rs's slog records into `tracing`, so the master has one log.
pub struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", record.msg()),
            _ => tracing::debug!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}
