//! The backbone server: one frozen base model on the GPU, many sessions, each with its own
//! positions in a shared pool of KV blocks and its own adapter (shared between sessions that
//! upload the same adapter bytes). Requests that run the base are batched across sessions by
//! the [`Scheduler`].
//!
//! Endpoints (under `/v1`, JSON errors `{"error": ...}`; see docs/protocol.md):
//! `GET /info`, `HEAD|PUT /adapters/{sha256}`, `POST /sessions`, `POST /sessions/{id}/forward`,
//! `POST /sessions/{id}/layer`, `DELETE /sessions/{id}`; and `GET /metrics` (Prometheus text).
//! With a token, every request needs `Authorization: Bearer <token>`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::adapter::{peft_tensors, Adapter};
use crate::model::base::BaseModel;
use crate::model::config::{PeftAdapterSpec, ShadowConfig};
use crate::model::kv_pool::{KvBudget, KvPool};
use crate::model::weights::Weights;
use crate::ops::KvStore;

use super::api_error::{bad_request, ApiError, ApiResult};
use super::budget::KvMemory;
use super::frame::{self, Frame};
use super::metrics::Metrics;
use super::scheduler::{Limits, Request as Job, Scheduler, Session, Work};
use super::{is_adapter_tensor, PROTOCOL};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Required bearer token; `None` serves everyone.
    pub token: Option<String>,
    /// Most sessions alive at once.
    pub max_sessions: usize,
    /// A session idle this long is dropped (its client rebuilds it by re-sending the prefix).
    pub session_ttl: Duration,
    /// Largest request body, in bytes (adapter uploads included).
    pub max_body: usize,
    /// Most adapters kept on the GPU; the least recently used one goes first.
    pub max_adapters: usize,
    /// The KV cache budget, shared by all sessions.
    pub kv_memory: KvMemory,
    /// Positions per KV block.
    pub kv_block: usize,
    /// How the KV pool stores keys and values.
    pub kv_store: KvStore,
    /// Most rows (tokens, all sessions together) in one batched base pass.
    pub max_batch_rows: usize,
    /// Most prompt rows (requests of more than 8 rows) in one pass, all together; decode
    /// steps go first. `None`: [`DEFAULT_PREFILL_CHUNK_CPU`] on CPU devices, where a row costs
    /// the most, else [`DEFAULT_PREFILL_CHUNK_GPU`].
    pub prefill_chunk: Option<usize>,
    /// How long a pass waits at most, after the one before, for the sessions that pass
    /// answered to send their next requests.
    pub batch_wait: Duration,
}

/// Prompt rows a pass takes by default on CPU devices (lavapipe, SwiftShader): a 16-row
/// prompt chunk costs about as much as 16 decode rows there, so decoding sessions wait at most
/// about twice as long as alone.
pub const DEFAULT_PREFILL_CHUNK_CPU: usize = 16;
/// Prompt rows a pass takes by default on GPUs, where rows up to a few hundred cost about as
/// much as one.
pub const DEFAULT_PREFILL_CHUNK_GPU: usize = 256;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            token: None,
            max_sessions: 64,
            session_ttl: Duration::from_secs(600),
            max_body: 256 << 20,
            max_adapters: 16,
            kv_memory: KvMemory::Auto,
            kv_block: 16,
            kv_store: KvStore::F32,
            max_batch_rows: 128,
            prefill_chunk: None,
            batch_wait: Duration::from_millis(10),
        }
    }
}

struct AdapterEntry {
    adapter: Arc<Adapter>,
    last_used: Instant,
}

type Sessions = HashMap<String, Arc<Mutex<Session>>>;

struct App {
    gpu: Arc<Gpu>,
    base: Arc<BaseModel>,
    cfg: ServerConfig,
    sessions: Mutex<Sessions>,
    adapters: Mutex<HashMap<String, AdapterEntry>>,
    scheduler: Arc<Scheduler>,
    metrics: Arc<Metrics>,
}

