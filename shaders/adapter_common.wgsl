// adapter_common: what the shadow adapter does between two base layers, in one dispatch: the
// state update after the first (UPDATE, weights pu) and the injection before the second
// (INJECT, weights pi), for RB token rows per workgroup. What its two kernels share, prepended
// to each: adapter_step (h and s as f32, any width) and adapter_step4 (h, s and the products
// over dim as vec4, for widths that are multiples of 4; each load then brings four values,
// where CPU devices load storage buffers lane by lane).
//   update: u = LayerNorm(h) (NORM 1, official shadow-peft; eps in Params) or h (NORM 0, peft)
//           th = act(t0 u + bt0);  gh = act(g0 u + bg0)                   (biases when BIAS 1)
//           s <- s + sigmoid(g1 gh + bg1) * (t1 th + bt1 - s)
//   inject: a = (h - s) Wd^T;  h <- h + alpha * a Wu^T
// ACT 0: SiLU, x * sigmoid(x) (official shadow-peft); ACT 1: exact GELU, 0.5 x (1 + erf(x / sqrt 2))
// (Hugging Face peft, torch.nn.GELU()).
// Each adapted layer's weights are one packed f32 buffer (ops::adapter_step::PackedSlot); Params
// holds where each part starts: LayerNorm weight then bias [2, dim], t0 then g0 [2G, dim],
// hidden biases [2G], t1 [dim, G], g1 [dim, G], output biases [2 dim], Wd [R, dim], Wu [dim, R].
// Bindings: 0 Params, 1 pu (the update's slot), 2 pi (the injection's slot); the kernels bind
// h and s [.., dim] (read_write: rows row0 .. row0 + rows of both) at 3 and 4.
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

// Once every invocation has stored its partial sums of hidden outputs j0 .. j0 + nj in
// `partials`: their totals, with the hidden biases (BIAS), through the activation into `hid`.
// Barriers before and after (call from uniform control flow).
fn hidden_totals(t: u32, j0: u32, nj: u32) {
    workgroupBarrier();
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

// The same for outputs j0 .. j0 + nj of the injection's Wd product, into `a`.
fn down_totals(t: u32, j0: u32, nj: u32) {
    workgroupBarrier();
    for (var q = t; q < RB * nj; q += WG) {
        let r = q / nj;
        let j = q - r * nj;
        a[r * R + j0 + j] = total(r, j);
    }
    workgroupBarrier();
}
