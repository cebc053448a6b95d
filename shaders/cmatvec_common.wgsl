// cmatvec_common: what the CPU decode kernels (cmatvec, cmatvec_glu) and the multi-row ones (cmatmul,
// cmatmul_glu) share, prepended after the cformat file (which defines BV, SCALED, EVEN_ODD, OFFSET,
// UNSHIFT and block_values): the blocks of x and the scales and dots of four rows at once. The
// kernel defines x and wblock(mat, i).

// One block of x (32 values as 8 vec4), each vec4 times the format's UNSHIFT, and the format's
// offset correction OFFSET * sum(x) (none where OFFSET is 0).
struct XBlock {
    v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
    v4: vec4<f32>, v5: vec4<f32>, v6: vec4<f32>, v7: vec4<f32>,
    offset: f32,
}

fn xblock(b: u32) -> XBlock {
    return xblock_at(b * 8u);
}

// The block of x whose first vec4 is x[i].
fn xblock_at(i: u32) -> XBlock {
    return xblock_of(array<vec4<f32>, 8>(x[i], x[i + 1u], x[i + 2u], x[i + 3u], x[i + 4u], x[i + 5u], x[i + 6u], x[i + 7u]));
}

// A block of x from its 32 values in order.
fn xblock_of(v: array<vec4<f32>, 8>) -> XBlock {
    var a = v;
    if (EVEN_ODD) {
        // The format's words give the even values of each run of 8, then the odd ones.
        for (var t = 0u; t < 8u; t += 2u) {
            let lo = a[t];
            let hi = a[t + 1u];
            a[t] = vec4<f32>(lo.x, lo.z, hi.x, hi.z);
            a[t + 1u] = vec4<f32>(lo.y, lo.w, hi.y, hi.w);
        }
    }
    var offset = 0.0;
    if (OFFSET != 0.0) {
        let s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
        offset = OFFSET * ((s.x + s.y) + (s.z + s.w));
    }
    return XBlock(a[0] * UNSHIFT, a[1] * UNSHIFT, a[2] * UNSHIFT, a[3] * UNSHIFT,
                  a[4] * UNSHIFT, a[5] * UNSHIFT, a[6] * UNSHIFT, a[7] * UNSHIFT, offset);
}

// The scales of blocks `i` (block indices, row-major over rows and blocks) of matrix `mat`,
// whose scales start at vec4 word `scales`; 1 for unscaled formats.
fn scale4(mat: u32, scales: u32, i: vec4<u32>) -> vec4<f32> {
    if (!SCALED) {
        return vec4<f32>(1.0);
    }
    // Two f16 scales a u32: block b in half b % 2 of u32 b / 2 after the data.
    let j = vec4<u32>(scales * 4u) + i / 2u;
    let h = i % 2u;
    return vec4<f32>(unpack2x16float(wblock(mat, j.x / 4u)[j.x % 4u])[h.x],
                     unpack2x16float(wblock(mat, j.y / 4u)[j.y % 4u])[h.y],
                     unpack2x16float(wblock(mat, j.z / 4u)[j.z % 4u])[h.z],
                     unpack2x16float(wblock(mat, j.w / 4u)[j.w % 4u])[h.w]);
}

// Dots of x block `xb` with blocks `i` (of four rows) of matrix `mat`, before their scales.
fn dot4(mat: u32, i: vec4<u32>, xb: XBlock) -> vec4<f32> {
    return vec4<f32>(block_dot(mat, i.x, xb), block_dot(mat, i.y, xb),
                     block_dot(mat, i.z, xb), block_dot(mat, i.w, xb));
}

// sum_k x[k] * w[k] over one block: x block `xb` and weight values `w` (from block_values),
// before the block's scale.
fn wdot(w: array<vec4<f32>, 8>, xb: XBlock) -> f32 {
    var a = xb.v0 * w[0];
    a = fma(xb.v1, w[1], a);
    a = fma(xb.v2, w[2], a);
    a = fma(xb.v3, w[3], a);
    a = fma(xb.v4, w[4], a);
    a = fma(xb.v5, w[5], a);
    a = fma(xb.v6, w[6], a);
    a = fma(xb.v7, w[7], a);
    return ((a.x + a.y) + (a.z + a.w)) - xb.offset;
}

// Block `blk` of matrix `mat` times x block `xb`, before the block's scale.
fn block_dot(mat: u32, blk: u32, xb: XBlock) -> f32 {
    return wdot(block_values(mat, blk), xb);
}

// Four weight rows' blocks of one matrix, decoded, and their scales: what the multi-row kernels
// keep for all the rows of x. A struct of named fields (not an array indexed in a loop) so that
// CPU compilers keep each value where it is, instead of indexing a local array lane by lane.
struct Quad {
    w0: array<vec4<f32>, 8>,
    w1: array<vec4<f32>, 8>,
    w2: array<vec4<f32>, 8>,
    w3: array<vec4<f32>, 8>,
    s: vec4<f32>,
}

// Blocks `i` (of four rows) of matrix `mat`, whose scales start at vec4 word `scales`.
fn quad(mat: u32, scales: u32, i: vec4<u32>) -> Quad {
    return Quad(block_values(mat, i.x), block_values(mat, i.y), block_values(mat, i.z),
                block_values(mat, i.w), scale4(mat, scales, i));
}

// The first blocks (block indices) of the 16 weight rows g .. g + 16 of a matrix of n rows of
// nb blocks, four rows a vec4; rows past the end repeat the last (the kernels do not write them).
struct Rows16 {
    r0: vec4<u32>,
    r1: vec4<u32>,
    r2: vec4<u32>,
    r3: vec4<u32>,
}

fn rows16(g: u32, n: u32, nb: u32) -> Rows16 {
    let last = vec4<u32>(n - 1u);
    let r = vec4<u32>(g) + vec4<u32>(0u, 1u, 2u, 3u);
    return Rows16(min(r, last) * nb, min(r + 4u, last) * nb, min(r + 8u, last) * nb,
                  min(r + 12u, last) * nb);
}

// Block b of each of the 16 rows `rows` of matrix `mat`, decoded, with their scales.
struct Quads {
    q0: Quad,
    q1: Quad,
    q2: Quad,
    q3: Quad,
}

fn quads(mat: u32, scales: u32, rows: Rows16, b: u32) -> Quads {
    let bb = vec4<u32>(b);
    return Quads(quad(mat, scales, rows.r0 + bb), quad(mat, scales, rows.r1 + bb),
                 quad(mat, scales, rows.r2 + bb), quad(mat, scales, rows.r3 + bb));
}

// acc + the four rows' scaled dots with x block `xb`: one block's step of four sums, in the
// order cmatvec takes it.
fn quad_acc(q: Quad, xb: XBlock, acc: vec4<f32>) -> vec4<f32> {
    let d = vec4<f32>(wdot(q.w0, xb), wdot(q.w1, xb), wdot(q.w2, xb), wdot(q.w3, xb));
    return fma(q.s, d, acc);
}