impl App {
    fn check_room(&self, sessions: &Sessions) -> ApiResult<()> {
        if sessions.len() >= self.cfg.max_sessions {
            self.metrics.refuse("sessions");
            return Err(ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the server holds its maximum of {} sessions; retry later",
                    self.cfg.max_sessions
                ),
            ));
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A 128-bit random session id (hex).
fn new_session_id() -> ApiResult<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("no randomness: {e}"),
        )
    })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(token) = &app.cfg.token {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
        if !ok {
            return ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn info(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let c = app.base.cfg();
    let (pool, limits) = (&app.scheduler.pool, app.scheduler.limits());
    Json(serde_json::json!({
        "protocol": PROTOCOL,
        "hidden_size": c.hidden,
        "num_hidden_layers": c.layers,
        "vocab_size": c.vocab,
        "max_seq": app.base.decoder.max_seq(),
        "wire": ["f32", "f16"],
        "modes": ["fused", "stepped"],
        "max_sessions": app.cfg.max_sessions,
        "session_ttl_s": app.cfg.session_ttl.as_secs(),
        "max_body": app.cfg.max_body,
        "features": ["rows-count", "batching"],
        "kv": {
            "dtype": match pool.store() {
                KvStore::F32 => "f32",
                KvStore::F16 => "f16",
            },
            "block_positions": pool.block(),
            "blocks": pool.blocks(),
            "blocks_free": pool.free_blocks(),
            "bytes": pool.bytes(),
            "bytes_per_position": pool.bytes_per_block() / pool.block() as u64,
        },
        "max_batch_rows": limits.max_rows,
        "prefill_chunk": limits.prefill_chunk,
        "batch_wait_ms": limits.wait.as_secs_f64() * 1e3,
    }))
}

fn check_sha(sha: &str) -> ApiResult<()> {
    if sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::BAD_REQUEST,
            "adapter id must be a lowercase hex SHA-256".into(),
        ))
    }
}

async fn has_adapter(State(app): State<Arc<App>>, Path(sha): Path<String>) -> StatusCode {
    if lock(&app.adapters).contains_key(&sha) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn put_adapter(
    State(app): State<Arc<App>>,
    Path(sha): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    check_sha(&sha)?;
    if lock(&app.adapters).contains_key(&sha) {
        return Ok(StatusCode::OK);
    }
    let got: String = Sha256::digest(&body)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    if got != sha {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("body hashes to {got}, not {sha}"),
        ));
    }
    let app2 = app.clone();
    // Loaded, and its kernels compiled for every row count, before it is answered: no pass
    // of a session with it waits for a compile.
    let adapter = tokio::task::spawn_blocking(move || {
        let adapter = load_adapter(&app2, &body)?;
        adapter.precompile(&app2.gpu);
        Ok::<_, ApiError>(adapter)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let mut ads = lock(&app.adapters);
    while ads.len() >= app.cfg.max_adapters {
        let oldest = ads
            .iter()
            .min_by_key(|(_, e)| e.last_used)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => ads.remove(&k),
            None => break,
        };
        app.gpu.release_bindings();
    }
    ads.insert(
        sha,
        AdapterEntry {
            adapter: Arc::new(adapter),
            last_used: Instant::now(),
        },
    );
    Ok(StatusCode::CREATED)
}

fn load_adapter(app: &App, body: &[u8]) -> ApiResult<Adapter> {
    let f = Frame::parse(body)?;
    let num = |k: &str| f.meta_usize(k);
    let alpha: f32 = f
        .meta("alpha")?
        .parse()
        .ok()
        .filter(|a: &f32| a.is_finite())
        .ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "adapter `alpha` is not a number".into(),
            )
        })?;
    let mut w = Weights::default();
    w.add_file("adapter upload".into(), Arc::new(body.to_vec()))?;
    let c = app.base.cfg();
    let unexpected =
        |expected: &dyn Fn(&str) -> bool, format: &str| match w.names().find(|n| !expected(n)) {
            Some(n) => Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("unexpected tensor `{n}` in the {format} adapter upload"),
            )),
            None => Ok(()),
        };
    let format = f.meta_opt("format").unwrap_or("shadow-peft");
    if !matches!(format, "shadow-peft" | "peft") {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("adapter format `{format}`: expected shadow-peft or peft"),
        ));
    }
    if format == "peft" {
        let blocks = f
            .meta("blocks")?
            .split(',')
            .map(|b| b.trim().parse::<usize>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .ok()
            .filter(|b| !b.is_empty() && b.windows(2).all(|p| p[1] == p[0] + 1))
            .ok_or_else(|| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    "adapter `blocks` must list contiguous block indices, comma-separated".into(),
                )
            })?;
        let spec = PeftAdapterSpec {
            alpha,
            rank: num("rank")?,
            update_hidden: num("update_hidden_size")?,
            blocks,
        };
        spec.check_layers(c.layers)?;
        let names: std::collections::HashSet<String> = peft_tensors(&spec, c.hidden)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        unexpected(&|n| names.contains(n), format)?;
        return Ok(Adapter::load_peft(&app.gpu, &w, &spec, c.layers, c.hidden)?);
    }
    unexpected(&is_adapter_tensor, format)?;
    let sc = ShadowConfig {
        num_shadow_layers: 1,
        injection_hidden_size: num("injection_hidden_size")?,
        gate_hidden_size: num("gate_hidden_size")?,
        alpha,
        intermediate: None,
        heads: None,
        kv_heads: None,
        head_dim: None,
        modules_to_save: Vec::new(),
    };
    Ok(Adapter::load(&app.gpu, &w, &sc, c.layers, c.hidden)?)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSession {
    /// The adapter of a fused session.
    #[serde(default)]
    adapter: Option<String>,
    /// `fused` (default) or `stepped`.
    #[serde(default)]
    mode: Option<String>,
}

