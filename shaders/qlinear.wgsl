// qlinear: y[m, col0 + n] = sum_k x[m, k] * w[n, k] (+ bias[col0 + n]) with w stored in a
// blocked format (f16, int8 or int4; the format file prepended to this one defines V, SCALED
// and unpack_block). Each invocation computes one output column for up to 4 rows of x, so
// every weight block is decoded once per 4 rows; neighbouring invocations take neighbouring
// columns. Accumulation is f32. Serves decode (M = 1) and prefill alike.
// Bindings: 0 Params (uniform; with accumulate, y += scale * result), 1 x [M, K/4] vec4 (from x_off/4),
//           2 w: one row chunk of N rows: [N, K/32, V] vec4<u32> block data, then [N, K/32] f32 scales
//           (bit patterns; int formats only), 3 bias [>= col0 + N] (ignored unless has_bias),
//           4 y [M, ldy] (from y_off).
// Dispatch: linear over ceil(N * ceil(M / 4) / WG) workgroups. Requires K % 32 == 0 and
// x_off % 4 == 0. Constants: WG.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    x_off: u32,
    y_off: u32,
    ldy: u32,
    col0: u32,
    has_bias: u32,
    // 1: y += scale * result (a fused residual add); 0: y = result.
    accumulate: u32,
    scale: f32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn store(i: u32, v: f32) {
    if (p.accumulate != 0u) {
        y[i] += p.scale * v;
    } else {
        y[i] = v;
    }
}

@compute @workgroup_size(WG)
fn qlinear(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (g >= p.n * ((p.m + 3u) / 4u)) {
        return;
    }
    let n = g % p.n;
    let m0 = (g / p.n) * 4u;
    let rows = min(4u, p.m - m0);
    let k4 = p.k / 4u;
    let nb = p.k / 32u;
    let scales = p.n * nb * V * 4u;
    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var b = 0u; b < nb; b++) {
        var d: array<vec4<u32>, V>;
        let base = (n * nb + b) * V;
        for (var t = 0u; t < V; t++) {
            d[t] = w[base + t];
        }
        let q = unpack_block(d);
        var s = 1.0;
        if (SCALED) {
            let si = scales + n * nb + b;
            s = bitcast<f32>(w[si / 4u][si % 4u]);
        }
        for (var i = 0u; i < rows; i++) {
            let xb = p.x_off / 4u + (m0 + i) * k4 + b * 8u;
            var a = x[xb] * q[0];
            for (var j = 1u; j < 8u; j++) {
                a = fma(x[xb + j], q[j], a);
            }
            acc[i] = fma(a, vec4<f32>(s), acc[i]);
        }
    }
    var bv = 0.0;
    if (p.has_bias != 0u) {
        bv = bias[p.col0 + n];
    }
    for (var i = 0u; i < rows; i++) {
        let a = acc[i];
        store(p.y_off + (m0 + i) * p.ldy + p.col0 + n, (a.x + a.y) + (a.z + a.w) + bv);
    }
}
