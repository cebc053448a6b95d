//! Shared helpers of the integration tests: the GPU (or a clear skip), fixture paths, golden
//! tensors, and the logit tolerance.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use shadowpeft::remote::client::{Connect, Protocol};
use shadowpeft::remote::server::{load_base, serve, ServerConfig};
use shadowpeft::{DirSource, Gpu, GpuOptions, LoadOptions, Mode, ShadowModel, WeightFormat};

/// The shared device, or `None` with a message when no adapter exists. CI sets
/// `SHADOWPEFT_REQUIRE_GPU=1`, which turns a missing adapter into a failure.
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    GPU.get_or_init(
        || match pollster::block_on(Gpu::new(GpuOptions::default())) {
            Ok(g) => Some(g),
            Err(e) => {
                if std::env::var("SHADOWPEFT_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                    panic!("SHADOWPEFT_REQUIRE_GPU=1 but {e}");
                }
                eprintln!("skipping GPU test: {e} (install mesa-vulkan-drivers for lavapipe)");
                None
            }
        },
    )
    .as_ref()
}

/// Starts an in-process backbone server for `fixture_name`'s base on 127.0.0.1 (its own
/// thread, runtime and device; it lives as long as the test binary) and returns its URL.
pub fn start_server(fixture_name: &str, cfg: ServerConfig) -> String {
    start_server_for(fixture(fixture_name).join("base"), cfg)
}

/// [`start_server`] for the base in `base_dir`.
pub fn start_server_for(base_dir: PathBuf, cfg: ServerConfig) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let gpu = std::sync::Arc::new(Gpu::new(Default::default()).await.unwrap());
            let base = load_base(
                &gpu,
                &DirSource::open(&base_dir).unwrap(),
                256,
                Default::default(),
            )
            .await
            .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            serve(listener, gpu, std::sync::Arc::new(base), cfg)
                .await
                .unwrap();
        });
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("server did not start");
    format!("http://{addr}")
}

/// Generates after `ids` on session `s` (the whole sequence; the session reuses what it holds).
pub fn run(
    rt: &tokio::runtime::Runtime,
    m: &ShadowModel,
    s: &mut shadowpeft::Session,
    ids: &[u32],
    o: &shadowpeft::GenerateOptions,
) -> shadowpeft::Generation {
    rt.block_on(shadowpeft::generate(gpu().unwrap(), m, s, ids, o, |_| {
        Ok(true)
    }))
    .unwrap()
}

/// [`run`] on a fresh session.
pub fn fresh(
    rt: &tokio::runtime::Runtime,
    m: &ShadowModel,
    ids: &[u32],
    o: &shadowpeft::GenerateOptions,
) -> shadowpeft::Generation {
    let mut s = m.new_session(gpu().unwrap());
    run(rt, m, &mut s, ids, o)
}

/// A current-thread runtime for the async API (the remote client needs tokio).
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `name`'s base and adapter, loaded attached or detached in the given weight format.
pub fn load(
    rt: &tokio::runtime::Runtime,
    name: &str,
    mode: Mode,
    weights: WeightFormat,
) -> ShadowModel {
    let dir = fixture(name);
    let g = Golden::load(&dir);
    let shadow = g.json["shadow"]
        .as_str()
        .map(|s| DirSource::open(dir.join(s)).unwrap());
    let opts = LoadOptions {
        weights,
        ..Default::default()
    };
    rt.block_on(ShadowModel::load_adapter(
        gpu().unwrap(),
        &DirSource::open(dir.join("base")).unwrap(),
        &DirSource::open(dir.join("adapter")).unwrap(),
        shadow.as_ref(),
        mode,
        &opts,
    ))
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `name`'s detached export.
pub fn load_export(rt: &tokio::runtime::Runtime, name: &str) -> ShadowModel {
    rt.block_on(ShadowModel::load_export(
        gpu().unwrap(),
        &DirSource::open(fixture(name).join("export")).unwrap(),
        &LoadOptions::default(),
    ))
    .unwrap()
}

/// A model on `name`'s export and adapter through the backbone server of `c`.
pub fn remote_with(rt: &tokio::runtime::Runtime, name: &str, c: &Connect) -> ShadowModel {
    let d = fixture(name);
    rt.block_on(ShadowModel::load_remote(
        gpu().unwrap(),
        &DirSource::open(d.join("export")).unwrap(),
        &DirSource::open(d.join("adapter")).unwrap(),
        c,
        &LoadOptions::default(),
    ))
    .unwrap()
}

/// Starts an HTTP proxy on 127.0.0.1 in front of the server at `upstream` that passes every
/// request through and edits the JSON of `GET /v1/info` with `edit` (a server as it was
/// before a protocol feature, say). Returns its URL.
pub fn start_info_rewriting_proxy(upstream: &str, edit: fn(&mut serde_json::Value)) -> String {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, Uri};
    let upstream = upstream.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let client = shadowpeft::remote::client::http_client().unwrap();
            let app = axum::Router::new().fallback(
                move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                    let (client, upstream) = (client.clone(), upstream.clone());
                    async move {
                        let mut req = client
                            .request(method, format!("{upstream}{uri}"))
                            .body(body);
                        for (k, v) in &headers {
                            if k != "host" && k != "content-length" {
                                req = req.header(k, v);
                            }
                        }
                        let res = req.send().await.unwrap();
                        let status = res.status();
                        let mut bytes = res.bytes().await.unwrap().to_vec();
                        if uri.path() == "/v1/info" && status.is_success() {
                            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                            edit(&mut v);
                            bytes = serde_json::to_vec(&v).unwrap();
                        }
                        (status, bytes)
                    }
                },
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("proxy did not start");
    format!("http://{addr}")
}

