// matvec_glu: y[m, n] = silu(dot(x[m, :], wg[n, :])) * dot(x[m, :], wu[n, :]), the gate and up
// projections of a SwiGLU MLP and its activation in one decode dispatch (small M); one output
// per invocation, vec4 loads along K (the layout CPU devices run fastest).
// Bindings: 0 Params (uniform), 1 x [M, K/4] vec4, 2 wg [N, K/4] vec4, 3 wu [N, K/4] vec4,
//           4 y [M, N].
// Dispatch: linear over ceil(N / WG) workgroups. Requires K % 4 == 0. Constants: WG.

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
fn matvec_glu(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let n = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (n >= p.n) {
        return;
    }
    let k4 = p.k / 4u;
    let wrow = n * k4;
    for (var m = 0u; m < p.m; m++) {
        let xrow = m * k4;
        var ag = vec4<f32>(0.0);
        var au = vec4<f32>(0.0);
        for (var i = 0u; i < k4; i++) {
            let xv = x[xrow + i];
            ag = fma(xv, wg[wrow + i], ag);
            au = fma(xv, wu[wrow + i], au);
        }
        let g = (ag.x + ag.y) + (ag.z + ag.w);
        let u = (au.x + au.y) + (au.z + au.w);
        y[m * p.n + n] = g / (1.0 + exp(-g)) * u;
    }
}
