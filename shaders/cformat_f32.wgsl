// cformat_f32: f32 weights for the CPU decode kernels (cmatvec, cmatvec_glu), prepended to them.
// The [N, K/4] vec4 rows are read as blocks of 32 values: BV = 8 vec4 words, bit patterns of
// f32, no scale. The kernel defines x (a uniform array of vec4)
// and wblock(mat, i) (vec4 word i of weight matrix mat; mat is a constant at every call, so the
// choice folds away).

const BV: u32 = 8u;
const SCALED: bool = false;

// One block of x.
struct XBlock {
    v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
    v4: vec4<f32>, v5: vec4<f32>, v6: vec4<f32>, v7: vec4<f32>,
}

fn xblock(b: u32) -> XBlock {
    let i = b * 8u;
    return XBlock(x[i], x[i + 1u], x[i + 2u], x[i + 3u], x[i + 4u], x[i + 5u], x[i + 6u], x[i + 7u]);
}

fn wv(mat: u32, i: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(wblock(mat, i));
}

// sum_k x[k] * w[k] over block `blk` of matrix `mat`.
fn block_dot(mat: u32, blk: u32, xb: XBlock) -> f32 {
    let i = blk * 8u;
    var a = xb.v0 * wv(mat, i);
    a = fma(xb.v1, wv(mat, i + 1u), a);
    a = fma(xb.v2, wv(mat, i + 2u), a);
    a = fma(xb.v3, wv(mat, i + 3u), a);
    a = fma(xb.v4, wv(mat, i + 4u), a);
    a = fma(xb.v5, wv(mat, i + 5u), a);
    a = fma(xb.v6, wv(mat, i + 6u), a);
    a = fma(xb.v7, wv(mat, i + 7u), a);
    return (a.x + a.y) + (a.z + a.w);
}
