//! Continuous batching is exact: one base pass over the rows of many sessions gives each
//! session what it gets alone. Mixed batches: fused sessions with an official shadow-peft
//! adapter and with a Hugging Face peft adapter, stepped sessions at different layers (from
//! token ids, and from embed-only starts), different positions, a rewind, prompts run in
//! chunks against prompts run whole, KV blocks of the sessions interleaved in one pool; in
//! every weight format.

mod common;

use std::sync::Arc;

use common::*;
use shadowpeft::model::adapter::Adapter;
use shadowpeft::model::base::BaseModel;
use shadowpeft::model::batch::{Batch, Input, Rows};
use shadowpeft::model::config::{PeftShadowConfig, ShadowConfig};
use shadowpeft::model::kv_pool::{Blocks, KvBudget, KvPool};
use shadowpeft::model::weights::Weights;
use shadowpeft::ops::KvStore;
use shadowpeft::remote::server::load_base;
use shadowpeft::{DirSource, Gpu, GpuOptions, WeightFormat};

const BASE: &str = "qwen3_implicit";
const D: usize = 64;

fn json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn weights(file: &std::path::Path) -> Weights {
    let mut w = Weights::default();
    let bytes = std::fs::read(file).unwrap();
    w.add_file(file.display().to_string(), Arc::new(bytes))
        .unwrap();
    w
}

/// The official adapter of the base's own fixture and the peft adapter of another fixture of
/// the same shape (its numbers differ from its own base's, which is all this test needs).
fn adapters(gpu: &Gpu, layers: usize) -> (Adapter, Adapter) {
    let a = fixture(BASE).join("adapter");
    let sc = ShadowConfig::from_json("shadow_config.json", &json(&a.join("shadow_config.json")))
        .unwrap();
    let official = Adapter::load(
        gpu,
        &weights(&a.join("shadow_adapter.safetensors")),
        &sc,
        layers,
        D,
    )
    .unwrap();
    let p = fixture("peft_mirror").join("adapter");
    let pc = PeftShadowConfig::from_json(
        "adapter_config.json",
        &json(&p.join("adapter_config.json")),
        layers,
    )
    .unwrap();
    let peft = Adapter::load_peft(
        gpu,
        &weights(&p.join("adapter_model.safetensors")),
        &pc.spec,
        layers,
        D,
    )
    .unwrap();
    (official, peft)
}

/// Deterministic values in [-scale, scale).
fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn ids(seed: u64, n: usize) -> Vec<u32> {
    values(seed, n, 1.0)
        .iter()
        .map(|v| ((v + 1.0) * 255.0) as u32 % 512)
        .collect()
}

/// One request of a session's script.
#[derive(Clone)]
enum Step {
    /// Fused tokens at a position, with the adapter (0 official, 1 peft).
    Fused {
        adapter: usize,
        pos: usize,
        ids: Vec<u32>,
        s0: Vec<f32>,
    },
    /// A stepped pass over `ids` at `pos`: starting with layer 0 from the ids, or (embed) with
    /// the embeddings first; the client's injection is a fixed perturbation of each answer.
    Stepped {
        pos: usize,
        ids: Vec<u32>,
        embed: bool,
    },
}

/// The sessions: fused official (prompt, then decoding), fused peft (a prompt the batched run
/// takes in chunks), stepped from ids, stepped from embeddings, fused official with a rewind.
fn scripts() -> Vec<Vec<Step>> {
    let fused = |adapter: usize, pos: usize, n: usize, seed: u64| Step::Fused {
        adapter,
        pos,
        ids: ids(seed, n),
        s0: values(seed + 1000, n * D, 1.0),
    };
    let stepped = |pos: usize, n: usize, seed: u64, embed: bool| Step::Stepped {
        pos,
        ids: ids(seed, n),
        embed,
    };
    vec![
        vec![
            fused(0, 0, 9, 1),
            fused(0, 9, 1, 2),
            fused(0, 10, 1, 3),
            fused(0, 11, 1, 4),
        ],
        vec![fused(1, 0, 13, 5), fused(1, 13, 1, 6), fused(1, 14, 2, 7)],
        vec![stepped(0, 6, 8, false), stepped(6, 1, 9, false)],
        vec![stepped(0, 4, 10, true), stepped(4, 1, 11, true)],
        vec![fused(0, 0, 7, 12), fused(0, 3, 2, 13), fused(0, 5, 1, 14)],
    ]
}

