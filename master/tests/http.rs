//! The master's HTTP endpoints, read from a real master (Raft, RocksDB, gRPC and HTTP on
//! loopback) the way an operator or Prometheus reads them.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use drover_master::config::{Config, Flags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Master {
    http: SocketAddr,
    _dir: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<drover_master::error::Result<()>>,
}

impl Master {
    /// Starts master 1; `absent_peer` makes it one of two voters whose other voter never
    /// answers, so that it stays a follower.
    async fn start(absent_peer: bool) -> Master {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = listener.local_addr().unwrap();
        let http = http_listener.local_addr().unwrap();
        let data_dir = dir.path().join("master");
        let mut args = vec![
            "drover-master".to_string(),
            format!("--listen={listen}"),
            format!("--http-listen={http}"),
            format!("--data-dir={}", data_dir.display()),
        ];
        if absent_peer {
            // A port that was free a moment ago: nothing answers there.
            let nobody = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let nobody = nobody.local_addr().unwrap();
            args.push(format!("--peers=1={listen},2={nobody}"));
        }
        let config = Config::from_flags(&Flags::parse_from(args)).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(drover_master::serve(
            config,
            listener,
            http_listener,
            async {
                let _ = stopped.await;
            },
        ));
        Master {
            http,
            _dir: dir,
            stop,
            served,
        }
    }

    async fn get(&self, path: &str) -> Response {
        self.request("GET", path).await
    }

    /// One request on its own connection.
    async fn request(&self, method: &str, path: &str) -> Response {
        let mut s = TcpStream::connect(self.http).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: master\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        Response::parse(&raw)
    }

    /// Stops the master and waits for it (its Raft thread joined, RocksDB closed).
    async fn stop(self) {
        let _ = self.stop.send(());
        self.served.await.unwrap().unwrap();
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    content_type: String,
    body: String,
}

impl Response {
    fn parse(raw: &str) -> Response {
        let (head, body) = raw.split_once("\r\n\r\n").expect("a whole response");
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let content_type = lines
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default();
        Response {
            status: status.parse().unwrap(),
            content_type: content_type.to_string(),
            body: body.to_string(),
        }
    }

    fn has_line(&self, line: &str) -> bool {
        self.body.lines().any(|l| l == line)
    }
}

/// Polls `f` (bounded) until it yields `Some`.
async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    drover_testkit::eventually(what, Duration::from_secs(30), Duration::from_millis(50), f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_serves_health_metrics_and_state() {
    let m = Master::start(false).await;
    eventually("/health to say leader", || async {
        let r = m.get("/health").await;
        (r.body == "leader\n").then_some(r)
    })
    .await;
    let r = m.get("/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "text/plain; charset=utf-8");

    let r = m.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
    for line in [
        "# TYPE drover_master_offers_sent_total counter",
        "drover_master_offers_sent_total 0",
        "# TYPE drover_master_raft_commit_seconds histogram",
        "# TYPE drover_master_is_leader gauge",
        "drover_master_is_leader 1",
        "drover_master_agents_registered 0",
    ] {
        assert!(r.has_line(line), "no {line:?} in\n{}", r.body);
    }
    // The leader's no-op went through Raft before it started serving.
    let commits = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("drover_master_raft_commit_seconds_count "))
        .expect("a commit count");
    assert!(commits.parse::<u64>().unwrap() >= 1, "{}", r.body);

    let r = m.get("/state").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "application/json");
    let state: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(state["master_info"]["id"], 1, "{state}");
    assert_eq!(state["agents"], serde_json::json!([]), "{state}");
    assert_eq!(state["frameworks"], serde_json::json!([]), "{state}");

    // A query string does not change the route.
    assert_eq!(m.get("/health?verbose=1").await.body, "leader\n");

    let r = m.request("HEAD", "/state").await;
    assert_eq!((r.status, r.body.as_str()), (200, ""));

    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_other_methods_are_refused() {
    let m = Master::start(false).await;
    let r = m.get("/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "not found; try /metrics, /health or /state\n");

    for method in ["POST", "PUT", "DELETE"] {
        let r = m.request(method, "/state").await;
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.body, drover_http::answers::METHOD_NOT_ALLOWED);
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_without_a_quorum_says_follower() {
    let m = Master::start(true).await;
    let r = m.get("/health").await;
    assert_eq!((r.status, r.body.as_str()), (200, "follower\n"));
    let r = m.get("/metrics").await;
    assert!(r.has_line("drover_master_is_leader 0"), "{}", r.body);
    m.stop().await;
}
