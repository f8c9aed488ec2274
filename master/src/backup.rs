//! Registry backups and restores (`drover-master backup` / `drover-master restore`).
//!
//! A backup is the serialized registry (the same bytes as a Raft snapshot) with a small
//! header: where in the log it was taken (index, term), its size and its SHA-256. It is
//! taken either online, from the leader after a barrier (so it holds everything committed
//! before the call), or offline, from a stopped master's data folder (its last snapshot
//! plus the committed log after it). Restoring seeds the data folders of a NEW cluster:
//! every member is restored from the same file with the same `--peers`, and then started
//! normally. This is also the way out of a lost majority (see docs/operations.md).
//!
//! The registry bytes carry the registry's version and the cluster id: a restored cluster
//! keeps both (it is the same cluster, recovered), and a binary that does not support
//! the backup's version refuses it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use futures::StreamExt;
use protobuf::Message as PbMessage;
use raft::prelude::{ConfChange, ConfChangeType, ConfChangeV2, EntryType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use drover_proto::pb::{self, operator_client::OperatorClient};

use crate::error::{IoContext, MasterError, Result};
use crate::raft::{LogStore, RocksStorage};
use crate::registry::{self, ClusterId, Registry};

const MAGIC: &str = "DROVER-REGISTRY-BACKUP 1";

/// A backup refused or unusable, formatted like `format!`.
macro_rules! unusable {
    ($($arg:tt)*) => {
        MasterError::Backup(format!($($arg)*))
    };
}

/// What a backup file's header records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupHeader {
    /// Raft log position the registry reflects.
    pub index: u64,
    pub term: u64,
    /// Size of the registry bytes that follow the header.
    pub size: u64,
    /// SHA-256 of those bytes, hex.
    pub sha256: String,
    /// Milliseconds since the Unix epoch when taken (an integer: JSON floats do not
    /// round-trip exactly).
    pub created_ms: u64,
    /// "online" (from the leader) or "offline" (from a data folder).
    pub source: String,
}

