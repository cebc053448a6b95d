//! Random and mutated requests against a live backbone server: frames (bytes flipped, cut,
//! grown, their safetensors header rewritten), adapter uploads, JSON bodies, headers, paths
//! and methods, and raw HTTP. The server must never panic (a panicking handler drops its
//! connection; a panicking scheduler stops every later pass): every request gets an answer
//! below 500, every refusal is a 4xx whose JSON body says why, and a session opened before
//! the barrage still gets the exact answer afterwards.
//!
//! Seeded: `SHADOWPEFT_FUZZ_SEED` (default 1) and `SHADOWPEFT_FUZZ_CASES` (default 2000)
//! reproduce or lengthen a run; a failure names its seed and case.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use shadowpeft::remote::frame::{self, Wire};
use shadowpeft::remote::server::ServerConfig;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A number in `0..n`.
fn below(r: &mut ChaCha8Rng, n: usize) -> usize {
    (r.next_u64() % n.max(1) as u64) as usize
}

fn pick<'a, T>(r: &mut ChaCha8Rng, v: &'a [T]) -> &'a T {
    &v[below(r, v.len())]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha(b: &[u8]) -> String {
    hex(&<sha2::Sha256 as sha2::Digest>::digest(b))
}

/// Numbers and strings that break parsers: signs, overflows, floats, empties, unicode.
const ODD: &[&str] = &[
    "0",
    "1",
    "-1",
    "7",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "1e9",
    "NaN",
    "",
    " ",
    "last",
    "all",
    "f16",
    "f32",
    "only",
    "\u{0}",
    "é",
    "🦀",
    "9999999999999999999999999999",
];

/// `b` with its safetensors header (8-byte length, JSON) rewritten: a metadata value, a
/// tensor's dtype, shape or offsets replaced, or the length prefix made wrong.
fn mutate_header(r: &mut ChaCha8Rng, b: &[u8]) -> Vec<u8> {
    if b.len() < 8 {
        return b.to_vec();
    }
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let Some(json) = b.get(8..8 + n) else {
        return b.to_vec();
    };
    let Ok(serde_json::Value::Object(mut h)) = serde_json::from_slice(json) else {
        return b.to_vec();
    };
    let keys: Vec<String> = h.keys().cloned().collect();
    let key = pick(r, &keys).clone();
    let odd = |r: &mut ChaCha8Rng| serde_json::Value::String(pick(r, ODD).to_string());
    let num = |r: &mut ChaCha8Rng| -> serde_json::Value {
        match below(r, 4) {
            0 => serde_json::json!(below(r, 8)),
            1 => serde_json::json!(u64::MAX),
            2 => serde_json::json!(-1),
            _ => serde_json::json!(1u64 << 40),
        }
    };
    if key == "__metadata__" {
        if let Some(serde_json::Value::Object(m)) = h.get_mut(&key) {
            let mk: Vec<String> = m.keys().cloned().collect();
            match below(r, 3) {
                0 if !mk.is_empty() => {
                    let k = pick(r, &mk).clone();
                    m.insert(k, odd(r));
                }
                1 if !mk.is_empty() => {
                    let k = pick(r, &mk).clone();
                    m.remove(&k);
                }
                _ => {
                    m.insert(
                        pick(
                            r,
                            &[
                                "pos", "rows", "layer", "wire", "embed", "protocol", "format",
                                "alpha", "rank", "blocks",
                            ],
                        )
                        .to_string(),
                        odd(r),
                    );
                }
            }
        }
    } else if let Some(serde_json::Value::Object(t)) = h.get_mut(&key) {
        match below(r, 4) {
            0 => {
                t.insert(
                    "dtype".into(),
                    serde_json::json!(pick(
                        r,
                        &["F32", "F16", "BF16", "U32", "I64", "U8", "BOOL", "F64", "X"]
                    )),
                );
            }
            1 => {
                let dims = below(r, 4);
                let shape: Vec<serde_json::Value> = (0..dims).map(|_| num(r)).collect();
                t.insert("shape".into(), serde_json::Value::Array(shape));
            }
            2 => {
                t.insert("data_offsets".into(), serde_json::json!([num(r), num(r)]));
            }
            _ => {
                h.remove(&key);
            }
        }
    }
    let json = serde_json::to_vec(&serde_json::Value::Object(h)).unwrap();
    let mut len = json.len() as u64;
    if below(r, 8) == 0 {
        len = pick(
            r,
            &[0, 1, len + 1, len.saturating_sub(1), u64::MAX, 1 << 40],
        )
        .to_owned();
    }
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&b[8 + n..]);
    out
}

