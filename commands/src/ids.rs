//! Resource ids: a type prefix and a UUIDv7, so ids sort by creation time
//! (lists page by id) and say what they name.

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// True when `id` looks like an id of ours with that prefix (cheap check used
/// before touching the store).
pub fn has_prefix(id: &str, prefix: &str) -> bool {
    id.len() > prefix.len() + 1
        && id.len() <= 64
        && id.starts_with(prefix)
        && id.as_bytes()[prefix.len()] == b'_'
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
