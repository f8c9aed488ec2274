//! How a framework describes itself and where it finds the masters.

use std::time::Duration;

use drover_proto::pb::{self, framework_info::Capability};
use drover_proto::FrameworkId;

use crate::error::SdkError;

/// The environment variable that names the masters when the configuration does not.
pub const MASTER_ENV: &str = "DROVER_MASTER";

/// The master address used when neither the configuration nor [`MASTER_ENV`] names one.
pub const DEFAULT_MASTER: &str = "127.0.0.1:5050";

/// Port assumed when a master address has none (the master's default `--listen` port).
pub const DEFAULT_MASTER_PORT: u16 = drover_proto::leader::DEFAULT_MASTER_PORT;

/// Default failover timeout: one week. Never zero, so that a master failover, a network
/// blip or a scheduler restart never makes the master kill the framework's tasks.
pub const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses a master list, `HOST:PORT[,HOST:PORT…]`, into normalised `host:port` strings.
///
/// Whitespace around entries is ignored, an `http://` prefix is accepted and dropped, a
/// missing port means [`DEFAULT_MASTER_PORT`], and IPv6 hosts are written in brackets
/// (`[::1]:5050`). Duplicates are dropped, keeping the first occurrence.
pub fn parse_masters(text: &str) -> Result<Vec<String>, SdkError> {
    let mut out: Vec<String> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let addr = parse_master(entry)?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    if out.is_empty() {
        return Err(SdkError::Config(format!(
            "no master address in '{text}' (expected HOST:PORT[,HOST:PORT…])"
        )));
    }
    Ok(out)
}

/// Parses one master address into `host:port` (see
/// [`drover_proto::leader::parse_master_address`], shared with the agent and the CLI).
pub fn parse_master(entry: &str) -> Result<String, SdkError> {
    drover_proto::leader::parse_master_address(entry).map_err(|e| SdkError::Config(e.to_string()))
}

/// The masters named by [`MASTER_ENV`], or [`DEFAULT_MASTER`] when it is unset or empty.
pub fn default_masters() -> Result<Vec<String>, SdkError> {
    match std::env::var(MASTER_ENV) {
        Ok(v) if !v.trim().is_empty() => parse_masters(&v).map_err(|e| match e {
            SdkError::Config(m) => SdkError::Config(format!("{MASTER_ENV}: {m}")),
            other => other,
        }),
        _ => parse_masters(DEFAULT_MASTER),
    }
}

/// Exponential backoff between reconnection rounds: each round waits a random time in
/// `[d/2, d]`, with `d` doubling from `initial` up to `max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffConfig {
    /// The first delay (before jitter).
    pub initial: Duration,
    /// The largest delay (before jitter).
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: drover_proto::leader::BACKOFF_INITIAL,
            max: drover_proto::leader::BACKOFF_MAX,
        }
    }
}

/// Everything [`crate::run`] needs: the masters, the framework's description and the
/// driver's policies. Build one with [`SchedulerConfig::builder`].
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub(crate) masters: Vec<String>,
    pub(crate) framework: pb::FrameworkInfo,
    pub(crate) auto_acknowledge: bool,
    pub(crate) reconcile_on_resubscribe: bool,
    pub(crate) backoff: BackoffConfig,
    pub(crate) reconnect_timeout: Option<Duration>,
    pub(crate) call_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl SchedulerConfig {
    /// Starts a configuration for a framework called `name`, with every default: masters
    /// from [`MASTER_ENV`] (else [`DEFAULT_MASTER`]), user `$USER` (else `root`), role `*`,
    /// a failover timeout of [`DEFAULT_FAILOVER_TIMEOUT`], automatic acknowledgements and
    /// implicit reconciliation after every resubscription.
    pub fn builder(name: impl Into<String>) -> SchedulerConfigBuilder {
        SchedulerConfigBuilder::new(name.into())
    }

    /// The masters to try, as normalised `host:port` strings, in order.
    pub fn masters(&self) -> &[String] {
        &self.masters
    }

    /// The framework description sent with the first subscription.
    pub fn framework_info(&self) -> &pb::FrameworkInfo {
        &self.framework
    }

    /// Whether the driver acknowledges updates itself after the `update` callback.
    pub fn auto_acknowledge(&self) -> bool {
        self.auto_acknowledge
    }

    /// Whether the driver asks for implicit reconciliation after resubscribing.
    pub fn reconcile_on_resubscribe(&self) -> bool {
        self.reconcile_on_resubscribe
    }

    /// The backoff between reconnection rounds.
    pub fn backoff(&self) -> BackoffConfig {
        self.backoff
    }

    /// How long the driver keeps trying to (re)subscribe before `run` fails; `None` means
    /// forever.
    pub fn reconnect_timeout(&self) -> Option<Duration> {
        self.reconnect_timeout
    }
}

