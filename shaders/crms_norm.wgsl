// crms_norm: rms_norm for CPU devices (lavapipe, SwiftShader), with one row per invocation:
//   y[r, :] = x[r, :] * inverseSqrt(mean(x[r, :]^2) + eps) * w[:]
// CPU compilers run a workgroup's invocations as the lanes of a SIMD vector and a barrier as a
// switch between such vectors; rms_norm spreads a row over a workgroup and sums it across the
// lanes with barriers, which costs more than the row's arithmetic. Here each invocation reads
// its own row as vec4s and sums it alone: no workgroup memory, no barrier, and a row's result
// does not depend on how many rows run beside it.
// Bindings: 0 Params, 1 x [rows, dim] vec4 (from x_off / 4), 2 w [dim] vec4, 3 y [rows, dim]
// vec4 (from y_off / 4). Requires dim, x_off and y_off multiples of 4.
// Dispatch: linear over ceil(rows / WG) workgroups. Constants: WG.

// Params and binding 0: rms_norm_common.wgsl, prepended.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn crms_norm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let r = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (r >= p.rows) {
        return;
    }
    // The row's vec4s, through arrayLength so that the bound is not a pure uniform
    // expression (lavapipe re-specialises shaders per dispatch for small uniform loop counts).
    let d4 = min(p.dim / 4u, arrayLength(&w));
    let xb = p.x_off / 4u + r * d4;
    let yb = p.y_off / 4u + r * d4;
    var ss = vec4<f32>(0.0);
    for (var i = 0u; i < d4; i++) {
        let v = x[xb + i];
        ss = fma(v, v, ss);
    }
    let inv = inverseSqrt(((ss.x + ss.y) + (ss.z + ss.w)) / f32(p.dim) + p.eps);
    for (var i = 0u; i < d4; i++) {
        y[yb + i] = w[i] * (x[xb + i] * inv);
    }
}
