// cmatvec_common: what the CPU decode kernels (cmatvec, cmatvec_glu) share, prepended after the
// cformat file: the scales and dots of four rows at once. The kernel defines wblock(mat, i).

// The scales of blocks `i` (block indices, row-major over rows and blocks) of matrix `mat`,
// whose scales start at vec4 word `scales`; 1 for unscaled formats.
fn scale4(mat: u32, scales: u32, i: vec4<u32>) -> vec4<f32> {
    if (!SCALED) {
        return vec4<f32>(1.0);
    }
    let j = vec4<u32>(scales * 4u) + i;
    return vec4<f32>(bitcast<f32>(wblock(mat, j.x / 4u)[j.x % 4u]),
                     bitcast<f32>(wblock(mat, j.y / 4u)[j.y % 4u]),
                     bitcast<f32>(wblock(mat, j.z / 4u)[j.z % 4u]),
                     bitcast<f32>(wblock(mat, j.w / 4u)[j.w % 4u]));
}

// Dots of x block `xb` with blocks `i` (of four rows) of matrix `mat`, before their scales.
fn dot4(mat: u32, i: vec4<u32>, xb: XBlock) -> vec4<f32> {
    return vec4<f32>(block_dot(mat, i.x, xb), block_dot(mat, i.y, xb),
                     block_dot(mat, i.z, xb), block_dot(mat, i.w, xb));
}
