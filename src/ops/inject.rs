//! The first half of the shadow injection, `a = (h - s) W_down^T`, with the subtraction fused
//! into the projection (the second half, `h += alpha * a W_up^T`, is
//! [`super::linear_add`]).
//!
//! # Shapes
//! h, s `[rows, dim]`; w `[rank, dim]`; a `[rows, rank]`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor};

use super::{groups_for, WG};

const SRC: &str = include_str!("../../shaders/inject_down.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    rank: u32,
    _p: u32,
}

/// The compiled kernel of this op.
pub(crate) fn spec() -> KernelSpec {
    KernelSpec::new("inject_down", SRC).with("WG", WG)
}

/// Records `a[r, :] = (h[r, :] - s[r, :]) W^T` for `r < rows`, `W` an f32 `[rank, dim]` buffer.
#[allow(clippy::too_many_arguments)]
pub fn inject_down(
    step: &mut Step,
    h: &Tensor,
    s: &Tensor,
    w: &Tensor,
    a: &Tensor,
    rows: usize,
    dim: usize,
    rank: usize,
) {
    let k = step.gpu().kernel(&spec());
    let p = Params {
        rows: rows as u32,
        dim: dim as u32,
        rank: rank as u32,
        _p: 0,
    };
    step.dispatch_linear(&k, &p, &[h, s, w, a], groups_for(rows * rank, WG));
}

/// CPU reference of [`inject_down`] (f64 accumulation).
pub fn cpu_inject_down(h: &[f32], s: &[f32], w: &[f32], dim: usize, rank: usize) -> Vec<f32> {
    h.chunks(dim)
        .zip(s.chunks(dim))
        .flat_map(|(hr, sr)| {
            (0..rank).map(move |j| {
                (0..dim)
                    .map(|i| (hr[i] - sr[i]) as f64 * w[j * dim + i] as f64)
                    .sum::<f64>() as f32
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    #[test]
    fn inject_down_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for &(rows, dim, rank) in &[(1, 64, 16), (3, 13, 5), (7, 1000, 64), (40, 48, 2)] {
            let (h, s) = (rand_vec(1, rows * dim, 2.0), rand_vec(2, rows * dim, 2.0));
            let w = rand_vec(3, rank * dim, 1.0);
            let up = |n: &str, v: &[f32]| gpu.upload_f32(n, v);
            let (ht, st, wt) = (up("h", &h), up("s", &s), up("w", &w));
            let a = gpu.zeros("a", rows * rank);
            let mut step = Step::new(gpu);
            inject_down(&mut step, &ht, &st, &wt, &a, rows, dim, rank);
            step.submit().unwrap();
            let got = pollster::block_on(gpu.read_f32(&a, 0, rows * rank)).unwrap();
            let want = cpu_inject_down(&h, &s, &w, dim, rank);
            assert_close(
                &format!("inject_down {rows}x{dim} rank {rank}"),
                &got,
                &want,
                1e-5,
                1e-4,
            );
        }
    }
}
