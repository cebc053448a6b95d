// adapter_step: the shadow adapter's step of adapter_common (prepended), with h and s as f32:
// any width.
// Bindings (after adapter_common's): 3 h [.., dim], 4 s [.., dim].

@group(0) @binding(3) var<storage, read_write> h: array<f32>;
@group(0) @binding(4) var<storage, read_write> s: array<f32>;

@compute @workgroup_size(WG)
fn adapter_step(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let r0 = (wg.x + wg.y * nwg.x) * RB;
    if (r0 >= p.rows) {
        return;
    }
    let t = lid.x;
    // Each row's start; rows past the last repeat it (and write nothing).
    var base: array<u32, RB>;
    for (var r = 0u; r < RB; r++) {
        base[r] = (p.row0 + min(r0 + r, p.rows - 1u)) * p.dim;
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
                var sum = 0.0;
                for (var i = t; i < p.dim; i += WG) {
                    sum += h[base[r] + i];
                }
                mean[r] = reduce_sum(sum, t) / f32(p.dim);
                var ss = 0.0;
                for (var i = t; i < p.dim; i += WG) {
                    let d = h[base[r] + i] - mean[r];
                    ss = fma(d, d, ss);
                }
                inv[r] = inverseSqrt(reduce_sum(ss, t) / f32(p.dim) + p.eps);
            }
        }
        // 2. Hidden layers of T (j < G) and G (j >= G), JG at a time: partial sums over this
        // invocation's values of u, then their total. Past the last output, a partial chunk
        // repeats the last weight row and stores nothing.
        for (var j0 = 0u; j0 < G2; j0 += JG) {
            var acc = array<array<f32, JG>, RB>();
            for (var i = t; i < p.dim; i += WG) {
                var u: array<f32, RB>;
                for (var r = 0u; r < RB; r++) {
                    u[r] = h[base[r] + i];
                    if (NORM == 1u) {
                        u[r] = (u[r] - mean[r]) * inv[r] * pu[p.ln + i] + pu[p.ln + p.dim + i];
                    }
                }
                for (var j = 0u; j < JG; j++) {
                    let w = pu[p.hidden + min(j0 + j, G2 - 1u) * p.dim + i];
                    for (var r = 0u; r < RB; r++) {
                        acc[r][j] = fma(u[r], w, acc[r][j]);
                    }
                }
            }
            for (var r = 0u; r < RB; r++) {
                for (var j = 0u; j < JG; j++) {
                    partials[(r * WG + t) * CH + j] = acc[r][j];
                }
            }
            hidden_totals(t, j0, min(JG, G2 - j0));
        }
        // 3. Output layers and the gated update, IC outputs per invocation per pass.
        for (var i0 = t; i0 < p.dim; i0 += WG * IC) {
            var tv = array<array<f32, IC>, RB>();
            var z = array<array<f32, IC>, RB>();
            for (var j = 0u; j < G2 / 2u; j++) {
                var wt: array<f32, IC>;
                var wz: array<f32, IC>;
                for (var c = 0u; c < IC; c++) {
                    let i = min(i0 + c * WG, p.dim - 1u);
                    wt[c] = pu[p.t1 + i * p.g + j];
                    wz[c] = pu[p.g1 + i * p.g + j];
                }
                for (var r = 0u; r < RB; r++) {
                    let ht = hid[r * G2 + j];
                    let hg = hid[r * G2 + p.g + j];
                    for (var c = 0u; c < IC; c++) {
                        tv[r][c] = fma(wt[c], ht, tv[r][c]);
                        z[r][c] = fma(wz[c], hg, z[r][c]);
                    }
                }
            }
            for (var r = 0u; r < RB; r++) {
                for (var c = 0u; c < IC; c++) {
                    let i = i0 + c * WG;
                    if (r < live && i < p.dim) {
                        var tr = tv[r][c];
                        var zr = z[r][c];
                        if (BIAS == 1u) {
                            tr += pu[p.out_bias + i];
                            zr += pu[p.out_bias + p.dim + i];
                        }
                        let sv = s[base[r] + i];
                        s[base[r] + i] = sv + (tr - sv) / (1.0 + exp(-zr));
                    }
                }
            }
        }
        storageBarrier();
    }
    if (INJECT == 1u) {
        // 4. a = (h - s) Wd^T, JR outputs at a time: partial sums, then their total.
        for (var j0 = 0u; j0 < R; j0 += JR) {
            var acc = array<array<f32, JR>, RB>();
            for (var i = t; i < p.dim; i += WG) {
                var d: array<f32, RB>;
                for (var r = 0u; r < RB; r++) {
                    d[r] = h[base[r] + i] - s[base[r] + i];
                }
                for (var j = 0u; j < JR; j++) {
                    let w = pi[p.down + min(j0 + j, R - 1u) * p.dim + i];
                    for (var r = 0u; r < RB; r++) {
                        acc[r][j] = fma(d[r], w, acc[r][j]);
                    }
                }
            }
            for (var r = 0u; r < RB; r++) {
                for (var j = 0u; j < JR; j++) {
                    partials[(r * WG + t) * CH + j] = acc[r][j];
                }
            }
            down_totals(t, j0, min(JR, R - j0));
        }
        // 5. h += alpha * a Wu^T, IC outputs per invocation per pass.
        for (var i0 = t; i0 < p.dim; i0 += WG * IC) {
            var acc = array<array<f32, IC>, RB>();
            for (var j = 0u; j < R; j++) {
                var w: array<f32, IC>;
                for (var c = 0u; c < IC; c++) {
                    w[c] = pi[p.up + min(i0 + c * WG, p.dim - 1u) * p.rank + j];
                }
                for (var r = 0u; r < RB; r++) {
                    let av = a[r * R + j];
                    for (var c = 0u; c < IC; c++) {
                        acc[r][c] = fma(w[c], av, acc[r][c]);
                    }
                }
            }
            for (var r = 0u; r < RB; r++) {
                for (var c = 0u; c < IC; c++) {
                    let i = i0 + c * WG;
                    if (r < live && i < p.dim) {
                        h[base[r] + i] += p.alpha * acc[r][c];
                    }
                }
            }
        }
    }
}
