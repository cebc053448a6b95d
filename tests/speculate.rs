//! Greedy speculative decoding (the shadow drafts, the attached model verifies k + 1 rows per
//! pass) against its oracle, plain greedy attached decoding: the same tokens on every fixture,
//! official and peft, locally and through a backbone server (fused and stepped), at every
//! draft length, with fewer base passes (round trips) when the drafts stand.

mod common;

use common::*;
use shadowpeft::remote::client::{Connect, Protocol};
use shadowpeft::remote::server::ServerConfig;
use shadowpeft::speculate::speculate_greedy;
use shadowpeft::{
    generate, DirSource, GenerateOptions, LoadOptions, Mode, ShadowModel, WeightFormat,
};

const N: usize = 12;

fn plain(rt: &tokio::runtime::Runtime, m: &ShadowModel, ids: &[u32]) -> Vec<u32> {
    let o = GenerateOptions {
        max_new_tokens: N,
        ignore_eos: true,
        ..Default::default()
    };
    let mut s = m.new_session(gpu().unwrap());
    rt.block_on(generate(gpu().unwrap(), m, &mut s, ids, &o, |_| Ok(true)))
        .unwrap()
        .tokens
}

#[test]
fn speculation_gives_the_plain_attached_tokens_locally() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    for &name in FIXTURES.iter().chain(PEFT) {
        let g = Golden::load(&fixture(name));
        let ids = g.ids("input_ids");
        let m = load(&rt, name, Mode::Attached, WeightFormat::F32);
        let want = plain(&rt, &m, &ids);
        let golden = g.ids("greedy_attached");
        let n = golden.len().min(N);
        assert_eq!(want[..n], golden[..n], "{name}: plain against the golden");
        for k in [0, 1, 3, 5] {
            let mut s = m.new_session(gpu);
            let r = rt
                .block_on(speculate_greedy(gpu, &m, &mut s, &ids, N, k, &[]))
                .unwrap();
            assert_eq!(r.tokens, want, "{name} k={k}");
            assert!(r.accepted <= r.drafted, "{name} k={k}: {r:?}");
            // One token from the prompt's pass, then accepted + 1 per round.
            assert_eq!(1 + r.rounds + r.accepted, N, "{name} k={k}: {r:?}");
            // The session holds the prompt and every token but the last, as plain does.
            assert_eq!(
                s.tokens(),
                [&ids[..], &want[..N - 1]].concat(),
                "{name} k={k}"
            );
        }
    }
}

/// Through a backbone server: the same tokens as plain remote decoding, and when drafts
/// stand, fewer round trips.
#[test]
fn speculation_gives_the_plain_attached_tokens_through_a_backbone() {
    let Some(gpu) = gpu() else { return };
    let rt = rt();
    for name in ["qwen3_implicit", "peft_mirror"] {
        let url = start_server(name, ServerConfig::default());
        let ids = Golden::load(&fixture(name)).ids("input_ids");
        for protocol in [Protocol::Fused, Protocol::Stepped] {
            let what = format!("{name} {protocol:?}");
            let m = remote(&rt, name, &url, protocol);
            let mut s = m.new_session(gpu);
            let o = GenerateOptions {
                max_new_tokens: N,
                ignore_eos: true,
                ..Default::default()
            };
            let want = rt
                .block_on(generate(gpu, &m, &mut s, &ids, &o, |_| Ok(true)))
                .unwrap()
                .tokens;
            let plain_trips = s.remote_traffic().unwrap().0;
            for k in [1, 4] {
                let mut s = m.new_session(gpu);
                let r = rt
                    .block_on(speculate_greedy(gpu, &m, &mut s, &ids, N, k, &[]))
                    .unwrap();
                assert_eq!(r.tokens, want, "{what} k={k}");
                let trips = s.remote_traffic().unwrap().0;
                if r.accepted > 0 {
                    assert!(
                        trips < plain_trips,
                        "{what} k={k}: {trips} round trips against {plain_trips} plain ({r:?})"
                    );
                }
                eprintln!("{what} k={k}: {} of {} drafts stood, {trips} round trips (plain {plain_trips})", r.accepted, r.drafted);
            }
        }
    }
}

/// The demo model, whose shadow answers robot commands as the attached model does: the
/// drafts stand, and a command's answer takes a few verification passes instead of one per
/// token, locally and through a backbone (fused), with the plain tokens.
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
    let eos = local.eos_ids().to_vec();
    let mut stood = 0;
    for p in g["prompts"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(p["input_ids"].clone()).unwrap();
        let want: Vec<u32> = serde_json::from_value(p["attached"]["tokens"].clone()).unwrap();
        for (what, m) in [("local", &local), ("fused", &fused)] {
            let mut s = m.new_session(gpu);
            let r = rt
                .block_on(speculate_greedy(gpu, m, &mut s, &ids, n, 4, &eos))
                .unwrap();
            assert_eq!(r.tokens, want, "{what}: {}", p["prompt"]);
            stood += r.accepted;
            if what == "fused" && p["detached"]["tokens"] == p["attached"]["tokens"] {
                // A command: the round trips are the prompt's and the rounds', far fewer
                // than one per token.
                let trips = s.remote_traffic().unwrap().0 as usize;
                eprintln!(
                    "{}: {} tokens in {trips} round trips, {} of {} drafts stood",
                    p["prompt"],
                    want.len(),
                    r.accepted,
                    r.drafted
                );
                assert!(
                    trips * 2 < want.len(),
                    "{}: {trips} round trips for {} tokens ({r:?})",
                    p["prompt"],
                    want.len()
                );
            }
        }
    }
    assert!(stood > 0, "no draft stood on the demo prompts");
}
