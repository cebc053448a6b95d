// matvec_subgroup: y[m, col0 + n] = dot(x[m, :], w[n, :]) (+ bias[col0 + n]) for decode (small
// M) on devices with subgroups. One subgroup per output column: its lanes read consecutive
// vec4s of the weight row (coalesced on GPUs, one contiguous vector load on CPU Vulkan) and
// subgroupAdd sums their partial dot products. No workgroup memory, no barriers. Needs the
// wgpu SUBGROUP feature (naga takes the subgroup builtins without an `enable` directive).
// Bindings: 0 Params (uniform; with accumulate, y += scale * result), 1 x [M, K/4] vec4 (from x_off/4), 2 w [N, K/4] vec4,
//           3 bias [>= col0 + N], 4 y [M, ldy] (from y_off).
// Dispatch: linear over ceil(N / RPW) workgroups (2-D when > 65535). Requires K % 4 == 0.
// Injected constants: WG (workgroup size), RPW (columns per workgroup = WG / the largest
// subgroup size of the device; smaller subgroups take several columns each).

// Params, bias (binding 3), y (binding 4) and store(): linear_common.wgsl, prepended.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn matvec_subgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sgs: u32,
) {
    let nsg = max(WG / sgs, 1u);
    let sg = lid.x / sgs;
    let k4 = p.k / 4u;
    let row0 = (wg.x + wg.y * nwg.x) * RPW;
    for (var r = sg; r < RPW; r += nsg) {
        let n = row0 + r;
        if (n < p.n) {
            let wrow = n * k4;
            for (var m = 0u; m < p.m; m++) {
                let xrow = p.x_off / 4u + m * k4;
                var acc = vec4<f32>(0.0);
                for (var i = lane; i < k4; i += sgs) {
                    acc = fma(x[xrow + i], w[wrow + i], acc);
                }
                let s = subgroupAdd((acc.x + acc.y) + (acc.z + acc.w));
                if (lane == 0u) {
                    var b = 0.0;
                    if (p.has_bias != 0u) {
                        b = bias[p.col0 + n];
                    }
                    store(p.y_off + m * p.ldy + p.col0 + n, s + b);
                }
            }
        }
    }
}
