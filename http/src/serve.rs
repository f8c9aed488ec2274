//! The serving loop under both daemons' HTTP listeners.
//!
//! axum routes the requests; hyper speaks HTTP/1.1 (keep-alive, pipelining, chunked
//! bodies, HEAD) and refuses what it cannot parse with a `400`. The loop is ours rather
//! than `axum::serve` for the limits that `axum::serve` leaves out and an endpoint reachable
//! by anyone must keep, so that no client can hold a task, a socket or a buffered body for
//! ever:
//!
//! - a request head has [`HEAD_TIMEOUT`] to arrive (a client that opens a connection and
//!   sends nothing, or dribbles, is dropped; an idle keep-alive connection too), and a head
//!   larger than [`MAX_HEAD_BYTES`] is refused with a `431`;
//! - once a head has arrived, the request body must be read and the whole response written
//!   to the socket within [`RESPONSE_TIMEOUT`], else the connection is dropped (a client
//!   that asks for `/state` and never reads the answer, or reads a byte a minute);
//! - at most [`MAX_CONNECTIONS`] connections are served at once. The loop takes a slot
//!   before it `accept`s, so further clients wait in the kernel's listen backlog (their
//!   connect succeeds, their request is answered when a slot frees) rather than being
//!   closed: a stalled client loses its slot within the two timeouts above, so a burst of
//!   honest scrapes is served late instead of refused. Once the backlog is full too the
//!   kernel drops new connection attempts, which clients retry.
//!
//! How the response deadline works, and why so. hyper runs one connection as one future,
//! reading heads, calling the service and writing answers, with keep-alive in between. A
//! timeout around the whole connection would cut healthy keep-alive connections; one reset
//! when the service answers would stop counting while hyper still writes the body; and a
//! timeout on write progress alone lets a client that reads a byte at a time hold on for
//! ever. So each connection has an `Exchange` that three wrappers, all polled inside the
//! connection future, keep up to date: the service arms the deadline when hyper hands it a
//! request (the head has arrived; a deadline already running is kept, for pipelined
//! requests), the response body counts as open until it has ended or hyper dropped it, and
//! the socket (`Deadlined`) disarms the deadline when a flush returns `Ready` with no body
//! open, which in hyper means that its write buffer went entirely to the kernel. What is
//! left then sits in the socket's send buffer, bounded by the kernel, and the connection
//! waits for its next head under [`HEAD_TIMEOUT`]. The driver that polls the connection
//! reads the deadline after each poll (every change happens inside one) and drops the
//! connection when it passes.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service as _};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Largest request head (request line and headers) accepted; larger ones get a `431`.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Time a request head has to arrive, counted from when the server starts waiting for it
/// (an idle keep-alive connection is closed after this long, too).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Time from a request head's arrival until its whole answer has been written to the
/// socket (reading the request body included); a connection that overruns it is dropped.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections served at once; more wait in the kernel's listen backlog until one ends.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long a stopping listener lets open requests finish before it drops them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (typically out of file descriptors), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The limits [`serve`] applies; a value of its own so that tests can shrink them instead
/// of opening a thousand sockets or waiting out real backoffs.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    response_timeout: Duration,
    accept_backoff: Duration,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        max_connections: MAX_CONNECTIONS,
        response_timeout: RESPONSE_TIMEOUT,
        accept_backoff: ACCEPT_BACKOFF,
    };
}

