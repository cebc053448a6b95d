// matvec3_subgroup: three decode projections of the same input in one dispatch (small M):
// ya[m, n] = dot(x[m, :], wa[n, :]) for n < NA, likewise yb (NB) and yc (NC) — the q, k and v
// projections of attention. One subgroup per output, lanes along K, subgroupAdd (as matvec_subgroup);
// needs the wgpu SUBGROUP feature.
// Bindings: 0 Params (uniform), 1 x [M, K/4] vec4, 2 wa [NA, K/4], 3 wb [NB, K/4],
//           4 wc [NC, K/4] (vec4), 5 ya [M, NA], 6 yb [M, NB], 7 yc [M, NC].
// Dispatch: linear over ceil((NA + NB + NC) / RPW) workgroups. Requires K % 4 == 0.
// Constants: WG, RPW.

struct Params {
    m: u32,
    k: u32,
    na: u32,
    nb: u32,
    nc: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wa: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> wb: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> wc: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> ya: array<f32>;
@group(0) @binding(6) var<storage, read_write> yb: array<f32>;
@group(0) @binding(7) var<storage, read_write> yc: array<f32>;

fn row(which: u32, i: u32) -> vec4<f32> {
    if (which == 0u) {
        return wa[i];
    } else if (which == 1u) {
        return wb[i];
    }
    return wc[i];
}

@compute @workgroup_size(WG)
fn matvec3_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sgs: u32,
) {
    let nsg = max(WG / sgs, 1u);
    let sg = lid.x / sgs;
    let k4 = p.k / 4u;
    let total = p.na + p.nb + p.nc;
    let row0 = (wid.x + wid.y * nwg.x) * RPW;
    for (var r = sg; r < RPW; r += nsg) {
        let g = row0 + r;
        if (g < total) {
            var which = 0u;
            var n = g;
            var width = p.na;
            if (g >= p.na + p.nb) {
                which = 2u;
                n = g - p.na - p.nb;
                width = p.nc;
            } else if (g >= p.na) {
                which = 1u;
                n = g - p.na;
                width = p.nb;
            }
            let wrow = n * k4;
            for (var m = 0u; m < p.m; m++) {
                let xrow = m * k4;
                var acc = vec4<f32>(0.0);
                for (var i = lane; i < k4; i += sgs) {
                    acc = fma(x[xrow + i], row(which, wrow + i), acc);
                }
                let v = subgroupAdd((acc.x + acc.y) + (acc.z + acc.w));
                if (lane == 0u) {
                    let o = m * width + n;
                    if (which == 0u) {
                        ya[o] = v;
                    } else if (which == 1u) {
                        yb[o] = v;
                    } else {
                        yc[o] = v;
                    }
                }
            }
        }
    }
}
