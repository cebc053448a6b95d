//! Speculative attached decoding (the shadow drafts, the attached model verifies the rows in
//! one pass) against its oracle, plain attached decoding: the same greedy tokens on every
//! fixture, official and peft, locally and through a backbone server (fused and stepped), at
//! every draft length and with `auto`; the same tokens for the same seed when sampling; and
//! with everything around the token loop (stop strings, EOS, the length limit, escalation,
//! a backbone failure with fallback, a conversation that continues).

mod common;

use common::*;
use shadowpeft::remote::client::{Connect, Protocol};
use shadowpeft::remote::frame::Wire;
use shadowpeft::remote::server::ServerConfig;
use shadowpeft::{
    generate, DirSource, GenerateOptions, LoadOptions, Mode, ShadowModel, Speculate, TokenStream,
    WeightFormat,
};

const N: usize = 12;

fn opts(speculate: Option<Speculate>) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: N,
        ignore_eos: true,
        speculate,
        ..Default::default()
    }
}

const LENGTHS: [Speculate; 5] = [
    Speculate::Draft(0),
    Speculate::Draft(1),
    Speculate::Draft(3),
    Speculate::Draft(5),
    Speculate::Auto,
];

#[test]
fn speculation_gives_the_plain_attached_tokens_locally() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    for &name in FIXTURES.iter().chain(PEFT) {
        let g = Golden::load(&fixture(name));
        let ids = g.ids("input_ids");
        let m = load(&rt, name, Mode::Attached, WeightFormat::F32);
        let want = fresh(&rt, &m, &ids, &opts(None)).tokens;
        let golden = g.ids("greedy_attached");
        let n = golden.len().min(N);
        assert_eq!(want[..n], golden[..n], "{name}: plain against the golden");
        for k in LENGTHS {
            let mut s = m.new_session(gpu);
            let r = run(&rt, &m, &mut s, &ids, &opts(Some(k)));
            assert_eq!(r.tokens, want, "{name} {k:?}");
            assert!(r.modes.iter().all(|m| *m == Mode::Attached), "{name} {k:?}");
            let st = r.speculation.unwrap();
            assert!(st.accepted <= st.drafted, "{name} {k:?}: {st:?}");
            // Plain steps give one token each, rounds one more than their drafts that stood.
            assert_eq!(
                st.plain_steps + st.rounds + st.accepted,
                N,
                "{name} {k:?}: {st:?}"
            );
            // The session holds the prompt and every token but the last, as plain does.
            assert_eq!(
                s.tokens(),
                [&ids[..], &want[..N - 1]].concat(),
                "{name} {k:?}"
            );
            // `auto` hands its measured costs on; a generation starting from them is exact too.
            assert_eq!(
                r.draft_length.is_some(),
                k == Speculate::Auto,
                "{name} {k:?}"
            );
            if let Some(costs) = r.draft_length {
                let o = GenerateOptions {
                    draft_costs: Some(costs),
                    ..opts(Some(k))
                };
                assert_eq!(
                    fresh(&rt, &m, &ids, &o).tokens,
                    want,
                    "{name}: auto from costs"
                );
            }
        }
    }
}

/// Greedy over processed logits (a repetition penalty at temperature 0) takes the sampled
/// path of the rounds, with one-hot distributions: exactly the plain tokens. Sampling with
/// the same seed gives the same tokens, and a different seed other ones.
#[test]
fn sampled_rounds_are_exact_at_temperature_zero_and_repeatable() {
    if gpu().is_none() {
        return;
    }
    let rt = rt();
    for name in ["qwen3_implicit", "peft_mirror"] {
        let ids = Golden::load(&fixture(name)).ids("input_ids");
        let m = load(&rt, name, Mode::Attached, WeightFormat::F32);
        let penalised = GenerateOptions {
            repetition_penalty: 1.5,
            ..opts(None)
        };
        let want = fresh(&rt, &m, &ids, &penalised).tokens;
        for k in [Speculate::Draft(3), Speculate::Auto] {
            let o = GenerateOptions {
                speculate: Some(k),
                ..penalised.clone()
            };
            assert_eq!(
                fresh(&rt, &m, &ids, &o).tokens,
                want,
                "{name} {k:?} penalised"
            );
        }
        let sampled = |seed| GenerateOptions {
            temperature: 1.5,
            top_k: 50,
            top_p: 0.95,
            seed,
            ..opts(Some(Speculate::Draft(3)))
        };
        let a = fresh(&rt, &m, &ids, &sampled(7));
        let b = fresh(&rt, &m, &ids, &sampled(7));
        assert_eq!(a.tokens, b.tokens, "{name}: same seed");
        let others = (8..12).filter(|&s| fresh(&rt, &m, &ids, &sampled(s)).tokens != a.tokens);
        assert!(
            others.count() > 0,
            "{name}: every seed gave the same tokens"
        );
        assert_eq!(a.tokens.len(), N);
    }
}

