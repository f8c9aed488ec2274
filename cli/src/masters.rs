//! Talking to the masters: connect to one of the `--master` addresses, follow `NotLeader`
//! redirects to the leader, and turn "nobody answered" into an error a person can act on.
//!
//! Only the leader serves the operator API; a follower answers `UNAVAILABLE` with a
//! `NotLeader` detail naming the leader. A call works in the rounds of
//! `drover_proto::leader`, the rules the SDK and the agent follow too: the master that
//! answered last first, then every `--master` address, jumping to a named leader (at most
//! three times a round, never back to a master already tried, so two confused masters
//! naming each other cannot loop). While an election is under way (no leader known, or a
//! leader still taking office) it makes a few more rounds with the shared jittered
//! backoff in between; a redirect loop that outlasts them ends in an error naming it.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use drover_proto::leader::{leader_hint, parse_master_list, Backoff, Redirect, Round};
use drover_proto::pb::operator_client::OperatorClient;
use tonic::transport::{Channel, Endpoint};

/// Rounds after the first made while an election is under way: with the shared backoff
/// (200 ms doubling, jittered) they wait about 3 to 6 s in all, enough for an election
/// and a new leader taking office on a loaded machine.
const ELECTION_RETRIES: usize = 5;
/// How long to wait for a TCP connection to one master.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one operator call may take. Generous: `GetState` of a large cluster is big.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted (the link's limit, shared with the master). tonic's default
/// of 4 MiB is too small for `GetState` of a cluster with tens of thousands of tasks.
const MAX_RESPONSE_BYTES: usize = drover_proto::limits::MAX_OPERATOR_RESPONSE_BYTES;

/// The masters of one cluster, as given by `--master`.
#[derive(Debug)]
pub struct Masters {
    addresses: Vec<String>,
    /// Extra passes over the masters while an election is in progress.
    election_retries: usize,
    /// The master that answered last, tried first by the next call, so that a command
    /// making several calls finds the leader once.
    leader: Mutex<Option<(String, Channel)>>,
}

/// Why one master did not serve a call, kept to explain a final failure.
#[derive(Debug)]
struct Attempt {
    address: String,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    /// No connection, or the connection broke during the call.
    Unreachable(String),
    /// A follower that knew no leader.
    NoLeaderKnown,
    /// A follower that named the leader (followed).
    Redirected(String),
    /// A follower that named a leader this round had already tried, or one past the
    /// round's redirect limit: not followed.
    Looped(String),
}

impl Masters {
    /// Parses the `--master` list: `HOST:PORT` entries (a missing port means 5050),
    /// optionally with an `http://` scheme; blanks (from `a,,b` or a trailing comma) and
    /// duplicates are dropped.
    pub fn new(addresses: Vec<String>) -> Result<Self> {
        let out = parse_master_list(&addresses)?;
        if out.is_empty() {
            bail!("no master address given; pass --master HOST:PORT or set DROVER_MASTER");
        }
        Ok(Masters {
            addresses: out,
            election_retries: ELECTION_RETRIES,
            leader: Mutex::new(None),
        })
    }

    /// Sets how many extra passes a call makes while no leader is elected. Pollers that
    /// loop by themselves (such as `drover local` waiting for its cluster) use 0.
    pub fn with_election_retries(mut self, retries: usize) -> Self {
        self.election_retries = retries;
        self
    }

    /// The address of the master that served the last successful call.
    pub fn last_leader(&self) -> Option<String> {
        self.lock_leader().as_ref().map(|(a, _)| a.clone())
    }

    /// Runs one operator call at the leader. `call` is invoked once per attempt with a
    /// fresh client, so it must build its request each time.
    pub async fn operator<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(OperatorClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut backoff = Backoff::default();
        for pass in 0..=self.election_retries {
            if pass > 0 {
                tokio::time::sleep(backoff.next_delay(&mut rand::thread_rng())).await;
            }
            attempts.clear();
            match self.one_round(&call, &mut attempts).await? {
                Some(value) => return Ok(value),
                // An election is probably under way (or masters with stale views name
                // each other): worth another round.
                None if attempts
                    .iter()
                    .any(|a| matches!(a.outcome, Outcome::NoLeaderKnown | Outcome::Looped(_))) =>
                {
                    continue
                }
                None => break,
            }
        }
        Err(no_master_error(&self.addresses, &attempts))
    }