/// Builder for [`SchedulerConfig`]; every setter is optional.
#[derive(Clone, Debug)]
pub struct SchedulerConfigBuilder {
    masters: Option<Vec<String>>,
    name: String,
    user: Option<String>,
    role: String,
    hostname: String,
    principal: String,
    failover_timeout: Duration,
    capabilities: Vec<Capability>,
    framework_id: Option<FrameworkId>,
    auto_acknowledge: bool,
    reconcile_on_resubscribe: bool,
    backoff: BackoffConfig,
    reconnect_timeout: Option<Duration>,
    call_timeout: Duration,
    connect_timeout: Duration,
}

impl SchedulerConfigBuilder {
    fn new(name: String) -> Self {
        SchedulerConfigBuilder {
            masters: None,
            name,
            user: None,
            role: "*".to_string(),
            hostname: String::new(),
            principal: String::new(),
            failover_timeout: DEFAULT_FAILOVER_TIMEOUT,
            capabilities: Vec::new(),
            framework_id: None,
            auto_acknowledge: true,
            reconcile_on_resubscribe: true,
            backoff: BackoffConfig::default(),
            reconnect_timeout: None,
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// The masters to try. Each item may itself be a comma-separated list, so both
    /// `["a:5050", "b:5050"]` and `["a:5050,b:5050"]` work; parsed by [`Self::build`].
    pub fn masters<I, S>(mut self, masters: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.masters = Some(
            masters
                .into_iter()
                .map(|s| s.as_ref().to_string())
                .collect(),
        );
        self
    }

    /// The user tasks run as, unless a task says otherwise (default `$USER`, else `root`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The role whose share and reservations the framework uses (default `*`).
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.role = role.into();
        self
    }

    /// The host the scheduler runs on, shown by the operator API.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = hostname.into();
        self
    }

    /// The principal the framework authenticates as.
    pub fn principal(mut self, principal: impl Into<String>) -> Self {
        self.principal = principal.into();
        self
    }

    /// How long the master keeps the framework's tasks after the scheduler disconnects
    /// (default [`DEFAULT_FAILOVER_TIMEOUT`]). Must not be zero.
    pub fn failover_timeout(mut self, timeout: Duration) -> Self {
        self.failover_timeout = timeout;
        self
    }

    /// Declares a capability (duplicates are ignored).
    pub fn capability(mut self, capability: Capability) -> Self {
        if !self.capabilities.contains(&capability) {
            self.capabilities.push(capability);
        }
        self
    }

    /// Opts in to (or out of) partition awareness: the framework then sees UNREACHABLE,
    /// GONE and UNKNOWN instead of LOST.
    pub fn partition_aware(mut self, on: bool) -> Self {
        self.capabilities
            .retain(|c| *c != Capability::PartitionAware);
        if on {
            self.capabilities.push(Capability::PartitionAware);
        }
        self
    }

    /// Opts in to (or out of) TASK_KILLING: a killed task first reports KILLING (not
    /// terminal) when its kill starts, then KILLED once it ended after its grace period.
    /// Off by default, so a framework written before it never meets a new state; a task
    /// killed by its health check reports KILLING either way.
    pub fn task_killing_state(mut self, on: bool) -> Self {
        self.capabilities
            .retain(|c| *c != Capability::TaskKillingState);
        if on {
            self.capabilities.push(Capability::TaskKillingState);
        }
        self
    }

    /// Subscribes as an existing framework (a restarted scheduler taking its tasks back).
    pub fn framework_id(mut self, id: FrameworkId) -> Self {
        self.framework_id = (!id.is_empty()).then_some(id);
        self
    }

    /// Whether the driver acknowledges every update carrying a uuid after the `update`
    /// callback returns (default true). Turn it off to acknowledge yourself, for example
    /// only once an update is durably recorded.
    pub fn auto_acknowledge(mut self, on: bool) -> Self {
        self.auto_acknowledge = on;
        self
    }

    /// Whether the driver sends an implicit reconciliation after every resubscription
    /// (default true), so the framework learns what happened while it was away.
    pub fn reconcile_on_resubscribe(mut self, on: bool) -> Self {
        self.reconcile_on_resubscribe = on;
        self
    }

