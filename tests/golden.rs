//! Fidelity against the official shadow-peft 0.1.1 (golden outputs made by
//! scripts/gen_fixtures.py) and Hugging Face peft 0.21.2's SHADOW tuner
//! (scripts/gen_peft_fixtures.py): attached, shadow, detached and export logits within
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

/// Runs `model` on the golden prompt: its logits (and, when `shadow_key` is given, its shadow
/// logits) against the golden tensors, and its greedy continuation against `greedy_key`.
fn check_model(
    name: &str,
    what: &str,
    model: &ShadowModel,
    g: &Golden,
    logits_key: &str,
    shadow_key: Option<&str>,
    greedy_key: &str,
) {
    let gpu = gpu().unwrap();
    let ids = g.ids("input_ids");
    let n = g.json["max_new_tokens"].as_u64().unwrap() as usize;
    let mut s = model.new_session(gpu);
    let out = pollster::block_on(model.forward(
        gpu,
        &mut s,
        &ids,
        Readout::AllLogits,
        shadow_key.is_some(),
    ))
    .unwrap();
    let r = assert_logits(&format!("{name} {what}"), &out.logits, &g.f32(logits_key).0);
    eprintln!("{name} {what}: max error / max|logit| = {r:.1e}");
    if let Some(k) = shadow_key {
        let r = assert_logits(
            &format!("{name} {what} shadow"),
            &out.shadow_logits,
            &g.f32(k).0,
        );
        eprintln!("{name} {what} shadow: max error / max|logit| = {r:.1e}");
    }
    assert_eq!(
        greedy(model, &ids, n),
        g.ids(greedy_key),
        "{name}: greedy {what} tokens"
    );
}