    /// One round over the cached leader and every configured master. `Ok(None)` when none
    /// served the call (reasons in `attempts`); `Err` for a real answer that is an error
    /// (such as INVALID_ARGUMENT).
    async fn one_round<T, F, Fut>(&self, call: &F, attempts: &mut Vec<Attempt>) -> Result<Option<T>>
    where
        F: Fn(OperatorClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut cached = self.lock_leader().clone();
        let mut round = Round::new(&self.addresses, cached.as_ref().map(|(a, _)| a.as_str()));
        while let Some(address) = round.next() {
            let channel = match cached.take_if(|(a, _)| *a == address) {
                Some((_, c)) => c,
                None => match connect(&address).await {
                    Ok(c) => c,
                    Err(why) => {
                        attempts.push(Attempt {
                            address,
                            outcome: Outcome::Unreachable(why),
                        });
                        continue;
                    }
                },
            };
            let client =
                OperatorClient::new(channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES);
            let status = match call(client).await {
                Ok(response) => {
                    *self.lock_leader() = Some((address, channel));
                    return Ok(Some(response.into_inner()));
                }
                Err(status) => status,
            };
            // Whatever went wrong, this master is not a leader we can use right now.
            self.forget_leader(&address);
            let outcome = match leader_hint(&status).map(|h| round.follow(&address, &h)) {
                Some(Redirect::Follow(leader)) => Outcome::Redirected(leader),
                // A master naming itself was just elected and is still taking office
                // (applying what its term committed before it serves): like an election
                // under way, worth another round after the backoff.
                Some(Redirect::NoLeaderKnown | Redirect::TakingOffice) => Outcome::NoLeaderKnown,
                Some(Redirect::AlreadyTried(leader) | Redirect::LimitReached(leader)) => {
                    Outcome::Looped(leader)
                }
                Some(Redirect::Unusable(hint)) => {
                    Outcome::Unreachable(format!("not the leader; named '{hint}' as leader"))
                }
                None if is_unreachable(&status) => Outcome::Unreachable(status_text(&status)),
                None => bail!(
                    "master {address} answered {:?}: {}",
                    status.code(),
                    status.message()
                ),
            };
            attempts.push(Attempt { address, outcome });
        }
        Ok(None)
    }

    fn forget_leader(&self, address: &str) {
        let mut cached = self.lock_leader();
        if cached.as_ref().is_some_and(|(a, _)| a == address) {
            *cached = None;
        }
    }

    fn lock_leader(&self) -> std::sync::MutexGuard<'_, Option<(String, Channel)>> {
        // A panic while holding this lock cannot leave the cache inconsistent (it is a
        // single assignment), so a poisoned lock is still usable.
        self.leader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn connect(address: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("not a valid address: {}", error_chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    endpoint.connect().await.map_err(|e| error_chain(&e))
}

/// True for statuses that mean "this master could not serve the call at all", so the
/// next master is worth a try: a broken or refused connection, a timeout, a master that
/// is shutting down.
fn is_unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    )
}

fn status_text(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        let _ = write!(text, ": {}", error_chain(source));
    }
    text
}

