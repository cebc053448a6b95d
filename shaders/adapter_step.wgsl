// adapter_step: what the shadow adapter does between two base layers, in one dispatch: the
// state update after the first (UPDATE, weights pu) and the injection before the second
// (INJECT, weights pi), for RB token rows per workgroup.
//   update: u = LayerNorm(h) (NORM 1, official shadow-peft; eps in Params) or h (NORM 0, peft)
//           th = act(t0 u + bt0);  gh = act(g0 u + bg0)                   (biases when BIAS 1)
//           s <- s + sigmoid(g1 gh + bg1) * (t1 th + bt1 - s)
//   inject: a = (h - s) Wd^T;  h <- h + alpha * a Wu^T
// ACT 0: SiLU, x * sigmoid(x) (official shadow-peft); ACT 1: exact GELU, 0.5 x (1 + erf(x / sqrt 2))
// (Hugging Face peft, torch.nn.GELU()).
// Each adapted layer's weights are one packed f32 buffer (ops::adapter_step::PackedSlot); Params
// holds where each part starts: LayerNorm weight then bias [2, dim], t0 then g0 [2G, dim],
// hidden biases [2G], t1 [dim, G], g1 [dim, G], output biases [2 dim], Wd [R, dim], Wu [dim, R].
// Bindings: 0 Params, 1 pu (the update's slot), 2 pi (the injection's slot), 3 h [.., dim]
// (read_write), 4 s [.., dim] (read_write): rows row0 .. row0 + rows of both.
// Dispatch: one workgroup per RB rows, linear. Constants: WG, RB, UPDATE, INJECT, NORM, BIAS,
// ACT, G2 (= 2G, at least 1), R (the rank, at least 1).
// The two products over dim (the hidden layers, and Wd) run with the invocations over dim, each
// keeping partial sums of up to CH outputs at a time, which then add up across the workgroup:
// every value an invocation loads is its own (CPU devices load storage buffers lane by lane).
// Their chunks are a constant JG or JR outputs wide (a partial chunk's extra outputs are
// computed and dropped), so that CPU compilers keep the sums in registers. The two products
// to dim outputs (T/G's output layers, and Wu) take IC outputs per invocation per pass, so
// that each hidden value or `a` read from workgroup memory serves IC outputs.
// Each weight an invocation loads serves the workgroup's RB rows; every row's sums are taken in
// the same order whatever RB is, so a row's result does not depend on the rows beside it. Rows
// past the last (in the last workgroup) repeat it and write nothing.
// Accumulators declared in a loop are zeroed by an explicit initializer (`= array<...>()`):
// Chromium on SwiftShader does not zero a `var` without one at each pass of the loop, as WGSL
// says it must (the sums then ran on from the last pass).

struct Params {
    rows: u32,
    dim: u32,
    g: u32,
    rank: u32,
    eps: f32,
    alpha: f32,
    ln: u32,
    hidden: u32,
    hidden_bias: u32,
    t1: u32,
    g1: u32,
    out_bias: u32,
    down: u32,
    up: u32,
    row0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pu: array<f32>;
@group(0) @binding(2) var<storage, read> pi: array<f32>;
@group(0) @binding(3) var<storage, read_write> h: array<f32>;
@group(0) @binding(4) var<storage, read_write> s: array<f32>;

var<workgroup> part: array<f32, WG>;
var<workgroup> hid: array<f32, RB * G2>;
var<workgroup> a: array<f32, RB * R>;
// Most outputs of a product over dim summed per pass, and the passes' partial sums [RB, WG, CH].
const CH: u32 = 32u;
var<workgroup> partials: array<f32, RB * WG * CH>;
// Outputs per pass of the hidden layers and of Wd; outputs per invocation of the products to dim.
const JG: u32 = min(G2, CH);
const JR: u32 = min(R, CH);
const IC: u32 = 4u;

// erf(z) for z >= 0 (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7).
fn erf_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return 1.0 - poly * exp(-z * z);
}

fn act(v: f32) -> f32 {
    if (ACT == 0u) {
        return v / (1.0 + exp(-v));
    }
    let e = erf_pos(abs(v) * 0.70710678118654752);
    // 1 + erf(v / sqrt 2), with erf odd.
    return 0.5 * v * select(1.0 - e, 1.0 + e, v >= 0.0);
}

// The total of output j of a pass for row r over every invocation's partial sums.
fn total(r: u32, j: u32) -> f32 {
    var v = 0.0;
    for (var k = 0u; k < WG; k++) {
        v += partials[(r * WG + k) * CH + j];
    }
    return v;
}

fn reduce_sum(v: f32, t: u32) -> f32 {
    part[t] = v;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (t < st) {
            part[t] += part[t + st];
        }
        workgroupBarrier();
    }
    let total = part[0];
    workgroupBarrier();
    return total;
}

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
            workgroupBarrier();
            let nj = min(JG, G2 - j0);
            for (var q = t; q < RB * nj; q += WG) {
                let r = q / nj;
                let j = q - r * nj;
                var v = total(r, j);
                if (BIAS == 1u) {
                    v += pu[p.hidden_bias + j0 + j];
                }
                hid[r * G2 + j0 + j] = act(v);
            }
            workgroupBarrier();
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
            workgroupBarrier();
            let nj = min(JR, R - j0);
            for (var q = t; q < RB * nj; q += WG) {
                let r = q / nj;
                let j = q - r * nj;
                a[r * R + j0 + j] = total(r, j);
            }
            workgroupBarrier();
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
