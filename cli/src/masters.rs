//! Talking to the masters: connect to one of the `--master` addresses, follow `NotLeader`
//! redirects to the leader, and turn "nobody answered" into an error a person can act on.
//!
//! Only the leader serves the operator API; a follower answers `UNAVAILABLE` with a
//! `NotLeader` detail naming the leader (see `drover_proto::leader`). A call therefore
//! walks the configured addresses in order, jumps to the named leader whenever one is
//! named (a bounded number of times, so two confused masters pointing at each other
//! cannot loop forever), and, while an election is in progress (no leader named
//! anywhere), waits a moment and makes a few more passes.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use drover_proto::leader::leader_hint;
use drover_proto::pb::operator_client::OperatorClient;
use tonic::transport::{Channel, Endpoint};

/// Leader redirects followed by one call before giving up.
const MAX_REDIRECTS: usize = 5;
/// How long to wait for a TCP connection to one master.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one operator call may take. Generous: `GetState` of a large cluster is big.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted. tonic's default of 4 MiB is too small for `GetState` of a
/// cluster with tens of thousands of tasks.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Pause between passes over the masters while no leader is elected.
const ELECTION_BACKOFF: Duration = Duration::from_millis(700);

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
}

impl Masters {
    /// Parses the `--master` list: `HOST:PORT` entries, optionally with an `http://`
    /// scheme; blanks (from `a,,b` or a trailing comma) are dropped.
    pub fn new(addresses: Vec<String>) -> Result<Self> {
        let mut out: Vec<String> = Vec::new();
        for a in addresses.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            let a = display_address(a);
            if a.is_empty() || a.contains(char::is_whitespace) {
                bail!("'{a}' is not a master address; expected HOST:PORT");
            }
            if !out.contains(&a) {
                out.push(a);
            }
        }
        if out.is_empty() {
            bail!("no master address given; pass --master HOST:PORT or set DROVER_MASTER");
        }
        Ok(Masters {
            addresses: out,
            election_retries: 3,
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
        for pass in 0..=self.election_retries {
            if pass > 0 {
                tokio::time::sleep(ELECTION_BACKOFF).await;
            }
            attempts.clear();
            match self.one_pass(&call, &mut attempts).await? {
                Some(value) => return Ok(value),
                None if attempts
                    .iter()
                    .any(|a| matches!(a.outcome, Outcome::NoLeaderKnown)) =>
                {
                    // An election is probably under way: worth another pass.
                    continue;
                }
                None => break,
            }
        }
        Err(no_master_error(&self.addresses, &attempts))
    }

    /// One pass over the cached leader and every configured master. `Ok(None)` when none
    /// served the call (reasons in `attempts`); `Err` for a real answer that is an error
    /// (such as INVALID_ARGUMENT) or a redirect loop.
    async fn one_pass<T, F, Fut>(&self, call: &F, attempts: &mut Vec<Attempt>) -> Result<Option<T>>
    where
        F: Fn(OperatorClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let cached = self.lock_leader().clone();
        let mut queue: VecDeque<(String, Option<Channel>)> = VecDeque::new();
        if let Some((address, channel)) = cached {
            queue.push_back((address, Some(channel)));
        }
        for a in &self.addresses {
            if !queue.iter().any(|(q, _)| q == a) {
                queue.push_back((a.clone(), None));
            }
        }

        let mut redirects = 0;
        while let Some((address, channel)) = queue.pop_front() {
            let channel = match channel {
                Some(c) => c,
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
            match leader_hint(&status) {
                // A master naming itself was just elected and is still taking office
                // (applying what its term committed before it serves): like an election
                // under way, worth another pass after the backoff, not a redirect to
                // follow at once (five of those take a few milliseconds).
                Some(leader) if display_address(&leader) == address => attempts.push(Attempt {
                    address,
                    outcome: Outcome::NoLeaderKnown,
                }),
                Some(leader) if !leader.is_empty() => {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        bail!(
                            "gave up after following {MAX_REDIRECTS} leader redirects (last: \
                             {address} named {leader}); the masters may be in the middle of \
                             an election, try again in a moment"
                        );
                    }
                    let leader = display_address(&leader);
                    attempts.push(Attempt {
                        address,
                        outcome: Outcome::Redirected(leader.clone()),
                    });
                    queue.retain(|(q, _)| *q != leader);
                    queue.push_front((leader, None));
                }
                Some(_) => attempts.push(Attempt {
                    address,
                    outcome: Outcome::NoLeaderKnown,
                }),
                None if is_unreachable(&status) => attempts.push(Attempt {
                    address,
                    outcome: Outcome::Unreachable(status_text(&status)),
                }),
                None => bail!(
                    "master {address} answered {:?}: {}",
                    status.code(),
                    status.message()
                ),
            }
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

/// An address without its `http://` scheme, as people write it and as the error
/// messages show it.
fn display_address(address: &str) -> String {
    address
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
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
    let mut text = if electing {
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
        };
        let _ = write!(text, "\n  {}: {why}", a.address);
    }
    anyhow!(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::leader::not_leader_status;
    use drover_proto::pb::operator_server::{Operator, OperatorServer};
    use drover_proto::pb::*;
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};

    /// The smallest stand-in for `drover_proto`'s operator service: a leader that answers
    /// `GetHealth`, or a follower that answers `NotLeader` with a fixed hint.
    struct FakeMaster {
        /// `None`: leader. `Some(hint)`: follower naming `hint` ("" for no leader known).
        follower_of: Option<String>,
        address: String,
        /// A leader taking office: this many calls answer "not the leader" naming itself.
        taking_office: std::sync::atomic::AtomicUsize,
    }

    /// Every call other than `GetHealth` answers like the rest of a follower or leader
    /// would; the tests only use `GetHealth` and `GetTasks`.
    #[tonic::async_trait]
    impl Operator for FakeMaster {
        async fn get_health(
            &self,
            _: Request<GetHealthRequest>,
        ) -> Result<Response<GetHealthResponse>, Status> {
            use std::sync::atomic::Ordering;
            let taking_office = self
                .taking_office
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if taking_office {
                return Err(not_leader_status(Some(&self.address)));
            }
            match &self.follower_of {
                Some(hint) => Err(not_leader_status(Some(hint))),
                None => Ok(Response::new(GetHealthResponse {
                    healthy: true,
                    leader: true,
                    master_info: None,
                    leader_address: self.address.clone(),
                    ..Default::default()
                })),
            }
        }
        async fn get_state(
            &self,
            _: Request<GetStateRequest>,
        ) -> Result<Response<GetStateResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn get_agents(
            &self,
            _: Request<GetAgentsRequest>,
        ) -> Result<Response<GetAgentsResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn get_frameworks(
            &self,
            _: Request<GetFrameworksRequest>,
        ) -> Result<Response<GetFrameworksResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn get_tasks(
            &self,
            _: Request<GetTasksRequest>,
        ) -> Result<Response<GetTasksResponse>, Status> {
            Err(Status::invalid_argument("bad filter"))
        }
        async fn get_roles(
            &self,
            _: Request<GetRolesRequest>,
        ) -> Result<Response<GetRolesResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn get_metrics(
            &self,
            _: Request<GetMetricsRequest>,
        ) -> Result<Response<GetMetricsResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn update_weights(
            &self,
            _: Request<UpdateWeightsRequest>,
        ) -> Result<Response<UpdateWeightsResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn update_quota(
            &self,
            _: Request<UpdateQuotaRequest>,
        ) -> Result<Response<UpdateQuotaResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn get_maintenance(
            &self,
            _: Request<GetMaintenanceRequest>,
        ) -> Result<Response<GetMaintenanceResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn update_maintenance(
            &self,
            _: Request<UpdateMaintenanceRequest>,
        ) -> Result<Response<UpdateMaintenanceResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn reserve_resources(
            &self,
            _: Request<ReserveResourcesRequest>,
        ) -> Result<Response<ReserveResourcesResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn unreserve_resources(
            &self,
            _: Request<UnreserveResourcesRequest>,
        ) -> Result<Response<UnreserveResourcesResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn create_volumes(
            &self,
            _: Request<CreateVolumesRequest>,
        ) -> Result<Response<CreateVolumesResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn destroy_volumes(
            &self,
            _: Request<DestroyVolumesRequest>,
        ) -> Result<Response<DestroyVolumesResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn teardown_framework(
            &self,
            _: Request<TeardownFrameworkRequest>,
        ) -> Result<Response<TeardownFrameworkResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn list_masters(
            &self,
            _: Request<ListMastersRequest>,
        ) -> Result<Response<ListMastersResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn add_master(
            &self,
            _: Request<AddMasterRequest>,
        ) -> Result<Response<AddMasterResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn remove_master(
            &self,
            _: Request<RemoveMasterRequest>,
        ) -> Result<Response<RemoveMasterResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        async fn transfer_leadership(
            &self,
            _: Request<TransferLeadershipRequest>,
        ) -> Result<Response<TransferLeadershipResponse>, Status> {
            Err(Status::unimplemented("test"))
        }
        type BackupStream = futures::stream::Empty<Result<BackupChunk, Status>>;
        async fn backup(
            &self,
            _: Request<BackupRequest>,
        ) -> Result<Response<Self::BackupStream>, Status> {
            Err(Status::unimplemented("test"))
        }
        type SubscribeStream = futures::stream::Empty<Result<OperatorEvent, Status>>;
        async fn subscribe(
            &self,
            _: Request<OperatorSubscribeRequest>,
        ) -> Result<Response<Self::SubscribeStream>, Status> {
            Err(Status::unimplemented("test"))
        }
    }

    /// Binds port 0 first so the test knows its address before choosing hints.
    async fn bind() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        (listener, address)
    }

    fn serve(listener: TcpListener, address: String, follower_of: Option<String>) {
        serve_taking_office(listener, address, follower_of, 0);
    }

    fn serve_taking_office(
        listener: TcpListener,
        address: String,
        follower_of: Option<String>,
        calls: usize,
    ) {
        let service = OperatorServer::new(FakeMaster {
            follower_of,
            address,
            taking_office: calls.into(),
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
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
        // More calls than redirects are followed in one pass: following them at once
        // would give up; waiting between passes reaches the leader once it serves.
        let (listener, a) = bind().await;
        serve_taking_office(listener, a.clone(), None, MAX_REDIRECTS + 1);
        let masters = Masters::new(vec![a.clone()])
            .unwrap()
            .with_election_retries(MAX_REDIRECTS + 2);
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
        assert!(error.contains("InvalidArgument: bad filter"), "{error}");
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
