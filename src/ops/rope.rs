//! Rotary position embedding (rotate-half layout of Hugging Face Llama/Qwen), fused with
//! Qwen3's per-head q/k RMSNorm and the write of k into the KV cache ([`qk_rope`]).
//!
//! The cos/sin tables are computed on the host exactly as transformers does: `inv_freq[i] =
//! 1 / theta^(2i/D)` in f32, angle = `pos * inv_freq[i]` rounded to f32, then cos/sin of that
//! f32 angle. A GPU `cos` of large arguments would drift; a table does not.
//!
//! # Shapes
//! tables `[S, D/2]`; q `[M, heads, D]`, k `[M, kv_heads, D]` at positions `pos0..pos0 + M`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{Gpu, KernelSpec, Step, Tensor};

use super::WG;

const SRC: &str = include_str!("../../shaders/qk_rope.wgsl");

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
    k_off: u32,
    eps: f32,
    _p: u32,
}

/// The compiled kernel of this op, for the per-head norms a model has.
pub(crate) fn spec(norm_q: bool, norm_k: bool) -> KernelSpec {
    KernelSpec::new("qk_rope", SRC)
        .with("WG", WG)
        .with("NORM_Q", norm_q as u32)
        .with("NORM_K", norm_k as u32)
}

/// The per-head inputs and outputs of [`qk_rope`]: raw projections in, `q` and the KV
/// cache's `k` (from element `k_off`) out.
pub struct QkRope<'a> {
    pub q_in: &'a Tensor,
    pub k_in: &'a Tensor,
    /// Per-head RMSNorm weights `[head_dim]` (Qwen3), when the model has them.
    pub q_norm: Option<&'a Tensor>,
    pub k_norm: Option<&'a Tensor>,
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub k_off: usize,
}

/// Records, for `rows` tokens at positions `pos0..`, the per-head RMSNorm (when given) and
/// RoPE of `heads` q heads and `kv_heads` k heads.
pub fn qk_rope(
    step: &mut Step,
    table: &RopeTable,
    io: &QkRope,
    rows: usize,
    heads: usize,
    kv_heads: usize,
    pos0: usize,
    eps: f32,
) {
    let k = step
        .gpu()
        .kernel(&spec(io.q_norm.is_some(), io.k_norm.is_some()));
    let p = Params {
        rows: rows as u32,
        heads: heads as u32,
        kv_heads: kv_heads as u32,
        head_dim: table.head_dim as u32,
        pos0: pos0 as u32,
        k_off: io.k_off as u32,
        eps,
        _p: 0,
    };
    let qw = io.q_norm.unwrap_or(io.q_in);
    let kw = io.k_norm.unwrap_or(io.k_in);
    step.dispatch_linear(
        &k,
        &p,
        &[&table.cos, &table.sin, io.q_in, io.k_in, qw, kw, io.q, io.k],
        (rows * (heads + kv_heads)) as u32,
    );
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
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    /// With and without the per-head norms, k landing at an offset in a larger cache buffer.
    #[test]
    fn qk_rope_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for &(rows, heads, kv, hd, pos0, norm) in &[
            (1, 1, 1, 2, 0, false),
            (7, 3, 1, 16, 5, true),
            (2, 4, 2, 128, 1000, true),
            (33, 2, 2, 64, 0, false),
            (1, 16, 8, 128, 7, true),
        ] {
            let table = RopeTable::new(gpu, 1e6, hd, 1100);
            let (c, s) = RopeTable::host(1e6, hd, 1100);
            let qx = rand_vec(rows as u64, rows * heads * hd, 1.0);
            let kx = rand_vec(rows as u64 + 50, rows * kv * hd, 1.0);
            let (qw, kw) = (rand_vec(3, hd, 2.0), rand_vec(4, hd, 2.0));
            let up = |n: &str, v: &[f32]| gpu.upload_f32(n, v);
            let (qt, kt, qwt, kwt) = (up("q", &qx), up("k", &kx), up("qw", &qw), up("kw", &kw));
            let q = gpu.zeros("q out", qx.len());
            let off = (pos0 + 3) * kv * hd;
            let cache = gpu.zeros("cache", off + kx.len());
            let mut st = Step::new(gpu);
            let io = QkRope {
                q_in: &qt,
                k_in: &kt,
                q_norm: norm.then_some(&qwt),
                k_norm: norm.then_some(&kwt),
                q: &q,
                k: &cache,
                k_off: off,
            };
            qk_rope(&mut st, &table, &io, rows, heads, kv, pos0, 1e-6);
            st.submit().unwrap();
            let got_q = pollster::block_on(gpu.read_f32(&q, 0, qx.len())).unwrap();
            let got_k = pollster::block_on(gpu.read_f32(&cache, off, kx.len())).unwrap();
            let normed = |x: &[f32], w: &[f32]| {
                if norm {
                    crate::ops::cpu_rms_norm(x, w, hd, 1e-6)
                } else {
                    x.to_vec()
                }
            };
            let want_q = cpu_rope(&normed(&qx, &qw), &c, &s, heads, hd, pos0);
            let want_k = cpu_rope(&normed(&kx, &kw), &c, &s, kv, hd, pos0);
            let what = format!("qk_rope rows={rows} heads={heads}/{kv} d={hd} norm={norm}");
            assert_close(&format!("{what} q"), &got_q, &want_q, 1e-5, 1e-5);
            assert_close(&format!("{what} k"), &got_k, &want_k, 1e-5, 1e-5);
        }
    }
}
