//! The flows the services call: a step of the [`Leader`](crate::leader::Leader), then
//! its effects, with the stream the caller opens attached where the flow opens one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;

use drover_proto::pb;
use drover_proto::{AgentId, FrameworkId};

use super::{Attach, Master, STREAM_QUEUE};
use crate::error::MasterError;

/// How long a new agent stream may take to send its Register message.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// A framework's event stream, as the scheduler service returns it.
pub type EventRx = mpsc::Receiver<Result<pb::Event, Status>>;
/// An agent's command stream, as the agent service returns it.
pub type AgentRx = mpsc::Receiver<Result<pb::MasterMessage, Status>>;

impl Master {
    /// SUBSCRIBE: registers (or re-registers) the framework and opens its event stream.
    /// Returns the framework id, stream id and the receiver of its events.
    pub async fn subscribe(
        self: &Arc<Self>,
        req: pb::SubscribeRequest,
    ) -> Result<(FrameworkId, String, EventRx), MasterError> {
        self.await_known_leader().await;
        self.ensure_leader()?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let opened = self
            .run_attached(
                |leader, reg, now| leader.subscribe(reg, now, req),
                Attach::Framework(tx),
            )
            .await?;
        let (fw, stream_id) = opened
            .framework
            .ok_or_else(|| MasterError::Internal("SUBSCRIBE opened no stream".into()))?;
        Ok((fw, stream_id, rx))
    }

    /// The framework's stream `stream_id` ended (the client went away).
    pub fn framework_disconnected(self: &Arc<Self>, fw: FrameworkId, stream_id: String) {
        self.run_now(|leader, reg, now| leader.framework_disconnected(reg, now, &fw, &stream_id));
    }

    /// ACCEPT: the gate, then commit, then send launches to the agent. Runs to completion
    /// in its own task even if the caller cancels: bookkeeping after the commit (pending
    /// resources, sending the launch) must not be skipped.
    pub async fn accept(self: &Arc<Self>, call: pb::AcceptCall) -> Result<(), MasterError> {
        let master = self.clone();
        tokio::spawn(async move {
            master
                .run(|leader, reg, now| leader.accept(reg, now, call))
                .await
        })
        .await
        .map_err(|e| MasterError::Internal(format!("accept task failed: {e}")))?
    }

    /// TEARDOWN by the framework itself.
    pub async fn teardown(
        self: &Arc<Self>,
        header: Option<pb::CallHeader>,
    ) -> Result<(), MasterError> {
        let fw = self
            .step(|leader, reg, _| leader.check_caller(reg, header.as_ref()))
            .map_err(|e| self.named(e))?;
        self.remove_framework(move |leader, _, now| {
            Ok(leader.remove_framework(now, fw, "torn down by the framework"))
        })
        .await
    }

    /// TEARDOWN by an operator.
    pub async fn teardown_by_operator(
        self: &Arc<Self>,
        fw: Option<FrameworkId>,
    ) -> Result<(), MasterError> {
        self.remove_framework(move |leader, reg, now| leader.teardown_by_operator(reg, now, fw))
            .await
    }

    /// Removes a framework in a task of its own, so that a caller that goes away cannot
    /// leave its tasks running.
    async fn remove_framework(
        self: &Arc<Self>,
        step: impl FnOnce(
                &mut crate::leader::Leader,
                &crate::registry::Registry,
                u64,
            ) -> Result<Vec<crate::leader::Effect>, MasterError>
            + Send
            + 'static,
    ) -> Result<(), MasterError> {
        let master = self.clone();
        tokio::spawn(async move { master.run(step).await })
            .await
            .map_err(|e| MasterError::Internal(format!("teardown task failed: {e}")))?
    }

    /// An agent's session after its Register message: commits the (re)registration and
    /// opens the stream of commands to the agent, then reads the agent's messages in a
    /// task of its own.
    pub async fn agent_session(
        self: &Arc<Self>,
        register: pb::agent_message::Register,
        inbound: tonic::Streaming<pb::AgentMessage>,
    ) -> Result<AgentRx, MasterError> {
        let address = register
            .info
            .as_ref()
            .map(|i| i.address.clone())
            .unwrap_or_default();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let opened = self
            .run_attached(
                |leader, _, now| leader.register_agent(now, register),
                Attach::Agent(tx),
            )
            .await?;
        let (agent_id, conn_id) = opened
            .agent
            .ok_or_else(|| MasterError::Internal("the agent's session opened no stream".into()))?;
        tracing::info!(agent = %agent_id, %address, "agent registered");
        let master = self.clone();
        tokio::spawn(async move {
            master.agent_inbound(agent_id, conn_id, inbound).await;
        });
        Ok(rx)
    }

    async fn agent_inbound(
        self: Arc<Self>,
        agent_id: AgentId,
        conn_id: u64,
        mut inbound: tonic::Streaming<pb::AgentMessage>,
    ) {
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(agent = %agent_id, error = %e, "agent stream error");
                    break;
                }
            };
            let mut current = true;
            self.run_now(|leader, reg, now| {
                leader
                    .agent_message(reg, now, &agent_id, conn_id, msg)
                    .unwrap_or_else(|| {
                        current = false;
                        Vec::new()
                    })
            });
            if !current {
                // Replaced by a newer stream, or no longer leading.
                return;
            }
        }
        self.run_now(|leader, _, _| leader.agent_disconnected(&agent_id, conn_id));
    }
}
