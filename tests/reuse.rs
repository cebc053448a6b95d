//! Conversations that continue: a session keeps the longest common prefix of what its KV
//! caches hold and the next prompt, and runs only the rest. The oracle is the plain path, a
//! fresh session on the same ids, and the official golden outputs: same greedy tokens, logits
//! within the golden tolerance, in every mode (detached, export, local attached, remote fused
//! and stepped, escalation, fallback) and weight format.

mod common;

use common::*;
use shadowpeft::generate::Escalate;
use shadowpeft::remote::client::Protocol;
use shadowpeft::remote::server::ServerConfig;
use shadowpeft::{GenerateOptions, Generation, Mode, Readout, Session, ShadowModel, WeightFormat};

fn opts(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: n,
        ignore_eos: true,
        ..Default::default()
    }
}

/// What a turn after `held` (the ids the session holds) can reuse of `prompt`.
fn common_prefix(held: &[u32], prompt: &[u32]) -> usize {
    let n = held.iter().zip(prompt).take_while(|(a, b)| a == b).count();
    n.min(prompt.len() - 1)
}

/// The ids a session holds after generating `g` on `prompt`: the last token was never fed.
fn held_after(prompt: &[u32], g: &Generation) -> Vec<u32> {
    let mut h = prompt.to_vec();
    h.extend(&g.tokens[..g.tokens.len() - 1]);
    h
}

/// The logits of `prompt`'s positions that a continued session runs, against `want` (all of
/// `prompt`'s rows); returns the first position run.
fn continued_logits(
    rt: &tokio::runtime::Runtime,
    what: &str,
    m: &ShadowModel,
    s: &mut Session,
    prompt: &[u32],
    want: &[f32],
) -> usize {
    let gpu = gpu().unwrap();
    let kept = s.reuse(prompt);
    let out = rt
        .block_on(m.forward(gpu, s, &prompt[kept..], Readout::AllLogits, false))
        .unwrap();
    let v = m.vocab_size();
    assert_logits(what, &out.logits, &want[kept * v..]);
    kept
}

/// Turn 1 on half the golden prompt, then turn 2 on the whole prompt: turn 2 reuses the common
/// prefix and gives the official logits and greedy tokens; turn 3 extends turn 2's output and
/// equals a fresh session on the same ids.
fn check_continuation(
    rt: &tokio::runtime::Runtime,
    what: &str,
    m: &ShadowModel,
    g: &Golden,
    logits_key: &str,
    greedy_key: &str,
) {
    let gpu = gpu().unwrap();
    let ids = g.ids("input_ids");
    let n = g.json["max_new_tokens"].as_u64().unwrap() as usize;
    let half = &ids[..ids.len() / 2];
    let mut s = m.new_session(gpu);
    let t1 = run(rt, m, &mut s, half, &opts(4));
    assert_eq!(t1.cached_tokens, 0, "{what}: a fresh session holds nothing");
    let held = held_after(half, &t1);
    assert_eq!(s.tokens(), held, "{what}: the ids the session holds");
    let kept = continued_logits(rt, what, m, &mut s, &ids, &g.f32(logits_key).0);
    assert_eq!(kept, common_prefix(&held, &ids), "{what}: positions reused");
    assert!(kept >= half.len(), "{what}: kept {kept}");

    // Turn 2 again, now fully held but for the last position (its logits give the token).
    let t2 = run(rt, m, &mut s, &ids, &opts(n));
    assert_eq!(t2.cached_tokens, ids.len() - 1, "{what}");
    assert_eq!(
        t2.tokens,
        g.ids(greedy_key),
        "{what}: continued greedy tokens"
    );

    // Turn 3: turn 2's conversation and more, as a chat renders it.
    let mut p3 = held_after(&ids, &t2);
    p3.push(*t2.tokens.last().unwrap());
    p3.extend(&ids[..3]);
    let t3 = run(rt, m, &mut s, &p3, &opts(8));
    assert_eq!(t3.cached_tokens, ids.len() + n - 1, "{what}");
    assert_eq!(
        t3.tokens,
        fresh(rt, m, &p3, &opts(8)).tokens,
        "{what}: turn 3"
    );
}

