//! Registry versions: which commands a cluster may use while its masters run different
//! releases (a rolling upgrade).
//!
//! The registry records a format version (replicated like everything else, and carried by
//! every snapshot). Every [`Command`] names the version that introduced it. The rules, all
//! decided here as pure functions of what the leader knows:
//!
//! - Every master reports the highest version its binary supports (with every batch of
//!   Raft messages it sends, so the leader of the moment hears it from every member,
//!   learners included).
//! - A command is proposed only once every member supports the version that introduced it
//!   ([`check_command`]); before that it is refused, naming the members that lack it
//!   (Nomad gates features on the minimum server version the same way).
//! - When every member supports a newer version than the registry records, the leader
//!   raises the recorded version with a command ([`raise_to`]); it never goes down.
//! - A master whose binary supports less than the recorded version is neither added nor
//!   promoted ([`check_member`]): it could not read what the others write. A master
//!   started on a data folder (or sent a snapshot, or an entry) newer than its binary
//!   supports halts instead of diverging.
//!
//! Version history (never change a released line, only add):
//! - 1: every command of the first release (`Noop` … `SetWeights`). A registry or snapshot
//!   without a version is at 1, and so is the first snapshot of a brand-new cluster: the
//!   members seeding it write the same bytes whatever releases they run, and the first
//!   leader raises the version as far as every member supports.
//! - 2: `SetRegistryVersion` (the raise itself), `AssignClusterId` (the cluster id a
//!   leader assigns to a registry that has none), `RecordTestMarker` (test only).

use super::Command;

/// The version of a registry written by a release before versions existed, and of every
/// brand-new cluster's first snapshot.
pub const BASE_VERSION: u32 = 1;

/// The highest registry version this binary knows (a master may claim less, see
/// `--max-registry-version`).
pub const REGISTRY_VERSION: u32 = 2;

/// The version that brought cluster ids.
pub const CLUSTER_ID_VERSION: u32 = 2;

impl Command {
    /// The command's stable tag, as written in the log.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Noop => "Noop",
            Command::RegisterAgent { .. } => "RegisterAgent",
            Command::ReregisterAgent { .. } => "ReregisterAgent",
            Command::AgentUnreachable { .. } => "AgentUnreachable",
            Command::AddFramework { .. } => "AddFramework",
            Command::FrameworkDisconnected { .. } => "FrameworkDisconnected",
            Command::RemoveFramework { .. } => "RemoveFramework",
            Command::LaunchTasks { .. } => "LaunchTasks",
            Command::StatusUpdates { .. } => "StatusUpdates",
            Command::SetWeights { .. } => "SetWeights",
            Command::SetRegistryVersion { .. } => "SetRegistryVersion",
            Command::AssignClusterId { .. } => "AssignClusterId",
            Command::RecordTestMarker { .. } => "RecordTestMarker",
        }
    }

    /// The registry version every replica must support to apply this command: the
    /// version that introduced its type (and, for a raise, the version raised to). A new
    /// command type must be added here with the new version: the match has no default on
    /// purpose.
    pub fn required_version(&self) -> u32 {
        match self {
            Command::Noop
            | Command::RegisterAgent { .. }
            | Command::ReregisterAgent { .. }
            | Command::AgentUnreachable { .. }
            | Command::AddFramework { .. }
            | Command::FrameworkDisconnected { .. }
            | Command::RemoveFramework { .. }
            | Command::LaunchTasks { .. }
            | Command::StatusUpdates { .. }
            | Command::SetWeights { .. } => 1,
            Command::SetRegistryVersion { version } => (*version).max(2),
            Command::AssignClusterId { .. } | Command::RecordTestMarker { .. } => 2,
        }
    }
}

/// What one member of the cluster (voter or learner) supports, as the leader knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberSupport {
    /// Raft id.
    pub id: u64,
    /// The highest registry version its binary supports; `None` while it has not been
    /// heard from since this master started (it may be down, or not started yet).
    pub supports: Option<u32>,
}

/// Why the cluster's versions refuse something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// A command whose version some member does not support (or has not reported).
    #[error(
        "{command} needs registry version {needs}, but {}: upgrade {} first (see \
         'Rolling upgrades' in docs/operations.md)",
        describe(.lacking),
        if .lacking.len() == 1 { "that master" } else { "those masters" }
    )]
    CommandUnsupported {
        command: &'static str,
        needs: u32,
        lacking: Vec<MemberSupport>,
    },
    /// A master that could not read the registry as it is.
    #[error(
        "master {id} supports registry versions up to {supports}, but the registry is at \
         version {recorded}: run a release that supports version {recorded} on it \
         (a registry version never goes down)"
    )]
    MemberTooOld {
        id: u64,
        supports: u32,
        recorded: u32,
    },
}