fn check_fixture(name: &str) {
    let g = Golden::load(&fixture(name));
    let attached = load(name, Mode::Attached);
    check_model(
        name,
        "attached",
        &attached,
        &g,
        "attached_logits",
        Some("attached_shadow_logits"),
        "greedy_attached",
    );
    let detached = load(name, Mode::Detached);
    check_model(
        name,
        "detached",
        &detached,
        &g,
        "detached_logits",
        None,
        "greedy_detached",
    );
    check_model(
        name,
        "export",
        &load_export(name),
        &g,
        "export_logits",
        None,
        "greedy_export",
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

/// The kernels of GPUs (tiled prefill with workgroup memory, subgroup decode where offered),
/// forced here whatever the device is, give the golden logits and greedy tokens.
#[test]
fn gpu_kernels_give_golden_output() {
    if gpu().is_none() {
        return;
    }
    let sg = pollster::block_on(shadowpeft::Gpu::new(shadowpeft::GpuOptions {
        subgroups: shadowpeft::Subgroups::WhenOffered,
        cpu_kernels: Some(false),
        ..Default::default()
    }))
    .unwrap();
    if sg.subgroup_max().is_none() {
        eprintln!("this device offers no subgroups: the plain decode kernel runs");
    }
    for (name, shadow_key) in [
        ("qwen3_implicit", "attached_shadow_logits"),
        ("peft_mirror", "shadow_logits"),
    ] {
        let dir = fixture(name);
        let g = Golden::load(&dir);
        let ids = g.ids("input_ids");
        let none: Option<&DirSource> = None;
        let model = pollster::block_on(ShadowModel::load_adapter(
            &sg,
            &DirSource::open(dir.join("base")).unwrap(),
            &DirSource::open(dir.join("adapter")).unwrap(),
            none,
            Mode::Attached,
            &LoadOptions::default(),
        ))
        .unwrap();
        // One prefill (the matrix kernels), then token by token (the matrix-vector ones).
        let mut s = model.new_session(&sg);
        let o = pollster::block_on(model.forward(&sg, &mut s, &ids, Readout::AllLogits, false))
            .unwrap();
        assert_logits(
            &format!("{name} gpu kernels prefill"),
            &o.logits,
            &g.f32("attached_logits").0,
        );
        let mut s = model.new_session(&sg);
        let (mut logits, mut shadow) = (Vec::new(), Vec::new());
        for &id in &ids {
            let o = pollster::block_on(model.forward(&sg, &mut s, &[id], Readout::AllLogits, true))
                .unwrap();
            logits.extend(o.logits);
            shadow.extend(o.shadow_logits);
        }
        assert_logits(
            &format!("{name} subgroup decode"),
            &logits,
            &g.f32("attached_logits").0,
        );
        assert_logits(
            &format!("{name} subgroup decode shadow"),
            &shadow,
            &g.f32(shadow_key).0,
        );
        assert_eq!(greedy_on(&sg, &model, &ids, 12), g.ids("greedy_attached"));
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

/// Reads every file of `dir` into memory; safetensors files go through the streaming uploader
/// in chunks of `chunk` bytes, as a browser download does.
fn streamed(gpu: &shadowpeft::Gpu, dir: &std::path::Path, chunk: usize) -> shadowpeft::MemSource {
    use shadowpeft::model::stream::SafetensorsStream;
    let mut src = shadowpeft::MemSource::new(dir.display().to_string());
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let bytes = std::fs::read(&p).unwrap();
        if name.ends_with(".safetensors") {
            let mut s = SafetensorsStream::new(name.clone());
            for c in bytes.chunks(chunk) {
                s.push(gpu, c).unwrap();
            }
            src.insert_uploaded(name, s.finish().unwrap());
        } else {
            src.insert(name, bytes);
        }
    }
    src
}

/// Weights uploaded tensor by tensor while their bytes stream in give the golden logits, for
/// any chunking (1 byte, odd sizes, whole tensors), bf16 and sharded files, and adapters.
#[test]
fn streamed_uploads_match_golden() {
    let Some(gpu) = gpu() else { return };
    for (name, chunk) in [
        ("qwen3_bf16", 1usize),
        ("qwen2_gqa", 4099),
        ("qwen3_explicit_proj", 65536),
    ] {
        let dir = fixture(name);
        let g = Golden::load(&dir);
        let ids = g.ids("input_ids");
        let export = pollster::block_on(ShadowModel::load_export(
            gpu,
            &streamed(gpu, &dir.join("export"), chunk),
            &LoadOptions::default(),
        ))
        .unwrap();
        let mut s = export.new_session(gpu);
        let out = pollster::block_on(export.forward(gpu, &mut s, &ids, Readout::AllLogits, false))
            .unwrap();
        assert_logits(
            &format!("{name} streamed export"),
            &out.logits,
            &g.f32("export_logits").0,
        );
        let shadow = g.json["shadow"]
            .as_str()
            .map(|d| DirSource::open(dir.join(d)).unwrap());
        let attached = pollster::block_on(ShadowModel::load_adapter(
            gpu,
            &streamed(gpu, &dir.join("base"), chunk),
            &streamed(gpu, &dir.join("adapter"), chunk),
            shadow.as_ref(),
            Mode::Attached,
            &LoadOptions::default(),
        ))
        .unwrap();
        let mut s = attached.new_session(gpu);
        let out =
            pollster::block_on(attached.forward(gpu, &mut s, &ids, Readout::AllLogits, false))
                .unwrap();
        assert_logits(
            &format!("{name} streamed attached"),
            &out.logits,
            &g.f32("attached_logits").0,
        );
    }
}

/// A streamed file that stops early, or whose header is corrupt, is an error naming the file.
#[test]
fn streamed_truncated_or_corrupt_files_fail_clearly() {
    use shadowpeft::model::stream::SafetensorsStream;
    let Some(gpu) = gpu() else { return };
    let bytes = std::fs::read(fixture("qwen3_implicit").join("export/model.safetensors")).unwrap();
    for cut in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        let mut s = SafetensorsStream::new("model.safetensors");
        s.push(gpu, &bytes[..cut]).unwrap();
        let e = s
            .finish()
            .err()
            .expect("truncated file accepted")
            .to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("truncated"),
            "{e}"
        );
    }
    let mut extra = bytes.clone();
    extra.extend([0u8; 8]);
    let mut s = SafetensorsStream::new("model.safetensors");
    s.push(gpu, &extra).unwrap();
    assert!(s
        .finish()
        .err()
        .unwrap()
        .to_string()
        .contains("not fully covered"));
    let mut bad = bytes.clone();
    bad[8..40].fill(b'#');
    let mut s = SafetensorsStream::new("model.safetensors");
    let e = s
        .push(gpu, &bad)
        .expect_err("corrupt header accepted")
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("invalid header"),
        "{e}"
    );
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut s = SafetensorsStream::new("model.safetensors");
    assert!(s
        .push(gpu, &huge)
        .err()
        .unwrap()
        .to_string()
        .contains("header too large"));
}

