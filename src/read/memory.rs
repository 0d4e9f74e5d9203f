//! The blocks in memory: one `Block` object per (file version, block index), shared by every
//! reader and every transfer that touches it. Being in this map is what makes fetching
//! single-flight: a transfer fills the block readers already wait on, and a second transfer
//! over the same bytes finds them claimed or filled and reads past them.
//!
//! Memory is bounded by the buffer pool, not by a count of entries: a new block takes a
//! buffer, evicting the least recently used block that nobody holds (an `Arc` count of one:
//! only this map). Blocks being filled, waited on, queued for the disk or answering a FUSE
//! reply are held elsewhere and so never evicted. When every buffer is held, the caller
//! waits (bounded) for one to come back: that is the read path's back-pressure.
//!
//! Threads: FUSE threads and fetch threads. Lock order: the map lock, then a block's lock;
//! the pool's lock is taken alone (a block dropped here returns its buffer under it).

use std::sync::Arc;
use std::time::Instant;

use lru::LruCache;
use parking_lot::Mutex;

use super::block::{Block, Buffer, Pool};

/// A block's identity: the file version's key and the block's index.
pub(crate) type BlockKey = ([u8; 32], u64);

pub(crate) struct Memory {
    map: Mutex<LruCache<BlockKey, Arc<Block>>>,
    pool: Arc<Pool>,
}

impl Memory {
    pub(crate) fn new(pool: Arc<Pool>) -> Memory {
        Memory { map: Mutex::new(LruCache::unbounded()), pool }
    }

    /// The block if it is in memory (marks it recently used).
    pub(crate) fn get(&self, key: &BlockKey) -> Option<Arc<Block>> {
        self.map.lock().get(key).cloned()
    }

    /// The block, without touching its recency (for notifications).
    pub(crate) fn peek(&self, key: &BlockKey) -> Option<Arc<Block>> {
        self.map.lock().peek(key).cloned()
    }

    /// The block, created empty (`loading` set when `for_load`) if it is not in memory.
    /// Returns whether it was created, or `None` when no buffer came free before `until`.
    pub(crate) fn get_or_create(
        &self,
        key: &BlockKey,
        len: usize,
        for_load: bool,
        until: Instant,
    ) -> Option<(Arc<Block>, bool)> {
        loop {
            {
                let mut map = self.map.lock();
                if let Some(b) = map.get(key) {
                    return Some((Arc::clone(b), false));
                }
                if let Some(buf) = self.take_buffer(&mut map) {
                    let block = Arc::new(Block::new(buf, len, for_load));
                    map.put(*key, Arc::clone(&block));
                    return Some((block, true));
                }
            }
            if Instant::now() >= until {
                return None;
            }
            self.pool.wait_for_free(until);
        }
    }

    /// A buffer for assembling a reply, if one is free or a block can give its up.
    pub(crate) fn spare_buffer(&self) -> Option<Buffer> {
        self.take_buffer(&mut self.map.lock())
    }

    fn take_buffer(&self, map: &mut LruCache<BlockKey, Arc<Block>>) -> Option<Buffer> {
        self.pool.take().or_else(|| {
            // The least recently used block that only this map holds.
            let victim = map.iter().rev().find(|(_, b)| Arc::strong_count(b) == 1).map(|(k, _)| *k);
            // Dropping it returns its buffer to the pool.
            drop(map.pop(&victim?));
            self.pool.take()
        })
    }

    #[cfg(test)]
    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_held_block_is_never_evicted_and_a_free_one_is() {
        let memory = Memory::new(Pool::new(2, 64));
        let soon = Instant::now() + Duration::from_millis(50);
        let (a, _) = memory.get_or_create(&([1; 32], 0), 64, false, soon).expect("a");
        let (b, _) = memory.get_or_create(&([1; 32], 1), 64, false, soon).expect("b");
        // Both held: no room for a third until one is let go.
        assert!(memory.get_or_create(&([1; 32], 2), 64, false, Instant::now()).is_none());
        drop(b);
        let (c, created) = memory.get_or_create(&([1; 32], 2), 64, false, soon).expect("c");
        assert!(created);
        assert!(memory.get(&([1; 32], 0)).is_some_and(|x| Arc::ptr_eq(&x, &a)), "the held block stayed");
        assert!(memory.get(&([1; 32], 1)).is_none(), "the free one went");
        drop((a, c));
    }
}
