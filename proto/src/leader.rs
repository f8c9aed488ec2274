//! Leader following: the `NotLeader` answer and the one set of rules every client of the
//! masters uses to find the leader (the agent's master link, the SDK's scheduler driver,
//! the CLI and the benchmarks).
//!
//! A follower answers every call with gRPC `UNAVAILABLE` whose details carry an encoded
//! [`crate::pb::NotLeader`] naming the leader ([`not_leader_status`], read back with
//! [`leader_hint`]). A client then works in *rounds*:
//!
//! 1. A [`Round`] tries the preferred master first (the leader named by the last
//!    `NotLeader`, or the master that served last), then every configured master in order,
//!    each at most once.
//! 2. A `NotLeader` naming another master puts that master next ([`Round::follow`]), at
//!    most [`MAX_REDIRECTS_PER_ROUND`] times per round and never to a master the round
//!    already tried, so two masters naming each other (stale views during an election)
//!    cannot bounce a client forever: the round simply ends.
//! 3. A `NotLeader` naming the answering master itself means a leader still taking office
//!    (elected, applying what its term committed before it serves); like "no leader known",
//!    that is an election under way, and the next round (after the backoff) will find it.
//! 4. Between rounds that found no leader, the client waits a [`Backoff`] delay: jittered,
//!    doubling from [`BACKOFF_INITIAL`] up to [`BACKOFF_MAX`], reset after a success. The
//!    jitter keeps a fleet of agents and frameworks that lost the same leader from
//!    reconnecting in lock step.
//!
//! Everything here is pure (the random source is an argument), so the rules are tested
//! without a cluster; each client keeps only its own I/O loop around a [`Round`].

use std::collections::VecDeque;
use std::time::Duration;

use prost::Message;
use rand::Rng;

/// Message prefix of every NotLeader status, for people reading logs.
pub const NOT_LEADER_PREFIX: &str = "not the leader";

/// Most `NotLeader` redirects one round follows. Three is enough to go from any follower
/// to the leader through one stale view; more would only spin between confused masters.
pub const MAX_REDIRECTS_PER_ROUND: usize = 3;

/// The first delay between rounds (before jitter).
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(200);

/// The largest delay between rounds (before jitter).
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Port assumed when a master address has none (the master's default `--listen` port).
pub const DEFAULT_MASTER_PORT: u16 = 5050;

/// Builds the status a non-leader master answers with.
pub fn not_leader_status(leader_address: Option<&str>) -> tonic::Status {
    let details = crate::pb::NotLeader {
        leader_address: leader_address.unwrap_or_default().to_string(),
    }
    .encode_to_vec();
    let msg = match leader_address {
        Some(a) if !a.is_empty() => format!("{NOT_LEADER_PREFIX}; leader is {a}"),
        _ => format!("{NOT_LEADER_PREFIX}; no leader known yet"),
    };
    tonic::Status::with_details(tonic::Code::Unavailable, msg, details.into())
}

/// If `status` is a NotLeader answer, the leader's address it carries (empty string when
/// the follower knew no leader). `None` for every other status.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable || !status.message().starts_with(NOT_LEADER_PREFIX)
    {
        return None;
    }
    crate::pb::NotLeader::decode(status.details())
        .ok()
        .map(|n| n.leader_address)
}

/// A master address that [`parse_master_address`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad master address '{entry}': {reason}")]
pub struct BadAddress {
    /// The address as given.
    pub entry: String,
    /// Why it was refused, for people.
    pub reason: &'static str,
}

