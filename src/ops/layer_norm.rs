//! LayerNorm with affine weight and bias (`torch.nn.LayerNorm`, biased variance): the shadow
//! update's shared `hidden_norm`.
//!
//! # Shapes
//! x `[rows, dim]`; w, b `[dim]`; y `[rows, dim]`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor};

use super::WG;

const SRC: &str = include_str!("../../shaders/layer_norm.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _p: u32,
}

/// The compiled kernel of this op.
pub(crate) fn spec() -> KernelSpec {
    KernelSpec::new("layer_norm", SRC).with("WG", WG)
}

/// Records a LayerNorm of `rows` rows of width `dim`.
pub fn layer_norm(
    step: &mut Step,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    y: &Tensor,
    rows: usize,
    dim: usize,
    eps: f32,
) {
    let k = step.gpu().kernel(&spec());
    let p = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        _p: 0,
    };
    step.dispatch_linear(&k, &p, &[x, w, b, y], rows as u32);
}

/// CPU reference of [`layer_norm`].
pub fn cpu_layer_norm(x: &[f32], w: &[f32], b: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    x.chunks(dim)
        .flat_map(|r| {
            let mean = r.iter().map(|v| *v as f64).sum::<f64>() / dim as f64;
            let var = r.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            r.iter()
                .zip(w.iter().zip(b))
                .map(move |(v, (w, b))| ((*v as f64 - mean) * inv * *w as f64 + *b as f64) as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    #[test]
    fn layer_norm_matches_cpu() {
        let Some(gpu) = gpu() else { return };
        for &(rows, dim) in &[(1, 2), (7, 13), (3, 1000), (66, 64)] {
            let x: Vec<f32> = rand_vec(rows as u64, rows * dim, 3.0)
                .iter()
                .map(|v| v + 1.5)
                .collect();
            let w = rand_vec(dim as u64, dim, 2.0);
            let b = rand_vec(dim as u64 + 1, dim, 2.0);
            let t = |n: &str, v: &[f32]| gpu.upload_f32(n, v);
            let (xt, wt, bt, yt) = (
                t("x", &x),
                t("w", &w),
                t("b", &b),
                gpu.zeros("y", rows * dim),
            );
            let mut s = Step::new(gpu);
            layer_norm(&mut s, &xt, &wt, &bt, &yt, rows, dim, 1e-5);
            s.submit().unwrap();
            let got = pollster::block_on(gpu.read_f32(&yt, 0, rows * dim)).unwrap();
            assert_close(
                &format!("layer_norm {rows}x{dim}"),
                &got,
                &cpu_layer_norm(&x, &w, &b, dim, 1e-5),
                1e-5,
                1e-4,
            );
        }
    }
}
