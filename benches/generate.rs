//! Prefill and decode throughput (tokens/s) of the bundled tiny model, attached and detached,
//! with f32, f16, int8 and int4 weights, on whatever adapter wgpu finds (lavapipe on machines without a GPU).
//!
//! `cargo bench --bench generate`. Criterion reports time per iteration and, through
//! `Throughput::Elements`, tokens per second.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shadowpeft::{
    DirSource, Gpu, GpuOptions, LoadOptions, Mode, Readout, ShadowModel, WeightFormat,
};

const PROMPT: usize = 32;
const DECODE: usize = 16;

/// The tiny model detached and attached, with each weight format.
fn models(gpu: &Gpu) -> Vec<(String, ShadowModel)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let dir = |d: &str| DirSource::open(root.join(d)).unwrap();
    let none: Option<&DirSource> = None;
    let mut out = Vec::new();
    for weights in WeightFormat::ALL {
        let opts = LoadOptions {
            max_seq: 256,
            weights,
        };
        out.push((
            format!("detached_{weights}"),
            pollster::block_on(ShadowModel::load_export(gpu, &dir("export"), &opts)).unwrap(),
        ));
        out.push((
            format!("attached_{weights}"),
            pollster::block_on(ShadowModel::load_adapter(
                gpu,
                &dir("base"),
                &dir("adapter"),
                none,
                Mode::Attached,
                &opts,
            ))
            .unwrap(),
        ));
    }
    out
}

fn bench(c: &mut Criterion) {
    let gpu = match pollster::block_on(Gpu::new(GpuOptions::default())) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("no GPU adapter, nothing to measure: {e}");
            return;
        }
    };
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| (i * 37 + 11) % 1000).collect();
    for (name, model) in models(&gpu) {
        let mut g = c.benchmark_group(format!("tiny_{name}"));
        g.sample_size(20).measurement_time(Duration::from_secs(8));
        g.throughput(Throughput::Elements(PROMPT as u64));
        g.bench_function("prefill_32", |b| {
            let mut s = model.new_session(&gpu);
            b.iter(|| {
                s.reset();
                pollster::block_on(model.forward(&gpu, &mut s, &prompt, Readout::Argmax, false))
                    .unwrap()
            })
        });
        g.throughput(Throughput::Elements(DECODE as u64));
        g.bench_function("decode_16", |b| {
            let mut s = model.new_session(&gpu);
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    s.reset();
                    let mut tok = pollster::block_on(model.forward(
                        &gpu,
                        &mut s,
                        &prompt,
                        Readout::Argmax,
                        false,
                    ))
                    .unwrap()
                    .token
                    .unwrap();
                    let t0 = Instant::now();
                    for _ in 0..DECODE {
                        tok = pollster::block_on(model.forward(
                            &gpu,
                            &mut s,
                            &[tok],
                            Readout::Argmax,
                            false,
                        ))
                        .unwrap()
                        .token
                        .unwrap();
                    }
                    total += t0.elapsed();
                }
                total
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
