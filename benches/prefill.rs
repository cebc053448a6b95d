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

mod common;

use common::{model, Shape, MEDIUM, QWEN3_06B};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shadowpeft::{Gpu, GpuOptions, LoadOptions, Readout, ShadowModel, WeightFormat};

const PROMPT: usize = 32;

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
