// qmatvec3: three decode projections of the same input in one dispatch (small M), with the
// weights in a blocked format (the format file prepended to this one defines V, XPW, SCALED
// and word_values): ya[m, n] = dot(x[m, :], wa[n, :]) for n < NA, likewise yb (NB) and
// yc (NC): the q, k and v projections of attention. One output per invocation; f32
// accumulation.
// Bindings: 0 Params (uniform), 1 x [M, K/4] vec4, 2 wa [NA, ..], 3 wb [NB, ..], 4 wc [NC, ..]
//           (each [rows, K/32, V] vec4<u32> block data, then [rows, K/32] f32 scales for int
//           formats), 5 ya [M, NA], 6 yb [M, NB], 7 yc [M, NC].
// Dispatch: linear over ceil((NA + NB + NC) / WG) workgroups. Requires K % 32 == 0.
// Constants: WG.

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
@group(0) @binding(2) var<storage, read> wa: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> wb: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> wc: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> ya: array<f32>;
@group(0) @binding(6) var<storage, read_write> yb: array<f32>;
@group(0) @binding(7) var<storage, read_write> yc: array<f32>;

fn word(which: u32, i: u32) -> vec4<u32> {
    if (which == 0u) {
        return wa[i];
    } else if (which == 1u) {
        return wb[i];
    }
    return wc[i];
}

@compute @workgroup_size(WG)
fn qmatvec3(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = (wid.x + wid.y * nwg.x) * WG + lid.x;
    if (g >= p.na + p.nb + p.nc) {
        return;
    }
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
    let k4 = p.k / 4u;
    let nb = p.k / 32u;
    let scales = width * nb * V * 4u;
    for (var m = 0u; m < p.m; m++) {
        var acc = vec4<f32>(0.0);
        for (var b = 0u; b < nb; b++) {
            var a = vec4<f32>(0.0);
            let base = (n * nb + b) * V;
            let xb = m * k4 + b * 8u;
            for (var t = 0u; t < V; t++) {
                let u = word(which, base + t);
                for (var j = 0u; j < XPW; j++) {
                    a = fma(x[xb + t * XPW + j], word_values(u, j), a);
                }
            }
            var s = 1.0;
            if (SCALED) {
                let si = scales + n * nb + b;
                s = bitcast<f32>(word(which, si / 4u)[si % 4u]);
            }
            acc = fma(a, vec4<f32>(s), acc);
        }
        let v = (acc.x + acc.y) + (acc.z + acc.w);
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
