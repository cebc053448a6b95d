//! The gated MLP input of SwiGLU decoders: `y = silu(x Wg^T) * (x Wu^T)`. With unsplit weights of
//! one format without biases, one fused dispatch: on CPU devices `cmatvec_glu` for one row and
//! `cmatmul_glu` for tiles of several (each row's result cmatvec_glu's, bit for bit); elsewhere
//! `matvec_glu` (or `qmatvec_glu` for f16 and quantised weights) for at most two rows. Otherwise
//! the two projections into a `[m, 2I]` scratch and [`super::silu_mul`].
//!
//! # Shapes
//! x `[M, K]`; Wg, Wu `[I, K]`; gu scratch `[M, 2I]`; y `[M, I]`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Step, Tensor, WeightFormat};

use super::{groups_for, linear, silu_mul, Linear, WG};

const PLAIN: &str = include_str!("../../shaders/matvec_glu.wgsl");
const SUBGROUP: &str = include_str!("../../shaders/matvec_glu_subgroup.wgsl");
const BLOCKED: &str = include_str!("../../shaders/qmatvec_glu.wgsl");
const CPU: &str = include_str!("../../shaders/cmatvec_glu.wgsl");
const CPU_ROWS: &str = include_str!("../../shaders/cmatmul_glu.wgsl");

/// The fused decode kernel of f16 and quantised weights (one output per invocation).
pub(crate) fn qspec(format: WeightFormat) -> Option<KernelSpec> {
    super::with_format(
        KernelSpec::new("qmatvec_glu", BLOCKED).with("WG", WG),
        format,
    )
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    _p: u32,
}

/// Mirrors `Params` of cmatvec_glu.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CpuParams {
    n: u32,
    k: u32,
    _p: [u32; 2],
}

/// Mirrors `Params` of cmatmul_glu.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TileParams {
    n: u32,
    k: u32,
    y_off: u32,
    skip: u32,
}

/// The multi-row kernel of CPU devices for `format` weights of `k` columns, `rows` rows a tile.
pub(crate) fn cpu_tile_spec(format: WeightFormat, k: usize, rows: usize) -> KernelSpec {
    let spec = KernelSpec::new("cmatmul_glu", CPU_ROWS)
        .with("WG", super::linear::CPU_WG)
        .with("ROWS", rows as u32)
        .with("XN", (rows * k / 4) as u32);
    super::with_cpu_format(spec, format)
}

/// The fused decode kernel of CPU devices for `format` weights of `k` columns.
pub(crate) fn cpu_spec(format: WeightFormat, k: usize) -> KernelSpec {
    let spec = KernelSpec::new("cmatvec_glu", CPU)
        .with("WG", super::linear::CPU_WG)
        .with("XN", (k / 4) as u32);
    super::with_cpu_format(spec, format)
}

/// The fused decode kernel this device runs, and its outputs per workgroup.
pub(crate) fn spec(gpu: &crate::gpu::Gpu) -> (KernelSpec, u32) {
    super::decode_spec(
        gpu,
        ("matvec_glu", PLAIN),
        ("matvec_glu_subgroup", SUBGROUP),
    )
}

