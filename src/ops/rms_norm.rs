//! RMSNorm: `y = x * rsqrt(mean(x^2) + eps) * w`, per row (Qwen/Llama `RMSNorm`, computed in
//! f32). Also Qwen3's per-head q/k norm with rows = tokens * heads and dim = head_dim.
//!
//! # Shapes
//! x `[rows, dim]` from `x_off`; w `[dim]`; y `[rows, dim]` from `y_off`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{Gpu, KernelSpec, Step, Tensor};

use super::WG;

const COMMON: &str = include_str!("../../shaders/rms_norm_common.wgsl");
const SRC: &str = include_str!("../../shaders/rms_norm.wgsl");
const CPU_SRC: &str = include_str!("../../shaders/crms_norm.wgsl");
/// Rows (invocations) per workgroup of the CPU kernel: one SIMD vector on CPU devices.
const CPU_WG: u32 = 8;

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

/// The kernel for rows of width `dim` whose offsets are `x_off` and `y_off`, and whether it
/// is the CPU one (`crms_norm`, one row per invocation) or the workgroup-per-row `rms_norm`.
pub(crate) fn spec(gpu: &Gpu, dim: usize, x_off: usize, y_off: usize) -> (KernelSpec, bool) {
    if cpu_kernel(gpu, dim, x_off, y_off) {
        let s = KernelSpec::new("crms_norm", CPU_SRC).with("WG", CPU_WG);
        (s.prelude("rms_norm_common", COMMON), true)
    } else {
        let s = KernelSpec::new("rms_norm", SRC).with("WG", super::reduce_wg(gpu, WG));
        (s.prelude("rms_norm_common", COMMON), false)
    }
}

/// Whether `rms_norm` runs the CPU kernel: on CPU devices, for rows of vec4s. Every row of a
/// width runs the same kernel, whatever the row count, so a row's result does not depend on
/// the rows beside it.
fn cpu_kernel(gpu: &Gpu, dim: usize, x_off: usize, y_off: usize) -> bool {
    gpu.is_cpu() && dim.is_multiple_of(4) && x_off.is_multiple_of(4) && y_off.is_multiple_of(4)
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
    let (spec, cpu) = spec(step.gpu(), dim, x_off, y_off);
    let k = step.gpu().kernel(&spec);
    let p = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        x_off: x_off as u32,
        y_off: y_off as u32,
        _p: [0; 3],
    };
    let groups = if cpu {
        rows.div_ceil(CPU_WG as usize)
    } else {
        rows
    };
    step.dispatch_linear(&k, &p, &[x, w, y], groups as u32);
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
    use crate::ops::testing::{assert_close, gpus, rand_vec};

    /// Both kernels: y_off 5 takes the workgroup-per-row one everywhere; 4 the
    /// row-per-invocation one on CPU devices where dim % 4 == 0.
    #[test]
    fn rms_norm_matches_cpu() {
        for gpu in gpus() {
            rms_norm_case(gpu);
        }
    }

    fn rms_norm_case(gpu: &Gpu) {
        for y_off in [5, 4] {
            for &(rows, dim) in &[(1, 1), (7, 13), (3, 1000), (65, 64), (2, 4096), (9, 512)] {
                let x = rand_vec(rows as u64, rows * dim, 3.0);
                let w = rand_vec(dim as u64, dim, 2.0);
                let (xt, wt, yt) = (
                    gpu.upload_f32("x", &x),
                    gpu.upload_f32("w", &w),
                    gpu.zeros("y", rows * dim + y_off),
                );
                let mut s = Step::new(gpu);
                rms_norm(&mut s, &xt, 0, &wt, &yt, y_off, rows, dim, 1e-6);
                s.submit().unwrap();
                let got = pollster::block_on(gpu.read_f32(&yt, y_off, rows * dim)).unwrap();
                assert_close(
                    &format!("rms_norm (cpu {}) {rows}x{dim} at {y_off}", gpu.is_cpu()),
                    &got,
                    &cpu_rms_norm(&x, &w, dim, 1e-6),
                    1e-5,
                    1e-4,
                );
            }
        }
    }

    /// A row's result is the same bit for bit whether it runs alone or among others (what
    /// the server's batched passes rely on), for both kernels.
    #[test]
    fn rms_norm_rows_do_not_depend_on_the_batch() {
        for gpu in gpus() {
            rows_alone_case(gpu);
        }
    }

    fn rows_alone_case(gpu: &Gpu) {
        let (rows, dim) = (19, 512);
        let x = rand_vec(3, rows * dim, 3.0);
        let w = rand_vec(4, dim, 2.0);
        let (xt, wt) = (gpu.upload_f32("x", &x), gpu.upload_f32("w", &w));
        for y_off in [0, 1] {
            let all = gpu.zeros("all", rows * dim + y_off);
            let mut s = Step::new(gpu);
            rms_norm(&mut s, &xt, 0, &wt, &all, y_off, rows, dim, 1e-6);
            s.submit().unwrap();
            let all = pollster::block_on(gpu.read_f32(&all, y_off, rows * dim)).unwrap();
            for r in [0, 8, 18] {
                let one = gpu.zeros("one", rows * dim + y_off);
                let mut s = Step::new(gpu);
                rms_norm(
                    &mut s,
                    &xt,
                    r * dim,
                    &wt,
                    &one,
                    y_off + r * dim,
                    1,
                    dim,
                    1e-6,
                );
                s.submit().unwrap();
                let one = pollster::block_on(gpu.read_f32(&one, y_off + r * dim, dim)).unwrap();
                let want = &all[r * dim..(r + 1) * dim];
                assert!(
                    one.iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "row {r} alone differs from the batch (y_off {y_off})"
                );
            }
        }
    }
}
