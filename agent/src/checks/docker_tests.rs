//! Checks of a Docker task against the real engine (skipped with a printed reason where
//! none answers, failing under `CI=true` then): HTTP inside the container's own network,
//! COMMAND through `docker exec`.

use std::path::Path;
use std::time::Duration;

use drover_proto::pb::{self, check_info::Type, container_info};
use drover_proto::{AgentId, TaskId};

use super::{docker_place, Driver, Runner};
use crate::containerizer::docker::testing::{engine_missing, remove_containers_of, TestImage};
use crate::containerizer::docker::{DockerContainerizer, DEFAULT_SOCKET};
use crate::containerizer::{Containerizer, LaunchSpec};
use crate::layout::{Layout, TaskKey};

/// Removes the containers of the work dir on drop, also when the test fails.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_containers_of(&self.0);
    }
}

fn check(t: Type, port: u16, script: &str) -> pb::CheckInfo {
    pb::CheckInfo {
        r#type: t as i32,
        http: (t == Type::Http).then(|| pb::check_info::Http {
            port: port.into(),
            path: "/index.html".into(),
        }),
        command: (t == Type::Command).then(|| pb::CommandInfo {
            value: script.into(),
            shell: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_reach_a_docker_task_inside_its_network_and_container() {
    if engine_missing("checks_reach_a_docker_task_inside_its_network_and_container")
        .await
        .is_some()
    {
        return;
    }
    let image = TestImage::import().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let _cleanup = Cleanup(root.clone());
    let layout = Layout::new(&root);
    let docker = DockerContainerizer::connect(Path::new(DEFAULT_SOCKET), layout.clone())
        .await
        .unwrap();

    // A port free on the host: the server listens on it only inside the container's
    // own network namespace.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = TaskKey::new("fw", "web");
    let sandbox = layout.sandbox(&key);
    std::fs::create_dir_all(&sandbox).unwrap();
    let meta = layout.task_meta(&key);
    std::fs::create_dir_all(meta.dir()).unwrap();
    let task = pb::TaskInfo {
        name: "web".into(),
        task_id: Some(TaskId::new("web")),
        command: Some(pb::CommandInfo {
            value: format!(
                "echo ok > index.html; exec httpd -f -p 127.0.0.1:{port} -h /mnt/sandbox"
            ),
            shell: true,
            ..Default::default()
        }),
        resources: vec![
            drover_proto::resources::scalar("cpus", 0.1),
            drover_proto::resources::scalar("mem", 32.0),
        ],
        container: Some(pb::ContainerInfo {
            r#type: container_info::Type::Docker as i32,
            network: container_info::Network::Isolated as i32,
            docker: Some(container_info::Docker {
                image: image.name.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    docker
        .launch(LaunchSpec {
            key: key.clone(),
            task,
            agent_id: AgentId::new("agent-test"),
            sandbox: sandbox.clone(),
            meta,
            group: None,
        })
        .await
        .unwrap();

    let attempt = |c: pb::CheckInfo| {
        let driver = Driver {
            key: key.clone(),
            check: c.clone(),
            place: docker_place("agent-test", &key),
            exe: "/proc/self/exe".into(),
            docker_socket: DEFAULT_SOCKET.into(),
            docker: Default::default(),
        };
        async move {
            let target = driver.target().await.unwrap();
            Runner::new(c, target, driver.exe.clone(), driver.docker().await)
                .attempt(Duration::from_secs(30))
                .await
        }
    };
    // The server needs a moment to start: bounded retries.
    let mut http = None;
    for _ in 0..100 {
        let o = attempt(check(Type::Http, port, "")).await;
        if o.success {
            http = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = http.expect("the HTTP check never succeeded");
    assert_eq!(http.status.http_status, Some(200));
    // The host's own loopback has nobody on that port: the check ran inside.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    let ok = attempt(check(Type::Command, 0, "test -f /mnt/sandbox/index.html")).await;
    assert!(ok.success, "{ok:?}");
    assert_eq!(ok.status.exit_code, Some(0));
    let bad = attempt(check(Type::Command, 0, "exit 3")).await;
    assert!(!bad.success);
    assert_eq!(bad.status.exit_code, Some(3));

    docker
        .kill(
            &key,
            Duration::from_secs(1),
            pb::task_status::Reason::KilledByFramework,
        )
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(60), docker.wait(&key)).await;
}
