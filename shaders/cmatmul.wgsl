// cmatmul: y[m, col0 + n] (+)= dot(x[m, :], w[n, :]) (+ bias[col0 + n]) for a tile of ROWS rows
// of x on CPU devices (lavapipe, SwiftShader): the multi-row form of cmatvec, for batches,
// prompts and verifications, with w in any format (the cformat file prepended to this one
// defines BV, SCALED, OFFSET, UNSHIFT and block_values; cmatvec_common XBlock, xblock_at,
// rows16, quads and quad_acc).
// As in cmatvec, x comes through a uniform binding (CPU compilers load storage buffers lane by
// lane; a uniform value is one load for all lanes). Each invocation computes 16 outputs: it
// decodes a block of each of its 16 weight rows once and uses it for the ROWS rows of x, where
// cmatvec decodes it again for every row, and prepares each block of x (xblock_at) once for the
// 16 weight rows (16 rather than 8: a 16-row q4 tile runs about a fifth faster on lavapipe).
// Each row's sum is the one cmatvec computes: the same block dots, scales and order, so a row
// gives cmatvec's result bit for bit. Rows below p.skip are not written (the host's last tile
// overlaps the one before it, so that the uniform range stays inside x).
// Where ROWS rows of x do not fit one uniform binding, the tile's x comes in two: rows 0..XR
// through binding 1, rows XR..ROWS through binding 5 (XR = ROWS / 2; each half is read by a loop
// of its own, as a choice of binding per load runs about a sixth slower on lavapipe). Otherwise
// XR = ROWS and binding 5 repeats binding 1, unread.
// Bindings: 0 Params (uniform; with accumulate, y += scale * result), 1 x [XR, K/4] vec4
//           (uniform, bound from the tile's first row), 2 w: one row chunk of N rows,
//           [N, K/32, BV] vec4<u32> block data then (int formats) [N, K/32] f16 scales (two a
//           u32), 3 bias [>= col0 + N] (ignored unless has_bias), 4 y [ROWS, ldy] (from y_off),
//           5 x_hi [XR, K/4] vec4 (uniform, the tile's rows from XR; see above).
// Dispatch: linear over ceil(N / 16 / WG) workgroups. Constants: WG, ROWS, XR (ROWS or ROWS / 2),
// XN = XR * K/4. Requires K % 32 == 0.

// Params, bias (binding 3), y (binding 4) and store(): linear_common.wgsl, prepended.
@group(0) @binding(1) var<uniform> x: array<vec4<f32>, XN>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(5) var<uniform> x_hi: array<vec4<f32>, XN>;

// Block b of row m of x_hi, as cmatvec_common's xblock_at prepares a block of x.
fn xblock_hi(m: u32, b: u32) -> XBlock {
    let i = m * (p.k / 4u) + b * 8u;
    return xblock_of(array<vec4<f32>, 8>(x_hi[i], x_hi[i + 1u], x_hi[i + 2u], x_hi[i + 3u],
                                         x_hi[i + 4u], x_hi[i + 5u], x_hi[i + 6u], x_hi[i + 7u]));
}

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
    let g = ((wg.x + wg.y * nwg.x) * WG + lid.x) * 16u;
    if (g >= p.n) {
        return;
    }
    let nb = p.k / 32u;
    let k4 = p.k / 4u;
    // Scales follow the block data (vec4 words).
    let scales = p.n * nb * BV;
    let first = rows16(g, p.n, nb);
    // Outputs g + 4q .. g + 4q + 4 of each row of x in aq.
    var a0: array<vec4<f32>, ROWS>;
    var a1: array<vec4<f32>, ROWS>;
    var a2: array<vec4<f32>, ROWS>;
    var a3: array<vec4<f32>, ROWS>;
    for (var b = 0u; b < nb; b++) {
        let w = quads(0u, scales, first, b);
        for (var m = 0u; m < XR; m++) {
            // One block of x (prepared once) for the 16 weight rows.
            let xb = xblock_at(m * k4 + b * 8u);
            a0[m] = quad_acc(w.q0, xb, a0[m]);
            a1[m] = quad_acc(w.q1, xb, a1[m]);
            a2[m] = quad_acc(w.q2, xb, a2[m]);
            a3[m] = quad_acc(w.q3, xb, a3[m]);
        }
        for (var m = XR; m < ROWS; m++) {
            let xb = xblock_hi(m - XR, b);
            a0[m] = quad_acc(w.q0, xb, a0[m]);
            a1[m] = quad_acc(w.q1, xb, a1[m]);
            a2[m] = quad_acc(w.q2, xb, a2[m]);
            a3[m] = quad_acc(w.q3, xb, a3[m]);
        }
    }
    var bv = array<f32, 16>();
    if (p.has_bias != 0u) {
        for (var c = 0u; c < 16u; c++) {
            bv[c] = bias[p.col0 + min(g + c, p.n - 1u)];
        }
    }
    for (var m = p.skip; m < ROWS; m++) {
        let y0 = p.y_off + m * p.ldy + p.col0 + g;
        let v = array<vec4<f32>, 4>(a0[m], a1[m], a2[m], a3[m]);
        for (var c = 0u; c < 16u; c++) {
            if (g + c < p.n) {
                store(y0 + c, v[c / 4u][c % 4u] + bv[c]);
            }
        }
    }
}
