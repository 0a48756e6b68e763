//! An append-only list in fixed-size chunks: growing never copies what is there (a vector of a
//! million events would briefly hold two copies while it grows), and chunks can be freed from the
//! front once nothing reads them any more.

/// Items per chunk: 1,024 (40 KiB of 40-byte events, a size the allocator reuses for anything once
/// freed); 16 in unit tests, so that small inputs cross chunks too.
#[cfg(not(test))]
const CHUNK_BITS: u32 = 10;
#[cfg(test)]
const CHUNK_BITS: u32 = 4;
const CHUNK: usize = 1 << CHUNK_BITS;

/// An append-only list addressed by `u32` index.
#[derive(Debug)]
pub struct Arena<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
    /// Chunks before this one are freed.
    freed: usize,
}

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Arena {
            chunks: Vec::new(),
            len: 0,
            freed: 0,
        }
    }
}

impl<T> Arena<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `item`; returns its index.
    pub fn push(&mut self, item: T) -> u32 {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let index = self.len;
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(item);
        }
        self.len += 1;
        index as u32
    }

    fn locate(index: u32) -> (usize, usize) {
        let i = index as usize;
        (i >> CHUNK_BITS, i & (CHUNK - 1))
    }

    /// The item at `index`; `None` past the end or in a freed chunk.
    pub fn get(&self, index: u32) -> Option<&T> {
        let (c, i) = Self::locate(index);
        self.chunks.get(c).and_then(|chunk| chunk.get(i))
    }

    /// The item pushed last.
    pub fn last(&self) -> Option<&T> {
        self.len.checked_sub(1).and_then(|i| self.get(i as u32))
    }

    pub fn get_mut(&mut self, index: u32) -> Option<&mut T> {
        let (c, i) = Self::locate(index);
        self.chunks.get_mut(c).and_then(|chunk| chunk.get_mut(i))
    }

    /// Free every whole chunk before `index`: nothing will read those items again.
    pub fn free_before(&mut self, index: u32) {
        let (c, _) = Self::locate(index);
        while self.freed < c.min(self.chunks.len()) {
            self.chunks[self.freed] = Vec::new();
            self.freed += 1;
        }
    }

    /// The items in order (freed chunks are skipped).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_keep_their_index_across_chunks_and_frees() {
        let mut a = Arena::default();
        for i in 0..(2 * CHUNK + 5) as u64 {
            assert_eq!(a.push(i), i as u32);
        }
        assert_eq!(a.len(), 2 * CHUNK + 5);
        assert_eq!(a.get(CHUNK as u32 + 3), Some(&(CHUNK as u64 + 3)));
        *a.get_mut(7).unwrap() = 70;
        assert_eq!(a.get(7), Some(&70));
        a.free_before(CHUNK as u32 + 1);
        assert_eq!(a.get(7), None);
        assert_eq!(a.get(CHUNK as u32), Some(&(CHUNK as u64)));
        assert_eq!(a.iter().count(), CHUNK + 5);
        assert_eq!(a.get((2 * CHUNK + 5) as u32), None);
    }
}
