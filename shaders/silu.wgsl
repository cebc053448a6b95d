// silu: x[i] <- x[i] * sigmoid(x[i]), in place (the shadow update networks' hidden layer).
// Bindings: 0 Params, 1 x [n] (read_write).
// Dispatch: linear over ceil(n / WG) workgroups. Constants: WG.

struct Params {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WG)
fn silu(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (i >= p.n) {
        return;
    }
    let v = x[i];
    x[i] = v / (1.0 + exp(-v));
}
