//! Random-weight models of real shapes for the benches (no model files needed).

// Each bench uses a part of this module.
#![allow(dead_code)]

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use shadowpeft::MemSource;

pub struct Shape {
    pub name: &'static str,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub inter: usize,
    pub vocab: usize,
}

pub const MEDIUM: Shape = Shape {
    name: "medium",
    hidden: 512,
    layers: 10,
    heads: 8,
    kv_heads: 4,
    head_dim: 64,
    inter: 1536,
    vocab: 32000,
};

pub const QWEN3_06B: Shape = Shape {
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
pub fn random(n: usize, std: f32, seed: &mut u64) -> Vec<u8> {
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
pub fn model(s: &Shape) -> MemSource {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let (h, d) = (s.hidden, s.head_dim);
    let mut specs: Vec<(String, Vec<usize>, f32)> = vec![
        ("model.embed_tokens.weight".into(), vec![s.vocab, h], 0.02),
        ("model.norm.weight".into(), vec![h], 0.0),
    ];
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
            specs.push((format!("{p}.{n}.weight"), shape, 0.02));
        }
        for (n, len) in [
            ("input_layernorm", h),
            ("post_attention_layernorm", h),
            ("self_attn.q_norm", d),
            ("self_attn.k_norm", d),
        ] {
            specs.push((format!("{p}.{n}.weight"), vec![len], 0.0));
        }
    }
    let weights = safetensors_of(&specs, &mut seed);
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

/// Safetensors bytes of f32 tensors `(name, shape, std)` with random values (std 0: ones).
pub fn safetensors_of(specs: &[(String, Vec<usize>, f32)], seed: &mut u64) -> Vec<u8> {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = specs
        .iter()
        .map(|(name, shape, std)| {
            let n = shape.iter().product();
            let bytes = if *std == 0.0 {
                1.0f32.to_le_bytes().repeat(n)
            } else {
                random(n, *std, seed)
            };
            (name.clone(), shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, shape, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// An official shadow-peft adapter (`shadow_adapter.safetensors`: injection rank 16, gates of
/// 10) for a base of `s`'s shape, with random weights; and its `shadow_config.json`.
pub fn adapter(s: &Shape) -> (Vec<u8>, serde_json::Value) {
    let (n, h, r, g) = (s.layers - 1, s.hidden, 16, 10);
    let p = "shadow_update_model";
    let mut specs = vec![
        (
            "shadow_injection_model.injection_downs".to_string(),
            vec![n, h, r],
            0.02,
        ),
        (
            "shadow_injection_model.injection_ups".to_string(),
            vec![n, r, h],
            0.02,
        ),
        (format!("{p}.hidden_norm.weight"), vec![h], 0.0),
        (format!("{p}.hidden_norm.bias"), vec![h], 0.02),
    ];
    for k in 0..n {
        specs.push((
            format!("{p}.update_transforms.{k}.0.weight"),
            vec![g, h],
            0.05,
        ));
        specs.push((
            format!("{p}.update_transforms.{k}.3.weight"),
            vec![h, g],
            0.05,
        ));
        specs.push((format!("{p}.update_gates.{k}.0.weight"), vec![g, h], 0.05));
        specs.push((format!("{p}.update_gates.{k}.2.weight"), vec![h, g], 0.05));
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let config = serde_json::json!({
        "alpha": 0.1,
        "injection_hidden_size": r,
        "gate_hidden_size": g,
    });
    (safetensors_of(&specs, &mut seed), config)
}