#[test]
fn continued_sessions_give_the_official_output_locally() {
    let Some(_) = gpu() else { return };
    let rt = rt();
    let f32w = WeightFormat::F32;
    for &name in FIXTURES.iter().chain(PEFT) {
        let g = Golden::load(&fixture(name));
        let official = FIXTURES.contains(&name);
        let runs = [
            (
                "attached",
                load(&rt, name, Mode::Attached, f32w),
                "attached_logits",
                "greedy_attached",
            ),
            (
                "detached",
                load(&rt, name, Mode::Detached, f32w),
                if official {
                    "detached_logits"
                } else {
                    "shadow_logits"
                },
                if official {
                    "greedy_detached"
                } else {
                    "greedy_export"
                },
            ),
        ];
        for (what, m, logits, greedy) in runs {
            check_continuation(&rt, &format!("{name} {what}"), &m, &g, logits, greedy);
        }
        if official {
            let m = load_export(&rt, name);
            check_continuation(
                &rt,
                &format!("{name} export"),
                &m,
                &g,
                "export_logits",
                "greedy_export",
            );
        }
    }
}

/// Quantised weights: the continued session against a fresh one in the same format (same
/// tokens, logits within the golden tolerance of the fresh session's).
#[test]
fn continued_sessions_equal_fresh_ones_in_every_weight_format() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    let name = "qwen3_implicit";
    let ids = Golden::load(&fixture(name)).ids("input_ids");
    for weights in [WeightFormat::F16, WeightFormat::Q8, WeightFormat::Q4] {
        for mode in [Mode::Attached, Mode::Detached] {
            let what = format!("{name} {mode:?} {weights:?}");
            let m = load(&rt, name, mode, weights);
            let mut s = m.new_session(gpu);
            let want = rt
                .block_on(m.forward(gpu, &mut s, &ids, Readout::AllLogits, false))
                .unwrap()
                .logits;
            let mut s = m.new_session(gpu);
            let half = &ids[..ids.len() / 2];
            run(&rt, &m, &mut s, half, &opts(4));
            continued_logits(&rt, &what, &m, &mut s, &ids, &want);
            let mut s = m.new_session(gpu);
            let t1 = run(&rt, &m, &mut s, half, &opts(4));
            let mut p2 = held_after(half, &t1);
            p2.extend(&ids[..4]);
            let t2 = run(&rt, &m, &mut s, &p2, &opts(10));
            assert_eq!(t2.cached_tokens, half.len() + 3, "{what}");
            assert_eq!(t2.tokens, fresh(&rt, &m, &p2, &opts(10)).tokens, "{what}");
        }
    }
}

/// Remote fused and stepped: the continued session gives the official output and sends only
/// what the server does not hold (the server's session is rewound with `pos`).
#[test]
fn continued_remote_sessions_send_only_the_new_tokens() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    for name in ["qwen3_implicit", "peft_mirror"] {
        let url = start_server(name, ServerConfig::default());
        let g = Golden::load(&fixture(name));
        for protocol in [Protocol::Fused, Protocol::Stepped] {
            let what = format!("{name} {protocol:?}");
            let m = remote(&rt, name, &url, protocol);
            check_continuation(&rt, &what, &m, &g, "attached_logits", "greedy_attached");

            // Traffic: turn 2 of a continued session against the same turn in a fresh one.
            let ids = g.ids("input_ids");
            let mut s = m.new_session(gpu);
            let t1 = run(&rt, &m, &mut s, &ids, &opts(6));
            let mut p2 = held_after(&ids, &t1);
            p2.extend(&ids[..5]);
            let before = s.remote_traffic().unwrap();
            let t2 = run(&rt, &m, &mut s, &p2, &opts(6));
            let after = s.remote_traffic().unwrap();
            let mut f = m.new_session(gpu);
            let fresh2 = run(&rt, &m, &mut f, &p2, &opts(6));
            assert_eq!(t2.tokens, fresh2.tokens, "{what}");
            let (trips, sent) = (after.0 - before.0, after.1 - before.1);
            let (ftrips, fsent, _) = f.remote_traffic().unwrap();
            // The fresh session also opens a server session (a fused client that has seen its
            // adapter on the server does not check it again).
            assert_eq!(trips + 1, ftrips, "{what}: round trips");
            // Every position the session reused is one id and one shadow state row (fused),
            // or one id and a hidden row per layer (stepped), that were not sent again.
            let row = 4 * g.json["hidden_size"].as_u64().unwrap_or(64);
            let saved = fsent - sent;
            assert!(
                saved >= t2.cached_tokens as u64 * row,
                "{what}: sent {sent} B continued against {fsent} B fresh for {} reused positions",
                t2.cached_tokens
            );
            eprintln!(
                "{what}: turn 2 sent {sent} B ({trips} round trips); fresh {fsent} B ({ftrips})"
            );
        }
    }
}

