//! Bounded head + tail capture of a byte stream.
//!
//! [`HeadTail`] keeps the first `head` bytes and the last `tail` bytes of a
//! stream, and counts every byte that went through it. When more than
//! `head + tail` bytes arrive, the bytes in between are dropped; their stream
//! offsets are reported by [`HeadTail::dropped`] so that consumers can say
//! exactly what is missing (e.g. "bytes 4096..1048576 elided").
//!
//! Memory grows with what arrives and never exceeds `head + tail` bytes of
//! buffer (plus the struct itself):
//!
//! * the head is a `Vec<u8>` grown geometrically as needed, capped at `head`;
//! * the tail is a ring buffer held in a `Vec<u8>`, grown geometrically as
//!   needed, capped at `tail`. Until it is full it is stored in order; once
//!   full, new bytes overwrite the oldest ones in place.
//!
//! [`HeadTail::push`] copies with at most a few `copy_from_slice` calls per
//! chunk, and when a chunk alone is at least `tail` bytes long only its last
//! `tail` bytes are copied, so pushing large chunks is cheap.
//!
//! Stream offsets: the head holds offsets `[0, head_len)`, the tail holds
//! `[len - tail_len, len)`, and [`HeadTail::read`] serves any stream range
//! from what is still held, reporting the part that fell in the dropped
//! middle. When capture is finished, [`HeadTail::freeze`] turns the buffers
//! into a [`Frozen`] pair of [`Bytes`] (the ring rotated into stream order in
//! place) with the same read API, cheap to clone and share.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;

/// Smallest allocation made when a buffer first grows (unless the limit is
/// smaller), to avoid many tiny reallocations for byte-sized pushes.
const MIN_ALLOC: usize = 64;

/// The result of a [`HeadTail::read`] / [`Frozen::read`] call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadInfo {
    /// Start of the range actually served (the requested start, clamped to
    /// `stop`).
    pub start: u64,
    /// End of the range actually served: the requested stop clamped to the
    /// stream length.
    pub stop: u64,
    /// The part of `[start, stop)` that fell in the dropped middle of the
    /// stream and therefore was not copied; `None` when every byte of the
    /// range was held.
    pub missing: Option<Range<u64>>,
    /// The whole dropped middle, when `missing` is set: where the held bytes
    /// resume is its end.
    pub dropped: Option<Range<u64>>,
}

impl ReadInfo {
    /// Number of bytes copied into the output buffer by the read.
    pub fn copied(&self) -> u64 {
        let missing = self.missing.as_ref().map_or(0, |m| m.end - m.start);
        self.stop - self.start - missing
    }
}

/// Keeps the first `head` and the last `tail` bytes of a byte stream and
/// counts everything pushed. See the [module documentation](self).
#[derive(Clone)]
pub struct HeadTail {
    head_limit: usize,
    tail_limit: usize,
    /// The tail limit the capture was created with (`tail_limit` is lowered
    /// by [`HeadTail::shed`]).
    tail_max: usize,
    /// First bytes of the stream, `len <= head_limit`.
    head: Vec<u8>,
    /// Ring buffer of the last bytes, `len <= tail_limit`. While
    /// `tail.len() < tail_limit` it is in stream order and `pos == 0`; once
    /// full, `pos` is the index of the oldest byte (and the next write).
    tail: Vec<u8>,
    pos: usize,
    /// Total bytes pushed.
    total: u64,
    /// Whether [`HeadTail::shed`] has ever taken bytes (an agent-wide limit).
    limited: bool,
}

impl HeadTail {
    /// Creates an empty capture keeping at most `head` leading and `tail`
    /// trailing bytes. Nothing is allocated until data arrives. Either limit
    /// may be zero; with both zero, bytes are only counted.
    pub fn new(head: usize, tail: usize) -> Self {
        HeadTail {
            head_limit: head,
            tail_limit: tail,
            tail_max: tail,
            head: Vec::new(),
            tail: Vec::new(),
            pos: 0,
            total: 0,
            limited: false,
        }
    }

    /// Appends `data` to the stream.
    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;

