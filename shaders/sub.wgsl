// sub: y[i] = a[i] - b[i] (the injection's delta h - s).
// Bindings: 0 Params, 1 a [n], 2 b [n], 3 y [n].
// Dispatch: linear over ceil(n / WG) workgroups. Constants: WG.

struct Params {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn sub(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (i >= p.n) {
        return;
    }
    y[i] = a[i] - b[i];
}
