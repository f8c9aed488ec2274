//! The serving loop under both daemons' HTTP listeners.
//!
//! axum routes the requests; hyper speaks HTTP/1.1 (keep-alive, pipelining, chunked
//! bodies, HEAD) and refuses what it cannot parse with a `400`. The loop is ours rather
//! than `axum::serve` for two limits that `axum::serve` leaves out and an endpoint reachable
//! by anyone must keep: a request head has [`HEAD_TIMEOUT`] to arrive (a client that opens a
//! connection and sends nothing, or dribbles, is dropped instead of holding it for ever),
//! and a head larger than [`MAX_HEAD_BYTES`] is refused with a `431`.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Largest request head (request line and headers) accepted; larger ones get a `431`.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Time a request head has to arrive, counted from when the server starts waiting for it
/// (an idle keep-alive connection is closed after this long, too).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping listener lets open requests finish before it drops them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (typically out of file descriptors), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting (the port is
/// released at once), lets requests in progress finish for up to [`SHUTDOWN_GRACE`] while
/// idle connections close, and returns.
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES);
    // Connections watch this to shut down gracefully; a dropped sender (the serving future
    // dropped) means the same.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished connections as they end, so the set stays as small as the load.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("http accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let http = http.clone();
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                // Sent once, after the last connection was accepted; an error means the
                // sender is gone, which is as good a signal.
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                // Malformed requests, timeouts and peers going away: the peer's problem.
                tracing::debug!("http connection: {e}");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "http requests still open after {SHUTDOWN_GRACE:?}; dropping them"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::answers::{with_fallbacks, METHOD_NOT_ALLOWED};

    struct Server {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        served: JoinHandle<()>,
    }

    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = with_fallbacks(
            Router::new().route("/hello", get(|| async { "hi\n" })),
            &["/hello"],
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(listener, app, async {
            let _ = stopped.await;
        }));
        Server { addr, stop, served }
    }

    /// Sends `raw` on a new connection and reads until the server closes it.
    async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn get_closing(addr: SocketAddr, method: &str, target: &str) -> String {
        let raw = format!("{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        exchange(addr, raw.as_bytes()).await
    }

    fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
        let head = response.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn body(response: &str) -> &str {
        response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    async fn stop(server: Server) {
        server.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(60), server.served)
            .await
            .expect("the server did not stop")
            .unwrap();
    }

    #[tokio::test]
    async fn routes_refuses_unknown_paths_and_other_methods() {
        let server = start().await;
        let r = get_closing(server.addr, "GET", "/hello?verbose=1").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert_eq!(
            header(&r, "content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(body(&r), "hi\n");

        let r = get_closing(server.addr, "HEAD", "/hello").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert_eq!(header(&r, "content-length"), Some("3"), "{r}");
        assert_eq!(body(&r), "", "HEAD has no body");

        let r = get_closing(server.addr, "GET", "/nope").await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        assert_eq!(body(&r), "not found; try /hello\n");

        let r = get_closing(server.addr, "POST", "/hello").await;
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert_eq!(header(&r, "allow"), Some("GET,HEAD"), "{r}");
        assert_eq!(body(&r), METHOD_NOT_ALLOWED);
        stop(server).await;
    }

    #[tokio::test]
    async fn refuses_malformed_and_oversized_requests() {
        let server = start().await;
        let r = exchange(server.addr, b"HELLO THERE\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");

        let big = format!(
            "GET /hello HTTP/1.1\r\nHost: t\r\nX-Filler: {}\r\n\r\n",
            "x".repeat(MAX_HEAD_BYTES)
        );
        let r = exchange(server.addr, big.as_bytes()).await;
        assert!(
            r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{r}"
        );

        // Refusals close only their own connection.
        let r = get_closing(server.addr, "GET", "/hello").await;
        assert_eq!(body(&r), "hi\n");
        stop(server).await;
    }

    #[tokio::test]
    async fn keeps_connections_alive_between_requests() {
        let server = start().await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        for _ in 0..3 {
            s.write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\nhi\n") {
                let mut chunk = [0u8; 512];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&chunk[..n]);
            }
        }
        stop(server).await;
    }

    /// A client that never finishes its request head is dropped once [`HEAD_TIMEOUT`]
    /// passes (on tokio's paused clock, which moves ahead whenever everything waits).
    #[tokio::test(start_paused = true)]
    async fn drops_a_client_that_never_finishes_its_head() {
        let server = start().await;
        let started = tokio::time::Instant::now();
        let r = tokio::time::timeout(
            HEAD_TIMEOUT * 2,
            exchange(server.addr, b"GET /hello HTTP/1.1\r\nHost:"),
        )
        .await
        .expect("the connection outlived its head timeout");
        assert_eq!(r, "", "closed without an answer");
        assert!(started.elapsed() >= HEAD_TIMEOUT);
        let r = get_closing(server.addr, "GET", "/hello").await;
        assert_eq!(body(&r), "hi\n");
        stop(server).await;
    }

    /// An idle keep-alive connection has as long as a new one to send its next head.
    #[tokio::test(start_paused = true)]
    async fn closes_a_connection_left_idle() {
        let server = start().await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"hi\n") {
            let mut chunk = [0u8; 512];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        let answered = tokio::time::Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(HEAD_TIMEOUT * 2, s.read_to_end(&mut rest))
            .await
            .expect("the idle connection outlived its head timeout")
            .unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        assert!(answered.elapsed() >= HEAD_TIMEOUT);
        stop(server).await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_releases_the_port() {
        let server = start().await;
        let addr = server.addr;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"hi\n") {
            let mut chunk = [0u8; 512];
            let n = idle.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        stop(server).await;
        let mut rest = Vec::new();
        assert_eq!(idle.read_to_end(&mut rest).await.unwrap(), 0, "closed");
        assert!(TcpStream::connect(addr).await.is_err(), "port released");
    }
}
