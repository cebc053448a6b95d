//! Linear layer `y = x W^T + b` (torch `nn.Linear` layout: `W` is `[out, in]`).
//!
//! Decode (M = 1) on CPU devices, K % 32 == 0: `cmatvec` for every weight format (x bound as a
//! uniform array, 8 rows per invocation; see its header for why). Several rows on CPU devices
//! (batches, prompts, verifications), K % 32 == 0: `cmatmul`, in tiles of up to 16 rows of x
//! bound as one uniform array, 16 outputs per invocation, each weight block decoded once per
//! tile; each row's result is cmatvec's, bit for bit, so a session's row gives the same
//! numbers alone and in a batch.
//! Elsewhere:
//! f32 weights: prefill (M > 2) uses the tiled `matmul` kernel (`matmul_cpu` on CPU devices);
//! decode (M <= 2, K % 4 == 0) uses the `matvec` kernel; widths that are not multiples of 4
//! use the scalar `matvec_any` for decode (and for prefill on CPU devices). f16 and block-quantised weights use
//! `qlinear` for one or two rows and `qmatmul` for more, which decodes each weight block once
//! per 8 rows (their K is a multiple of 32). Weights larger than one storage binding
//! are row chunks of a [`Matrix`]; each chunk writes its own column range of `y`.
//!
//! # Shapes
//! x `[M, K]` from element `x_off`; W `[N, K]`; b `[N]`; y `[M, ldy]` from element `y_off`,
//! columns `0..N`.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{KernelSpec, Matrix, Step, Tensor, WeightFormat};

use super::{groups_for, WG};

const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
const MATVEC: &str = include_str!("../../shaders/matvec.wgsl");
const MATVEC_SUBGROUP: &str = include_str!("../../shaders/matvec_subgroup.wgsl");
const MATMUL_CPU: &str = include_str!("../../shaders/matmul_cpu.wgsl");
const CMATMUL: &str = include_str!("../../shaders/cmatmul.wgsl");
const QLINEAR: &str = include_str!("../../shaders/qlinear.wgsl");
const QMATMUL: &str = include_str!("../../shaders/qmatmul.wgsl");
const MATVEC_ANY: &str = include_str!("../../shaders/matvec_any.wgsl");
const COMMON: &str = include_str!("../../shaders/linear_common.wgsl");
const CMATVEC: &str = include_str!("../../shaders/cmatvec.wgsl");

/// Workgroup size of the CPU decode kernels: small, so that even 512 outputs (64
/// invocations of 8 rows) spread over several CPU threads.
pub(crate) const CPU_WG: u32 = 16;

/// The CPU decode kernel for `format` weights of `k` columns.
pub(crate) fn cmatvec_spec(format: WeightFormat, k: usize) -> KernelSpec {
    let spec = KernelSpec::new("cmatvec", CMATVEC)
        .with("WG", CPU_WG)
        .with("XN", (k / 4) as u32);
    super::with_cpu_format(linear_kernel(spec), format)
}

/// Most rows of x in one `cmatmul` tile (a power of two; fewer where K is too wide for the rows
/// to fit one uniform binding).
pub(crate) const CMATMUL_ROWS: usize = 16;

/// Outputs (weight rows) of one `cmatmul` or `cmatmul_glu` invocation.
pub(crate) const CMATMUL_OUTPUTS: usize = 16;

/// The CPU multi-row kernel for `format` weights of `k` columns, `rows` rows a tile of which
/// its first uniform binding holds `x_rows` (see [`cmatmul_x_rows`]).
pub(crate) fn cmatmul_spec(
    format: WeightFormat,
    k: usize,
    rows: usize,
    x_rows: usize,
) -> KernelSpec {
    let spec = KernelSpec::new("cmatmul", CMATMUL)
        .with("WG", CPU_WG)
        .with("ROWS", rows as u32)
        .with("XR", x_rows as u32)
        .with("XN", (x_rows * k / 4) as u32);
    super::with_cpu_format(linear_kernel(spec), format)
}

/// The rows of a `cmatmul` tile of `tile` rows of `k` values that its first uniform binding
/// holds: all of them, or the first half where they do not fit one binding (the second half
/// goes through another).
pub(crate) fn cmatmul_x_rows(gpu: &crate::gpu::Gpu, tile: usize, k: usize) -> usize {
    if gpu.uniform_range_ok(0, tile * k) {
        tile
    } else {
        tile / 2
    }
}

