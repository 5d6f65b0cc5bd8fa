//! Resource ids: a type prefix and a UUIDv7, so ids sort by creation time
//! (lists page by id) and say what they name.

use sha2::{Digest, Sha256};

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

/// An id derived from what it stands for (`parts`), so that whoever derives
/// it again gets the same resource: `<prefix>_` and 32 hex digits of the
/// SHA-256 of the parts (each length-prefixed, so no two lists collide).
pub fn derived_id(prefix: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    format!("{prefix}_{}", &hex::encode(h.finalize())[..32])
}