/// `b` mutated at the byte level: flipped, cut, grown, spliced, or replaced by noise.
fn mutate_bytes(r: &mut ChaCha8Rng, b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    match below(r, 6) {
        0 => {
            for _ in 0..1 + below(r, 8) {
                if !v.is_empty() {
                    let i = below(r, v.len());
                    v[i] ^= 1 << below(r, 8);
                }
            }
        }
        1 => v.truncate(below(r, v.len() + 1)),
        2 => {
            let extra = below(r, 64);
            v.extend((0..extra).map(|_| r.next_u32() as u8));
        }
        3 => {
            // A stretch of the header region overwritten with noise.
            let i = below(r, v.len().min(256));
            for x in v.iter_mut().skip(i).take(1 + below(r, 16)) {
                *x = r.next_u32() as u8;
            }
        }
        4 => {
            let n = below(r, 512);
            v = (0..n).map(|_| r.next_u32() as u8).collect();
        }
        _ => v.clear(),
    }
    v
}

fn mutate(r: &mut ChaCha8Rng, b: &[u8]) -> Vec<u8> {
    if below(r, 2) == 0 {
        mutate_header(r, b)
    } else {
        mutate_bytes(r, b)
    }
}

/// A random JSON value (nested a little), or text that is not JSON.
fn json_body(r: &mut ChaCha8Rng, sha: &str) -> Vec<u8> {
    fn value(r: &mut ChaCha8Rng, depth: usize, sha: &str) -> serde_json::Value {
        match below(r, if depth > 2 { 5 } else { 7 }) {
            0 => serde_json::Value::Null,
            1 => serde_json::json!(below(r, 2) == 0),
            2 => serde_json::json!(pick(r, &[0.0, -1.0, 1e308, 3.5])),
            3 => serde_json::json!(pick(r, ODD)),
            4 => serde_json::json!(sha),
            5 => serde_json::Value::Array(
                (0..below(r, 3)).map(|_| value(r, depth + 1, sha)).collect(),
            ),
            _ => {
                let mut m = serde_json::Map::new();
                for _ in 0..below(r, 4) {
                    let k = pick(r, &["adapter", "mode", "wire", "x", ""]).to_string();
                    m.insert(k, value(r, depth + 1, sha));
                }
                serde_json::Value::Object(m)
            }
        }
    }
    match below(r, 6) {
        0 => pick(r, &[&b"{"[..], b"", b"null", b"{\"adapter\":", b"\xff\xfe", b"[[[[[[[[[[[["]).to_vec(),
        1 => serde_json::to_vec(&serde_json::json!({"mode": pick(r, ODD)})).unwrap(),
        2 => serde_json::to_vec(&serde_json::json!({"adapter": pick(r, &[sha, "", "abc", &"a".repeat(64), &"Z".repeat(64)])})).unwrap(),
        _ => serde_json::to_vec(&value(r, 0, sha)).unwrap(),
    }
}

/// Checks one answer: no dropped connection, nothing from 500 up, and a refusal that says
/// why in JSON.
fn check(case: &str, method: &str, status: u16, body: &str) {
    assert!(
        status != 0,
        "{case}: the connection dropped without an answer ({body})"
    );
    assert!(status < 500, "{case}: answered {status}: {body}");
    if (400..500).contains(&status) && method != "HEAD" {
        let v: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{case}: {status} whose body is not JSON ({e}): {body:?}"));
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(
            !msg.is_empty(),
            "{case}: {status} without a message: {body}"
        );
    }
}

fn send(rt: &tokio::runtime::Runtime, req: reqwest::RequestBuilder) -> (u16, String) {
    rt.block_on(async {
        match req.timeout(Duration::from_secs(60)).send().await {
            Ok(r) => {
                let st = r.status().as_u16();
                (st, r.text().await.unwrap_or_default())
            }
            Err(e) => (0, format!("{e:?}")),
        }
    })
}

