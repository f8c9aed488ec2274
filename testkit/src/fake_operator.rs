//! A fake master's operator API, for tests of operator clients (the CLI): a leader that
//! reports a fixed set of agents, or a follower answering `NotLeader`, or a leader still
//! taking office (answering `NotLeader` naming itself a number of times first).
//!
//! It answers `GetHealth`, `GetState` and `GetAgents`; every other call answers
//! `UNIMPLEMENTED`, a real error that clients must not retry elsewhere.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use drover_proto::leader::not_leader_status;
use drover_proto::pb::operator_server::{Operator, OperatorServer};
use drover_proto::pb::*;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// The operator service of a fake master. See the module docs.
#[derive(Debug)]
pub struct FakeOperator {
    info: MasterInfo,
    /// `None`: leader. `Some(hint)`: follower naming `hint` ("" for no leader known).
    follower_of: Option<String>,
    /// Calls still to answer "not the leader" naming itself (a leader taking office).
    taking_office: AtomicUsize,
    agents: Vec<AgentSummary>,
}

impl FakeOperator {
    /// A leader at `address` (master id 1, term 1) with no agents.
    pub fn leader(address: &str) -> FakeOperator {
        FakeOperator {
            info: MasterInfo {
                id: 1,
                address: address.to_string(),
                term: 1,
            },
            follower_of: None,
            taking_office: AtomicUsize::new(0),
            agents: Vec::new(),
        }
    }

    /// A follower at `address` whose every call answers `NotLeader` naming `leader`
    /// (empty: no leader known).
    pub fn follower(address: &str, leader: &str) -> FakeOperator {
        FakeOperator {
            follower_of: Some(leader.to_string()),
            ..Self::leader(address)
        }
    }

    /// The first `calls` calls answer `NotLeader` naming this master itself.
    pub fn taking_office(self, calls: usize) -> FakeOperator {
        self.taking_office.store(calls, Ordering::SeqCst);
        self
    }

