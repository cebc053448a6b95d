// cmatvec_glu: y[n] = silu(dot(x, wg[n, :])) * dot(x, wu[n, :]) for decode (M = 1) on CPU devices:
// the SwiGLU gate and up projections and their activation in one dispatch, with the weights in
// any format (the cformat file prepended to this one defines BV, SCALED, OFFSET, UNSHIFT and
// block_dot; cmatvec_common XBlock, xblock, scale4 and dot4). As in cmatvec, x comes through
// a uniform binding; each invocation computes 4 outputs (4 rows of each matrix), so every block
// of x serves 8 weight rows. f32 accumulation. Requires K % 32 == 0.
// Bindings: 0 Params (uniform), 1 x [K/4] vec4 (uniform), 2 wg, 3 wu (each [N, K/32, BV] vec4<u32>
//           block data, then (int formats) [N, K/32] f16 scales (two a u32)), 4 y [N].
// Dispatch: linear over ceil(N / 4 / WG) workgroups. Constants: WG, XN = K/4.

struct Params {
    n: u32,
    k: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> x: array<vec4<f32>, XN>;
@group(0) @binding(2) var<storage, read> wg: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> wu: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// Matrix 0 is the gate, 1 the up projection.
fn wblock(mat: u32, i: u32) -> vec4<u32> {
    if (mat == 0u) {
        return wg[i];
    }
    return wu[i];
}

@compute @workgroup_size(WG)
fn cmatvec_glu(
    @builtin(workgroup_id) wgid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = ((wgid.x + wgid.y * nwg.x) * WG + lid.x) * 4u;
    if (g >= p.n) {
        return;
    }
    let nb = p.k / 32u;
    let scales = p.n * nb * BV;
    // First blocks of the 4 rows; rows past the end repeat the last (and are not written).
    let r = min(vec4<u32>(g) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u)) * nb;
    var gate = vec4<f32>(0.0);
    var up = vec4<f32>(0.0);
    for (var b = 0u; b < nb; b++) {
        let xb = xblock(b);
        let i = r + vec4<u32>(b);
        gate = fma(scale4(0u, scales, i), dot4(0u, i, xb), gate);
        up = fma(scale4(1u, scales, i), dot4(1u, i, xb), up);
    }
    let act = gate / (1.0 + exp(-gate)) * up;
    for (var c = 0u; c < 4u; c++) {
        if (g + c < p.n) {
            y[g + c] = act[c];
        }
    }
}
