//! Attached mode across the network: a backbone server on loopback and the native client
//! reproduce the official attached outputs (shadow-peft and Hugging Face peft adapters, fused
//! and stepped); auth, limits, expiry and garbage are handled.

mod common;

use std::time::Duration;

use common::*;
use shadowpeft::generate::Escalate;
use shadowpeft::ops::KvStore;
use shadowpeft::remote::client::{Connect, Protocol};
use shadowpeft::remote::frame::Wire;
use shadowpeft::remote::server::ServerConfig;
use shadowpeft::{
    generate, DirSource, GenerateOptions, Gpu, LoadOptions, Mode, Readout, ShadowModel,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client(
    rt: &tokio::runtime::Runtime,
    gpu: &Gpu,
    name: &str,
    url: &str,
    token: Option<&str>,
    wire: Wire,
) -> shadowpeft::Result<ShadowModel> {
    let c = Connect {
        token: token.map(str::to_string),
        wire,
        ..Connect::new(url)
    };
    client_with(rt, gpu, name, &c)
}

fn client_with(
    rt: &tokio::runtime::Runtime,
    gpu: &Gpu,
    name: &str,
    c: &Connect,
) -> shadowpeft::Result<ShadowModel> {
    let d = fixture(name);
    rt.block_on(ShadowModel::load_remote(
        gpu,
        &DirSource::open(d.join("export")).unwrap(),
        &DirSource::open(d.join("adapter")).unwrap(),
        c,
        &LoadOptions::default(),
    ))
}

fn greedy(
    rt: &tokio::runtime::Runtime,
    gpu: &Gpu,
    m: &ShadowModel,
    s: &mut shadowpeft::Session,
    ids: &[u32],
    n: usize,
) -> Vec<u32> {
    let o = GenerateOptions {
        max_new_tokens: n,
        ignore_eos: true,
        ..Default::default()
    };
    rt.block_on(generate(gpu, m, s, ids, &o, |_| Ok(true)))
        .unwrap()
        .tokens
}

#[test]
fn remote_attached_equals_the_official_attached_output() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    // Official shadow-peft adapters, then Hugging Face peft ones (which inject before block 0
    // too, so a stepped pass starts with the embeddings: one more round trip).
    for (name, shadow_key, extra_trip) in [
        ("qwen3_implicit", "attached_shadow_logits", 0.0),
        ("qwen3_explicit_proj", "attached_shadow_logits", 0.0),
        ("qwen2_gqa", "attached_shadow_logits", 0.0),
        ("qwen3_untied", "attached_shadow_logits", 0.0),
        ("qwen3_bf16", "attached_shadow_logits", 0.0),
        ("llama", "attached_shadow_logits", 0.0),
        ("peft_mirror", "shadow_logits", 1.0),
        ("peft_partial_proj", "shadow_logits", 1.0),
        ("peft_explicit", "shadow_logits", 1.0),
        ("peft_projected", "shadow_logits", 1.0),
    ] {
        let url = start_server(name, ServerConfig::default());
        let g = Golden::load(&fixture(name));
        let ids = g.ids("input_ids");
        for (protocol, wire) in [
            (Protocol::Fused, Wire::F32),
            (Protocol::Fused, Wire::F16),
            (Protocol::Stepped, Wire::F32),
            (Protocol::Stepped, Wire::F16),
        ] {
            let c = Connect {
                wire,
                protocol,
                ..Connect::new(&url)
            };
            let m = client_with(&rt, gpu, name, &c).unwrap();
            let mut s = m.new_session(gpu);
            let out = rt
                .block_on(m.forward(gpu, &mut s, &ids, Readout::AllLogits, true))
                .unwrap();
            if wire == Wire::F32 {
                assert_logits(
                    &format!("{name} remote attached {protocol:?}"),
                    &out.logits,
                    &g.f32("attached_logits").0,
                );
                assert_logits(
                    &format!("{name} remote shadow {protocol:?}"),
                    &out.shadow_logits,
                    &g.f32(shadow_key).0,
                );
            } else {
                // f16 frames round s0 and the hidden state to 11 bits; report, and check the tokens.
                let (e, mx) = max_err(&out.logits, &g.f32("attached_logits").0);
                eprintln!(
                    "{name} remote attached {protocol:?} over f16: max abs error {e:.3e} ({:.2e} of max|logit|)",
                    e / mx
                );
                assert!(e <= 2e-2 * mx, "{name}: f16 wire error {e}");
            }
            let mut s = m.new_session(gpu);
            assert_eq!(
                greedy(&rt, gpu, &m, &mut s, &ids, 12),
                g.ids("greedy_attached"),
                "{name} {protocol:?} {wire:?}: greedy tokens"
            );
            let (trips, sent, recv) = s.remote_traffic().unwrap();
            eprintln!("{name} {protocol:?} {wire:?}: 12 tokens in {trips} round trips, {sent} bytes sent, {recv} received");
            // Per decoded token: one round trip fused, one per base layer stepped.
            let (t0, s0, r0) = (trips, sent, recv);
            let mut s2 = m.new_session(gpu);
            greedy(&rt, gpu, &m, &mut s2, &ids, 2);
            let (t1, s1, r1) = s2.remote_traffic().unwrap();
            let per = |a: u64, b: u64| (a - b) as f64 / 10.0;
            eprintln!(
                "{name} {protocol:?} {wire:?} per decoded token: {} round trips, {} B sent, {} B received",
                per(t0, t1),
                per(s0, s1),
                per(r0, r1)
            );
            let layers = m.remote_layers().unwrap() as f64;
            let want_trips = if protocol == Protocol::Fused {
                1.0
            } else {
                layers + extra_trip
            };
            assert_eq!(
                per(t0, t1),
                want_trips,
                "{name} {protocol:?}: round trips per token"
            );
        }
    }
}

