//! Prefill of a 32-token prompt (the time to the first token) on detached exports of real
//! shapes, with random weights made here (no model files needed): `medium` (hidden 512, 10
//! layers, vocabulary 32000) and `0.6b` (Qwen3-0.6B's shape: hidden 1024, 28 layers,
//! vocabulary 151936), in f32, f16, q8 and q4. Quantised prefill runs `qmatmul`, which decodes
//! each weight block once per 8 prompt rows; f32 runs the f32 matmul kernels.
//!
//! `cargo bench --bench prefill` (both sizes; `0.6b` makes a 2.4 GB model in memory).
//! Run as a test (`cargo test --benches`), only `medium` is built, each case once.
//! Criterion reports time per prefill and, through `Throughput::Elements`, tokens per second.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use shadowpeft::{Gpu, GpuOptions, LoadOptions, MemSource, Readout, ShadowModel, WeightFormat};

const PROMPT: usize = 32;

struct Shape {
    name: &'static str,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    inter: usize,
    vocab: usize,
}

const MEDIUM: Shape = Shape {
    name: "medium",
    hidden: 512,
    layers: 10,
    heads: 8,
    kv_heads: 4,
    head_dim: 64,
    inter: 1536,
    vocab: 32000,
};

const QWEN3_06B: Shape = Shape {
    name: "0.6b",
    hidden: 1024,
    layers: 28,
    heads: 16,
    kv_heads: 8,
    head_dim: 128,
    inter: 3072,
    vocab: 151936,
};

/// Random f32 values of standard deviation about `std` (xorshift, sums of uniforms).
fn random(n: usize, std: f32, seed: &mut u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 4);
    for _ in 0..n {
        let mut u = 0.0f32;
        for _ in 0..3 {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            u += (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        }
        out.extend_from_slice(&(u * 2.0 * std).to_le_bytes());
    }
    out
}

/// A Qwen3 model of `s`'s shape (tied head) with random weights, as a model directory.
fn model(s: &Shape) -> MemSource {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let (h, d) = (s.hidden, s.head_dim);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, std: f32, seed: &mut u64| {
        let n = shape.iter().product();
        let bytes = if std == 0.0 {
            1.0f32.to_le_bytes().repeat(n)
        } else {
            random(n, std, seed)
        };
        tensors.push((name, shape, bytes));
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![s.vocab, h],
        0.02,
        &mut seed,
    );
    add("model.norm.weight".into(), vec![h], 0.0, &mut seed);
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        for (n, shape) in [
            ("self_attn.q_proj", vec![s.heads * d, h]),
            ("self_attn.k_proj", vec![s.kv_heads * d, h]),
            ("self_attn.v_proj", vec![s.kv_heads * d, h]),
            ("self_attn.o_proj", vec![h, s.heads * d]),
            ("mlp.gate_proj", vec![s.inter, h]),
            ("mlp.up_proj", vec![s.inter, h]),
            ("mlp.down_proj", vec![h, s.inter]),
        ] {
            add(format!("{p}.{n}.weight"), shape, 0.02, &mut seed);
        }
        for (n, len) in [
            ("input_layernorm", h),
            ("post_attention_layernorm", h),
            ("self_attn.q_norm", d),
            ("self_attn.k_norm", d),
        ] {
            add(format!("{p}.{n}.weight"), vec![len], 0.0, &mut seed);
        }
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, shape, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    let weights = safetensors::serialize(views, None).unwrap();
    drop(tensors);
    let config = serde_json::json!({
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": h,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": d,
        "intermediate_size": s.inter,
        "vocab_size": s.vocab,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": true,
        "hidden_act": "silu",
        "eos_token_id": 0,
        "max_position_embeddings": 4096,
    });
    let mut src = MemSource::new(s.name);
    src.insert("config.json", serde_json::to_vec(&config).unwrap());
    src.insert("model.safetensors", weights);
    src
}

fn bench(c: &mut Criterion) {
    let gpu = match pollster::block_on(Gpu::new(GpuOptions::default())) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("no GPU adapter, nothing to measure: {e}");
            return;
        }
    };
    let full = std::env::args().any(|a| a == "--bench");
    let shapes: &[&Shape] = if full {
        &[&MEDIUM, &QWEN3_06B]
    } else {
        &[&MEDIUM]
    };
    for shape in shapes {
        let src = model(shape);
        let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| (i * 37 + 11) % 1000).collect();
        let mut g = c.benchmark_group(format!("prefill_{}", shape.name));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(if shape.layers > 10 { 20 } else { 5 }));
        g.throughput(Throughput::Elements(PROMPT as u64));
        for weights in WeightFormat::ALL {
            let opts = LoadOptions {
                max_seq: 256,
                weights,
            };
            let m = pollster::block_on(ShadowModel::load_export(&gpu, &src, &opts)).unwrap();
            let mut s = m.new_session(&gpu);
            g.bench_function(format!("{weights}_{PROMPT}"), |b| {
                b.iter(|| {
                    s.reset();
                    pollster::block_on(m.forward(&gpu, &mut s, &prompt, Readout::Argmax, false))
                        .unwrap()
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
