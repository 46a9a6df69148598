//! Where each stored session id lives: the writer's in-memory index from id to row.
//!
//! Why not an index in the database: session ids are random past their time prefix, so
//! a b-tree on them takes an insert in a page of its own for almost every session, and
//! that page goes to the write-ahead log at the next commit. Measured on the development
//! VM (rowid table of sessions, 1M inserts in 1,000-row transactions): the id index
//! alone cost ~1.4 µs of insert and ~0.3 µs of commit per session, a quarter of all
//! the writer did. Held here instead, an id costs one hash-table slot (~24 bytes), and
//! the table is rebuilt from the stored session batches when the store opens (1.35 s
//! for 1.1 million sessions on the development VM; see docs/performance.md).
//!
//! Ids are kept by a 64-bit hash under a key chosen at random when the process starts,
//! so nobody can aim ids at one slot. Two different ids with one hash are told apart by
//! reading the stored row's id; the later one is kept by its text in `collided`.
//!
//! Changes are journaled until the transaction that made them commits, so that a
//! rolled-back group leaves no id pointing at a row that was never written.
//!
//! The table is split in [`SHARDS`] by the hash's top bits, so that growing it moves a
//! shard's entries at a time: as one table, doubling it at 1.8 million ids stopped the
//! writer for 300-370 ms (logged as a slow group in sync_load), and every sync queued
//! behind it waited as long.

use std::collections::HashMap;
use std::hash::BuildHasher;

use rustc_hash::FxHashMap;

/// Number of a stored session.
pub type Row = i64;

/// Shards of the table by hash (a power of two).
pub const SHARDS: usize = 256;

pub struct Ids {
    hasher: std::collections::hash_map::RandomState,
    /// Shard `hash >> 56` holds the ids of that hash.
    by_hash: Vec<FxHashMap<u64, Row>>,
    /// Ids whose hash is taken by another id.
    collided: HashMap<Box<str>, Row>,
    /// Ids added since the last commit, to forget on a rollback.
    journal: Vec<Added>,
}

enum Added {
    Hash(u64),
    Text(Box<str>),
}

/// An id's place in the index by hash.
#[derive(Clone, Copy)]
pub struct Slot(u64);

/// What the index knows about an id before the stored row is read.
pub enum Lookup {
    /// No session has this id.
    Absent,
    /// The session with this id is the row.
    Found(Row),
    /// The row holds this id's hash: read it to tell whether it holds this id.
    Check(Row),
}

impl Ids {
    pub fn with_capacity(n: usize) -> Ids {
        Ids {
            hasher: Default::default(),
            by_hash: (0..SHARDS)
                .map(|_| FxHashMap::with_capacity_and_hasher(n / SHARDS, Default::default()))
                .collect(),
            collided: HashMap::new(),
            journal: Vec::new(),
        }
    }

    fn shard(&self, hash: u64) -> &FxHashMap<u64, Row> {
        &self.by_hash[(hash >> 56) as usize % SHARDS]
    }

    fn shard_mut(&mut self, hash: u64) -> &mut FxHashMap<u64, Row> {
        &mut self.by_hash[(hash >> 56) as usize % SHARDS]
    }

    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    pub fn len(&self) -> usize {
        self.by_hash.iter().map(|s| s.len()).sum::<usize>() + self.collided.len()
    }

    /// Where `id` may be, and its slot for [`Ids::insert_at`]. `Check(row)`: if the row
    /// holds another id, `id` is absent and its hash is taken. The slot keeps the id's
    /// hash, so that a new id is hashed once (hashing was a fourteenth of the writer's
    /// instructions when its lookup and its insert each hashed it).
    pub fn find(&self, id: &str) -> (Lookup, Slot) {
        let slot = Slot(self.hash(id));
        if !self.collided.is_empty()
            && let Some(&row) = self.collided.get(id)
        {
            return (Lookup::Found(row), slot);
        }
        match self.shard(slot.0).get(&slot.0) {
            None => (Lookup::Absent, slot),
            Some(&row) => (Lookup::Check(row), slot),
        }
    }

    /// Records a new id at `row`, in the slot [`Ids::find`] gave for it. `hash_taken`:
    /// the id's hash slot holds another id (a [`Lookup::Check`] whose row held a
    /// different id).
    pub fn insert_at(&mut self, id: &str, slot: Slot, row: Row, hash_taken: bool) {
        if hash_taken {
            self.collided.insert(id.into(), row);
            self.journal.push(Added::Text(id.into()));
        } else {
            self.shard_mut(slot.0).insert(slot.0, row);
            self.journal.push(Added::Hash(slot.0));
        }
    }

    #[cfg(test)]
    fn lookup(&self, id: &str) -> Lookup {
        self.find(id).0
    }

    #[cfg(test)]
    fn insert(&mut self, id: &str, row: Row, hash_taken: bool) {
        let (_, slot) = self.find(id);
        self.insert_at(id, slot, row, hash_taken);
    }

    /// Records an id read from the database when the store opens (no journal).
    /// `Err(row)`: its hash is taken by the id at `row`; call again with `hash_taken`
    /// once the two are known to differ.
    pub fn load(&mut self, id: &str, row: Row, hash_taken: bool) -> Result<(), Row> {
        if hash_taken {
            self.collided.insert(id.into(), row);
            return Ok(());
        }
        let h = self.hash(id);
        match self.shard(h).get(&h) {
            Some(&other) => Err(other),
            None => {
                self.shard_mut(h).insert(h, row);
                Ok(())
            }
        }
    }

    /// The transaction committed: its ids stay.
    pub fn commit(&mut self) {
        self.journal.clear();
    }

    /// The transaction was rolled back: forget its ids.
    pub fn rollback(&mut self) {
        for added in std::mem::take(&mut self.journal).into_iter().rev() {
            match added {
                Added::Hash(h) => {
                    self.shard_mut(h).remove(&h);
                }
                Added::Text(id) => {
                    self.collided.remove(&id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rolled_back_id_is_forgotten_and_a_committed_one_kept() {
        let mut ids = Ids::with_capacity(0);
        ids.insert("a", 1, false);
        ids.commit();
        ids.insert("b", 2, false);
        ids.insert("c", 3, true);
        ids.rollback();
        assert!(matches!(ids.lookup("a"), Lookup::Check(1)));
        assert!(matches!(ids.lookup("b"), Lookup::Absent));
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn ids_spread_over_the_shards_are_each_found_in_theirs() {
        let mut ids = Ids::with_capacity(1000);
        for i in 0..10_000 {
            ids.insert(&format!("id-{i}"), i, false);
        }
        ids.commit();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.by_hash.iter().all(|s| !s.is_empty()));
        for i in 0..10_000 {
            assert!(matches!(ids.lookup(&format!("id-{i}")), Lookup::Check(r) if r == i));
        }
        assert!(matches!(ids.lookup("id-10000"), Lookup::Absent));
    }

    #[test]
    fn an_id_whose_hash_is_taken_is_found_by_its_text() {
        let mut ids = Ids::with_capacity(0);
        ids.insert("a", 1, false);
        // Pretend "a2" shares a's slot: it is kept by its text.
        ids.insert("a2", 7, true);
        ids.commit();
        assert!(matches!(ids.lookup("a2"), Lookup::Found(7)));
        assert!(matches!(ids.lookup("a"), Lookup::Check(1)));
    }
}