/// A registry backup in memory.
#[derive(Debug, Clone)]
pub struct Backup {
    pub header: BackupHeader,
    pub registry: Vec<u8>,
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Backup {
    fn new(index: u64, term: u64, registry: Vec<u8>, source: &str) -> Self {
        Self {
            header: BackupHeader {
                index,
                term,
                size: registry.len() as u64,
                sha256: sha256_hex(&registry),
                created_ms: (drover_proto::unix_seconds() * 1000.0) as u64,
                source: source.to_string(),
            },
            registry,
        }
    }

    /// Writes the backup to `path` (through a temporary file, so that a crash never
    /// leaves a half-written backup under the final name).
    pub fn write_to(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("partial");
        {
            let mut f = std::fs::File::create(&tmp)
                .io_ctx(|| format!("cannot create {}", tmp.display()))?;
            let header = serde_json::to_string(&self.header).expect("the header serializes");
            writeln!(f, "{MAGIC}")
                .and_then(|()| writeln!(f, "{header}"))
                .and_then(|()| f.write_all(&self.registry))
                .and_then(|()| f.sync_all())
                .io_ctx(|| format!("cannot write {}", tmp.display()))?;
        }
        std::fs::rename(&tmp, path)
            .io_ctx(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(())
    }

    /// Reads and verifies a backup file.
    pub fn read_from(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).io_ctx(|| format!("cannot read {}", path.display()))?;
        Self::parse(&bytes)
            .map_err(|why| unusable!("{} is not a usable backup: {why}", path.display()))
    }

    /// Checks a backup's bytes; the error says what is wrong with them.
    fn parse(bytes: &[u8]) -> Result<Self> {
        let mut parts = bytes.splitn(3, |b| *b == b'\n');
        let magic = parts.next().unwrap_or_default();
        if magic != MAGIC.as_bytes() {
            return Err(unusable!("it does not start with '{MAGIC}'"));
        }
        let header: BackupHeader = serde_json::from_slice(parts.next().unwrap_or_default())
            .map_err(|e| unusable!("its header is not valid: {e}"))?;
        let registry = parts.next().unwrap_or_default().to_vec();
        if registry.len() as u64 != header.size {
            return Err(unusable!(
                "it holds {} registry bytes, its header says {} (truncated?)",
                registry.len(),
                header.size
            ));
        }
        if sha256_hex(&registry) != header.sha256 {
            return Err(unusable!("its checksum does not match (corrupted)"));
        }
        Registry::from_snapshot(&registry).map_err(|e| MasterError::Backup(e.to_string()))?;
        Ok(Self { header, registry })
    }
}

/// Takes a backup from the leader, through any of `masters` (following NotLeader).
pub async fn online(masters: &[String]) -> Result<Backup> {
    let mut tried = Vec::new();
    let mut queue: Vec<String> = masters.to_vec();
    let mut hops = 0;
    while let Some(addr) = queue.pop() {
        if tried.contains(&addr) || hops > 8 {
            continue;
        }
        tried.push(addr.clone());
        hops += 1;
        let url = if addr.contains("://") {
            addr.clone()
        } else {
            format!("http://{addr}")
        };
        let endpoint =
            tonic::transport::Endpoint::from_shared(url).map_err(|source| MasterError::Grpc {
                context: format!("'{addr}' is not a master's address"),
                source,
            })?;
        let ch = match endpoint
            .connect_timeout(std::time::Duration::from_secs(3))
            .connect()
            .await
        {
            Ok(ch) => ch,
            Err(_) => continue,
        };
        let mut client = OperatorClient::new(ch)
            .max_decoding_message_size(drover_proto::limits::MAX_OPERATOR_RESPONSE_BYTES);
        match client.backup(pb::BackupRequest {}).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                let mut data = Vec::new();
                let (mut index, mut term, mut size) = (0, 0, 0);
                let mut first = true;
                while let Some(chunk) = stream.next().await {
                    let c = chunk
                        .map_err(|s| unusable!("the backup stream broke off: {}", s.message()))?;
                    if first {
                        (index, term, size) = (c.index, c.term, c.size);
                        first = false;
                    }
                    data.extend_from_slice(&c.data);
                }
                if data.len() as u64 != size {
                    return Err(unusable!(
                        "the backup stream ended after {} of {size} bytes",
                        data.len()
                    ));
                }
                return Ok(Backup::new(index, term, data, "online"));
            }
            Err(s) => {
                if let Some(leader) = drover_proto::leader::leader_hint(&s) {
                    queue.push(leader);
                    continue;
                }
                if s.code() != tonic::Code::Unavailable {
                    return Err(unusable!("{addr} refused the backup: {}", s.message()));
                }
            }
        }
    }
    Err(unusable!("no leader answered among {masters:?}"))
}

/// Takes a backup from a stopped master's data folder: its last registry snapshot, with
/// the committed log entries after it applied.
pub fn offline(data_dir: &Path) -> Result<Backup> {
    let db = data_dir.join("registry");
    if !db.exists() {
        return Err(unusable!("{} holds no registry", data_dir.display()));
    }
    let storage = RocksStorage::open(&db).map_err(|e| {
        unusable!(
            "cannot open {} (is its master still running? stop it first, or take an online backup with --master): {e}",
            db.display()
        )
    })?;
    let meta = storage.snapshot_meta().clone();
    let data = storage.snapshot_data()?;
    let mut reg = Registry::from_snapshot(&data)?;
    let commit = storage.hard_state().commit;
    let mut index = meta.index;
    let mut term = meta.term;
    if commit > meta.index {
        let entries = storage.entries(meta.index + 1, commit + 1, u64::MAX)?;
        if entries.last().map(|e| e.index) != Some(commit) {
            return Err(MasterError::Corrupt(format!(
                "the committed log cannot be read: entries {} to {commit} are missing",
                entries.last().map_or(meta.index, |e| e.index) + 1
            )));
        }
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {}
                EntryType::EntryNormal => {
                    let cmd = registry::decode(&e.data)?;
                    reg.apply(&cmd);
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)
                        .map_err(|err| corrupt_entry(e.index, err))?;
                    membership_effect(&mut reg, cc.node_id, cc.get_change_type(), &e.context);
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)
                        .map_err(|err| corrupt_entry(e.index, err))?;
                    for c in cc.get_changes() {
                        membership_effect(&mut reg, c.node_id, c.get_change_type(), &e.context);
                    }
                }
            }
            index = e.index;
            term = e.term;
        }
    }
    Ok(Backup::new(index, term, reg.to_snapshot(), "offline"))
}

fn corrupt_entry(index: u64, err: protobuf::ProtobufError) -> MasterError {
    MasterError::Corrupt(format!("log entry {index} cannot be decoded: {err}"))
}

