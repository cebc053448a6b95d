// cmatmul: y[m, col0 + n] (+)= dot(x[m, :], w[n, :]) (+ bias[col0 + n]) for a tile of ROWS rows
// of x on CPU devices (lavapipe, SwiftShader): the multi-row form of cmatvec, for batches,
// prompts and verifications, with w in any format (the cformat file prepended to this one
// defines BV, SCALED, OFFSET, UNSHIFT and block_values; cmatvec_common XBlock, xblock_at,
// scale4 and wdot).
// As in cmatvec, x comes through a uniform binding (CPU compilers load storage buffers lane by
// lane; a uniform value is one load for all lanes). Each invocation decodes a block of each of
// its 8 weight rows once and uses it for the ROWS rows of x, where cmatvec decodes it again
// for every row, and prepares each block of x (xblock_at) once for the 8 weight rows. Each
// row's sum is the one cmatvec computes: the same block dots, scales and order, so a row gives
// cmatvec's result bit for bit. Rows below p.skip are not written (the
// host's last tile overlaps the one before it, so that the uniform range stays inside x).
// Bindings: 0 Params (uniform; with accumulate, y += scale * result), 1 x [ROWS, K/4] vec4
//           (uniform, bound from the tile's first row), 2 w: one row chunk of N rows,
//           [N, K/32, BV] vec4<u32> block data then (int formats) [N, K/32] f16 scales (two a
//           u32), 3 bias [>= col0 + N] (ignored unless has_bias), 4 y [ROWS, ldy] (from y_off).
// Dispatch: linear over ceil(N / 8 / WG) workgroups. Constants: WG, ROWS, XN = ROWS * K/4.
// Requires K % 32 == 0.

// Params, bias (binding 3), y (binding 4) and store(): linear_common.wgsl, prepended.
@group(0) @binding(1) var<uniform> x: array<vec4<f32>, XN>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;

// The one weight matrix (mat is always 0 here).
fn wblock(mat: u32, i: u32) -> vec4<u32> {
    return w[i];
}

@compute @workgroup_size(WG)
fn cmatmul(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = ((wg.x + wg.y * nwg.x) * WG + lid.x) * 8u;
    if (g >= p.n) {
        return;
    }
    let nb = p.k / 32u;
    let k4 = p.k / 4u;
    // Scales follow the block data (vec4 words).
    let scales = p.n * nb * BV;
    // First blocks of the 8 rows; rows past the end repeat the last (and are not written).
    let last = vec4<u32>(p.n - 1u);
    let ra = min(vec4<u32>(g) + vec4<u32>(0u, 1u, 2u, 3u), last) * nb;
    let rb = min(vec4<u32>(g) + vec4<u32>(4u, 5u, 6u, 7u), last) * nb;
    var acc: array<vec4<f32>, ROWS>;
    var acc2: array<vec4<f32>, ROWS>;
    for (var b = 0u; b < nb; b++) {
        let i = ra + vec4<u32>(b);
        let j = rb + vec4<u32>(b);
        let w0 = block_values(0u, i.x);
        let w1 = block_values(0u, i.y);
        let w2 = block_values(0u, i.z);
        let w3 = block_values(0u, i.w);
        let w4 = block_values(0u, j.x);
        let w5 = block_values(0u, j.y);
        let w6 = block_values(0u, j.z);
        let w7 = block_values(0u, j.w);
        let s = scale4(0u, scales, i);
        let s2 = scale4(0u, scales, j);
        for (var m = 0u; m < ROWS; m++) {
            // One block of x (prepared once) for the 8 weight rows.
            let xb = xblock_at(m * k4 + b * 8u);
            let d = vec4<f32>(wdot(w0, xb), wdot(w1, xb), wdot(w2, xb), wdot(w3, xb));
            let d2 = vec4<f32>(wdot(w4, xb), wdot(w5, xb), wdot(w6, xb), wdot(w7, xb));
            acc[m] = fma(s, d, acc[m]);
            acc2[m] = fma(s2, d2, acc2[m]);
        }
    }
    var bv = vec4<f32>(0.0);
    var bv2 = vec4<f32>(0.0);
    if (p.has_bias != 0u) {
        for (var c = 0u; c < 4u; c++) {
            bv[c] = bias[p.col0 + min(g + c, p.n - 1u)];
            bv2[c] = bias[p.col0 + min(g + 4u + c, p.n - 1u)];
        }
    }
    for (var m = p.skip; m < ROWS; m++) {
        let y0 = p.y_off + m * p.ldy + p.col0 + g;
        for (var c = 0u; c < 4u; c++) {
            if (g + c < p.n) {
                store(y0 + c, acc[m][c] + bv[c]);
            }
            if (g + 4u + c < p.n) {
                store(y0 + 4u + c, acc2[m][c] + bv2[c]);
            }
        }
    }
}