/// Parses one master address into the normalised `host:port` that rounds compare.
///
/// Whitespace around it is ignored, an `http://` prefix and a trailing `/` are dropped, a
/// missing port means [`DEFAULT_MASTER_PORT`], and IPv6 hosts are written in brackets
/// (`[::1]:5050`).
pub fn parse_master_address(entry: &str) -> Result<String, BadAddress> {
    let bad = |reason: &'static str| BadAddress {
        entry: entry.to_string(),
        reason,
    };
    let rest = entry.trim();
    let rest = rest.strip_prefix("http://").unwrap_or(rest);
    if rest.contains("://") {
        return Err(bad(
            "only plain HOST:PORT (or http://HOST:PORT) is supported",
        ));
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    if rest.contains('/') || rest.chars().any(char::is_whitespace) {
        return Err(bad("expected HOST:PORT"));
    }
    // `[v6]:port`, `[v6]`, `host:port` or `host`.
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (v6, after) = inner.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        if v6.is_empty() {
            return Err(bad("empty IPv6 address"));
        }
        match after {
            "" => (format!("[{v6}]"), None),
            p => (
                format!("[{v6}]"),
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected ':' after ']'"))?,
                ),
            ),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(bad("write IPv6 addresses in brackets, e.g. [::1]:5050"))
            }
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port = match port {
        None => DEFAULT_MASTER_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port must be a number from 1 to 65535")),
            Ok(p) => p,
        },
    };
    Ok(format!("{host}:{port}"))
}

/// Parses a master list (`HOST:PORT[,HOST:PORT…]` entries, each possibly holding several
/// comma-separated addresses) into normalised addresses, dropping blanks and duplicates
/// (keeping the first occurrence). Empty when no address is given.
pub fn parse_master_list<S: AsRef<str>>(
    entries: impl IntoIterator<Item = S>,
) -> Result<Vec<String>, BadAddress> {
    let mut out: Vec<String> = Vec::new();
    for entry in entries {
        for one in entry.as_ref().split(',').map(str::trim) {
            if one.is_empty() {
                continue;
            }
            let addr = parse_master_address(one)?;
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    Ok(out)
}

/// What a round makes of a `NotLeader` answer (see [`Round::follow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// The named leader is tried next.
    Follow(String),
    /// The master knew no leader (an election is under way): go on with the round.
    NoLeaderKnown,
    /// The master named itself: elected, but still taking office. Like an election under
    /// way: go on, and try it again in the next round after the backoff.
    TakingOffice,
    /// The named leader was already tried in this round (two masters naming each other):
    /// not followed, so the round ends instead of looping.
    AlreadyTried(String),
    /// This round already followed [`MAX_REDIRECTS_PER_ROUND`] redirects.
    LimitReached(String),
    /// The hint is not a usable address.
    Unusable(String),
}

impl Redirect {
    /// True when the round will try the named leader next.
    pub fn followed(&self) -> bool {
        matches!(self, Redirect::Follow(_))
    }

    /// True when the answer means an election is under way (no leader serving yet), so
    /// that another round after the backoff is worth it.
    pub fn electing(&self) -> bool {
        matches!(self, Redirect::NoLeaderKnown | Redirect::TakingOffice)
    }
}

/// One pass over the masters: the preferred address first, then every configured master
/// in order, each at most once, with redirects to named leaders spliced in front. See the
/// module docs for the rules.
#[derive(Debug, Clone)]
pub struct Round {
    queue: VecDeque<String>,
    tried: Vec<String>,
    redirects: usize,
}

impl Round {
    /// Starts a round over `masters` (already normalised, e.g. by [`parse_master_list`]),
    /// trying `preferred` first when it is a usable address.
    pub fn new<S: AsRef<str>>(masters: &[S], preferred: Option<&str>) -> Round {
        let mut queue: VecDeque<String> = VecDeque::with_capacity(masters.len() + 1);
        if let Some(p) = preferred.and_then(|p| parse_master_address(p).ok()) {
            queue.push_back(p);
        }
        for m in masters {
            let m = m.as_ref();
            if !queue.iter().any(|q| q == m) {
                queue.push_back(m.to_string());
            }
        }
        Round {
            queue,
            tried: Vec::new(),
            redirects: 0,
        }
    }

    /// Master `from` answered `NotLeader` carrying `hint` (from [`leader_hint`]; empty when
    /// it knew no leader). Decides what to do about it; only [`Redirect::Follow`] changes
    /// the round (the leader is tried next).
    pub fn follow(&mut self, from: &str, hint: &str) -> Redirect {
        if hint.trim().is_empty() {
            return Redirect::NoLeaderKnown;
        }
        let Ok(leader) = parse_master_address(hint) else {
            return Redirect::Unusable(hint.to_string());
        };
        if parse_master_address(from).is_ok_and(|f| f == leader) {
            return Redirect::TakingOffice;
        }
        if self.tried.contains(&leader) {
            return Redirect::AlreadyTried(leader);
        }
        if self.redirects >= MAX_REDIRECTS_PER_ROUND {
            return Redirect::LimitReached(leader);
        }
        self.redirects += 1;
        self.queue.retain(|m| *m != leader);
        self.queue.push_front(leader.clone());
        Redirect::Follow(leader)
    }

    /// The masters this round tried so far, in order.
    pub fn tried(&self) -> &[String] {
        &self.tried
    }
}

/// The masters to try, in order: `next` is `None` when the round is over. (Use `while let`
/// rather than `for`, so that [`Round::follow`] can be called between steps.)
impl Iterator for Round {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        while let Some(m) = self.queue.pop_front() {
            if !self.tried.contains(&m) {
                self.tried.push(m.clone());
                return Some(m);
            }
        }
        None
    }
}

