// cformat_f32: f32 weights for the CPU decode kernels (cmatvec, cmatvec_glu), prepended to them.
// The [N, K/4] vec4 rows are read as blocks of 32 values: BV = 8 vec4 words, bit patterns of
// f32, no scale. cmatvec_common turns x into blocks
// (XBlock: each vec4 times UNSHIFT, and OFFSET * sum(x)); the kernel defines wblock(mat, i) (vec4
// word i of weight matrix mat; mat is a constant at every call, so the choice folds away).

const BV: u32 = 8u;
const EVEN_ODD: bool = false;
const SCALED: bool = false;
const OFFSET: f32 = 0.0;
const UNSHIFT = vec4<f32>(1.0);

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