/// A generation that deferred the base and never escalated, then an attached turn (the base
/// catches up on the deferred positions first), an escalating turn that fires, and one that
/// does not: each equals a fresh session on the same ids with the same options.
#[test]
fn continued_escalation_sessions_catch_the_base_up_exactly() {
    let Some(_) = gpu() else { return };
    let rt = rt();
    let name = "qwen3_implicit";
    let url = start_server(name, ServerConfig::default());
    let ids = Golden::load(&fixture(name)).ids("input_ids");
    let never = GenerateOptions {
        escalate: Some(Escalate {
            marker_ids: vec![u32::MAX - 1],
            ..Default::default()
        }),
        ..opts(6)
    };
    let unsure = GenerateOptions {
        escalate: Some(Escalate {
            min_prob: Some(1.0),
            ..Default::default()
        }),
        ..opts(6)
    };
    let models = [
        ("local", load(&rt, name, Mode::Attached, WeightFormat::F32)),
        ("fused", remote(&rt, name, &url, Protocol::Fused)),
        ("stepped", remote(&rt, name, &url, Protocol::Stepped)),
    ];
    for (what, m) in &models {
        let mut s = m.new_session(gpu().unwrap());
        let t1 = run(&rt, m, &mut s, &ids, &never);
        assert!(t1.modes.iter().all(|x| *x == Mode::Detached), "{what}");
        let mut prompt = held_after(&ids, &t1);
        let mut turn = |o: &GenerateOptions, label: &str, t: &Generation, s: &mut Session| {
            prompt.push(*t.tokens.last().unwrap());
            prompt.extend(&ids[..2]);
            let g = run(&rt, m, s, &prompt, o);
            let want = fresh(&rt, m, &prompt, o);
            assert_eq!(g.tokens, want.tokens, "{what} {label}");
            assert_eq!(g.modes, want.modes, "{what} {label}");
            assert_eq!(g.cached_tokens, prompt.len() - 3, "{what} {label}");
            prompt = held_after(&prompt, &g);
            g
        };
        let t2 = turn(&opts(6), "attached after a deferred turn", &t1, &mut s);
        assert!(t2.modes.iter().all(|x| *x == Mode::Attached));
        let t3 = turn(&never, "deferred again", &t2, &mut s);
        let t4 = turn(&unsure, "escalating at once", &t3, &mut s);
        assert!(t4.modes.iter().all(|x| *x == Mode::Attached));
        let t5 = turn(&never, "deferred after attached", &t4, &mut s);
        turn(&opts(6), "attached once more", &t5, &mut s);
    }
}

/// A turn that fell back to the shadow (server killed), then the server back at the same
/// address: the next turn reuses only what the base holds, and equals a fresh attached
/// session on the same ids.
#[test]
fn a_turn_after_a_detached_fallback_reuses_only_what_the_base_holds() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    let name = "qwen3_implicit";
    let base = fixture(name).join("base");
    let mut server = ServerProcess::start(&base, &[]);
    let addr = server.url.trim_start_matches("http://").to_string();
    let ids = Golden::load(&fixture(name)).ids("input_ids");
    for protocol in [Protocol::Fused, Protocol::Stepped] {
        let m = remote(&rt, name, &server.url, protocol);
        let mut s = m.new_session(gpu);
        s.set_fallback_detached(true);
        let t1 = run(&rt, &m, &mut s, &ids, &opts(4));
        assert!(t1.modes.iter().all(|x| *x == Mode::Attached));
        let acknowledged = s.position();
        server.kill();
        let mut p2 = held_after(&ids, &t1);
        p2.push(*t1.tokens.last().unwrap());
        p2.extend(&ids[..2]);
        let t2 = run(&rt, &m, &mut s, &p2, &opts(5));
        assert!(
            t2.modes.iter().all(|x| *x == Mode::Detached),
            "{protocol:?}"
        );
        assert!(s.fallback_error().is_some());
        assert_eq!(s.base_reach(), acknowledged, "{protocol:?}");

        server = ServerProcess::start_at(&base, &addr, &[]);
        let mut p3 = held_after(&p2, &t2);
        p3.push(*t2.tokens.last().unwrap());
        p3.extend(&ids[..2]);
        let t3 = run(&rt, &m, &mut s, &p3, &opts(6));
        assert_eq!(t3.cached_tokens, acknowledged, "{protocol:?}");
        assert!(
            t3.modes.iter().all(|x| *x == Mode::Attached),
            "{protocol:?}"
        );
        assert!(s.fallback_error().is_none());
        let local = load(&rt, name, Mode::Attached, WeightFormat::F32);
        assert_eq!(
            t3.tokens,
            fresh(&rt, &local, &p3, &opts(6)).tokens,
            "{protocol:?}"
        );
    }
}