        // Fill the head first.
        let room = self.head_limit - self.head.len();
        if room > 0 {
            let n = room.min(data.len());
            reserve_capped(&mut self.head, n, self.head_limit);
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.is_empty() || self.tail_limit == 0 {
            return;
        }

        let limit = self.tail_limit;
        if data.len() >= limit {
            // The chunk alone replaces the whole tail: copy its last `limit`
            // bytes only.
            let last = &data[data.len() - limit..];
            if self.tail.len() == limit {
                self.tail.copy_from_slice(last);
            } else {
                self.tail.clear();
                reserve_capped(&mut self.tail, limit, limit);
                self.tail.extend_from_slice(last);
            }
            self.pos = 0;
            return;
        }

        // Not yet full: append in order.
        let room = limit - self.tail.len();
        if room > 0 {
            let n = room.min(data.len());
            reserve_capped(&mut self.tail, n, limit);
            self.tail.extend_from_slice(&data[..n]);
            data = &data[n..];
            if data.is_empty() {
                return;
            }
        }

        // Full ring, data.len() < limit: overwrite the oldest bytes, in at
        // most two segments.
        let first = data.len().min(limit - self.pos);
        self.tail[self.pos..self.pos + first].copy_from_slice(&data[..first]);
        let rest = data.len() - first;
        self.tail[..rest].copy_from_slice(&data[first..]);
        self.pos += data.len();
        if self.pos >= limit {
            self.pos -= limit;
        }
    }

