// layer_norm: y[r, :] = (x[r, :] - mean) * inverseSqrt(var + eps) * w[:] + b[:]
// (biased variance, as torch.nn.LayerNorm). The shadow update's shared `hidden_norm`.
// Bindings: 0 Params, 1 x [rows, dim], 2 w [dim], 3 b [dim], 4 y [rows, dim].
// Dispatch: one workgroup per row, linear. Constants: WG.

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> part: array<f32, WG>;

fn reduce_sum(v: f32, t: u32) -> f32 {
    part[t] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            part[t] += part[t + s];
        }
        workgroupBarrier();
    }
    let total = part[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn layer_norm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let r = wg.x + wg.y * nwg.x;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.dim;
    var s = 0.0;
    for (var i = lid.x; i < p.dim; i += WG) {
        s += x[base + i];
    }
    let mean = reduce_sum(s, lid.x) / f32(p.dim);
    var ss = 0.0;
    for (var i = lid.x; i < p.dim; i += WG) {
        let d = x[base + i] - mean;
        ss = fma(d, d, ss);
    }
    let inv = inverseSqrt(reduce_sum(ss, lid.x) / f32(p.dim) + p.eps);
    for (var i = lid.x; i < p.dim; i += WG) {
        y[base + i] = (x[base + i] - mean) * inv * w[i] + b[i];
    }
}
