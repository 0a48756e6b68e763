//! A table that numbers distinct values, each stored once: what the events of an execution say
//! repeats across its events and the executions of a project.
//!
//! The values lie in fixed-size chunks and the index holds only their numbers, so the table costs
//! about a value and a few bytes per entry at any size: an index map that grows by doubling held
//! its entries (with their hashes) and its slots at up to twice their number, which for a quarter
//! of a million distinct values was 30 MiB rather than 12.

use std::hash::{BuildHasher, Hash};

use super::arena::{Arena, LARGE_CHUNKS};

/// Distinct values by number, in the order they were first seen.
pub struct Interned<T> {
    values: Arena<T, LARGE_CHUNKS>,
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            values: Arena::default(),
            index: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<T: Hash + Eq> Interned<T> {
    /// The number of `value`, given the next one if it is new.
    pub fn intern(&mut self, value: T) -> u32 {
        let hash = self.hasher.hash_one(&value);
        let values = &self.values;
        if let Some(&n) = self.index.find(hash, |&n| values.get(n) == Some(&value)) {
            return n;
        }
        let n = self.values.push(value);
        let (values, hasher) = (&self.values, &self.hasher);
        self.index.insert_unique(hash, n, |&m| {
            values.get(m).map_or(0, |v| hasher.hash_one(v))
        });
        n
    }

    /// The value numbered `n`.
    pub fn get(&self, n: u32) -> Option<&T> {
        self.values.get(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_a_number_across_many_chunks() {
        let mut table = Interned::default();
        for round in 0..3 {
            for v in 0..500u64 {
                assert_eq!(table.intern(v * 7), v as u32, "round {round}");
            }
        }
        assert_eq!(table.get(499), Some(&(499 * 7)));
        assert_eq!(table.get(500), None);
    }
}