/// The rows of a multi-row tile for a product of `rows` rows of `k` values from `x_off` on
/// CPU devices, where every tile's rows can be bound as `bindings` (1 or 2) uniform arrays of
/// equal size; `None` where another kernel runs it (one row, K % 32 != 0, an unaligned tile).
/// `cmatmul` takes its rows in two bindings where they do not fit one, `cmatmul_glu` in one.
pub(crate) fn cpu_tile(
    gpu: &crate::gpu::Gpu,
    rows: usize,
    x_off: usize,
    k: usize,
    bindings: usize,
) -> Option<usize> {
    if !gpu.is_cpu() || rows < 2 || !k.is_multiple_of(32) {
        return None;
    }
    let limit = gpu.limits.max_uniform_buffer_binding_size as usize / (4 * k.max(1));
    // Tiles of 16, 8, 4 or 2 rows (the largest that fits), so that few pipelines serve every row
    // count: the last tile overlaps the one before.
    let fit = CMATMUL_ROWS.min(rows).min(limit * bindings.clamp(1, 2));
    if fit < 2 {
        return None;
    }
    let tile = 1 << fit.ilog2();
    let xr = if bindings > 1 {
        cmatmul_x_rows(gpu, tile, k)
    } else {
        tile
    };
    let starts = (0..rows).step_by(tile).map(|r| r.min(rows - tile));
    starts
        .into_iter()
        .all(|r| {
            gpu.uniform_range_ok(x_off + r * k, xr * k)
                && gpu.uniform_range_ok(x_off + (r + tile - xr) * k, xr * k)
        })
        .then_some(tile)
}

/// Whether `x[x_off..x_off + k]` of a one-row product goes to the CPU decode kernels.
pub(crate) fn cpu_decode(gpu: &crate::gpu::Gpu, rows: usize, x_off: usize, k: usize) -> bool {
    gpu.is_cpu() && rows == 1 && k.is_multiple_of(32) && gpu.uniform_range_ok(x_off, k)
}

/// `spec` with the declarations every linear kernel shares (Params, bias, y, store).
fn linear_kernel(spec: KernelSpec) -> KernelSpec {
    spec.prelude("linear_common", COMMON)
}

/// The scalar kernel for widths the vec4 kernels cannot take.
pub(crate) fn matvec_any_spec() -> KernelSpec {
    linear_kernel(KernelSpec::new("matvec_any", MATVEC_ANY).with("WG", WG))
}

/// The linear kernel of f16 and quantised weights, computing `cols` (1 or 4) output columns
/// per invocation.
pub(crate) fn qlinear_spec(format: WeightFormat, cols: u32) -> Option<KernelSpec> {
    let spec = KernelSpec::new("qlinear", QLINEAR)
        .with("WG", WG)
        .with("COLS", cols);
    super::with_format(linear_kernel(spec), format)
}

/// Rows of x per invocation of `qmatmul`: each decoded weight block serves this many rows.
pub(crate) const QMATMUL_ROWS: u32 = 8;

/// The multi-row kernel of f16 and quantised weights (a `rows` x 4 tile per invocation).
pub(crate) fn qmatmul_spec(format: WeightFormat, rows: u32) -> Option<KernelSpec> {
    let spec = KernelSpec::new("qmatmul", QMATMUL)
        .with("WG", WG)
        .with("ROWS", rows);
    super::with_format(linear_kernel(spec), format)
}

/// Columns per invocation of `qlinear` for `n` outputs of `rows` rows: 4 (each block of x
/// serves 4 weight rows) while that still gives at least 8 workgroups, else 1.
fn qlinear_cols(n: usize, rows: usize) -> u32 {
    if n.div_ceil(4) * rows >= 8 * WG as usize {
        4
    } else {
        1
    }
}

/// The prefill kernel of CPU devices (no workgroup memory or barriers).
pub(crate) fn matmul_cpu_spec() -> KernelSpec {
    linear_kernel(KernelSpec::new("matmul_cpu", MATMUL_CPU).with("WG", WG))
}

