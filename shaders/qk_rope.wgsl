// qk_rope: the per-head norm, RoPE and KV-cache writes of qk_rope_common (prepended), with a
// workgroup per head: its invocations share the head's values and sum its squares across the
// workgroup (for GPUs; CPU devices run cqk_rope).
// Dispatch: one workgroup per head g (see qk_rope_common), linear. Constants: WG.

var<workgroup> part: array<f32, WG>;

@compute @workgroup_size(WG)
fn qk_rope(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = wg.x + wg.y * nwg.x;
    if (g >= p.rows * (p.heads + 2u * p.kv_heads)) {
        return;
    }
    let hd = head_at(g);
    let d = p.head_dim;
    if (hd.is_v) {
        for (var i = lid.x * KV_PER_WORD; i < d; i += WG * KV_PER_WORD) {
            copy_v(hd, i);
        }
        return;
    }
    // Uniform per workgroup: every invocation takes the same branch.
    var inv = 1.0;
    if (hd.norm) {
        var ss = 0.0;
        for (var i = lid.x; i < d; i += WG) {
            let x = qkv[hd.src + i];
            ss = fma(x, x, ss);
        }
        part[lid.x] = ss;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (lid.x < s) {
                part[lid.x] += part[lid.x + s];
            }
            workgroupBarrier();
        }
        inv = inverseSqrt(part[0] / f32(d) + p.eps);
    }
    // KV_PER_WORD values of each half a lane (one cache word each).
    for (var i = lid.x * KV_PER_WORD; i < d / 2u; i += WG * KV_PER_WORD) {
        rope_store(hd, i, inv);
    }
}
