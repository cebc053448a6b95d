// add: y[i] <- y[i] + alpha * x[i] (residual adds with alpha = 1; the shadow injection's
// `h += alpha * delta` with the adapter's alpha).
// Bindings: 0 Params, 1 x [n], 2 y [n] (read_write).
// Dispatch: linear over ceil(n / WG) workgroups. Constants: WG.

struct Params {
    n: u32,
    alpha: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn add(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (i >= p.n) {
        return;
    }
    y[i] = fma(p.alpha, x[i], y[i]);
}
