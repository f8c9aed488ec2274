//! A framework spoken to over raw gRPC (no SDK), for tests of the protocol itself: hostile
//! calls, offers, declines and filters.

use std::time::Duration;

use drover_proto::pb::{self, scheduler_client::SchedulerClient};
use drover_proto::{OfferId, TaskId};
use tonic::transport::Channel;

pub struct Fw {
    pub client: SchedulerClient<Channel>,
    pub events: tonic::Streaming<pb::Event>,
    pub header: pb::CallHeader,
    pub offers: std::collections::VecDeque<pb::Offer>,
    pub updates: std::collections::VecDeque<pb::TaskStatus>,
    pub rescinded: Vec<OfferId>,
}

pub async fn subscribe(addr: &str, name: &str) -> Fw {
    subscribe_with(addr, name, Vec::new()).await
}

/// [`subscribe`] declaring these `FrameworkInfo.Capability`s.
pub async fn subscribe_with(addr: &str, name: &str, capabilities: Vec<i32>) -> Fw {
    let mut client = SchedulerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut events = client
        .subscribe(pb::SubscribeRequest {
            framework_info: Some(pb::FrameworkInfo {
                name: name.into(),
                user: "root".into(),
                failover_timeout: 60.0,
                capabilities,
                ..Default::default()
            }),
            suppressed_roles: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let first = events.message().await.unwrap().unwrap();
    let Some(pb::event::Event::Subscribed(s)) = first.event else {
        panic!("expected SUBSCRIBED")
    };
    Fw {
        client,
        events,
        header: pb::CallHeader {
            framework_id: s.framework_id,
            stream_id: s.stream_id,
        },
        offers: Default::default(),
        updates: Default::default(),
        rescinded: Vec::new(),
    }
}

impl Fw {
    /// Reads one event into the queues (bounded wait).
    pub async fn pump(&mut self) {
        let e = tokio::time::timeout(Duration::from_secs(90), self.events.message())
            .await
            .expect("no event arrived")
            .unwrap()
            .unwrap();
        match e.event {
            Some(pb::event::Event::Offers(o)) => self.offers.extend(o.offers),
            Some(pb::event::Event::Update(u)) => self.updates.extend(u.status),
            Some(pb::event::Event::Rescind(r)) => {
                self.offers.retain(|o| o.id != r.offer_id);
                self.rescinded.extend(r.offer_id);
            }
            _ => {}
        }
    }

    /// An offer if one arrives within `within`, else `None`.
    pub async fn offer_within(&mut self, within: Duration) -> Option<pb::Offer> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(o) = self.offers.pop_front() {
                return Some(o);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || tokio::time::timeout(left, self.pump()).await.is_err() {
                return None;
            }
        }
    }

    /// Waits (bounded) until the master rescinds `id`.
    pub async fn rescind_of(&mut self, id: &OfferId) {
        while !self.rescinded.contains(id) {
            self.pump().await;
        }
    }

    pub async fn decline(
        &mut self,
        ids: Vec<OfferId>,
        refuse_seconds: f64,
    ) -> Result<(), tonic::Status> {
        self.client
            .decline(pb::DeclineCall {
                header: Some(self.header.clone()),
                offer_ids: ids,
                filters: Some(pb::Filters {
                    refuse_seconds: Some(refuse_seconds),
                }),
            })
            .await
            .map(|_| ())
    }

    pub async fn revive(&mut self) -> Result<(), tonic::Status> {
        self.client
            .revive(pb::ReviveCall {
                header: Some(self.header.clone()),
                roles: vec![],
            })
            .await
            .map(|_| ())
    }

    pub async fn suppress(&mut self) -> Result<(), tonic::Status> {
        self.client
            .suppress(pb::SuppressCall {
                header: Some(self.header.clone()),
                roles: vec![],
            })
            .await
            .map(|_| ())
    }

    pub async fn kill(&mut self, task: &str, grace_secs: f64) -> Result<(), tonic::Status> {
        self.client
            .kill(pb::KillCall {
                header: Some(self.header.clone()),
                task_id: Some(TaskId::new(task)),
                agent_id: None,
                kill_policy: Some(pb::KillPolicy {
                    grace_period_seconds: grace_secs,
                }),
            })
            .await
            .map(|_| ())
    }

    pub async fn offer(&mut self) -> pb::Offer {
        loop {
            if let Some(o) = self.offers.pop_front() {
                return o;
            }
            self.pump().await;
        }
    }

    pub async fn update(&mut self) -> pb::TaskStatus {
        loop {
            if let Some(u) = self.updates.pop_front() {
                return u;
            }
            self.pump().await;
        }
    }

    pub async fn launch(
        &mut self,
        offers: Vec<OfferId>,
        tasks: Vec<pb::TaskInfo>,
    ) -> Result<(), tonic::Status> {
        self.accept_one(
            offers,
            pb::Operation {
                r#type: pb::operation::Type::Launch as i32,
                launch: Some(pb::operation::Launch { task_infos: tasks }),
                ..Default::default()
            },
        )
        .await
    }

    /// One LAUNCH_GROUP of `tasks` under `executor` (the agent's default executor).
    pub async fn launch_group(
        &mut self,
        offers: Vec<OfferId>,
        executor: pb::ExecutorInfo,
        tasks: Vec<pb::TaskInfo>,
    ) -> Result<(), tonic::Status> {
        self.accept_one(
            offers,
            pb::Operation {
                r#type: pb::operation::Type::LaunchGroup as i32,
                launch_group: Some(pb::operation::LaunchGroup {
                    executor: Some(executor),
                    task_group: Some(pb::TaskGroupInfo { tasks }),
                }),
                ..Default::default()
            },
        )
        .await
    }

    /// ACCEPT with one operation; what it leaves is declined without a filter.
    async fn accept_one(
        &mut self,
        offers: Vec<OfferId>,
        operation: pb::Operation,
    ) -> Result<(), tonic::Status> {
        self.client
            .accept(pb::AcceptCall {
                header: Some(self.header.clone()),
                offer_ids: offers,
                operations: vec![operation],
                filters: Some(pb::Filters {
                    refuse_seconds: Some(0.0),
                }),
            })
            .await
            .map(|_| ())
    }

    pub async fn ack(&mut self, st: &pb::TaskStatus) {
        if st.uuid.is_empty() {
            return;
        }
        self.client
            .acknowledge(pb::AcknowledgeCall {
                header: Some(self.header.clone()),
                agent_id: st.agent_id.clone(),
                task_id: st.task_id.clone(),
                uuid: st.uuid.clone(),
            })
            .await
            .unwrap();
    }
}

/// A shell task with the given resources.
pub fn task(id: &str, res: Vec<pb::Resource>, cmd: &str) -> pb::TaskInfo {
    pb::TaskInfo {
        name: id.into(),
        task_id: Some(TaskId::new(id)),
        resources: res,
        command: Some(pb::CommandInfo {
            value: cmd.into(),
            shell: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}
