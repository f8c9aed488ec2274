//! Validation of a task's checks (`TaskInfo.check`, `TaskInfo.health_check`) for the
//! ACCEPT gate: a bad check is the task's error, reported as TASK_ERROR with the reason.

use drover_proto::pb::{self, check_info::Type};

use super::gate::{MAX_COMMAND_BYTES, MAX_LIST_ITEMS};
use super::TaskRefusal;

/// The longest delay, interval, timeout or grace period accepted: a week.
const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// Why the task's checks are invalid, if they are.
pub fn validate(task: &pb::TaskInfo) -> Result<(), TaskRefusal> {
    let custom = task
        .executor
        .as_ref()
        .is_some_and(|e| e.r#type == pb::executor_info::Type::Custom as i32);
    if custom && (task.check.is_some() || task.health_check.is_some()) {
        // The agent runs checks against a task's own container; a custom executor's
        // tasks are processes of the executor, which the agent does not see.
        return Err("checks are not supported for tasks on a custom executor: \
                    the executor knows its tasks and reports their health itself"
            .into());
    }
    if let Some(check) = &task.check {
        validate_check(check).map_err(|e| format!("invalid check: {e}"))?;
    }
    if let Some(h) = &task.health_check {
        let check = h
            .check
            .as_ref()
            .ok_or("invalid health check: it has no check")?;
        validate_check(check).map_err(|e| format!("invalid health check: {e}"))?;
        seconds("grace_period_seconds", h.grace_period_seconds)
            .map_err(|e| format!("invalid health check: {e}"))?;
    }
    Ok(())
}

fn seconds(name: &str, v: f64) -> Result<(), TaskRefusal> {
    if v.is_finite() && (0.0..=MAX_SECONDS).contains(&v) {
        Ok(())
    } else {
        Err(refuse!(
            "{name} {v} must be between 0 and {MAX_SECONDS} seconds"
        ))
    }
}

fn port(p: u32) -> Result<(), TaskRefusal> {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(refuse!("port {p} must be between 1 and 65535"))
    }
}

