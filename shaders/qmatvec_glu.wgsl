// qmatvec_glu: y[m, n] = silu(dot(x[m, :], wg[n, :])) * dot(x[m, :], wu[n, :]) with wg and wu
// in a blocked format (the format file prepended to this one defines V, XPW, SCALED and
// word_values): the SwiGLU gate and up projections and their activation in one decode
// dispatch (small M). One output per invocation; f32 accumulation.
// Bindings: 0 Params (uniform), 1 x [M, K/4] vec4, 2 wg, 3 wu (each [N, K/32, V] vec4<u32>
//           block data, then [N, K/32] f16 scales (two a u32) for int formats), 4 y [M, N].
// Dispatch: linear over ceil(N / WG) workgroups. Requires K % 32 == 0. Constants: WG.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    _p: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wg: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> wu: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// dot(x[xr * 4 ..], wg[n, :]) and dot(x[xr * 4 ..], wu[n, :]).
fn dots(n: u32, xr: u32) -> vec2<f32> {
    let nb = p.k / 32u;
    let scales = p.n * nb * V * 4u;
    var ag = vec4<f32>(0.0);
    var au = vec4<f32>(0.0);
    for (var b = 0u; b < nb; b++) {
        var bg = vec4<f32>(0.0);
        var bu = vec4<f32>(0.0);
        let base = (n * nb + b) * V;
        let xb = xr + b * 8u;
        for (var t = 0u; t < V; t++) {
            let ug = wg[base + t];
            let uu = wu[base + t];
            for (var j = 0u; j < XPW; j++) {
                let xv = x[xb + t * XPW + j];
                bg = fma(xv, word_values(ug, j), bg);
                bu = fma(xv, word_values(uu, j), bu);
            }
        }
        var sg = 1.0;
        var su = 1.0;
        if (SCALED) {
            let bi = n * nb + b;
            let si = scales + bi / 2u;
            sg = unpack2x16float(wg[si / 4u][si % 4u])[bi % 2u];
            su = unpack2x16float(wu[si / 4u][si % 4u])[bi % 2u];
        }
        ag = fma(bg, vec4<f32>(sg), ag);
        au = fma(bu, vec4<f32>(su), au);
    }
    return vec2<f32>((ag.x + ag.y) + (ag.z + ag.w), (au.x + au.y) + (au.z + au.w));
}

@compute @workgroup_size(WG)
fn qmatvec_glu(
    @builtin(workgroup_id) wgid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let n = (wgid.x + wgid.y * nwg.x) * WG + lid.x;
    if (n >= p.n) {
        return;
    }
    for (var m = 0u; m < p.m; m++) {
        let d = dots(n, m * (p.k / 4u));
        y[m * p.n + n] = d.x / (1.0 + exp(-d.x)) * d.y;
    }
}