/// Hugging Face peft's detached exports (`unload_shadow()`, a `DetachedShadowModel`) load
/// with `--model` and match peft's own logits and greedy tokens (scripts/gen_peft_fixtures.py).
/// Hugging Face peft SHADOW fixtures (scripts/gen_peft_fixtures.py, peft 0.21.2): attached
/// logits and shadow logits (base + adapter), detached (the adapter's shadow alone) and the
/// `unload_shadow()` export, each against peft's own output and greedy tokens.
fn check_peft_fixture(name: &str) {
    let g = Golden::load(&fixture(name));
    assert_eq!(g.json["format"], "peft");
    let attached = load(name, Mode::Attached);
    check_model(
        name,
        "peft attached",
        &attached,
        &g,
        "attached_logits",
        Some("shadow_logits"),
        "greedy_attached",
    );
    let detached = load(name, Mode::Detached);
    check_model(
        name,
        "peft detached",
        &detached,
        &g,
        "shadow_logits",
        None,
        "greedy_export",
    );
    let export = load_export(name);
    check_model(
        name,
        "peft export",
        &export,
        &g,
        "export_logits",
        None,
        "greedy_export",
    );
    // The export computes the attached model's initial shadow state and head.
    check_model(
        name,
        "peft export as shadow",
        &export,
        &g,
        "shadow_logits",
        None,
        "greedy_export",
    );
}

macro_rules! peft_fixture_test {
    ($($t:ident),*) => {$(
        #[test]
        fn $t() {
            if gpu().is_none() { return; }
            check_peft_fixture(stringify!($t));
        }
    )*};
}

peft_fixture_test!(
    peft_mirror,
    peft_partial_proj,
    peft_explicit,
    peft_projected
);

/// Sampling on the device (4 bytes read back) chooses what the host sampler chooses from the
/// read-back logits of the same step, for greedy with a penalty, top-k, nucleus and plain
/// temperature settings; only a draw within float rounding of a boundary may differ.
#[test]
fn device_sampling_follows_the_host_sampler() {
    use shadowpeft::{Sampler, Sampling};
    let gpu = gpu().unwrap();
    let name = "qwen3_implicit";
    let g = Golden::load(&fixture(name));
    let prompt = g.ids("input_ids");
    for (mode, model) in [
        ("attached", load(name, Mode::Attached)),
        ("export", load_export(name)),
    ] {
        for (temperature, top_k, top_p, repetition_penalty) in [
            (0.0, 0, 1.0, 1.5),
            (0.9, 20, 1.0, 1.2),
            (1.2, 0, 0.8, 1.0),
            (0.6, 0, 1.0, 1.0),
        ] {
            let o = GenerateOptions {
                temperature,
                top_k,
                top_p,
                repetition_penalty,
                ..Default::default()
            };
            let mut sampler = Sampler::new(5);
            let (mut dev, mut host) = (model.new_session(gpu), model.new_session(gpu));
            let mut history = prompt.clone();
            let mut input = prompt.clone();
            for _ in 0..12 {
                let s: Sampling = sampler.next(&o);
                dev.set_penalized(gpu, &history);
                let got = pollster::block_on(model.forward(
                    gpu,
                    &mut dev,
                    &input,
                    Readout::Sample(s),
                    false,
                ))
                .unwrap()
                .token
                .unwrap();
                let row = pollster::block_on(model.forward(
                    gpu,
                    &mut host,
                    &input,
                    Readout::LastLogits,
                    false,
                ))
                .unwrap()
                .logits;
                let want = s.pick(&mut row.clone(), &history);
                if got != want {
                    let near = [s.draw - 1e-5, s.draw + 1e-5].map(|d| {
                        Sampling {
                            draw: d.clamp(0.0, 0.999_999),
                            ..s
                        }
                        .pick(&mut row.clone(), &history)
                    });
                    assert!(
                        near.contains(&got),
                        "{name} {mode} {o:?}: device {got}, host {want}"
                    );
                }
                history.push(want);
                input = vec![want];
            }
        }
    }
}
