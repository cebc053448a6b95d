// sample_penalize: the repetition penalty (Hugging Face semantics) in place on one row of
// logits: x[t] = x[t] < 0 ? x[t] * penalty : x[t] / penalty for each distinct id t.
// Bindings: 0 Params (sample_common.wgsl; n = number of ids), 1 x [>= x_off + vocab],
// 2 ids [n] u32, distinct. Dispatch: ceil(n / WG) workgroups. Constants: WG.

@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;

@compute @workgroup_size(WG)
fn sample_penalize(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) {
        return;
    }
    let j = p.x_off + ids[i];
    let v = x[j];
    x[j] = select(v / p.penalty, v * p.penalty, v < 0.0);
}
