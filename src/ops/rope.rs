//! Rotary position embedding (rotate-half layout of Hugging Face Llama/Qwen), applied in place.
//!
//! The cos/sin tables are computed on the host exactly as transformers does: `inv_freq[i] =
//! 1 / theta^(2i/D)` in f32, angle = `pos * inv_freq[i]` rounded to f32, then cos/sin of that
//! f32 angle. A GPU `cos` of large arguments would drift; a table does not.
//!
//! # Shapes
//! tables `[S, D/2]`; x `[M, heads, D]` at positions `pos0..pos0 + M`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{Gpu, KernelSpec, Step, Tensor};

use super::{groups_for, WG};

const SRC: &str = include_str!("../../shaders/rope.wgsl");

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
    head_dim: u32,
    pos0: u32,
}

/// The compiled kernel of this op.
pub(crate) fn spec() -> KernelSpec {
    KernelSpec::new("rope", SRC).with("WG", WG)
}

/// Records RoPE on `rows` tokens of `heads` heads, starting at position `pos0`.
pub fn rope(
    step: &mut Step,
    table: &RopeTable,
    x: &Tensor,
    rows: usize,
    heads: usize,
    pos0: usize,
) {
    let k = step.gpu().kernel(&spec());
    let p = Params {
        rows: rows as u32,
        heads: heads as u32,
        head_dim: table.head_dim as u32,
        pos0: pos0 as u32,
    };
    let n = rows * heads * table.head_dim / 2;
    step.dispatch_linear(&k, &p, &[&table.cos, &table.sin, x], groups_for(n, WG));
}

/// CPU reference of [`rope`] (same tables).
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

    #[test]
    fn rope_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for &(rows, heads, hd, pos0) in &[
            (1, 1, 2, 0),
            (7, 3, 16, 5),
            (2, 4, 128, 1000),
            (33, 2, 64, 0),
        ] {
            let table = RopeTable::new(gpu, 1e6, hd, 1100);
            let (c, s) = RopeTable::host(1e6, hd, 1100);
            let x = rand_vec(rows as u64, rows * heads * hd, 1.0);
            let xt = gpu.upload_f32("x", &x);
            let mut st = Step::new(gpu);
            rope(&mut st, &table, &xt, rows, heads, pos0);
            st.submit().unwrap();
            let got = pollster::block_on(gpu.read_f32(&xt, 0, x.len())).unwrap();
            assert_close(
                "rope",
                &got,
                &cpu_rope(&x, &c, &s, heads, hd, pos0),
                1e-6,
                1e-5,
            );
        }
    }
}
