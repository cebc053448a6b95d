// argmax: out[0] = the first index of the largest value of x[x_off .. x_off + n]
// (ties go to the lowest index, as torch.argmax).
// Bindings: 0 Params, 1 x [>= x_off + n], 2 out [1] u32.
// Dispatch: one workgroup. Constants: WG.

struct Params {
    n: u32,
    x_off: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

@compute @workgroup_size(WG)
fn argmax(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = t; i < p.n; i += WG) {
        let v = x[p.x_off + i];
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
    if (t == 0u) {
        out[0] = best_i[0];
    }
}
