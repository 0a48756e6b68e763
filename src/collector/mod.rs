//! `tap-kpis collect`: a Snowplow-compatible collector for a Meltano fleet. Meltano POSTs its telemetry to
//! `<endpoint>/com.snowplowanalytics.snowplow/tp2` (older clients `GET /i`); each request is written as one
//! capture envelope line, in exactly the form the tap reads, and answered 200 only once written.
//!
//! Requests are handled on a small async server; one writer thread owns the files (see [`store`]), takes
//! the lines of many requests at once (group commit) and acknowledges them after the write (and fsync).

pub mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};

pub use store::{Fsync, REJECTS, StoreOptions};

/// Arguments of `tap-kpis collect`.
#[derive(clap::Args, Debug, Clone)]
pub struct CollectArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Directory the capture files are written to.
    #[arg(long)]
    pub out: PathBuf,
    /// `batch`: fsync before answering each batch of requests; or a number of milliseconds between fsyncs
    /// (answers then only wait for the write to the OS).
    #[arg(long, default_value = "batch", value_parser = store::parse_fsync)]
    pub fsync: Fsync,
    /// Start a new file after this many bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub rotate_bytes: u64,
    /// Start a new file after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub rotate_secs: u64,
    /// Gzip files once closed (`.ndjson.gz`, written under a temporary name then renamed).
    #[arg(long)]
    pub gzip_closed: bool,
    /// Larger request bodies are answered 413.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// A request not received and written within this many seconds is answered 408 (or 503 when it waited
    /// that long for a slot).
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Requests handled at once; more wait (up to the timeout).
    #[arg(long, default_value_t = 256)]
    pub max_concurrency: usize,
}

/// Errors that stop the collector.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write captures to {dir}: {source}")]
    Store {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("collector failed: {0}")]
    Server(String),
}

/// Counters, also served by `/health`.
#[derive(Debug, Default)]
pub struct Counters {
    pub acknowledged: AtomicU64,
    pub rejected: AtomicU64,
    pub bytes: AtomicU64,
}

enum Write {
    Capture(Vec<u8>, oneshot::Sender<bool>),
    Reject(Vec<u8>),
}

struct AppState {
    writes: std_mpsc::Sender<Write>,
    permits: Semaphore,
    timeout: Duration,
    counters: Arc<Counters>,
}

fn now_iso() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}

fn kept_headers(headers: &HeaderMap) -> Value {
    let mut out = serde_json::Map::new();
    for name in ["user-agent", "content-type", "content-length"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            let display = match name {
                "user-agent" => "User-Agent",
                "content-type" => "Content-Type",
                _ => "Content-Length",
            };
            out.insert(display.into(), Value::String(v.to_string()));
        }
    }
    Value::Object(out)
}

async fn write_line(st: &AppState, line: Vec<u8>) -> Response {
    let Ok(permit) = tokio::time::timeout(st.timeout, st.permits.acquire()).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    };
    let (ack, done) = oneshot::channel();
    let len = line.len() as u64;
    if st.writes.send(Write::Capture(line, ack)).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let answer = match tokio::time::timeout(st.timeout, done).await {
        Ok(Ok(true)) => {
            st.counters.acknowledged.fetch_add(1, Ordering::Relaxed);
            st.counters.bytes.fetch_add(len, Ordering::Relaxed);
            (StatusCode::OK, "ok").into_response()
        }
        Ok(_) => (StatusCode::INTERNAL_SERVER_ERROR, "not written").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "write timed out").into_response(),
    };
    drop(permit);
    answer
}

fn reject(st: &AppState, ip: &SocketAddr, reason: &str, body: &[u8]) -> Response {
    st.counters.rejected.fetch_add(1, Ordering::Relaxed);
    let line = json!({
        "received_at": now_iso(),
        "ip": ip.ip().to_string(),
        "reason": reason,
        "body": String::from_utf8_lossy(body),
    });
    let _ = st
        .writes
        .send(Write::Reject(format!("{line}\n").into_bytes()));
    (StatusCode::BAD_REQUEST, reason.to_string()).into_response()
}

async fn tp2(
    State(st): State<Arc<AppState>>,
    ConnectInfo(ip): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw: &RawValue = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return reject(&st, &ip, &format!("invalid JSON: {e}"), &body),
    };
    if !raw.get().starts_with('{') {
        return reject(&st, &ip, "body is not a JSON object", &body);
    }
    // a body with line breaks (pretty JSON) is compacted: a capture is one line
    let body_text = if raw.get().contains(['\n', '\r']) {
        serde_json::from_str::<Value>(raw.get())
            .map(|v| v.to_string())
            .unwrap_or_default()
    } else {
        raw.get().to_string()
    };
    let head = json!({
        "received_at": now_iso(),
        "method": "POST",
        "path": "/com.snowplowanalytics.snowplow/tp2",
        "query": {},
        "headers": kept_headers(&headers),
        "ip": ip.ip().to_string(),
    })
    .to_string();
    let mut line = Vec::with_capacity(head.len() + body_text.len() + 10);
    line.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    line.extend_from_slice(b",\"body\":");
    line.extend_from_slice(body_text.as_bytes());
    line.extend_from_slice(b"}\n");
    write_line(&st, line).await
}

async fn get_i(
    State(st): State<Arc<AppState>>,
    ConnectInfo(ip): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if !query.contains_key("e") {
        return reject(&st, &ip, "GET /i without an event", b"");
    }
    let line = json!({
        "received_at": now_iso(),
        "method": "GET",
        "path": "/i",
        "query": query,
        "headers": kept_headers(&headers),
        "ip": ip.ip().to_string(),
    });
    write_line(&st, format!("{line}\n").into_bytes()).await
}

