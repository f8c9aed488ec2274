//! [`DefaultExecutor`]: the `ExecutorInfo` of a task group, launched with
//! [`crate::Driver::launch_group`].
//!
//! A task group's tasks run under the agent's built-in default executor, all or nothing:
//! they share an IPC namespace, a network namespace (the host's, or one of their own with
//! [`DefaultExecutor::isolated_network`]) and a volume at `shared` in every task's
//! sandbox. A task that fails or is killed takes the rest of its group down.

use drover_proto::pb;
use drover_proto::ExecutorId;

/// Builds the [`pb::ExecutorInfo`] of a task group.
///
/// ```
/// use drover_sdk::DefaultExecutor;
///
/// let executor = DefaultExecutor::new("web-pod-1").isolated_network().build();
/// assert_eq!(executor.executor_id.unwrap().as_str(), "web-pod-1");
/// ```
#[derive(Clone, Debug)]
pub struct DefaultExecutor {
    executor: pb::ExecutorInfo,
}

impl DefaultExecutor {
    /// An executor with this id (unique among the framework's executors; letters, digits
    /// and `-_.:@`). It names the group on its agent.
    pub fn new(executor_id: impl Into<ExecutorId>) -> DefaultExecutor {
        DefaultExecutor {
            executor: pb::ExecutorInfo {
                executor_id: Some(executor_id.into()),
                r#type: pb::executor_info::Type::Default as i32,
                ..Default::default()
            },
        }
    }

    /// A name for people.
    pub fn name(mut self, name: impl Into<String>) -> DefaultExecutor {
        self.executor.name = name.into();
        self
    }

    /// The group gets a network namespace of its own (loopback only) that all its tasks
    /// share, instead of the host's network. Needs the linux containerizer.
    pub fn isolated_network(mut self) -> DefaultExecutor {
        self.executor.container = Some(pb::ContainerInfo {
            r#type: pb::container_info::Type::Linux as i32,
            network: pb::container_info::Network::Isolated as i32,
            ..Default::default()
        });
        self
    }

    /// The `ExecutorInfo` to pass to [`crate::Driver::launch_group`].
    pub fn build(self) -> pb::ExecutorInfo {
        self.executor
    }
}