/// Records `y[m, :] = silu(x[m, :] Wg^T) * (x[m, :] Wu^T)` for `m < rows` (x from offset 0).
#[allow(clippy::too_many_arguments)]
pub fn glu(
    step: &mut Step,
    x: &Tensor,
    rows: usize,
    gate: &Linear,
    up: &Linear,
    gu: &Tensor,
    y: &Tensor,
    inter: usize,
) {
    let k = gate.w.cols;
    let plain = k.is_multiple_of(4)
        && gate.b.is_none()
        && up.b.is_none()
        && gate.w.chunks.len() == 1
        && up.w.chunks.len() == 1
        && gate.w.format == up.w.format;
    let fused = rows <= 2 && plain;
    let gpu = step.gpu();
    if plain {
        if let Some(tile) = super::linear::cpu_tile(gpu, rows, 0, k, 1) {
            let kernel = gpu.kernel(&cpu_tile_spec(gate.w.format, k, tile));
            let mut r0 = 0;
            while r0 < rows {
                // The last tile ends at the last row, overlapping the one before; its rows
                // that the tile before wrote are skipped.
                let start = r0.min(rows - tile);
                let p = TileParams {
                    n: inter as u32,
                    k: k as u32,
                    y_off: (start * inter) as u32,
                    skip: (r0 - start) as u32,
                };
                step.dispatch_uniform_linear(
                    &kernel,
                    &p,
                    (x, start * k, tile * k),
                    &[&gate.w.chunks[0].0, &up.w.chunks[0].0, y],
                    groups_for(
                        inter.div_ceil(super::linear::CMATMUL_OUTPUTS),
                        super::linear::CPU_WG,
                    ),
                );
                r0 += tile;
            }
            return;
        }
    }
    if super::linear::cpu_decode(gpu, rows, 0, k) && fused {
        let kernel = gpu.kernel(&cpu_spec(gate.w.format, k));
        let p = CpuParams {
            n: inter as u32,
            k: k as u32,
            _p: [0; 2],
        };
        step.dispatch_uniform_linear(
            &kernel,
            &p,
            (x, 0, k),
            &[&gate.w.chunks[0].0, &up.w.chunks[0].0, y],
            groups_for(inter.div_ceil(4), super::linear::CPU_WG),
        );
        return;
    }
    if !fused {
        linear(step, x, 0, rows, gate, gu, 0, 2 * inter);
        linear(step, x, 0, rows, up, gu, inter, 2 * inter);
        silu_mul(step, gu, y, rows, inter);
        return;
    }
    let p = Params {
        m: rows as u32,
        n: inter as u32,
        k: k as u32,
        _p: 0,
    };
    // f16 and quantised weights run the blocked kernel (None for f32).
    let (s, per_group) = match qspec(gate.w.format) {
        Some(s) => (s, WG),
        None => spec(gpu),
    };
    let kernel = gpu.kernel(&s);
    step.dispatch_linear(
        &kernel,
        &p,
        &[x, &gate.w.chunks[0].0, &up.w.chunks[0].0, y],
        groups_for(inter, per_group),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{Gpu, GpuOptions};
    use crate::ops::testing::{assert_close, gpu, rand_vec};
    use crate::ops::{cpu_linear, cpu_silu_mul};

    fn check(g: &Gpu, rows: usize, inter: usize, k: usize) {
        check_as(g, rows, inter, k, WeightFormat::F32);
    }

    fn check_as(g: &Gpu, rows: usize, inter: usize, k: usize, format: WeightFormat) {
        let x = rand_vec(1, rows * k, 1.0);
        let stored = |w: Vec<f32>| format.decode(&format.encode(&w, inter, k), inter, k);
        let wg = rand_vec(2, inter * k, 1.0);
        let wu = rand_vec(3, inter * k, 1.0);
        let lin = |w: &[f32]| Linear {
            w: g.upload_matrix_as("w", w, inter, k, format).unwrap(),
            b: None,
        };
        let (gate, up) = (lin(&wg), lin(&wu));
        let xt = g.upload_f32("x", &x);
        let gu = g.zeros("gu", rows * 2 * inter);
        let y = g.zeros("y", rows * inter);
        let mut step = Step::new(g);
        glu(&mut step, &xt, rows, &gate, &up, &gu, &y, inter);
        step.submit().unwrap();
        let got = pollster::block_on(g.read_f32(&y, 0, rows * inter)).unwrap();
        let (wg, wu) = (stored(wg), stored(wu));
        let a = cpu_linear(&x, &wg, None, rows, inter, k);
        let b = cpu_linear(&x, &wu, None, rows, inter, k);
        let mut cat = Vec::new();
        for r in 0..rows {
            cat.extend_from_slice(&a[r * inter..(r + 1) * inter]);
            cat.extend_from_slice(&b[r * inter..(r + 1) * inter]);
        }
        let want = cpu_silu_mul(&cat, inter);
        assert_close(
            &format!("glu {format} rows={rows} inter={inter} k={k}"),
            &got,
            &want,
            1e-4,
            1e-4,
        );
    }

    /// Fused (decode) and unfused (prefill) paths, with and without subgroups.
    #[test]
    fn glu_matches_cpu() {
        if gpu().is_none() {
            return;
        }
        for subgroups in [crate::Subgroups::WhenOffered, crate::Subgroups::Never] {
            let g = pollster::block_on(Gpu::new(GpuOptions {
                subgroups,
                ..Default::default()
            }))
            .unwrap();
            for &(rows, inter, k) in &[(1, 1, 4), (1, 130, 64), (2, 67, 36), (5, 40, 16), (1, 9, 6)]
            {
                check(&g, rows, inter, k);
            }
        }
    }

    /// `cmatmul_glu` (several rows on CPU devices) gives each row exactly what `cmatvec_glu`
    /// gives it alone, in every weight format, for one tile, several, and an overlapping last
    /// tile.
    #[test]
    fn cmatmul_glu_rows_equal_cmatvec_glu_bit_for_bit() {
        if gpu().is_none() {
            return;
        }
        let g = pollster::block_on(Gpu::new(GpuOptions {
            cpu_kernels: Some(true),
            ..Default::default()
        }))
        .unwrap();
        // Several workgroups of 16-output invocations, the last one partial.
        let (inter, k) = (300, 128);
        for format in WeightFormat::ALL {
            let lin = |seed| Linear {
                w: g.upload_matrix_as("w", &rand_vec(seed, inter * k, 1.0), inter, k, format)
                    .unwrap(),
                b: None,
            };
            let (gate, up) = (lin(2), lin(3));
            for m in [2, 3, 5, 8, 13, 16, 21] {
                assert!(super::super::linear::cpu_tile(&g, m, 0, k, 1).is_some());
                let x = rand_vec(9 + m as u64, m * k, 1.0);
                let xt = g.upload_f32("x", &x);
                let gu = g.zeros("gu", 2 * m * inter);
                let (all, one) = (g.zeros("y", m * inter), g.zeros("y1", m * inter));
                let mut step = Step::new(&g);
                glu(&mut step, &xt, m, &gate, &up, &gu, &all, inter);
                step.submit().unwrap();
                for r in 0..m {
                    let xr = g.upload_f32("xr", &x[r * k..(r + 1) * k]);
                    let yr = g.zeros("yr", inter);
                    let mut step = Step::new(&g);
                    glu(&mut step, &xr, 1, &gate, &up, &gu, &yr, inter);
                    step.copy(&yr, 0, &one, r * inter, inter);
                    step.submit().unwrap();
                }
                let got = pollster::block_on(g.read_f32(&all, 0, m * inter)).unwrap();
                let want = pollster::block_on(g.read_f32(&one, 0, m * inter)).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{format} m={m}");
            }
        }
    }

    /// The blocked-format kernel (decode) and the unfused path (prefill).
    #[test]
    fn glu_matches_cpu_for_every_weight_format() {
        let Some(g) = gpu() else { return };
        for format in [WeightFormat::F16, WeightFormat::Q8, WeightFormat::Q4] {
            for &(rows, inter, k) in &[(1, 1, 32), (1, 130, 64), (2, 67, 96), (5, 40, 32)] {
                check_as(g, rows, inter, k, format);
            }
        }
    }
}
