//! The pure core of one check: when to run it, and what its results mean. No clock of its
//! own and no I/O: the driver passes the current [`Instant`] in and acts on the
//! [`Effect`]s that come out, so every rule is tested with made-up instants.

use std::time::{Duration, Instant};

use drover_proto::pb;

/// Defaults of `CheckInfo` and `HealthCheck` (proto3 cannot tell zero from unset, so a
/// zero means the default).
pub const DEFAULT_DELAY: Duration = Duration::from_secs(15);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 3;

/// The longest delay, interval, timeout or grace period honoured: a typo of `1e12` must
/// not overflow an `Instant`.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// When a check runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// From the task's start to the first attempt.
    pub delay: Duration,
    /// From the end of one attempt to the start of the next.
    pub interval: Duration,
    /// An attempt still running after this long is abandoned and counts as a failure.
    pub timeout: Duration,
}

impl Timing {
    /// From a `CheckInfo`: zero (or an unusable number) means the default.
    pub fn of(check: &pb::CheckInfo) -> Timing {
        Timing {
            delay: seconds(check.delay_seconds, DEFAULT_DELAY),
            interval: seconds(check.interval_seconds, DEFAULT_INTERVAL),
            timeout: seconds(check.timeout_seconds, DEFAULT_TIMEOUT),
        }
    }
}

/// What makes a health check kill its task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthRules {
    /// Failures this soon after the task started do not count (a success ends it early).
    pub grace: Duration,
    /// Failures in a row (outside the grace period) that make the task unhealthy.
    pub consecutive_failures: u32,
}

impl HealthRules {
    pub fn of(h: &pb::HealthCheck) -> HealthRules {
        HealthRules {
            grace: seconds(h.grace_period_seconds, DEFAULT_GRACE),
            consecutive_failures: if h.consecutive_failures == 0 {
                DEFAULT_CONSECUTIVE_FAILURES
            } else {
                h.consecutive_failures
            },
        }
    }
}

fn seconds(s: f64, default: Duration) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s).min(MAX_DURATION)
    } else {
        default
    }
}

/// The result of one attempt, as a runner reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub success: bool,
    /// What goes on status updates (`check_status`).
    pub status: pb::CheckStatusInfo,
    /// For people: "exit status 1", "HTTP 503", "connection refused", "timed out after 2s".
    pub detail: String,
}

/// What the driver must do after an attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A general check's result changed: a RUNNING update carrying it.
    CheckStatus(pb::CheckStatusInfo),
    /// A health check's verdict changed: a RUNNING update with `healthy`.
    Healthy(bool),
    /// The health check failed too often: kill the task, saying why.
    Unhealthy { message: String },
}

/// A general check (results reported) or a health check (results judged).
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Check,
    Health(HealthRules),
}

/// The state of one check of one task. See the module docs.
#[derive(Clone, Debug)]
pub struct Checker {
    kind: Kind,
    timing: Timing,
    /// What the check does, for messages ("HTTP GET 127.0.0.1:80/health").
    what: String,
    started: Instant,
    /// When the next attempt is due; `None` once the checker gave up (task unhealthy).
    next: Option<Instant>,
    last_status: Option<pb::CheckStatusInfo>,
    healthy: Option<bool>,
    /// A success ended the grace period early.
    grace_over: bool,
    failures: u32,
}

