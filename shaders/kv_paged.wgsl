// kv_paged: where the keys and values of a query row live, in a pool of blocks of KV_BLOCK
// positions that many sessions share (the backbone server's batched passes). From word
// p.tab0 of `rows`, each query row m has two words: its position, then where its session's
// block list starts in `rows`. Position j of that session is slot j % KV_BLOCK of block
// rows[list + j / KV_BLOCK], cache row block * KV_BLOCK + j % KV_BLOCK.
// Prelude of qk_rope, attention and cattention; binds `rows` at KV_TABLE, the binding after the
// kernel's own. Constants: KV_BLOCK, KV_TABLE.

@group(0) @binding(KV_TABLE) var<storage, read> rows: array<u32>;

fn row_pos(m: u32) -> u32 {
    return rows[p.tab0 + 2u * m];
}

fn kv_slot(m: u32, j: u32) -> u32 {
    let list = rows[p.tab0 + 2u * m + 1u];
    return rows[list + j / KV_BLOCK] * KV_BLOCK + j % KV_BLOCK;
}