    /// Total number of bytes pushed so far (held or dropped).
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Number of bytes currently held (head plus tail).
    pub fn held(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Stream offsets dropped between the head and the tail, or `None` when
    /// every byte pushed is still held.
    pub fn dropped(&self) -> Option<Range<u64>> {
        dropped_range(self.head.len(), self.tail.len(), self.total)
    }

    /// The maximum number of leading bytes kept.
    pub fn head_limit(&self) -> usize {
        self.head_limit
    }

    /// The maximum number of trailing bytes kept.
    pub fn tail_limit(&self) -> usize {
        self.tail_limit
    }

    /// The held bytes in stream order as up to three slices: the head, then
    /// the tail's two ring segments. Any of them may be empty. Handy for
    /// vectored writes without copying.
    pub fn slices(&self) -> [&[u8]; 3] {
        let (t0, t1) = self.tail_segments();
        [&self.head, t0, t1]
    }

    /// Copies the held bytes of the stream range `[start, min(stop, len))`
    /// into `out` (appending), and describes what was served. Bytes that fell
    /// in the dropped middle are skipped and reported in
    /// [`ReadInfo::missing`]. An empty or inverted range, or one starting
    /// past the end, copies nothing.
    pub fn read(&self, start: u64, stop: u64, out: &mut Vec<u8>) -> ReadInfo {
        read_parts(
            &self.head,
            self.tail_segments(),
            self.total,
            start,
            stop,
            out,
        )
    }

    /// The held bytes (head followed by tail) in stream order, in one new
    /// allocation.
    pub fn contiguous(&self) -> Bytes {
        let (t0, t1) = self.tail_segments();
        let mut v = Vec::with_capacity(self.held());
        v.extend_from_slice(&self.head);
        v.extend_from_slice(t0);
        v.extend_from_slice(t1);
        Bytes::from(v)
    }

    /// How many bytes [`HeadTail::held`] would grow by if `n` more bytes were
    /// pushed now: the head fills first, then the tail up to its limit.
    pub fn growth(&self, n: usize) -> usize {
        let room = (self.head_limit - self.head.len()) + (self.tail_limit - self.tail.len());
        room.min(n)
    }

    /// Whether [`HeadTail::shed`] has taken bytes from this capture.
    pub fn limited(&self) -> bool {
        self.limited
    }

    /// Gives up `k` bytes of the capture's footprint, which is what it would
    /// hold after `pending` more bytes are pushed (`held() + growth(pending)`),
    /// for an agent-wide memory limit. Returns the reduction (`k`, or the whole
    /// footprint if smaller).
    ///
    /// The bytes go from the middle of the stream: from the larger of head and
    /// tail first (the head's newest bytes, or the tail's oldest), then evenly
    /// from both, so the dropped range stays one contiguous range that only
    /// grows. The limits are lowered to the new sizes, so that pushing the
    /// `pending` bytes next stays within the footprint (a full tail then
    /// overwrites its oldest bytes in place); see [`HeadTail::reopen_tail`].
    /// Removed bytes are freed at once (the buffers shrink).
    pub fn shed(&mut self, k: usize, pending: usize) -> usize {
        let to_head = (self.head_limit - self.head.len()).min(pending);
        let to_tail = (self.tail_limit - self.tail.len()).min(pending - to_head);
        let hf = self.head.len() + to_head;
        let tf = self.tail.len() + to_tail;
        let k = k.min(hf + tf);
        if k == 0 {
            return 0;
        }
        self.limited = true;
        let (h, t) = split_shed(hf, tf, k);

        self.head_limit = h;
        if h < self.head.len() {
            self.head.truncate(h);
        }
        if self.head.capacity() > h {
            self.head.shrink_to(h);
        }

        self.tail_limit = t;
        if t < self.tail.len() {
            // Into stream order, then drop the oldest bytes.
            if self.pos != 0 {
                self.tail.rotate_left(self.pos);
                self.pos = 0;
            }
            let cut = self.tail.len() - t;
            self.tail.drain(..cut);
        }
        if self.tail.capacity() > t {
            self.tail.shrink_to(t);
        }
        k
    }

    /// After a [`HeadTail::shed`] and the push it made room for: lets the tail
    /// grow again (up to the limit it was created with) while it is shorter
    /// than the head and still in stream order, so that later output can win
    /// room from the head (through further sheds) until the two are balanced.
    /// Growth is still reported by [`HeadTail::growth`], so a memory budget
    /// sees it before it happens.
    pub fn reopen_tail(&mut self) {
        if self.pos == 0
            && self.tail.len() == self.tail_limit
            && self.tail.len() < self.head.len()
            && self.head.len() == self.head_limit
        {
            self.tail_limit = self.tail_max;
        }
    }

    /// Finishes capture: the tail is appended, in stream order, to the head's
    /// buffer (grown in place where the allocator can), which becomes the
    /// frozen capture's one buffer.
    pub fn freeze(self) -> Frozen {
        let (newer, older) = self.tail.split_at(self.pos);
        let head_len = self.head.len();
        let mut buf = self.head;
        buf.reserve_exact(older.len() + newer.len());
        buf.extend_from_slice(older);
        buf.extend_from_slice(newer);
        Frozen {
            held: Bytes::from(buf),
            head_len,
            total: self.total,
            limited: self.limited,
        }
    }

    /// A frozen copy of the capture so far (it goes on): one copy of the held
    /// bytes, for a live result.
    pub fn snapshot(&self) -> Frozen {
        Frozen {
            held: self.contiguous(),
            head_len: self.head.len(),
            total: self.total,
            limited: self.limited,
        }
    }

    /// The tail ring as (older, newer) segments in stream order.
    fn tail_segments(&self) -> (&[u8], &[u8]) {
        let (a, b) = self.tail.split_at(self.pos);
        (b, a)
    }
}

impl Default for HeadTail {
    /// A capture keeping nothing (both limits zero); it only counts.
    fn default() -> Self {
        HeadTail::new(0, 0)
    }
}

impl fmt::Debug for HeadTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadTail")
            .field("head_limit", &self.head_limit)
            .field("tail_limit", &self.tail_limit)
            .field("head_len", &self.head.len())
            .field("tail_len", &self.tail.len())
            .field("len", &self.total)
            .field("dropped", &self.dropped())
            .field("limited", &self.limited)
            .finish()
    }
}

/// An immutable, cheaply clonable snapshot of a finished [`HeadTail`]: the held
/// bytes (head then in-order tail) as one [`Bytes`], so a result's bytes are a
/// reference, not a copy, plus the total stream length.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Frozen {
    /// Head followed by tail.
    held: Bytes,
    head_len: usize,
    total: u64,
    limited: bool,
}

impl Frozen {
    /// Total number of bytes that were pushed (held or dropped).
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Number of bytes held (head plus tail).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Stream offsets dropped between the head and the tail, or `None` when
    /// every byte is held.
    pub fn dropped(&self) -> Option<Range<u64>> {
        dropped_range(self.head_len, self.held.len() - self.head_len, self.total)
    }

    /// The leading bytes of the stream (offsets `[0, head.len())`).
    pub fn head(&self) -> &[u8] {
        self.held.get(..self.head_len).unwrap_or_default()
    }