/// A linear layer on the device.
#[derive(Debug, Clone)]
pub struct Linear {
    pub w: Matrix,
    pub b: Option<Tensor>,
}

impl Linear {
    /// Output features (rows of W).
    pub fn out_features(&self) -> usize {
        self.w.rows
    }

    /// Input features (columns of W).
    pub fn in_features(&self) -> usize {
        self.w.cols
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    x_off: u32,
    y_off: u32,
    ldy: u32,
    col0: u32,
    has_bias: u32,
    accumulate: u32,
    scale: f32,
    /// cmatmul: rows of the tile below this one are not written.
    skip: u32,
    _p: u32,
}

/// The decode kernel this device runs, and its columns per workgroup.
pub(crate) fn matvec_for(gpu: &crate::gpu::Gpu) -> (KernelSpec, u32) {
    let (spec, per_group) = super::decode_spec(
        gpu,
        ("matvec", MATVEC),
        ("matvec_subgroup", MATVEC_SUBGROUP),
    );
    (linear_kernel(spec), per_group)
}

pub(crate) fn matmul_spec() -> KernelSpec {
    linear_kernel(KernelSpec::new("matmul", MATMUL))
}

/// Records `y[m, 0..N] = x[m, :] W^T + b` for `m < rows`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    step: &mut Step,
    x: &Tensor,
    x_off: usize,
    rows: usize,
    lin: &Linear,
    y: &Tensor,
    y_off: usize,
    ldy: usize,
) {
    record(step, x, x_off, rows, lin, y, y_off, ldy, None);
}

/// Records `y[m, 0..N] += scale * (x[m, :] W^T + b)` for `m < rows`: a linear layer and the
/// residual add after it in one dispatch. `x` and `y` must be different buffers.
#[allow(clippy::too_many_arguments)]
pub fn linear_add(
    step: &mut Step,
    x: &Tensor,
    x_off: usize,
    rows: usize,
    lin: &Linear,
    y: &Tensor,
    y_off: usize,
    ldy: usize,
    scale: f32,
) {
    record(step, x, x_off, rows, lin, y, y_off, ldy, Some(scale));
}

