//! Hostile and malformed calls against a real cluster: each gets a precise gRPC status or a
//! TASK_ERROR with a reason, nothing else is disturbed, and the cluster keeps working.

use drover_proto::pb::{self, TaskState};
use drover_proto::{resources::scalar, OfferId, Resources};
use drover_tests::raw::{subscribe, task};
use drover_tests::{Cluster, Timing};
use tonic::Code;

fn small() -> Vec<pb::Resource> {
    Resources::parse("cpus:0.1;mem:16").unwrap().to_proto()
}

#[test]
fn hostile_calls_are_refused_precisely_and_the_cluster_keeps_working() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(2);
    let addr = cluster.master_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut a = subscribe(&addr, "a").await;
        let mut b = subscribe(&addr, "b").await;
        let offer = a.offer().await;
        let oid = offer.id.clone().unwrap();
        let agent = offer.agent_id.clone().unwrap();

        // Unknown offer.
        let e = a
            .launch(
                vec![OfferId::new("no-such-offer")],
                vec![task("t0", small(), "true")],
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        // Someone else's offer.
        let e = b
            .launch(vec![oid.clone()], vec![task("t0", small(), "true")])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        // The same offer twice in one call.
        let e = a
            .launch(
                vec![oid.clone(), oid.clone()],
                vec![task("t0", small(), "true")],
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        // Calls on someone else's stream.
        let mut stolen = a.header.clone();
        stolen.stream_id = b.header.stream_id.clone();
        let e = a
            .client
            .revive(pb::ReviveCall {
                header: Some(stolen),
                roles: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        // Unknown framework id.
        let unknown = pb::CallHeader {
            framework_id: Some("no-such-framework".into()),
            stream_id: "x".into(),
        };
        let e = a
            .client
            .revive(pb::ReviveCall {
                header: Some(unknown),
                roles: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        // Negative refuse_seconds.
        let e = a
            .client
            .decline(pb::DeclineCall {
                header: Some(a.header.clone()),
                offer_ids: vec![oid.clone()],
                filters: Some(pb::Filters {
                    refuse_seconds: Some(-1.0),
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

        // One ACCEPT full of bad tasks plus one good one: each bad task gets TASK_ERROR with a
        // reason, the good one runs.
        let mut elsewhere = task("elsewhere", small(), "true");
        elsewhere.agent_id = Some("some-other-agent".into());
        let tasks = vec![
            task("negative", vec![scalar("cpus", -1.0)], "true"),
            task("nan", vec![scalar("mem", f64::NAN)], "true"),
            task("absurd", vec![scalar("cpus", 1e300)], "true"),
            task("empty", small(), "   "),
            task(
                "greedy",
                Resources::parse("cpus:64;mem:16").unwrap().to_proto(),
                "true",
            ),
            elsewhere,
            task("good", small(), "echo fine"),
            task("good", small(), "echo duplicate"),
        ];
        a.launch(vec![oid.clone()], tasks).await.unwrap();
        let mut errors = std::collections::HashMap::new();
        let mut good_done = false;
        while errors.len() < 7 || !good_done {
            let st = a.update().await;
            a.ack(&st).await;
            let id = st.task_id.clone().unwrap().value;
            if st.state == TaskState::TaskError as i32 {
                assert!(
                    !st.message.is_empty(),
                    "TASK_ERROR for {id} carries a reason"
                );
                assert_eq!(st.reason, pb::task_status::Reason::TaskInvalid as i32);
                errors.insert(id, st.message);
            } else if id == "good" && st.state == TaskState::TaskFinished as i32 {
                good_done = true;
            }
        }
        for id in [
            "negative",
            "nan",
            "absurd",
            "empty",
            "greedy",
            "elsewhere",
            "good",
        ] {
            assert!(errors.contains_key(id), "{id} refused: {errors:?}");
        }

        // The offer was used: accepting it again fails, nothing launched.
        let e = a
            .launch(vec![oid.clone()], vec![task("again", small(), "true")])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        // A task id already used by this framework.
        let offer = a.offer().await;
        a.launch(
            vec![offer.id.clone().unwrap()],
            vec![task("good", small(), "true")],
        )
        .await
        .unwrap();
        let st = a.update().await;
        assert_eq!(st.state, TaskState::TaskError as i32);
        assert!(st.message.contains("already in use"), "{}", st.message);

        // Killing and acknowledging unknown tasks.
        let e = a
            .client
            .kill(pb::KillCall {
                header: Some(a.header.clone()),
                task_id: Some("ghost".into()),
                agent_id: None,
                kill_policy: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = a
            .client
            .acknowledge(pb::AcknowledgeCall {
                header: Some(a.header.clone()),
                agent_id: Some(agent.clone()),
                task_id: Some("ghost".into()),
                uuid: vec![1; 16],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);

        // Framework b is undisturbed and can still run work.
        let offer = b.offer().await;
        b.launch(
            vec![offer.id.clone().unwrap()],
            vec![task("b-ok", small(), "echo ok")],
        )
        .await
        .unwrap();
        loop {
            let st = b.update().await;
            if !st.uuid.is_empty() {
                // A malformed uuid for a real task is refused, not relayed (uuids are 16
                // bytes, as the agent makes them); the real acknowledgement then goes through.
                let e = b
                    .client
                    .acknowledge(pb::AcknowledgeCall {
                        header: Some(b.header.clone()),
                        agent_id: st.agent_id.clone(),
                        task_id: st.task_id.clone(),
                        uuid: st.uuid[..3].to_vec(),
                    })
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            }
            b.ack(&st).await;
            if st.state == TaskState::TaskFinished as i32 {
                break;
            }
            assert!(
                !drover_proto::states::is_terminal(drover_proto::states::from_i32(st.state)),
                "{st:?}"
            );
        }
    });
}

/// An acknowledgement must name an update the master sent: a well-formed uuid it never
/// sent is NOT_FOUND (it used to answer OK and relay it to the agent), while the real
/// acknowledgements go through and the task's later updates keep coming.
#[test]
fn acknowledging_a_uuid_the_master_never_sent_is_not_found() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let addr = cluster.master_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut a = subscribe(&addr, "acks").await;
        let offer = a.offer().await;
        a.launch(
            vec![offer.id.clone().unwrap()],
            vec![task("long", small(), "sleep 3600")],
        )
        .await
        .unwrap();
        let mut refused = 0;
        loop {
            let st = a.update().await;
            assert!(
                !drover_proto::states::is_terminal(drover_proto::states::from_i32(st.state)),
                "{st:?}"
            );
            if !st.uuid.is_empty() {
                let never_sent: Vec<u8> = st.uuid.iter().map(|b| !b).collect();
                let e = a
                    .client
                    .acknowledge(pb::AcknowledgeCall {
                        header: Some(a.header.clone()),
                        agent_id: st.agent_id.clone(),
                        task_id: st.task_id.clone(),
                        uuid: never_sent,
                    })
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), Code::NotFound, "{e:?}");
                refused += 1;
            }
            a.ack(&st).await;
            if st.state == TaskState::TaskRunning as i32 {
                break;
            }
        }
        assert!(refused > 0, "the task's updates carry uuids");
        // Still running, and its stream of updates is not stuck: the kill is reported.
        a.kill("long", 0.0).await.unwrap();
        loop {
            let st = a.update().await;
            a.ack(&st).await;
            if st.state == TaskState::TaskKilled as i32 {
                break;
            }
            assert!(
                !drover_proto::states::is_terminal(drover_proto::states::from_i32(st.state)),
                "{st:?}"
            );
        }
    });
}

/// An error about a huge caller-supplied id quotes only its start, so the real status
/// reaches the client (a 1 MiB message used to overflow the client's metadata limit).
#[test]
fn errors_about_huge_ids_keep_their_code_and_a_bounded_message() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let addr = cluster.master_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut a = subscribe(&addr, "huge").await;
        let huge = "x".repeat(1 << 20);
        let unknown = pb::CallHeader {
            framework_id: Some(huge.as_str().into()),
            stream_id: "x".into(),
        };
        let e = a
            .client
            .revive(pb::ReviveCall {
                header: Some(unknown),
                roles: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(e.message().len() < 1024, "{} bytes", e.message().len());
        assert!(e.message().contains("bytes)"), "{}", e.message());

        let e = a
            .client
            .decline(pb::DeclineCall {
                header: Some(a.header.clone()),
                offer_ids: vec![OfferId::new(huge.as_str())],
                filters: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(e.message().len() < 1024, "{} bytes", e.message().len());

        // The framework still works.
        let offer = a.offer().await;
        a.launch(
            vec![offer.id.clone().unwrap()],
            vec![task("fine", small(), "true")],
        )
        .await
        .unwrap();
        loop {
            let st = a.update().await;
            a.ack(&st).await;
            if st.state == TaskState::TaskFinished as i32 {
                break;
            }
        }
    });
}

/// Issue 14: an ACCEPT whose launch message would be larger than the agent's link takes
/// (here an 8 MiB label; the master → agent limit is 4 MiB) was committed, and the agent
/// then reconnected for ever. The gate now refuses the task with TASK_ERROR naming the
/// limit, and the agent stays connected and keeps running work.
#[test]
fn a_launch_too_big_for_its_agent_is_refused_and_the_agent_keeps_working() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let addr = cluster.master_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut a = subscribe(&addr, "big").await;
        let offer = a.offer().await;
        let agent = offer.agent_id.clone().unwrap();
        let mut huge = task("huge", small(), "true");
        huge.labels.push(pb::Label {
            key: "blob".into(),
            value: "x".repeat(8 * 1024 * 1024),
        });
        a.launch(vec![offer.id.clone().unwrap()], vec![huge])
            .await
            .unwrap();
        let st = a.update().await;
        assert_eq!(st.task_id.as_ref().unwrap().value, "huge");
        assert_eq!(st.state, TaskState::TaskError as i32, "{st:?}");
        assert_eq!(st.reason, pb::task_status::Reason::TaskInvalid as i32);
        assert!(
            st.message.contains("MAX_MASTER_MESSAGE_BYTES"),
            "the reason names the limit: {}",
            st.message
        );

        // The agent is still connected: its offers stay valid and a normal task runs.
        let offer = a.offer().await;
        assert_eq!(offer.agent_id.as_ref(), Some(&agent));
        a.launch(
            vec![offer.id.clone().unwrap()],
            vec![task("normal", small(), "echo ok")],
        )
        .await
        .unwrap();
        loop {
            let st = a.update().await;
            a.ack(&st).await;
            assert_eq!(st.task_id.as_ref().unwrap().value, "normal", "{st:?}");
            if st.state == TaskState::TaskFinished as i32 {
                break;
            }
            assert!(
                !drover_proto::states::is_terminal(drover_proto::states::from_i32(st.state)),
                "{st:?}"
            );
        }
        assert!(
            a.rescinded.is_empty(),
            "offers rescinded: {:?}",
            a.rescinded
        );
    });
}

/// The refusal names the limit, in its message and its `drover-limit` metadata.
fn assert_limit(e: &tonic::Status, name: &str) {
    assert!(e.message().contains(name), "{e:?}");
    let named = e
        .metadata()
        .get("drover-limit")
        .map(|v| v.to_str().unwrap());
    assert_eq!(named, Some(name), "{e:?}");
}

/// Issue 14: a request over a service's message-size limit gets RESOURCE_EXHAUSTED (gRPC's
/// convention; tonic answers OUT_OF_RANGE by itself), on the master and on the agent.
#[test]
fn an_oversized_call_gets_resource_exhausted() {
    let mut cluster = Cluster::start(Timing::default());
    cluster.add_agent("cpus:2;mem:1024");
    cluster.wait_for_active_agents(1);
    let addr = cluster.master_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut a = subscribe(&addr, "oversized").await;
        let over = |limit: usize| "x".repeat(limit + 1);

        // Master, scheduler API.
        let e = a
            .client
            .revive(pb::ReviveCall {
                header: Some(a.header.clone()),
                roles: vec![over(16 * 1024 * 1024)],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert_limit(&e, "MAX_SCHEDULER_CALL_BYTES");
        // The framework's stream is undisturbed.
        a.revive().await.unwrap();

        // Master, operator API.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let e = pb::operator_client::OperatorClient::new(channel)
            .teardown_framework(pb::TeardownFrameworkRequest {
                framework_id: Some(over(16 * 1024 * 1024).into()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert_limit(&e, "MAX_OPERATOR_CALL_BYTES");

        // Agent, agent API and executor API.
        let offer = a.offer().await;
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", offer.agent_address))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let e = pb::agent_api_client::AgentApiClient::new(channel.clone())
            .read_file(pb::ReadFileRequest {
                path: over(4 * 1024 * 1024),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert_limit(&e, "MAX_AGENT_API_CALL_BYTES");
        let e = pb::executor_client::ExecutorClient::new(channel)
            .message(pb::ExecutorMessageCall {
                data: over(4 * 1024 * 1024).into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert_limit(&e, "MAX_EXECUTOR_CALL_BYTES");
    });
}
