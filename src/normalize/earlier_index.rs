//! Where each execution read from a state is held, found by its id: an incremental run indexes
//! every execution of its state (about 120,000 on a year of a 50,000-project fleet) and looks up
//! only the few its new events name.

use std::hash::BuildHasher;

use super::text::{FastMap, Text};

/// Where an execution read from a state is held by the normaliser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Earlier {
    Part(u32),
    Execution(u32),
}

/// Executions read from a state by a 64-bit hash of their id, not by the id itself: an index of
/// shared ids cloned every id (an atomic count on a line of memory of its own) and hashed it again
/// on every probe as it grew. A lookup checks the id of what it finds, and an id whose hash another
/// id already has (which a 64-bit hash all but never is) is kept by its text apart.
#[derive(Debug, Default)]
pub(super) struct EarlierIndex {
    by_hash: FastMap<u64, Earlier>,
    collided: FastMap<Text, Earlier>,
}

/// The same hash in every index and run, so that an id hashes alike wherever it is looked up.
const SEED: u64 = 0x7461_702d_6b70_6973;

fn hash(id: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(SEED).hash_one(id)
}

impl EarlierIndex {
    /// An index with room for `n` executions without growing.
    pub(super) fn with_capacity(n: usize) -> Self {
        EarlierIndex {
            by_hash: FastMap::with_capacity_and_hasher(n, Default::default()),
            collided: FastMap::default(),
        }
    }

    /// Record where the execution with this id is.
    pub(super) fn insert(&mut self, id: &str, at: Earlier) {
        match self.by_hash.entry(hash(id)) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(at);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert(Text::from(id), at);
            }
        }
    }

    /// Where the execution with this id is; `id_at` tells the id of what is held at a place (`None`
    /// when it was taken out), against which the hash's find is checked.
    pub(super) fn get<'a>(
        &self,
        id: &str,
        id_at: impl FnOnce(Earlier) -> Option<&'a str>,
    ) -> Option<Earlier> {
        if let Some(&at) = self.by_hash.get(&hash(id))
            && id_at(at) == Some(id)
        {
            return Some(at);
        }
        self.collided.get(id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_where_they_were_put_and_unknown_ones_nowhere() {
        let ids: Vec<Text> = (0..1000).map(|i| Text::from(format!("exec-{i}"))).collect();
        let mut index = EarlierIndex::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            index.insert(id, Earlier::Execution(i as u32));
        }
        let id_at = |at: Earlier| match at {
            Earlier::Execution(i) => ids.get(i as usize).map(|t| &**t),
            Earlier::Part(_) => None,
        };
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(index.get(id, id_at), Some(Earlier::Execution(i as u32)));
        }
        assert_eq!(index.get("exec-1000", id_at), None);
        assert!(index.collided.is_empty());
    }

    #[test]
    fn an_id_whose_hash_is_taken_is_found_by_its_text() {
        let first = Text::from("first");
        let second = Text::from("second");
        let mut index = EarlierIndex::default();
        index.insert(&first, Earlier::Part(0));
        // as if "second" hashed as "first" does: its hash's place is taken
        index.by_hash.insert(hash(&second), Earlier::Part(0));
        index.collided.insert(second.clone(), Earlier::Execution(7));
        let id_at = |at: Earlier| match at {
            Earlier::Part(0) => Some("first"),
            _ => None,
        };
        assert_eq!(index.get("first", id_at), Some(Earlier::Part(0)));
        assert_eq!(index.get("second", id_at), Some(Earlier::Execution(7)));
        // once what the hash points at is taken out, the text decides
        assert_eq!(index.get("first", |_| None), None);
    }

    #[test]
    fn a_second_id_with_a_taken_hash_goes_apart_on_insert() {
        let mut index = EarlierIndex::default();
        let a = Text::from("a");
        index.by_hash.insert(hash("b"), Earlier::Part(3));
        index.insert(&a, Earlier::Part(1));
        index.insert(&Text::from("b"), Earlier::Execution(2));
        assert_eq!(index.collided.len(), 1);
        let id_at = |at: Earlier| match at {
            Earlier::Part(1) => Some("a"),
            Earlier::Part(3) => Some("c"),
            _ => None,
        };
        assert_eq!(index.get("a", id_at), Some(Earlier::Part(1)));
        assert_eq!(index.get("b", id_at), Some(Earlier::Execution(2)));
    }
}
