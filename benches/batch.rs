//! The backbone server's batched base pass ([`shadowpeft::model::batch`]) on the `medium`
//! shape (hidden 512, 10 layers, random weights made here): one decode step of 1, 4, 16 and 64
//! fused sessions (each one row at position 32 of its own KV blocks, with an official adapter)
//! in one pass, and 16 decode rows sharing a pass with a 64-row prompt chunk. Criterion's
//! throughput is rows per second, i.e. the aggregate decode steps per second that the
//! server's scheduler can reach with that many sessions, before HTTP and framing.
//!
//! `cargo bench --bench batch` (f32 and q4). Run as a test (`cargo test --benches`): f32 only,
//! each case once. With `SHADOWPEFT_PROFILE=1` it skips criterion and prints, per case, the
//! time of each kernel over 5 passes (see `shadowpeft::gpu::profile`), for the cases whose
//! "weights name" contains the filter argument if one is given (`... --bench "q4 decode_16"`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{adapter, model, MEDIUM};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shadowpeft::model::adapter::Adapter;
use shadowpeft::model::base::BaseModel;
use shadowpeft::model::batch::{Batch, Input, Rows};
use shadowpeft::model::config::ShadowConfig;
use shadowpeft::model::kv_pool::{Blocks, KvBudget, KvPool};
use shadowpeft::model::weights::Weights;
use shadowpeft::ops::KvStore;
use shadowpeft::remote::server::load_base;
use shadowpeft::{Gpu, GpuOptions, WeightFormat};

const PROMPT: usize = 32;
const SESSIONS: usize = 64;
const MAX_ROWS: usize = 128;

/// Deterministic values in [-1, 1).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn ids(seed: u64, n: usize) -> Vec<u32> {
    values(seed, n)
        .iter()
        .map(|v| ((v + 1.0) * 15000.0) as u32)
        .collect()
}

/// A session's inputs: its prompt, one decode token, their shadow state rows.
struct Sess {
    blocks: Blocks,
    prompt: Vec<u32>,
    prompt_s0: Vec<f32>,
    token: Vec<u32>,
    token_s0: Vec<f32>,
}

struct Setup {
    base: BaseModel,
    adapter: Adapter,
    pool: Arc<KvPool>,
    sessions: Vec<Sess>,
}

/// The base, adapter and sessions (their prompts run), and the batch buffers.
fn setup(gpu: &Gpu, weights: WeightFormat) -> (Setup, Batch) {
    let src = model(&MEDIUM);
    let base = pollster::block_on(load_base(gpu, &src, 256, weights)).unwrap();
    let (bytes, config) = adapter(&MEDIUM);
    let mut w = Weights::default();
    w.add_file("adapter.safetensors".into(), Arc::new(bytes))
        .unwrap();
    let sc = ShadowConfig::from_json("shadow_config.json", &config).unwrap();
    let d = MEDIUM.hidden;
    let adapter = Adapter::load(gpu, &w, &sc, MEDIUM.layers, d).unwrap();
    let c = base.cfg();
    let per_position = (2 * c.kv_heads * c.head_dim * 4 * MEDIUM.layers) as u64;
    let budget = KvBudget {
        bytes: per_position * (SESSIONS * 3 * PROMPT) as u64,
        block: 16,
        store: KvStore::F32,
    };
    let pool = KvPool::new(gpu, &base.decoder, budget).unwrap();
    let mut batch = Batch::new(gpu, &base, MAX_ROWS);
    let sessions = (0..SESSIONS as u64)
        .map(|i| {
            let mut blocks = pool.session();
            blocks.fit(3 * PROMPT, 0).unwrap();
            Sess {
                blocks,
                prompt: ids(i, 2 * PROMPT),
                prompt_s0: values(1000 + i, 2 * PROMPT * d),
                token: ids(2000 + i, 1),
                token_s0: values(3000 + i, d),
            }
        })
        .collect();
    let s = Setup {
        base,
        adapter,
        pool,
        sessions,
    };
    // Every session's prompt, so that each decode row attends over 32 positions.
    for chunk in (0..SESSIONS).collect::<Vec<_>>().chunks(MAX_ROWS / PROMPT) {
        let rows: Vec<Rows> = chunk.iter().map(|&i| s.prompt_rows(i, 0, PROMPT)).collect();
        pollster::block_on(batch.run(gpu, &s.base, &s.pool, &rows)).unwrap();
    }
    (s, batch)
}

impl Setup {
    /// Session `i`'s prompt rows `a..b` as fused rows.
    fn prompt_rows(&self, i: usize, a: usize, b: usize) -> Rows<'_> {
        let (s, d) = (&self.sessions[i], MEDIUM.hidden);
        Rows {
            input: Input::Fused {
                adapter: &self.adapter,
                ids: &s.prompt[a..b],
                s0: &s.prompt_s0[a * d..b * d],
            },
            pos: a,
            blocks: s.blocks.ids(),
        }
    }

    /// Session `i`'s decode row at position `PROMPT`.
    fn decode_row(&self, i: usize) -> Rows<'_> {
        let s = &self.sessions[i];
        Rows {
            input: Input::Fused {
                adapter: &self.adapter,
                ids: &s.token,
                s0: &s.token_s0,
            },
            pos: PROMPT,
            blocks: s.blocks.ids(),
        }
    }

    /// The passes measured: (name, rows).
    fn cases(&self, sizes: &[usize]) -> Vec<(String, Vec<Rows<'_>>)> {
        let mut out: Vec<(String, Vec<Rows>)> = sizes
            .iter()
            .map(|&n| {
                let rows = (0..n).map(|i| self.decode_row(i)).collect();
                (format!("decode_{n}"), rows)
            })
            .collect();
        // 16 decode rows with the second half of another session's 64-token prompt.
        let mut mixed: Vec<Rows> = (0..16).map(|i| self.decode_row(i)).collect();
        mixed.push(self.prompt_rows(SESSIONS - 1, PROMPT, 2 * PROMPT));
        out.push(("decode_16_with_prompt_32".into(), mixed));
        out
    }
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
    let profile = shadowpeft::gpu::profile::enabled();
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let (formats, sizes): (&[WeightFormat], &[usize]) = if full || profile {
        (&[WeightFormat::F32, WeightFormat::Q4], &[1, 4, 16, 64])
    } else {
        (&[WeightFormat::F32], &[1, 16])
    };
    for &weights in formats {
        let (s, mut batch) = setup(&gpu, weights);
        let mut g = c.benchmark_group(format!("batch_medium_{weights}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(4));
        let cases = s.cases(sizes);
        for (name, rows) in &cases {
            let pass = |batch: &mut Batch| {
                pollster::block_on(batch.run(&gpu, &s.base, &s.pool, rows)).unwrap();
            };
            if profile {
                if filter
                    .as_ref()
                    .is_some_and(|f| !format!("{weights} {name}").contains(f.as_str()))
                {
                    continue;
                }
                pass(&mut batch);
                let _ = shadowpeft::gpu::profile::report();
                for _ in 0..5 {
                    pass(&mut batch);
                }
                eprintln!(
                    "{weights} {name}, 5 passes:\n{}",
                    shadowpeft::gpu::profile::report()
                );
                continue;
            }
            let n: usize = rows.iter().map(|r| r.len(MEDIUM.hidden)).sum();
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(name.as_str(), |b| b.iter(|| pass(&mut batch)));
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