async fn new_session(
    State(app): State<Arc<App>>,
    Json(req): Json<NewSession>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let adapter = match (req.mode.as_deref().unwrap_or("fused"), &req.adapter) {
        ("fused", Some(sha)) => {
            check_sha(sha)?;
            let mut ads = lock(&app.adapters);
            let e = ads.get_mut(sha).ok_or_else(|| {
                ApiError(
                    StatusCode::NOT_FOUND,
                    format!("unknown adapter {sha}: upload it first"),
                )
            })?;
            e.last_used = Instant::now();
            Some(e.adapter.clone())
        }
        ("fused", None) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "a fused session needs `adapter` (the SHA-256 of an uploaded adapter)".into(),
            ))
        }
        ("stepped", None) => None,
        ("stepped", Some(_)) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "a stepped session takes no adapter: the client runs it".into(),
            ))
        }
        (o, _) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("`mode` is `{o}`, expected fused or stepped"),
            ))
        }
    };
    let id = new_session_id()?;
    // A session holds no KV blocks until it runs: they come from the pool as it grows.
    let s = Arc::new(Mutex::new(Session::new(
        adapter,
        app.scheduler.pool.session(),
    )));
    let mut sessions = lock(&app.sessions);
    app.check_room(&sessions)?;
    app.scheduler.register(&s);
    sessions.insert(id.clone(), s);
    app.metrics.sessions.set(sessions.len() as i64);
    app.metrics.sessions_opened.inc();
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "session": id, "max_seq": app.base.decoder.max_seq() })),
    ))
}

async fn delete_session(State(app): State<Arc<App>>, Path(id): Path<String>) -> StatusCode {
    let mut sessions = lock(&app.sessions);
    // Its KV blocks go back to the pool once a request still queued for it is answered.
    let gone = sessions.remove(&id);
    app.metrics.sessions.set(sessions.len() as i64);
    match gone {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}

async fn scrape(State(app): State<Arc<App>>) -> Response {
    let pool = &app.scheduler.pool;
    let free = pool.free_blocks();
    let body = app.metrics.render(pool.blocks() - free, free);
    let ct = [(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)];
    (StatusCode::OK, ct, body).into_response()
}

/// The session `id`, or 404 (one whose KV cache was evicted is removed then).
fn session(app: &App, id: &str) -> ApiResult<Arc<Mutex<Session>>> {
    let mut sessions = lock(&app.sessions);
    let s = sessions
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "unknown or expired session".into()))?;
    if lock(&s).evicted() {
        sessions.remove(id);
        app.metrics.sessions.set(sessions.len() as i64);
        return Err(super::scheduler::evicted_error());
    }
    Ok(s)
}

/// An answer frame of `rows` hidden rows.
fn hidden_frame(h: &[f32], rows: usize, d: usize, wire: frame::Wire) -> Response {
    let mut hm = HeaderMap::new();
    hm.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    let body = frame::hidden_response(h, rows, d, wire);
    (StatusCode::OK, hm, body).into_response()
}

/// A fused forward: tokens and shadow state in, the final normed hidden rows out.
async fn forward(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let sess = session(&app, &id)?;
    if lock(&sess).adapter.is_none() {
        return Err(bad_request(
            "this is a stepped session: send layers to /layer",
        ));
    }
    let f = Frame::parse(&body)?;
    let d = app.base.cfg().hidden;
    let ids = f.ids("ids")?;
    let m = ids.len();
    check_ids(&app, &ids)?;
    let (s0, wire) = f.f32("s0", &[m, d])?;
    let pos = f.meta_usize("pos")?;
    let keep = answer_rows(&f, m)?;
    let job = Job {
        work: Work::Fused { ids, s0 },
        pos,
        keep,
    };
    let h = app.scheduler.submit(sess, job).await?;
    Ok(hidden_frame(&h, keep, d, wire))
}