/// `name`'s export and adapter, attached through the backbone server at `url`.
pub fn remote(
    rt: &tokio::runtime::Runtime,
    name: &str,
    url: &str,
    protocol: Protocol,
) -> ShadowModel {
    let d = fixture(name);
    let c = Connect {
        protocol,
        ..Connect::new(url)
    };
    rt.block_on(ShadowModel::load_remote(
        gpu().unwrap(),
        &DirSource::open(d.join("export")).unwrap(),
        &DirSource::open(d.join("adapter")).unwrap(),
        &c,
        &LoadOptions::default(),
    ))
    .unwrap()
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// All golden fixtures.
pub const FIXTURES: &[&str] = &[
    "qwen3_implicit",
    "qwen3_explicit_proj",
    "qwen3_untied",
    "qwen3_bf16",
    "qwen2_gqa",
    "llama",
];

/// The fixtures with Hugging Face peft adapters.
pub const PEFT: &[&str] = &[
    "peft_mirror",
    "peft_partial_proj",
    "peft_explicit",
    "peft_projected",
];

/// A tensor of `golden.safetensors` as f32 (F32) or as ids (I64).
pub struct Golden {
    bytes: Vec<u8>,
    pub json: serde_json::Value,
}

impl Golden {
    pub fn load(dir: &Path) -> Golden {
        let bytes = std::fs::read(dir.join("golden.safetensors")).expect("golden.safetensors");
        let json =
            serde_json::from_slice(&std::fs::read(dir.join("golden.json")).expect("golden.json"))
                .expect("golden.json parses");
        Golden { bytes, json }
    }

    pub fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("golden tensor {name}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        (bytemuck::pod_collect_to_vec(t.data()), t.shape().to_vec())
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("golden tensor {name}"));
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
        let v: Vec<i64> = bytemuck::pod_collect_to_vec(t.data());
        v.into_iter().map(|x| x as u32).collect()
    }
}

/// Max |got - want| and max |want|.
pub fn max_err(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "logit count");
    let e = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let m = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
    (e, m)
}

/// The fidelity tolerance: max abs logit error <= 1e-4 x max |logit|. f32 accumulation in a
/// different order than torch's differs by ~1e-6 relative per dot product; 1e-4 leaves room
/// for a few layers of that, and a real bug (a wrong norm, bias, rope or head) is far above.
pub const REL_TOL: f32 = 1e-4;

pub fn assert_logits(what: &str, got: &[f32], want: &[f32]) -> f32 {
    let (e, m) = max_err(got, want);
    assert!(
        e <= REL_TOL * m,
        "{what}: max abs error {e} > {REL_TOL} x max|logit| {m}"
    );
    eprintln!(
        "{what}: max abs error {e:.3e} (max|logit| {m:.3}, ratio {:.2e})",
        e / m
    );
    e / m
}

/// `shadowpeft serve` in its own process (killed when dropped), and its URL.
pub struct ServerProcess {
    child: std::process::Child,
    pub url: String,
}

impl ServerProcess {
    /// Serves `base` on a free loopback port, with extra `serve` flags.
    pub fn start(base: &Path, extra: &[&str]) -> ServerProcess {
        Self::start_at(base, "127.0.0.1:0", extra)
    }

    /// Serves `base` on `listen` (e.g. the address of a server that was killed).
    pub fn start_at(base: &Path, listen: &str, extra: &[&str]) -> ServerProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shadowpeft"))
            .args(["serve", "--listen", listen, "--base"])
            .arg(base)
            .args(extra)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn shadowpeft serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut server = ServerProcess {
            child,
            url: String::new(),
        };
        let mut lines = std::io::BufReader::new(stderr).lines();
        server.url = loop {
            let line = lines
                .next()
                .expect("the server exited before listening")
                .expect("server stderr");
            if let Some(i) = line.find("http://") {
                break line[i..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        };
        server
    }

    /// Kills the server now (as a crash would).
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The adapter upload of fixture `name` (its `adapter` folder), as the client sends it.
pub fn fixture_adapter_upload(name: &str) -> Vec<u8> {
    let d = fixture(name).join("adapter");
    let bytes = std::fs::read(d.join("shadow_adapter.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| shadowpeft::remote::is_adapter_tensor(n))
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("shadow_config.json")).unwrap()).unwrap();
    let meta = ["alpha", "injection_hidden_size", "gate_hidden_size"]
        .iter()
        .map(|k| (k.to_string(), cfg[*k].to_string()))
        .collect();
    shadowpeft::remote::frame::adapter_upload(tensors, meta)
}
