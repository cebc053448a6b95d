// update_out: the output layers of both shadow update networks and the gated state update,
// in one dispatch: t = t1[i, :] . th[r, :] + bt1[i], z = g1[i, :] . gh[r, :] + bg1[i]
// (biases when BIAS is 1), s[r, i] <- s[r, i] + sigmoid(z) * (t - s[r, i]); th and gh are
// update_hidden's halves of hid[r, :].
// Bindings: 0 Params, 1 hid [rows, 2G], 2 t1 [dim, G], 3 g1 [dim, G], 4 bias [2 dim]
// (bt1 then bg1), 5 s [rows, dim] (read_write).
// Dispatch: linear over ceil(rows * dim / WG) workgroups. Constants: WG, BIAS.

struct Params {
    rows: u32,
    dim: u32,
    g: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> hid: array<f32>;
@group(0) @binding(2) var<storage, read> t1: array<f32>;
@group(0) @binding(3) var<storage, read> g1: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> s: array<f32>;

@compute @workgroup_size(WG)
fn update_out(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let o = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (o >= p.rows * p.dim) {
        return;
    }
    let r = o / p.dim;
    let i = o - r * p.dim;
    let hb = r * 2u * p.g;
    var t = 0.0;
    var z = 0.0;
    for (var j = 0u; j < p.g; j++) {
        t = fma(t1[i * p.g + j], hid[hb + j], t);
        z = fma(g1[i * p.g + j], hid[hb + p.g + j], z);
    }
    if (BIAS == 1u) {
        t += bias[i];
        z += bias[p.dim + i];
    }
    let sv = s[o];
    s[o] = sv + (t - sv) / (1.0 + exp(-z));
}
