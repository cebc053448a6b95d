//! RMSNorm: `y = x * rsqrt(mean(x^2) + eps) * w`, per row (Qwen/Llama `RMSNorm`, computed in
//! f32). Also Qwen3's per-head q/k norm with rows = tokens * heads and dim = head_dim.
//!
//! # Shapes
//! x `[rows, dim]` from `x_off`; w `[dim]`; y `[rows, dim]` from `y_off`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{Gpu, KernelSpec, Step, Tensor};

use super::WG;

const SRC: &str = include_str!("../../shaders/rms_norm.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    x_off: u32,
    y_off: u32,
    _p: [u32; 3],
}

/// The compiled kernel of this op.
pub(crate) fn spec(gpu: &Gpu) -> KernelSpec {
    KernelSpec::new("rms_norm", SRC).with("WG", super::reduce_wg(gpu, WG))
}

/// Records an RMSNorm of `rows` rows of width `dim`.
pub fn rms_norm(
    step: &mut Step,
    x: &Tensor,
    x_off: usize,
    w: &Tensor,
    y: &Tensor,
    y_off: usize,
    rows: usize,
    dim: usize,
    eps: f32,
) {
    let k = step.gpu().kernel(&spec(step.gpu()));
    let p = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        x_off: x_off as u32,
        y_off: y_off as u32,
        _p: [0; 3],
    };
    step.dispatch_linear(&k, &p, &[x, w, y], rows as u32);
}

/// CPU reference of [`rms_norm`].
pub fn cpu_rms_norm(x: &[f32], w: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|r| {
            let ms = r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / dim as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            r.iter()
                .zip(w)
                .map(move |(v, w)| (*v as f64 * inv * *w as f64) as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    #[test]
    fn rms_norm_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for &(rows, dim) in &[(1, 1), (7, 13), (3, 1000), (65, 64), (2, 4096)] {
            let x = rand_vec(rows as u64, rows * dim, 3.0);
            let w = rand_vec(dim as u64, dim, 2.0);
            let (xt, wt, yt) = (
                gpu.upload_f32("x", &x),
                gpu.upload_f32("w", &w),
                gpu.zeros("y", rows * dim + 5),
            );
            let mut s = Step::new(gpu);
            rms_norm(&mut s, &xt, 0, &wt, &yt, 5, rows, dim, 1e-6);
            s.submit().unwrap();
            let got = pollster::block_on(gpu.read_f32(&yt, 5, rows * dim)).unwrap();
            assert_close(
                &format!("rms_norm {rows}x{dim}"),
                &got,
                &cpu_rms_norm(&x, &w, dim, 1e-6),
                1e-5,
                1e-4,
            );
        }
    }
}
