// cmatmul_glu: y[m, n] = silu(dot(x[m, :], wg[n, :])) * dot(x[m, :], wu[n, :]) for a tile of ROWS
// rows of x on CPU devices: the multi-row form of cmatvec_glu (the SwiGLU gate and up
// projections and their activation in one dispatch), with the weights in any format (the
// cformat file prepended to this one defines BV, SCALED, OFFSET, UNSHIFT and block_values;
// cmatvec_common XBlock, xblock_at, rows16, quads and quad_acc).
// As in cmatmul, x comes through a uniform binding and each invocation computes 16 outputs: it
// decodes a block of each of its 16 rows of each matrix once for the ROWS rows of x (and
// prepares each block of x once for 16 weight rows). Each row's sums, and its activation, are
// those cmatvec_glu computes (the same block dots, scales and order), so a row gives
// cmatvec_glu's result bit for bit. Rows below p.skip are not written (the host's last tile
// overlaps the one before it).
// Bindings: 0 Params (uniform), 1 x [ROWS, K/4] vec4 (uniform, bound from the tile's first
//           row), 2 wg, 3 wu (each [N, K/32, BV] vec4<u32> block data, then (int formats)
//           [N, K/32] f16 scales (two a u32)), 4 y [ROWS, N] (from y_off).
// Dispatch: linear over ceil(N / 16 / WG) workgroups. Constants: WG, ROWS, XN = ROWS * K/4.
// Requires K % 32 == 0.

struct Params {
    n: u32,
    k: u32,
    y_off: u32,
    skip: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> x: array<vec4<f32>, XN>;
@group(0) @binding(2) var<storage, read> wg: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> wu: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// Matrix 0 is the gate, 1 the up projection.
fn wblock(mat: u32, i: u32) -> vec4<u32> {
    if (mat == 0u) {
        return wg[i];
    }
    return wu[i];
}

@compute @workgroup_size(WG)
fn cmatmul_glu(
    @builtin(workgroup_id) wgid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let g = ((wgid.x + wgid.y * nwg.x) * WG + lid.x) * 16u;
    if (g >= p.n) {
        return;
    }
    let nb = p.k / 32u;
    let k4 = p.k / 4u;
    let scales = p.n * nb * BV;
    let first = rows16(g, p.n, nb);
    // Outputs g + 4q .. g + 4q + 4 of each row of x: the gate's in gq, the up projection's in uq.
    var g0: array<vec4<f32>, ROWS>;
    var g1: array<vec4<f32>, ROWS>;
    var g2: array<vec4<f32>, ROWS>;
    var g3: array<vec4<f32>, ROWS>;
    var u0: array<vec4<f32>, ROWS>;
    var u1: array<vec4<f32>, ROWS>;
    var u2: array<vec4<f32>, ROWS>;
    var u3: array<vec4<f32>, ROWS>;
    for (var b = 0u; b < nb; b++) {
        // The gate's blocks for every row of x, then the up projection's.
        {
            let w = quads(0u, scales, first, b);
            for (var m = 0u; m < ROWS; m++) {
                let xb = xblock_at(m * k4 + b * 8u);
                g0[m] = quad_acc(w.q0, xb, g0[m]);
                g1[m] = quad_acc(w.q1, xb, g1[m]);
                g2[m] = quad_acc(w.q2, xb, g2[m]);
                g3[m] = quad_acc(w.q3, xb, g3[m]);
            }
        }
        {
            let w = quads(1u, scales, first, b);
            for (var m = 0u; m < ROWS; m++) {
                let xb = xblock_at(m * k4 + b * 8u);
                u0[m] = quad_acc(w.q0, xb, u0[m]);
                u1[m] = quad_acc(w.q1, xb, u1[m]);
                u2[m] = quad_acc(w.q2, xb, u2[m]);
                u3[m] = quad_acc(w.q3, xb, u3[m]);
            }
        }
    }
    for (var m = p.skip; m < ROWS; m++) {
        let act = array<vec4<f32>, 4>(silu_mul(g0[m], u0[m]), silu_mul(g1[m], u1[m]),
                                      silu_mul(g2[m], u2[m]), silu_mul(g3[m], u3[m]));
        let y0 = p.y_off + m * p.n + g;
        for (var c = 0u; c < 16u; c++) {
            if (g + c < p.n) {
                y[y0 + c] = act[c / 4u][c % 4u];
            }
        }
    }
}

// silu(gate) * up, as cmatvec_glu computes it.
fn silu_mul(gate: vec4<f32>, up: vec4<f32>) -> vec4<f32> {
    return gate / (1.0 + exp(-gate)) * up;
}