/// Raw HTTP/1.1 on a socket: a request line, headers and body, mutated as text. The server
/// must answer or close; it must not hang (the socket's timeout) or die (checked after).
fn raw(addr: &str, bytes: &[u8]) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        panic!("raw HTTP: cannot connect to {addr}");
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn random_and_mutated_requests_never_crash_the_server() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    let seed = env_u64("SHADOWPEFT_FUZZ_SEED", 1);
    let cases = env_u64("SHADOWPEFT_FUZZ_CASES", 2000) as usize;
    let cfg = ServerConfig {
        max_body: 1 << 20,
        ..Default::default()
    };
    let url = start_server("qwen3_implicit", cfg);
    let addr = url.trim_start_matches("http://").to_string();
    let c = shadowpeft::remote::client::http_client().unwrap();
    let (st, info) = send(&rt, c.get(format!("{url}/v1/info")));
    assert_eq!(st, 200, "{info}");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let (d, vocab) = (
        info["hidden_size"].as_u64().unwrap() as usize,
        info["vocab_size"].as_u64().unwrap() as usize,
    );
    let up = fixture_adapter_upload("qwen3_implicit");
    let asha = sha(&up);
    let (st, body) = send(
        &rt,
        c.put(format!("{url}/v1/adapters/{asha}")).body(up.clone()),
    );
    assert!(st == 200 || st == 201, "{st} {body}");
    let open = |mode: &str| -> String {
        let body = if mode == "stepped" {
            r#"{"mode":"stepped"}"#.to_string()
        } else {
            format!(r#"{{"adapter":"{asha}"}}"#)
        };
        let (st, body) = send(
            &rt,
            c.post(format!("{url}/v1/sessions"))
                .header("content-type", "application/json")
                .body(body),
        );
        assert_eq!(st, 201, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["session"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // A witness session, answered before and after the barrage: the same bytes both times.
    let witness = open("fused");
    let ids: Vec<u32> = (0..5).map(|i| (i * 7 % vocab) as u32).collect();
    let s0: Vec<f32> = (0..ids.len() * d)
        .map(|i| ((i % 13) as f32 - 6.0) / 7.0)
        .collect();
    let ask = |pos: usize| {
        let req = frame::forward_request(pos, &ids, &s0, d, 1, Wire::F32);
        let (st, body) = rt.block_on(async {
            let r = c
                .post(format!("{url}/v1/sessions/{witness}/forward"))
                .body(req)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        });
        assert_eq!(st, 200, "witness: {}", String::from_utf8_lossy(&body));
        body
    };
    let before = ask(0);

    let fused = open("fused");
    let stepped = open("stepped");
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for case in 0..cases {
        let name = format!("seed {seed} case {case}");
        let m = 1 + below(&mut r, 4);
        let ids: Vec<u32> = (0..m).map(|_| below(&mut r, vocab) as u32).collect();
        let x: Vec<f32> = (0..m * d)
            .map(|_| (r.next_u32() as f32 / u32::MAX as f32) - 0.5)
            .collect();
        let pos = below(&mut r, 6);
        let wire = if below(&mut r, 2) == 0 {
            Wire::F32
        } else {
            Wire::F16
        };
        let route = hex(&r.next_u64().to_le_bytes());
        let (method, req) = match below(&mut r, 10) {
            // Frames for a fused session.
            0..=2 => {
                let good = frame::forward_request(pos, &ids, &x, d, 1 + below(&mut r, m), wire);
                let sid = if below(&mut r, 8) == 0 {
                    pick(&mut r, &[stepped.as_str(), "nope", "", "../../etc"]).to_string()
                } else {
                    fused.clone()
                };
                (
                    "POST",
                    c.post(format!("{url}/v1/sessions/{sid}/forward"))
                        .body(mutate(&mut r, &good)),
                )
            }
            // Frames for a stepped session.
            3..=4 => {
                let layer = below(&mut r, 3);
                let good = match below(&mut r, 3) {
                    0 => frame::embed_request(pos, &ids, m, wire),
                    1 => frame::layer_request(pos, 0, Some(&ids), &[], d, m, wire),
                    _ => frame::layer_request(pos, layer, None, &x, d, m, wire),
                };
                let body = if below(&mut r, 5) == 0 {
                    good
                } else {
                    mutate(&mut r, &good)
                };
                let sid = if below(&mut r, 8) == 0 {
                    fused.clone()
                } else {
                    stepped.clone()
                };
                (
                    "POST",
                    c.post(format!("{url}/v1/sessions/{sid}/layer")).body(body),
                )
            }
            // Adapter uploads, named by their own hash (so the server parses them) or not.
            5 => {
                let body = mutate(&mut r, &up);
                let name = if below(&mut r, 4) == 0 {
                    pick(&mut r, &["0", "", &"g".repeat(64), &asha]).to_string()
                } else {
                    sha(&body)
                };
                let m = if below(&mut r, 4) == 0 { "HEAD" } else { "PUT" };
                let req = if m == "HEAD" {
                    c.head(format!("{url}/v1/adapters/{name}"))
                } else {
                    c.put(format!("{url}/v1/adapters/{name}")).body(body)
                };
                (m, req)
            }
            // Session opens with odd JSON and content types.
            6 => {
                let ct = pick(
                    &mut r,
                    &[
                        "application/json",
                        "text/plain",
                        "",
                        "application/json; charset=utf-8",
                        "application/octet-stream",
                    ],
                )
                .to_string();
                let mut req = c
                    .post(format!("{url}/v1/sessions"))
                    .body(json_body(&mut r, &asha));
                if !ct.is_empty() {
                    req = req.header("content-type", ct);
                }
                ("POST", req)
            }
            // Odd paths and methods.
            7 => {
                let path = pick(
                    &mut r,
                    &[
                        "/v1/sessions/x/forward",
                        "/v1/sessions",
                        "/v1/nope",
                        "/v2/info",
                        "/v1/sessions/%ff/layer",
                        "/v1/adapters/",
                        "/v1/info",
                        "/metrics",
                        "/",
                        "/v1/sessions//forward",
                    ],
                )
                .to_string();
                let method =
                    pick(&mut r, &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]).to_string();
                let body = mutate(&mut r, &frame::forward_request(pos, &ids, &x, d, 1, wire));
                let req = c
                    .request(method.parse().unwrap(), format!("{url}{path}"))
                    .body(body);
                (if method == "HEAD" { "HEAD" } else { "POST" }, req)
            }
            // Odd headers on a good request.
            8 => {
                let good = frame::forward_request(0, &ids, &x, d, 1, wire);
                let mut req = c
                    .post(format!("{url}/v1/sessions/{fused}/forward"))
                    .body(good);
                for _ in 0..1 + below(&mut r, 3) {
                    let k = pick(
                        &mut r,
                        &[
                            "authorization",
                            "content-type",
                            "shadowpeft-route",
                            "accept",
                            "x-forwarded-for",
                            "expect",
                        ],
                    )
                    .to_string();
                    let v = pick(
                        &mut r,
                        &[
                            "Bearer",
                            "Bearer x",
                            "",
                            "🦀",
                            "100-continue",
                            "application/json",
                            &"z".repeat(8000),
                        ],
                    )
                    .to_string();
                    if let Ok(v) = reqwest::header::HeaderValue::from_str(&v) {
                        req = req.header(k, v);
                    }
                }
                ("POST", req)
            }
            // Raw HTTP text, mutated.
            _ => {
                let body = frame::forward_request(0, &ids, &x, d, 1, wire);
                let mut text = format!(
                    "POST /v1/sessions/{fused}/forward HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nshadowpeft-route: {route}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                text.extend_from_slice(&body);
                let text = match below(&mut r, 4) {
                    0 => {
                        let s = String::from_utf8_lossy(&text).replace(
                            &format!("content-length: {}", body.len()),
                            &format!(
                                "content-length: {}",
                                pick(&mut r, &["0", "-1", "99999999999999999999", "x", "1"])
                            ),
                        );
                        s.into_bytes()
                    }
                    1 => b"GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
                    _ => mutate_bytes(&mut r, &text),
                };
                let _line = raw(&addr, &text);
                // Whatever it answered (or nothing, for text that is not HTTP), the server
                // must still be there.
                let (st, body) = send(&rt, c.get(format!("{url}/v1/info")));
                assert_eq!(st, 200, "{name}: after raw HTTP: {body}");
                continue;
            }
        };
        let (st, body) = send(&rt, req.header("shadowpeft-route", route));
        check(&name, method, st, &body);
        *statuses.entry(st).or_default() += 1;
    }
    eprintln!("fuzz: seed {seed}, {cases} cases, answers by status: {statuses:?}");
    // Refusals of many kinds were seen, and some mutated requests were still valid.
    assert!(
        statuses.keys().filter(|s| (400..500).contains(*s)).count() >= 3,
        "{statuses:?}"
    );

    // Nothing held for the witness was lost or changed: the same request (rewound to 0)
    // gives the same bytes, and the server still opens and serves new sessions.
    assert_eq!(
        ask(0),
        before,
        "the witness session's answer changed after the barrage"
    );
    let _ = open("fused");
    let _ = gpu;
}
