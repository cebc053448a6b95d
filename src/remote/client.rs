//! The client side of a remote backbone: adapter upload, sessions, and the fused or stepped
//! forward. A session the server lost (expiry, restart) is rebuilt by re-sending the prefix,
//! which gives the same result because every position's state depends only on the tokens
//! before it. So is one whose server stopped answering behind a load balancer (a 502, 503 or
//! 504, or a dropped connection): the rebuild goes wherever the balancer now routes the
//! conversation's key ([`super::ROUTE_HEADER`]).

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

use super::frame::{self, Frame, Wire};
use super::{PROTOCOL, ROUTE_HEADER};

/// Where and how to reach a backbone server.
#[derive(Debug, Clone)]
pub struct Connect {
    /// Base URL, e.g. `http://host:8080`.
    pub url: String,
    /// Bearer token, when the server requires one.
    pub token: Option<String>,
    /// Encoding of the tensors sent and received.
    pub wire: Wire,
    /// Longest wait for one request.
    pub timeout: std::time::Duration,
    /// Fused (one round trip per token, the adapter runs on the server) or stepped (one round
    /// trip per layer, the adapter never leaves the client).
    pub protocol: Protocol,
}

/// How the client and the server share the attached forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Fused,
    Stepped,
}

impl std::str::FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fused" => Ok(Protocol::Fused),
            "stepped" => Ok(Protocol::Stepped),
            o => Err(Error::InvalidRequest(format!(
                "backbone protocol `{o}`: expected fused or stepped"
            ))),
        }
    }
}

/// The client's own injection and update, for the stepped protocol: the server runs one base
/// layer at a time and the client moves the hidden state between layers.
#[allow(async_fn_in_trait)]
pub trait LocalAdapter {
    /// Starts a pass over `m` rows whose shadow state is `s0` `[m, hidden]`.
    async fn begin(&mut self, s0: &[f32], m: usize) -> Result<()>;
    /// Takes `h`, the output of base layer `next - 1` (the embeddings when `next` is 0), and
    /// returns the input of layer `next`: the update after layer `next - 1`, then the
    /// injection before layer `next` (each where the adapter has one).
    async fn between(&mut self, next: usize, h: &[f32], m: usize) -> Result<Vec<f32>>;
    /// Whether the adapter injects before layer 0 (the pass then starts from the embeddings).
    fn injects_first(&self) -> bool {
        false
    }
}

/// No local adapter (fused protocol).
impl LocalAdapter for () {
    async fn begin(&mut self, _: &[f32], _: usize) -> Result<()> {
        Err(Error::InvalidRequest(
            "the stepped protocol needs the adapter on the client".into(),
        ))
    }
    async fn between(&mut self, _: usize, _: &[f32], _: usize) -> Result<Vec<f32>> {
        Err(Error::InvalidRequest(
            "the stepped protocol needs the adapter on the client".into(),
        ))
    }
}

impl Connect {
    /// `url` with f32 frames, no token, and a 120 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Connect {
            url: url.into(),
            token: None,
            wire: Wire::F32,
            timeout: std::time::Duration::from_secs(120),
            protocol: Protocol::Fused,
        }
    }
}

/// A connection to a backbone server, with the adapter this client runs.
pub struct RemoteBase {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    wire: Wire,
    timeout: std::time::Duration,
    /// Fused or stepped.
    pub protocol: Protocol,
    upload: Arc<Vec<u8>>,
    sha: String,
    /// Whether the server was seen holding the adapter (then a new session opens without
    /// checking first; a 404 says it was evicted since, and the next try uploads it again).
    adapter_seen: std::sync::atomic::AtomicBool,
    /// Whether the server answers a count of last rows (`features` lists `rows-count`).
    rows_count: bool,
    /// The server's base width, layers, vocabulary and longest sequence.
    pub hidden: usize,
    pub layers: usize,
    pub vocab: usize,
    pub max_seq: usize,
}