/// A request as the passes see it: rows at a position, layer by layer for stepped ones.
struct Chunk {
    /// Index of the script step it belongs to, for the answer.
    step: usize,
    input: Owned,
    pos: usize,
    /// Rows of the step before this chunk.
    offset: usize,
}

#[derive(Clone)]
enum Owned {
    Fused(usize, Vec<u32>, Vec<f32>),
    First(Vec<u32>),
    Embed(Vec<u32>),
    /// Layer l's input is the previous answer of this step, perturbed.
    Layer(usize),
}

/// The chunks of one session: fused steps cut into pieces of at most `chunk` rows; each
/// stepped step a pass start and one request per later layer.
fn chunks(script: &[Step], layers: usize, chunk: usize) -> Vec<Chunk> {
    let mut out = Vec::new();
    for (i, s) in script.iter().enumerate() {
        match s {
            Step::Fused {
                adapter,
                pos,
                ids,
                s0,
            } => {
                for a in (0..ids.len()).step_by(chunk) {
                    let b = (a + chunk).min(ids.len());
                    out.push(Chunk {
                        step: i,
                        input: Owned::Fused(
                            *adapter,
                            ids[a..b].to_vec(),
                            s0[a * D..b * D].to_vec(),
                        ),
                        pos: pos + a,
                        offset: a,
                    });
                }
            }
            Step::Stepped { pos, ids, embed } => {
                let start = match embed {
                    true => Owned::Embed(ids.clone()),
                    false => Owned::First(ids.clone()),
                };
                out.push(Chunk {
                    step: i,
                    input: start,
                    pos: *pos,
                    offset: 0,
                });
                let first = if *embed { 0 } else { 1 };
                for l in first..layers {
                    out.push(Chunk {
                        step: i,
                        input: Owned::Layer(l),
                        pos: *pos,
                        offset: 0,
                    });
                }
            }
        }
    }
    out
}