#[test]
fn expired_sessions_are_rebuilt_with_identical_output() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    for name in ["qwen3_implicit", "peft_mirror"] {
        expired_sessions_rebuild(&rt, gpu, name);
    }
}

fn expired_sessions_rebuild(rt: &tokio::runtime::Runtime, gpu: &Gpu, name: &str) {
    let url = start_server(
        name,
        ServerConfig {
            session_ttl: Duration::from_millis(300),
            ..Default::default()
        },
    );
    let g = Golden::load(&fixture(name));
    let ids = g.ids("input_ids");
    let want = g.ids("greedy_attached");
    for protocol in [Protocol::Fused, Protocol::Stepped] {
        let c = Connect {
            protocol,
            ..Connect::new(&url)
        };
        let m = client_with(rt, gpu, name, &c).unwrap();
        let mut s = m.new_session(gpu);
        let first = greedy(rt, gpu, &m, &mut s, &ids, 4);
        assert_eq!(first, want[..4]);
        std::thread::sleep(Duration::from_millis(1200));
        // The server dropped the session; the client re-sends the prefix and carries on.
        let mut rest = Vec::new();
        let mut tok = *first.last().unwrap();
        for _ in 0..8 {
            let o = rt
                .block_on(m.forward(gpu, &mut s, &[tok], Readout::Argmax, false))
                .unwrap();
            tok = o.token.unwrap();
            rest.push(tok);
        }
        assert_eq!(rest, want[4..], "{name} {protocol:?}");
        // A reset session starts over on the same server session (it rewinds).
        s.reset();
        assert_eq!(
            greedy(rt, gpu, &m, &mut s, &ids, 12),
            want,
            "{name} {protocol:?} after reset"
        );
    }
}

fn local_attached(gpu: &Gpu, name: &str) -> ShadowModel {
    let d = fixture(name);
    pollster::block_on(ShadowModel::load_adapter(
        gpu,
        &DirSource::open(d.join("base")).unwrap(),
        &DirSource::open(d.join("adapter")).unwrap(),
        None::<&DirSource>,
        Mode::Attached,
        &LoadOptions::default(),
    ))
    .unwrap()
}

