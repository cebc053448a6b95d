// cformat_q8: the int8 block decoder of the CPU decode kernels (cmatvec, cmatvec_glu, cmatmul), prepended
// to them (layout: src/gpu/quant.rs). A block of 32 values is BV = 2 vec4<u32>; word t holds
// values 4t..4t + 3 as signed bytes, low byte first.
// As in cformat_q4, the decode keeps to whole-vector integer ops: `word ^ 0x80808080` turns
// the bytes into q + 128, bytes 0-2 masked in place give them times 1, 2^8 and 2^16, byte 3 is
// shifted down; x is pre-multiplied by the inverse powers, and the +128 offset is taken out
// once per block as 128 * sum(x). cmatvec_common turns x into blocks
// (XBlock: each vec4 times UNSHIFT, and OFFSET * sum(x)); the kernel defines wblock(mat, i) (vec4
// word i of weight matrix mat; mat is a constant at every call, so the choice folds away).

const BV: u32 = 2u;
const EVEN_ODD: bool = false;
const SCALED: bool = true;
const MASKS = vec4<u32>(0xFFu, 0xFF00u, 0xFF0000u, 0u);
const OFFSET: f32 = 128.0;
const UNSHIFT = vec4<f32>(1.0, 0.00390625, 1.52587890625e-05, 1.0);

fn bytes4(w: u32) -> vec4<f32> {
    let u = w ^ 0x80808080u;
    let m = (vec4<u32>(u) & MASKS) | vec4<u32>(0u, 0u, 0u, u >> 24u);
    return vec4<f32>(bitcast<vec4<i32>>(m));
}

// The 32 values of block `blk` of matrix `mat` as the products take them (q + 128, times
// powers of 2 that UNSHIFT undoes on x), before the block's scale.
fn block_values(mat: u32, blk: u32) -> array<vec4<f32>, 8> {
    let u = wblock(mat, 2u * blk);
    let v = wblock(mat, 2u * blk + 1u);
    return array<vec4<f32>, 8>(bytes4(u.x), bytes4(u.y), bytes4(u.z), bytes4(u.w),
                               bytes4(v.x), bytes4(v.y), bytes4(v.z), bytes4(v.w));
}
