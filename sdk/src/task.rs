//! [`TaskBuilder`]: a `TaskInfo` in a few readable lines.

use std::time::Duration;

use drover_proto::pb;
use drover_proto::{AgentId, Resources, TaskId};

/// Builds a [`pb::TaskInfo`].
///
/// ```
/// use drover_sdk::TaskBuilder;
/// use drover_sdk::proto::Resources;
///
/// let task = TaskBuilder::new("job-0-0")
///     .name("job #0")
///     .shell("echo $GREETING")
///     .env("GREETING", "hello")
///     .agent("agent-1".into())
///     .resources(&Resources::parse("cpus:0.1;mem:32").unwrap())
///     .kill_grace_period(std::time::Duration::from_secs(10))
///     .build();
/// assert_eq!(task.command.unwrap().value, "echo $GREETING");
/// ```
#[derive(Clone, Debug)]
pub struct TaskBuilder {
    task: pb::TaskInfo,
    command: pb::CommandInfo,
}

impl TaskBuilder {
    /// A task with this id (unique within the framework; letters, digits and `-_.:@`).
    /// Its name defaults to the id.
    pub fn new(task_id: impl Into<TaskId>) -> TaskBuilder {
        let task_id: TaskId = task_id.into();
        TaskBuilder {
            task: pb::TaskInfo {
                name: task_id.to_string(),
                task_id: Some(task_id),
                ..Default::default()
            },
            command: pb::CommandInfo::default(),
        }
    }

    /// A name for people.
    pub fn name(mut self, name: impl Into<String>) -> TaskBuilder {
        self.task.name = name.into();
        self
    }

    /// Runs `command` under `/bin/sh -c`.
    pub fn shell(mut self, command: impl Into<String>) -> TaskBuilder {
        self.command.shell = true;
        self.command.value = command.into();
        self.command.arguments.clear();
        self
    }

    /// Runs a program directly: `argv[0]` is the program (looked up in `PATH`), and the
    /// whole of `argv` is its argument vector. No shell is involved, so nothing is
    /// expanded or split.
    pub fn argv<I, S>(mut self, argv: I) -> TaskBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let argv: Vec<String> = argv.into_iter().map(Into::into).collect();
        self.command.shell = false;
        self.command.value = argv.first().cloned().unwrap_or_default();
        self.command.arguments = argv;
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> TaskBuilder {
        self.command.environment.push(pb::EnvironmentVariable {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Runs the task as this user instead of the framework's.
    pub fn user(mut self, user: impl Into<String>) -> TaskBuilder {
        self.command.user = user.into();
        self
    }

    /// The resources the task uses (e.g. those [`crate::OfferPacker`] carved out for it).
    pub fn resources(mut self, resources: &Resources) -> TaskBuilder {
        self.task.resources = resources.to_proto();
        self
    }

    /// The agent to run on.
    pub fn agent(mut self, agent_id: AgentId) -> TaskBuilder {
        self.task.agent_id = Some(agent_id);
        self
    }

    /// Runs on the agent of `offer`.
    pub fn offer(self, offer: &pb::Offer) -> TaskBuilder {
        self.agent(offer.agent_id.clone().unwrap_or_default())
    }

    /// Time between SIGTERM and SIGKILL when the task is killed (the agent's default when
    /// not set).
    pub fn kill_grace_period(mut self, grace: Duration) -> TaskBuilder {
        self.task.kill_policy = Some(pb::KillPolicy {
            grace_period_seconds: grace.as_secs_f64(),
        });
        self
    }

    /// Runs the task on a custom executor (see [`crate::executor::custom_executor`])
    /// instead of as a command: the executor receives the whole `TaskInfo`, so the
    /// command becomes optional and means what the executor makes of it.
    pub fn executor(mut self, executor: pb::ExecutorInfo) -> TaskBuilder {
        self.task.executor = Some(executor);
        self
    }

    /// Attaches a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> TaskBuilder {
        self.task.labels.push(pb::Label {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// The finished `TaskInfo`. A task on a custom executor that was given no command
    /// carries none.
    pub fn build(self) -> pb::TaskInfo {
        let unset = self.command == pb::CommandInfo::default();
        pb::TaskInfo {
            command: if unset && self.task.executor.is_some() {
                None
            } else {
                Some(self.command)
            },
            ..self.task
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_and_shell_forms() {
        let t = TaskBuilder::new("t-1")
            .argv(["ls", "-l", "/tmp dir"])
            .build();
        let c = t.command.unwrap();
        assert!(!c.shell);
        assert_eq!(c.value, "ls");
        assert_eq!(c.arguments, ["ls", "-l", "/tmp dir"]);
        assert_eq!(t.name, "t-1");

        let t = TaskBuilder::new("t-2")
            .argv(["x"])
            .shell("echo hi | wc -c")
            .env("A", "1")
            .label("k", "v")
            .build();
        let c = t.command.unwrap();
        assert!(c.shell && c.arguments.is_empty());
        assert_eq!(c.environment[0].name, "A");
        assert_eq!(t.labels[0].value, "v");
        assert!(t.kill_policy.is_none());
    }

    #[test]
    fn a_task_on_a_custom_executor_may_leave_its_command_out() {
        let executor = crate::executor::custom_executor("ex-1", "./my-executor");
        let t = TaskBuilder::new("t-3").executor(executor.clone()).build();
        assert!(t.command.is_none());
        assert_eq!(t.executor.as_ref(), Some(&executor));
        let t = TaskBuilder::new("t-4")
            .shell("work")
            .executor(executor)
            .build();
        assert_eq!(t.command.unwrap().value, "work");
    }
}
