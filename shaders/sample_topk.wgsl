// sample_topk: one pass of the device top-k. Each workgroup sorts a chunk of CHUNK entries
// (bitonic sort in workgroup memory, larger value first, ties to the lower index) and writes
// its first KC candidates; passes repeat over the candidates until one workgroup is left.
// The first pass reads the logits row and, for a sampler without top-k, also writes each
// chunk's softmax partial (its largest value m and sum of exp((x - m) / temperature)), from
// which the pick rebuilds the whole row's normaliser.
// Bindings: 0 Params (sample_common.wgsl; n, x_off, top_k, aux = 0 logits / 1 pairs,
// temperature), 1 x [>= x_off + n] f32, 2 cin [n] (key, index) pairs, 3 cout [groups * KC]
// pairs, 4 part [groups] (m, sum). Dispatch: ceil(n / CHUNK) workgroups.
// Constants: WG, KC (CHUNK = 4 * WG).

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cin: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> cout: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> part: array<vec2<f32>>;

const CHUNK: u32 = 4u * WG;

var<workgroup> sk: array<u32, CHUNK>;
var<workgroup> si: array<u32, CHUNK>;
var<workgroup> sum: array<f32, WG>;

@compute @workgroup_size(WG)
fn sample_topk(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = lid.x;
    let base = wg.x * CHUNK;
    for (var j = t; j < CHUNK; j += WG) {
        let i = base + j;
        var k = 0u;
        var ix = NONE;
        if (i < p.n) {
            if (p.aux == 0u) {
                k = key_of(x[p.x_off + i]);
                ix = i;
            } else {
                let c = cin[i];
                k = c.x;
                ix = c.y;
            }
        }
        sk[j] = k;
        si[j] = ix;
    }
    workgroupBarrier();
    for (var size = 2u; size <= CHUNK; size <<= 1u) {
        for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
            for (var q = t; q < CHUNK / 2u; q += WG) {
                let lo = 2u * q - (q & (stride - 1u));
                let hi = lo + stride;
                let up = (lo & size) == 0u;
                let kl = sk[lo];
                let il = si[lo];
                let kh = sk[hi];
                let ih = si[hi];
                if (before(kh, ih, kl, il) == up) {
                    sk[lo] = kh;
                    si[lo] = ih;
                    sk[hi] = kl;
                    si[hi] = il;
                }
            }
            workgroupBarrier();
        }
    }
    for (var j = t; j < KC; j += WG) {
        cout[wg.x * KC + j] = vec2<u32>(sk[j], si[j]);
    }
    if (p.aux != 0u || p.top_k != 0u) {
        return;
    }
    let m = value_of(sk[0]);
    var s = 0.0;
    for (var j = t; j < CHUNK; j += WG) {
        if (si[j] != NONE) {
            s += exp((value_of(sk[j]) - m) / p.temperature);
        }
    }
    sum[t] = s;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (t < h) {
            sum[t] += sum[t + h];
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        // A chunk of -inf logits adds nothing (and must not add NaN).
        part[wg.x] = vec2<f32>(m, select(0.0, sum[0], m > -3.4e38));
    }
}