/// A request (body included) not done within the timeout is answered 408; a slow client cannot hold a
/// slot for ever. A capture written just before the timeout may then be sent again: the tap removes the
/// duplicate by its event id.
async fn request_timeout(
    State(st): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(st.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request timed out").into_response(),
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let c = &st.counters;
    let body = json!({
        "status": "ok",
        "acknowledged": c.acknowledged.load(Ordering::Relaxed),
        "rejected": c.rejected.load(Ordering::Relaxed),
        "bytes": c.bytes.load(Ordering::Relaxed),
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The writer thread: group commit of captures, rejects to `.rejects/`, periodic progress.
fn writer(
    rx: std_mpsc::Receiver<Write>,
    mut store: store::Store,
    rejects_dir: PathBuf,
    counters: Arc<Counters>,
) {
    let mut last_log = Instant::now();
    let mut logged_acks = 0u64;
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(w) => w,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = store.tick() {
                    tracing::error!("capture store: {e}");
                }
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(w) = next {
            match w {
                Write::Capture(line, ack) => {
                    batch.extend_from_slice(&line);
                    acks.push(ack);
                }
                Write::Reject(line) => {
                    let name = format!("rejects-{}.ndjson", chrono::Utc::now().format("%Y-%m-%d"));
                    let path = rejects_dir.join(name);
                    let res = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .and_then(|mut f| {
                            use std::io::Write as _;
                            f.write_all(&line)
                        });
                    if let Err(e) = res {
                        tracing::error!(
                            "cannot keep a rejected request in {}: {e}",
                            path.display()
                        );
                    }
                }
            }
            next = if batch.len() < (4 << 20) {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !batch.is_empty() {
            let ok = match store.append(&batch) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!("cannot write captures: {e}");
                    false
                }
            };
            for ack in acks {
                let _ = ack.send(ok);
            }
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            let acked = counters.acknowledged.load(Ordering::Relaxed);
            let rate = (acked - logged_acks) as f64 / last_log.elapsed().as_secs_f64();
            tracing::info!("collector: {acked} requests acknowledged ({rate:.0}/s)");
            logged_acks = acked;
            last_log = Instant::now();
        }
    }
    if let Err(e) = store.close() {
        tracing::error!("cannot close the capture file: {e}");
    }
}

/// A running collector (for tests and embedding).
pub struct Collector {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), CollectError>>>,
    counters: Arc<Counters>,
}

impl Collector {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    /// Stop gracefully: finish in-flight requests, write, fsync and close.
    pub fn stop(mut self) -> Result<(), CollectError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(CollectError::Server("collector thread panicked".into())),
            None => Ok(()),
        }
    }
}

async fn serve(
    args: CollectArgs,
    listener: tokio::net::TcpListener,
    counters: Arc<Counters>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), CollectError> {
    let opts = StoreOptions {
        dir: args.out.clone(),
        fsync: args.fsync,
        rotate_bytes: args.rotate_bytes,
        rotate_age: Duration::from_secs(args.rotate_secs),
        gzip_closed: args.gzip_closed,
    };
    let store = store::Store::open(opts).map_err(|source| CollectError::Store {
        dir: args.out.clone(),
        source,
    })?;
    let (tx, rx) = std_mpsc::channel();
    let rejects = args.out.join(REJECTS);
    let wc = counters.clone();
    let writer_thread = std::thread::spawn(move || writer(rx, store, rejects, wc));
    let state = Arc::new(AppState {
        writes: tx,
        permits: Semaphore::new(args.max_concurrency.max(1)),
        timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
        counters,
    });
    let app = Router::new()
        .route("/com.snowplowanalytics.snowplow/tp2", post(tp2))
        .route("/i", get(get_i))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(args.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ))
        .with_state(state);
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(|e| CollectError::Server(e.to_string()));
    // the router (and with it the last sender) is gone: the writer drains, fsyncs and closes
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    result
}

fn runtime() -> Result<tokio::runtime::Runtime, CollectError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CollectError::Server(e.to_string()))
}

/// Start a collector on a background thread.
pub fn start(args: &CollectArgs) -> Result<Collector, CollectError> {
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let args = args.clone();
    let thread = std::thread::spawn(move || {
        let rt = runtime()?;
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::bind(args.listen).await {
                Ok(l) => l,
                Err(source) => {
                    let err = CollectError::Bind {
                        addr: args.listen,
                        source,
                    };
                    let _ = ready_tx.send(Err(err.to_string()));
                    return Err(err);
                }
            };
            let _ = ready_tx.send(listener.local_addr().map_err(|e| e.to_string()));
            serve(args, listener, c, async move {
                let _ = stop_rx.await;
            })
            .await
        })
    });
    match ready_rx.recv() {
        Ok(Ok(addr)) => Ok(Collector {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
            counters,
        }),
        Ok(Err(e)) => Err(CollectError::Server(e)),
        Err(_) => Err(CollectError::Server("collector did not start".into())),
    }
}

/// Run until SIGTERM or Ctrl-C, then stop gracefully.
pub fn run(args: &CollectArgs) -> Result<(), CollectError> {
    let rt = runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|source| CollectError::Bind { addr: args.listen, source })?;
        tracing::info!(
            "collecting on http://{} into {}",
            listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            args.out.display()
        );
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            tracing::info!("stopping: finishing requests, writing and closing files");
        };
        serve(args.clone(), listener, Arc::new(Counters::default()), shutdown).await
    })
}
