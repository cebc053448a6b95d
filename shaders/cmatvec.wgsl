// cmatvec: y[y_off + col0 + n] (+)= dot(x, w[n, :]) (+ bias[col0 + n]) for decode (M = 1) on CPU
// devices (lavapipe, SwiftShader), with w in any format (the cformat file prepended to this
// one defines BV, SCALED, OFFSET, UNSHIFT and block_dot; cmatvec_common XBlock, xblock, scale4
// and dot4).
// CPU compilers run invocations as SIMD lanes and load storage buffers lane by lane, so x comes
// through a uniform binding (one vector gather per value for all lanes), and each invocation
// computes 8 rows (two vec4 groups), so every block of x (loaded and pre-scaled once) serves 8
// weight rows. Requires K % 32 == 0.
// Bindings: 0 Params (uniform; with accumulate, y += scale * result), 1 x [K/4] vec4 (uniform,
//           bound from the row of x), 2 w: one row chunk of N rows, [N, K/32, BV] vec4<u32>
//           block data then (int formats) [N, K/32] f16 scales (two a u32), 3 bias [>= col0 + N] (ignored unless
//           has_bias), 4 y [1, ldy] (from y_off).
// Dispatch: linear over ceil(N / 8 / WG) workgroups. Constants: WG, XN = K/4.

// Params, bias (binding 3), y (binding 4) and store(): linear_common.wgsl, prepended.
@group(0) @binding(1) var<uniform> x: array<vec4<f32>, XN>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;

// The one weight matrix (mat is always 0 here).
fn wblock(mat: u32, i: u32) -> vec4<u32> {
    return w[i];
}

// XBlock, xblock, scale4, dot4: cmatvec_common.wgsl, prepended.

@compute @workgroup_size(WG)
fn cmatvec(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = ((wg.x + wg.y * nwg.x) * WG + lid.x) * 8u;
    if (g >= p.n) {
        return;
    }
    let nb = p.k / 32u;
    // Scales follow the block data (vec4 words).
    let scales = p.n * nb * BV;
    // First blocks of the 8 rows; rows past the end repeat the last (and are not written).
    let last = vec4<u32>(p.n - 1u);
    let ra = min(vec4<u32>(g) + vec4<u32>(0u, 1u, 2u, 3u), last) * nb;
    let rb = min(vec4<u32>(g) + vec4<u32>(4u, 5u, 6u, 7u), last) * nb;
    var acc_a = vec4<f32>(0.0);
    var acc_b = vec4<f32>(0.0);
    for (var b = 0u; b < nb; b++) {
        let xb = xblock(b);
        let ia = ra + vec4<u32>(b);
        let ib = rb + vec4<u32>(b);
        acc_a = fma(scale4(0u, scales, ia), dot4(0u, ia, xb), acc_a);
        acc_b = fma(scale4(0u, scales, ib), dot4(0u, ib, xb), acc_b);
    }
    let y0 = p.y_off + p.col0 + g;
    for (var c = 0u; c < 4u; c++) {
        var bv = vec2<f32>(0.0);
        if (p.has_bias != 0u) {
            bv = vec2<f32>(bias[p.col0 + min(g + c, p.n - 1u)], bias[p.col0 + min(g + 4u + c, p.n - 1u)]);
        }
        if (g + c < p.n) {
            store(y0 + c, acc_a[c] + bv.x);
        }
        if (g + 4u + c < p.n) {
            store(y0 + 4u + c, acc_b[c] + bv.y);
        }
    }
}