/// Through a backbone server, on every fixture (official and peft), both protocols and both
/// wires: the same tokens as plain remote decoding over the same wire, and when drafts stand,
/// fewer round trips.
#[test]
fn speculation_gives_the_plain_attached_tokens_through_a_backbone() {
    if gpu().is_none() {
        return;
    }
    let rt = rt();
    for &name in FIXTURES.iter().chain(PEFT) {
        let url = start_server(name, ServerConfig::default());
        let ids = Golden::load(&fixture(name)).ids("input_ids");
        for protocol in [Protocol::Fused, Protocol::Stepped] {
            for wire in [Wire::F32, Wire::F16] {
                let what = format!("{name} {protocol:?} {wire:?}");
                let m = remote_with(
                    &rt,
                    name,
                    &Connect {
                        protocol,
                        wire,
                        ..Connect::new(&url)
                    },
                );
                let plain = fresh(&rt, &m, &ids, &opts(None));
                let plain_trips = plain.round_trips.unwrap();
                for k in [Speculate::Draft(1), Speculate::Draft(4), Speculate::Auto] {
                    let r = fresh(&rt, &m, &ids, &opts(Some(k)));
                    assert_eq!(r.tokens, plain.tokens, "{what} {k:?}");
                    let st = r.speculation.unwrap();
                    let trips = r.round_trips.unwrap();
                    if st.accepted > 0 {
                        assert!(
                            trips < plain_trips,
                            "{what} {k:?}: {trips} round trips against {plain_trips} plain ({st:?})"
                        );
                    }
                    eprintln!(
                        "{what} {k:?}: {} of {} drafts stood, {trips} round trips (plain {plain_trips})",
                        st.accepted, st.drafted
                    );
                }
            }
        }
    }
}

/// A server that does not list the `rows-count` feature (protocol 1 as first published):
/// the client asks it for every row and keeps the last ones. The tokens are the same; more
/// bytes come down.
#[test]
fn a_server_without_row_counts_gives_the_same_tokens() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    let name = "qwen3_implicit";
    let url = start_server(name, ServerConfig::default());
    let old = start_info_rewriting_proxy(&url, |info| {
        info.as_object_mut().unwrap().remove("features");
    });
    let ids = Golden::load(&fixture(name)).ids("input_ids");
    for protocol in [Protocol::Fused, Protocol::Stepped] {
        let connect = |u: &str| Connect {
            protocol,
            ..Connect::new(u)
        };
        let new = remote_with(&rt, name, &connect(&url));
        let v1 = remote_with(&rt, name, &connect(&old));
        let want = fresh(&rt, &new, &ids, &opts(None)).tokens;
        let o = opts(Some(Speculate::Draft(3)));
        let mut received = Vec::new();
        for m in [&new, &v1] {
            let mut s = m.new_session(gpu);
            let r = run(&rt, m, &mut s, &ids, &o);
            assert_eq!(r.tokens, want, "{protocol:?}");
            received.push(s.remote_traffic().unwrap().2);
        }
        assert!(
            received[1] > received[0],
            "{protocol:?}: every row asked of the old server, {} bytes against {}",
            received[1],
            received[0]
        );
    }
}