/// One conversation with the server: its session id, its routing key, and the prefix sent so
/// far (to rebuild a lost session).
#[derive(Debug, Default)]
pub struct RemoteState {
    session: Option<String>,
    /// Sent with every request of the conversation ([`ROUTE_HEADER`]); drawn at its first
    /// request and kept for its life, rebuilds included.
    route: String,
    ids: Vec<u32>,
    s0: Vec<f32>,
    /// Requests and bytes, for reporting.
    pub round_trips: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl RemoteState {
    /// Positions the server acknowledged, in order (what a lost session is rebuilt from).
    pub fn held(&self) -> usize {
        self.ids.len()
    }

    /// The conversation's routing key (drawn on first use: 16 random hex digits).
    fn route(&mut self) -> &str {
        if self.route.is_empty() {
            let mut b = [0u8; 8];
            if getrandom::fill(&mut b).is_err() {
                // No entropy source: the clock still spreads conversations over replicas.
                let t = web_time::SystemTime::now()
                    .duration_since(web_time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                b = t.to_le_bytes();
            }
            self.route = b.iter().map(|x| format!("{x:02x}")).collect();
        }
        &self.route
    }

    /// Forgets the positions from `pos` on; the next request names `pos`, which rewinds the
    /// server's session to it.
    pub fn rewind(&mut self, pos: usize) {
        if pos < self.ids.len() {
            let width = self.s0.len() / self.ids.len();
            self.ids.truncate(pos);
            self.s0.truncate(pos * width);
        }
    }
}

/// The HTTP client the remote base uses: natively with TLS through rustls (ring) and the
/// platform's trust store (`SSL_CERT_FILE` names a private CA), so that `https://` reaches a
/// backbone behind a TLS proxy; in the browser, fetch. Natively, reqwest needs a crypto
/// provider installed before it builds a client (`reqwest::Client::new()` panics without one);
/// this installs ring's, so other clients of the process can be built after it.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        // Err when a provider is already installed: that one serves as well. ring has no
        // post-quantum key exchange (rustls 0.23.48 deprecates it for that) but builds without
        // cmake and in seconds; the classical groups (X25519, P-256) remain.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    reqwest::Client::builder().build()
}

/// An error with its causes, e.g. "error sending request: connection refused".
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

enum Failure {
    /// The session is gone: expired, evicted, restarted, or its server stopped answering.
    Gone,
    Other(Error),
}

/// How a request failed to get an answer.
enum Sent {
    /// No answer within the timeout (the server may still be working on it).
    Timeout(Error),
    /// The connection could not be made or broke.
    Dropped(Error),
}

impl Sent {
    fn error(self) -> Error {
        match self {
            Sent::Timeout(e) | Sent::Dropped(e) => e,
        }
    }
}

/// Retries of a session open that a load balancer answers 502, 503 or 504 (0.1 s, then
/// twice as long each time: 6.3 s in all).
const OPEN_RETRIES: u32 = 6;

/// Rebuilds of one request's session in a row before the client gives up: during a rolling
/// restart a conversation's route moves away from a stopping replica and back when it returns,
/// and a rebuild can straddle the move back.
const REBUILDS: u32 = 3;

/// Statuses a load balancer answers when the replica behind it failed or is restarting: the
/// session it held is lost, and another replica takes the conversation.
fn replica_lost(status: u16) -> bool {
    matches!(status, 502..=504)
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Other(e)
    }
}

impl RemoteBase {
    fn err(&self, status: Option<u16>, msg: impl Into<String>) -> Error {
        Error::Remote {
            url: self.url.clone(),
            status,
            msg: msg.into(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}/v1{path}", self.url));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r.timeout(self.timeout)
    }

    /// A request of the conversation `st`, with its routing key.
    fn req_on(
        &self,
        st: &mut RemoteState,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.req(method, path).header(ROUTE_HEADER, st.route())
    }

    /// Sends `r` and returns the status and body.
    async fn send(&self, r: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>)> {
        let (status, _, body) = self.send_once(r).await.map_err(Sent::error)?;
        Ok((status, body))
    }

    /// Sends a request on a session: a 429 (the server's KV memory is full for now) is retried
    /// after its `Retry-After`, for as long as the request's timeout allows. (A 429 for a new
    /// session, the server holding its most sessions, is not: sessions end slowly.)
    /// A connection that fails other than by a timeout (refused, reset: the server or its
    /// replica went away) is a lost session.
    async fn send_on_session(
        &self,
        r: reqwest::RequestBuilder,
    ) -> std::result::Result<(u16, Vec<u8>), Failure> {
        let started = web_time::Instant::now();
        let mut r = r;
        loop {
            let again = r.try_clone();
            let (status, retry, body) = match self.send_once(r).await {
                Ok(v) => v,
                Err(Sent::Timeout(e)) => return Err(Failure::Other(e)),
                Err(Sent::Dropped(_)) => return Err(Failure::Gone),
            };
            match (status, retry, again) {
                (429, Some(after), Some(next)) if started.elapsed() + after < self.timeout => {
                    sleep(after).await;
                    r = next;
                }
                _ => return Ok((status, body)),
            }
        }
    }

    async fn send_once(
        &self,
        r: reqwest::RequestBuilder,
    ) -> std::result::Result<(u16, Option<std::time::Duration>, Vec<u8>), Sent> {
        let resp = r.send().await.map_err(|e| {
            if e.is_timeout() {
                Sent::Timeout(self.err(None, format!("no answer in time: {}", chain(&e))))
            } else {
                Sent::Dropped(self.err(None, format!("unreachable: {}", chain(&e))))
            }
        })?;
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| std::time::Duration::from_secs(s.min(60)));
        let body = resp.bytes().await.map_err(|e| {
            let e2 = self.err(Some(status), format!("reply cut off: {}", chain(&e)));
            if e.is_timeout() {
                Sent::Timeout(e2)
            } else {
                Sent::Dropped(e2)
            }
        })?;
        Ok((status, retry, body.to_vec()))
    }

