//! Rotary position embedding (rotate-half layout of Hugging Face Llama/Qwen), fused with
//! Qwen3's per-head q/k RMSNorm and the writes of k and v into the KV cache ([`qk_rope`]).
//!
//! The cos/sin tables are computed on the host exactly as transformers does: `inv_freq[i] =
//! 1 / theta^(2i/D)` in f32, angle = `pos * inv_freq[i]` rounded to f32, then cos/sin of that
//! f32 angle. A GPU `cos` of large arguments would drift; a table does not.
//!
//! # Shapes
//! tables `[S, D/2]`; the joined projection `[M, (heads + 2 kv_heads) D]` (each row q, k, v);
//! q `[M, heads, D]`; the caches' k and v rows `[kv_heads, D]`, one per query row, where its
//! [`KvLayout`] puts them.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{Gpu, KernelSpec, Step, Tensor};

use super::{KvLayout, WG};

const COMMON: &str = include_str!("../../shaders/qk_rope_common.wgsl");
const SRC: &str = include_str!("../../shaders/qk_rope.wgsl");
const CPU_SRC: &str = include_str!("../../shaders/cqk_rope.wgsl");
/// Heads (invocations) per workgroup of the CPU kernel: one SIMD vector on CPU devices.
const CPU_WG: u32 = 8;

/// Device cos/sin tables for positions `0..positions`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub cos: Tensor,
    pub sin: Tensor,
    pub positions: usize,
    pub head_dim: usize,
}

impl RopeTable {
    /// Host values `(cos, sin)`, each `[positions, head_dim / 2]`.
    pub fn host(theta: f64, head_dim: usize, positions: usize) -> (Vec<f32>, Vec<f32>) {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut c = Vec::with_capacity(positions * half);
        let mut s = Vec::with_capacity(positions * half);
        for pos in 0..positions {
            for f in &inv {
                let a = pos as f32 * f;
                c.push((a as f64).cos() as f32);
                s.push((a as f64).sin() as f32);
            }
        }
        (c, s)
    }

