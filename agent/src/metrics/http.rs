//! The agent's HTTP listener (`--http-listen`), on the stack of [`drover_http`]:
//! `GET /metrics` (Prometheus text) and `GET /health` (`ok` while the agent runs).

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::Metrics;

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    drover_http::serve(listener, router(metrics), shutdown).await
}

/// The routes, with the shared `404` and `405` answers.
pub fn router(metrics: Arc<Metrics>) -> Router {
    let routes = Router::new()
        .route("/metrics", get(render))
        .route("/health", get(|| async { "ok\n" }))
        .with_state(metrics);
    drover_http::with_fallbacks(routes, &["/metrics", "/health"])
}

async fn render(State(metrics): State<Arc<Metrics>>) -> Response {
    drover_http::prometheus::response(metrics.render())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// One request on its own connection; the whole response as text.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = format!("{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    fn content_type(response: &str) -> Option<&str> {
        response
            .lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| l.strip_prefix("content-type: "))
    }

    fn body(response: &str) -> &str {
        response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    #[tokio::test]
    async fn serves_metrics_and_health_and_refuses_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.registered();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics, async {
            let _ = rx.await;
        }));

        let r = request(addr, "GET", "/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert_eq!(
            content_type(&r),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(
            body(&r)
                .lines()
                .any(|l| l == "drover_agent_registrations_total 1"),
            "{r}"
        );

        let r = request(addr, "GET", "/health").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert_eq!(content_type(&r), Some("text/plain; charset=utf-8"));
        assert_eq!(body(&r), "ok\n");

        let r = request(addr, "HEAD", "/health").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert_eq!(body(&r), "");

        let r = request(addr, "GET", "/nope").await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        assert_eq!(body(&r), "not found; try /metrics or /health\n");

        let r = request(addr, "POST", "/metrics").await;
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert_eq!(body(&r), drover_http::answers::METHOD_NOT_ALLOWED);

        tx.send(()).unwrap();
        server.await.unwrap();
    }
}
