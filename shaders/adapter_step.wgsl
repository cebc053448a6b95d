// adapter_step: what the shadow adapter does between two base layers, in one dispatch: the
// state update after the first (UPDATE, weights pu) and the injection before the second
// (INJECT, weights pi), for one token row per workgroup.
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
// Dispatch: one workgroup per row, linear. Constants: WG, UPDATE, INJECT, NORM, BIAS, ACT,
// G2 (= 2G, at least 1), R (the rank, at least 1).
// The two products over dim (the hidden layers, and Wd) run with the invocations over dim, each
// keeping partial sums of up to CH outputs at a time, which then add up across the workgroup:
// every value an invocation loads is its own (CPU devices load storage buffers lane by lane).

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
var<workgroup> hid: array<f32, G2>;
var<workgroup> a: array<f32, R>;
// Outputs of a product over dim summed per pass, and the passes' partial sums [WG, CH].
const CH: u32 = 32u;
var<workgroup> partials: array<f32, WG * CH>;

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

// The total of output j of a pass over every invocation's partial sums.
fn total(j: u32) -> f32 {
    var v = 0.0;
    for (var k = 0u; k < WG; k++) {
        v += partials[k * CH + j];
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
    let r = wg.x + wg.y * nwg.x;
    if (r >= p.rows) {
        return;
    }
    let t = lid.x;
    let base = (p.row0 + r) * p.dim;
    if (UPDATE == 1u) {
        // 1. The LayerNorm's statistics (official form).
        var mean = 0.0;
        var inv = 1.0;
        if (NORM == 1u) {
            var sum = 0.0;
            for (var i = t; i < p.dim; i += WG) {
                sum += h[base + i];
            }
            mean = reduce_sum(sum, t) / f32(p.dim);
            var ss = 0.0;
            for (var i = t; i < p.dim; i += WG) {
                let d = h[base + i] - mean;
                ss = fma(d, d, ss);
            }
            inv = inverseSqrt(reduce_sum(ss, t) / f32(p.dim) + p.eps);
        }
        // 2. Hidden layers of T (j < G) and G (j >= G), CH at a time: partial sums over this
        // invocation's values of u, then their total.
        for (var j0 = 0u; j0 < G2; j0 += CH) {
            let nj = min(CH, G2 - j0);
            var acc: array<f32, CH>;
            for (var i = t; i < p.dim; i += WG) {
                var u = h[base + i];
                if (NORM == 1u) {
                    u = (u - mean) * inv * pu[p.ln + i] + pu[p.ln + p.dim + i];
                }
                for (var j = 0u; j < nj; j++) {
                    acc[j] = fma(u, pu[p.hidden + (j0 + j) * p.dim + i], acc[j]);
                }
            }
            for (var j = 0u; j < nj; j++) {
                partials[t * CH + j] = acc[j];
            }
            workgroupBarrier();
            for (var j = t; j < nj; j += WG) {
                var v = total(j);
                if (BIAS == 1u) {
                    v += pu[p.hidden_bias + j0 + j];
                }
                hid[j0 + j] = act(v);
            }
            workgroupBarrier();
        }
        // 3. Output layers and the gated update.
        for (var i = t; i < p.dim; i += WG) {
            var tv = 0.0;
            var z = 0.0;
            for (var j = 0u; j < G2 / 2u; j++) {
                tv = fma(pu[p.t1 + i * p.g + j], hid[j], tv);
                z = fma(pu[p.g1 + i * p.g + j], hid[p.g + j], z);
            }
            if (BIAS == 1u) {
                tv += pu[p.out_bias + i];
                z += pu[p.out_bias + p.dim + i];
            }
            let sv = s[base + i];
            s[base + i] = sv + (tv - sv) / (1.0 + exp(-z));
        }
        storageBarrier();
    }
    if (INJECT == 1u) {
        // 4. a = (h - s) Wd^T, CH outputs at a time: partial sums, then their total.
        for (var j0 = 0u; j0 < R; j0 += CH) {
            let nj = min(CH, R - j0);
            var acc: array<f32, CH>;
            for (var i = t; i < p.dim; i += WG) {
                let d = h[base + i] - s[base + i];
                for (var j = 0u; j < nj; j++) {
                    acc[j] = fma(d, pi[p.down + (j0 + j) * p.dim + i], acc[j]);
                }
            }
            for (var j = 0u; j < nj; j++) {
                partials[t * CH + j] = acc[j];
            }
            workgroupBarrier();
            for (var j = t; j < nj; j += WG) {
                a[j0 + j] = total(j);
            }
            workgroupBarrier();
        }
        // 5. h += alpha * a Wu^T.
        for (var i = t; i < p.dim; i += WG) {
            let row = p.up + i * p.rank;
            var acc = 0.0;
            for (var j = 0u; j < R; j++) {
                acc = fma(pi[row + j], a[j], acc);
            }
            h[base + i] += p.alpha * acc;
        }
    }
}
