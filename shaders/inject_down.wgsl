// inject_down: the first half of the shadow injection, a[r, j] = (h[r, :] - s[r, :]) . w[j, :]
// for j < rank (the subtraction fused into the projection; the second half is linear_add).
// Bindings: 0 Params, 1 h [rows, dim], 2 s [rows, dim], 3 w [rank, dim], 4 a [rows, rank].
// Dispatch: linear over ceil(rows * rank / WG) workgroups. Constants: WG.

struct Params {
    rows: u32,
    dim: u32,
    rank: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read> s: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> a: array<f32>;

@compute @workgroup_size(WG)
fn inject_down(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let o = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (o >= p.rows * p.rank) {
        return;
    }
    let r = o / p.rank;
    let j = o - r * p.rank;
    let hb = r * p.dim;
    let wb = j * p.dim;
    var acc = 0.0;
    for (var i = 0u; i < p.dim; i++) {
        acc = fma(h[hb + i] - s[hb + i], w[wb + i], acc);
    }
    a[o] = acc;
}