/// One layer of a stepped pass. Layer 0 takes `ids` and starts a pass at `pos`; layer l >= 1
/// takes `hidden` (the client's injected input) and must follow layer l - 1 of the same pass.
/// The answer is the layer's output, or after the last layer the final normed rows.
async fn layer(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let sess = session(&app, &id)?;
    let (d, n) = (app.base.cfg().hidden, app.base.decoder.num_layers());
    let pass = {
        let s = lock(&sess);
        if s.adapter.is_some() {
            return Err(bad_request(
                "this is a fused session: send tokens to /forward",
            ));
        }
        s.pass
    };
    let f = Frame::parse(&body)?;
    let pos = f.meta_usize("pos")?;
    let l = f.meta_usize("layer")?;
    let starts = l == 0 && f.has("ids");
    let embed_only = match f.meta_opt("embed") {
        None => false,
        Some("only") if starts => true,
        Some(o) => {
            return Err(bad_request(format!(
                "`embed` is `{o}`: only a layer-0 request with ids may ask for `only`"
            )))
        }
    };
    let last = l + 1 == n && !embed_only;
    let (work, m, wire) = if starts {
        let ids = f.ids("ids")?;
        check_ids(&app, &ids)?;
        // A pass start names the answer's dtype (f32 when absent).
        let wire = match f.meta("wire") {
            Ok(w) => w.parse()?,
            Err(_) => frame::Wire::F32,
        };
        let m = ids.len();
        (Work::Start { ids, embed_only }, m, wire)
    } else {
        // The row count comes from the pass this layer continues (checked again when run).
        let m = match pass {
            Some((p, m, next)) if p == pos && next == l => m,
            _ => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!("layer {l} at position {pos} does not continue this session's pass"),
                ))
            }
        };
        if l >= n {
            return Err(bad_request(format!("layer {l}: the base has {n} layers")));
        }
        // Later layers answer in the dtype they are sent in.
        let (hidden, wire) = f.f32("hidden", &[m, d])?;
        (Work::Layer { layer: l, hidden }, m, wire)
    };
    let keep = if last { answer_rows(&f, m)? } else { m };
    let job = Job { work, pos, keep };
    let h = app.scheduler.submit(sess, job).await?;
    Ok(hidden_frame(&h, keep, d, wire))
}

/// `rows` metadata of a pass over `m` positions: `all`, `last`, or a count from 1 to `m` (the
/// last that many).
fn answer_rows(f: &Frame, m: usize) -> ApiResult<usize> {
    match f.meta("rows")? {
        "all" => Ok(m),
        "last" => Ok(1),
        o => match o.parse::<usize>() {
            Ok(n) if (1..=m).contains(&n) => Ok(n),
            _ => Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("`rows` is `{o}`, expected all, last, or a count from 1 to {m}"),
            )),
        },
    }
}

/// Checks token ids against the vocabulary.
fn check_ids(app: &App, ids: &[u32]) -> ApiResult<()> {
    let vocab = app.base.cfg().vocab;
    if ids.is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "no tokens".into()));
    }
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(Error::TokenOutOfRange {
            id,
            position: i,
            vocab_size: vocab,
        }
        .into());
    }
    Ok(())
}