/// An error with its causes, `outer: inner: root`, skipping repeats. tonic's transport
/// error alone only says "transport error"; the cause says "Connection refused".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// The error for a call no master served, worded for what most likely went wrong.
fn no_master_error(addresses: &[String], attempts: &[Attempt]) -> anyhow::Error {
    let list = addresses.join(", ");
    let electing = attempts
        .iter()
        .any(|a| matches!(a.outcome, Outcome::NoLeaderKnown));
    let looping = attempts
        .iter()
        .any(|a| matches!(a.outcome, Outcome::Looped(_)));
    let mut text = if looping && !electing {
        format!(
            "gave up following leader redirects among the Drover masters at {list}: they \
             name each other as leader; the masters may be in the middle of an election, \
             try again in a moment"
        )
    } else if electing {
        format!(
            "no leader is elected among the Drover masters at {list}; if the cluster was just \
             started, try again in a moment"
        )
    } else {
        format!("no Drover master answered at {list} — is `drover local` running?")
    };
    for a in attempts {
        let why = match &a.outcome {
            Outcome::Unreachable(why) => why.clone(),
            Outcome::NoLeaderKnown => "not the leader, and knows no leader yet".to_string(),
            Outcome::Redirected(leader) => format!("not the leader; named {leader} as leader"),
            Outcome::Looped(leader) => {
                format!("not the leader; named {leader} as leader, which was already asked")
            }
        };
        let _ = write!(text, "\n  {}: {why}", a.address);
    }
    anyhow!(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::leader::MAX_REDIRECTS_PER_ROUND;
    use drover_proto::pb::*;
    use drover_testkit::FakeOperator;
    use tokio::net::TcpListener;

    /// Binds port 0 first so the test knows its address before choosing hints.
    async fn bind() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        (listener, address)
    }

    /// Serves a leader (`follower_of` `None`) or a follower naming `follower_of`.
    fn serve(listener: TcpListener, address: String, follower_of: Option<String>) {
        serve_taking_office(listener, address, follower_of, 0);
    }

    fn serve_taking_office(
        listener: TcpListener,
        address: String,
        follower_of: Option<String>,
        calls: usize,
    ) {
        let fake = match follower_of {
            None => FakeOperator::leader(&address),
            Some(leader) => FakeOperator::follower(&address, &leader),
        };
        fake.taking_office(calls).spawn(listener);
    }

    /// An address nothing listens on: bound, then closed.
    async fn dead_address() -> String {
        let (listener, address) = bind().await;
        drop(listener);
        address
    }

    async fn health(masters: &Masters) -> Result<GetHealthResponse> {
        masters
            .operator(|mut c| async move { c.get_health(GetHealthRequest {}).await })
            .await
    }

    #[tokio::test]
    async fn follows_not_leader_to_the_leader() {
        let (leader_listener, leader) = bind().await;
        let (follower_listener, follower) = bind().await;
        serve(leader_listener, leader.clone(), None);
        serve(follower_listener, follower.clone(), Some(leader.clone()));

        let dead = dead_address().await;
        let masters = Masters::new(vec![dead, follower]).unwrap();
        let answer = health(&masters).await.unwrap();
        assert_eq!(answer.leader_address, leader);
        assert_eq!(masters.last_leader(), Some(leader));
    }

    #[tokio::test]
    async fn a_leader_taking_office_is_waited_for_not_given_up_on() {
        // More "not the leader" answers naming itself than redirects are followed in one
        // round: following them at once would give up; waiting between rounds reaches
        // the leader once it serves.
        let (listener, a) = bind().await;
        serve_taking_office(listener, a.clone(), None, MAX_REDIRECTS_PER_ROUND + 1);
        let masters = Masters::new(vec![a.clone()]).unwrap();
        let answer = health(&masters).await.unwrap();
        assert_eq!(answer.leader_address, a);
    }

    #[tokio::test]
    async fn redirect_loops_are_bounded() {
        let (a_listener, a) = bind().await;
        let (b_listener, b) = bind().await;
        serve(a_listener, a.clone(), Some(b.clone()));
        serve(b_listener, b.clone(), Some(a.clone()));

        let masters = Masters::new(vec![a]).unwrap();
        let error = health(&masters).await.unwrap_err().to_string();
        assert!(error.contains("leader redirects"), "{error}");
    }

    #[tokio::test]
    async fn no_master_answering_is_explained() {
        let dead = dead_address().await;
        let masters = Masters::new(vec![dead.clone()]).unwrap();
        let error = health(&masters).await.unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "no Drover master answered at {dead} — is `drover local` running?"
            )),
            "{error}"
        );
    }

    #[tokio::test]
    async fn no_leader_known_is_an_election() {
        let (listener, follower) = bind().await;
        serve(listener, follower.clone(), Some(String::new()));
        let masters = Masters::new(vec![follower])
            .unwrap()
            .with_election_retries(0);
        let error = health(&masters).await.unwrap_err().to_string();
        assert!(error.contains("no leader is elected"), "{error}");
    }

    #[tokio::test]
    async fn real_errors_are_not_retried_elsewhere() {
        let (listener, leader) = bind().await;
        serve(listener, leader.clone(), None);
        let masters = Masters::new(vec![leader]).unwrap();
        let error = masters
            .operator(|mut c| async move { c.get_tasks(GetTasksRequest::default()).await })
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("Unimplemented: not in the fake master"),
            "{error}"
        );
    }

    #[test]
    fn addresses_are_normalised() {
        let m = Masters::new(vec![
            " http://a:1/ ".into(),
            "".into(),
            "b:2".into(),
            "a:1".into(),
        ])
        .unwrap();
        assert_eq!(m.addresses, ["a:1", "b:2"]);
        assert!(Masters::new(vec![" ".into()]).is_err());
        assert!(Masters::new(vec!["a b:1".into()]).is_err());
    }
}