fn validate_check(c: &pb::CheckInfo) -> Result<(), TaskRefusal> {
    seconds("delay_seconds", c.delay_seconds)?;
    seconds("interval_seconds", c.interval_seconds)?;
    seconds("timeout_seconds", c.timeout_seconds)?;
    let t = Type::try_from(c.r#type).unwrap_or(Type::Unspecified);
    let fields = [
        (Type::Command, c.command.is_some(), "command"),
        (Type::Http, c.http.is_some(), "http"),
        (Type::Tcp, c.tcp.is_some(), "tcp"),
    ];
    for (owner, set, name) in fields {
        if set && owner != t {
            return Err(refuse!(
                "field '{name}' is set but the type is {}",
                t.as_str_name()
            ));
        }
    }
    match t {
        Type::Unspecified => Err("the type must be COMMAND, HTTP or TCP".into()),
        Type::Command => {
            let cmd = c
                .command
                .as_ref()
                .ok_or("a COMMAND check needs 'command'")?;
            // `value` is the shell command, or the program (argv[0] may differ).
            if cmd.value.trim().is_empty() {
                return Err("the command is empty".into());
            }
            let size = cmd.value.len() + cmd.arguments.iter().map(String::len).sum::<usize>();
            if size > MAX_COMMAND_BYTES {
                return Err(refuse!(
                    "the command is longer than {MAX_COMMAND_BYTES} bytes"
                ));
            }
            if cmd.arguments.len() > MAX_LIST_ITEMS || cmd.environment.len() > MAX_LIST_ITEMS {
                return Err(refuse!(
                    "the command has more than {MAX_LIST_ITEMS} arguments or environment variables"
                ));
            }
            if cmd
                .environment
                .iter()
                .any(|e| e.name.is_empty() || e.name.contains('=') || e.name.contains('\0'))
            {
                return Err("the command's environment has an invalid name".into());
            }
            Ok(())
        }
        Type::Http => {
            let h = c.http.as_ref().ok_or("an HTTP check needs 'http'")?;
            port(h.port)?;
            if !h.path.is_empty()
                && (!h.path.starts_with('/')
                    || h.path.len() > 2048
                    || h.path
                        .chars()
                        .any(|ch| ch.is_whitespace() || ch.is_control()))
            {
                return Err(refuse!(
                    "path {:?} must start with '/' and contain no spaces or control characters",
                    h.path
                ));
            }
            Ok(())
        }
        Type::Tcp => port(c.tcp.as_ref().ok_or("a TCP check needs 'tcp'")?.port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(check: Option<pb::CheckInfo>, health: Option<pb::HealthCheck>) -> pb::TaskInfo {
        pb::TaskInfo {
            check,
            health_check: health,
            ..Default::default()
        }
    }

    fn tcp(port: u32) -> pb::CheckInfo {
        pb::CheckInfo {
            r#type: Type::Tcp as i32,
            tcp: Some(pb::check_info::Tcp { port }),
            ..Default::default()
        }
    }

    fn err(t: &pb::TaskInfo) -> String {
        validate(t).unwrap_err().to_string()
    }

    #[test]
    fn accepts_well_formed_checks() {
        assert!(validate(&task(None, None)).is_ok());
        let http = pb::CheckInfo {
            r#type: Type::Http as i32,
            http: Some(pb::check_info::Http {
                port: 8080,
                path: "/health?x=1".into(),
            }),
            delay_seconds: 0.2,
            interval_seconds: 0.2,
            timeout_seconds: 5.0,
            ..Default::default()
        };
        let cmd = pb::CheckInfo {
            r#type: Type::Command as i32,
            command: Some(pb::CommandInfo {
                value: "test -f ready".into(),
                shell: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let h = pb::HealthCheck {
            check: Some(cmd),
            grace_period_seconds: 1.0,
            consecutive_failures: 2,
        };
        assert!(validate(&task(Some(http), Some(h))).is_ok());
        assert!(validate(&task(Some(tcp(1)), None)).is_ok());
    }

    #[test]
    fn refuses_bad_checks_with_a_precise_reason() {
        assert!(err(&task(Some(tcp(0)), None)).contains("port 0 must be between 1 and 65535"));
        assert!(err(&task(Some(tcp(70000)), None)).contains("port 70000"));
        let mut c = tcp(80);
        c.r#type = Type::Unspecified as i32;
        assert!(err(&task(Some(c), None)).contains("field 'tcp' is set but the type is"));
        let c = pb::CheckInfo {
            r#type: Type::Http as i32,
            ..Default::default()
        };
        assert!(err(&task(Some(c), None)).contains("an HTTP check needs 'http'"));
        let c = pb::CheckInfo {
            r#type: Type::Command as i32,
            command: Some(pb::CommandInfo::default()),
            ..Default::default()
        };
        assert!(err(&task(Some(c), None)).contains("the command is empty"));
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e9] {
            let mut c = tcp(80);
            c.interval_seconds = bad;
            assert!(err(&task(Some(c), None)).contains("interval_seconds"));
        }
        let h = pb::HealthCheck::default();
        assert_eq!(
            err(&task(None, Some(h))),
            "invalid health check: it has no check"
        );
        let h = pb::HealthCheck {
            check: Some(tcp(80)),
            grace_period_seconds: -3.0,
            consecutive_failures: 0,
        };
        assert!(err(&task(None, Some(h))).starts_with("invalid health check: grace_period_seconds"));
        let c = pb::CheckInfo {
            r#type: Type::Http as i32,
            http: Some(pb::check_info::Http {
                port: 80,
                path: "no-slash".into(),
            }),
            ..Default::default()
        };
        assert!(err(&task(Some(c), None)).contains("must start with '/'"));
    }

    #[test]
    fn tasks_on_a_custom_executor_carry_no_checks() {
        let task = pb::TaskInfo {
            executor: Some(pb::ExecutorInfo {
                r#type: pb::executor_info::Type::Custom as i32,
                ..Default::default()
            }),
            check: Some(pb::CheckInfo {
                r#type: Type::Tcp as i32,
                tcp: Some(pb::check_info::Tcp { port: 80 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(validate(&task).unwrap_err().0.contains("custom executor"));
    }
}