/// Stop strings, EOS and the length limit: a caller that stops after a token inside a
/// round gets the plain tokens up to there, and the session forgets the rest of the round;
/// an EOS ends the generation as plainly; the budget is never exceeded.
#[test]
fn stops_inside_a_round_are_those_of_plain_decoding() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    let name = "qwen3_implicit";
    let ids = Golden::load(&fixture(name)).ids("input_ids");
    let m = load(&rt, name, Mode::Attached, WeightFormat::F32);
    let want = fresh(&rt, &m, &ids, &opts(None)).tokens;
    for stop_after in [1, 2, 5] {
        let mut s = m.new_session(gpu);
        let mut seen = 0;
        let r = rt
            .block_on(generate(
                gpu,
                &m,
                &mut s,
                &ids,
                &opts(Some(Speculate::Draft(4))),
                |_| {
                    seen += 1;
                    Ok(seen < stop_after)
                },
            ))
            .unwrap();
        assert_eq!(r.tokens, want[..stop_after], "stop after {stop_after}");
        assert_eq!(
            s.tokens(),
            [&ids[..], &want[..stop_after - 1]].concat(),
            "the session after a stop at {stop_after}"
        );
    }
    // An EOS id inside the tokens: generation ends on it, as plain does.
    let eos = want[6];
    let o = |k| GenerateOptions {
        ignore_eos: false,
        eos_ids: vec![eos],
        ..opts(k)
    };
    let plain = fresh(&rt, &m, &ids, &o(None));
    assert_eq!(plain.stop, shadowpeft::StopReason::Eos);
    for k in LENGTHS {
        let mut s = m.new_session(gpu);
        let r = run(&rt, &m, &mut s, &ids, &o(Some(k)));
        assert_eq!(r.tokens, plain.tokens, "EOS {k:?}");
        assert_eq!(r.stop, plain.stop, "EOS {k:?}");
        assert_eq!(
            s.position(),
            ids.len() + plain.tokens.len() - 1,
            "EOS {k:?}"
        );
    }
    for n in [1, 2, 3, 7] {
        let o = GenerateOptions {
            max_new_tokens: n,
            ..opts(Some(Speculate::Draft(5)))
        };
        assert_eq!(
            fresh(&rt, &m, &ids, &o).tokens,
            want[..n],
            "max_new_tokens {n}"
        );
    }
}

/// A conversation that continues with speculation reuses the session as plain does.
#[test]
fn continued_speculative_turns_equal_fresh_plain_ones() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    let name = "peft_mirror";
    let ids = Golden::load(&fixture(name)).ids("input_ids");
    let m = load(&rt, name, Mode::Attached, WeightFormat::F32);
    let mut s = m.new_session(gpu);
    let mut convo = ids.clone();
    for turn in 0..3 {
        let o = opts(Some(Speculate::Draft(3)));
        let r = run(&rt, &m, &mut s, &convo, &o);
        if turn > 0 {
            assert!(r.cached_tokens > 0, "turn {turn} reused nothing");
        }
        assert_eq!(
            r.tokens,
            fresh(&rt, &m, &convo, &opts(None)).tokens,
            "turn {turn}"
        );
        convo.extend(&r.tokens);
        convo.extend(&ids[..3]);
    }
}

/// The server is killed after the first round: the drafts of the failed verification stand
/// as detached output, and the generation carries on detached, exactly as the detached model
/// continues the same text.
#[test]
fn a_failed_verification_with_fallback_keeps_the_drafts_as_detached() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    let name = "qwen3_implicit";
    let mut server = ServerProcess::start(&fixture(name).join("base"), &[]);
    let ids = Golden::load(&fixture(name)).ids("input_ids");
    let m = remote(&rt, name, &server.url, Protocol::Fused);
    let want = fresh(&rt, &m, &ids, &opts(None)).tokens;
    let mut s = m.new_session(gpu);
    s.set_fallback_detached(true);
    let o = opts(Some(Speculate::Draft(3)));
    let mut stream = TokenStream::new(&m, &mut s, &ids, &o).unwrap();
    let (mut tokens, mut modes) = (Vec::new(), Vec::new());
    while let Some(t) = rt.block_on(stream.next(gpu, &m, &mut s)).unwrap() {
        tokens.push(t);
        modes.push(stream.last_mode().unwrap());
        if tokens.len() == 2 {
            server.kill();
        }
    }
    assert_eq!(tokens.len(), N);
    let k = modes
        .iter()
        .position(|m| *m == Mode::Detached)
        .expect("no detached token");
    assert!(modes[k..].iter().all(|m| *m == Mode::Detached), "{modes:?}");
    assert_eq!(tokens[..k], want[..k], "attached part");
    assert!(s.fallback_error().is_some());
    // The detached model continuing the prompt and the attached part.
    let export = load_export(&rt, name);
    let prefix = [&ids[..], &tokens[..k]].concat();
    let det = GenerateOptions {
        max_new_tokens: N - k,
        ..opts(None)
    };
    assert_eq!(
        fresh(&rt, &export, &prefix, &det).tokens,
        tokens[k..],
        "detached part"
    );
}