#[allow(clippy::too_many_arguments)]
fn record(
    step: &mut Step,
    x: &Tensor,
    x_off: usize,
    rows: usize,
    lin: &Linear,
    y: &Tensor,
    y_off: usize,
    ldy: usize,
    add: Option<f32>,
) {
    let k = lin.w.cols;
    let params = |n: usize, row0: usize| Params {
        m: rows as u32,
        n: n as u32,
        k: k as u32,
        x_off: x_off as u32,
        y_off: y_off as u32,
        ldy: ldy as u32,
        col0: row0 as u32,
        has_bias: lin.b.is_some() as u32,
        accumulate: add.is_some() as u32,
        scale: add.unwrap_or(1.0),
        skip: 0,
        _p: 0,
    };
    if cpu_decode(step.gpu(), rows, x_off, k) {
        let kernel = step.gpu().kernel(&cmatvec_spec(lin.w.format, k));
        for (chunk, row0, n) in &lin.w.chunks {
            let bias = lin.b.as_ref().unwrap_or(chunk);
            step.dispatch_uniform_linear(
                &kernel,
                &params(*n, *row0),
                (x, x_off, k),
                &[chunk, bias, y],
                groups_for(n.div_ceil(8), CPU_WG),
            );
        }
        return;
    }
    if let Some(tile) = cpu_tile(step.gpu(), rows, x_off, k, 2) {
        let xr = cmatmul_x_rows(step.gpu(), tile, k);
        let kernel = step.gpu().kernel(&cmatmul_spec(lin.w.format, k, tile, xr));
        let mut r0 = 0;
        while r0 < rows {
            // The last tile ends at the last row, overlapping the one before; its rows that
            // the tile before wrote are skipped.
            let start = r0.min(rows - tile);
            for (chunk, row0, n) in &lin.w.chunks {
                let bias = lin.b.as_ref().unwrap_or(chunk);
                let p = Params {
                    m: tile as u32,
                    y_off: (y_off + start * ldy) as u32,
                    skip: (r0 - start) as u32,
                    ..params(*n, *row0)
                };
                // Rows xr.. of the tile through binding 5 (where xr = tile, the same rows
                // again, unread).
                let x0 = x_off + start * k;
                step.dispatch_uniform2_linear(
                    &kernel,
                    &p,
                    (x, x0, xr * k),
                    &[chunk, bias, y],
                    (x, x0 + (tile - xr) * k, xr * k),
                    groups_for(n.div_ceil(CMATMUL_OUTPUTS), CPU_WG),
                );
            }
            r0 += tile;
        }
        return;
    }
    if lin.w.format != WeightFormat::F32 {
        // x_off is a whole number of rows of K (a multiple of 32) values.
        debug_assert!(x_off.is_multiple_of(4));
        for (chunk, row0, n) in &lin.w.chunks {
            let bias = lin.b.as_ref().unwrap_or(chunk);
            if rows > 2 {
                // Several rows: each weight block decoded once per QMATMUL_ROWS rows.
                let tile = QMATMUL_ROWS.min(rows as u32);
                if let Some(spec) = qmatmul_spec(lin.w.format, tile) {
                    let kernel = step.gpu().kernel(&spec);
                    let groups = groups_for(n.div_ceil(4) * rows.div_ceil(tile as usize), WG);
                    step.dispatch_linear(&kernel, &params(*n, *row0), &[x, chunk, bias, y], groups);
                }
                continue;
            }
            let cols = qlinear_cols(*n, rows);
            if let Some(spec) = qlinear_spec(lin.w.format, cols) {
                let kernel = step.gpu().kernel(&spec);
                let groups = groups_for(n.div_ceil(cols as usize) * rows, WG);
                step.dispatch_linear(&kernel, &params(*n, *row0), &[x, chunk, bias, y], groups);
            }
        }
        return;
    }
    let vec_ok = k.is_multiple_of(4) && x_off.is_multiple_of(4);
    let small = rows <= 2 && vec_ok;
    let gpu = step.gpu();
    // CPU devices: the barrier-free prefill kernel (when the rows are vec4-aligned).
    let direct = !small && vec_ok && gpu.is_cpu();
    // Unaligned widths: scalar loads for decode, and for prefill where barriers are costly.
    let any = !vec_ok && (rows <= 2 || gpu.is_cpu());
    let (mv, per_group) = matvec_for(gpu);
    let kernel = gpu.kernel(&if small {
        mv
    } else if direct {
        matmul_cpu_spec()
    } else if any {
        matvec_any_spec()
    } else {
        matmul_spec()
    });
    for (chunk, row0, n) in &lin.w.chunks {
        let p = params(*n, *row0);
        let bias = lin.b.as_ref().unwrap_or(chunk);
        let bufs = [x, chunk, bias, y];
        if small {
            step.dispatch_linear(&kernel, &p, &bufs, groups_for(*n, per_group));
        } else if any {
            step.dispatch_linear(&kernel, &p, &bufs, groups_for(*n, WG));
        } else if direct {
            let blocks = n.div_ceil(4) * rows.div_ceil(4);
            step.dispatch_linear(&kernel, &p, &bufs, groups_for(blocks, WG));
        } else {
            step.dispatch(
                &kernel,
                &p,
                &bufs,
                [groups_for(*n, 64), groups_for(rows, 64), 1],
            );
        }
    }
}

