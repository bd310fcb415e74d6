//! The log's three hashes, for the walk and the append step alike: a record's chain link, and RFC 9162
//! §2.1's leaf and node hashes (record.chain_hash, merkle.leaf_hash and merkle.node_hash in Python).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use sha2::{Digest, Sha256};

pub(crate) type Hash = [u8; 32];

/// SHA-256(prev || record): the record's link in the chain.
pub(crate) fn chain_hash(prev: &[u8], record: &[u8]) -> Hash {
    Sha256::new().chain_update(prev).chain_update(record).finalize().into()
}

/// SHA-256(0x00 || record).
pub(crate) fn leaf_hash(record: &[u8]) -> Hash {
    Sha256::new().chain_update([0u8]).chain_update(record).finalize().into()
}

/// SHA-256(0x01 || left || right).
pub(crate) fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// A hash Python passed in; anything but 32 bytes is refused, not padded.
pub(crate) fn to_hash(bytes: &[u8]) -> PyResult<Hash> {
    bytes
        .try_into()
        .map_err(|_| PyValueError::new_err(format!("a hash is 32 bytes, not {}", bytes.len())))
}