/// Runs the sessions' chunks, `per_pass` chunks of each session per pass (in turn), every
/// session on its own blocks of `pool`; returns each session's answers per chunk.
fn run_all(
    gpu: &Gpu,
    base: &BaseModel,
    adapters: &[&Adapter],
    pool: &Arc<KvPool>,
    sessions: &[Vec<Chunk>],
    batched: bool,
) -> Vec<Vec<Vec<f32>>> {
    let mut batch = Batch::new(gpu, base, 64);
    let mut blocks: Vec<Blocks> = sessions.iter().map(|_| pool.session()).collect();
    let mut answers: Vec<Vec<Vec<f32>>> = sessions.iter().map(|_| Vec::new()).collect();
    let mut next = vec![0; sessions.len()];
    loop {
        // The sessions with a chunk left; alone: only the first of them.
        let mut now: Vec<usize> = (0..sessions.len())
            .filter(|&s| next[s] < sessions[s].len())
            .collect();
        if now.is_empty() {
            break;
        }
        if !batched {
            now.truncate(1);
        }
        let mut inputs: Vec<(usize, Owned, usize)> = Vec::new();
        for &s in &now {
            let c = &sessions[s][next[s]];
            let ids_len = |o: &Owned| match o {
                Owned::Fused(_, ids, _) | Owned::First(ids) | Owned::Embed(ids) => Some(ids.len()),
                Owned::Layer(_) => None,
            };
            if let Some(m) = ids_len(&c.input) {
                blocks[s]
                    .fit(c.pos + m, 0)
                    .expect("the pool holds every session");
            }
            inputs.push((s, c.input.clone(), c.pos));
        }
        // Layer inputs: the previous answer of the same session, perturbed as a client's
        // injection would.
        let hidden: Vec<Vec<f32>> = inputs
            .iter()
            .map(|(s, o, _)| match o {
                Owned::Layer(l) => {
                    let prev = answers[*s].last().expect("a layer follows its pass start");
                    let noise = values(*l as u64 * 31 + *s as u64, prev.len(), 0.05);
                    prev.iter().zip(noise).map(|(a, b)| a + b).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        let rows: Vec<Rows> = inputs
            .iter()
            .zip(&hidden)
            .map(|((s, o, pos), h)| Rows {
                input: match o {
                    Owned::Fused(a, ids, s0) => Input::Fused {
                        adapter: adapters[*a],
                        ids,
                        s0,
                    },
                    Owned::First(ids) => Input::FirstLayer { ids },
                    Owned::Embed(ids) => Input::Embed { ids },
                    Owned::Layer(l) => Input::Layer {
                        layer: *l,
                        hidden: h,
                    },
                },
                pos: *pos,
                blocks: blocks[*s].ids(),
            })
            .collect();
        let outs = pollster::block_on(batch.run(gpu, base, pool, &rows)).unwrap();
        for ((s, _, _), out) in inputs.iter().zip(outs) {
            answers[*s].push(out);
            next[*s] += 1;
        }
    }
    answers
}

/// Each step's whole answer, gathered from its chunks (the last chunk of a stepped step is
/// its final layer).
fn per_step(chunks: &[Chunk], answers: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = Vec::new();
    for (c, a) in chunks.iter().zip(answers) {
        if out.len() <= c.step {
            out.push(Vec::new());
        }
        match c.input {
            Owned::Fused(..) => {
                assert_eq!(out[c.step].len(), c.offset * D);
                out[c.step].extend_from_slice(a);
            }
            _ => out[c.step] = a.clone(),
        }
    }
    out
}

fn argmax_rows(h: &[f32], head: &[f32], vocab: usize) -> Vec<u32> {
    h.chunks(D)
        .map(|row| {
            let logits: Vec<f32> = (0..vocab)
                .map(|v| {
                    head[v * D..(v + 1) * D]
                        .iter()
                        .zip(row)
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect();
            let mut best = 0;
            for (i, &x) in logits.iter().enumerate() {
                if x > logits[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

/// The base's (tied) LM head `[vocab, D]` and its vocabulary, for greedy tokens.
fn lm_head(dir: &std::path::Path) -> (Vec<f32>, usize) {
    let hw = pollster::block_on(Weights::load_hf(&DirSource::open(dir).unwrap())).unwrap();
    let vocab = 512;
    (
        hw.get("model.embed_tokens.weight", &[vocab, D]).unwrap(),
        vocab,
    )
}

#[test]
fn mixed_batches_equal_single_sessions_in_every_weight_format() {
    let Some(gpu) = gpu() else { return };
    let dir = fixture(BASE).join("base");
    let (head, vocab) = lm_head(&dir);
    for format in [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Q8,
        WeightFormat::Q4,
    ] {
        let src = DirSource::open(&dir).unwrap();
        let base = pollster::block_on(load_base(gpu, &src, 64, format)).unwrap();
        let layers = base.decoder.num_layers();
        let (official, peft) = adapters(gpu, layers);
        let ads = [&official, &peft];
        let budget = KvBudget {
            bytes: 1 << 20,
            block: 4,
            store: KvStore::F32,
        };
        let pool = KvPool::new(gpu, &base.decoder, budget).unwrap();
        let scripts = scripts();
        // Alone: every step whole, one session at a time. Batched: all sessions at once,
        // fused prompts in chunks of 4 rows, so that positions and chunk sizes differ.
        let whole: Vec<Vec<Chunk>> = scripts.iter().map(|s| chunks(s, layers, 64)).collect();
        let cut: Vec<Vec<Chunk>> = scripts.iter().map(|s| chunks(s, layers, 4)).collect();
        let alone = run_all(gpu, &base, &ads, &pool, &whole, false);
        let batched = run_all(gpu, &base, &ads, &pool, &cut, true);
        assert_eq!(
            pool.free_blocks(),
            pool.blocks(),
            "blocks went back to the pool"
        );
        let mut worst = 0.0f32;
        for (s, script) in scripts.iter().enumerate() {
            let want = per_step(&whole[s], &alone[s]);
            let got = per_step(&cut[s], &batched[s]);
            for (i, step) in script.iter().enumerate() {
                let what = format!("{format:?} session {s} step {i}");
                let (e, m) = max_err(&got[i], &want[i]);
                assert!(
                    e <= REL_TOL * m,
                    "{what}: max abs error {e} > {REL_TOL} x {m}"
                );
                worst = worst.max(e / m);
                if matches!(step, Step::Fused { .. }) || i + 1 == script.len() {
                    assert_eq!(
                        argmax_rows(&got[i], &head, vocab),
                        argmax_rows(&want[i], &head, vocab),
                        "{what}: greedy tokens"
                    );
                }
            }
        }
        eprintln!("{format:?}: batched against alone, worst error {worst:.2e} of max |value|");
    }
}

/// Greatest relative error of the f16 KV cache against the f32 one, in final hidden states
/// (of max |value|). Keys and values rounded to f16 (11 significant bits, relative error at
/// most 2^-11 = 4.9e-4 each) move this fixture's outputs by 1.6e-3 of their scale at worst;
/// the bound leaves a margin of 6.
const F16_KV_TOL: f32 = 1e-2;

/// `--kv f16`: the same mixed batches with keys and values stored in f16 (half the pool's
/// memory a position) stay within F16_KV_TOL of the f32 cache, with the same greedy tokens.
#[test]
fn f16_kv_cache_stays_close_to_f32() {
    let Some(gpu) = gpu() else { return };
    let dir = fixture(BASE).join("base");
    let (head, vocab) = lm_head(&dir);
    let src = DirSource::open(&dir).unwrap();
    let base = pollster::block_on(load_base(gpu, &src, 64, WeightFormat::F32)).unwrap();
    let layers = base.decoder.num_layers();
    let (official, peft) = adapters(gpu, layers);
    let ads = [&official, &peft];
    let pool = |store| {
        let budget = KvBudget {
            bytes: 1 << 20,
            block: 4,
            store,
        };
        KvPool::new(gpu, &base.decoder, budget).unwrap()
    };
    let (p32, p16) = (pool(KvStore::F32), pool(KvStore::F16));
    assert_eq!(p16.bytes_per_block() * 2, p32.bytes_per_block());
    let scripts = scripts();
    let cut: Vec<Vec<Chunk>> = scripts.iter().map(|s| chunks(s, layers, 4)).collect();
    let want = run_all(gpu, &base, &ads, &p32, &cut, true);
    let got = run_all(gpu, &base, &ads, &p16, &cut, true);
    let mut worst = 0.0f32;
    for (s, script) in scripts.iter().enumerate() {
        let (want, got) = (per_step(&cut[s], &want[s]), per_step(&cut[s], &got[s]));
        for i in 0..script.len() {
            let (e, m) = max_err(&got[i], &want[i]);
            worst = worst.max(e / m);
            assert!(
                e <= F16_KV_TOL * m,
                "session {s} step {i}: max abs error {e} > {F16_KV_TOL} x {m}"
            );
            assert_eq!(
                argmax_rows(&got[i], &head, vocab),
                argmax_rows(&want[i], &head, vocab),
                "session {s} step {i}: greedy tokens"
            );
        }
    }
    eprintln!("f16 KV cache against f32: worst error {worst:.2e} of max |value|");
    assert!(
        worst > 0.0,
        "the f16 pool rounds: its outputs differ from f32's"
    );
}

/// Errors, never panics, for work a pass cannot run: too many rows, blocks that do not hold
/// the positions, a layer past the last, rows of the wrong width.
#[test]
fn bad_batches_are_refused_clearly() {
    let Some(gpu) = gpu() else { return };
    let src = DirSource::open(fixture(BASE).join("base")).unwrap();
    let base = pollster::block_on(load_base(gpu, &src, 64, WeightFormat::F32)).unwrap();
    let pool = KvPool::new(
        gpu,
        &base.decoder,
        KvBudget {
            bytes: 1 << 20,
            block: 4,
            store: KvStore::F32,
        },
    )
    .unwrap();
    let mut batch = Batch::new(gpu, &base, 4);
    let mut b = pool.session();
    b.fit(8, 0).unwrap();
    let ids6 = [1u32; 6];
    let ids4 = [1u32; 4];
    let h = vec![0.0f32; 3 * D + 1];
    let cases: Vec<(Rows, &str)> = vec![
        (
            Rows {
                input: Input::FirstLayer { ids: &ids6 },
                pos: 0,
                blocks: b.ids(),
            },
            "exceed",
        ),
        (
            Rows {
                input: Input::FirstLayer { ids: &ids4 },
                pos: 6,
                blocks: b.ids(),
            },
            "blocks do not hold",
        ),
        (
            Rows {
                input: Input::Layer {
                    layer: 7,
                    hidden: &h[..D],
                },
                pos: 0,
                blocks: b.ids(),
            },
            "layer 7",
        ),
        (
            Rows {
                input: Input::Layer {
                    layer: 1,
                    hidden: &h,
                },
                pos: 0,
                blocks: b.ids(),
            },
            "whole rows",
        ),
    ];
    for (rows, want) in cases {
        let e = pollster::block_on(batch.run(gpu, &base, &pool, &[rows]))
            .expect_err("refused")
            .to_string();
        assert!(e.contains(want), "`{e}` does not say `{want}`");
    }
}

/// A pool hands out whole blocks, all or nothing, keeps a block per running session from new
/// ones, takes blocks back on a rewind and when a session ends, and is cut to what one
/// binding holds.
#[test]
fn kv_blocks_are_a_budget() {
    let Some(gpu) = gpu() else { return };
    let src = DirSource::open(fixture(BASE).join("base")).unwrap();
    let base = pollster::block_on(load_base(gpu, &src, 64, WeightFormat::F32)).unwrap();
    // 3 layers x (k, v) x 2 heads x 16 = 768 bytes a position; blocks of 4: 3072 bytes.
    let budget = |bytes| KvBudget {
        bytes,
        block: 4,
        store: KvStore::F32,
    };
    let pool = KvPool::new(gpu, &base.decoder, budget(10 * 3072 + 100)).unwrap();
    assert_eq!(
        (pool.blocks(), pool.bytes_per_block(), pool.bytes()),
        (10, 3072, 30720)
    );
    let (mut a, mut b) = (pool.session(), pool.session());
    a.fit(13, 0).unwrap();
    assert_eq!(
        (a.ids().len(), a.capacity(), pool.free_blocks()),
        (4, 16, 6)
    );
    // b is new: it may not take the block kept for a.
    let e = b.fit(24, pool.holders()).unwrap_err();
    assert_eq!((e.needed, e.free), (6, 6));
    assert_eq!(
        (b.ids().len(), pool.free_blocks()),
        (0, 6),
        "all or nothing"
    );
    b.fit(20, pool.holders()).unwrap();
    assert_eq!((pool.free_blocks(), pool.holders()), (1, 2));
    // A rewind gives back the blocks past the new end.
    a.fit(5, 0).unwrap();
    assert_eq!((a.ids().len(), pool.free_blocks()), (2, 3));
    drop(b);
    assert_eq!((pool.free_blocks(), pool.holders()), (8, 1));
    drop(a);
    assert_eq!((pool.free_blocks(), pool.holders()), (10, 0));
    let e = KvPool::new(gpu, &base.decoder, budget(3000)).err().unwrap();
    assert!(e.to_string().contains("holds no block"), "{e}");
}

/// An adapter's kernels are compiled for every row count before its first pass
/// (`Adapter::precompile`, which the server runs when an adapter is uploaded): passes of 1 to
/// 16 fused rows, with both adapters, then with a prompt, compile no adapter kernel.
#[test]
fn adapter_kernels_compile_before_the_first_pass() {
    if gpu().is_none() {
        return;
    }
    // A device of its own, whose kernel cache sees no other test's compiles.
    let gpu = &pollster::block_on(Gpu::new(GpuOptions::default())).unwrap();
    let src = DirSource::open(fixture(BASE).join("base")).unwrap();
    let base = pollster::block_on(load_base(gpu, &src, 64, WeightFormat::F32)).unwrap();
    let (official, peft) = adapters(gpu, base.decoder.num_layers());
    official.precompile(gpu);
    peft.precompile(gpu);
    // Both forms of the step: `adapter_step4` for widths that are multiples of 4, else
    // `adapter_step`.
    let adapter_kernels = || gpu.compiled("adapter_step") + gpu.compiled("adapter_step4");
    let compiled = adapter_kernels();
    assert!(compiled > 0, "precompile compiled nothing");
    let budget = KvBudget {
        bytes: 1 << 22,
        block: 4,
        store: KvStore::F32,
    };
    let pool = KvPool::new(gpu, &base.decoder, budget).unwrap();
    let mut batch = Batch::new(gpu, &base, 64);
    let prompt = ids(7, 16);
    let s0 = values(8, 16 * D, 1.0);
    for n in [1, 2, 3, 5, 8, 13, 16] {
        let mut blocks: Vec<Blocks> = (0..=n).map(|_| pool.session()).collect();
        for b in &mut blocks {
            b.fit(16, 0).unwrap();
        }
        // n one-row sessions, alternately with each adapter, and (from 8 on) a 16-row prompt.
        let mut rows: Vec<Rows> = (0..n)
            .map(|i| Rows {
                input: Input::Fused {
                    adapter: if i % 2 == 0 { &official } else { &peft },
                    ids: &prompt[i..i + 1],
                    s0: &s0[i * D..(i + 1) * D],
                },
                pos: 0,
                blocks: blocks[i].ids(),
            })
            .collect();
        if n >= 8 {
            rows.push(Rows {
                input: Input::Fused {
                    adapter: &official,
                    ids: &prompt,
                    s0: &s0,
                },
                pos: 0,
                blocks: blocks[n].ids(),
            });
        }
        pollster::block_on(batch.run(gpu, &base, &pool, &rows)).unwrap();
        assert_eq!(
            adapter_kernels(),
            compiled,
            "a pass of {n} sessions compiled an adapter kernel"
        );
    }
}
