//! `shadowpeft chat` on the bundled demo model: every turn answers exactly as a fresh
//! `generate --tokens` on the whole rendered conversation, and reports the positions it reused
//! (the whole common prefix with the previous turn), detached, attached locally and through
//! `shadowpeft serve`; `/reset`, `/system`, context limits, and Ctrl-C.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use shadowpeft::{chat, DirSource, Message, TextTokenizer, Truncation};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shadowpeft"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

fn demo(part: &str) -> String {
    root().join("models/demo").join(part).display().to_string()
}

fn tokenizer() -> TextTokenizer {
    pollster::block_on(TextTokenizer::load(
        &DirSource::open(root().join("models/demo/export")).unwrap(),
    ))
    .unwrap()
}

fn msg(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
    }
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// Runs a chat over `lines` and returns its stdout's JSON objects (one per turn or error).
fn chat_json(model: &[String], extra: &[&str], lines: &[&str]) -> Vec<serde_json::Value> {
    let mut child = bin()
        .arg("chat")
        .args(model)
        .args(extra)
        .arg("--json")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "chat failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn generate_tokens(model: &[String], prompt: &[u32], extra: &[&str]) -> serde_json::Value {
    let list = prompt
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let o = bin()
        .arg("generate")
        .args(model)
        .args(["--tokens", &list, "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(String::from_utf8(o.stdout).unwrap().lines().last().unwrap()).unwrap()
}

const USERS: &[&str] = &[
    "Turn left 90 degrees.",
    "What does len do in Python?",
    "Move forward 2 meters.",
];

/// Each turn against a fresh `generate --tokens` on the conversation rendered as Hugging
/// Face's `apply_chat_template` renders it, and `cached_tokens` against the common prefix of
/// this turn's ids and what the session held after the previous turn.
fn check_chat(what: &str, model: &[String]) -> Vec<serde_json::Value> {
    let tok = tokenizer();
    let turns = chat_json(model, &[], USERS);
    assert_eq!(turns.len(), USERS.len(), "{what}: {turns:?}");
    let mut messages = Vec::new();
    let mut held: Vec<u32> = Vec::new();
    for (i, (t, user)) in turns.iter().zip(USERS).enumerate() {
        messages.push(msg("user", user));
        let p = chat::render(&tok, &messages, 64, 2048, Truncation::Disabled).unwrap();
        assert_eq!(t["prompt_tokens"], p.ids.len(), "{what} turn {i}");
        let want = generate_tokens(model, &p.ids, &["--max-new-tokens", "64"]);
        assert_eq!(
            ids(&t["tokens"]),
            ids(&want["tokens"]),
            "{what} turn {i}: tokens"
        );
        assert_eq!(t["text"], want["text"], "{what} turn {i}: text");
        assert_eq!(t["modes"], want["modes"], "{what} turn {i}: modes");
        let common = held.iter().zip(&p.ids).take_while(|(a, b)| a == b).count();
        assert_eq!(t["cached_tokens"], common, "{what} turn {i}: cached");
        if i > 0 {
            assert!(
                common > held.len() / 2,
                "{what} turn {i}: {common} of {}",
                held.len()
            );
        }
        let out = ids(&t["tokens"]);
        held = p.ids.clone();
        held.extend(&out[..out.len() - 1]);
        messages.push(msg("assistant", t["text"].as_str().unwrap()));
    }
    turns
}

#[test]
fn chat_turns_equal_fresh_generations_detached_and_attached() {
    if gpu().is_none() {
        return;
    }
    check_chat("detached", &["--model".into(), demo("export")]);
    check_chat(
        "attached",
        &[
            "--base".into(),
            demo("base"),
            "--adapter".into(),
            demo("adapter"),
        ],
    );
}

#[test]
fn chat_through_a_backbone_server_sends_only_the_new_tokens() {
    if gpu().is_none() {
        return;
    }
    let server = ServerProcess::start(&root().join("models/demo/base"), &[]);
    for protocol in ["fused", "stepped"] {
        let model: Vec<String> = [
            "--model",
            &demo("export"),
            "--adapter",
            &demo("adapter"),
            "--backbone",
            &server.url,
            "--protocol",
            protocol,
        ]
        .map(String::from)
        .to_vec();
        let turns = check_chat(protocol, &model);
        // A continued turn against the same turn in a fresh session.
        let tok = tokenizer();
        let messages = [
            msg("user", USERS[0]),
            msg("assistant", turns[0]["text"].as_str().unwrap()),
            msg("user", USERS[1]),
        ];
        let p = chat::render(&tok, &messages, 64, 2048, Truncation::Disabled).unwrap();
        let fresh = generate_tokens(&model, &p.ids, &["--max-new-tokens", "64"]);
        let sent = turns[1]["remote"]["bytes_sent"].as_u64().unwrap();
        let fresh_sent = fresh["remote"]["bytes_sent"].as_u64().unwrap();
        let cached = turns[1]["cached_tokens"].as_u64().unwrap();
        // Each reused position is an id and a 192-wide f32 state row (fused), or that many
        // hidden values per layer (stepped), not sent again; the fresh one also uploads the
        // adapter (fused), which the continued session did in turn 1.
        assert!(
            fresh_sent >= sent + cached * 4 * 192,
            "{protocol}: turn 2 sent {sent} B continued, {fresh_sent} B fresh ({cached} reused)"
        );
        eprintln!("{protocol}: turn 2 sent {sent} B continued, {fresh_sent} B fresh");
    }
}

#[test]
fn chat_commands_and_context_limits() {
    if gpu().is_none() {
        return;
    }
    let model = ["--model".to_string(), demo("export")];
    let tok = tokenizer();
    // /system and /reset.
    let turns = chat_json(
        &model,
        &["--max-new-tokens", "24"],
        &[
            "/system You are a robot.",
            USERS[0],
            "/reset",
            USERS[0],
            "/system",
            USERS[1],
        ],
    );
    assert_eq!(turns.len(), 3, "{turns:?}");
    let sys = [msg("system", "You are a robot."), msg("user", USERS[0])];
    let p = chat::render(&tok, &sys, 24, 2048, Truncation::Disabled).unwrap();
    assert_eq!(turns[0]["prompt_tokens"], p.ids.len());
    assert_eq!(turns[1]["prompt_tokens"], p.ids.len(), "after /reset");
    assert_eq!(turns[1]["cached_tokens"], 0, "after /reset");
    assert_eq!(turns[1]["tokens"], turns[0]["tokens"]);
    let plain = [
        msg("user", USERS[0]),
        msg("assistant", turns[1]["text"].as_str().unwrap()),
        msg("user", USERS[1]),
    ];
    let p = chat::render(&tok, &plain, 24, 2048, Truncation::Disabled).unwrap();
    assert_eq!(
        turns[2]["prompt_tokens"],
        p.ids.len(),
        "after /system removed it"
    );

    // A conversation outgrowing 80 positions: an error naming both numbers, then the chat
    // goes on; with --truncate auto the oldest turns go instead.
    let long = "Move forward 2 meters and then turn left 90 degrees and then pick up the red ball.";
    let lines = [USERS[0], long, "Stop."];
    let limited = ["--max-seq", "80", "--max-new-tokens", "24"];
    let turns = chat_json(&model, &limited, &lines);
    assert_eq!(turns.len(), 3, "{turns:?}");
    assert_eq!(turns[1]["code"], "context-length", "{}", turns[1]);
    let e = turns[1]["error"].as_str().unwrap();
    assert!(
        e.contains("max_tokens 24") && e.contains("80 positions"),
        "{e}"
    );
    assert!(
        turns[2]["tokens"].is_array(),
        "the chat goes on: {}",
        turns[2]
    );
    let mut args = limited.to_vec();
    args.extend(["--truncate", "auto"]);
    let turns = chat_json(&model, &args, &lines);
    assert!(turns.iter().all(|t| t["tokens"].is_array()), "{turns:?}");
    assert!(
        turns[1]["dropped_messages"].as_u64().unwrap() >= 2,
        "{}",
        turns[1]
    );
    assert!(turns[1]["prompt_tokens"].as_u64().unwrap() + 24 <= 80);
}

/// Ctrl-C (SIGINT) ends the answer being written, not the program: the signal goes out as soon
/// as the answer starts streaming, the stats line reports it interrupted, the next line is
/// answered (from the cache, and interrupted in turn) and end of input ends the chat cleanly.
#[test]
fn ctrl_c_ends_the_answer_not_the_chat() {
    if gpu().is_none() {
        return;
    }
    let max_new = 400;
    let mut child = bin()
        .args(["chat", "--model", &demo("export")])
        .args(["--ignore-eos", "--max-new-tokens", &max_new.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The answers stream to stdout: a thread passes on what arrives.
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 || tx.send(n).is_err() {
                break;
            }
        }
    });
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    // The banner comes once the model is loaded and Ctrl-C is handled.
    let banner = err.next().unwrap().unwrap();
    assert!(banner.starts_with("[chat with"), "{banner}");
    let wait = std::time::Duration::from_secs(120);
    for (turn, line) in [USERS[0], "Stop."].into_iter().enumerate() {
        writeln!(stdin, "{line}").unwrap();
        rx.recv_timeout(wait).expect("no answer streamed");
        let ok = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let stats = err.next().unwrap().unwrap();
        // "[turn N: P prompt tokens, C cached; K new (D detached), interrupted; ..."
        assert!(
            stats.starts_with(&format!("[turn {}:", turn + 1)),
            "{stats}"
        );
        assert!(stats.contains(", interrupted;"), "{stats}");
        let new: usize = stats
            .split("; ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no token count in {stats}"));
        assert!(new > 0 && new < max_new, "{new} tokens: {stats}");
        if turn == 1 {
            let cached: usize = stats
                .split(", ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no cached count in {stats}"));
            assert!(cached > 0, "{stats}");
        }
        // The rest of this answer (already written before the stats line) is not the next one's.
        std::thread::sleep(std::time::Duration::from_millis(200));
        while rx.try_recv().is_ok() {}
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
