// matvec_any: y[m, col0 + n] = dot(x[m, :], w[n, :]) (+ bias[col0 + n]) with scalar loads, for
// any K and x_off (the vec4 kernels need multiples of 4): the small adapter projections whose
// width is not a multiple of 4, for decode on every device and for prefill on CPU devices.
// One output column per invocation, looping over the M rows.
// Bindings: 0 Params (uniform; with accumulate, y += scale * result), 1 x [M, K] (from x_off),
//           2 w [N, K], 3 bias [>= col0 + N], 4 y [M, ldy] (from y_off).
// Dispatch: linear over ceil(N / WG) workgroups. Constants: WG.

// Params, bias (binding 3), y (binding 4) and store(): linear_common.wgsl, prepended.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;

@compute @workgroup_size(WG)
fn matvec_any(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let n = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (n >= p.n) {
        return;
    }
    let wrow = n * p.k;
    var b = 0.0;
    if (p.has_bias != 0u) {
        b = bias[p.col0 + n];
    }
    for (var m = 0u; m < p.m; m++) {
        let xrow = p.x_off + m * p.k;
        var acc = 0.0;
        for (var i = 0u; i < p.k; i++) {
            acc = fma(x[xrow + i], w[wrow + i], acc);
        }
        store(p.y_off + m * p.ldy + p.col0 + n, acc + b);
    }
}
