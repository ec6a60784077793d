//! Encoded UDP responses, reused for a query that is byte for byte an earlier one but
//! for its ID (the technique of PowerDNS's packet cache; Knot DNS precompiles its
//! answers instead).
//!
//! Why: a response is a pure function of the query's bytes and the zone snapshot, and a
//! failover zone is asked the same few questions again and again. Decoding the query,
//! looking the name up and encoding the answer with name compression cost several times
//! what copying 40 to 100 bytes does; on a hit only the copy is left, and the ID is
//! patched.
//!
//! Guarantees:
//! - an entry belongs to one snapshot: a hit needs the very snapshot the query would be
//!   answered from now (`Arc::ptr_eq`), so a new routing table is never answered from an
//!   older one, and the first store under a new snapshot empties the cache;
//! - only responses that the query's bytes and the snapshot decide are stored: not a
//!   weighted group's draw (`Reply::drawn`), not a rate-limited (slipped) answer, not a
//!   SERVFAIL from a failed encoding; rate limiting runs before the cache is asked;
//! - the key is the whole query after its ID (header flags, question with its case,
//!   EDNS record and options), so two queries that differ anywhere are two entries;
//! - bounded: at most [`MAX_ENTRIES`] entries, each key at most [`MAX_KEY`] bytes; a
//!   full cache is emptied, so a flood of distinct names costs a refill, not memory;
//! - a store never waits: when another task holds the lock the entry is not kept.

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::RecordType;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Entries kept before the cache is emptied.
pub(crate) const MAX_ENTRIES: usize = 4096;
/// The longest query stored (a question of a 255-byte name, an OPT record with options).
pub(crate) const MAX_KEY: usize = 512;
/// A DNS header: the ID is its first two bytes.
const HEADER: usize = 12;

/// What a hit gives back besides the bytes: what the query is counted as.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Counted {
    pub(crate) qtype: Option<RecordType>,
    pub(crate) rcode: ResponseCode,
}

struct Entry {
    response: Box<[u8]>,
    counted: Counted,
}

struct Inner<S> {
    snapshot: Option<Arc<S>>,
    entries: HashMap<Box<[u8]>, Entry>,
}

/// The cache of one server's UDP responses, for snapshots of type `S` (the zone's
/// `Snapshot`; any type in the unit tests).
pub(crate) struct PacketCache<S> {
    inner: RwLock<Inner<S>>,
}

impl<S> Default for PacketCache<S> {
    fn default() -> Self {
        Self {
            inner: RwLock::new(Inner {
                snapshot: None,
                entries: HashMap::new(),
            }),
        }
    }
}

impl<S> PacketCache<S> {
    /// The response to `query` under `snap`, written into `out` with the query's ID.
    pub(crate) fn get(&self, snap: &Arc<S>, query: &[u8], out: &mut Vec<u8>) -> Option<Counted> {
        if !(HEADER..=MAX_KEY).contains(&query.len()) {
            return None;
        }
        // A poisoned lock only means a panic elsewhere: the map is whole (insert/clear).
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if !inner
            .snapshot
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, snap))
        {
            return None;
        }
        let entry = inner.entries.get(&query[2..])?;
        out.clear();
        out.extend_from_slice(&entry.response);
        out[..2].copy_from_slice(&query[..2]);
        Some(entry.counted)
    }

    /// Keep `response` (the encoded answer to `query` under `snap`) for later queries.
    pub(crate) fn put(&self, snap: &Arc<S>, query: &[u8], response: &[u8], counted: Counted) {
        if !(HEADER..=MAX_KEY).contains(&query.len()) || response.len() < HEADER {
            return;
        }
        // Never wait to store: under a flood of distinct names every query misses, and
        // the receiving tasks must not queue on the lock for an entry nobody asks again.
        let mut inner = match self.inner.try_write() {
            Ok(inner) => inner,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if !inner
            .snapshot
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, snap))
        {
            inner.entries.clear();
            inner.snapshot = Some(snap.clone());
        }
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries.clear();
        }
        inner.entries.insert(
            query[2..].into(),
            Entry {
                response: response.into(),
                counted,
            },
        );
    }

    /// Entries held now (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &[u8]) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(name);
        q
    }

    const COUNTED: Counted = Counted {
        qtype: Some(RecordType::A),
        rcode: ResponseCode::NoError,
    };

    #[test]
    fn a_hit_needs_the_same_bytes_after_the_id_and_the_same_snapshot() {
        let cache = PacketCache::default();
        let (snap, newer) = (Arc::new(1), Arc::new(2));
        let mut response = query(7, b"\x01a\0");
        response[2] = 0x84; // QR, AA
        cache.put(&snap, &query(7, b"\x01a\0"), &response, COUNTED);
        let mut out = Vec::new();
        assert_eq!(
            cache.get(&snap, &query(9, b"\x01a\0"), &mut out),
            Some(COUNTED)
        );
        assert_eq!(out[..2], 9u16.to_be_bytes(), "the ID is the new query's");
        assert_eq!(out[2..], response[2..]);
        assert_eq!(
            cache.get(&snap, &query(9, b"\x01A\0"), &mut out),
            None,
            "case is part of the key"
        );
        assert_eq!(
            cache.get(&newer, &query(9, b"\x01a\0"), &mut out),
            None,
            "another snapshot"
        );
        // The first store under a newer snapshot drops every older entry.
        cache.put(&newer, &query(1, b"\x01b\0"), &response, COUNTED);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&snap, &query(1, b"\x01b\0"), &mut out), None);
    }

    #[test]
    fn the_cache_is_bounded_and_short_or_long_packets_are_not_kept() {
        let cache = PacketCache::default();
        let snap = Arc::new(());
        let response = query(0, b"\0");
        for i in 0..MAX_ENTRIES + 10 {
            let name = format!("{i:08}");
            cache.put(&snap, &query(0, name.as_bytes()), &response, COUNTED);
            assert!(cache.len() <= MAX_ENTRIES);
        }
        assert_eq!(cache.len(), 10, "a full cache is emptied, then refilled");
        let long = query(0, &[b'x'; MAX_KEY]);
        cache.put(&snap, &long, &response, COUNTED);
        cache.put(&snap, &[0; 5], &response, COUNTED);
        cache.put(&snap, &query(0, b"ok"), &[0; 3], COUNTED);
        assert_eq!(cache.len(), 10);
        assert_eq!(cache.get(&snap, &long, &mut Vec::new()), None);
    }
}