    /// Uploads the tables.
    pub fn new(gpu: &Gpu, theta: f64, head_dim: usize, positions: usize) -> Self {
        let (c, s) = Self::host(theta, head_dim, positions);
        RopeTable {
            cos: gpu.upload_f32("rope cos", &c),
            sin: gpu.upload_f32("rope sin", &s),
            positions,
            head_dim,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    pos0: u32,
    tab0: u32,
    eps: f32,
    _p: u32,
}

/// The compiled kernel of this op, for the per-head norms a model has and a KV addressing: on
/// CPU devices `cqk_rope` (an invocation per head, no barriers), elsewhere `qk_rope` (a
/// workgroup per head). A device runs one of them for every row count, so a head's result does
/// not depend on the rows beside it.
pub(crate) fn spec(gpu: &Gpu, norm_q: bool, norm_k: bool, kv: &KvLayout) -> KernelSpec {
    let s = if gpu.is_cpu() {
        KernelSpec::new("cqk_rope", CPU_SRC).with("WG", CPU_WG)
    } else {
        KernelSpec::new("qk_rope", SRC).with("WG", WG)
    };
    let s = s
        .with("NORM_Q", norm_q as u32)
        .with("NORM_K", norm_k as u32)
        .prelude("qk_rope_common", COMMON);
    kv.prelude(s, 9)
}

/// The per-head inputs and outputs of [`qk_rope`]: the joined q/k/v projection in; `q`, and
/// the KV cache's `k` and `v` out.
pub struct QkRope<'a> {
    pub qkv: &'a Tensor,
    /// Per-head RMSNorm weights `[head_dim]` (Qwen3), when the model has them.
    pub q_norm: Option<&'a Tensor>,
    pub k_norm: Option<&'a Tensor>,
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
}

/// Records, for `rows` tokens at the positions `kv` gives, the per-head RMSNorm (when given)
/// and RoPE of `heads` q heads and `kv_heads` k heads, and the copy of the v heads into the
/// cache.
#[allow(clippy::too_many_arguments)]
pub fn qk_rope(
    step: &mut Step,
    table: &RopeTable,
    io: &QkRope,
    rows: usize,
    heads: usize,
    kv_heads: usize,
    kv: &KvLayout,
    eps: f32,
) {
    let k = step.gpu().kernel(&spec(
        step.gpu(),
        io.q_norm.is_some(),
        io.k_norm.is_some(),
        kv,
    ));
    let (pos0, tab0) = kv.words();
    let p = Params {
        rows: rows as u32,
        heads: heads as u32,
        kv_heads: kv_heads as u32,
        head_dim: table.head_dim as u32,
        pos0,
        tab0,
        eps,
        _p: 0,
    };
    let qw = io.q_norm.unwrap_or(io.qkv);
    let kw = io.k_norm.unwrap_or(io.qkv);
    let mut bufs = vec![&table.cos, &table.sin, io.qkv, qw, kw, io.q, io.k, io.v];
    bufs.extend(kv.table());
    let n = rows * (heads + 2 * kv_heads);
    let groups = if step.gpu().is_cpu() {
        n.div_ceil(CPU_WG as usize)
    } else {
        n
    };
    step.dispatch_linear(&k, &p, &bufs, groups as u32);
}

/// CPU reference of the rotary step of [`qk_rope`] (same tables).
pub fn cpu_rope(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    heads: usize,
    head_dim: usize,
    pos0: usize,
) -> Vec<f32> {
    let half = head_dim / 2;
    let mut y = x.to_vec();
    for (r, row) in x.chunks(head_dim).enumerate() {
        let pos = pos0 + r / heads;
        for i in 0..half {
            let (c, s) = (cos[pos * half + i], sin[pos * half + i]);
            y[r * head_dim + i] = row[i] * c - row[i + half] * s;
            y[r * head_dim + i + half] = row[i + half] * c + row[i] * s;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpus, rand_vec};

    /// With and without the per-head norms, k and v landing at an offset in larger cache
    /// buffers; both kernels (`cqk_rope` on CPU devices, `qk_rope`).
    #[test]
    fn qk_rope_matches_cpu() {
        for gpu in gpus() {
            qk_rope_case(gpu);
        }
    }

    fn qk_rope_case(gpu: &Gpu) {
        for &(rows, heads, kv, hd, pos0, norm) in &[
            (1, 1, 1, 2, 0, false),
            (7, 3, 1, 16, 5, true),
            (2, 4, 2, 128, 1000, true),
            (33, 2, 2, 64, 0, false),
            (1, 16, 8, 128, 7, true),
        ] {
            let table = RopeTable::new(gpu, 1e6, hd, 1100);
            let (c, s) = RopeTable::host(1e6, hd, 1100);
            let (qd, kvd) = (heads * hd, kv * hd);
            let all = rand_vec(rows as u64, rows * (qd + 2 * kvd), 1.0);
            let part = |from: usize, n: usize| -> Vec<f32> {
                all.chunks(qd + 2 * kvd)
                    .flat_map(|r| r[from..from + n].to_vec())
                    .collect()
            };
            let (qx, kx, vx) = (part(0, qd), part(qd, kvd), part(qd + kvd, kvd));
            let (qw, kw) = (rand_vec(3, hd, 2.0), rand_vec(4, hd, 2.0));
            let up = |n: &str, v: &[f32]| gpu.upload_f32(n, v);
            let (qkv, qwt, kwt) = (up("qkv", &all), up("qw", &qw), up("kw", &kw));
            let q = gpu.zeros("q out", qx.len());
            let off = pos0 * kvd;
            let k_cache = gpu.zeros("k cache", off + kx.len());
            let v_cache = gpu.zeros("v cache", off + vx.len());
            let mut st = Step::new(gpu);
            let io = QkRope {
                qkv: &qkv,
                q_norm: norm.then_some(&qwt),
                k_norm: norm.then_some(&kwt),
                q: &q,
                k: &k_cache,
                v: &v_cache,
            };
            let at = KvLayout::Seq { pos0 };
            qk_rope(&mut st, &table, &io, rows, heads, kv, &at, 1e-6);
            st.submit().unwrap();
            let got_q = pollster::block_on(gpu.read_f32(&q, 0, qx.len())).unwrap();
            let got_k = pollster::block_on(gpu.read_f32(&k_cache, off, kx.len())).unwrap();
            let got_v = pollster::block_on(gpu.read_f32(&v_cache, off, vx.len())).unwrap();
            let normed = |x: &[f32], w: &[f32]| {
                if norm {
                    crate::ops::cpu_rms_norm(x, w, hd, 1e-6)
                } else {
                    x.to_vec()
                }
            };
            let want_q = cpu_rope(&normed(&qx, &qw), &c, &s, heads, hd, pos0);
            let want_k = cpu_rope(&normed(&kx, &kw), &c, &s, kv, hd, pos0);
            let what = format!(
                "qk_rope (cpu {}) rows={rows} heads={heads}/{kv} d={hd} norm={norm}",
                gpu.is_cpu()
            );
            assert_close(&format!("{what} q"), &got_q, &want_q, 1e-5, 1e-5);
            assert_close(&format!("{what} k"), &got_k, &want_k, 1e-5, 1e-5);
            assert_eq!(got_v, vx, "{what} v");
        }
    }
}