impl Checker {
    /// A checker for a task that started at `started`; the first attempt is due after the
    /// delay.
    pub fn new(kind: Kind, timing: Timing, what: impl Into<String>, started: Instant) -> Checker {
        Checker {
            kind,
            timing,
            what: what.into(),
            started,
            next: started.checked_add(timing.delay),
            last_status: None,
            healthy: None,
            grace_over: false,
            failures: 0,
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// When the next attempt is due; `None` when the checker is done for good.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.next
    }

    /// The failures in a row that currently count.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Takes the result of an attempt that ended at `now` (a timed-out attempt is a
    /// failure the driver reports as such) and schedules the next one.
    pub fn record(&mut self, now: Instant, outcome: Outcome) -> Vec<Effect> {
        if self.next.is_none() {
            return Vec::new();
        }
        self.next = now.checked_add(self.timing.interval);
        match self.kind.clone() {
            Kind::Check => {
                if self.last_status.as_ref() == Some(&outcome.status) {
                    return Vec::new();
                }
                self.last_status = Some(outcome.status);
                vec![Effect::CheckStatus(outcome.status)]
            }
            Kind::Health(rules) => self.judge(now, rules, outcome),
        }
    }

    fn judge(&mut self, now: Instant, rules: HealthRules, outcome: Outcome) -> Vec<Effect> {
        let mut effects = Vec::new();
        if outcome.success {
            self.grace_over = true;
            self.failures = 0;
            if self.healthy != Some(true) {
                self.healthy = Some(true);
                effects.push(Effect::Healthy(true));
            }
            return effects;
        }
        let in_grace = !self.grace_over && now < self.started + rules.grace;
        if in_grace {
            return effects;
        }
        self.failures += 1;
        if self.healthy != Some(false) {
            self.healthy = Some(false);
            effects.push(Effect::Healthy(false));
        }
        if self.failures >= rules.consecutive_failures {
            self.next = None;
            effects.push(Effect::Unhealthy {
                message: format!(
                    "health check ({}) failed {} time(s) in a row; last result: {}",
                    self.what, self.failures, outcome.detail
                ),
            });
        }
        effects
    }
}

/// A timed-out attempt's outcome, for a check of `check_type`.
pub fn timed_out(check_type: pb::check_info::Type, timeout: Duration) -> Outcome {
    let mut status = pb::CheckStatusInfo {
        r#type: check_type as i32,
        ..Default::default()
    };
    if check_type == pb::check_info::Type::Tcp {
        status.tcp_succeeded = Some(false);
    }
    Outcome {
        success: false,
        status,
        detail: format!("timed out after {:?}", timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::check_info::Type;

    const S: Duration = Duration::from_secs(1);

    fn timing() -> Timing {
        Timing {
            delay: 5 * S,
            interval: 10 * S,
            timeout: 2 * S,
        }
    }

    fn http(code: u32) -> Outcome {
        Outcome {
            success: (200..400).contains(&code),
            status: pb::CheckStatusInfo {
                r#type: Type::Http as i32,
                http_status: Some(code),
                ..Default::default()
            },
            detail: format!("HTTP {code}"),
        }
    }

    fn health(grace: u32, failures: u32, t0: Instant) -> Checker {
        Checker::new(
            Kind::Health(HealthRules {
                grace: S * grace,
                consecutive_failures: failures,
            }),
            timing(),
            "HTTP GET 127.0.0.1:80/",
            t0,
        )
    }

    #[test]
    fn defaults_apply_to_zero_and_nonsense() {
        let t = Timing::of(&pb::CheckInfo {
            delay_seconds: 0.0,
            interval_seconds: f64::NAN,
            timeout_seconds: -1.0,
            ..Default::default()
        });
        assert_eq!(
            t,
            Timing {
                delay: DEFAULT_DELAY,
                interval: DEFAULT_INTERVAL,
                timeout: DEFAULT_TIMEOUT
            }
        );
        let t = Timing::of(&pb::CheckInfo {
            delay_seconds: 0.25,
            interval_seconds: 1e15,
            timeout_seconds: 3.0,
            ..Default::default()
        });
        assert_eq!(t.delay, Duration::from_millis(250));
        assert_eq!(t.interval, MAX_DURATION);
        assert_eq!(t.timeout, 3 * S);
        let h = HealthRules::of(&pb::HealthCheck::default());
        assert_eq!(h.grace, DEFAULT_GRACE);
        assert_eq!(h.consecutive_failures, DEFAULT_CONSECUTIVE_FAILURES);
    }

    #[test]
    fn first_attempt_after_the_delay_then_every_interval_after_the_last_ended() {
        let t0 = Instant::now();
        let mut c = Checker::new(Kind::Check, timing(), "TCP 127.0.0.1:1", t0);
        assert_eq!(c.next_attempt(), Some(t0 + 5 * S));
        // The attempt took 1 s: the next is an interval after it ended.
        c.record(t0 + 6 * S, http(200));
        assert_eq!(c.next_attempt(), Some(t0 + 16 * S));
    }

    #[test]
    fn a_general_check_reports_only_changes() {
        let t0 = Instant::now();
        let mut c = Checker::new(Kind::Check, timing(), "x", t0);
        let e = c.record(t0 + 5 * S, http(200));
        assert!(matches!(&e[..], [Effect::CheckStatus(s)] if s.http_status == Some(200)));
        assert!(c.record(t0 + 15 * S, http(200)).is_empty());
        let e = c.record(t0 + 25 * S, http(503));
        assert!(matches!(&e[..], [Effect::CheckStatus(s)] if s.http_status == Some(503)));
        // A general check never kills, however often it fails.
        for i in 0..10 {
            let e = c.record(t0 + (35 + 10 * i) * S, http(503));
            assert!(e.is_empty());
        }
        assert!(c.next_attempt().is_some());
    }

    #[test]
    fn failures_in_the_grace_period_do_not_count() {
        let t0 = Instant::now();
        let mut c = health(20, 2, t0);
        assert!(c.record(t0 + 5 * S, http(500)).is_empty());
        assert!(c.record(t0 + 15 * S, http(500)).is_empty());
        assert_eq!(c.failures(), 0);
        // Past the grace: counted.
        assert_eq!(
            c.record(t0 + 25 * S, http(500)),
            vec![Effect::Healthy(false)]
        );
        let e = c.record(t0 + 35 * S, http(500));
        assert!(matches!(&e[..], [Effect::Unhealthy { message }]
            if message.contains("failed 2 time(s) in a row") && message.contains("HTTP 500")
                && message.contains("HTTP GET 127.0.0.1:80/")));
        assert_eq!(c.next_attempt(), None);
        // Done for good: late results change nothing.
        assert!(c.record(t0 + 45 * S, http(200)).is_empty());
    }

    #[test]
    fn a_success_ends_the_grace_period_early() {
        let t0 = Instant::now();
        let mut c = health(100, 1, t0);
        assert_eq!(c.record(t0 + 5 * S, http(200)), vec![Effect::Healthy(true)]);
        let e = c.record(t0 + 15 * S, http(500));
        assert_eq!(e.len(), 2);
        assert_eq!(e[0], Effect::Healthy(false));
        assert!(matches!(e[1], Effect::Unhealthy { .. }));
    }

    #[test]
    fn a_success_resets_the_failures_in_a_row() {
        let t0 = Instant::now();
        let mut c = health(0, 3, t0);
        assert_eq!(
            c.record(t0 + 5 * S, http(500)),
            vec![Effect::Healthy(false)]
        );
        assert!(c.record(t0 + 15 * S, http(500)).is_empty());
        assert_eq!(c.failures(), 2);
        assert_eq!(
            c.record(t0 + 25 * S, http(302)),
            vec![Effect::Healthy(true)]
        );
        assert_eq!(c.failures(), 0);
        assert!(c.record(t0 + 35 * S, http(200)).is_empty());
        assert_eq!(
            c.record(t0 + 45 * S, http(500)),
            vec![Effect::Healthy(false)]
        );
        assert!(c.record(t0 + 55 * S, http(500)).is_empty());
        assert!(c.next_attempt().is_some());
        let e = c.record(t0 + 65 * S, http(500));
        assert!(matches!(&e[..], [Effect::Unhealthy { .. }]));
    }

    #[test]
    fn a_timed_out_attempt_is_a_failure() {
        let t0 = Instant::now();
        let mut c = health(0, 1, t0);
        let out = timed_out(Type::Tcp, c.timing().timeout);
        assert!(!out.success);
        assert_eq!(out.status.tcp_succeeded, Some(false));
        // The attempt began at the delay and was abandoned at its timeout.
        let e = c.record(t0 + 7 * S, out);
        assert!(
            matches!(&e[..], [Effect::Healthy(false), Effect::Unhealthy { message }]
            if message.contains("timed out after 2s"))
        );
    }

    #[test]
    fn zero_grace_period_counts_failures_at_once() {
        // Only `HealthRules::of` maps zero to the default; a checker built directly with a
        // zero grace counts the first failure.
        let t0 = Instant::now();
        let mut c = health(0, 1, t0);
        let e = c.record(t0, http(404));
        assert_eq!(e.len(), 2);
    }
}