fn membership_effect(reg: &mut Registry, id: u64, ty: ConfChangeType, context: &[u8]) {
    #[derive(Deserialize, Default)]
    struct Ctx {
        #[serde(default)]
        address: String,
    }
    let ctx: Ctx = serde_json::from_slice(context).unwrap_or_default();
    match ty {
        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
            reg.apply_membership(id, true, Some(&ctx.address))
        }
        ConfChangeType::RemoveNode => reg.apply_membership(id, false, None),
    }
}

/// Seeds `data_dir` (which must be empty) as master `id` of a new cluster made of
/// `peers`, holding the registry of `backup` (its version and cluster id included).
/// Returns the restored registry's cluster id, if it has one.
pub fn restore(
    backup: &Backup,
    data_dir: &Path,
    id: u64,
    peers: &BTreeMap<u64, String>,
) -> Result<Option<ClusterId>> {
    if !peers.contains_key(&id) {
        return Err(unusable!("--peers must name this master (--id {id}) too"));
    }
    let db = data_dir.join("registry");
    let used = db.exists()
        && std::fs::read_dir(&db)
            .io_ctx(|| format!("cannot list {}", db.display()))?
            .next()
            .is_some();
    if used {
        return Err(unusable!(
            "{} already holds a registry; restore only into an empty data folder",
            data_dir.display()
        ));
    }
    std::fs::create_dir_all(data_dir).io_ctx(|| format!("cannot create {}", data_dir.display()))?;
    let mut reg = Registry::from_snapshot(&backup.registry)?;
    // The new cluster's members, not the old one's.
    reg.masters = peers.clone();
    let mut storage = RocksStorage::open(&db)?;
    // A fresh index and term of at least 1 keep the snapshot distinct from "no snapshot".
    storage.restore(
        id,
        peers.keys().copied().collect(),
        backup.header.index.max(1),
        backup.header.term.max(1),
        &reg.to_snapshot(),
    )?;
    Ok(reg.cluster_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry {
            weights: [("a".to_string(), 2.0)].into_iter().collect(),
            ..Default::default()
        };
        let b = Backup::new(42, 3, reg.to_snapshot(), "online");
        let path = dir.path().join("reg.backup");
        b.write_to(&path).unwrap();
        let back = Backup::read_from(&path).unwrap();
        assert_eq!(back.header, b.header);
        assert_eq!(Registry::from_snapshot(&back.registry).unwrap(), reg);

        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = Backup::read_from(&path).unwrap_err();
        assert!(format!("{err:#}").contains("checksum"), "{err:#}");

        bytes.truncate(bytes.len() - 5);
        std::fs::write(&path, &bytes).unwrap();
        let err = Backup::read_from(&path).unwrap_err();
        assert!(format!("{err:#}").contains("truncated"), "{err:#}");
    }

    #[test]
    fn restore_seeds_a_new_cluster_and_refuses_a_used_folder() {
        let dir = tempfile::tempdir().unwrap();
        let cluster_id = ClusterId::random();
        let reg = Registry {
            weights: [("web".to_string(), 3.0)].into_iter().collect(),
            version: 2,
            cluster_id: Some(cluster_id.clone()),
            ..Default::default()
        };
        let b = Backup::new(1234, 7, reg.to_snapshot(), "offline");
        let peers: BTreeMap<u64, String> = [
            (1, "127.0.0.1:1".to_string()),
            (2, "127.0.0.1:2".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            restore(&b, &dir.path().join("m1"), 1, &peers).unwrap(),
            Some(cluster_id.clone())
        );
        // The restored folder reads back as the backup's registry, new members, same
        // position in the log.
        let again = offline(&dir.path().join("m1")).unwrap();
        assert_eq!(again.header.index, 1234);
        let r = Registry::from_snapshot(&again.registry).unwrap();
        assert_eq!(r.weights, reg.weights);
        assert_eq!(r.masters, peers);
        // The same cluster, recovered: its id and version are kept.
        assert_eq!(r.cluster_id, Some(cluster_id));
        assert_eq!(r.version, 2);
        let err = restore(&b, &dir.path().join("m1"), 1, &peers).unwrap_err();
        assert!(err.to_string().contains("already holds"), "{err}");
        assert!(restore(&b, &dir.path().join("m3"), 3, &peers).is_err());
    }
}