/// Exponential backoff with jitter between rounds that found no leader: each delay is
/// drawn uniformly from `[d/2, d]`, then `d` doubles up to the maximum.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Default for Backoff {
    /// [`BACKOFF_INITIAL`] doubling up to [`BACKOFF_MAX`]: what every Drover client uses
    /// unless its configuration says otherwise.
    fn default() -> Self {
        Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX)
    }
}

impl Backoff {
    /// Delays doubling from `initial` up to `max` (a `max` below `initial` is raised to it).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The delay to wait now.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        half + half.mul_f64(rng.gen_range(0.0..=1.0))
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn round_trip() {
        let s = not_leader_status(Some("127.0.0.1:5050"));
        assert_eq!(leader_hint(&s).as_deref(), Some("127.0.0.1:5050"));
        let s = not_leader_status(None);
        assert_eq!(leader_hint(&s).as_deref(), Some(""));
        assert_eq!(leader_hint(&tonic::Status::internal("x")), None);
        assert_eq!(leader_hint(&tonic::Status::unavailable("x")), None);
    }

    #[test]
    fn addresses_are_normalised() {
        assert_eq!(parse_master_address(" http://a:1/ ").unwrap(), "a:1");
        assert_eq!(parse_master_address("host").unwrap(), "host:5050");
        assert_eq!(parse_master_address("[::1]").unwrap(), "[::1]:5050");
        assert_eq!(
            parse_master_list([" http://a:1/ ", "", "b:2,a:1", "c:3, ,"]).unwrap(),
            ["a:1", "b:2", "c:3"]
        );
        assert!(parse_master_list(Vec::<String>::new()).unwrap().is_empty());
        for bad in [
            "a b:1",
            "https://a:1",
            "a:0",
            "a:x",
            ":1",
            "::1",
            "[::1",
            "a/b",
            "[]:1",
        ] {
            let e = parse_master_address(bad).unwrap_err();
            assert_eq!(e.entry, bad);
            assert!(e.to_string().starts_with("bad master address"), "{e}");
        }
    }

    fn masters() -> Vec<String> {
        vec!["m1:5050".into(), "m2:5050".into(), "m3:5050".into()]
    }

    fn drain(r: &mut Round) -> Vec<String> {
        std::iter::from_fn(|| r.next()).collect()
    }

