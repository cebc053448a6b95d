// matmul_cpu: y[m, col0 + n] = sum_k x[m, k] * w[n, k] (+ bias[col0 + n]) for prefill on CPU
// devices (lavapipe, SwiftShader), where workgroup barriers are expensive: no workgroup memory,
// no barriers. Each invocation computes a 4x4 block of y from vec4 loads of 4 rows of x and 4
// rows of w (the CPU caches provide the reuse a GPU gets from workgroup tiles); neighbouring
// invocations take neighbouring column blocks of the same row block.
// Bindings: 0 Params (uniform; with accumulate, y += scale * result), 1 x [M, K/4] vec4 (from x_off/4), 2 w [N, K/4] vec4,
//           3 bias [>= col0 + N] (ignored unless has_bias), 4 y [M, ldy] (from y_off).
// Dispatch: linear over ceil(ceil(N / 4) * ceil(M / 4) / WG) workgroups. Requires K % 4 == 0
// and x_off % 4 == 0. Constants: WG.

// Params, bias (binding 3), y (binding 4) and store(): linear_common.wgsl, prepended.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn matmul_cpu(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = (wg.x + wg.y * nwg.x) * WG + lid.x;
    let nb = (p.n + 3u) / 4u;
    let mb = (p.m + 3u) / 4u;
    if (g >= nb * mb) {
        return;
    }
    let n0 = (g % nb) * 4u;
    let m0 = (g / nb) * 4u;
    let k4 = p.k / 4u;
    // Rows past the end repeat the last one (their results are not written).
    var xr: array<u32, 4>;
    var wr: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        xr[i] = p.x_off / 4u + min(m0 + i, p.m - 1u) * k4;
        wr[i] = min(n0 + i, p.n - 1u) * k4;
    }
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var t = 0u; t < k4; t++) {
        var a: array<vec4<f32>, 4>;
        var b: array<vec4<f32>, 4>;
        for (var i = 0u; i < 4u; i++) {
            a[i] = x[xr[i] + t];
            b[i] = w[wr[i] + t];
        }
        for (var i = 0u; i < 4u; i++) {
            for (var j = 0u; j < 4u; j++) {
                acc[i][j] += dot(a[i], b[j]);
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let gm = m0 + i;
        if (gm >= p.m) {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let gn = n0 + j;
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
