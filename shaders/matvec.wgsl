// matvec: y[m, col0 + n] = dot(x[m, :], w[n, :]) (+ bias[col0 + n]) for decode (small M),
// one output column per invocation, vec4 loads along K.
// Bindings: 0 Params (uniform; with accumulate, y += scale * result), 1 x [M, K/4] vec4 (from x_off/4), 2 w [N, K/4] vec4,
//           3 bias [>= col0 + N], 4 y [M, ldy] (from y_off).
// Dispatch: linear over ceil(N / WG) workgroups (2-D when > 65535). Requires K % 4 == 0.
// Injected constants: WG (workgroup size).

// Params, bias (binding 3), y (binding 4) and store(): linear_common.wgsl, prepended.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn matvec(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let n = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (n >= p.n) {
        return;
    }
    let k4 = p.k / 4u;
    let wrow = n * k4;
    var b = 0.0;
    if (p.has_bias != 0u) {
        b = bias[p.col0 + n];
    }
    for (var m = 0u; m < p.m; m++) {
        let xrow = p.x_off / 4u + m * k4;
        var acc = vec4<f32>(0.0);
        for (var i = 0u; i < k4; i++) {
            acc = fma(x[xrow + i], w[wrow + i], acc);
        }
        store(p.y_off + m * p.ldy + p.col0 + n, (acc.x + acc.y) + (acc.z + acc.w) + b);
    }
}
