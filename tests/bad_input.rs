//! Bad input never panics and never hangs: each broken file, config, tensor or argument gives
//! a non-zero exit and a message naming the file or field and what was expected.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A private copy of a fixture to break.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn scratch(fixture_name: &str, tag: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("shadowpeft-bad-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    copy_dir(&fixture(fixture_name), &d);
    Scratch(d)
}

/// Runs the CLI with a deadline; returns (exit success, stderr).
fn run(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shadowpeft"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(!err.contains("panicked"), "the CLI panicked: {err}");
            return (status.success(), err);
        }
        if t0.elapsed() > Duration::from_secs(120) {
            child.kill().ok();
            panic!("the CLI hung on {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn attached(dir: &Path, tokens: &str) -> Vec<String> {
    vec![
        "generate".into(),
        "--base".into(),
        dir.join("base").display().to_string(),
        "--adapter".into(),
        dir.join("adapter").display().to_string(),
        "--tokens".into(),
        tokens.into(),
        "--max-new-tokens".into(),
        "2".into(),
    ]
}

/// Expects failure with a message containing every one of `needles`.
fn expect_error(args: &[String], needles: &[&str]) {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, err) = run(&a);
    assert!(!ok, "expected a failure for {args:?}");
    for n in needles {
        assert!(err.contains(n), "message {err:?} does not mention {n:?}");
    }
}

/// Rewrites a safetensors file through a closure over its (header JSON, data).
fn edit_safetensors(path: &Path, f: impl FnOnce(&mut serde_json::Value, &mut Vec<u8>)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut data = bytes[8 + n..].to_vec();
    f(&mut header, &mut data);
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

#[test]
fn truncated_safetensors() {
    let s = scratch("qwen3_implicit", "trunc");
    let f = s.0.join("base/model.safetensors");
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&f, &b[..b.len() / 2]).unwrap();
    expect_error(
        &attached(&s.0, "1,2"),
        &["model.safetensors", "invalid safetensors"],
    );
}

#[test]
fn corrupt_safetensors_header() {
    let s = scratch("qwen3_implicit", "corrupt");
    let f = s.0.join("adapter/shadow_adapter.safetensors");
    let mut b = std::fs::read(&f).unwrap();
    for x in &mut b[8..40] {
        *x = b'#';
    }
    std::fs::write(&f, &b).unwrap();
    expect_error(
        &attached(&s.0, "1,2"),
        &["shadow_adapter.safetensors", "invalid safetensors"],
    );
}

#[test]
fn header_offsets_past_the_end() {
    let s = scratch("qwen3_implicit", "offsets");
    edit_safetensors(&s.0.join("base/model.safetensors"), |h, _| {
        for (k, v) in h.as_object_mut().unwrap() {
            if k != "__metadata__" {
                let o = v["data_offsets"].as_array().unwrap();
                let end = o[1].as_u64().unwrap();
                v["data_offsets"][1] = (end + 1_000_000).into();
            }
        }
    });
    expect_error(
        &attached(&s.0, "1,2"),
        &["model.safetensors", "invalid safetensors"],
    );
}

#[test]
fn absurd_header_length() {
    let s = scratch("qwen3_implicit", "hdrlen");
    let f = s.0.join("base/model.safetensors");
    let mut b = std::fs::read(&f).unwrap();
    b[..8].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
    std::fs::write(&f, &b).unwrap();
    expect_error(
        &attached(&s.0, "1,2"),
        &["model.safetensors", "header too large"],
    );
}

#[test]
fn missing_tensor() {
    let s = scratch("qwen3_implicit", "missing");
    let name = "shadow_update_model.hidden_norm.bias";
    edit_safetensors(
        &s.0.join("adapter/shadow_adapter.safetensors"),
        |h, data| {
            // Drop the tensor and its bytes, shifting the offsets after it.
            let (s0, e0) = {
                let o = &h[name]["data_offsets"];
                (
                    o[0].as_u64().unwrap() as usize,
                    o[1].as_u64().unwrap() as usize,
                )
            };
            h.as_object_mut().unwrap().remove(name);
            data.drain(s0..e0);
            for (k, v) in h.as_object_mut().unwrap() {
                if k == "__metadata__" {
                    continue;
                }
                for i in 0..2 {
                    let x = v["data_offsets"][i].as_u64().unwrap() as usize;
                    if x >= e0 {
                        v["data_offsets"][i] = ((x - (e0 - s0)) as u64).into();
                    }
                }
            }
        },
    );
    expect_error(
        &attached(&s.0, "1,2"),
        &["missing tensor", name, "shadow_adapter.safetensors"],
    );
}

#[test]
fn wrong_shape() {
    let s = scratch("qwen3_implicit", "shape");
    let name = "shadow_injection_model.injection_downs";
    edit_safetensors(&s.0.join("adapter/shadow_adapter.safetensors"), |h, _| {
        // [2, 64, 8] -> [2, 8, 64]: same size, wrong layout.
        h[name]["shape"] = serde_json::json!([2, 8, 64]);
    });
    expect_error(
        &attached(&s.0, "1,2"),
        &[
            name,
            "shape [2, 8, 64]",
            "expected [2, 64, 8]",
            "shadow_adapter.safetensors",
        ],
    );
}