    /// The agents `GetAgents` and `GetState` report.
    pub fn with_agents(mut self, agents: Vec<AgentSummary>) -> FakeOperator {
        self.agents = agents;
        self
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve_until(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(OperatorServer::new(self))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
    }

    /// Serves on `listener` in a background task, for as long as the runtime lives.
    pub fn spawn(self, listener: TcpListener) {
        tokio::spawn(self.serve_until(listener, std::future::pending()));
    }

    /// `Ok` when this master serves calls now; the `NotLeader` answer otherwise.
    #[allow(clippy::result_large_err)] // tonic's status, as every handler returns
    fn lead(&self) -> Result<(), Status> {
        let taking_office = self
            .taking_office
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if taking_office {
            return Err(not_leader_status(Some(&self.info.address)));
        }
        match &self.follower_of {
            Some(hint) => Err(not_leader_status(Some(hint))),
            None => Ok(()),
        }
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[allow(clippy::result_large_err)] // tonic's status, as every handler returns
fn not_here<T>() -> Answer<T> {
    Err(Status::unimplemented("not in the fake master"))
}

#[tonic::async_trait]
impl Operator for FakeOperator {
    async fn get_health(&self, _: Request<GetHealthRequest>) -> Answer<GetHealthResponse> {
        self.lead()?;
        Ok(Response::new(GetHealthResponse {
            healthy: true,
            leader: true,
            master_info: Some(self.info.clone()),
            leader_address: self.info.address.clone(),
            ..Default::default()
        }))
    }
    async fn get_state(&self, _: Request<GetStateRequest>) -> Answer<GetStateResponse> {
        self.lead()?;
        Ok(Response::new(GetStateResponse {
            master_info: Some(self.info.clone()),
            agents: self.agents.clone(),
            ..Default::default()
        }))
    }
    async fn get_agents(&self, _: Request<GetAgentsRequest>) -> Answer<GetAgentsResponse> {
        self.lead()?;
        Ok(Response::new(GetAgentsResponse {
            agents: self.agents.clone(),
        }))
    }
    async fn get_frameworks(
        &self,
        _: Request<GetFrameworksRequest>,
    ) -> Answer<GetFrameworksResponse> {
        self.lead()?;
        not_here()
    }
    async fn get_tasks(&self, _: Request<GetTasksRequest>) -> Answer<GetTasksResponse> {
        self.lead()?;
        not_here()
    }
    async fn get_roles(&self, _: Request<GetRolesRequest>) -> Answer<GetRolesResponse> {
        self.lead()?;
        not_here()
    }
    async fn get_metrics(&self, _: Request<GetMetricsRequest>) -> Answer<GetMetricsResponse> {
        self.lead()?;
        not_here()
    }
    async fn update_weights(
        &self,
        _: Request<UpdateWeightsRequest>,
    ) -> Answer<UpdateWeightsResponse> {
        self.lead()?;
        not_here()
    }
    async fn update_quota(&self, _: Request<UpdateQuotaRequest>) -> Answer<UpdateQuotaResponse> {
        self.lead()?;
        not_here()
    }
    async fn get_maintenance(
        &self,
        _: Request<GetMaintenanceRequest>,
    ) -> Answer<GetMaintenanceResponse> {
        self.lead()?;
        not_here()
    }
    async fn update_maintenance(
        &self,
        _: Request<UpdateMaintenanceRequest>,
    ) -> Answer<UpdateMaintenanceResponse> {
        self.lead()?;
        not_here()
    }
    async fn reserve_resources(
        &self,
        _: Request<ReserveResourcesRequest>,
    ) -> Answer<ReserveResourcesResponse> {
        self.lead()?;
        not_here()
    }
    async fn unreserve_resources(
        &self,
        _: Request<UnreserveResourcesRequest>,
    ) -> Answer<UnreserveResourcesResponse> {
        self.lead()?;
        not_here()
    }
    async fn create_volumes(
        &self,
        _: Request<CreateVolumesRequest>,
    ) -> Answer<CreateVolumesResponse> {
        self.lead()?;
        not_here()
    }
    async fn destroy_volumes(
        &self,
        _: Request<DestroyVolumesRequest>,
    ) -> Answer<DestroyVolumesResponse> {
        self.lead()?;
        not_here()
    }
    async fn teardown_framework(
        &self,
        _: Request<TeardownFrameworkRequest>,
    ) -> Answer<TeardownFrameworkResponse> {
        self.lead()?;
        not_here()
    }
    async fn list_masters(&self, _: Request<ListMastersRequest>) -> Answer<ListMastersResponse> {
        self.lead()?;
        not_here()
    }
    async fn add_master(&self, _: Request<AddMasterRequest>) -> Answer<AddMasterResponse> {
        self.lead()?;
        not_here()
    }
    async fn remove_master(&self, _: Request<RemoveMasterRequest>) -> Answer<RemoveMasterResponse> {
        self.lead()?;
        not_here()
    }
    async fn transfer_leadership(
        &self,
        _: Request<TransferLeadershipRequest>,
    ) -> Answer<TransferLeadershipResponse> {
        self.lead()?;
        not_here()
    }
    type BackupStream = futures::stream::Empty<Result<BackupChunk, Status>>;
    async fn backup(&self, _: Request<BackupRequest>) -> Answer<Self::BackupStream> {
        self.lead()?;
        not_here()
    }
    type SubscribeStream = futures::stream::Empty<Result<OperatorEvent, Status>>;
    async fn subscribe(
        &self,
        _: Request<OperatorSubscribeRequest>,
    ) -> Answer<Self::SubscribeStream> {
        self.lead()?;
        not_here()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::leader::leader_hint;
    use drover_proto::pb::operator_client::OperatorClient;

    async fn start(
        fake: impl FnOnce(&str) -> FakeOperator,
    ) -> OperatorClient<tonic::transport::Channel> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        fake(&address).spawn(listener);
        OperatorClient::connect(format!("http://{address}"))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn leaders_serve_followers_redirect_and_new_leaders_take_office() {
        let agent = AgentSummary {
            hostname: "h".into(),
            ..Default::default()
        };
        let mut leader = start(|a| FakeOperator::leader(a).with_agents(vec![agent.clone()])).await;
        let agents = leader.get_agents(GetAgentsRequest {}).await.unwrap();
        assert_eq!(agents.into_inner().agents, vec![agent]);
        let e = leader
            .get_tasks(GetTasksRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);

        let mut follower = start(|a| FakeOperator::follower(a, "10.0.0.1:5050")).await;
        let e = follower.get_health(GetHealthRequest {}).await.unwrap_err();
        assert_eq!(leader_hint(&e).as_deref(), Some("10.0.0.1:5050"));

        let mut address = String::new();
        let mut new = start(|a| {
            address = a.to_string();
            FakeOperator::leader(a).taking_office(2)
        })
        .await;
        for _ in 0..2 {
            let e = new.get_health(GetHealthRequest {}).await.unwrap_err();
            assert_eq!(leader_hint(&e), Some(address.clone()));
        }
        assert!(
            new.get_health(GetHealthRequest {})
                .await
                .unwrap()
                .into_inner()
                .leader
        );
    }
}
