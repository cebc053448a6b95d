// argmax: for each row r of x (rows of n values from x_off, one workgroup per row),
// out[r] = the first index of its largest value (ties go to the lowest index, as torch.argmax)
// and, when PROB != 0, out[rows + r] = the bits of its softmax probability,
// 1 / sum(exp(x - max)) (a second pass over the row, which plain greedy decoding skips).
// Bindings: 0 Params, 1 x [>= x_off + rows * n], 2 out [2 * rows] u32.
// Dispatch: (rows, 1, 1). Constants: WG, PROB.

struct Params {
    n: u32,
    x_off: u32,
    rows: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;
var<workgroup> sums: array<f32, WG>;

@compute @workgroup_size(WG)
fn argmax(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = lid.x;
    let r = wid.x;
    let base = p.x_off + r * p.n;
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = t; i < p.n; i += WG) {
        let v = x[base + i];
        if (v > bv || bi == 0xffffffffu) {
            bv = v;
            bi = i;
        }
    }
    best_v[t] = bv;
    best_i[t] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            let ov = best_v[t + s];
            let oi = best_i[t + s];
            if (oi != 0xffffffffu && (best_i[t] == 0xffffffffu || ov > best_v[t] || (ov == best_v[t] && oi < best_i[t]))) {
                best_v[t] = ov;
                best_i[t] = oi;
            }
        }
        workgroupBarrier();
    }
    if (PROB == 0u) {
        if (t == 0u) {
            out[r] = best_i[0];
        }
        return;
    }
    let mx = best_v[0];
    var acc = 0.0;
    for (var i = t; i < p.n; i += WG) {
        acc += exp(x[base + i] - mx);
    }
    sums[t] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) {
            sums[t] += sums[t + s];
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        out[r] = best_i[0];
        out[p.rows + r] = bitcast<u32>(1.0 / sums[0]);
    }
}
