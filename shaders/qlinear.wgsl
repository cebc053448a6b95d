// qlinear: y[m, col0 + n] = sum_k x[m, k] * w[n, k] (+ bias[col0 + n]) with w stored in a
// blocked format (f16, int8 or int4; the format file prepended to this one defines V, XPW,
// SCALED and word_values). Each invocation computes COLS neighbouring output columns of one
// row of x, so each block of x is loaded once for COLS weight rows (COLS = 4 for wide
// outputs, 1 where that would leave too few workgroups to spread over the device);
// neighbouring invocations take neighbouring column groups. Accumulation is f32. Serves
// decode (M = 1) and prefill alike.
// Bindings: 0 Params (uniform; with accumulate, y += scale * result), 1 x [M, K/4] vec4 (from x_off/4),
//           2 w: one row chunk of N rows: [N, K/32, V] vec4<u32> block data, then [N, K/32] f16 scales (two a u32)
//           (bit patterns; int formats only), 3 bias [>= col0 + N] (ignored unless has_bias),
//           4 y [M, ldy] (from y_off).
// Dispatch: linear over ceil(ceil(N / COLS) * M / WG) workgroups. Requires K % 32 == 0 and
// x_off % 4 == 0. Constants: WG, COLS.

// Params, bias (binding 3), y (binding 4) and store(): linear_common.wgsl, prepended.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;



@compute @workgroup_size(WG)
fn qlinear(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = (wg.x + wg.y * nwg.x) * WG + lid.x;
    let ng = (p.n + COLS - 1u) / COLS;
    if (g >= ng * p.m) {
        return;
    }
    let n0 = (g % ng) * COLS;
    let m = g / ng;
    let k4 = p.k / 4u;
    let nb = p.k / 32u;
    let scales = p.n * nb * V * 4u;
    // Columns past the end repeat the last one (their results are not written).
    var r: array<u32, COLS>;
    for (var c = 0u; c < COLS; c++) {
        r[c] = min(n0 + c, p.n - 1u);
    }
    var acc: array<vec4<f32>, COLS>;
    for (var c = 0u; c < COLS; c++) {
        acc[c] = vec4<f32>(0.0);
    }
    let xr = p.x_off / 4u + m * k4;
    for (var b = 0u; b < nb; b++) {
        var xs: array<vec4<f32>, 8>;
        for (var j = 0u; j < 8u; j++) {
            xs[j] = x[xr + b * 8u + j];
        }
        for (var c = 0u; c < COLS; c++) {
            var a = vec4<f32>(0.0);
            let base = (r[c] * nb + b) * V;
            for (var t = 0u; t < V; t++) {
                let u = w[base + t];
                for (var j = 0u; j < XPW; j++) {
                    a = fma(xs[t * XPW + j], word_values(u, j), a);
                }
            }
            var s = 1.0;
            if (SCALED) {
                let bi = r[c] * nb + b;
                let si = scales + bi / 2u;
                s = unpack2x16float(w[si / 4u][si % 4u])[bi % 2u];
            }
            acc[c] = fma(a, vec4<f32>(s), acc[c]);
        }
    }
    for (var c = 0u; c < COLS; c++) {
        let n = n0 + c;
        if (n < p.n) {
            var bv = 0.0;
            if (p.has_bias != 0u) {
                bv = bias[p.col0 + n];
            }
            let a = acc[c];
            store(p.y_off + m * p.ldy + p.col0 + n, (a.x + a.y) + (a.z + a.w) + bv);
        }
    }
}
