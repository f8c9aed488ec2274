//! A small HTTP/1.1 endpoint beside the gRPC API: `GET /metrics` (Prometheus text),
//! `GET /health` and `GET /state` (JSON). Hand-written to keep the daemon's dependencies
//! small; it reads one request per connection and closes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::leader::Master;

/// Largest request head read; anything longer is refused.
const MAX_REQUEST: usize = 8192;

pub async fn serve(listener: TcpListener, master: Arc<Master>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let master = master.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle(sock, master)).await;
        });
    }
}

async fn handle(mut sock: TcpStream, master: Arc<Master>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut sock, 431, "text/plain", "request header too large\n").await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(&mut sock, 405, "text/plain", "only GET is served here\n").await;
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => {
            master.update_gauges();
            let body = master.metrics.render();
            respond(&mut sock, 200, "text/plain; version=0.0.4", &body).await
        }
        "/health" => {
            let serving = master.soft().serving;
            let body = if serving { "leader\n" } else { "follower\n" };
            respond(&mut sock, 200, "text/plain", body).await
        }
        "/state" => {
            let (tasks, completed) = master.task_summaries(None, true);
            let state = drover_proto::pb::GetStateResponse {
                master_info: Some(master.master_info()),
                agents: master.agent_summaries(),
                frameworks: master.framework_summaries(),
                tasks,
                completed_tasks: completed,
                roles: master.role_summaries(),
            };
            let body = serde_json::to_string_pretty(&state).unwrap_or_default();
            respond(&mut sock, 200, "application/json", &body).await
        }
        _ => {
            respond(
                &mut sock,
                404,
                "text/plain",
                "not found; try /metrics, /health or /state\n",
            )
            .await
        }
    }
}

async fn respond(sock: &mut TcpStream, code: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}
