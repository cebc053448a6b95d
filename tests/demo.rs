//! The bundled demo model (models/demo, trained by scripts/train_demo.py with the official
//! shadow-peft package): greedy answers equal the official ones attached, detached and from the
//! export, and escalation on `[REMOTE]` hands the questions to the attached model, locally and
//! through a backbone server. Its golden conversations continue in one session each, turn by
//! turn, as `shadowpeft chat` and `chat.completions.create` run them.

mod common;

use common::*;
use shadowpeft::generate::Escalate;
use shadowpeft::remote::client::{Connect, Protocol};
use shadowpeft::{
    chat, generate, DirSource, GenerateOptions, LoadOptions, Message, Mode, ShadowModel,
    TextTokenizer, Truncation,
};

fn demo() -> std::path::PathBuf {
    root().join("models/demo")
}

fn golden() -> serde_json::Value {
    let f = demo().join("golden.json");
    serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn run(model: &ShadowModel, prompt: &[u32], o: &GenerateOptions) -> (Vec<u32>, Vec<Mode>) {
    let gpu = gpu().unwrap();
    let mut s = model.new_session(gpu);
    let g = pollster::block_on(generate(gpu, model, &mut s, prompt, o, |_| Ok(true))).unwrap();
    (g.tokens, g.modes)
}

#[test]
fn demo_model_answers_like_the_official_package() {
    let Some(gpu) = gpu() else { return };
    let g = golden();
    let d = demo();
    let src = |s: &str| DirSource::open(d.join(s)).unwrap();
    let lo = LoadOptions::default();
    let attached = pollster::block_on(ShadowModel::load_adapter(
        gpu,
        &src("base"),
        &src("adapter"),
        None::<&DirSource>,
        Mode::Attached,
        &lo,
    ))
    .unwrap();
    let export = pollster::block_on(ShadowModel::load_export(gpu, &src("export"), &lo)).unwrap();
    let n = g["max_new_tokens"].as_u64().unwrap() as usize;
    let remote_marker = g["special_tokens"]["[REMOTE]"].as_u64().unwrap() as u32;
    let plain = GenerateOptions {
        max_new_tokens: n,
        ..Default::default()
    };
    let escalating = GenerateOptions {
        escalate: Some(Escalate {
            marker_ids: vec![remote_marker],
            ..Default::default()
        }),
        ..plain.clone()
    };
    let server = ServerProcess::start(&d.join("base"), &[]);
    // The remote client runs on one tokio runtime (reqwest needs one).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let remote = rt
        .block_on(ShadowModel::load_remote(
            gpu,
            &src("export"),
            &src("adapter"),
            &Connect {
                protocol: Protocol::Fused,
                ..Connect::new(&server.url)
            },
            &lo,
        ))
        .unwrap();
    let mut escalated = 0;
    for p in g["prompts"].as_array().unwrap() {
        let user = p["messages"][0]["content"].as_str().unwrap();
        let prompt = ids(&p["input_ids"]);
        let want_att = ids(&p["attached"]["tokens"]);
        let want_det = ids(&p["detached"]["tokens"]);
        assert_eq!(
            run(&attached, &prompt, &plain).0,
            want_att,
            "{user}: attached"
        );
        assert_eq!(run(&export, &prompt, &plain).0, want_det, "{user}: export");
        // Escalation: a `[REMOTE]` answer becomes the attached answer; others stay detached.
        let (want, mode) = if want_det.first() == Some(&remote_marker) {
            escalated += 1;
            (want_att.clone(), Mode::Attached)
        } else {
            (want_det.clone(), Mode::Detached)
        };
        let (toks, modes) = run(&attached, &prompt, &escalating);
        assert_eq!(toks, want, "{user}: escalating, local base");
        assert!(modes.iter().all(|m| *m == mode), "{user}: {modes:?}");
        let mut s = remote.new_session(gpu);
        let r = rt
            .block_on(generate(gpu, &remote, &mut s, &prompt, &escalating, |_| {
                Ok(true)
            }))
            .unwrap();
        assert_eq!(r.tokens, want, "{user}: escalating, remote base");
        // Detached answers never touch the server beyond opening the session lazily.
        if mode == Mode::Detached {
            assert_eq!(s.remote_traffic().unwrap().0, 0, "{user}: no round trips");
        }
    }
    assert!(escalated > 0, "no demo prompt escalates");
}

/// The golden conversations (`scripts/train_demo.py`: several turns deep, robot commands
/// mixed with questions; the history holds each model's own answers): every turn renders the
/// whole message list with the chat template to the official ids, and one session per
/// conversation answers every turn with the official tokens while reusing what its caches hold
/// (the common prefix with the previous turn, whose answer it generated itself).
#[test]
fn demo_model_holds_the_official_conversations_in_one_session() {
    let Some(gpu) = gpu() else { return };
    let g = golden();
    let d = demo();
    let src = |s: &str| DirSource::open(d.join(s)).unwrap();
    let lo = LoadOptions::default();
    let tok = pollster::block_on(TextTokenizer::load(&src("export"))).unwrap();
    let load = |mode| {
        pollster::block_on(ShadowModel::load_adapter(
            gpu,
            &src("base"),
            &src("adapter"),
            None::<&DirSource>,
            mode,
            &lo,
        ))
        .unwrap()
    };
    let attached = load(Mode::Attached);
    let detached = load(Mode::Detached);
    let export = pollster::block_on(ShadowModel::load_export(gpu, &src("export"), &lo)).unwrap();
    let n = g["max_new_tokens"].as_u64().unwrap() as usize;
    let o = GenerateOptions {
        max_new_tokens: n,
        ..Default::default()
    };
    let convs = g["conversations"].as_array().unwrap();
    assert!(
        convs.len() >= 3,
        "golden.json holds {} conversations",
        convs.len()
    );
    let remote = g["special_tokens"]["[REMOTE]"].as_u64().unwrap() as u32;
    let mut remote_turns = 0;
    for (ci, c) in convs.iter().enumerate() {
        for (key, model) in [
            ("attached", &attached),
            ("detached", &detached),
            ("export", &export),
        ] {
            let what = format!("conversation {ci} {key}");
            // The export's turns hold the ids only; its messages are the detached ones.
            let msgs_key = if key == "export" { "detached" } else { key };
            let mut s = model.new_session(gpu);
            let mut held: Vec<u32> = Vec::new();
            for (ti, t) in c[key].as_array().unwrap().iter().enumerate() {
                let messages: Vec<Message> =
                    serde_json::from_value(c[msgs_key][ti]["messages"].clone()).unwrap();
                let want_ids = ids(&t["input_ids"]);
                let r = chat::render(&tok, &messages, n, model.max_seq(), Truncation::Disabled)
                    .unwrap();
                assert_eq!(r.ids, want_ids, "{what} turn {ti}: rendered ids");
                let want = ids(&t["tokens"]);
                let out =
                    pollster::block_on(generate(gpu, model, &mut s, &r.ids, &o, |_| Ok(true)))
                        .unwrap();
                assert_eq!(out.tokens, want, "{what} turn {ti}: tokens");
                let common = held
                    .iter()
                    .zip(&r.ids)
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(r.ids.len() - 1);
                assert_eq!(out.cached_tokens, common, "{what} turn {ti}: cached");
                if ti > 0 {
                    // Everything up to the previous answer's last token is reused.
                    assert!(
                        common + 2 >= held.len(),
                        "{what} turn {ti}: {common} of {}",
                        held.len()
                    );
                }
                assert_eq!(out.prefill_tokens, r.ids.len() - common, "{what} turn {ti}");
                if key == "detached" && want.first() == Some(&remote) {
                    remote_turns += 1;
                }
                // What the session holds now: the prompt and the answer less its last token.
                held = [&r.ids[..], &out.tokens[..out.tokens.len() - 1]].concat();
            }
        }
    }
    assert!(
        remote_turns > 0,
        "no golden conversation turn answers [REMOTE] detached"
    );
}
