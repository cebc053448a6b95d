// shadow_update: s[i] <- s[i] + sigmoid(g[i]) * (t[i] - s[i]), the gated shadow state update
// (g = gate logits before the sigmoid, t = transform output).
// Bindings: 0 Params, 1 t [n], 2 g [n], 3 s [n] (read_write).
// Dispatch: linear over ceil(n / WG) workgroups. Constants: WG.

struct Params {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> t: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> s: array<f32>;

@compute @workgroup_size(WG)
fn shadow_update(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (i >= p.n) {
        return;
    }
    let gate = 1.0 / (1.0 + exp(-g[i]));
    let sv = s[i];
    s[i] = sv + gate * (t[i] - sv);
}