/// The demo model, whose shadow answers robot commands as the attached model does: the
/// drafts stand, and a command's answer takes a few verification passes instead of one per
/// token, locally and through a backbone (fused), with the plain tokens. Escalating on the
/// `[REMOTE]` marker and then speculating gives the escalating answers.
#[test]
fn demo_drafts_stand_and_save_round_trips() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    let d = root().join("models/demo");
    let src = |s: &str| DirSource::open(d.join(s)).unwrap();
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("golden.json")).unwrap()).unwrap();
    let url = start_server_for(d.join("base"), ServerConfig::default());
    let local = rt
        .block_on(ShadowModel::load_adapter(
            gpu,
            &src("base"),
            &src("adapter"),
            None::<&DirSource>,
            Mode::Attached,
            &LoadOptions::default(),
        ))
        .unwrap();
    let fused = rt
        .block_on(ShadowModel::load_remote(
            gpu,
            &src("export"),
            &src("adapter"),
            &Connect::new(&url),
            &LoadOptions::default(),
        ))
        .unwrap();
    let n = g["max_new_tokens"].as_u64().unwrap() as usize;
    let marker = g["special_tokens"]["[REMOTE]"].as_u64().unwrap() as u32;
    let mut stood = 0;
    for p in g["prompts"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(p["input_ids"].clone()).unwrap();
        let want: Vec<u32> = serde_json::from_value(p["attached"]["tokens"].clone()).unwrap();
        let det: Vec<u32> = serde_json::from_value(p["detached"]["tokens"].clone()).unwrap();
        for k in [Speculate::Draft(4), Speculate::Auto] {
            let o = GenerateOptions {
                max_new_tokens: n,
                speculate: Some(k),
                ..Default::default()
            };
            for (what, m) in [("local", &local), ("fused", &fused)] {
                let r = fresh(&rt, m, &ids, &o);
                assert_eq!(r.tokens, want, "{what} {k:?}: {}", p["prompt"]);
                let st = r.speculation.unwrap();
                stood += st.accepted;
                if what == "fused" && det == want && k == Speculate::Draft(4) {
                    // A command: the round trips are the prompt's and the rounds', far
                    // fewer than one per token (`auto` may prefer plain steps on loopback).
                    let trips = r.round_trips.unwrap() as usize;
                    eprintln!(
                        "{} {k:?}: {} tokens in {trips} round trips, {st:?}",
                        p["prompt"],
                        want.len(),
                    );
                    assert!(
                        trips * 2 < want.len(),
                        "{}: {trips} round trips for {} tokens ({st:?})",
                        p["prompt"],
                        want.len()
                    );
                }
            }
            // Escalation hands over to speculation: a `[REMOTE]` answer becomes the attached
            // answer, the others stay detached.
            let esc = GenerateOptions {
                escalate: Some(shadowpeft::generate::Escalate {
                    marker_ids: vec![marker],
                    ..Default::default()
                }),
                ..o.clone()
            };
            let r = fresh(&rt, &fused, &ids, &esc);
            let expect = if det.first() == Some(&marker) {
                &want
            } else {
                &det
            };
            assert_eq!(&r.tokens, expect, "escalating {k:?}: {}", p["prompt"]);
        }
    }
    assert!(stood > 0, "no draft stood on the demo prompts");
}

