//! Fidelity against the official shadow-peft 0.1.1 (golden outputs made by
//! scripts/gen_fixtures.py): attached, shadow, detached and export logits within
//! 1e-4 x max|logit|, identical greedy tokens, and KV-cached decoding equal to full recompute.

mod common;

use common::*;
use shadowpeft::{generate, DirSource, GenerateOptions, LoadOptions, Mode, Readout, ShadowModel};

fn load(name: &str, mode: Mode) -> ShadowModel {
    let gpu = gpu().unwrap();
    let dir = fixture(name);
    let g = Golden::load(&dir);
    let shadow = g.json["shadow"]
        .as_str()
        .map(|s| DirSource::open(dir.join(s)).unwrap());
    pollster::block_on(ShadowModel::load_adapter(
        gpu,
        &DirSource::open(dir.join("base")).unwrap(),
        &DirSource::open(dir.join("adapter")).unwrap(),
        shadow.as_ref(),
        mode,
        &LoadOptions::default(),
    ))
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn load_export(name: &str) -> ShadowModel {
    let dir = fixture(name).join("export");
    pollster::block_on(ShadowModel::load_export(
        gpu().unwrap(),
        &DirSource::open(dir).unwrap(),
        &LoadOptions::default(),
    ))
    .unwrap_or_else(|e| panic!("{name} export: {e}"))
}

fn greedy(model: &ShadowModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let gpu = gpu().unwrap();
    let mut s = model.new_session(gpu);
    let o = GenerateOptions {
        max_new_tokens: n,
        ignore_eos: true,
        ..Default::default()
    };
    pollster::block_on(generate(gpu, model, &mut s, prompt, &o, |_| Ok(true)))
        .unwrap()
        .tokens
}

fn check_fixture(name: &str) {
    let gpu = gpu().unwrap();
    let g = Golden::load(&fixture(name));
    let ids = g.ids("input_ids");
    let n = g.json["max_new_tokens"].as_u64().unwrap() as usize;

    let attached = load(name, Mode::Attached);
    let mut s = attached.new_session(gpu);
    let out =
        pollster::block_on(attached.forward(gpu, &mut s, &ids, Readout::AllLogits, true)).unwrap();
    assert_logits(
        &format!("{name} attached"),
        &out.logits,
        &g.f32("attached_logits").0,
    );
    assert_logits(
        &format!("{name} attached shadow"),
        &out.shadow_logits,
        &g.f32("attached_shadow_logits").0,
    );
    assert_eq!(
        greedy(&attached, &ids, n),
        g.ids("greedy_attached"),
        "{name}: greedy attached tokens"
    );

    let detached = load(name, Mode::Detached);
    let mut s = detached.new_session(gpu);
    let out =
        pollster::block_on(detached.forward(gpu, &mut s, &ids, Readout::AllLogits, false)).unwrap();
    assert_logits(
        &format!("{name} detached"),
        &out.logits,
        &g.f32("detached_logits").0,
    );
    assert_eq!(
        greedy(&detached, &ids, n),
        g.ids("greedy_detached"),
        "{name}: greedy detached tokens"
    );

    let export = load_export(name);
    let mut s = export.new_session(gpu);
    let out =
        pollster::block_on(export.forward(gpu, &mut s, &ids, Readout::AllLogits, false)).unwrap();
    assert_logits(
        &format!("{name} export"),
        &out.logits,
        &g.f32("export_logits").0,
    );
    assert_eq!(
        greedy(&export, &ids, n),
        g.ids("greedy_export"),
        "{name}: greedy export tokens"
    );
}

macro_rules! fixture_test {
    ($($t:ident),*) => {$(
        #[test]
        fn $t() {
            if gpu().is_none() { return; }
            check_fixture(stringify!($t));
        }
    )*};
}

fixture_test!(
    qwen3_implicit,
    qwen3_explicit_proj,
    qwen3_untied,
    qwen3_bf16,
    qwen2_gqa,
    llama
);

/// Prefill k tokens, then feed the rest one at a time: every position's logits must equal the
/// one-shot forward over the whole sequence (attached and detached, base and shadow caches).
#[test]
fn kv_cached_decoding_equals_full_recompute() {
    let Some(gpu) = gpu() else { return };
    for name in ["qwen3_implicit", "qwen2_gqa", "qwen3_explicit_proj"] {
        let g = Golden::load(&fixture(name));
        let ids = g.ids("input_ids");
        for mode in [Mode::Attached, Mode::Detached] {
            let model = load(name, mode);
            let mut s = model.new_session(gpu);
            let full =
                pollster::block_on(model.forward(gpu, &mut s, &ids, Readout::AllLogits, true))
                    .unwrap();
            let v = model.vocab_size();
            let mut s = model.new_session(gpu);
            let k = 3;
            let mut got =
                pollster::block_on(model.forward(gpu, &mut s, &ids[..k], Readout::AllLogits, true))
                    .unwrap();
            for &t in &ids[k..] {
                let o =
                    pollster::block_on(model.forward(gpu, &mut s, &[t], Readout::AllLogits, true))
                        .unwrap();
                got.logits.extend(o.logits);
                got.shadow_logits.extend(o.shadow_logits);
            }
            assert_eq!(got.logits.len(), ids.len() * v);
            let (e, m) = max_err(&got.logits, &full.logits);
            assert!(
                e <= 1e-5 * m.max(1.0),
                "{name} {mode:?}: cached vs full logits differ by {e}"
            );
            let (e, m) = max_err(&got.shadow_logits, &full.shadow_logits);
            assert!(
                e <= 1e-5 * m.max(1.0),
                "{name} {mode:?}: cached vs full shadow logits differ by {e}"
            );
        }
    }
}

/// The bundled model generates the official greedy continuation too.
#[test]
fn bundled_tiny_model_matches_golden() {
    if gpu().is_none() {
        return;
    }
    let dir = root().join("models/tiny");
    let g = Golden::load(&dir);
    let ids = g.ids("input_ids");
    let n = g.json["max_new_tokens"].as_u64().unwrap() as usize;
    let export = pollster::block_on(ShadowModel::load_export(
        gpu().unwrap(),
        &DirSource::open(dir.join("export")).unwrap(),
        &LoadOptions::default(),
    ))
    .unwrap();
    assert_eq!(greedy(&export, &ids, n), g.ids("greedy_export"));
}

/// With a tiny storage-binding limit every large tensor (embeddings, heads, projections) is
/// split into row chunks; the results must not change.
#[test]
fn split_tensors_give_identical_results() {
    if gpu().is_none() {
        return;
    }
    let small = pollster::block_on(shadowpeft::Gpu::new(shadowpeft::GpuOptions {
        max_storage_binding: Some(16 * 1024),
        ..Default::default()
    }))
    .unwrap();
    for name in ["qwen3_untied", "qwen3_explicit_proj"] {
        let dir = fixture(name);
        let g = Golden::load(&dir);
        let ids = g.ids("input_ids");
        let shadow = g.json["shadow"]
            .as_str()
            .map(|s| DirSource::open(dir.join(s)).unwrap());
        let model = pollster::block_on(ShadowModel::load_adapter(
            &small,
            &DirSource::open(dir.join("base")).unwrap(),
            &DirSource::open(dir.join("adapter")).unwrap(),
            shadow.as_ref(),
            Mode::Attached,
            &LoadOptions::default(),
        ))
        .unwrap();
        let mut s = model.new_session(&small);
        let mut logits = Vec::new();
        let mut shadow_logits = Vec::new();
        for chunk in ids.chunks(model.max_logit_rows(&small)) {
            let o =
                pollster::block_on(model.forward(&small, &mut s, chunk, Readout::AllLogits, true))
                    .unwrap();
            logits.extend(o.logits);
            shadow_logits.extend(o.shadow_logits);
        }
        assert_logits(
            &format!("{name} split attached"),
            &logits,
            &g.f32("attached_logits").0,
        );
        assert_logits(
            &format!("{name} split shadow"),
            &shadow_logits,
            &g.f32("attached_shadow_logits").0,
        );
        assert_eq!(
            greedy_on(&small, &model, &ids, 12),
            g.ids("greedy_attached")
        );
    }
}

fn greedy_on(gpu: &shadowpeft::Gpu, model: &ShadowModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = model.new_session(gpu);
    let o = GenerateOptions {
        max_new_tokens: n,
        ignore_eos: true,
        ..Default::default()
    };
    pollster::block_on(generate(gpu, model, &mut s, prompt, &o, |_| Ok(true)))
        .unwrap()
        .tokens
}

/// A lost device (here: destroyed) makes every later call fail with a clear error instead of
/// hanging or panicking; a new device loads the model again.
#[test]
fn lost_device_is_reported() {
    if gpu().is_none() {
        return;
    }
    let g = pollster::block_on(shadowpeft::Gpu::new(Default::default())).unwrap();
    let dir = root().join("models/tiny/export");
    let model = pollster::block_on(ShadowModel::load_export(
        &g,
        &DirSource::open(&dir).unwrap(),
        &LoadOptions::default(),
    ))
    .unwrap();
    let mut s = model.new_session(&g);
    g.destroy();
    let r = pollster::block_on(model.forward(&g, &mut s, &[1, 2, 3], Readout::Argmax, false));
    let e = r.expect_err("a destroyed device must fail").to_string();
    assert!(e.contains("device lost") || e.contains("GPU"), "{e}");
    eprintln!("error after destroy: {e}; lost: {:?}", g.lost_reason());
    assert!(g.lost_reason().is_some());
}
