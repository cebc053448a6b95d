// qembedding: y[m, :] = table[ids[m] - row0, :] for the ids in this row chunk
// [row0, row0 + rows) of an embedding table stored in a blocked format (the format file
// prepended to this one defines V, XPW, SCALED and word_values). Each invocation decodes one
// block of 32 values.
// Bindings: 0 Params, 1 ids [M] u32, 2 table: [rows, dim/32, V] vec4<u32> block data, then
//           [rows, dim/32] f16 scales (two a u32) (int formats only), 3 y [M, dim].
// Dispatch: linear over ceil(M * dim / 32 / WG) workgroups. Requires dim % 32 == 0.
// Constants: WG.

struct Params {
    m: u32,
    dim: u32,
    row0: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn qembedding(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let nb = p.dim / 32u;
    let idx = (wg.x + wg.y * nwg.x) * WG + lid.x;
    if (idx >= p.m * nb) {
        return;
    }
    let m = idx / nb;
    let b = idx % nb;
    let id = ids[m];
    if (id < p.row0 || id >= p.row0 + p.rows) {
        return;
    }
    let r = id - p.row0;
    var s = 1.0;
    if (SCALED) {
        let bi = r * nb + b;
        let si = p.rows * nb * V * 4u + bi / 2u;
        s = unpack2x16float(table[si / 4u][si % 4u])[bi % 2u];
    }
    for (var t = 0u; t < V; t++) {
        let u = table[(r * nb + b) * V + t];
        for (var j = 0u; j < XPW; j++) {
            y[idx * 8u + t * XPW + j] = word_values(u, j) * s;
        }
    }
}
