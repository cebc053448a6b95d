// attention: causal grouped-query attention of M new queries over a KV cache.
//   out[m, h, :] = sum_j softmax_j(q[m, h, :] . k[j, g, :] * scale) v[j, g, :],
//   j in [0, row_pos(m)], g = h / (heads / kv_heads), key j at cache row kv_slot(m, j) (prelude
//   kv_seq or kv_paged; values stored as the prelude kv_f32 or kv_f16 says); online (streaming)
//   softmax in f32.
// Bindings: 0 Params, 1 q [M, heads * HD], 2 k cache [S, kv_heads * HD],
//           3 v cache [S, kv_heads * HD] (both in KvWords), 4 out [M, heads * HD].
// Dispatch: (M, heads, 1) workgroups of WG invocations; a block of WG keys per iteration.
// Constants: WG, HD (head dim), ACC = ceil(HD / WG) output dims owned per invocation.

struct Params {
    m: u32,
    pos0: u32,
    heads: u32,
    kv_heads: u32,
    scale: f32,
    tab0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<KvWord>;
@group(0) @binding(3) var<storage, read> vc: array<KvWord>;

fn k_at(i: u32) -> f32 {
    return kv_value(kc[i / KV_PER_WORD], i);
}

fn v_at(i: u32) -> f32 {
    return kv_value(vc[i / KV_PER_WORD], i);
}
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> qs: array<f32, HD>;
var<workgroup> sc: array<f32, WG>;

@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m = wg.x;
    let h = wg.y;
    let t = lid.x;
    let g = h / (p.heads / p.kv_heads);
    let q_stride = p.heads * HD;
    let kv_stride = p.kv_heads * HD;
    for (var d = t; d < HD; d += WG) {
        qs[d] = q[m * q_stride + h * HD + d];
    }
    workgroupBarrier();

    let ctx = row_pos(m) + 1u;
    var run_max = -3.0e38;
    var run_sum = 0.0;
    var acc: array<f32, ACC>;
    for (var a = 0u; a < ACC; a++) {
        acc[a] = 0.0;
    }
    for (var j0 = 0u; j0 < ctx; j0 += WG) {
        // 1. One score per invocation.
        let j = j0 + t;
        var s = -3.0e38;
        if (j < ctx) {
            let kb = kv_slot(m, j) * kv_stride + g * HD;
            var dot = 0.0;
            for (var d = 0u; d < HD; d++) {
                dot = fma(qs[d], k_at(kb + d), dot);
            }
            s = dot * p.scale;
        }
        sc[t] = s;
        workgroupBarrier();
        // 2. Block maximum and the rescale of what was accumulated so far.
        let n = min(WG, ctx - j0);
        var new_max = run_max;
        for (var i = 0u; i < n; i++) {
            new_max = max(new_max, sc[i]);
        }
        let rescale = exp(run_max - new_max);
        workgroupBarrier();
        // 3. Probabilities (unnormalised) of this block.
        if (t < n) {
            sc[t] = exp(s - new_max);
        }
        workgroupBarrier();
        var block_sum = 0.0;
        for (var i = 0u; i < n; i++) {
            block_sum += sc[i];
        }
        run_sum = run_sum * rescale + block_sum;
        // 4. Weighted values for the dims this invocation owns.
        for (var a = 0u; a < ACC; a++) {
            let d = t + a * WG;
            if (d < HD) {
                var v = acc[a] * rescale;
                for (var i = 0u; i < n; i++) {
                    v = fma(sc[i], v_at(kv_slot(m, j0 + i) * kv_stride + g * HD + d), v);
                }
                acc[a] = v;
            }
        }
        run_max = new_max;
        workgroupBarrier();
    }
    for (var a = 0u; a < ACC; a++) {
        let d = t + a * WG;
        if (d < HD) {
            out[m * q_stride + h * HD + d] = acc[a] / run_sum;
        }
    }
}