#[test]
fn unknown_architecture() {
    let s = scratch("qwen3_implicit", "arch");
    let f = s.0.join("base/config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    v["model_type"] = "gpt2".into();
    std::fs::write(&f, serde_json::to_vec(&v).unwrap()).unwrap();
    expect_error(
        &attached(&s.0, "1,2"),
        &["config.json", "unsupported architecture `gpt2`", "qwen3"],
    );
}

#[test]
fn missing_config_field() {
    let s = scratch("qwen3_implicit", "field");
    let f = s.0.join("base/config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&f, serde_json::to_vec(&v).unwrap()).unwrap();
    expect_error(
        &attached(&s.0, "1,2"),
        &["config.json", "hidden_size", "missing"],
    );
}

#[test]
fn malformed_json() {
    let s = scratch("qwen3_implicit", "json");
    std::fs::write(s.0.join("adapter/shadow_config.json"), b"{\"alpha\": 0.5,").unwrap();
    expect_error(
        &attached(&s.0, "1,2"),
        &["shadow_config.json", "malformed JSON"],
    );
}

#[test]
fn token_out_of_vocabulary() {
    let d = fixture("qwen3_implicit");
    expect_error(
        &attached(&d, "1,99999"),
        &["token id 99999", "out of vocabulary", "512"],
    );
    expect_error(&attached(&d, "1,x"), &["--tokens", "`x`"]);
}

#[test]
fn missing_directory() {
    let d = fixture("qwen3_implicit");
    let mut a = attached(&d, "1,2");
    a[2] = "/nonexistent/base-model".into();
    expect_error(&a, &["/nonexistent/base-model", "no such model directory"]);
    expect_error(
        &[
            "generate".into(),
            "--model".into(),
            "/nonexistent/export".into(),
            "--tokens".into(),
            "1".into(),
        ],
        &["/nonexistent/export", "no such model directory"],
    );
}

#[test]
fn missing_weights_file() {
    let s = scratch("qwen3_implicit", "nofile");
    std::fs::remove_file(s.0.join("adapter/shadow_adapter.safetensors")).unwrap();
    expect_error(
        &attached(&s.0, "1,2"),
        &["shadow_adapter.safetensors", "missing"],
    );
}

#[test]
fn other_peft_adapters_are_named() {
    let s = scratch("qwen3_implicit", "lora");
    std::fs::write(
        s.0.join("adapter/adapter_config.json"),
        br#"{"peft_type": "LORA", "r": 8}"#,
    )
    .unwrap();
    expect_error(
        &attached(&s.0, "1,2"),
        &["adapter_config.json", "LORA", "SHADOW", "shadow-peft"],
    );
}

/// Rewrites a peft fixture's adapter_config.json through a closure.
fn edit_peft_config(s: &Scratch, f: impl FnOnce(&mut serde_json::Value)) {
    let p = s.0.join("adapter/adapter_config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn peft_adapter_config_errors_name_the_field() {
    type Case = (
        &'static str,
        fn(&mut serde_json::Value),
        &'static [&'static str],
    );
    let cases: [Case; 5] = [
        (
            "gap",
            |v| v["target_modules"] = serde_json::json!(["model.layers.0", "model.layers.2"]),
            &[
                "adapter_config.json",
                "target_modules",
                "[0, 2]",
                "contiguous",
            ],
        ),
        (
            "none",
            |v| v["target_modules"] = serde_json::json!(["q_proj", "v_proj"]),
            &["target_modules", "selects none", "model.layers.0"],
        ),
        (
            "regex",
            |v| v["target_modules"] = serde_json::json!("model.layers.(0"),
            &["target_modules", "not a regex"],
        ),
        (
            "task",
            |v| v["task_type"] = serde_json::json!("SEQ_CLS"),
            &["task_type", "SEQ_CLS", "CAUSAL_LM"],
        ),
        (
            "save",
            |v| v["modules_to_save"] = serde_json::json!(["embed_tokens"]),
            &["modules_to_save", "embed_tokens", "lm_head"],
        ),
    ];
    for (tag, edit, needles) in cases {
        let s = scratch("peft_mirror", &format!("peft-{tag}"));
        edit_peft_config(&s, edit);
        expect_error(&attached(&s.0, "1,2"), needles);
    }
}

#[test]
fn peft_adapter_tensor_errors_name_the_tensor() {
    let s = scratch("peft_mirror", "peft-shape");
    edit_safetensors(&s.0.join("adapter/adapter_model.safetensors"), |h, _| {
        let t = "base_model.model.model.layers.1.shadow_down.default.weight";
        let old = h[t].clone();
        h.as_object_mut().unwrap().remove(t);
        h["base_model.model.model.layers.1.shadow_down.default.weight_renamed"] = old;
    });
    expect_error(
        &attached(&s.0, "1,2"),
        &[
            "adapter_model.safetensors",
            "layers.1.shadow_down.default.weight",
        ],
    );
}

#[test]
fn peft_explicit_shadow_needs_its_directory() {
    let d = fixture("peft_explicit");
    expect_error(
        &attached(&d, "1,2"),
        &[
            "adapter_config.json",
            "shadow_model",
            "`shadow`",
            "explicit",
        ],
    );
}

#[test]
fn sequence_longer_than_the_cache() {
    let d = fixture("qwen3_implicit");
    let mut a = attached(&d, "1,2,3,4,5,6");
    a.extend(["--max-seq".into(), "4".into()]);
    expect_error(&a, &["exceeds", "maximum of 4"]);
}