    /// The trailing bytes of the stream in order (offsets
    /// `[len - tail.len(), len)`).
    pub fn tail(&self) -> &[u8] {
        self.held.get(self.head_len..).unwrap_or_default()
    }

    /// Same as [`HeadTail::read`].
    pub fn read(&self, start: u64, stop: u64, out: &mut Vec<u8>) -> ReadInfo {
        read_parts(
            self.head(),
            (self.tail(), &[]),
            self.total,
            start,
            stop,
            out,
        )
    }

    /// Whether bytes were shed for an agent-wide memory limit.
    pub fn limited(&self) -> bool {
        self.limited
    }

    /// Same as [`HeadTail::shed`] with nothing pending: drops `k` held bytes
    /// from the middle. A buffer not shared with a reader is shrunk in place
    /// (the gap closed, the allocation shrunk); a shared one is replaced by a
    /// copy of the part kept (the old one is freed when its last reader lets go).
    pub fn shed(&mut self, k: usize) -> usize {
        let k = k.min(self.held());
        if k == 0 {
            return 0;
        }
        self.limited = true;
        let (head_len, tail_len) = (self.head_len, self.held() - self.head_len);
        let (h, t) = split_shed(head_len, tail_len, k);
        let cut = tail_len - t;
        let held = std::mem::take(&mut self.held);
        let v = if held.is_unique() {
            let mut v = Vec::from(held);
            v.copy_within(head_len + cut.., h);
            v.truncate(h + t);
            v.shrink_to(h + t);
            v
        } else {
            let mut v = Vec::with_capacity(h + t);
            v.extend_from_slice(held.get(..h).unwrap_or_default());
            v.extend_from_slice(held.get(head_len + cut..).unwrap_or_default());
            v
        };
        self.held = Bytes::from(v);
        self.head_len = h;
        k
    }

    /// The held bytes (head followed by tail) in stream order: a reference.
    pub fn contiguous(&self) -> Bytes {
        self.held.clone()
    }
}

impl fmt::Debug for Frozen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frozen")
            .field("head_len", &self.head_len)
            .field("tail_len", &(self.held() - self.head_len))
            .field("len", &self.total)
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// Reserves room for `additional` more bytes, growing geometrically but
/// never past `limit` total capacity. Callers guarantee
/// `v.len() + additional <= limit`.
fn reserve_capped(v: &mut Vec<u8>, additional: usize, limit: usize) {
    let needed = v.len() + additional;
    debug_assert!(needed <= limit);
    if needed <= v.capacity() {
        return;
    }
    let target = needed
        .max(v.capacity().saturating_mul(2))
        .max(MIN_ALLOC)
        .min(limit);
    v.reserve_exact(target - v.len());
}

/// Splits a footprint of `hf` head and `tf` tail bytes, less `k` (at most
/// `hf + tf`), into new (head, tail) sizes: the larger side gives first, then
/// both evenly (an odd byte stays in the tail).
fn split_shed(hf: usize, tf: usize, k: usize) -> (usize, usize) {
    let diff = hf.abs_diff(tf);
    if k <= diff {
        return if hf > tf { (hf - k, tf) } else { (hf, tf - k) };
    }
    let keep = hf + tf - k;
    let h = keep / 2;
    (h, keep - h)
}

fn dropped_range(head_len: usize, tail_len: usize, total: u64) -> Option<Range<u64>> {
    let lo = head_len as u64;
    let hi = total - tail_len as u64;
    (lo < hi).then_some(lo..hi)
}

