// update_hidden: the hidden layers of both shadow update networks, from the base layer's
// output, in one dispatch: u = LayerNorm(h[r, :]) (NORM 1, official shadow-peft) or h[r, :]
// (NORM 0, peft); out[r, j] = act(t0[j, :] . u + bt0[j]) and out[r, G + j] =
// act(g0[j, :] . u + bg0[j]) for j < G (biases when BIAS is 1).
// Bindings: 0 Params, 1 h [rows, dim], 2 nw [dim], 3 nb [dim] (LayerNorm weight and bias),
// 4 t0 [G, dim], 5 g0 [G, dim], 6 bias [2G] (bt0 then bg0), 7 out [rows, 2G].
// ACT 0: SiLU, x * sigmoid(x) (official shadow-peft); ACT 1: exact GELU, 0.5 x (1 + erf(x / sqrt 2))
// (Hugging Face peft, torch.nn.GELU()).
// Dispatch: one workgroup per row, linear. Constants: WG, NORM, BIAS, ACT.

struct Params {
    rows: u32,
    dim: u32,
    g: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read> nw: array<f32>;
@group(0) @binding(3) var<storage, read> nb: array<f32>;
@group(0) @binding(4) var<storage, read> t0: array<f32>;
@group(0) @binding(5) var<storage, read> g0: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

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

var<workgroup> part: array<f32, WG>;

fn reduce_sum(v: f32, t: u32) -> f32 {
    part[t] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            part[t] += part[t + s];
        }
        workgroupBarrier();
    }
    let total = part[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn update_hidden(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let r = wg.x + wg.y * nwg.x;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.dim;
    var mean = 0.0;
    var inv = 1.0;
    if (NORM == 1u) {
        var s = 0.0;
        for (var i = lid.x; i < p.dim; i += WG) {
            s += h[base + i];
        }
        mean = reduce_sum(s, lid.x) / f32(p.dim);
        var ss = 0.0;
        for (var i = lid.x; i < p.dim; i += WG) {
            let d = h[base + i] - mean;
            ss = fma(d, d, ss);
        }
        inv = inverseSqrt(reduce_sum(ss, lid.x) / f32(p.dim) + p.eps);
    }
    for (var j = lid.x; j < 2u * p.g; j += WG) {
        let gate = j >= p.g;
        let row = select(j, j - p.g, gate) * p.dim;
        var acc = 0.0;
        for (var i = 0u; i < p.dim; i++) {
            var u = h[base + i];
            if (NORM == 1u) {
                u = (u - mean) * inv * nw[i] + nb[i];
            }
            acc = fma(u, select(t0[row + i], g0[row + i], gate), acc);
        }
        if (BIAS == 1u) {
            acc += bias[j];
        }
        out[r * 2u * p.g + j] = act(acc);
    }
}
