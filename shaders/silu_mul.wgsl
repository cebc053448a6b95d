// silu_mul: y[m, i] = silu(gu[m, i]) * gu[m, I + i], the SwiGLU of a fused gate|up projection.
// Bindings: 0 Params, 1 gu [M, 2I], 2 y [M, I].
// Dispatch: linear over ceil(M * I / WG) workgroups. Constants: WG.

struct Params {
    m: u32,
    inter: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gu: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn silu_mul(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let idx = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (idx >= p.m * p.inter) {
        return;
    }
    let m = idx / p.inter;
    let i = idx % p.inter;
    let g = gu[m * 2u * p.inter + i];
    let u = gu[m * 2u * p.inter + p.inter + i];
    y[idx] = g / (1.0 + exp(-g)) * u;
}
