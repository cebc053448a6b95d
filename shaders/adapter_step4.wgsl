// adapter_step4: the shadow adapter's step of adapter_common (prepended), for widths that are
// multiples of 4: h and s as vec4, the products over dim (the LayerNorm, the hidden layers,
// Wd) reading four values of h, s and the weights a load, and each invocation of the products
// to dim (T's and G's output layers, Wu) computing four consecutive outputs, one vec4 of s or h.
// Requires dim % 4 == 0 and the slots' parts starting at multiples of 4 (PackedSlot pads them).
// Bindings (after adapter_common's): 3 h [.., dim / 4] vec4, 4 s [.., dim / 4] vec4, 5 and 6
// the slots pu and pi again, as vec4.

@group(0) @binding(3) var<storage, read_write> h: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> s: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> pu4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> pi4: array<vec4<f32>>;

// Outputs per pass of the hidden layers and of Wd, each a vec4 of partial sums per row: 4, where
// wider passes (adapter_common's JG, JR) ran slower here and took llvmpipe 2 to 4 times as long
// to compile at 8 rows a workgroup (1.2 s at 4).
const JG4: u32 = min(G2, 4u);
const JR4: u32 = min(R, 4u);

// The sum of a vec4's lanes.
fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

@compute @workgroup_size(WG)
fn adapter_step4(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let r0 = (wg.x + wg.y * nwg.x) * RB;
    if (r0 >= p.rows) {
        return;
    }
    let t = lid.x;
    let d4 = p.dim / 4u;
    // Each row's start (in vec4s); rows past the last repeat it (and write nothing).
    var base: array<u32, RB>;
    for (var r = 0u; r < RB; r++) {
        base[r] = (p.row0 + min(r0 + r, p.rows - 1u)) * d4;
    }
    // Rows of this workgroup that are real (compared, never a loop bound: lavapipe recompiles
    // a shader for small loop bounds that come from uniforms).
    let live = min(RB, p.rows - r0);
    if (UPDATE == 1u) {
        // 1. The LayerNorm's statistics (official form).
        var mean: array<f32, RB>;
        var inv: array<f32, RB>;
        for (var r = 0u; r < RB; r++) {
            inv[r] = 1.0;
            if (NORM == 1u) {
                var sum = vec4<f32>(0.0);
                for (var i = t; i < d4; i += WG) {
                    sum += h[base[r] + i];
                }
                mean[r] = reduce_sum(hsum(sum), t) / f32(p.dim);
                var ss = vec4<f32>(0.0);
                for (var i = t; i < d4; i += WG) {
                    let d = h[base[r] + i] - mean[r];
                    ss = fma(d, d, ss);
                }
                inv[r] = inverseSqrt(reduce_sum(hsum(ss), t) / f32(p.dim) + p.eps);
            }
        }
        // 2. Hidden layers of T (j < G) and G (j >= G), JG4 at a time: partial sums over this
        // invocation's vec4s of u (four lanes of sums each), then their total.
        let ln4 = p.ln / 4u;
        let hid4 = p.hidden / 4u;
        for (var j0 = 0u; j0 < G2; j0 += JG4) {
            var acc = array<array<vec4<f32>, JG4>, RB>();
            for (var i = t; i < d4; i += WG) {
                var u: array<vec4<f32>, RB>;
                for (var r = 0u; r < RB; r++) {
                    u[r] = h[base[r] + i];
                    if (NORM == 1u) {
                        u[r] = (u[r] - mean[r]) * inv[r] * pu4[ln4 + i] + pu4[ln4 + d4 + i];
                    }
                }
                for (var j = 0u; j < JG4; j++) {
                    let w = pu4[hid4 + min(j0 + j, G2 - 1u) * d4 + i];
                    for (var r = 0u; r < RB; r++) {
                        acc[r][j] = fma(u[r], w, acc[r][j]);
                    }
                }
            }
            for (var r = 0u; r < RB; r++) {
                for (var j = 0u; j < JG4; j++) {
                    partials[(r * WG + t) * CH + j] = hsum(acc[r][j]);
                }
            }
            hidden_totals(t, j0, min(JG4, G2 - j0));
        }
        // 3. Output layers: each invocation takes 4 consecutive outputs (one vec4 of s).
        for (var i4 = t; i4 < d4; i4 += WG) {
            var tv = array<vec4<f32>, RB>();
            var z = array<vec4<f32>, RB>();
            let i = i4 * 4u;
            for (var j = 0u; j < G2 / 2u; j++) {
                let wt = vec4<f32>(pu[p.t1 + i * p.g + j], pu[p.t1 + (i + 1u) * p.g + j],
                                   pu[p.t1 + (i + 2u) * p.g + j], pu[p.t1 + (i + 3u) * p.g + j]);
                let wz = vec4<f32>(pu[p.g1 + i * p.g + j], pu[p.g1 + (i + 1u) * p.g + j],
                                   pu[p.g1 + (i + 2u) * p.g + j], pu[p.g1 + (i + 3u) * p.g + j]);
                for (var r = 0u; r < RB; r++) {
                    tv[r] = fma(wt, vec4<f32>(hid[r * G2 + j]), tv[r]);
                    z[r] = fma(wz, vec4<f32>(hid[r * G2 + p.g + j]), z[r]);
                }
            }
            for (var r = 0u; r < RB; r++) {
                if (r < live) {
                    var tr = tv[r];
                    var zr = z[r];
                    if (BIAS == 1u) {
                        tr += pu4[p.out_bias / 4u + i4];
                        zr += pu4[p.out_bias / 4u + d4 + i4];
                    }
                    let sv = s[base[r] + i4];
                    s[base[r] + i4] = sv + (tr - sv) / (1.0 + exp(-zr));
                }
            }
        }
        storageBarrier();
    }
    if (INJECT == 1u) {
        // 4. a = (h - s) Wd^T, JR4 outputs at a time, as in 2.
        let dn4 = p.down / 4u;
        for (var j0 = 0u; j0 < R; j0 += JR4) {
            var acc = array<array<vec4<f32>, JR4>, RB>();
            for (var i = t; i < d4; i += WG) {
                var d: array<vec4<f32>, RB>;
                for (var r = 0u; r < RB; r++) {
                    d[r] = h[base[r] + i] - s[base[r] + i];
                }
                for (var j = 0u; j < JR4; j++) {
                    let w = pi4[dn4 + min(j0 + j, R - 1u) * d4 + i];
                    for (var r = 0u; r < RB; r++) {
                        acc[r][j] = fma(d[r], w, acc[r][j]);
                    }
                }
            }
            for (var r = 0u; r < RB; r++) {
                for (var j = 0u; j < JR4; j++) {
                    partials[(r * WG + t) * CH + j] = hsum(acc[r][j]);
                }
            }
            down_totals(t, j0, min(JR4, R - j0));
        }
        // 5. h += alpha * a Wu^T: each invocation takes 4 consecutive outputs (one vec4 of h).
        for (var i4 = t; i4 < d4; i4 += WG) {
            var acc = array<vec4<f32>, RB>();
            let i = i4 * 4u;
            for (var j = 0u; j < R; j++) {
                let w = vec4<f32>(pi[p.up + i * p.rank + j], pi[p.up + (i + 1u) * p.rank + j],
                                  pi[p.up + (i + 2u) * p.rank + j], pi[p.up + (i + 3u) * p.rank + j]);
                for (var r = 0u; r < RB; r++) {
                    acc[r] = fma(w, vec4<f32>(a[r * R + j]), acc[r]);
                }
            }
            for (var r = 0u; r < RB; r++) {
                if (r < live) {
                    h[base[r] + i4] += p.alpha * acc[r];
                }
            }
        }
    }
}