/// Where connections come from: a [`TcpListener`], or in tests one whose `accept` fails.
trait Accept {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    async fn accept(&self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting (the port is
/// released at once), lets requests in progress finish for up to [`SHUTDOWN_GRACE`] while
/// idle connections close, and returns.
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    serve_with(listener, app, shutdown, Limits::DEFAULT).await;
}

async fn serve_with<L: Accept>(
    listener: L,
    app: Router,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES);
    // One permit per connection, taken before `accept` (see the module doc for why they
    // wait in the backlog rather than being closed) and released when its task ends.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut slot = None;
    // Connections watch this to shut down gracefully; a dropped sender (the serving future
    // dropped) means the same.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    'serving: loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished connections as they end, so the set stays as small as the load.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            permit = Arc::clone(&slots).acquire_owned(), if slot.is_none() => {
                slot = Some(permit.expect("the semaphore is never closed"));
            }
            accepted = listener.accept(), if slot.is_some() => match accepted {
                Ok(stream) => {
                    let permit = slot.take();
                    let http = http.clone();
                    let app = app.clone();
                    let stop = stop_rx.clone();
                    let timeout = limits.response_timeout;
                    connections.spawn(async move {
                        connection(http, stream, app, stop, timeout).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!("http accept failed: {e}");
                    tokio::select! {
                        _ = &mut shutdown => break 'serving,
                        _ = tokio::time::sleep(limits.accept_backoff) => {}
                    }
                }
            },
        }
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

/// Serves one connection until it ends, its response deadline passes, or (after `stop`)
/// it has finished its request in progress.
async fn connection<I>(
    http: http1::Builder,
    stream: I,
    app: Router,
    mut stop: watch::Receiver<bool>,
    response_timeout: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exchange = Arc::new(Exchange::default());
    let tower = TowerToHyperService::new(app);
    let service = {
        let exchange = Arc::clone(&exchange);
        service_fn(move |request: Request<Incoming>| {
            let open = exchange.begin(Instant::now() + response_timeout);
            let answer = tower.call(request);
            async move {
                let response: Response<Body> = answer.await?;
                Ok::<_, Infallible>(response.map(|inner| {
                    Body::new(Tracked {
                        inner,
                        open: Some(open),
                    })
                }))
            }
        })
    };
    let io = Deadlined {
        inner: stream,
        exchange: Arc::clone(&exchange),
    };
    let mut conn = pin!(http.serve_connection(TokioIo::new(io), service));
    // Sent once, after the last connection was accepted; an error means the sender is
    // gone, which is as good a signal.
    let mut stopping = pin!(async move {
        let _ = stop.changed().await;
    });
    let mut stopped = false;
    let mut timer = pin!(tokio::time::sleep(response_timeout));
    let outcome = poll_fn(|cx| {
        if !stopped && stopping.as_mut().poll(cx).is_ready() {
            stopped = true;
            conn.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        // Every change to the deadline happens inside the poll above, so reading it here
        // sees each one.
        let Some(deadline) = exchange.lock().deadline else {
            return Poll::Pending;
        };
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await;
    match outcome {
        // Malformed requests, timeouts and peers going away: the peer's problem.
        Some(Err(e)) => tracing::debug!("http connection: {e}"),
        Some(Ok(())) => {}
        None => tracing::debug!(
            "http connection dropped: answer not written within {response_timeout:?}"
        ),
    }
}

/// What one connection's response deadline depends on; see the module doc.
#[derive(Default)]
struct Exchange(Mutex<ExchangeState>);

#[derive(Default)]
struct ExchangeState {
    /// Response bodies handed to hyper and not yet ended or dropped.
    open: usize,
    /// When the connection is dropped unless the answers so far have been written.
    deadline: Option<Instant>,
}

impl Exchange {
    fn lock(&self) -> MutexGuard<'_, ExchangeState> {
        // The state is two plain fields, valid whatever a panicking holder left.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A request head has arrived: its answer is open and the deadline runs.
    fn begin(self: &Arc<Self>, deadline: Instant) -> Open {
        let mut state = self.lock();
        state.open += 1;
        state.deadline.get_or_insert(deadline);
        Open(Arc::clone(self))
    }

    /// hyper's write buffer has gone to the socket: with no body left to write, every
    /// answer so far is out and nothing is owed until the next head.
    fn flushed(&self) {
        let mut state = self.lock();
        if state.open == 0 {
            state.deadline = None;
        }
    }
}

/// One answer not yet fully handed to hyper; closes on drop.
struct Open(Arc<Exchange>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.lock().open -= 1;
    }
}

/// A response body that keeps its answer [`Open`] until it ends or is dropped.
struct Tracked {
    inner: Body,
    open: Option<Open>,
}

impl HttpBody for Tracked {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            self.open = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's socket, telling its [`Exchange`] when hyper's writes have all gone out.
struct Deadlined<I> {
    inner: I,
    exchange: Arc<Exchange>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Deadlined<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Deadlined<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// hyper flushes the socket only once its own write buffer is empty, so a `Ready` here
    /// means everything it was given has been written.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.exchange.flushed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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

    /// Size of `/big`'s answer: well beyond what the two sockets' buffers hold, so that
    /// writing it blocks on a client that does not read.
    const BIG: usize = 32 << 20;

    /// How long `/slow` takes to answer (on the paused clock, in tests that pause it).
    const SLOW: Duration = Duration::from_secs(20);

    async fn start() -> Server {
        start_with(Limits::DEFAULT, Arc::default()).await
    }

    /// Starts a server with `limits`; `/slow` counts its requests in progress in `busy`.
    async fn start_with(limits: Limits, busy: Arc<Busy>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = with_fallbacks(
            Router::new()
                .route("/hello", get(|| async { "hi\n" }))
                .route("/big", get(|| async { vec![b'x'; BIG] }))
                .route("/stream", get(|| async { Body::new(Chunks(BIG >> 20)) }))
                .route(
                    "/slow",
                    get(move || async move {
                        busy.enter();
                        tokio::time::sleep(SLOW).await;
                        busy.leave();
                        "done\n"
                    }),
                ),
            &["/hello", "/big", "/stream", "/slow"],
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve_with(
            listener,
            app,
            async {
                let _ = stopped.await;
            },
            limits,
        ));
        Server { addr, stop, served }
    }

    /// A body of this many 1 MiB chunks, produced one at a time as hyper asks for them.
    struct Chunks(usize);

    impl HttpBody for Chunks {
        type Data = axum::body::Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            if self.0 == 0 {
                return Poll::Ready(None);
            }
            self.0 -= 1;
            Poll::Ready(Some(Ok(Frame::data(vec![b'x'; 1 << 20].into()))))
        }
    }

    /// Requests in progress on `/slow`, and the most seen at once.
    #[derive(Default)]
    struct Busy {
        now: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }

    impl Busy {
        fn enter(&self) {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.now.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
        }

        fn leave(&self) {
            self.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
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
        assert_eq!(body(&r), "not found; try /hello, /big, /stream or /slow\n");

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

    /// Reads one answer ending in `end` from a kept-alive connection.
    async fn read_answer(s: &mut TcpStream, end: &[u8]) {
        let mut got = Vec::new();
        while !got.ends_with(end) {
            let mut chunk = [0u8; 512];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    }

    /// A client that asks for a large answer and never reads it is dropped once
    /// [`RESPONSE_TIMEOUT`] passes, and its connection slot is free again: with room for
    /// one connection only, the next client is served.
    async fn drops_a_client_that_never_reads(target: &str) {
        let limits = Limits {
            max_connections: 1,
            ..Limits::DEFAULT
        };
        let server = start_with(limits, Arc::default()).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A small receive window, so that the answer cannot fit in the buffers.
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stalled = socket.connect(server.addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n");
        stalled.write_all(request.as_bytes()).await.unwrap();
        // Not reading: the paused clock runs on while the server waits to write.
        tokio::time::sleep(RESPONSE_TIMEOUT * 2).await;

        let mut got = Vec::new();
        let read = tokio::time::timeout(HEAD_TIMEOUT, stalled.read_to_end(&mut got))
            .await
            .expect("the stalled connection is still open");
        // The server closed it: what was in the socket buffers, then the end (or a reset).
        if let Err(e) = read {
            assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
        }
        assert!(got.len() < BIG, "the whole answer arrived: {}", got.len());

        let r = get_closing(server.addr, "GET", "/hello").await;
        assert_eq!(body(&r), "hi\n");
        stop(server).await;
    }

    /// An answer in one piece: hyper has it all before writing, so only the flush tells
    /// when it is out.
    #[tokio::test(start_paused = true)]
    async fn drops_a_client_that_never_reads_a_whole_answer() {
        drops_a_client_that_never_reads("/big").await;
    }

    /// An answer streamed in chunks: flushes succeed between chunks, and the deadline must
    /// keep running until the body has ended.
    #[tokio::test(start_paused = true)]
    async fn drops_a_client_that_never_reads_a_streamed_answer() {
        drops_a_client_that_never_reads("/stream").await;
    }

    /// The response deadline runs from a head to its answer only: a keep-alive connection
    /// that asks now and then stays open well past [`RESPONSE_TIMEOUT`].
    #[tokio::test(start_paused = true)]
    async fn keeps_a_connection_that_asks_now_and_then_past_the_response_deadline() {
        let server = start().await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let started = tokio::time::Instant::now();
        while started.elapsed() <= RESPONSE_TIMEOUT * 2 {
            s.write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            read_answer(&mut s, b"\r\n\r\nhi\n").await;
            tokio::time::sleep(HEAD_TIMEOUT / 2).await;
        }
        stop(server).await;
    }

    /// No more than `max_connections` are served at once; the others wait and are served
    /// when a slot frees.
    #[tokio::test(start_paused = true)]
    async fn serves_at_most_max_connections_at_once() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::DEFAULT
        };
        let busy = Arc::new(Busy::default());
        let server = start_with(limits, Arc::clone(&busy)).await;
        let clients: Vec<_> = (0..5)
            .map(|_| tokio::spawn(get_closing(server.addr, "GET", "/slow")))
            .collect();
        for client in clients {
            let r = client.await.unwrap();
            assert_eq!(body(&r), "done\n", "{r}");
        }
        assert_eq!(busy.most.load(std::sync::atomic::Ordering::SeqCst), 2);
        stop(server).await;
    }

    /// Accepts that always fail (out of file descriptors, say), counted.
    struct Failing(tokio::sync::mpsc::UnboundedSender<()>);

    impl Accept for Failing {
        type Io = TcpStream;
        async fn accept(&self) -> io::Result<TcpStream> {
            let _ = self.0.send(());
            Err(io::Error::other("too many open files"))
        }
    }

    /// Shutdown is not held up by the pause after a failed accept.
    #[tokio::test(start_paused = true)]
    async fn shutdown_interrupts_the_accept_backoff() {
        let backoff = Duration::from_secs(3600);
        let limits = Limits {
            accept_backoff: backoff,
            ..Limits::DEFAULT
        };
        let (accepts, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = Router::new().route("/hello", get(|| async { "hi\n" }));
        let served = tokio::spawn(serve_with(
            Failing(accepts),
            app,
            async {
                let _ = stopped.await;
            },
            limits,
        ));
        accepted.recv().await.unwrap();
        stop.send(()).unwrap();
        tokio::time::timeout(backoff / 2, served)
            .await
            .expect("shutdown waited for the accept backoff")
            .unwrap();
        assert!(
            accepted.try_recv().is_err(),
            "accepted again instead of stopping"
        );
    }
}
