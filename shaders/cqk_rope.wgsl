// cqk_rope: the per-head norm, RoPE and KV-cache writes of qk_rope_common (prepended), with an
// invocation per head, for CPU devices (lavapipe, SwiftShader): they run a workgroup's
// invocations as the lanes of a SIMD vector and each barrier as a switch between such vectors,
// which cost qk_rope's workgroup-per-head form more than its arithmetic. Here each invocation
// sums its head's squares alone: no workgroup memory, no barrier, and a head's result does not
// depend on how many heads run beside it.
// Dispatch: linear over ceil(heads / WG) workgroups (heads numbered as in qk_rope_common).
// Constants: WG.

@compute @workgroup_size(WG)
fn cqk_rope(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (g >= p.rows * (p.heads + 2u * p.kv_heads)) {
        return;
    }
    let hd = head_at(g);
    // The head's width, through arrayLength so that the loop bounds are not pure uniform
    // expressions (lavapipe re-specialises shaders per dispatch for small uniform loop counts).
    let d = min(p.head_dim, arrayLength(&cos_t));
    if (hd.is_v) {
        for (var i = 0u; i < d; i += KV_PER_WORD) {
            copy_v(hd, i);
        }
        return;
    }
    var inv = 1.0;
    if (hd.norm) {
        var ss = 0.0;
        for (var i = 0u; i < d; i++) {
            let x = qkv[hd.src + i];
            ss = fma(x, x, ss);
        }
        inv = inverseSqrt(ss / f32(d) + p.eps);
    }
    for (var i = 0u; i < d / 2u; i += KV_PER_WORD) {
        rope_store(hd, i, inv);
    }
}