/// CPU reference: `y[M, N] = x[M, K] W[N, K]^T + b`, accumulated in f64.
pub fn cpu_linear(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for t in 0..k {
                acc += x[i * k + t] as f64 * w[j * k + t] as f64;
            }
            y[i * n + j] = (acc + b.map_or(0.0, |b| b[j] as f64)) as f32;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{Gpu, GpuOptions};
    use crate::ops::testing::{assert_close, gpu, rand_vec};

    fn run(gpu: &Gpu, m: usize, n: usize, k: usize, bias: bool, x_off: usize) {
        run_as(gpu, m, n, k, bias, x_off, WeightFormat::F32);
    }

    /// Checks against the CPU reference on the weights as `format` stores them (the
    /// storage error itself is the format's own test).
    fn run_as(
        gpu: &Gpu,
        m: usize,
        n: usize,
        k: usize,
        bias: bool,
        x_off: usize,
        format: WeightFormat,
    ) {
        let x = rand_vec(1 + m as u64, x_off + m * k, 1.0);
        let w = rand_vec(2 + n as u64, n * k, 1.0);
        let b = rand_vec(3, n, 1.0);
        let lin = Linear {
            w: gpu.upload_matrix_as("w", &w, n, k, format).unwrap(),
            b: bias.then(|| gpu.upload_f32("b", &b)),
        };
        let w = format.decode(&format.encode(&w, n, k), n, k);
        let xt = gpu.upload_f32("x", &x);
        let yt = gpu.zeros("y", m * n + 3);
        let mut step = Step::new(gpu);
        linear(&mut step, &xt, x_off, m, &lin, &yt, 3, n);
        step.submit().unwrap();
        let got = pollster::block_on(gpu.read_f32(&yt, 3, m * n)).unwrap();
        let want = cpu_linear(&x[x_off..], &w, bias.then_some(&b[..]), m, n, k);
        assert_close(
            &format!("linear {format} m={m} n={n} k={k}"),
            &got,
            &want,
            1e-4,
            1e-4,
        );
        // The fused residual form: y += scale * (x W^T + b) on a y that holds values.
        let y0 = rand_vec(4 + n as u64, m * n + 3, 1.0);
        let yt = gpu.upload_f32("y", &y0);
        let mut step = Step::new(gpu);
        linear_add(&mut step, &xt, x_off, m, &lin, &yt, 3, n, -0.7);
        step.submit().unwrap();
        let got = pollster::block_on(gpu.read_f32(&yt, 0, m * n + 3)).unwrap();
        let mut want_add = y0.clone();
        for (i, v) in want.iter().enumerate() {
            want_add[3 + i] += -0.7 * v;
        }
        assert_close(
            &format!("linear_add {format} m={m} n={n} k={k}"),
            &got,
            &want_add,
            1e-4,
            1e-4,
        );
    }

    /// `cmatmul` (several rows on CPU devices) gives each row exactly what `cmatvec` gives it
    /// alone, in every weight format, for row counts of one tile, of several, and with an
    /// overlapping last tile; plain and with the fused residual add (whose overlapped rows
    /// must not be added twice).
    #[test]
    fn cmatmul_rows_equal_cmatvec_bit_for_bit() {
        if gpu().is_none() {
            return;
        }
        let g = pollster::block_on(Gpu::new(GpuOptions {
            cpu_kernels: Some(true),
            ..Default::default()
        }))
        .unwrap();
        // 300 outputs: several workgroups of 16-output invocations, the last one partial. K of
        // 1536: 16-row tiles that do not fit one uniform binding, so x comes in two.
        for (n, k) in [(300, 128), (40, 1536)] {
            for format in WeightFormat::ALL {
                let w = rand_vec(7, n * k, 1.0);
                let b = rand_vec(8, n, 1.0);
                let lin = Linear {
                    w: g.upload_matrix_as("w", &w, n, k, format).unwrap(),
                    b: Some(g.upload_f32("b", &b)),
                };
                for m in [2, 3, 5, 8, 13, 16, 21] {
                    assert!(cpu_tile(&g, m, 0, k, 2).is_some(), "{m} rows run cmatmul");
                    let x = rand_vec(9 + m as u64, m * k, 1.0);
                    let xt = g.upload_f32("x", &x);
                    for add in [None, Some(-0.7)] {
                        let y0 = rand_vec(10, m * n, 1.0);
                        let (all, one) = (g.upload_f32("y", &y0), g.upload_f32("y1", &y0));
                        let mut step = Step::new(&g);
                        record(&mut step, &xt, 0, m, &lin, &all, 0, n, add);
                        for r in 0..m {
                            assert!(cpu_decode(&g, 1, r * k, k));
                            record(&mut step, &xt, r * k, 1, &lin, &one, r * n, n, add);
                        }
                        step.submit().unwrap();
                        let got = pollster::block_on(g.read_f32(&all, 0, m * n)).unwrap();
                        let want = pollster::block_on(g.read_f32(&one, 0, m * n)).unwrap();
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&want), "{format} k={k} m={m} add={add:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn linear_matches_cpu_on_awkward_sizes() {
        let Some(gpu) = gpu() else { return };
        awkward_sizes(gpu);
    }

    /// Every kernel family: the GPU kernels with and without subgroups, and the CPU-device
    /// kernels, whatever this device is.
    #[test]
    fn linear_kernel_families_match_cpu() {
        if gpu().is_none() {
            return;
        }
        for (subgroups, cpu_kernels) in [
            (crate::Subgroups::WhenOffered, Some(false)),
            (crate::Subgroups::Never, Some(false)),
            (crate::Subgroups::Never, Some(true)),
        ] {
            let g = pollster::block_on(Gpu::new(GpuOptions {
                subgroups,
                cpu_kernels,
                ..Default::default()
            }))
            .unwrap();
            if subgroups == crate::Subgroups::Never {
                assert!(g.subgroup_max().is_none());
            }
            awkward_sizes(&g);
        }
    }

    fn awkward_sizes(gpu: &Gpu) {
        for &(m, n, k) in &[
            (1, 1, 4),
            (1, 7, 12),
            (2, 1000, 64),
            (7, 65, 33),
            (1, 130, 7),
            (70, 129, 100),
        ] {
            run(gpu, m, n, k, false, 0);
            run(gpu, m, n, k, true, 0);
        }
        run(gpu, 1, 50, 16, true, 32);
        run(gpu, 5, 50, 16, true, 32);
    }

    #[test]
    fn linear_matches_cpu_for_every_weight_format() {
        let Some(gpu) = gpu() else { return };
        // Every format: on CPU devices one-row products of K % 32 == 0 run cmatvec (8 rows per
        // invocation: n = 1, 7, 9, 50, 2050 leave partial groups; x_off = 64 a bound offset);
        // blocked formats run qlinear for 2 rows and qmatmul from 3 (m = 5, 6, 7 and 70 leave
        // partial 8-row tiles, n = 65, 129, 302 partial 4-column groups).
        for format in WeightFormat::ALL {
            for &(m, n, k) in &[
                (1, 1, 32),
                (1, 7, 64),
                (1, 9, 1024),
                (2, 130, 96),
                (5, 65, 32),
                (70, 129, 128),
            ] {
                run_as(gpu, m, n, k, false, 0, format);
                run_as(gpu, m, n, k, true, 0, format);
            }
            run_as(gpu, 1, 50, 64, true, 64, format);
            run_as(gpu, 6, 50, 64, true, 128, format);
            // Wide enough for 4 columns per invocation, with a partial last group.
            run_as(gpu, 1, 2050, 64, true, 0, format);
            run_as(gpu, 7, 302, 32, false, 0, format);
        }
    }

    #[test]
    fn quantised_matrices_split_into_chunks_of_whole_rows() {
        if gpu().is_none() {
            return;
        }
        let small = pollster::block_on(Gpu::new(GpuOptions {
            max_storage_binding: Some(4096),
            ..Default::default()
        }))
        .unwrap();
        for format in [WeightFormat::F16, WeightFormat::Q8, WeightFormat::Q4] {
            let mat = small
                .upload_matrix_as("w", &rand_vec(9, 300 * 64, 1.0), 300, 64, format)
                .unwrap();
            assert!(mat.chunks.len() > 1, "{format}: expected a split matrix");
            run_as(&small, 1, 300, 64, true, 0, format);
            run_as(&small, 9, 300, 64, true, 0, format);
        }
        let err = small
            .upload_matrix_as("w", &[0.0; 48], 1, 48, WeightFormat::Q8)
            .unwrap_err();
        assert!(err.to_string().contains("multiple of 32"), "{err}");
    }

    #[test]
    fn linear_splits_matrices_larger_than_one_binding() {
        if gpu().is_none() {
            return;
        }
        let small = pollster::block_on(Gpu::new(GpuOptions {
            max_storage_binding: Some(4096),
            ..Default::default()
        }))
        .unwrap();
        // 300 rows x 64 cols x 4 bytes = 76800 bytes -> 19 chunks of 16 rows.
        let w = rand_vec(9, 300 * 64, 1.0);
        let mat = small.upload_matrix("w", &w, 300, 64).unwrap();
        assert!(mat.chunks.len() > 1, "expected a split matrix");
        run(&small, 1, 300, 64, true, 0);
        run(&small, 9, 300, 64, true, 0);
    }
}
