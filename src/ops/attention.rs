//! Causal grouped-query attention of `M` new queries over a KV cache holding each query's
//! positions up to its own (the new keys/values are written to the cache before this runs).
//!
//! `out[m, h] = softmax_j(q[m, h] . k[j, h / group] * scale) v[j, h / group]`, j <= pos(m),
//! with positions and cache rows as the [`KvLayout`] says.
//!
//! # Shapes
//! q `[M, H, D]`; k/v cache `[S, KVH, D]`; out `[M, H, D]`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor};

use super::KvLayout;

const SRC: &str = include_str!("../../shaders/attention.wgsl");
const CPU_SRC: &str = include_str!("../../shaders/cattention.wgsl");
const ATTN_WG: u32 = 64;
/// Lanes of the CPU decode kernel: one SIMD vector on CPU devices.
const CPU_WG: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CpuParams {
    pos0: u32,
    row0: u32,
    heads: u32,
    kv_heads: u32,
    cap: u32,
    scale: f32,
    tab0: u32,
    _p: u32,
}

/// The CPU kernel for `heads` query heads of `head_dim` over `kv_heads` KV heads.
pub(crate) fn cpu_spec(
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    kv: &KvLayout,
) -> KernelSpec {
    let s = KernelSpec::new("cattention", CPU_SRC)
        .with("WG", CPU_WG)
        .with("HD", head_dim as u32)
        .with("GROUP", (heads / kv_heads.max(1)) as u32);
    kv.prelude(s, 6)
}

/// Query rows per dispatch of the CPU kernel that a scores scratch should hold (as
/// `[rows, heads, cap]`); longer prompts take several dispatches.
pub const CPU_SCORE_ROWS: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    pos0: u32,
    heads: u32,
    kv_heads: u32,
    scale: f32,
    tab0: u32,
    _p: [u32; 2],
}

/// The compiled kernel for one head dimension.
pub(crate) fn spec(head_dim: usize, kv: &KvLayout) -> KernelSpec {
    let s = KernelSpec::new("attention", SRC)
        .with("WG", ATTN_WG)
        .with("HD", head_dim as u32)
        .with("ACC", (head_dim as u32).div_ceil(ATTN_WG));
    kv.prelude(s, 5)
}

/// The stride of the CPU kernel's scores (`cap`) and whether every query row's context fits
/// in it: one session's cache holds `cap` positions; paged rows are all below `max_ctx`.
fn score_cap(kv: &KvLayout, k_cache: &Tensor, kv_width: usize, m: usize) -> (usize, bool) {
    match kv {
        KvLayout::Seq { pos0 } => {
            let cap = k_cache.len() / kv_width.max(1);
            (cap, pos0 + m <= cap)
        }
        KvLayout::Paged { max_ctx, .. } => (*max_ctx, true),
    }
}

/// Records attention for `m` queries at the positions `kv` gives. On CPU devices it runs
/// `cattention` over row chunks when `scores` holds `[R, heads, cap]` for R >= 1 (at most R
/// query rows per dispatch), cap the cache's positions or the paged layout's `max_ctx`;
/// otherwise, and on GPUs, the tiled kernel.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    step: &mut Step,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    out: &Tensor,
    m: usize,
    kv: &KvLayout,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scores: &Tensor,
) {
    let gpu = step.gpu();
    let (cap, fits) = score_cap(kv, k_cache, kv_heads * head_dim, m);
    let rows = scores.len() / (heads * cap).max(1);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let (pos0, tab0) = kv.words();
    let table: Vec<&Tensor> = kv.table().into_iter().collect();
    if gpu.is_cpu()
        && rows > 0
        && fits
        && head_dim.is_multiple_of(4)
        && kv_heads > 0
        && heads.is_multiple_of(kv_heads)
    {
        let kernel = gpu.kernel(&cpu_spec(heads, kv_heads, head_dim, kv));
        for row0 in (0..m).step_by(rows) {
            let p = CpuParams {
                pos0,
                row0: row0 as u32,
                heads: heads as u32,
                kv_heads: kv_heads as u32,
                cap: cap as u32,
                scale,
                tab0,
                _p: 0,
            };
            step.dispatch(
                &kernel,
                &p,
                &[&[q, k_cache, v_cache, scores, out], &table[..]].concat(),
                [kv_heads as u32, rows.min(m - row0) as u32, 1],
            );
        }
        return;
    }
    let k = gpu.kernel(&spec(head_dim, kv));
    let p = Params {
        m: m as u32,
        pos0,
        heads: heads as u32,
        kv_heads: kv_heads as u32,
        scale,
        tab0,
        _p: [0; 2],
    };
    step.dispatch(
        &k,
        &p,
        &[&[q, k_cache, v_cache, out], &table[..]].concat(),
        [m as u32, heads as u32, 1],
    );
}

