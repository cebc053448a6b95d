// linear_common: what the linear kernels (matvec, matvec_subgroup, matmul, matmul_cpu,
// matvec_any, qlinear, qmatmul, cmatvec, cmatmul) share, prepended to each: the Params uniform (mirrors
// ops::linear::Params), the bias and output bindings, and store(). Each kernel declares its own
// x (binding 1) and w (binding 2), whose element types differ.
// Bindings: 0 Params (uniform; with accumulate, y += scale * result), 3 bias [>= col0 + N]
//           (ignored unless has_bias), 4 y [M, ldy] (from y_off).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    x_off: u32,
    y_off: u32,
    ldy: u32,
    col0: u32,
    has_bias: u32,
    // 1: y += scale * result (a fused residual add); 0: y = result.
    accumulate: u32,
    scale: f32,
    // cmatmul: rows of the tile below this one are not written.
    skip: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn store(i: u32, v: f32) {
    if (p.accumulate != 0u) {
        y[i] += p.scale * v;
    } else {
        y[i] = v;
    }
}
