//! An agent-wide limit on the bytes memory captures hold (`--output-limit`).
//!
//! [`Budget`] counts the bytes held by every memory capture and indexes the
//! captures by size. Before a capture grows, [`push`] makes room: when the new
//! total would pass the limit, bytes are shed from the middle of the largest
//! captures first (see [`HeadTail::shed`]); the growing capture itself sheds
//! when it is the largest, and when nothing is left to shed the new bytes are
//! dropped (still counted in the stream length). The total never passes the
//! limit.
//!
//! Cost per pipe completion: nothing beyond [`HeadTail::push`] when the capture
//! does not grow (a full tail overwriting in place); otherwise O(log n) index
//! updates per capture touched. A victim other than the grower sheds at least
//! an eighth of what it holds, so the copy a shed may make (the tail's oldest
//! bytes are cut by moving the rest) is amortised over the bytes freed.

use std::collections::BTreeSet;

use super::headtail::HeadTail;

/// Where the captures under a [`Budget`] live, by key.
pub trait Captures<K> {
    /// The live capture `key`, if it is one.
    fn live(&mut self, key: K) -> Option<&mut HeadTail>;
    /// Sheds up to `k` held bytes from capture `key` (live or finished);
    /// returns how many were shed.
    fn shed(&mut self, key: K, k: usize) -> usize;
}

/// Bytes held by all memory captures, against a limit, with the captures
/// ordered by size.
#[derive(Debug, Clone)]
pub struct Budget<K: Ord + Copy> {
    limit: u64,
    held: u64,
    by_size: BTreeSet<(u64, K)>,
}

impl<K: Ord + Copy> Budget<K> {
    /// An empty budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Budget {
            limit,
            held: 0,
            by_size: BTreeSet::new(),
        }
    }

    /// The limit, bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held by all captures.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Records that capture `key` now holds `new` bytes instead of `old`.
    pub fn update(&mut self, key: K, old: u64, new: u64) {
        if old == new {
            return;
        }
        if old > 0 {
            self.by_size.remove(&(old, key));
        }
        if new > 0 {
            self.by_size.insert((new, key));
        }
        self.held = self.held - old + new;
    }

    /// Forgets capture `key`, which held `held` bytes (its process was deleted).
    pub fn remove(&mut self, key: K, held: u64) {
        self.update(key, held, 0);
    }

    /// The capture holding the most bytes other than `except`, with its size.
    fn largest_except(&self, except: K) -> Option<(u64, K)> {
        self.by_size
            .iter()
            .rev()
            .find(|(_, k)| *k != except)
            .copied()
    }
}

