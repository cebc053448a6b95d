// qmatmul: y[m, col0 + n] = sum_k x[m, k] * w[n, k] (+ bias[col0 + n]) for several rows of x
// (prefill, verifications, batches) with w stored in a blocked format (f16, int8 or int4; the
// format file prepended to this one defines V, XPW, SCALED and word_values). Each invocation
// computes a ROWS x 4 tile of y: it decodes each weight block of its 4 columns once and uses it
// for ROWS rows of x, where `qlinear` decodes it again for every row. No workgroup memory or
// barriers (costly on CPU devices); neighbouring invocations take neighbouring column groups
// of the same rows. Accumulation is f32, per block, then scaled.
// Bindings: 0 Params (uniform; with accumulate, y += scale * result), 1 x [M, K/4] vec4 (from x_off/4),
//           2 w: one row chunk of N rows: [N, K/32, V] vec4<u32> block data, then [N, K/32] f16 scales (two a u32)
//           (bit patterns; int formats only), 3 bias [>= col0 + N] (ignored unless has_bias),
//           4 y [M, ldy] (from y_off).
// Dispatch: linear over ceil(ceil(N / 4) * ceil(M / ROWS) / WG) workgroups. Requires K % 32 == 0
// and x_off % 4 == 0. Constants: WG, ROWS.

// Params, bias (binding 3), y (binding 4) and store(): linear_common.wgsl, prepended.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;

@compute @workgroup_size(WG)
fn qmatmul(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = (wg.x + wg.y * nwg.x) * WG + lid.x;
    let ng = (p.n + 3u) / 4u;
    let mg = (p.m + ROWS - 1u) / ROWS;
    if (g >= ng * mg) {
        return;
    }
    let n0 = (g % ng) * 4u;
    let m0 = (g / ng) * ROWS;
    let k4 = p.k / 4u;
    let nb = p.k / 32u;
    let scales = p.n * nb * V * 4u;
    // Rows and columns past the end repeat the last one (their results are not written).
    var xr: array<u32, ROWS>;
    for (var i = 0u; i < ROWS; i++) {
        xr[i] = p.x_off / 4u + min(m0 + i, p.m - 1u) * k4;
    }
    var wr: array<u32, 4>;
    for (var c = 0u; c < 4u; c++) {
        wr[c] = min(n0 + c, p.n - 1u) * nb;
    }
    var acc: array<vec4<f32>, ROWS>;
    for (var i = 0u; i < ROWS; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var b = 0u; b < nb; b++) {
        // This block's products, column c in component c.
        var blk: array<vec4<f32>, ROWS>;
        for (var i = 0u; i < ROWS; i++) {
            blk[i] = vec4<f32>(0.0);
        }
        for (var t = 0u; t < V; t++) {
            var u: array<vec4<u32>, 4>;
            for (var c = 0u; c < 4u; c++) {
                u[c] = w[(wr[c] + b) * V + t];
            }
            for (var j = 0u; j < XPW; j++) {
                // Decoded once, used for every row.
                let w0 = word_values(u[0], j);
                let w1 = word_values(u[1], j);
                let w2 = word_values(u[2], j);
                let w3 = word_values(u[3], j);
                let xi = b * 8u + t * XPW + j;
                for (var i = 0u; i < ROWS; i++) {
                    let a = x[xr[i] + xi];
                    blk[i] += vec4<f32>(dot(a, w0), dot(a, w1), dot(a, w2), dot(a, w3));
                }
            }
        }
        var s = vec4<f32>(1.0);
        if (SCALED) {
            for (var c = 0u; c < 4u; c++) {
                let bi = wr[c] + b;
                let si = scales + bi / 2u;
                s[c] = unpack2x16float(w[si / 4u][si % 4u])[bi % 2u];
            }
        }
        for (var i = 0u; i < ROWS; i++) {
            acc[i] = fma(blk[i], s, acc[i]);
        }
    }
    var bv = vec4<f32>(0.0);
    if (p.has_bias != 0u) {
        for (var c = 0u; c < 4u; c++) {
            bv[c] = bias[p.col0 + min(n0 + c, p.n - 1u)];
        }
    }
    for (var i = 0u; i < ROWS; i++) {
        let m = m0 + i;
        if (m >= p.m) {
            break;
        }
        for (var c = 0u; c < 4u; c++) {
            let n = n0 + c;
            if (n < p.n) {
                store(p.y_off + m * p.ldy + p.col0 + n, acc[i][c] + bv[c]);
            }
        }
    }
}
