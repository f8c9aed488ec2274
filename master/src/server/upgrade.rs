//! Rolling upgrades, on the leader: which registry version every member supports, the
//! gate in front of every proposal, raising the registry's recorded version, and the
//! cluster id. The rules are pure ([`crate::registry::version`]); this is the shell that
//! gathers what the members reported and proposes.
//!
//! Raising the version and adding a master are serialized (`Master::version_lock`): a
//! raise computed without a master that is being added could leave that master unable to
//! read the registry.

use super::{propose_error, Master};
use crate::error::MasterError;
use crate::registry::version::{self, MemberSupport, CLUSTER_ID_VERSION};
use crate::registry::{ClusterId, Command};

impl Master {
    /// Every member (voters and learners) with the registry version it supports, as far
    /// as this master has heard (its own from its configuration).
    pub fn member_support(&self) -> Vec<MemberSupport> {
        let (voters, learners) = self.raft.configuration();
        let reported = self.raft.member_versions();
        voters
            .iter()
            .chain(learners.iter())
            .map(|&id| MemberSupport {
                id,
                supports: if id == self.config.id {
                    Some(self.config.max_registry_version)
                } else {
                    reported.get(&id).copied()
                },
            })
            .collect()
    }

    /// The gate in front of every proposal: a command of a version newer than the
    /// registry records is refused (FAILED_PRECONDITION naming the members that lack it)
    /// unless every member supports it, and the registry is raised before it is proposed,
    /// so that the registry never holds what its recorded version does not promise.
    pub async fn require_registry_version(&self, cmd: &Command) -> Result<(), MasterError> {
        let needs = cmd.required_version();
        if needs <= self.registry().version {
            return Ok(());
        }
        version::check_command(cmd.name(), needs, &self.member_support())
            .map_err(|e| MasterError::FailedPrecondition(e.to_string()))?;
        self.raise_registry_version().await?;
        let now = self.registry().version;
        if now < needs {
            // The membership changed between the check and the raise: say so.
            return Err(MasterError::FailedPrecondition(format!(
                "{} needs registry version {needs}, but the registry is still at version \
                 {now}; retry once every master supports it",
                cmd.name()
            )));
        }
        Ok(())
    }

    /// Raises the registry's recorded version to the lowest version every member
    /// supports, when that is newer (a replicated `SetRegistryVersion`); does nothing
    /// otherwise.
    pub async fn raise_registry_version(&self) -> Result<(), MasterError> {
        let _serialized = self.version_lock.lock().await;
        let recorded = self.registry().version;
        let Some(to) = version::raise_to(recorded, &self.member_support()) else {
            return Ok(());
        };
        tracing::info!(
            from = recorded,
            to,
            "every master supports a newer registry version: raising it"
        );
        self.raft
            .propose(&Command::SetRegistryVersion { version: to })
            .await
            .map_err(|e| self.named(propose_error(e)))?;
        Ok(())
    }

    /// The leader's upkeep of the registry's version and identity, run periodically:
    /// raises the version once every member supports a newer one, and gives a registry
    /// without a cluster id one (a brand-new cluster, or one upgraded from a release
    /// without ids) once every member knows cluster ids.
    pub async fn upgrade_registry(&self) {
        if !self.serving() {
            return;
        }
        if let Err(e) = self.raise_registry_version().await {
            tracing::debug!(error = %e, "could not raise the registry version");
            return;
        }
        let (recorded, has_id) = {
            let reg = self.registry();
            (reg.version, reg.cluster_id.is_some())
        };
        if has_id || recorded < CLUSTER_ID_VERSION {
            return;
        }
        let cluster_id = ClusterId::random();
        match self
            .propose(Command::AssignClusterId {
                cluster_id: cluster_id.clone(),
            })
            .await
        {
            Ok(_) => tracing::info!(%cluster_id, "cluster id assigned"),
            Err(e) => tracing::warn!(error = %e, "could not assign the cluster id"),
        }
    }
}
