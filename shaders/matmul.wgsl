// matmul: y[m, col0 + n] = sum_k x[m, k] * w[n, k] (+ bias[col0 + n]), for prefill (M > 1).
// Bindings: 0 Params (uniform; with accumulate, y += scale * result), 1 x [M, K] (from x_off), 2 w [N, K] (one row chunk),
//           3 bias [>= col0 + N] (ignored unless has_bias), 4 y [M, ldy] (from y_off).
// Dispatch: (ceil(N / TN), ceil(M / TM), 1) workgroups of (16, 16) invocations; each invocation
//           accumulates a 4x4 block in f32. Injected constants: none (tile sizes are fixed).

// Params, bias (binding 3), y (binding 4) and store(): linear_common.wgsl, prepended.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> xs: array<f32, 1024>; // [TM, TK]
var<workgroup> ws: array<f32, 1024>; // [TN, TK]

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * TM;
    let col0 = wg.x * TN;
    let tid = lid.y * 16u + lid.x;
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        // Each of the 256 invocations loads 4 elements of each tile.
        for (var e = 0u; e < 4u; e++) {
            let idx = tid * 4u + e;
            let r = idx / TK;
            let c = idx % TK;
            let gk = k0 + c;
            let gm = row0 + r;
            var xv = 0.0;
            if (gm < p.m && gk < p.k) {
                xv = x[p.x_off + gm * p.k + gk];
            }
            xs[idx] = xv;
            let gn = col0 + r;
            var wv = 0.0;
            if (gn < p.n && gk < p.k) {
                wv = w[gn * p.k + gk];
            }
            ws[idx] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs[(lid.y * 4u + i) * TK + kk];
                b[i] = ws[(lid.x * 4u + i) * TK + kk];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(a[i], b[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let gm = row0 + lid.y * 4u + i;
        if (gm >= p.m) {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let gn = col0 + lid.x * 4u + j;
            if (gn < p.n) {
                var v = acc[i][j];
                if (p.has_bias != 0u) {
                    v += bias[p.col0 + gn];
                }
                store(p.y_off + gm * p.ldy + p.col0 + gn, v);
            }
        }
    }
}
