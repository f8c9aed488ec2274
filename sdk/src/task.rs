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

    /// Attaches a general check: its results ride on RUNNING updates (`check_status`,
    /// reason `REASON_TASK_CHECK_STATUS_UPDATED`) and never kill the task. Build one with
    /// [`CheckBuilder`].
    pub fn check(mut self, check: CheckBuilder) -> TaskBuilder {
        self.task.check = Some(check.build());
        self
    }

    /// Attaches a health check: its verdict rides on RUNNING updates (`healthy`), and a
    /// task failing it `consecutive_failures` times in a row after `grace_period` is
    /// killed (TASK_KILLED, reason `REASON_TASK_UNHEALTHY`). Zero for either means the
    /// agent's default (10 s, 3).
    pub fn health_check(
        mut self,
        check: CheckBuilder,
        grace_period: Duration,
        consecutive_failures: u32,
    ) -> TaskBuilder {
        self.task.health_check = Some(pb::HealthCheck {
            check: Some(check.build()),
            grace_period_seconds: grace_period.as_secs_f64(),
            consecutive_failures,
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

/// Builds a [`pb::CheckInfo`] for [`TaskBuilder::check`] and
/// [`TaskBuilder::health_check`]. Timing left at zero takes the agent's defaults (delay
/// 15 s, interval 10 s, timeout 20 s).
///
/// ```
/// use std::time::Duration;
/// use drover_sdk::{CheckBuilder, TaskBuilder};
///
/// let task = TaskBuilder::new("web-0")
///     .shell("exec httpd -f -p 8080")
///     .health_check(
///         CheckBuilder::http(8080, "/health").interval(Duration::from_secs(5)),
///         Duration::from_secs(30),
///         3,
///     )
///     .build();
/// assert_eq!(task.health_check.unwrap().consecutive_failures, 3);
/// ```
#[derive(Clone, Debug)]
pub struct CheckBuilder {
    check: pb::CheckInfo,
}

impl CheckBuilder {
    /// `GET http://127.0.0.1:<port><path>` in the task's network; 2xx or 3xx is success.
    pub fn http(port: u16, path: impl Into<String>) -> CheckBuilder {
        CheckBuilder {
            check: pb::CheckInfo {
                r#type: pb::check_info::Type::Http as i32,
                http: Some(pb::check_info::Http {
                    port: port.into(),
                    path: path.into(),
                }),
                ..Default::default()
            },
        }
    }

    /// A connection to `127.0.0.1:<port>` in the task's network is success.
    pub fn tcp(port: u16) -> CheckBuilder {
        CheckBuilder {
            check: pb::CheckInfo {
                r#type: pb::check_info::Type::Tcp as i32,
                tcp: Some(pb::check_info::Tcp { port: port.into() }),
                ..Default::default()
            },
        }
    }

    /// `command` under `/bin/sh -c`, inside the task's container (its namespaces,
    /// cgroups and user; `docker exec` for Docker tasks); exit status 0 is success.
    pub fn shell(command: impl Into<String>) -> CheckBuilder {
        CheckBuilder {
            check: pb::CheckInfo {
                r#type: pb::check_info::Type::Command as i32,
                command: Some(pb::CommandInfo {
                    value: command.into(),
                    shell: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    /// Time from the task's start to the first attempt.
    pub fn delay(mut self, d: Duration) -> CheckBuilder {
        self.check.delay_seconds = d.as_secs_f64();
        self
    }

    /// Time from the end of one attempt to the start of the next.
    pub fn interval(mut self, d: Duration) -> CheckBuilder {
        self.check.interval_seconds = d.as_secs_f64();
        self
    }

    /// An attempt running longer than this is abandoned and counts as a failure.
    pub fn timeout(mut self, d: Duration) -> CheckBuilder {
        self.check.timeout_seconds = d.as_secs_f64();
        self
    }

    /// The finished `CheckInfo`.
    pub fn build(self) -> pb::CheckInfo {
        self.check
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

    #[test]
    fn checks_and_health_checks() {
        let t = TaskBuilder::new("t-3")
            .shell("sleep 100")
            .check(CheckBuilder::tcp(9000).delay(Duration::from_millis(200)))
            .health_check(
                CheckBuilder::shell("test -f ready").timeout(Duration::from_secs(2)),
                Duration::from_secs(1),
                2,
            )
            .build();
        let c = t.check.unwrap();
        assert_eq!(c.r#type, pb::check_info::Type::Tcp as i32);
        assert_eq!(c.tcp.unwrap().port, 9000);
        assert_eq!(c.delay_seconds, 0.2);
        let h = t.health_check.unwrap();
        assert_eq!(h.grace_period_seconds, 1.0);
        assert_eq!(h.consecutive_failures, 2);
        let hc = h.check.unwrap();
        assert_eq!(hc.command.unwrap().value, "test -f ready");
        assert_eq!(hc.timeout_seconds, 2.0);
    }
}
