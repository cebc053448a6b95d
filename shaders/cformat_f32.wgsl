// cformat_f32: f32 weights for the CPU decode kernels (cmatvec, cmatvec_glu, cmatmul), prepended to them.
// The [N, K/4] vec4 rows are read as blocks of 32 values: BV = 8 vec4 words, bit patterns of
// f32, no scale. cmatvec_common turns x into blocks
// (XBlock: each vec4 times UNSHIFT, and OFFSET * sum(x)); the kernel defines wblock(mat, i) (vec4
// word i of weight matrix mat; mat is a constant at every call, so the choice folds away).

const BV: u32 = 8u;
const EVEN_ODD: bool = false;
const SCALED: bool = false;
const OFFSET: f32 = 0.0;
const UNSHIFT = vec4<f32>(1.0);

// The 32 values of block `blk` of matrix `mat`, in x's order.
fn block_values(mat: u32, blk: u32) -> array<vec4<f32>, 8> {
    let i = blk * 8u;
    return array<vec4<f32>, 8>(
        bitcast<vec4<f32>>(wblock(mat, i)), bitcast<vec4<f32>>(wblock(mat, i + 1u)),
        bitcast<vec4<f32>>(wblock(mat, i + 2u)), bitcast<vec4<f32>>(wblock(mat, i + 3u)),
        bitcast<vec4<f32>>(wblock(mat, i + 4u)), bitcast<vec4<f32>>(wblock(mat, i + 5u)),
        bitcast<vec4<f32>>(wblock(mat, i + 6u)), bitcast<vec4<f32>>(wblock(mat, i + 7u)));
}