    #[test]
    fn round_tries_every_master_once_preferred_first() {
        let mut r = Round::new(&masters(), None);
        assert_eq!(drain(&mut r), masters());
        assert_eq!(r.tried(), masters());
        let mut r = Round::new(&masters(), Some("m2:5050"));
        assert_eq!(drain(&mut r), ["m2:5050", "m1:5050", "m3:5050"]);
        // A preferred leader outside the seed list is tried too.
        let mut r = Round::new(&masters(), Some("m9"));
        assert_eq!(drain(&mut r), ["m9:5050", "m1:5050", "m2:5050", "m3:5050"]);
        let mut r = Round::new(&masters(), Some("not an address"));
        assert_eq!(drain(&mut r), masters());
    }

    #[test]
    fn follows_named_leader_next() {
        let mut r = Round::new(&masters(), None);
        assert_eq!(r.next().unwrap(), "m1:5050");
        // m1 says m3 leads: m3 comes before m2, and is not tried twice.
        assert_eq!(
            r.follow("m1:5050", "http://m3:5050"),
            Redirect::Follow("m3:5050".into())
        );
        assert_eq!(drain(&mut r), ["m3:5050", "m2:5050"]);
    }

    #[test]
    fn elections_and_leaders_taking_office_are_not_followed() {
        let mut r = Round::new(&masters(), None);
        assert_eq!(r.next().unwrap(), "m1:5050");
        let none = r.follow("m1:5050", "");
        assert_eq!(none, Redirect::NoLeaderKnown);
        assert!(none.electing() && !none.followed());
        let office = r.follow("m1:5050", "m1:5050");
        assert_eq!(office, Redirect::TakingOffice);
        assert!(office.electing());
        assert_eq!(drain(&mut r), ["m2:5050", "m3:5050"]);
    }

    #[test]
    fn redirect_loops_end_the_round() {
        // m1 names m2, m2 names m1 again: the round does not go back.
        let mut r = Round::new(&masters()[..2], None);
        assert_eq!(r.next().unwrap(), "m1:5050");
        assert!(r.follow("m1:5050", "m2:5050").followed());
        assert_eq!(r.next().unwrap(), "m2:5050");
        let back = r.follow("m2:5050", "m1:5050");
        assert_eq!(back, Redirect::AlreadyTried("m1:5050".into()));
        assert!(!back.electing());
        assert_eq!(r.next(), None);
    }

    #[test]
    fn redirects_per_round_are_bounded() {
        let mut r = Round::new(&masters(), None);
        assert_eq!(r.next().unwrap(), "m1:5050");
        assert_eq!(
            r.follow("m1:5050", "bad:port"),
            Redirect::Unusable("bad:port".into())
        );
        // Leaders named outside the list are followed, but only a few times per round.
        let mut from = "m1:5050".to_string();
        for i in 0..MAX_REDIRECTS_PER_ROUND {
            assert!(r.follow(&from, &format!("x{i}:1")).followed());
            from = r.next().unwrap();
            assert_eq!(from, format!("x{i}:1"));
        }
        assert_eq!(r.follow(&from, "y:1"), Redirect::LimitReached("y:1".into()));
        assert_eq!(drain(&mut r), ["m2:5050", "m3:5050"]);
        // A new round may follow again.
        let mut r = Round::new(&masters(), None);
        r.next();
        assert!(r.follow("m1:5050", "y:1").followed());
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_max() {
        let mut b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut nominal = BACKOFF_INITIAL;
        for _ in 0..10 {
            let d = b.next_delay(&mut rng);
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
            nominal = (nominal * 2).min(BACKOFF_MAX);
        }
        assert_eq!(nominal, BACKOFF_MAX);
        b.reset();
        assert!(b.next_delay(&mut rng) <= BACKOFF_INITIAL);
        // Jitter spreads a fleet: not every draw is the same.
        let mut draws: Vec<Duration> = (0..8)
            .map(|_| Backoff::default().next_delay(&mut rng))
            .collect();
        draws.dedup();
        assert!(draws.len() > 1);
        // A maximum below the initial delay is raised to it.
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        b.next_delay(&mut rng);
        assert!(b.next_delay(&mut rng) <= Duration::from_secs(2));
    }
}
