//! An append-only list in fixed-size chunks: growing never copies what is there (a vector of a
//! million events would briefly hold two copies while it grows), and chunks can be freed from the
//! front once nothing reads them any more.

/// Chunks of 1,024 items (2^10): small, for the many short lists kept side by side (one per dedup
/// bucket). 16 items in unit tests, so that small inputs cross chunks too.
pub const SMALL_CHUNKS: u32 = if cfg!(test) { 4 } else { 10 };

/// Chunks of 8,192 items (2^13; 192–320 KiB of 24- to 40-byte items): large enough that the
/// allocator gives each chunk pages of its own, which go back to the system as soon as the chunk is
/// freed. Smaller chunks share pages with whatever else has their size, and lists that live longer
/// (the fold tables) then kept the pages of freed events in memory: 14 MiB more at the peak of
/// folding a million and a half events.
pub const LARGE_CHUNKS: u32 = if cfg!(test) { 4 } else { 13 };

/// An append-only list addressed by `u32` index, in chunks of 2^`BITS` items.
#[derive(Debug)]
pub struct Arena<T, const BITS: u32 = SMALL_CHUNKS> {
    chunks: Vec<Vec<T>>,
    len: usize,
    /// Chunks before this one are freed.
    freed: usize,
}

impl<T, const BITS: u32> Default for Arena<T, BITS> {
    fn default() -> Self {
        Arena {
            chunks: Vec::new(),
            len: 0,
            freed: 0,
        }
    }
}

impl<T, const BITS: u32> Arena<T, BITS> {
    const CHUNK: usize = 1 << BITS;

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `item`; returns its index.
    pub fn push(&mut self, item: T) -> u32 {
        if self.len.is_multiple_of(Self::CHUNK) {
            self.chunks.push(Vec::with_capacity(Self::CHUNK));
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
        (i >> BITS, i & (Self::CHUNK - 1))
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

    /// Replace the items with `items`, written into the chunks already held (more chunks only if
    /// `items` is the longer): a list sorted and thinned out elsewhere comes back without a second
    /// allocation of its size, whose pages the allocator could not hand to the chunks freed for it.
    pub fn overwrite(&mut self, items: &[T])
    where
        T: Copy,
    {
        let parts = items.chunks(Self::CHUNK);
        let held = self.chunks.len().min(parts.len());
        for (chunk, part) in self.chunks.iter_mut().zip(parts.clone()) {
            chunk.clear();
            chunk.extend_from_slice(part);
        }
        self.chunks.truncate(held);
        self.freed = 0;
        self.len = (held * Self::CHUNK).min(items.len());
        for &item in items.get(self.len..).unwrap_or_default() {
            self.push(item);
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
        const CHUNK: usize = 1 << SMALL_CHUNKS;
        let mut a: Arena<u64> = Arena::default();
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

    #[test]
    fn overwriting_reuses_chunks_and_keeps_indexes() {
        const CHUNK: usize = 1 << SMALL_CHUNKS;
        let mut a: Arena<u64> = Arena::default();
        for i in 0..(3 * CHUNK + 2) as u64 {
            a.push(i);
        }
        let first = a.chunks[0].as_ptr();
        // fewer items: the first chunks are reused, the rest dropped
        let fewer: Vec<u64> = (100..100 + CHUNK as u64 + 3).collect();
        a.overwrite(&fewer);
        assert_eq!(a.len(), fewer.len());
        assert_eq!(a.chunks.len(), 2);
        assert_eq!(a.chunks[0].as_ptr(), first);
        assert_eq!(a.iter().copied().collect::<Vec<_>>(), fewer);
        assert_eq!(a.push(7), fewer.len() as u32);
        assert_eq!(a.get(fewer.len() as u32), Some(&7));
        // more items than there were: pushed on
        let more: Vec<u64> = (0..2 * CHUNK as u64 + 9).collect();
        a.overwrite(&more);
        assert_eq!(a.iter().copied().collect::<Vec<_>>(), more);
        assert_eq!(a.get(CHUNK as u32 * 2 + 8), Some(&(CHUNK as u64 * 2 + 8)));
        // exactly a chunk, then nothing
        a.overwrite(&more[..CHUNK]);
        assert_eq!(a.len(), CHUNK);
        assert_eq!(a.push(1), CHUNK as u32);
        a.overwrite(&[]);
        assert!(a.is_empty());
        assert_eq!(a.iter().count(), 0);
    }
}
