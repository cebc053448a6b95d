//! Three projections of the same rows (attention's q, k and v): for decode (at most two rows,
//! unsplit weights of one format without biases) one fused matrix-vector dispatch
//! (`matvec3`, or `qmatvec3` for f16 and quantised weights), otherwise (and for decode on CPU
//! devices, which use `cmatvec`) three [`super::linear`] calls.
//!
//! # Shapes
//! x `[M, K]` (from offset 0); each `(W [N, K], y [M, N])`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor, WeightFormat};

use super::{groups_for, linear, Linear, WG};

const PLAIN: &str = include_str!("../../shaders/matvec3.wgsl");
const SUBGROUP: &str = include_str!("../../shaders/matvec3_subgroup.wgsl");
const BLOCKED: &str = include_str!("../../shaders/qmatvec3.wgsl");

/// The fused decode kernel of f16 and quantised weights (one output per invocation).
pub(crate) fn qspec(format: WeightFormat) -> Option<KernelSpec> {
    super::with_format(KernelSpec::new("qmatvec3", BLOCKED).with("WG", WG), format)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    k: u32,
    na: u32,
    nb: u32,
    nc: u32,
    _p: [u32; 3],
}

/// The fused decode kernel this device runs, and its outputs per workgroup.
pub(crate) fn spec(gpu: &crate::gpu::Gpu) -> (KernelSpec, u32) {
    super::decode_spec(gpu, ("matvec3", PLAIN), ("matvec3_subgroup", SUBGROUP))
}

/// Records `y_i[m, :] = x[m, :] W_i^T (+ b_i)` for the three `(W_i, y_i)` and `m < rows`.
pub fn proj3(step: &mut Step, x: &Tensor, rows: usize, outs: [(&Linear, &Tensor); 3]) {
    let k = outs[0].0.w.cols;
    // CPU devices decode with cmatvec (three dispatches: one kernel choosing among three
    // weight bindings per load measured slower than the two dispatches it saves).
    let fused = !super::linear::cpu_decode(step.gpu(), rows, 0, k)
        && rows <= 2
        && k.is_multiple_of(4)
        && outs.iter().all(|(l, _)| {
            l.b.is_none()
                && l.w.chunks.len() == 1
                && l.w.cols == k
                && l.w.format == outs[0].0.w.format
        });
    // f16 and quantised weights run the blocked kernel (None for f32).
    let blocked = qspec(outs[0].0.w.format);
    if !fused {
        for (lin, y) in outs {
            linear(step, x, 0, rows, lin, y, 0, lin.w.rows);
        }
        return;
    }
    let gpu = step.gpu();
    let (s, per_group) = match blocked {
        Some(s) => (s, WG),
        None => spec(gpu),
    };
    let kernel = gpu.kernel(&s);
    let [(a, ya), (b, yb), (c, yc)] = outs;
    let p = Params {
        m: rows as u32,
        k: k as u32,
        na: a.w.rows as u32,
        nb: b.w.rows as u32,
        nc: c.w.rows as u32,
        _p: [0; 3],
    };
    let total = a.w.rows + b.w.rows + c.w.rows;
    step.dispatch_linear(
        &kernel,
        &p,
        &[
            x,
            &a.w.chunks[0].0,
            &b.w.chunks[0].0,
            &c.w.chunks[0].0,
            ya,
            yb,
            yc,
        ],
        groups_for(total, per_group),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{Gpu, GpuOptions};
    use crate::ops::cpu_linear;
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    fn check(g: &Gpu, rows: usize, k: usize, bias: bool, format: WeightFormat) {
        let x = rand_vec(1, rows * k, 1.0);
        let ns = [48, 16, 20];
        let ws: Vec<Vec<f32>> = ns
            .iter()
            .enumerate()
            .map(|(i, &n)| rand_vec(2 + i as u64, n * k, 1.0))
            .collect();
        let bs: Vec<Vec<f32>> = ns.iter().map(|&n| rand_vec(9, n, 1.0)).collect();
        let lins: Vec<Linear> = (0..3)
            .map(|i| Linear {
                w: g.upload_matrix_as("w", &ws[i], ns[i], k, format).unwrap(),
                b: bias.then(|| g.upload_f32("b", &bs[i])),
            })
            .collect();
        let ys: Vec<Tensor> = ns.iter().map(|&n| g.zeros("y", rows * n)).collect();
        let xt = g.upload_f32("x", &x);
        let mut step = Step::new(g);
        proj3(
            &mut step,
            &xt,
            rows,
            [(&lins[0], &ys[0]), (&lins[1], &ys[1]), (&lins[2], &ys[2])],
        );
        step.submit().unwrap();
        for i in 0..3 {
            let got = pollster::block_on(g.read_f32(&ys[i], 0, rows * ns[i])).unwrap();
            let w = format.decode(&format.encode(&ws[i], ns[i], k), ns[i], k);
            let want = cpu_linear(&x, &w, bias.then_some(&bs[i][..]), rows, ns[i], k);
            assert_close(
                &format!("proj3 {format} {i} rows={rows} k={k} bias={bias}"),
                &got,
                &want,
                1e-4,
                1e-4,
            );
        }
    }

    /// Fused (decode) and unfused paths, with and without subgroups, with and without biases.
    #[test]
    fn proj3_matches_cpu() {
        if gpu().is_none() {
            return;
        }
        for subgroups in [crate::Subgroups::WhenOffered, crate::Subgroups::Never] {
            let g = pollster::block_on(Gpu::new(GpuOptions {
                subgroups,
                ..Default::default()
            }))
            .unwrap();
            for &(rows, k, bias) in &[
                (1, 64, false),
                (2, 36, false),
                (1, 64, true),
                (5, 16, false),
            ] {
                check(&g, rows, k, bias, WeightFormat::F32);
            }
        }
    }

    /// The blocked-format kernel (decode) and the unfused paths (prefill, biases).
    #[test]
    fn proj3_matches_cpu_for_every_weight_format() {
        let Some(g) = gpu() else { return };
        for format in [WeightFormat::F16, WeightFormat::Q8, WeightFormat::Q4] {
            for &(rows, k, bias) in &[
                (1, 64, false),
                (2, 96, false),
                (1, 32, true),
                (5, 32, false),
            ] {
                check(g, rows, k, bias, format);
            }
        }
    }
}