/// Pushes `data` into live capture `key`, first making room under `budget`
/// (if any) as the [module documentation](self) says.
pub fn push<K: Ord + Copy, C: Captures<K>>(
    budget: Option<&mut Budget<K>>,
    caps: &mut C,
    key: K,
    data: &[u8],
) {
    let Some(budget) = budget else {
        if let Some(ht) = caps.live(key) {
            ht.push(data);
        }
        return;
    };
    let Some(ht) = caps.live(key) else { return };
    let old = ht.held() as u64;
    let growth = ht.growth(data.len()) as u64;
    let mut over = (budget.held + growth).saturating_sub(budget.limit);
    let mut footprint = old + growth;
    while over > 0 {
        let other = budget.largest_except(key);
        let other_size = other.map_or(0, |(size, _)| size);
        match other {
            // Another capture is at least as large: it gives first.
            Some((size, victim)) if size >= footprint => {
                let want = over.max(size / 8).min(size);
                let shed = caps.shed(victim, usize::try_from(want).unwrap_or(usize::MAX)) as u64;
                budget.update(victim, size, size - shed.min(size));
                if shed == 0 {
                    // Cannot happen for a capture that holds bytes; never spin.
                    break;
                }
                over = over.saturating_sub(shed);
            }
            // The growing capture is the largest: it gives, down to the next.
            _ => {
                let Some(ht) = caps.live(key) else { return };
                let k = over.min(footprint - other_size);
                let shed = ht.shed(usize::try_from(k).unwrap_or(usize::MAX), data.len()) as u64;
                footprint -= shed;
                over = over.saturating_sub(shed);
                if shed == 0 {
                    break;
                }
            }
        }
    }
    let Some(ht) = caps.live(key) else { return };
    if over > 0 {
        // Could not make room (not expected): drop all the new bytes.
        ht.shed(ht.growth(data.len()), data.len());
    }
    ht.push(data);
    if ht.limited() {
        ht.reopen_tail();
    }
    let new = ht.held() as u64;
    budget.update(key, old, new);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A test store: live captures by index, with the stream each was fed.
    struct Store {
        caps: Vec<HeadTail>,
    }

    impl Captures<usize> for Store {
        fn live(&mut self, key: usize) -> Option<&mut HeadTail> {
            self.caps.get_mut(key)
        }
        fn shed(&mut self, key: usize, k: usize) -> usize {
            self.caps.get_mut(key).map_or(0, |c| c.shed(k, 0))
        }
    }

    fn held_total(s: &Store) -> u64 {
        s.caps.iter().map(|c| c.held() as u64).sum()
    }

    /// Checks a capture against the stream it was fed: the head is a prefix,
    /// the tail a suffix, and the dropped range is what lies between.
    fn check_capture(ht: &HeadTail, model: &[u8]) {
        let [head, t0, t1] = ht.slices();
        let tail = [t0, t1].concat();
        assert_eq!(ht.len(), model.len() as u64);
        assert_eq!(head, &model[..head.len()]);
        assert_eq!(&tail[..], &model[model.len() - tail.len()..]);
        assert!(head.len() + tail.len() <= model.len());
        let lo = head.len() as u64;
        let hi = (model.len() - tail.len()) as u64;
        assert_eq!(ht.dropped(), (lo < hi).then_some(lo..hi));
    }

    #[test]
    fn single_capture_settles_to_half_head_half_tail() {
        let mut s = Store {
            caps: vec![HeadTail::new(1 << 20, 1 << 20)],
        };
        let mut b = Budget::new(1000);
        let mut model = Vec::new();
        for i in 0..200u32 {
            let chunk: Vec<u8> = (0..37).map(|j| (i * 37 + j) as u8).collect();
            push(Some(&mut b), &mut s, 0, &chunk);
            model.extend_from_slice(&chunk);
            assert!(b.held() <= 1000);
            assert_eq!(b.held(), held_total(&s));
            check_capture(&s.caps[0], &model);
        }
        let [head, t0, t1] = s.caps[0].slices();
        assert_eq!(head.len() + t0.len() + t1.len(), 1000);
        assert!(
            head.len().abs_diff(t0.len() + t1.len()) <= 37,
            "{}",
            head.len()
        );
        assert!(s.caps[0].limited());
    }

    #[test]
    fn largest_capture_sheds_before_a_smaller_one() {
        let mut s = Store {
            caps: vec![HeadTail::new(4096, 4096), HeadTail::new(4096, 4096)],
        };
        let mut b = Budget::new(1000);
        push(Some(&mut b), &mut s, 0, &[1u8; 900]);
        push(Some(&mut b), &mut s, 1, &[2u8; 50]);
        assert_eq!(b.held(), 950);
        // 100 more for the small one: the big one gives way.
        push(Some(&mut b), &mut s, 1, &[3u8; 100]);
        assert_eq!(s.caps[1].held(), 150);
        assert!(!s.caps[1].limited());
        assert!(s.caps[0].limited());
        assert!(b.held() <= 1000);
        assert_eq!(b.held(), held_total(&s));
        assert_eq!(s.caps[0].len(), 900);
        assert!(s.caps[0].dropped().is_some());
    }

    #[test]
    fn new_bytes_are_dropped_when_nothing_can_shed() {
        let mut s = Store {
            caps: vec![HeadTail::new(64, 64)],
        };
        let mut b = Budget::new(0);
        push(Some(&mut b), &mut s, 0, b"hello");
        assert_eq!(s.caps[0].len(), 5);
        assert_eq!(s.caps[0].held(), 0);
        assert_eq!(s.caps[0].dropped(), Some(0..5));
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn no_budget_is_a_plain_push() {
        let mut s = Store {
            caps: vec![HeadTail::new(2, 2)],
        };
        push(None, &mut s, 0, b"abcdef");
        assert_eq!(s.caps[0].contiguous().as_ref(), b"abef");
        assert!(!s.caps[0].limited());
    }

    #[test]
    fn removed_capture_frees_its_share() {
        let mut s = Store {
            caps: vec![HeadTail::new(100, 100), HeadTail::new(100, 100)],
        };
        let mut b = Budget::new(150);
        push(Some(&mut b), &mut s, 0, &[0u8; 100]);
        b.remove(0, 100);
        push(Some(&mut b), &mut s, 1, &[0u8; 150]);
        assert_eq!(s.caps[1].held(), 150);
        assert_eq!(b.held(), 150);
    }

    proptest! {
        /// Any interleaving of pushes: the total stays under the limit, matches
        /// the captures, every capture stays a prefix + suffix of its stream, and
        /// a capture is only cut while it is among the largest.
        #[test]
        fn budget_holds_and_captures_stay_consistent(
            limit in 0u64..600,
            sizes in prop::collection::vec((0usize..300, 0usize..300), 1..5),
            pushes in prop::collection::vec((0usize..5, prop::collection::vec(any::<u8>(), 0..120)), 0..60),
        ) {
            let mut s = Store {
                caps: sizes.iter().map(|&(h, t)| HeadTail::new(h, t)).collect(),
            };
            let mut models: Vec<Vec<u8>> = vec![Vec::new(); sizes.len()];
            let mut b = Budget::new(limit);
            for (i, data) in &pushes {
                let i = i % sizes.len();
                let before: Vec<u64> = s.caps.iter().map(|c| c.held() as u64).collect();
                let growth = s.caps[i].growth(data.len()) as u64;
                push(Some(&mut b), &mut s, i, data);
                models[i].extend_from_slice(data);
                prop_assert!(b.held() <= limit);
                prop_assert_eq!(b.held(), held_total(&s));
                for (c, m) in s.caps.iter().zip(&models) {
                    check_capture(c, m);
                }
                // Largest first: a capture other than the pusher that lost
                // bytes held at least as much as any other that kept all of
                // them, and than the pusher's own footprint less what it gave.
                let after: Vec<u64> = s.caps.iter().map(|c| c.held() as u64).collect();
                for j in (0..after.len()).filter(|&j| j != i && after[j] < before[j]) {
                    for m in (0..after.len()).filter(|&m| m != i && m != j && after[m] == before[m]) {
                        prop_assert!(before[m] <= before[j],
                            "capture {} ({}) cut while {} ({}) kept all", j, before[j], m, before[m]);
                    }
                    prop_assert!(before[j] >= after[i].min(before[i] + growth),
                        "capture {} ({}) cut for {} ({} + {})", j, before[j], i, before[i], growth);
                }
            }
        }
    }
}