    fn fail(&self, status: u16, body: &[u8]) -> Error {
        let msg = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {status}"));
        self.err(Some(status), msg)
    }

    /// Connects to the server of `c`, checks the protocol and reads the base's dimensions. A
    /// fused client then sets its adapter upload ([`RemoteBase::set_adapter_upload`]).
    pub async fn connect(c: &Connect) -> Result<Self> {
        let mut rb = RemoteBase {
            http: http_client().map_err(|e| Error::Remote {
                url: c.url.clone(),
                status: None,
                msg: format!("cannot set up an HTTP client: {}", chain(&e)),
            })?,
            url: c.url.trim_end_matches('/').to_string(),
            token: c.token.clone(),
            wire: c.wire,
            timeout: c.timeout,
            protocol: c.protocol,
            upload: Arc::new(Vec::new()),
            sha: String::new(),
            adapter_seen: Default::default(),
            rows_count: false,
            hidden: 0,
            layers: 0,
            vocab: 0,
            max_seq: 0,
        };
        let (status, body) = rb.send(rb.req(reqwest::Method::GET, "/info")).await?;
        if status != 200 {
            return Err(rb.fail(status, &body));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| rb.err(Some(status), format!("/v1/info is not JSON: {e}")))?;
        if v.get("protocol").and_then(|p| p.as_str()) != Some(PROTOCOL) {
            return Err(rb.err(
                Some(status),
                format!(
                    "speaks protocol {}, this client speaks {PROTOCOL}",
                    v.get("protocol").unwrap_or(&serde_json::Value::Null)
                ),
            ));
        }
        let num = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| format!("/v1/info lacks `{k}`"))
        };
        let dims = (|| {
            Ok::<_, String>((
                num("hidden_size")?,
                num("num_hidden_layers")?,
                num("vocab_size")?,
                num("max_seq")?,
            ))
        })();
        (rb.hidden, rb.layers, rb.vocab, rb.max_seq) = dims.map_err(|m| rb.err(Some(status), m))?;
        rb.rows_count = v
            .get("features")
            .and_then(|f| f.as_array())
            .is_some_and(|f| f.iter().any(|x| x == "rows-count"));
        Ok(rb)
    }

    /// Sets the adapter upload frame of the fused protocol (sent, unless the server already
    /// has these exact bytes, when a session opens).
    pub fn set_adapter_upload(&mut self, upload: Vec<u8>) {
        self.sha = Sha256::digest(&upload)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        self.upload = Arc::new(upload);
        *self.adapter_seen.get_mut() = false;
    }

    /// Uploads the adapter unless the server already has these exact bytes.
    async fn ensure_adapter(&self, st: &mut RemoteState) -> Result<()> {
        let path = format!("/adapters/{}", self.sha);
        let (status, _) = self
            .send(self.req_on(st, reqwest::Method::HEAD, &path))
            .await?;
        st.round_trips += 1;
        if status == 200 {
            return Ok(());
        }
        let (status, body) = self
            .send(
                self.req_on(st, reqwest::Method::PUT, &path)
                    .body(self.upload.to_vec()),
            )
            .await?;
        st.round_trips += 1;
        st.bytes_sent += self.upload.len() as u64;
        if !(200..300).contains(&status) {
            return Err(self.fail(status, &body));
        }
        Ok(())
    }

    /// Opens a session (uploading the adapter first where the server lacks it). A load
    /// balancer's 502, 503 or 504 (its replica failed or restarts) is retried, 0.1 s later,
    /// then twice as long each time, for about 6 s, while it routes the conversation to another
    /// replica or the replica returns.
    async fn open(&self, st: &mut RemoteState) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let (mut uploads, mut waits) = (0, 0);
        loop {
            let body = match self.protocol {
                Protocol::Fused => {
                    if !self.adapter_seen.load(Relaxed) {
                        self.ensure_adapter(st).await?;
                        self.adapter_seen.store(true, Relaxed);
                    }
                    serde_json::json!({ "adapter": self.sha })
                }
                Protocol::Stepped => serde_json::json!({ "mode": "stepped" }),
            }
            .to_string();
            let r = self
                .req_on(st, reqwest::Method::POST, "/sessions")
                .header("content-type", "application/json")
                .body(body);
            let (status, body) = self.send(r).await?;
            st.round_trips += 1;
            match status {
                s if replica_lost(s) && waits < OPEN_RETRIES => {
                    sleep(std::time::Duration::from_millis(100 << waits)).await;
                    waits += 1;
                }
                201 => {
                    let v: serde_json::Value = serde_json::from_slice(&body)
                        .map_err(|e| self.err(Some(status), e.to_string()))?;
                    let id = v
                        .get("session")
                        .and_then(|s| s.as_str())
                        .ok_or_else(|| self.err(Some(status), "no session id"))?;
                    st.session = Some(id.to_string());
                    return Ok(());
                }
                // The adapter was evicted since it was last seen, or this replica never had
                // it: upload again.
                404 if uploads < 2 => {
                    self.adapter_seen.store(false, Relaxed);
                    uploads += 1;
                }
                404 => return Err(self.err(Some(404), "the server keeps dropping the adapter")),
                _ => return Err(self.fail(status, &body)),
            }
        }
    }

    /// Posts one frame to `/sessions/{id}/{what}` and returns the `hidden` rows of the answer.
    async fn post(
        &self,
        st: &mut RemoteState,
        what: &str,
        req: Vec<u8>,
        rows: usize,
    ) -> std::result::Result<Vec<f32>, Failure> {
        let id = st
            .session
            .clone()
            .ok_or_else(|| self.err(None, "no session"))?;
        st.bytes_sent += req.len() as u64;
        let (status, body) = self
            .send_on_session(
                self.req_on(st, reqwest::Method::POST, &format!("/sessions/{id}/{what}"))
                    .header("content-type", "application/octet-stream")
                    .body(req),
            )
            .await?;
        st.round_trips += 1;
        st.bytes_received += body.len() as u64;
        match status {
            200 => {}
            // Expired, restarted, out of step, or its replica failed: rebuild from the prefix.
            404 | 409 => return Err(Failure::Gone),
            s if replica_lost(s) => return Err(Failure::Gone),
            _ => return Err(Failure::Other(self.fail(status, &body))),
        }
        let garbage =
            |e: String| Failure::Other(self.err(Some(status), format!("garbage reply: {e}")));
        let f = Frame::parse(&body).map_err(|e| garbage(e.to_string()))?;
        let (h, _) = f
            .f32("hidden", &[rows, self.hidden])
            .map_err(|e| garbage(e.to_string()))?;
        if h.iter().any(|x| !x.is_finite()) {
            return Err(garbage("non-finite hidden state".into()));
        }
        Ok(h)
    }

    /// One attached pass over `ids` at `pos` on the current session.
    async fn pass<A: LocalAdapter>(
        &self,
        st: &mut RemoteState,
        pos: usize,
        ids: &[u32],
        s0: &[f32],
        rows: usize,
        adapter: &mut A,
    ) -> std::result::Result<Vec<f32>, Failure> {
        let (m, d) = (ids.len(), self.hidden);
        let rows = rows.clamp(1, m);
        // A server without counts answers every row; the last `rows` are kept.
        let asked = if rows > 1 && !self.rows_count {
            m
        } else {
            rows
        };
        let keep = |h: Vec<f32>| h[(asked - rows) * d..].to_vec();
        match self.protocol {
            Protocol::Fused => {
                let req = frame::forward_request(pos, ids, s0, d, asked, self.wire);
                self.post(st, "forward", req, asked).await.map(keep)
            }
            Protocol::Stepped => {
                adapter.begin(s0, m).await?;
                let first = adapter.injects_first();
                let mut x = Vec::new();
                if first {
                    let req = frame::embed_request(pos, ids, asked, self.wire);
                    let e = self.post(st, "layer", req, m).await?;
                    x = adapter.between(0, &e, m).await?;
                }
                for l in 0..self.layers {
                    let last = l + 1 == self.layers;
                    let req = if l == 0 && !first {
                        frame::layer_request(pos, 0, Some(ids), &[], d, asked, self.wire)
                    } else {
                        frame::layer_request(pos, l, None, &x, d, asked, self.wire)
                    };
                    let h = self
                        .post(st, "layer", req, if last { asked } else { m })
                        .await?;
                    if last {
                        return Ok(keep(h));
                    }
                    x = adapter.between(l + 1, &h, m).await?;
                }
                Err(Failure::Other(self.err(None, "the base has no layers")))
            }
        }
    }

    /// Runs the base over `ids` at `pos` with shadow state `s0` `[m, hidden]`; returns the final
    /// normed hidden state of the last `rows` rows (`[rows, hidden]`). A `pos` before
    /// the end of what was sent rewinds the conversation to it. `adapter` runs the injection
    /// and update on the client in the stepped protocol (the fused one ignores it).
    pub async fn forward<A: LocalAdapter>(
        &self,
        st: &mut RemoteState,
        pos: usize,
        ids: &[u32],
        s0: &[f32],
        rows: usize,
        adapter: &mut A,
    ) -> Result<Vec<f32>> {
        if pos > st.ids.len() {
            return Err(Error::InvalidRequest(format!(
                "remote position {pos} is past the {} tokens sent",
                st.ids.len()
            )));
        }
        st.ids.truncate(pos);
        st.s0.truncate(pos * self.hidden);
        let mut lost = 0;
        loop {
            let rebuilt = if st.session.is_none() {
                self.open(st).await?;
                self.replay(st, adapter).await
            } else {
                Ok(())
            };
            let outcome = match rebuilt {
                Ok(()) => self.pass(st, pos, ids, s0, rows, adapter).await,
                Err(f) => Err(f),
            };
            match outcome {
                Ok(h) => {
                    st.ids.extend_from_slice(ids);
                    st.s0.extend_from_slice(s0);
                    return Ok(h);
                }
                // Lost before this pass, or while it was rebuilt (the route moved again).
                Err(Failure::Gone) => {
                    lost += 1;
                    if lost > REBUILDS {
                        let msg = format!("session lost {lost} times in a row");
                        return Err(self.err(Some(404), msg));
                    }
                    st.session = None;
                }
                Err(Failure::Other(e)) => return Err(e),
            }
        }
    }

    /// Re-sends the acknowledged prefix to a freshly opened session (nothing when it is empty).
    async fn replay<A: LocalAdapter>(
        &self,
        st: &mut RemoteState,
        adapter: &mut A,
    ) -> std::result::Result<(), Failure> {
        if st.ids.is_empty() {
            return Ok(());
        }
        let (pids, ps0) = (st.ids.clone(), st.s0.clone());
        self.pass(st, 0, &pids, &ps0, 1, adapter).await.map(|_| ())
    }

    /// Ends a session on the server (best effort).
    pub async fn close(&self, st: &mut RemoteState) {
        if let Some(id) = st.session.take() {
            let _ = self
                .send(self.req_on(st, reqwest::Method::DELETE, &format!("/sessions/{id}")))
                .await;
        }
    }
}

/// Waits `d` (before retrying a refused request).
#[cfg(not(target_arch = "wasm32"))]
async fn sleep(d: std::time::Duration) {
    tokio::time::sleep(d).await;
}

/// Waits `d` (before retrying a refused request), on the page's or worker's timer.
#[cfg(target_arch = "wasm32")]
async fn sleep(d: std::time::Duration) {
    use wasm_bindgen::JsCast;
    let ms = d.as_millis().min(i32::MAX as u128) as i32;
    let p = js_sys::Promise::new(&mut |resolve, _| {
        let global = js_sys::global();
        let f = js_sys::Reflect::get(&global, &"setTimeout".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match f {
            Some(f) => {
                let _ = f.call2(&global, &resolve, &ms.into());
            }
            None => {
                let _ = resolve.call0(&wasm_bindgen::JsValue::NULL);
            }
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(p).await;
}
