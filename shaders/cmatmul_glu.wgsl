// cmatmul_glu: y[m, n] = silu(dot(x[m, :], wg[n, :])) * dot(x[m, :], wu[n, :]) for a tile of ROWS
// rows of x on CPU devices: the multi-row form of cmatvec_glu (the SwiGLU gate and up
// projections and their activation in one dispatch), with the weights in any format (the
// cformat file prepended to this one defines BV, SCALED, OFFSET, UNSHIFT and block_values;
// cmatvec_common XBlock, xblock_at, scale4 and wdot).
// As in cmatmul, x comes through a uniform binding and each invocation decodes a block of each
// of its 8 rows of each matrix once for the ROWS rows of x (and prepares each block of x once
// for 8 weight rows). Each row's sums, and its activation, are those cmatvec_glu computes (the
// same block dots, scales and order), so a row gives cmatvec_glu's result bit for bit. Rows
// below p.skip are not written (the host's last tile overlaps the one before it).
// Bindings: 0 Params (uniform), 1 x [ROWS, K/4] vec4 (uniform, bound from the tile's first
//           row), 2 wg, 3 wu (each [N, K/32, BV] vec4<u32> block data, then (int formats)
//           [N, K/32] f16 scales (two a u32)), 4 y [ROWS, N] (from y_off).
// Dispatch: linear over ceil(N / 8 / WG) workgroups. Constants: WG, ROWS, XN = ROWS * K/4.
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
    let g = ((wgid.x + wgid.y * nwg.x) * WG + lid.x) * 8u;
    if (g >= p.n) {
        return;
    }
    let nb = p.k / 32u;
    let k4 = p.k / 4u;
    let scales = p.n * nb * BV;
    // First blocks of the 8 rows; rows past the end repeat the last (and are not written).
    let last = vec4<u32>(p.n - 1u);
    let ra = min(vec4<u32>(g) + vec4<u32>(0u, 1u, 2u, 3u), last) * nb;
    let rb = min(vec4<u32>(g) + vec4<u32>(4u, 5u, 6u, 7u), last) * nb;
    // Outputs g .. g + 4 (a) and g + 4 .. g + 8 (b) of each row of x.
    var gate_a: array<vec4<f32>, ROWS>;
    var gate_b: array<vec4<f32>, ROWS>;
    var up_a: array<vec4<f32>, ROWS>;
    var up_b: array<vec4<f32>, ROWS>;
    for (var b = 0u; b < nb; b++) {
        let i = ra + vec4<u32>(b);
        let j = rb + vec4<u32>(b);
        // The gate's blocks for every row of x, then the up projection's.
        {
            let w0 = block_values(0u, i.x);
            let w1 = block_values(0u, i.y);
            let w2 = block_values(0u, i.z);
            let w3 = block_values(0u, i.w);
            let w4 = block_values(0u, j.x);
            let w5 = block_values(0u, j.y);
            let w6 = block_values(0u, j.z);
            let w7 = block_values(0u, j.w);
            let sa = scale4(0u, scales, i);
            let sb = scale4(0u, scales, j);
            for (var m = 0u; m < ROWS; m++) {
                let xb = xblock_at(m * k4 + b * 8u);
                let da = vec4<f32>(wdot(w0, xb), wdot(w1, xb), wdot(w2, xb), wdot(w3, xb));
                let db = vec4<f32>(wdot(w4, xb), wdot(w5, xb), wdot(w6, xb), wdot(w7, xb));
                gate_a[m] = fma(sa, da, gate_a[m]);
                gate_b[m] = fma(sb, db, gate_b[m]);
            }
        }
        {
            let w0 = block_values(1u, i.x);
            let w1 = block_values(1u, i.y);
            let w2 = block_values(1u, i.z);
            let w3 = block_values(1u, i.w);
            let w4 = block_values(1u, j.x);
            let w5 = block_values(1u, j.y);
            let w6 = block_values(1u, j.z);
            let w7 = block_values(1u, j.w);
            let sa = scale4(1u, scales, i);
            let sb = scale4(1u, scales, j);
            for (var m = 0u; m < ROWS; m++) {
                let xb = xblock_at(m * k4 + b * 8u);
                let da = vec4<f32>(wdot(w0, xb), wdot(w1, xb), wdot(w2, xb), wdot(w3, xb));
                let db = vec4<f32>(wdot(w4, xb), wdot(w5, xb), wdot(w6, xb), wdot(w7, xb));
                up_a[m] = fma(sa, da, up_a[m]);
                up_b[m] = fma(sb, db, up_b[m]);
            }
        }
    }
    for (var m = p.skip; m < ROWS; m++) {
        let act_a = gate_a[m] / (1.0 + exp(-gate_a[m])) * up_a[m];
        let act_b = gate_b[m] / (1.0 + exp(-gate_b[m])) * up_b[m];
        let y0 = p.y_off + m * p.n + g;
        for (var c = 0u; c < 4u; c++) {
            if (g + c < p.n) {
                y[y0 + c] = act_a[c];
            }
            if (g + 4u + c < p.n) {
                y[y0 + 4u + c] = act_b[c];
            }
        }
    }
}