/// Builds the HTTP app around a loaded base.
/// Sizes the KV pool (`cfg.kv_memory`, `cfg.kv_block`) and starts the scheduler, then builds
/// the HTTP app around a loaded base; the future it returns expires idle sessions.
pub fn router(
    gpu: Arc<Gpu>,
    base: Arc<BaseModel>,
    cfg: ServerConfig,
) -> Result<(Router, impl std::future::Future<Output = ()>)> {
    let ttl = cfg.session_ttl;
    let max_body = cfg.max_body;
    let mut bytes = cfg.kv_memory.resolve(&gpu)?;
    if cfg.kv_memory == KvMemory::Auto {
        // Never more than every session at its longest.
        let c = base.cfg();
        let per_position = 2 * c.layers * cfg.kv_store.words(c.kv_heads * c.head_dim) * 4;
        let most = cfg.max_sessions * base.decoder.max_seq().next_multiple_of(cfg.kv_block.max(1));
        bytes = bytes.min((most * per_position) as u64);
    }
    let budget = KvBudget {
        bytes,
        block: cfg.kv_block,
        store: cfg.kv_store,
    };
    let pool = KvPool::new(&gpu, &base.decoder, budget)?;
    log::info!(
        "KV pool: {} blocks of {} positions, {} bytes",
        pool.blocks(),
        pool.block(),
        pool.bytes()
    );
    let metrics = Arc::new(Metrics::new());
    let limits = Limits {
        max_rows: cfg.max_batch_rows,
        prefill_chunk: cfg.prefill_chunk.unwrap_or(if gpu.is_cpu() {
            DEFAULT_PREFILL_CHUNK_CPU
        } else {
            DEFAULT_PREFILL_CHUNK_GPU
        }),
        wait: cfg.batch_wait,
    };
    let scheduler = Scheduler::start(gpu.clone(), base.clone(), pool, limits, metrics.clone())
        .map_err(|e| Error::InvalidRequest(format!("cannot start the scheduler thread: {e}")))?;
    let app = Arc::new(App {
        gpu,
        base,
        cfg,
        sessions: Mutex::new(HashMap::new()),
        adapters: Mutex::new(HashMap::new()),
        scheduler,
        metrics,
    });
    let sweeper = {
        let app = app.clone();
        async move {
            let every = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
            loop {
                tokio::time::sleep(every).await;
                // A session with a request queued or running is in use (the request holds
                // it): keep it.
                let mut sessions = lock(&app.sessions);
                sessions
                    .retain(|_, s| Arc::strong_count(s) > 1 || lock(s).last_used.elapsed() < ttl);
                app.metrics.sessions.set(sessions.len() as i64);
            }
        }
    };
    let api = Router::new()
        .route("/info", get(info))
        .route("/adapters/{sha}", put(put_adapter).head(has_adapter))
        .route("/sessions", post(new_session))
        .route("/sessions/{id}/forward", post(forward))
        .route("/sessions/{id}/layer", post(layer))
        .route("/sessions/{id}", axum::routing::delete(delete_session))
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app.clone());
    let scrape = Router::new()
        .route("/metrics", get(scrape))
        .layer(middleware::from_fn_with_state(app.clone(), auth))
        .with_state(app);
    // Browsers on other origins may call the server; preflights are answered before auth.
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::HEAD,
            axum::http::Method::PUT,
            axum::http::Method::POST,
            axum::http::Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static(super::ROUTE_HEADER),
        ])
        .max_age(Duration::from_secs(3600));
    let routes = Router::new()
        .nest("/v1", api)
        .merge(scrape)
        .layer(middleware::from_fn(super::api_error::json_errors))
        .layer(cors);
    Ok((routes, sweeper))
}

/// Serves `base` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gpu: Arc<Gpu>,
    base: Arc<BaseModel>,
    cfg: ServerConfig,
) -> Result<()> {
    serve_until(listener, gpu, base, cfg, std::future::pending()).await
}

/// Serves `base` on `listener` until `stop` completes, then closes the listener and idle
/// connections and returns once the requests in flight are answered (a graceful stop: a load
/// balancer sends new requests to another replica meanwhile).
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    gpu: Arc<Gpu>,
    base: Arc<BaseModel>,
    cfg: ServerConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (app, sweeper) = router(gpu, base, cfg)?;
    let sweeper = tokio::spawn(sweeper);
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    log::info!("backbone server listening on {addr:?}");
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| Error::Io {
            path: format!("{addr:?}"),
            msg: e.to_string(),
        });
    sweeper.abort();
    r
}

/// Loads the frozen base a server holds (`config.json` + weights of a Hugging Face model dir),
/// its projections, embeddings and head stored as `weights`.
pub async fn load_base<S: crate::model::source::Source>(
    gpu: &Gpu,
    src: &S,
    max_seq: usize,
    weights: crate::gpu::WeightFormat,
) -> Result<BaseModel> {
    let v = crate::model::source::read_json(src, "config.json", "base model config").await?;
    let loc = src.location("config.json");
    let cfg = crate::model::config::ArchConfig::from_hf(&loc, &v)?;
    let packed = crate::model::packed::declared(&loc, &v)?;
    let weights = crate::model::packed::effective(&loc, weights, packed)?;
    let mut w = Weights::load_hf(src).await?;
    w.set_format(weights);
    // Adapters arrive with their sessions; their kernels compile with the first upload.
    crate::ops::precompile(gpu, &[cfg.dims()], None, weights);
    BaseModel::load(gpu, &w, &cfg, max_seq.min(cfg.max_positions).max(1), None)
}