    /// Backoff between reconnection rounds (default 200 ms doubling up to 5 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = BackoffConfig { initial, max };
        self
    }

    /// Gives up (and `run` fails with [`SdkError::NoMaster`]) after trying to subscribe for
    /// this long without success. Default: never give up, which suits long-lived
    /// frameworks; interactive tools want a bound.
    pub fn reconnect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// How long a call may take before it fails with DEADLINE_EXCEEDED (default 30 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How long one connection attempt to one master may take (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Checks and finishes the configuration.
    pub fn build(self) -> Result<SchedulerConfig, SdkError> {
        let masters = match &self.masters {
            Some(list) => {
                let joined = list.join(",");
                parse_masters(&joined)?
            }
            None => default_masters()?,
        };
        if self.name.trim().is_empty() {
            return Err(SdkError::Config("the framework name is empty".into()));
        }
        if self.role.trim().is_empty() {
            return Err(SdkError::Config(
                "the role is empty (use \"*\" for the default role)".into(),
            ));
        }
        if self.failover_timeout.is_zero() {
            return Err(SdkError::Config(
                "failover_timeout must be positive: with zero, any master failover or \
                 scheduler restart would kill every task of the framework"
                    .into(),
            ));
        }
        if self.backoff.initial.is_zero() || self.backoff.max < self.backoff.initial {
            return Err(SdkError::Config(format!(
                "backoff must satisfy 0 < initial <= max (got {:?} and {:?})",
                self.backoff.initial, self.backoff.max
            )));
        }
        if self.call_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(SdkError::Config("timeouts must be positive".into()));
        }
        let user = self.user.unwrap_or_else(|| {
            std::env::var("USER")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "root".to_string())
        });
        let framework = pb::FrameworkInfo {
            user,
            name: self.name,
            id: self.framework_id,
            failover_timeout: self.failover_timeout.as_secs_f64(),
            role: self.role,
            hostname: self.hostname,
            principal: self.principal,
            capabilities: self.capabilities.iter().map(|c| *c as i32).collect(),
        };
        Ok(SchedulerConfig {
            masters,
            framework,
            auto_acknowledge: self.auto_acknowledge,
            reconcile_on_resubscribe: self.reconcile_on_resubscribe,
            backoff: self.backoff,
            reconnect_timeout: self.reconnect_timeout,
            call_timeout: self.call_timeout,
            connect_timeout: self.connect_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_master_lists() {
        assert_eq!(
            parse_masters("a:5050, b:6060 ,http://c:7070/").unwrap(),
            vec!["a:5050", "b:6060", "c:7070"]
        );
        assert_eq!(parse_masters("host").unwrap(), vec!["host:5050"]);
        assert_eq!(
            parse_masters("[::1]:1,[fe80::2]").unwrap(),
            vec!["[::1]:1", "[fe80::2]:5050"]
        );
        assert_eq!(parse_masters("a:1,a:1,b:2").unwrap(), vec!["a:1", "b:2"]);
        for bad in [
            "",
            " , ",
            "a:0",
            "a:99999",
            "a:x",
            "::1:5050",
            "https://a:1",
            "a:1/x",
            "[::1",
            "[]:1",
            ":5050",
            "a b:1",
        ] {
            assert!(parse_masters(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn builder_defaults_and_validation() {
        let c = SchedulerConfig::builder("fw")
            .masters(["m1:1,m2:2", "m3:3"])
            .build()
            .unwrap();
        assert_eq!(c.masters(), ["m1:1", "m2:2", "m3:3"]);
        let fi = c.framework_info();
        assert_eq!(fi.role, "*");
        assert_eq!(fi.failover_timeout, DEFAULT_FAILOVER_TIMEOUT.as_secs_f64());
        assert!(!fi.user.is_empty());
        assert!(fi.id.is_none());
        assert!(c.auto_acknowledge() && c.reconcile_on_resubscribe());

        let c = SchedulerConfig::builder("fw")
            .masters(["m:1"])
            .partition_aware(true)
            .partition_aware(true)
            .framework_id(FrameworkId::new("f-1"))
            .build()
            .unwrap();
        assert_eq!(
            c.framework_info().capabilities,
            vec![Capability::PartitionAware as i32]
        );
        assert_eq!(c.framework_info().id.as_ref().unwrap().as_str(), "f-1");

        let zero = SchedulerConfig::builder("fw")
            .masters(["m:1"])
            .failover_timeout(Duration::ZERO)
            .build();
        assert!(matches!(zero, Err(SdkError::Config(_))));
        assert!(SchedulerConfig::builder(" ")
            .masters(["m:1"])
            .build()
            .is_err());
        assert!(SchedulerConfig::builder("fw")
            .masters(["m:1"])
            .role("")
            .build()
            .is_err());
        assert!(SchedulerConfig::builder("fw")
            .masters(["m:1"])
            .backoff(Duration::from_secs(2), Duration::from_secs(1))
            .build()
            .is_err());
    }
}
