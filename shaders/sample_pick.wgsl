// sample_pick: the draw over the sorted candidates, as the host sampler does it: softmax at
// the temperature (over the top-k candidates, or over the whole row through the chunk
// partials when there is no top-k filter), the nucleus (top-p) cut, then the first candidate
// whose cumulative probability exceeds draw * (kept mass). Writes the token id, or NONE when
// the answer lies beyond the candidates (a nucleus or a draw reaching past the KC largest
// logits without top-k): the caller then samples that row on the host with the same draw.
// Bindings: 0 Params (sample_common.wgsl; n = candidates available, top_k, aux = number of
// partials, temperature, top_p, draw), 1 cand [n] pairs, sorted, 2 part [aux] (m, sum),
// 3 out [1] u32. Dispatch: one workgroup of one invocation.

@group(0) @binding(1) var<storage, read> cand: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> part: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

fn weight(i: u32, top: f32) -> f32 {
    return exp((value_of(cand[i].x) - top) / p.temperature);
}

@compute @workgroup_size(1)
fn sample_pick() {
    let whole = p.top_k == 0u;
    let k = select(min(p.top_k, p.n), p.n, whole);
    let top = value_of(cand[0].x);
    var z = 0.0;
    if (whole) {
        for (var c = 0u; c < p.aux; c++) {
            let pc = part[c];
            z += pc.y * exp((pc.x - top) / p.temperature);
        }
    } else {
        for (var i = 0u; i < k; i++) {
            z += weight(i, top);
        }
    }
    var keep = k;
    var mass = 0.0;
    if (p.top_p < 1.0) {
        var found = false;
        for (var i = 0u; i < k; i++) {
            mass += weight(i, top) / z;
            if (mass >= p.top_p) {
                keep = i + 1u;
                found = true;
                break;
            }
        }
        if (!found && whole) {
            out[0] = NONE;
            return;
        }
    } else if (whole) {
        mass = 1.0;
    } else {
        for (var i = 0u; i < k; i++) {
            mass += weight(i, top) / z;
        }
    }
    let r = p.draw * mass;
    var cum = 0.0;
    for (var i = 0u; i < keep; i++) {
        cum += weight(i, top) / z;
        if (r < cum) {
            out[0] = cand[i].y;
            return;
        }
    }
    out[0] = select(cand[keep - 1u].y, NONE, whole && p.top_p >= 1.0);
}