/// CPU reference of [`attention`].
pub fn cpu_attention(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    m: usize,
    pos0: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
) -> Vec<f32> {
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; m * heads * d];
    for i in 0..m {
        for h in 0..heads {
            let g = h / group;
            let qv = &q[(i * heads + h) * d..][..d];
            let ctx = pos0 + i + 1;
            let scores: Vec<f64> = (0..ctx)
                .map(|j| {
                    let kv = &kc[(j * kv_heads + g) * d..][..d];
                    qv.iter()
                        .zip(kv)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
            let sum: f64 = e.iter().sum();
            for t in 0..d {
                let v: f64 = (0..ctx)
                    .map(|j| e[j] * vc[(j * kv_heads + g) * d + t] as f64)
                    .sum();
                out[(i * heads + h) * d + t] = (v / sum) as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    #[test]
    fn attention_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        // (m, pos0, heads, kv_heads, head_dim): decode, prefill, GQA, > one key block, odd dims;
        // CPU devices run cattention (groups of 1, 2, 3, 4, 7 and 16; several rows in chunks
        // of 256 / (pos0 + m) rows, the last one partial; a context past the scores scratch
        // and a head dimension not a multiple of 4 fall back to the tiled kernel).
        for &(m, pos0, h, kvh, d) in &[
            (1, 0, 1, 1, 4),
            (7, 0, 4, 2, 16),
            (1, 130, 4, 1, 32),
            (1, 61, 8, 4, 64),
            (1, 36, 14, 2, 128),
            (1, 9, 16, 1, 8),
            (1, 300, 2, 2, 16),
            (5, 60, 2, 2, 7),
            (3, 1, 8, 8, 128),
            (70, 0, 2, 1, 8),
            (19, 50, 6, 2, 32),
            (12, 0, 3, 1, 4),
        ] {
            let s = pos0 + m;
            let q = rand_vec(m as u64, m * h * d, 1.0);
            let kc = rand_vec(2, s * kvh * d, 1.0);
            let vc = rand_vec(3, s * kvh * d, 1.0);
            let (qt, kt, vt, ot) = (
                gpu.upload_f32("q", &q),
                gpu.upload_f32("k", &kc),
                gpu.upload_f32("v", &vc),
                gpu.zeros("o", m * h * d),
            );
            let scores = gpu.zeros("scores", h * 256);
            let mut st = Step::new(gpu);
            let at = KvLayout::Seq { pos0 };
            attention(&mut st, &qt, &kt, &vt, &ot, m, &at, h, kvh, d, &scores);
            st.submit().unwrap();
            let got = pollster::block_on(gpu.read_f32(&ot, 0, m * h * d)).unwrap();
            let want = cpu_attention(&q, &kc, &vc, m, pos0, h, kvh, d);
            assert_close(
                &format!("attention {m} {pos0} {h} {kvh} {d}"),
                &got,
                &want,
                1e-5,
                1e-4,
            );
        }
    }

    /// A paged pool in f16 (two values a word, blocks out of order) gives the attention of the
    /// f16-rounded keys and values, in the CPU kernel and in the tiled one.
    #[test]
    fn paged_f16_cache_matches_cpu_on_rounded_values() {
        use super::super::KvStore;
        let Some(gpu) = gpu() else { return };
        let (m, h, kvh, d, block) = (3, 4, 2, 16, 4);
        // Rows at positions 5, 6, 7 of one session whose blocks are 2, 0, 3 of 4.
        let (pos0, blocks) = (5usize, [2u32, 0, 3]);
        let s = pos0 + m;
        let w = kvh * d;
        let q = rand_vec(11, m * h * d, 1.0);
        let kc = rand_vec(12, s * w, 1.0);
        let vc = rand_vec(13, s * w, 1.0);
        let round = |v: &[f32]| -> Vec<f32> {
            v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect()
        };
        // Position j is pool row blocks[j / block] * block + j % block, as f16 pairs.
        let pool_words = |v: &[f32]| -> Vec<u32> {
            let mut words = vec![0u32; 4 * block * w / 2];
            for j in 0..s {
                let row = blocks[j / block] as usize * block + j % block;
                for i in (0..w).step_by(2) {
                    let lo = half::f16::from_f32(v[j * w + i]).to_bits() as u32;
                    let hi = half::f16::from_f32(v[j * w + i + 1]).to_bits() as u32;
                    words[(row * w + i) / 2] = lo | (hi << 16);
                }
            }
            words
        };
        // The table: per row its position and where the block list starts, then the list.
        let mut table = Vec::new();
        for i in 0..m {
            table.extend([(pos0 + i) as u32, 2 * m as u32]);
        }
        table.extend(blocks);
        let tt = gpu.upload_u32("table", &table);
        let (qt, kt, vt) = (
            gpu.upload_f32("q", &q),
            gpu.upload_u32("k", &pool_words(&kc)),
            gpu.upload_u32("v", &pool_words(&vc)),
        );
        let want = cpu_attention(&q, &round(&kc), &round(&vc), m, pos0, h, kvh, d);
        let max_ctx = 16;
        // A scores scratch for the CPU kernel, and none (the tiled kernel).
        for scratch in [h * max_ctx * 4, 0] {
            let ot = gpu.zeros("o", m * h * d);
            let scores = gpu.zeros("scores", scratch.max(1));
            let at = KvLayout::Paged {
                table: &tt,
                tab0: 0,
                block,
                max_ctx: if scratch == 0 { 1 << 20 } else { max_ctx },
                store: KvStore::F16,
            };
            let mut st = Step::new(gpu);
            attention(&mut st, &qt, &kt, &vt, &ot, m, &at, h, kvh, d, &scores);
            st.submit().unwrap();
            let got = pollster::block_on(gpu.read_f32(&ot, 0, m * h * d)).unwrap();
            assert_close(
                &format!("paged f16 attention, scratch {scratch}"),
                &got,
                &want,
                1e-5,
                1e-4,
            );
        }
    }
}