/// Through a backbone server a round drafts ahead while its verification is in flight, and
/// the next round starts from that work when the verification picked the shadow's token. On
/// the demo's commands, whose drafts stand, that happens; and everything that ends or
/// continues a generation inside such work gives plain decoding's tokens and session: a stop
/// after any token, the length limit, an EOS, the next turn of a conversation, and sampling
/// with a seed (whose draws must not depend on when an answer lands).
#[test]
fn pipelined_rounds_stop_and_continue_as_plain_decoding() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    let d = root().join("models/demo");
    let src = |s: &str| DirSource::open(d.join(s)).unwrap();
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("golden.json")).unwrap()).unwrap();
    // Every run opens a server session of its own.
    let url = start_server_for(
        d.join("base"),
        ServerConfig {
            max_sessions: 1024,
            ..ServerConfig::default()
        },
    );
    let commands: Vec<(Vec<u32>, Vec<u32>)> = g["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let ids: Vec<u32> = serde_json::from_value(p["input_ids"].clone()).unwrap();
            let want: Vec<u32> = serde_json::from_value(p["attached"]["tokens"].clone()).unwrap();
            let det: Vec<u32> = serde_json::from_value(p["detached"]["tokens"].clone()).unwrap();
            (ids, want, det)
        })
        .filter(|(_, want, det)| want == det && want.len() >= 8)
        .map(|(ids, want, _)| (ids, want))
        .collect();
    assert!(!commands.is_empty(), "no command among the demo prompts");
    let n = g["max_new_tokens"].as_u64().unwrap() as usize;
    for protocol in [Protocol::Fused, Protocol::Stepped] {
        let m = rt
            .block_on(ShadowModel::load_remote(
                gpu,
                &src("export"),
                &src("adapter"),
                &Connect {
                    protocol,
                    ..Connect::new(&url)
                },
                &LoadOptions::default(),
            ))
            .unwrap();
        let o = |k| GenerateOptions {
            max_new_tokens: n,
            speculate: Some(k),
            ..Default::default()
        };
        let mut pipelined = 0;
        for (ids, want) in &commands {
            let what = format!("{protocol:?}: {ids:?}");
            for k in [Speculate::Draft(2), Speculate::Draft(4), Speculate::Auto] {
                let mut s = m.new_session(gpu);
                let r = run(&rt, &m, &mut s, ids, &o(k));
                assert_eq!(&r.tokens, want, "{what} {k:?}");
                assert_eq!(s.tokens(), [&ids[..], &want[..want.len() - 1]].concat());
                pipelined += r.speculation.unwrap().pipelined;
            }
            // A stop after any token, and the length limit, inside work made ahead.
            for stop_after in 1..want.len() {
                let mut s = m.new_session(gpu);
                let mut seen = 0;
                let r = rt
                    .block_on(generate(
                        gpu,
                        &m,
                        &mut s,
                        ids,
                        &o(Speculate::Draft(2)),
                        |_| {
                            seen += 1;
                            Ok(seen < stop_after)
                        },
                    ))
                    .unwrap();
                assert_eq!(
                    r.tokens,
                    want[..stop_after],
                    "{what}: stop after {stop_after}"
                );
                assert_eq!(
                    s.tokens(),
                    [&ids[..], &want[..stop_after - 1]].concat(),
                    "{what}: the session after a stop at {stop_after}"
                );
                let short = GenerateOptions {
                    max_new_tokens: stop_after,
                    ..o(Speculate::Draft(2))
                };
                let mut s = m.new_session(gpu);
                let r = run(&rt, &m, &mut s, ids, &short);
                assert_eq!(
                    r.tokens,
                    want[..stop_after],
                    "{what}: {stop_after} tokens at most"
                );
                assert_eq!(s.tokens(), [&ids[..], &want[..stop_after - 1]].concat());
            }
            // An EOS inside the answer.
            let eos = GenerateOptions {
                eos_ids: vec![want[want.len() / 2]],
                ..o(Speculate::Draft(4))
            };
            let plain = fresh(
                &rt,
                &m,
                ids,
                &GenerateOptions {
                    speculate: None,
                    ..eos.clone()
                },
            );
            assert_eq!(
                fresh(&rt, &m, ids, &eos).tokens,
                plain.tokens,
                "{what}: EOS"
            );
            // The next turn reuses the session as plain does.
            let mut s = m.new_session(gpu);
            let first = run(&rt, &m, &mut s, ids, &o(Speculate::Draft(4)));
            let convo = [&ids[..], &first.tokens[..], &ids[..]].concat();
            let r = run(&rt, &m, &mut s, &convo, &o(Speculate::Draft(4)));
            assert!(
                r.cached_tokens > ids.len(),
                "{what}: the next turn reused {}",
                r.cached_tokens
            );
            let plain = fresh(
                &rt,
                &m,
                &convo,
                &GenerateOptions {
                    speculate: None,
                    ..o(Speculate::Draft(4))
                },
            );
            assert_eq!(r.tokens, plain.tokens, "{what}: the next turn");
        }
        assert!(
            pipelined > 0,
            "{protocol:?}: no round started from work made ahead"
        );
        // Sampling: drafts ahead are made to their full depth whenever the answer lands, so
        // a seed gives the same tokens every time.
        let (ids, _) = &commands[0];
        let sampled = GenerateOptions {
            temperature: 1.0,
            seed: 11,
            ..o(Speculate::Draft(3))
        };
        let a = fresh(&rt, &m, ids, &sampled);
        for _ in 0..3 {
            assert_eq!(
                fresh(&rt, &m, ids, &sampled).tokens,
                a.tokens,
                "{protocol:?}: same seed"
            );
        }
    }
}
