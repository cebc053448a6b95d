// matvec_glu_subgroup: y[m, n] = silu(dot(x[m, :], wg[n, :])) * dot(x[m, :], wu[n, :]) on
// devices with subgroups: one subgroup per output, lanes along K, subgroupAdd (as
// matvec_subgroup). Needs the wgpu SUBGROUP feature.
// Bindings: 0 Params (uniform), 1 x [M, K/4] vec4, 2 wg [N, K/4] vec4, 3 wu [N, K/4] vec4,
//           4 y [M, N].
// Dispatch: linear over ceil(N / RPW) workgroups. Requires K % 4 == 0. Constants: WG, RPW.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    _p: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wg: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> wu: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn matvec_glu_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sgs: u32,
) {
    let nsg = max(WG / sgs, 1u);
    let sg = lid.x / sgs;
    let k4 = p.k / 4u;
    let row0 = (wid.x + wid.y * nwg.x) * RPW;
    for (var r = sg; r < RPW; r += nsg) {
        let n = row0 + r;
        if (n < p.n) {
            let wrow = n * k4;
            for (var m = 0u; m < p.m; m++) {
                let xrow = m * k4;
                var ag = vec4<f32>(0.0);
                var au = vec4<f32>(0.0);
                for (var i = lane; i < k4; i += sgs) {
                    let xv = x[xrow + i];
                    ag = fma(xv, wg[wrow + i], ag);
                    au = fma(xv, wu[wrow + i], au);
                }
                let g = subgroupAdd((ag.x + ag.y) + (ag.z + ag.w));
                let u = subgroupAdd((au.x + au.y) + (au.z + au.w));
                if (lane == 0u) {
                    y[m * p.n + n] = g / (1.0 + exp(-g)) * u;
                }
            }
        }
    }
}