/// The range logic shared by [`HeadTail::read`] and [`Frozen::read`]: the
/// head covers `[0, head.len())`, the two tail segments together cover
/// `[total - tail_len, total)`.
fn read_parts(
    head: &[u8],
    (t0, t1): (&[u8], &[u8]),
    total: u64,
    start: u64,
    stop: u64,
    out: &mut Vec<u8>,
) -> ReadInfo {
    let stop = stop.min(total);
    let start = start.min(stop);
    let head_end = head.len() as u64;
    let tail_len = t0.len() + t1.len();
    let tail_start = total - tail_len as u64;

    // Head part: [start, min(stop, head_end)).
    if start < head_end {
        let end = stop.min(head_end);
        out.extend_from_slice(&head[start as usize..end as usize]);
    }

    // Dropped part: [head_end, tail_start) intersected with the request.
    let gap_lo = start.max(head_end);
    let gap_hi = stop.min(tail_start);
    let missing = (gap_lo < gap_hi).then_some(gap_lo..gap_hi);
    let dropped = missing.as_ref().map(|_| head_end..tail_start);

    // Tail part: [max(start, tail_start), stop), as offsets into the tail.
    let from = start.max(tail_start);
    if from < stop {
        let lo = (from - tail_start) as usize;
        let hi = (stop - tail_start) as usize;
        if lo < t0.len() {
            out.extend_from_slice(&t0[lo..hi.min(t0.len())]);
        }
        if hi > t0.len() {
            out.extend_from_slice(&t1[lo.saturating_sub(t0.len())..hi - t0.len()]);
        }
    }

    ReadInfo {
        start,
        stop,
        missing,
        dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn held_of(ht: &HeadTail) -> Vec<u8> {
        ht.contiguous().to_vec()
    }

    fn seq(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn empty_capture_holds_nothing() {
        let ht = HeadTail::new(4, 4);
        assert!(ht.is_empty());
        assert_eq!(ht.len(), 0);
        assert_eq!(ht.held(), 0);
        assert_eq!(ht.dropped(), None);
        assert!(ht.contiguous().is_empty());
        let mut out = Vec::new();
        let info = ht.read(0, 10, &mut out);
        assert_eq!(
            info,
            ReadInfo {
                start: 0,
                stop: 0,
                missing: None,
                dropped: None
            }
        );
        assert!(out.is_empty());
    }

    #[test]
    fn push_keeps_everything_while_within_limits() {
        let mut ht = HeadTail::new(4, 4);
        ht.push(b"abc");
        ht.push(b"defgh");
        assert_eq!(ht.len(), 8);
        assert_eq!(ht.dropped(), None);
        assert_eq!(held_of(&ht), b"abcdefgh");
    }

    #[test]
    fn push_keeps_head_and_tail_when_overflowing() {
        let mut ht = HeadTail::new(3, 4);
        for chunk in [&b"ab"[..], b"cdef", b"g", b"hijkl", b"mn"] {
            ht.push(chunk);
        }
        assert_eq!(ht.len(), 14);
        assert_eq!(held_of(&ht), b"abcklmn");
        assert_eq!(ht.dropped(), Some(3..10));
    }

    #[test]
    fn chunk_spanning_head_boundary_is_split() {
        let mut ht = HeadTail::new(4, 100);
        ht.push(b"0123456789");
        assert_eq!(ht.head, b"0123");
        assert_eq!(ht.tail, b"456789");
        assert_eq!(ht.dropped(), None);
    }

    #[test]
    fn chunk_larger_than_tail_copies_only_its_end() {
        let mut ht = HeadTail::new(2, 5);
        ht.push(b"xy");
        ht.push(b"abc");
        ht.push(b"0123456789");
        assert_eq!(held_of(&ht), b"xy56789");
        assert_eq!(ht.pos, 0);
        assert_eq!(ht.dropped(), Some(2..10));
        ht.push(b"ABCDEFGHIJKL");
        assert_eq!(held_of(&ht), b"xyHIJKL");
        assert_eq!(ht.dropped(), Some(2..22));
    }

    #[test]
    fn ring_wraps_across_the_end() {
        let mut ht = HeadTail::new(0, 5);
        ht.push(b"abcde");
        ht.push(b"fg");
        ht.push(b"hijk");
        assert_eq!(held_of(&ht), b"ghijk");
        assert_eq!(ht.slices(), [&b""[..], b"ghij", b"k"]);
        let mut out = Vec::new();
        let info = ht.read(7, 10, &mut out);
        assert_eq!(out, b"hij");
        assert_eq!(info.missing, None);
    }

    #[test]
    fn zero_head_keeps_only_tail() {
        let mut ht = HeadTail::new(0, 3);
        ht.push(b"hello");
        assert_eq!(held_of(&ht), b"llo");
        assert_eq!(ht.dropped(), Some(0..2));
    }

    #[test]
    fn zero_tail_keeps_only_head() {
        let mut ht = HeadTail::new(3, 0);
        ht.push(b"hello");
        ht.push(b"world");
        assert_eq!(held_of(&ht), b"hel");
        assert_eq!(ht.dropped(), Some(3..10));
        assert_eq!(ht.tail.capacity(), 0);
    }

    #[test]
    fn zero_limits_only_count() {
        let mut ht = HeadTail::default();
        ht.push(b"hello");
        ht.push(&[]);
        assert_eq!(ht.len(), 5);
        assert_eq!(ht.held(), 0);
        assert_eq!(ht.dropped(), Some(0..5));
        let mut out = Vec::new();
        let info = ht.read(1, 3, &mut out);
        assert!(out.is_empty());
        assert_eq!(info.missing, Some(1..3));
        assert_eq!(info.copied(), 0);
        let frozen = ht.freeze();
        assert_eq!(frozen.len(), 5);
        assert_eq!(frozen.dropped(), Some(0..5));
    }

    #[test]
    fn read_reports_missing_middle() {
        let mut ht = HeadTail::new(3, 3);
        ht.push(b"0123456789");
        let mut out = Vec::new();
        let info = ht.read(1, 9, &mut out);
        assert_eq!(out, b"1278");
        assert_eq!(
            info,
            ReadInfo {
                start: 1,
                stop: 9,
                missing: Some(3..7),
                dropped: Some(3..7)
            }
        );
        assert_eq!(info.copied(), 4);
    }

    #[test]
    fn read_clamps_odd_ranges() {
        let mut ht = HeadTail::new(3, 3);
        ht.push(b"0123456789");
        let mut out = Vec::new();
        let info = ht.read(8, 100, &mut out);
        assert_eq!((info.start, info.stop), (8, 10));
        assert_eq!(out, b"89");
        out.clear();
        let info = ht.read(50, 100, &mut out);
        assert_eq!((info.start, info.stop, info.missing), (10, 10, None));
        assert!(out.is_empty());
        let info = ht.read(6, 2, &mut out);
        assert_eq!((info.start, info.stop, info.missing), (2, 2, None));
        assert!(out.is_empty());
        let info = ht.read(u64::MAX, u64::MAX, &mut out);
        assert_eq!(info.stop, 10);
        assert!(out.is_empty());
    }

    #[test]
    fn buffers_grow_gradually_and_never_past_limits() {
        let mut ht = HeadTail::new(1000, 1 << 20);
        ht.push(b"x");
        assert!(ht.head.capacity() <= 1000);
        assert!(ht.tail.capacity() == 0);
        ht.push(&[0u8; 1000]);
        assert_eq!(ht.head.capacity(), 1000);
        assert!(ht.tail.capacity() < 4096, "{}", ht.tail.capacity());
        for _ in 0..100 {
            ht.push(&[1u8; 30_000]);
            assert!(ht.tail.capacity() <= 1 << 20);
        }
        assert_eq!(ht.tail.capacity(), 1 << 20);
        assert_eq!(ht.head.capacity(), 1000);
    }

    #[test]
    fn big_chunks_through_big_tail() {
        const MIB: usize = 1 << 20;
        let mut ht = HeadTail::new(4096, MIB);
        let chunk: Vec<u8> = seq(MIB + 17);
        for _ in 0..8 {
            ht.push(&chunk);
        }
        assert_eq!(ht.len(), 8 * (MIB as u64 + 17));
        assert_eq!(ht.held(), 4096 + MIB);
        assert_eq!(ht.tail.capacity(), MIB);
        let held = held_of(&ht);
        assert_eq!(&held[..4096], &chunk[..4096]);
        assert_eq!(&held[4096..], &chunk[chunk.len() - MIB..]);
    }

    #[test]
    fn freeze_rotates_tail_into_order() {
        let mut ht = HeadTail::new(2, 4);
        ht.push(b"ab");
        ht.push(b"cdef");
        ht.push(b"gh");
        assert_ne!(ht.pos, 0);
        let expect = held_of(&ht);
        let frozen = ht.freeze();
        assert_eq!(frozen.head(), b"ab");
        assert_eq!(frozen.tail(), b"efgh");
        assert_eq!(frozen.contiguous().as_ref(), &expect[..]);
        assert_eq!(frozen.dropped(), Some(2..4));
        assert_eq!(frozen.len(), 8);
        assert_eq!(frozen.held(), 6);
        let mut out = Vec::new();
        let info = frozen.read(1, 7, &mut out);
        assert_eq!(out, b"befg");
        assert_eq!(info.missing, Some(2..4));
    }

    #[test]
    fn frozen_contiguous_shares_single_part() {
        let mut ht = HeadTail::new(8, 0);
        ht.push(b"hello");
        let frozen = ht.freeze();
        let c = frozen.contiguous();
        assert_eq!(c.as_ptr(), frozen.head().as_ptr());
    }

    /// Checks `ht` against the naive model of everything pushed.
    fn check_model(ht: &HeadTail, model: &[u8], reads: &[(u64, u64)]) {
        let total = model.len();
        let (h, t) = (ht.head_limit(), ht.tail_limit());
        assert_eq!(ht.len(), total as u64);
        assert_eq!(ht.is_empty(), total == 0);
        let head_len = h.min(total);
        let tail_len = t.min(total - head_len);
        let mut expect = model[..head_len].to_vec();
        expect.extend_from_slice(&model[total - tail_len..]);
        assert_eq!(held_of(ht), expect);
        assert_eq!(ht.held(), expect.len());
        if total > h + t {
            assert_eq!(ht.dropped(), Some(h as u64..(total - t) as u64));
        } else {
            assert_eq!(ht.dropped(), None);
        }
        assert!(ht.head.capacity() <= h);
        assert!(ht.tail.capacity() <= t);
        for &(start, stop) in reads {
            let mut out = vec![0xAA];
            let info = ht.read(start, stop, &mut out);
            let s = (stop as usize).min(total);
            let a = (start as usize).min(s);
            assert_eq!((info.start, info.stop), (a as u64, s as u64));
            let mut want = vec![0xAA];
            match &info.missing {
                None => want.extend_from_slice(&model[a..s]),
                Some(m) => {
                    assert!(a as u64 <= m.start && m.start < m.end && m.end <= s as u64);
                    let d = ht.dropped().unwrap();
                    assert!(d.start <= m.start && m.end <= d.end);
                    want.extend_from_slice(&model[a..m.start as usize]);
                    want.extend_from_slice(&model[m.end as usize..s]);
                }
            }
            if let Some(d) = ht.dropped() {
                let lo = d.start.max(a as u64);
                let hi = d.end.min(s as u64);
                assert_eq!(info.missing, (lo < hi).then_some(lo..hi));
            }
            assert_eq!(out, want, "read({start}, {stop})");
            assert_eq!(info.copied() as usize, out.len() - 1);
        }
    }

    /// Head a prefix, tail a suffix, the dropped range between: what must hold
    /// after any sheds.
    fn check_prefix_suffix(ht: &HeadTail, model: &[u8]) {
        let total = model.len();
        let [head, t0, t1] = ht.slices();
        let tail = [t0, t1].concat();
        assert_eq!(ht.len(), total as u64);
        assert_eq!(head, &model[..head.len()]);
        assert_eq!(&tail[..], &model[total - tail.len()..]);
        let (lo, hi) = (head.len() as u64, (total - tail.len()) as u64);
        assert_eq!(ht.dropped(), (lo < hi).then_some(lo..hi));
        assert!(ht.head.capacity() <= ht.head_limit().max(head.len()));
        assert!(ht.tail.capacity() <= ht.tail_max);
    }

    #[test]
    fn shed_takes_the_larger_side_first_and_frees_it() {
        let mut ht = HeadTail::new(100, 100);
        ht.push(&seq(150));
        // head 100, tail 50: the head gives its newest bytes.
        assert_eq!(ht.shed(30, 0), 30);
        assert_eq!(ht.slices()[0].len(), 70);
        assert_eq!(ht.head.capacity(), 70);
        assert_eq!(ht.dropped(), Some(70..100));
        // 70 / 50: 20 from the head, then 5 from each.
        assert_eq!(ht.shed(30, 0), 30);
        assert_eq!((ht.head.len(), ht.tail.len()), (45, 45));
        assert_eq!(ht.tail.capacity(), 45);
        assert_eq!(ht.dropped(), Some(45..105));
        assert!(ht.limited());
        // The lowered limits hold: more output overwrites the tail in place.
        ht.push(&seq(20));
        assert_eq!(ht.held(), 90);
        let mut model = seq(150);
        model.extend_from_slice(&seq(20));
        check_prefix_suffix(&ht, &model);
        let f = ht.freeze();
        assert!(f.limited());
        assert_eq!(f.dropped(), Some(45..125));
    }

    #[test]
    fn shed_with_pending_makes_the_push_fit() {
        let mut ht = HeadTail::new(1000, 1000);
        ht.push(&seq(100));
        let footprint = ht.held() + ht.growth(60);
        assert_eq!(ht.shed(60, 60), 60);
        ht.push(&seq(60));
        assert_eq!(ht.held(), footprint - 60);
        ht.reopen_tail();
        let mut model = seq(100);
        model.extend_from_slice(&seq(60));
        check_prefix_suffix(&ht, &model);
    }

    #[test]
    fn frozen_shed_copies_when_shared_and_keeps_readers_whole() {
        let mut ht = HeadTail::new(10, 10);
        ht.push(b"0123456789abcdefghij");
        let mut f = ht.freeze();
        let reader = f.clone();
        assert_eq!(f.shed(4), 4);
        assert_eq!(f.contiguous().as_ref(), b"01234567cdefghij");
        assert_eq!(f.dropped(), Some(8..12));
        assert!(f.limited());
        // The reader's snapshot is untouched.
        assert_eq!(reader.contiguous().as_ref(), b"0123456789abcdefghij");
        assert_eq!(reader.dropped(), None);
        // Unshared now: shed in place.
        let ptr = f.head().as_ptr();
        drop(reader);
        assert_eq!(f.shed(2), 2);
        assert_eq!(f.contiguous().as_ref(), b"0123456defghij");
        assert_eq!(f.head().as_ptr(), ptr);
    }

    proptest! {
        #[test]
        fn shed_keeps_prefix_suffix_and_exact_footprint(
            head in 0usize..60,
            tail in 0usize..60,
            ops in prop::collection::vec((0u8..3, 0usize..80, prop::collection::vec(any::<u8>(), 0..90)), 0..30),
        ) {
            let mut ht = HeadTail::new(head, tail);
            let mut model = Vec::new();
            for (op, k, data) in &ops {
                match op {
                    0 => {
                        let (held, growth) = (ht.held(), ht.growth(data.len()));
                        ht.push(data);
                        model.extend_from_slice(data);
                        prop_assert_eq!(ht.held(), held + growth);
                    }
                    1 => {
                        let held = ht.held();
                        prop_assert_eq!(ht.shed(*k, 0), (*k).min(held));
                        prop_assert_eq!(ht.held(), held - (*k).min(held));
                    }
                    _ => {
                        let fp = ht.held() + ht.growth(data.len());
                        let done = ht.shed(*k, data.len());
                        prop_assert_eq!(done, (*k).min(fp));
                        ht.push(data);
                        model.extend_from_slice(data);
                        prop_assert_eq!(ht.held(), fp - done);
                        ht.reopen_tail();
                    }
                }
                check_prefix_suffix(&ht, &model);
            }
        }
    }

    proptest! {
        #[test]
        fn matches_naive_model(
            head in 0usize..40,
            tail in 0usize..40,
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 0..20),
            reads in prop::collection::vec((0u64..400, 0u64..400), 0..8),
        ) {
            let mut ht = HeadTail::new(head, tail);
            let mut model = Vec::new();
            for chunk in &chunks {
                ht.push(chunk);
                model.extend_from_slice(chunk);
                check_model(&ht, &model, &reads);
            }
            let expect = ht.contiguous();
            let dropped = ht.dropped();
            let frozen = ht.freeze();
            prop_assert_eq!(frozen.contiguous(), expect);
            prop_assert_eq!(frozen.dropped(), dropped);
            prop_assert_eq!(frozen.len(), model.len() as u64);
            for &(start, stop) in &reads {
                let mut a = Vec::new();
                let mut b = Vec::new();
                let mut ht2 = HeadTail::new(head, tail);
                ht2.push(&model);
                let ia = frozen.read(start, stop, &mut a);
                let ib = ht2.read(start, stop, &mut b);
                prop_assert_eq!(ia, ib);
                prop_assert_eq!(a, b);
            }
        }
    }
}
