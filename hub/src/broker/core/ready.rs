//! A service's workers that have free credit, best first: the most free
//! credit, then the least recently ready (the one whose credit last grew
//! longest ago). For stock workers (credit 1) that is exactly the old idle
//! queue: least recently ready first.
//!
//! An indexed binary heap: each worker knows its position (the `slot` the
//! callback is told about), so a worker's key can change, or the worker
//! leave, in O(log n). The heap's storage is kept between uses, so routing
//! does not allocate once a service has seen its workers.

/// Where a worker is in its service's heap: nowhere.
pub(super) const NOT_READY: usize = usize::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub free: u32,
    /// When the worker last gained credit (a broker-wide counter).
    pub seq: u64,
    pub wid: usize,
}

impl Entry {
    fn before(&self, other: &Entry) -> bool {
        self.free > other.free || (self.free == other.free && self.seq < other.seq)
    }
}

#[derive(Default)]
pub(super) struct ReadyHeap {
    entries: Vec<Entry>,
}

impl ReadyHeap {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The best worker.
    pub fn top(&self) -> Option<Entry> {
        self.entries.first().copied()
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// The entry at `slot` (as the callback last told it).
    pub fn at(&self, slot: usize) -> Entry {
        self.entries[slot]
    }

    /// Adds a worker; `moved(wid, slot)` is told every worker's new slot.
    pub fn insert(&mut self, entry: Entry, moved: &mut impl FnMut(usize, usize)) {
        self.entries.push(entry);
        let last = self.entries.len() - 1;
        moved(entry.wid, last);
        self.sift_up(last, moved);
    }

    /// Changes the key of the worker at `slot`.
    pub fn update(&mut self, slot: usize, free: u32, seq: u64, moved: &mut impl FnMut(usize, usize)) {
        self.entries[slot].free = free;
        self.entries[slot].seq = seq;
        let slot = self.sift_up(slot, moved);
        self.sift_down(slot, moved);
    }

    /// Takes the worker at `slot` out; it is told [`NOT_READY`].
    pub fn remove(&mut self, slot: usize, moved: &mut impl FnMut(usize, usize)) {
        let gone = self.entries.swap_remove(slot);
        moved(gone.wid, NOT_READY);
        if slot < self.entries.len() {
            moved(self.entries[slot].wid, slot);
            let slot = self.sift_up(slot, moved);
            self.sift_down(slot, moved);
        }
    }

    fn swap(&mut self, a: usize, b: usize, moved: &mut impl FnMut(usize, usize)) {
        self.entries.swap(a, b);
        moved(self.entries[a].wid, a);
        moved(self.entries[b].wid, b);
    }

    fn sift_up(&mut self, mut i: usize, moved: &mut impl FnMut(usize, usize)) -> usize {
        while i > 0 {
            let parent = (i - 1) / 2;
            if !self.entries[i].before(&self.entries[parent]) {
                break;
            }
            self.swap(i, parent, moved);
            i = parent;
        }
        i
    }

    fn sift_down(&mut self, mut i: usize, moved: &mut impl FnMut(usize, usize)) {
        loop {
            let (left, right) = (2 * i + 1, 2 * i + 2);
            let mut best = i;
            if left < self.entries.len() && self.entries[left].before(&self.entries[best]) {
                best = left;
            }
            if right < self.entries.len() && self.entries[right].before(&self.entries[best]) {
                best = right;
            }
            if best == i {
                return;
            }
            self.swap(i, best, moved);
            i = best;
        }
    }

    /// The heap property holds and every slot is where `slot_of` says.
    #[cfg(test)]
    pub fn check(&self, slot_of: impl Fn(usize) -> usize) {
        for (i, e) in self.entries.iter().enumerate() {
            assert_eq!(slot_of(e.wid), i, "worker {} is at slot {i}", e.wid);
            assert!(e.free > 0, "a worker without free credit is ready");
            if i > 0 {
                assert!(!e.before(&self.entries[(i - 1) / 2]), "heap order at {i}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Against a plain list: the top is always the best, through inserts,
        /// updates and removals.
        #[test]
        fn the_top_is_the_most_free_then_least_recently_ready(
            ops in prop::collection::vec((0..3u8, 0..8usize, 1..5u32), 1..200)
        ) {
            let mut heap = ReadyHeap::default();
            let mut slots: HashMap<usize, usize> = HashMap::new();
            let mut seq = 0;
            for (op, wid, free) in ops {
                seq += 1;
                let slot = slots.get(&wid).copied();
                let mut moved = |w: usize, s: usize| {
                    if s == NOT_READY { slots.remove(&w); } else { slots.insert(w, s); }
                };
                match (op, slot) {
                    (0, None) => heap.insert(Entry { free, seq, wid }, &mut moved),
                    (1, Some(slot)) => heap.update(slot, free, seq, &mut moved),
                    (2, Some(slot)) => heap.remove(slot, &mut moved),
                    _ => {}
                }
                heap.check(|w| slots[&w]);
                let best = heap.iter().min_by_key(|e| (std::cmp::Reverse(e.free), e.seq)).copied();
                prop_assert_eq!(heap.top(), best);
            }
        }
    }
}