/// Escalation: detached tokens up to the marker, then exactly what the attached model
/// produces after that prefix; locally and over both protocols.
#[test]
fn escalation_on_a_marker_continues_exactly_attached() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    let name = "qwen3_implicit";
    let url = start_server(name, ServerConfig::default());
    let g = Golden::load(&fixture(name));
    let (ids, det) = (g.ids("input_ids"), g.ids("greedy_detached"));
    let n = 12;
    let local = local_attached(gpu, name);
    let remote = |protocol| {
        client_with(
            &rt,
            gpu,
            name,
            &Connect {
                protocol,
                ..Connect::new(&url)
            },
        )
        .unwrap()
    };
    let models = [
        ("local", local_attached(gpu, name)),
        ("fused", remote(Protocol::Fused)),
        ("stepped", remote(Protocol::Stepped)),
    ];
    // A one-token marker at the first detached token not seen before it, and a two-token
    // marker ending there (held back, then rewound).
    let k = (2..n).find(|&k| !det[..k].contains(&det[k])).unwrap();
    for marker in [vec![det[k]], det[k - 1..=k].to_vec()] {
        let keep = k + 1 - marker.len();
        let mut prefix = ids.clone();
        prefix.extend(&det[..keep]);
        let mut s = local.new_session(gpu);
        let mut want = det[..keep].to_vec();
        want.extend(greedy(&rt, gpu, &local, &mut s, &prefix, n - keep));
        let o = GenerateOptions {
            max_new_tokens: n,
            ignore_eos: true,
            escalate: Some(Escalate {
                marker_ids: marker.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        for (what, m) in &models {
            let mut s = m.new_session(gpu);
            let out = rt
                .block_on(generate(gpu, m, &mut s, &ids, &o, |_| Ok(true)))
                .unwrap();
            assert_eq!(out.tokens, want, "{what}, marker {marker:?}");
            let mut modes = vec![Mode::Detached; keep];
            modes.resize(n, Mode::Attached);
            assert_eq!(out.modes, modes, "{what}, marker {marker:?}");
        }
    }
    // Unsure from the first token (every top probability is below 1): all attached, equal
    // to the official attached output.
    let o = GenerateOptions {
        max_new_tokens: n,
        ignore_eos: true,
        escalate: Some(Escalate {
            min_prob: Some(1.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    for (what, m) in &models {
        let mut s = m.new_session(gpu);
        let out = rt
            .block_on(generate(gpu, m, &mut s, &ids, &o, |_| Ok(true)))
            .unwrap();
        assert_eq!(out.tokens, g.ids("greedy_attached"), "{what}: min_prob");
        assert!(out.modes.iter().all(|m| *m == Mode::Attached), "{what}");
    }
    // A marker the detached model never emits: the detached output, all detached.
    let o = GenerateOptions {
        max_new_tokens: n,
        ignore_eos: true,
        escalate: Some(Escalate {
            marker_ids: vec![u32::MAX - 1],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut s = local.new_session(gpu);
    let out = rt
        .block_on(generate(gpu, &local, &mut s, &ids, &o, |_| Ok(true)))
        .unwrap();
    assert_eq!(out.tokens, det);
    assert!(out.modes.iter().all(|m| *m == Mode::Detached));
}

/// Sends a request; (0, error) when the server closed the connection before answering.
fn http(rt: &tokio::runtime::Runtime, req: reqwest::RequestBuilder) -> (u16, String) {
    rt.block_on(async {
        match req.send().await {
            Ok(r) => {
                let st = r.status().as_u16();
                (st, r.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    })
}

#[test]
fn auth_limits_and_garbage_are_refused_clearly() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    let name = "qwen3_implicit";
    let url = start_server(
        name,
        ServerConfig {
            token: Some("s3cret".into()),
            max_sessions: 1,
            max_body: 1 << 20,
            ..Default::default()
        },
    );
    let c = shadowpeft::remote::client::http_client().unwrap();
    // No token, wrong token: 401, and the client says so.
    assert_eq!(http(&rt, c.get(format!("{url}/v1/info"))).0, 401);
    assert_eq!(
        http(&rt, c.get(format!("{url}/v1/info")).bearer_auth("nope")).0,
        401
    );
    let e = client(&rt, gpu, name, &url, None, Wire::F32)
        .err()
        .expect("unauthenticated client accepted")
        .to_string();
    assert!(e.contains("401") || e.contains("bearer token"), "{e}");
    // With the token: works, and the second concurrent session is refused (max 1).
    let m = client(&rt, gpu, name, &url, Some("s3cret"), Wire::F32).unwrap();
    let mut s1 = m.new_session(gpu);
    rt.block_on(m.forward(gpu, &mut s1, &[1, 2, 3], Readout::Argmax, false))
        .unwrap();
    let mut s2 = m.new_session(gpu);
    let e = rt
        .block_on(m.forward(gpu, &mut s2, &[1, 2, 3], Readout::Argmax, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("maximum of 1 sessions"), "{e}");
    // Garbage frames, unknown sessions, bad adapter ids, oversized bodies.
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth("s3cret");
    let (st, body) = http(
        &rt,
        auth(
            c.post(format!("{url}/v1/sessions/0123/forward"))
                .body(vec![7u8; 64]),
        ),
    );
    assert_eq!(st, 404, "{body}");
    let (st, body) = http(
        &rt,
        auth(c.put(format!("{url}/v1/adapters/xyz")).body(vec![1u8; 10])),
    );
    assert_eq!(st, 400, "{body}");
    let sha = "0".repeat(64);
    let (st, body) = http(
        &rt,
        auth(
            c.put(format!("{url}/v1/adapters/{sha}"))
                .body(vec![1u8; 10]),
        ),
    );
    assert!(st == 400 && body.contains("hashes to"), "{st} {body}");
    // Over the 1 MiB body limit: 413, or the connection is closed while the body is still
    // being written (the server answers before reading it).
    let (st, body) = http(
        &rt,
        auth(
            c.put(format!("{url}/v1/adapters/{sha}"))
                .body(vec![0u8; 2 << 20]),
        ),
    );
    assert!(
        st == 413 || (st == 0 && body.contains("error sending request")),
        "{st} {body}"
    );
    // (A fresh connection: the server closed the previous one after the 413.)
    let c = shadowpeft::remote::client::http_client().unwrap();
    let (st, body) = http(
        &rt,
        auth(
            c.post(format!("{url}/v1/sessions"))
                .header("content-type", "application/json")
                .body("{\"adapter\": 5}"),
        ),
    );
    assert!((400..500).contains(&st), "{st} {body}");
}

#[test]
fn garbage_frames_get_400_with_a_reason() {
    if gpu().is_none() {
        return;
    }
    let rt = rt();
    let name = "qwen3_implicit";
    let url = start_server(name, ServerConfig::default());
    let c = shadowpeft::remote::client::http_client().unwrap();
    let (st, body) = http(&rt, c.get(format!("{url}/v1/info")));
    assert_eq!(st, 200, "{body}");
    let hidden = serde_json::from_str::<serde_json::Value>(&body).unwrap()["hidden_size"]
        .as_u64()
        .unwrap() as usize;
    let sid = open_session_like_client(&rt, &url);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0xff; 40], "bad frame"),
        (
            shadowpeft::remote::frame::hidden_response(&vec![0.0; hidden], 1, hidden, Wire::F32),
            "missing tensor `ids`",
        ),
        (
            shadowpeft::remote::frame::forward_request(
                0,
                &[1],
                &vec![0.0; hidden + 1],
                hidden + 1,
                1,
                Wire::F32,
            ),
            "has shape",
        ),
        (
            shadowpeft::remote::frame::forward_request(
                0,
                &[99999],
                &vec![0.0; hidden],
                hidden,
                1,
                Wire::F32,
            ),
            "out of vocabulary",
        ),
        (
            shadowpeft::remote::frame::forward_request(
                7,
                &[1],
                &vec![0.0; hidden],
                hidden,
                1,
                Wire::F32,
            ),
            "is past the session",
        ),
    ];
    for (body, want) in cases {
        let (st, text) = http(
            &rt,
            c.post(format!("{url}/v1/sessions/{sid}/forward"))
                .body(body),
        );
        assert!(
            (400..500).contains(&st) && text.contains(want),
            "{st} {text} (wanted {want})"
        );
    }
    // Adapter uploads that name a wrong format, wrong blocks, or carry the other format's tensors.
    use shadowpeft::remote::frame::adapter_upload;
    use std::collections::HashMap;
    let t = |n: &str| {
        (
            n.to_string(),
            safetensors::Dtype::F32,
            vec![1],
            vec![0u8; 4],
        )
    };
    let meta = |kv: &[(&str, &str)]| -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let peft_meta = |blocks: &str| {
        meta(&[
            ("format", "peft"),
            ("alpha", "0.5"),
            ("rank", "4"),
            ("update_hidden_size", "4"),
            ("blocks", blocks),
        ])
    };
    let peft_t = t("base_model.model.model.layers.0.shadow_down.default.weight");
    let uploads = vec![
        (
            adapter_upload(vec![t("x")], meta(&[("format", "lora"), ("alpha", "1")])),
            "adapter format `lora`",
        ),
        (
            adapter_upload(vec![peft_t.clone()], peft_meta("0,2")),
            "contiguous",
        ),
        (
            adapter_upload(vec![peft_t.clone()], peft_meta("9")),
            "the base has",
        ),
        (
            adapter_upload(
                vec![t("shadow_injection_model.injection_downs")],
                peft_meta("0"),
            ),
            "unexpected tensor `shadow_injection_model.injection_downs` in the peft adapter upload",
        ),
        (
            adapter_upload(vec![peft_t], peft_meta("0")),
            "shadow_down.default.weight",
        ),
    ];
    for (body, want) in uploads {
        let sha: String =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&body))
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect();
        let (st, text) = http(&rt, c.put(format!("{url}/v1/adapters/{sha}")).body(body));
        assert!(
            (400..500).contains(&st) && text.contains(want),
            "adapter upload: {st} {text} (wanted {want})"
        );
    }
}

/// Uploads the qwen3_implicit adapter the way the client does and opens a session by hand.
fn open_session_like_client(rt: &tokio::runtime::Runtime, url: &str) -> String {
    use sha2::Digest;
    let up = fixture_adapter_upload("qwen3_implicit");
    let sha: String = sha2::Sha256::digest(&up)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    let c = shadowpeft::remote::client::http_client().unwrap();
    let (st, body) = http(rt, c.put(format!("{url}/v1/adapters/{sha}")).body(up));
    assert!(st == 200 || st == 201, "{st} {body}");
    let (st, body) = http(
        rt,
        c.post(format!("{url}/v1/sessions"))
            .header("content-type", "application/json")
            .body(format!("{{\"adapter\":\"{sha}\"}}")),
    );
    assert_eq!(st, 201, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["session"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The server's `GET /v1/info` (which must answer 200).
fn server_info(rt: &tokio::runtime::Runtime, url: &str) -> serde_json::Value {
    let (status, info) = http(
        rt,
        shadowpeft::remote::client::http_client()
            .unwrap()
            .get(format!("{url}/v1/info")),
    );
    assert_eq!(status, 200, "{info}");
    serde_json::from_str(&info).unwrap()
}

/// The value of the sample `key` (name and labels) in a Prometheus text exposition.
fn metric(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().parse().unwrap()))
}

/// 16 clients at once on one server, fused and stepped, f32 and f16 on the wire: the
/// scheduler batches their rows (prompts in chunks of 3, at most 16 rows a pass) and every
/// client gets the official greedy tokens. The server's metrics show passes that held
/// several sessions.
#[test]
fn sixteen_concurrent_mixed_sessions_are_all_exact() {
    if gpu().is_none() {
        return;
    }
    let name = "qwen2_gqa";
    let cfg = ServerConfig {
        prefill_chunk: Some(3),
        max_batch_rows: 16,
        ..Default::default()
    };
    let url = start_server(name, cfg);
    let g = Golden::load(&fixture(name));
    let ids = g.ids("input_ids");
    let want = g.ids("greedy_attached");
    // 16 independent clients (each its own connection pool and runtime), one server.
    let t0 = std::time::Instant::now();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let (ids, url) = (ids.clone(), url.clone());
            std::thread::spawn(move || {
                let rt = crate::rt();
                let gpu = common::gpu().unwrap();
                let c = Connect {
                    protocol: [Protocol::Fused, Protocol::Stepped][i % 2],
                    wire: [Wire::F32, Wire::F16][(i / 2) % 2],
                    ..Connect::new(&url)
                };
                let model = client_with(&rt, gpu, name, &c).unwrap();
                let mut s = model.new_session(gpu);
                (
                    c.protocol,
                    c.wire,
                    greedy(&rt, gpu, &model, &mut s, &ids, 12),
                )
            })
        })
        .collect();
    for h in handles {
        let (protocol, wire, got) = h.join().unwrap();
        assert_eq!(got, want, "{protocol:?} {wire:?}");
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "16 sessions x 12 tokens in {secs:.2} s: {:.1} tokens/s through one server",
        16.0 * 12.0 / secs
    );
    let rt = rt();
    let (status, text) = http(
        &rt,
        shadowpeft::remote::client::http_client()
            .unwrap()
            .get(format!("{url}/metrics")),
    );
    assert_eq!(status, 200, "{text}");
    let value = |key: &str| metric(&text, key).unwrap_or_else(|| panic!("no `{key}` in\n{text}"));
    let passes = value("shadowpeft_batch_sessions_count");
    let alone = value("shadowpeft_batch_sessions_bucket{le=\"1.0\"}");
    assert!(
        passes > alone,
        "no pass held two sessions: {passes} passes, {alone} alone"
    );
    assert!(value("shadowpeft_rows_total{kind=\"fused\"}") > 0.0);
    assert!(value("shadowpeft_rows_total{kind=\"stepped\"}") > 0.0);
    eprintln!("{passes} passes, {} with several sessions", passes - alone);
}

/// KV memory is a budget: a server with room for about two sessions holds four by refusing
/// with 429 and `Retry-After` whatever does not fit; clients wait and retry, and every one
/// ends with the official tokens. `/v1/info` and `/metrics` report the pool.
#[test]
fn a_full_kv_budget_refuses_cleanly_and_loses_nothing() {
    if gpu().is_none() {
        return;
    }
    let name = "qwen3_implicit";
    let g = Golden::load(&fixture(name));
    let ids = g.ids("input_ids");
    let want = g.ids("greedy_attached");
    // Per position: keys and values of 3 layers of 2 heads of 16 = 768 bytes; a block of 4
    // positions 3072. One generation needs ceil((prompt + 12) / 4) blocks.
    let per_session = (ids.len() + 12).div_ceil(4);
    let cfg = ServerConfig {
        kv_memory: shadowpeft::remote::budget::KvMemory::Bytes(3072 * (2 * per_session as u64 + 1)),
        kv_block: 4,
        ..Default::default()
    };
    let url = start_server(name, cfg);
    let rt = rt();
    let info = server_info(&rt, &url);
    assert_eq!(info["kv"]["blocks"], 2 * per_session + 1, "{info}");
    assert_eq!(info["kv"]["block_positions"], 4);
    assert_eq!(info["kv"]["bytes_per_position"], 768);

    // A raw request that cannot get blocks: 429 with Retry-After and a reason.
    let (status, headers, body) = {
        let c = shadowpeft::remote::client::http_client().unwrap();
        let open = |mode: &str| {
            let r = rt.block_on(
                c.post(format!("{url}/v1/sessions"))
                    .header("content-type", "application/json")
                    .body(format!("{{\"mode\": \"{mode}\"}}"))
                    .send(),
            );
            let text = rt.block_on(r.unwrap().text()).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["session"].as_str().unwrap().to_string()
        };
        let s = open("stepped");
        let long: Vec<u32> = (0..4 * (2 * per_session + 2))
            .map(|i| i as u32 % 500)
            .collect();
        let req =
            shadowpeft::remote::frame::layer_request(0, 0, Some(&long), &[], 64, 1, Wire::F32);
        let r = rt
            .block_on(
                c.post(format!("{url}/v1/sessions/{s}/layer"))
                    .body(req)
                    .send(),
            )
            .unwrap();
        let headers = r.headers().clone();
        (r.status().as_u16(), headers, rt.block_on(r.text()).unwrap())
    };
    assert_eq!(status, 429, "{body}");
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert!(body.contains("KV memory is full"), "{body}");

    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (ids, url) = (ids.clone(), url.clone());
            std::thread::spawn(move || {
                let rt = crate::rt();
                let gpu = common::gpu().unwrap();
                let c = Connect {
                    protocol: [Protocol::Fused, Protocol::Stepped][i % 2],
                    ..Connect::new(&url)
                };
                let model = client_with(&rt, gpu, name, &c).unwrap();
                let mut s = model.new_session(gpu);
                let out = greedy(&rt, gpu, &model, &mut s, &ids, 12);
                // Done: the server session goes, and its blocks with it.
                rt.block_on(model.end_conversation(&mut s));
                out
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), want);
    }
    let (_, text) = http(
        &rt,
        shadowpeft::remote::client::http_client()
            .unwrap()
            .get(format!("{url}/metrics")),
    );
    let refused = metric(&text, "shadowpeft_refused_total{reason=\"kv_blocks\"}").unwrap_or(0.0);
    assert!(refused >= 2.0, "the budget never refused anything:\n{text}");
    assert!(
        text.contains("shadowpeft_kv_blocks{state=\"free\"}"),
        "{text}"
    );
    eprintln!("{refused} requests refused for KV memory and retried");
}

/// When the pool runs dry, a session that holds blocks takes the next one from the youngest
/// idle session (preemption by recomputation, as in vLLM): that session answers 404 with a
/// reason, and is gone; a new session takes no one's blocks and is refused with 429. Then two
/// real clients on a budget smaller than their two generations both end with the official
/// tokens, rebuilding whatever was evicted.
#[test]
fn a_dry_pool_evicts_the_youngest_session_and_its_client_rebuilds_it() {
    if gpu().is_none() {
        return;
    }
    let name = "qwen3_implicit";
    let g = Golden::load(&fixture(name));
    let ids = g.ids("input_ids");
    let want = g.ids("greedy_attached");
    // Blocks of 4 positions, 3072 bytes each (see the test above): 6 blocks in all.
    let cfg = ServerConfig {
        kv_memory: shadowpeft::remote::budget::KvMemory::Bytes(3072 * 6),
        kv_block: 4,
        ..Default::default()
    };
    let url = start_server(name, cfg);
    let rt = rt();
    let hidden = server_info(&rt, &url)["hidden_size"].as_u64().unwrap() as usize;
    let c = shadowpeft::remote::client::http_client().unwrap();
    let forward = |sid: &str, pos: usize, m: usize| {
        let ids: Vec<u32> = (0..m).map(|i| (7 * (pos + i) % 300) as u32).collect();
        let s0 = vec![0.25f32; m * hidden];
        let req = shadowpeft::remote::frame::forward_request(pos, &ids, &s0, hidden, 1, Wire::F32);
        http(
            &rt,
            c.post(format!("{url}/v1/sessions/{sid}/forward")).body(req),
        )
    };
    // The older session and the younger one take 2 blocks each; 2 are left.
    let (old, young) = (
        open_session_like_client(&rt, &url),
        open_session_like_client(&rt, &url),
    );
    assert_eq!(forward(&old, 0, 8).0, 200);
    assert_eq!(forward(&young, 0, 8).0, 200);
    assert_eq!(server_info(&rt, &url)["kv"]["blocks_free"], 2);
    // A new session must leave a block for each of the two: refused, taking no one's blocks.
    let new = open_session_like_client(&rt, &url);
    let (status, body) = forward(&new, 0, 4);
    assert_eq!(status, 429, "{body}");
    // The older session grows to 5 blocks: the younger one's cache is dropped for it.
    let (status, body) = forward(&old, 8, 9);
    assert_eq!(status, 200, "{body}");
    assert_eq!(server_info(&rt, &url)["kv"]["blocks_free"], 1);
    let (status, body) = forward(&young, 8, 1);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("evicted"), "{body}");
    // It is gone: its id answers the plain 404 now.
    let (status, body) = forward(&young, 0, 1);
    assert_eq!(status, 404, "{body}");
    let (_, text) = http(&rt, c.get(format!("{url}/metrics")));
    assert_eq!(
        metric(&text, "shadowpeft_kv_evictions_total"),
        Some(1.0),
        "{text}"
    );
    for sid in [&old, &new] {
        let (status, _) = http(&rt, c.delete(format!("{url}/v1/sessions/{sid}")));
        assert_eq!(status, 204);
    }
    assert_eq!(server_info(&rt, &url)["kv"]["blocks_free"], 6);

    // Two clients whose generations (the prompt and 11 fed-back tokens) need more blocks than
    // there are, together, on a pool of 7: both prompts fit at once (3 blocks each, and the
    // younger leaves one for the older to grow), and once both have their first token (a
    // barrier) neither can finish without the other's blocks: the younger is evicted as the
    // older grows, and rebuilt once the older is done.
    let need = (ids.len() + 11).div_ceil(4);
    assert!(
        ids.len().div_ceil(4) == 3 && need <= 7 && 2 * need > 7,
        "the fixture no longer overflows the pool"
    );
    let url = start_server(
        name,
        ServerConfig {
            kv_memory: shadowpeft::remote::budget::KvMemory::Bytes(3072 * 7),
            kv_block: 4,
            ..Default::default()
        },
    );
    let first = std::sync::Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let (ids, url, first) = (ids.clone(), url.clone(), first.clone());
            std::thread::spawn(move || {
                let rt = crate::rt();
                let gpu = common::gpu().unwrap();
                let c = Connect {
                    protocol: [Protocol::Fused, Protocol::Stepped][i % 2],
                    ..Connect::new(&url)
                };
                let model = client_with(&rt, gpu, name, &c).unwrap();
                let mut s = model.new_session(gpu);
                let o = GenerateOptions {
                    max_new_tokens: 12,
                    ignore_eos: true,
                    ..Default::default()
                };
                let mut n = 0;
                let out = rt
                    .block_on(generate(gpu, &model, &mut s, &ids, &o, |_| {
                        n += 1;
                        if n == 1 {
                            first.wait();
                        }
                        Ok(true)
                    }))
                    .unwrap()
                    .tokens;
                rt.block_on(model.end_conversation(&mut s));
                out
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), want);
    }
    let (_, text) = http(&rt, c.get(format!("{url}/metrics")));
    let evictions = metric(&text, "shadowpeft_kv_evictions_total").unwrap_or(0.0);
    assert!(evictions >= 1.0, "no session was evicted:\n{text}");
    assert_eq!(server_info(&rt, &url)["kv"]["blocks_free"], 7);
}

/// `--kv f16`: a pool that stores keys and values in f16 takes half the bytes a position,
/// says so in `/v1/info`, and fused and stepped clients still get the official greedy tokens.
#[test]
fn f16_kv_pool_serves_the_official_tokens() {
    if gpu().is_none() {
        return;
    }
    let name = "qwen3_implicit";
    let cfg = ServerConfig {
        kv_store: KvStore::F16,
        ..Default::default()
    };
    let url = start_server(name, cfg);
    let rt = rt();
    let info = server_info(&rt, &url);
    assert_eq!(info["kv"]["dtype"], "f16", "{info}");
    // 3 layers x (k, v) x 2 heads x 16 values x 2 bytes.
    assert_eq!(info["kv"]["bytes_per_position"], 384, "{info}");
    let g = Golden::load(&fixture(name));
    let gpu = gpu().unwrap();
    for protocol in [Protocol::Fused, Protocol::Stepped] {
        let c = Connect {
            protocol,
            ..Connect::new(&url)
        };
        let model = client_with(&rt, gpu, name, &c).unwrap();
        let mut s = model.new_session(gpu);
        let got = greedy(&rt, gpu, &model, &mut s, &g.ids("input_ids"), 12);
        assert_eq!(got, g.ids("greedy_attached"), "{protocol:?}");
    }
}

/// The server is killed mid-generation: without fallback the next token is a clear error (no
/// hang); with `fallback: detached` generation continues with the shadow alone, exactly as a
/// detached model would continue the same text, and says so.
#[test]
fn killed_server_is_an_error_or_a_visible_detached_fallback() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    let name = "qwen3_implicit";
    let mut server = ServerProcess::start(&fixture(name).join("base"), &[]);
    let url = server.url.clone();
    let g = Golden::load(&fixture(name));
    let ids = g.ids("input_ids");
    let want = g.ids("greedy_attached");
    let m = client(&rt, gpu, name, &url, None, Wire::F32).unwrap();
    let (mut strict, mut lenient) = (m.new_session(gpu), m.new_session(gpu));
    lenient.set_fallback_detached(true);
    let step = |s: &mut shadowpeft::Session, input: &[u32]| {
        rt.block_on(m.forward(gpu, s, input, Readout::Argmax, false))
    };
    let mut history = ids.clone();
    let mut tok = 0;
    for (i, s) in [&mut strict, &mut lenient].into_iter().enumerate() {
        let mut t = step(s, &ids).unwrap().token.unwrap();
        for _ in 0..3 {
            t = step(s, &[t]).unwrap().token.unwrap();
        }
        if i == 1 {
            tok = t;
        }
    }
    history.extend(&want[..3]);
    assert_eq!(tok, want[3]);
    server.kill();

    let t0 = std::time::Instant::now();
    let e = step(&mut strict, &[tok]).unwrap_err().to_string();
    assert!(e.contains("backbone") && e.contains("unreachable"), "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the failure took {:?}",
        t0.elapsed()
    );

    let mut after = Vec::new();
    let mut t = tok;
    for _ in 0..5 {
        let o = step(&mut lenient, &[t]).unwrap();
        assert_eq!(o.mode, Some(shadowpeft::Mode::Detached));
        t = o.token.unwrap();
        after.push(t);
    }
    assert!(lenient.fallback_error().unwrap().contains("unreachable"));
    // Reference: a detached model continuing prompt + the attached tokens.
    let export = rt
        .block_on(ShadowModel::load_export(
            gpu,
            &DirSource::open(fixture(name).join("export")).unwrap(),
            &LoadOptions::default(),
        ))
        .unwrap();
    let mut s = export.new_session(gpu);
    history.push(tok);
    let mut r = rt
        .block_on(export.forward(gpu, &mut s, &history, Readout::Argmax, false))
        .unwrap()
        .token
        .unwrap();
    let mut reference = vec![r];
    for _ in 0..4 {
        r = rt
            .block_on(export.forward(gpu, &mut s, &[r], Readout::Argmax, false))
            .unwrap()
            .token
            .unwrap();
        reference.push(r);
    }
    assert_eq!(after, reference);
}

/// A server that accepts connections but never answers: the client gives up after its
/// timeout with a clear error. One that answers garbage is rejected as such.
#[test]
fn slow_or_garbage_servers_fail_clearly() {
    let Some(gpu) = gpu() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (silent, garbage) = rt.block_on(async {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        (silent, garbage)
    });
    let (su, gu) = (silent.local_addr().unwrap(), garbage.local_addr().unwrap());
    rt.spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            held.push(c);
        }
    });
    rt.spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut c, _)) = garbage.accept().await {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf).await;
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\n\x00\x01garbage").await;
        }
    });
    let d = fixture("qwen3_implicit");
    let load = |url: String, timeout: Duration| {
        let c = Connect {
            timeout,
            ..Connect::new(url)
        };
        rt.block_on(ShadowModel::load_remote(
            gpu,
            &DirSource::open(d.join("export")).unwrap(),
            &DirSource::open(d.join("adapter")).unwrap(),
            &c,
            &LoadOptions::default(),
        ))
        .err()
        .expect("a broken server was accepted")
        .to_string()
    };
    let t0 = std::time::Instant::now();
    let e = load(format!("http://{su}"), Duration::from_secs(1));
    assert!(e.contains("no answer in time"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let e = load(format!("http://{gu}"), Duration::from_secs(5));
    assert!(e.contains("not JSON"), "{e}");
}
