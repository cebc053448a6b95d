//! The `shadowpeft` command line: logits files and generation against the golden outputs,
//! seeds, stop strings and the chat template.

mod common;

use std::process::Command;

use common::*;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shadowpeft"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

fn model_args(name: &str, mode: &str) -> Vec<String> {
    let d = fixture(name);
    let g = Golden::load(&d);
    let mut a = vec![
        "--base".into(),
        d.join("base").display().to_string(),
        "--adapter".into(),
        d.join("adapter").display().to_string(),
        "--mode".into(),
        mode.into(),
    ];
    if let Some(s) = g.json["shadow"].as_str() {
        a.push("--shadow".into());
        a.push(d.join(s).display().to_string());
    }
    a
}

fn ids_arg(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn run_ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn generate_json(args: &[String]) -> serde_json::Value {
    let out = run_ok(bin().arg("generate").args(args).arg("--json"));
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

fn tokens(v: &serde_json::Value) -> Vec<u32> {
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn logits_command_writes_golden_logits() {
    if gpu().is_none() {
        return;
    }
    let name = "qwen3_explicit_proj";
    let g = Golden::load(&fixture(name));
    let ids = g.ids("input_ids");
    for (mode, main) in [
        ("attached", "attached_logits"),
        ("detached", "detached_logits"),
    ] {
        let out = std::env::temp_dir().join(format!(
            "shadowpeft-cli-{mode}-{}.safetensors",
            std::process::id()
        ));
        run_ok(
            bin()
                .arg("logits")
                .args(model_args(name, mode))
                .args(["--tokens", &ids_arg(&ids), "--out"])
                .arg(&out),
        );
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (key, want) in [
            ("logits", main),
            ("shadow_logits", "attached_shadow_logits"),
        ] {
            let t = st.tensor(key).unwrap();
            assert_eq!(t.shape(), &[ids.len(), 512]);
            let got: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
            assert_logits(&format!("cli {mode} {key}"), &got, &g.f32(want).0);
        }
        std::fs::remove_file(out).ok();
    }
}

#[test]
fn generate_json_matches_golden_greedy_tokens() {
    if gpu().is_none() {
        return;
    }
    let name = "qwen2_gqa";
    let g = Golden::load(&fixture(name));
    let ids = ids_arg(&g.ids("input_ids"));
    for (mode, key) in [
        ("attached", "greedy_attached"),
        ("detached", "greedy_detached"),
    ] {
        let mut a = model_args(name, mode);
        a.extend([
            "--tokens".into(),
            ids.clone(),
            "--max-new-tokens".into(),
            "12".into(),
            "--ignore-eos".into(),
        ]);
        let v = generate_json(&a);
        assert_eq!(tokens(&v), g.ids(key), "{mode}");
        for k in ["text", "prefill_tok_s", "decode_tok_s"] {
            assert!(!v[k].is_null(), "missing {k}");
        }
    }
    let export = fixture(name).join("export").display().to_string();
    let v = generate_json(&[
        "--model".into(),
        export,
        "--tokens".into(),
        ids,
        "--max-new-tokens".into(),
        "12".into(),
        "--ignore-eos".into(),
    ]);
    assert_eq!(tokens(&v), g.ids("greedy_export"));
}

fn tiny(extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "--model".to_string(),
        root().join("models/tiny/export").display().to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn sampling_is_reproducible_by_seed() {
    if gpu().is_none() {
        return;
    }
    let args = |seed: &str| {
        tiny(&[
            "--prompt",
            "Beautiful is better than ugly.",
            "--max-new-tokens",
            "24",
            "--ignore-eos",
            "--temperature",
            "1.5",
            "--top-k",
            "50",
            "--top-p",
            "0.95",
            "--repetition-penalty",
            "1.1",
            "--seed",
            seed,
        ])
    };
    let a = tokens(&generate_json(&args("7")));
    let b = tokens(&generate_json(&args("7")));
    let c = tokens(&generate_json(&args("8")));
    assert_eq!(a.len(), 24);
    assert_eq!(a, b, "same seed, same tokens");
    assert_ne!(a, c, "different seeds should differ at temperature 1.5");
}

#[test]
fn stop_string_ends_generation_and_is_not_printed() {
    if gpu().is_none() {
        return;
    }
    let base = tiny(&[
        "--prompt",
        "Simple is better than complex.",
        "--max-new-tokens",
        "30",
        "--ignore-eos",
    ]);
    let full = generate_json(&base);
    let text = full["text"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() > 12, "need some text, got {text:?}");
    let stop: String = chars[8..11].iter().collect();
    let cut = text.find(&stop).unwrap();
    let mut a = base.clone();
    a.extend(["--stop".into(), stop.clone()]);
    let v = generate_json(&a);
    assert_eq!(v["text"].as_str().unwrap(), &text[..cut]);
    assert_eq!(v["stop_reason"], "callback");
    // Streaming mode prints the same text.
    let printed = run_ok(bin().arg("generate").args(&a));
    assert_eq!(printed.trim_end_matches('\n'), &text[..cut]);
}

#[test]
fn chat_uses_the_template() {
    if gpu().is_none() {
        return;
    }
    let v = generate_json(&tiny(&[
        "--prompt",
        "Write a haiku about shadows.",
        "--system",
        "You are a helpful assistant.",
        "--chat",
        "--max-new-tokens",
        "4",
    ]));
    // The rendered template of tokenizer_golden.json is 57 tokens with the 512-token tokenizer;
    // the tiny model's 1024-token vocabulary encodes it in fewer, but it must be longer than
    // the bare prompt.
    let bare = generate_json(&tiny(&[
        "--prompt",
        "Write a haiku about shadows.",
        "--max-new-tokens",
        "4",
    ]));
    assert!(v["prompt_tokens"].as_u64().unwrap() > bare["prompt_tokens"].as_u64().unwrap() + 8);
}

/// `shadowpeft serve` in one process, `generate --backbone` in another: the official attached
/// greedy tokens, and the traffic reported in the JSON.
#[test]
fn serve_and_generate_with_a_remote_backbone() {
    if gpu().is_none() {
        return;
    }
    let d = root().join("models/tiny");
    let server = ServerProcess::start(&d.join("base"), &["--token", "t0k"]);
    let url = server.url.clone();
    let g = Golden::load(&d);
    let args = [
        "--model".to_string(),
        d.join("export").display().to_string(),
        "--adapter".into(),
        d.join("adapter").display().to_string(),
        "--backbone".into(),
        url.clone(),
        "--token".into(),
        "t0k".into(),
        "--tokens".into(),
        ids_arg(&g.ids("input_ids")),
        "--max-new-tokens".into(),
        "12".into(),
        "--ignore-eos".into(),
    ];
    let v = generate_json(&args);
    assert_eq!(tokens(&v), g.ids("greedy_attached"));
    assert_eq!(v["mode"], "attached");
    assert!(
        v["modes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m == "attached"),
        "{}",
        v["modes"]
    );
    assert!(v.get("fallback_error").is_none());
    // Prefill + 11 decode requests, plus the adapter check, upload and session.
    assert_eq!(v["remote"]["round_trips"], 15);

    // Stepped: one round trip per base layer (4) for each of the 12 forwards, plus the
    // session; no adapter upload. Same tokens.
    let mut stepped = args.to_vec();
    stepped.extend(["--protocol".into(), "stepped".into()]);
    let v = generate_json(&stepped);
    assert_eq!(tokens(&v), g.ids("greedy_attached"), "stepped");
    assert_eq!(v["remote"]["round_trips"], 1 + 12 * 4);

    // Escalation: unsure from the start (every top probability is below 1) gives the attached
    // output; a marker that never comes keeps the detached output.
    let mut unsure = args.to_vec();
    unsure.extend(["--escalate-below".into(), "1".into()]);
    let v = generate_json(&unsure);
    assert_eq!(tokens(&v), g.ids("greedy_attached"), "escalate-below 1");
    assert!(v["modes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m == "attached"));
    let mut never = args.to_vec();
    never.extend([
        "--escalate-marker".into(),
        "<|endoftext|><|endoftext|>".into(),
    ]);
    let v = generate_json(&never);
    assert_eq!(tokens(&v), g.ids("greedy_detached"), "marker never emitted");
    assert!(v["modes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m == "detached"));
}

/// Hugging Face peft SHADOW adapters through the CLI: attached and detached with the base
/// here (the explicit shadow passed with --shadow), the `unload_shadow()` export, and attached
/// with the base on `shadowpeft serve` over both protocols; every run gives peft's greedy
/// tokens.
#[test]
fn peft_adapters_run_from_the_command_line() {
    if gpu().is_none() {
        return;
    }
    for name in [
        "peft_mirror",
        "peft_partial_proj",
        "peft_explicit",
        "peft_projected",
    ] {
        peft_cli(name);
    }
}

fn peft_cli(name: &str) {
    let d = fixture(name);
    let g = Golden::load(&d);
    let ids = ids_arg(&g.ids("input_ids"));
    let gen = |mut a: Vec<String>| {
        a.extend([
            "--tokens".into(),
            ids.clone(),
            "--max-new-tokens".into(),
            "12".into(),
            "--ignore-eos".into(),
        ]);
        tokens(&generate_json(&a))
    };
    for (mode, key) in [
        ("attached", "greedy_attached"),
        ("detached", "greedy_export"),
    ] {
        assert_eq!(gen(model_args(name, mode)), g.ids(key), "{name} {mode}");
    }
    let export = d.join("export").display().to_string();
    assert_eq!(
        gen(vec!["--model".into(), export.clone()]),
        g.ids("greedy_export"),
        "{name} export"
    );
    let server = ServerProcess::start(&d.join("base"), &[]);
    for protocol in ["fused", "stepped"] {
        let a = vec![
            "--model".into(),
            export.clone(),
            "--adapter".into(),
            d.join("adapter").display().to_string(),
            "--backbone".into(),
            server.url.clone(),
            "--protocol".into(),
            protocol.into(),
        ];
        assert_eq!(gen(a), g.ids("greedy_attached"), "{name} remote {protocol}");
    }
}
