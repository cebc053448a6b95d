// rms_norm: y[r, :] = x[r, :] * inverseSqrt(mean(x[r, :]^2) + eps) * w[:]
// Used for the layer norms (rows = tokens, dim = hidden) and for Qwen3's per-head q/k norm
// (rows = tokens * heads, dim = head_dim).
// Bindings: 0 Params, 1 x [rows, dim] (from x_off), 2 w [dim], 3 y [rows, dim] (from y_off).
// Dispatch: one workgroup per row, linear (2-D when rows > 65535). Constants: WG.

// Params and binding 0: rms_norm_common.wgsl, prepended.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> part: array<f32, WG>;

@compute @workgroup_size(WG)
fn rms_norm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let r = wg.x + wg.y * nwg.x;
    if (r >= p.rows) {
        return;
    }
    let xb = p.x_off + r * p.dim;
    let yb = p.y_off + r * p.dim;
    var ss = 0.0;
    for (var i = lid.x; i < p.dim; i += WG) {
        let v = x[xb + i];
        ss = fma(v, v, ss);
    }
    part[lid.x] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            part[lid.x] += part[lid.x + s];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(part[0] / f32(p.dim) + p.eps);
    for (var i = lid.x; i < p.dim; i += WG) {
        y[yb + i] = w[i] * (x[xb + i] * inv);
    }
}
