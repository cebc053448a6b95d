// kv_seq: where the keys and values of a query row live, for one session's own cache: query row m
// is at position p.pos0 + m, and position j's keys and values are row j of the cache.
// Prelude of qk_rope, attention and cattention (their Params hold pos0).

fn row_pos(m: u32) -> u32 {
    return p.pos0 + m;
}

fn kv_slot(m: u32, j: u32) -> u32 {
    return j;
}