fn describe(lacking: &[MemberSupport]) -> String {
    lacking
        .iter()
        .map(|m| match m.supports {
            Some(v) => format!("master {} supports only up to version {v}", m.id),
            None => format!(
                "master {} has not reported its version (is it running?)",
                m.id
            ),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// May a command that needs version `needs` be proposed to a cluster of `members`? Only
/// when every member has reported support for it.
pub fn check_command(
    command: &'static str,
    needs: u32,
    members: &[MemberSupport],
) -> Result<(), VersionError> {
    let lacking: Vec<MemberSupport> = members
        .iter()
        .filter(|m| m.supports.is_none_or(|v| v < needs))
        .copied()
        .collect();
    if lacking.is_empty() {
        Ok(())
    } else {
        Err(VersionError::CommandUnsupported {
            command,
            needs,
            lacking,
        })
    }
}

/// The version to raise a registry at `recorded` to: the lowest version every member
/// supports, when every member has reported and that is newer. `None` otherwise.
pub fn raise_to(recorded: u32, members: &[MemberSupport]) -> Option<u32> {
    let lowest = members
        .iter()
        .map(|m| m.supports)
        .collect::<Option<Vec<u32>>>()?
        .into_iter()
        .min()?;
    (lowest > recorded).then_some(lowest)
}

/// May master `id`, whose binary supports up to `supports`, join (or be promoted in) a
/// cluster whose registry is at `recorded`?
pub fn check_member(id: u64, supports: u32, recorded: u32) -> Result<(), VersionError> {
    if supports < recorded {
        Err(VersionError::MemberTooOld {
            id,
            supports,
            recorded,
        })
    } else {
        Ok(())
    }
}

/// A version a master reports with its Raft messages: a master of a release before
/// versions existed sends none (0 on the wire), and supports exactly [`BASE_VERSION`].
pub fn reported(wire: u32) -> u32 {
    wire.max(BASE_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, supports: Option<u32>) -> MemberSupport {
        MemberSupport { id, supports }
    }

    #[test]
    fn a_command_waits_for_every_member_and_names_those_that_lack_it() {
        let all_new = [m(1, Some(2)), m(2, Some(2)), m(3, Some(3))];
        assert_eq!(check_command("RecordTestMarker", 2, &all_new), Ok(()));
        // Version 1 commands are never held back.
        let mixed = [m(1, Some(2)), m(2, Some(1)), m(3, None)];
        assert_eq!(check_command("SetWeights", 1, &mixed[..2]), Ok(()));
        let err = check_command("RecordTestMarker", 2, &mixed).unwrap_err();
        assert_eq!(
            err,
            VersionError::CommandUnsupported {
                command: "RecordTestMarker",
                needs: 2,
                lacking: vec![m(2, Some(1)), m(3, None)],
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("RecordTestMarker needs registry version 2"),
            "{text}"
        );
        assert!(
            text.contains("master 2 supports only up to version 1"),
            "{text}"
        );
        assert!(text.contains("master 3 has not reported"), "{text}");
        assert!(!text.contains("master 1"), "{text}");
    }

    #[test]
    fn the_recorded_version_rises_to_the_lowest_supported_once_all_reported() {
        assert_eq!(raise_to(1, &[m(1, Some(2)), m(2, Some(3))]), Some(2));
        assert_eq!(raise_to(2, &[m(1, Some(2)), m(2, Some(3))]), None);
        assert_eq!(raise_to(1, &[m(1, Some(2)), m(2, Some(1))]), None);
        assert_eq!(raise_to(1, &[m(1, Some(2)), m(2, None)]), None, "unheard");
        // Never down, even when a member claims less than recorded.
        assert_eq!(raise_to(2, &[m(1, Some(1))]), None);
        assert_eq!(raise_to(1, &[]), None);
    }

    #[test]
    fn an_older_member_is_refused() {
        assert_eq!(check_member(4, 2, 2), Ok(()));
        assert_eq!(check_member(4, 3, 2), Ok(()));
        let err = check_member(4, 1, 2).unwrap_err();
        assert!(
            err.to_string().contains(
                "master 4 supports registry versions up to 1, but the registry is at version 2"
            ),
            "{err}"
        );
    }

    #[test]
    fn every_command_needs_a_version_this_binary_knows() {
        assert_eq!(reported(0), 1, "a release before versions");
        assert_eq!(reported(2), 2);
        let cmds = [
            Command::Noop,
            Command::SetWeights { weights: vec![] },
            Command::SetRegistryVersion { version: 2 },
            Command::AssignClusterId {
                cluster_id: super::super::ClusterId::random(),
            },
            Command::RecordTestMarker { marker: "m".into() },
        ];
        for c in &cmds {
            assert!(c.required_version() <= REGISTRY_VERSION, "{}", c.name());
            assert!(c.required_version() >= BASE_VERSION, "{}", c.name());
        }
        assert_eq!(
            Command::SetRegistryVersion { version: 7 }.required_version(),
            7
        );
        assert_eq!(Command::Noop.name(), "Noop");
        // The name is the tag in the log.
        let json = String::from_utf8(super::super::encode(&cmds[4])).unwrap();
        assert!(json.contains("\"type\":\"RecordTestMarker\""), "{json}");
    }
}
