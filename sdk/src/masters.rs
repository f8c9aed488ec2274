//! Which master to try next: the pure part of leader following, and the reconnection
//! backoff. No I/O here, so both are tested without a cluster.

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;

use crate::config::{parse_master, BackoffConfig};

/// Most NotLeader redirects followed within one round, so that two masters naming each
/// other (each with a stale view during an election) cannot keep the driver spinning.
pub(crate) const MAX_REDIRECTS_PER_ROUND: usize = 3;

/// One pass over the masters: the preferred address first (the leader named by a NotLeader
/// answer, else the last master that held the subscription), then every configured master
/// in order, each at most once, with redirects to named leaders spliced in front.
#[derive(Debug)]
pub(crate) struct Round {
    queue: VecDeque<String>,
    tried: Vec<String>,
    redirects: usize,
}

impl Round {
    /// Starts a round over `masters`, trying `preferred` first when given.
    pub(crate) fn new(masters: &[String], preferred: Option<&str>) -> Round {
        let mut queue: VecDeque<String> = VecDeque::with_capacity(masters.len() + 1);
        if let Some(p) = preferred.and_then(|p| parse_master(p).ok()) {
            queue.push_back(p);
        }
        for m in masters {
            if !queue.contains(m) {
                queue.push_back(m.clone());
            }
        }
        Round {
            queue,
            tried: Vec::new(),
            redirects: 0,
        }
    }

    /// The next master to try, or `None` when the round is over.
    pub(crate) fn next(&mut self) -> Option<String> {
        while let Some(m) = self.queue.pop_front() {
            if !self.tried.contains(&m) {
                self.tried.push(m.clone());
                return Some(m);
            }
        }
        None
    }

    /// A master answered NotLeader naming `leader`: try that leader next. Returns false
    /// (and changes nothing) when the hint is empty or unusable, when it was already tried
    /// in this round, or when this round has followed too many redirects.
    pub(crate) fn follow(&mut self, leader: &str) -> bool {
        if self.redirects >= MAX_REDIRECTS_PER_ROUND {
            return false;
        }
        let Ok(leader) = parse_master(leader) else {
            return false;
        };
        if self.tried.contains(&leader) {
            return false;
        }
        self.redirects += 1;
        self.queue.retain(|m| *m != leader);
        self.queue.push_front(leader);
        true
    }
}

/// Exponential backoff with jitter between failed reconnection rounds.
#[derive(Debug)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig) -> Backoff {
        Backoff {
            config,
            current: config.initial,
        }
    }

    /// The delay to wait now: uniformly random in `[d/2, d]` where `d` doubles on every
    /// call up to the maximum. Jitter keeps many frameworks that lost the same leader from
    /// reconnecting in lock step.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.config.max);
        let half = d / 2;
        half + half.mul_f64(rng.gen_range(0.0..=1.0))
    }

    /// Back to the initial delay, after a successful subscription.
    pub(crate) fn reset(&mut self) {
        self.current = self.config.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

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
        let mut r = Round::new(&masters(), Some("m2:5050"));
        assert_eq!(drain(&mut r), ["m2:5050", "m1:5050", "m3:5050"]);
        // A preferred leader outside the seed list is tried too.
        let mut r = Round::new(&masters(), Some("m9"));
        assert_eq!(drain(&mut r), ["m9:5050", "m1:5050", "m2:5050", "m3:5050"]);
    }

    #[test]
    fn follows_named_leader_next() {
        let mut r = Round::new(&masters(), None);
        assert_eq!(r.next().unwrap(), "m1:5050");
        // m1 says m3 leads: m3 comes before m2, and is not tried twice.
        assert!(r.follow("m3:5050"));
        assert_eq!(drain(&mut r), ["m3:5050", "m2:5050"]);
    }

    #[test]
    fn ignores_empty_tried_and_looping_hints() {
        let mut r = Round::new(&masters(), None);
        assert_eq!(r.next().unwrap(), "m1:5050");
        assert!(!r.follow(""), "no leader known: go on with the list");
        assert!(!r.follow("m1:5050"), "already tried in this round");
        assert!(!r.follow("bad:port"));
        // Leaders named outside the list are followed, but only a few times per round.
        for i in 0..MAX_REDIRECTS_PER_ROUND {
            assert!(r.follow(&format!("x{i}:1")));
            assert_eq!(r.next().unwrap(), format!("x{i}:1"));
        }
        assert!(!r.follow("y:1"));
        assert_eq!(drain(&mut r), ["m2:5050", "m3:5050"]);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_max() {
        let cfg = BackoffConfig {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        };
        let mut b = Backoff::new(cfg);
        let mut rng = StdRng::seed_from_u64(7);
        let mut nominal = cfg.initial;
        for _ in 0..10 {
            let d = b.next_delay(&mut rng);
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
            nominal = (nominal * 2).min(cfg.max);
        }
        assert_eq!(nominal, cfg.max);
        b.reset();
        assert!(b.next_delay(&mut rng) <= cfg.initial);
    }
}
