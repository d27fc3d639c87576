//! Checks `HeadTail` against a naive model: a `Vec<u8>` of everything pushed.
#![no_main]

use arbitrary::Arbitrary;
use chaperone::capture::headtail::HeadTail;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Push(Vec<u8>),
    Read(u16, u16),
    ReadFar(u64, u64),
}

#[derive(Debug, Arbitrary)]
struct Input {
    head: u16,
    tail: u16,
    ops: Vec<Op>,
}

/// Checks the read of `[start, stop)` against the model.
fn check_read(ht: &HeadTail, model: &[u8], start: u64, stop: u64) {
    let total = model.len();
    let mut out = vec![0x5a];
    let info = ht.read(start, stop, &mut out);
    let s = stop.min(total as u64) as usize;
    let a = (start as usize).min(s);
    assert_eq!((info.start, info.stop), (a as u64, s as u64));
    let expect_missing = ht.dropped().and_then(|d| {
        let lo = d.start.max(a as u64);
        let hi = d.end.min(s as u64);
        (lo < hi).then_some(lo..hi)
    });
    assert_eq!(info.missing, expect_missing);
    let mut want = vec![0x5a];
    match &info.missing {
        None => want.extend_from_slice(&model[a..s]),
        Some(m) => {
            want.extend_from_slice(&model[a..m.start as usize]);
            want.extend_from_slice(&model[m.end as usize..s]);
        }
    }
    assert_eq!(out, want, "read({start}, {stop})");
    assert_eq!(info.copied() as usize, out.len() - 1);
}

/// Checks counts, the dropped range and the held bytes against the model.
fn check_state(ht: &HeadTail, model: &[u8]) {
    let total = model.len();
    let (h, t) = (ht.head_limit(), ht.tail_limit());
    assert_eq!(ht.len(), total as u64);
    assert_eq!(ht.is_empty(), total == 0);
    let head_len = h.min(total);
    let tail_len = t.min(total - head_len);
    let mut held = model[..head_len].to_vec();
    held.extend_from_slice(&model[total - tail_len..]);
    assert_eq!(ht.held(), held.len());
    assert_eq!(ht.contiguous().as_ref(), &held[..]);
    assert_eq!(ht.slices().concat(), held);
    let dropped = (total > h + t).then(|| h as u64..(total - t) as u64);
    assert_eq!(ht.dropped(), dropped);
}

fuzz_target!(|input: Input| {
    let head = usize::from(input.head % 4096);
    let tail = usize::from(input.tail % 4096);
    let mut ht = HeadTail::new(head, tail);
    let mut model = Vec::new();
    let mut reads = Vec::new();
    for op in input.ops {
        match op {
            Op::Push(data) => {
                ht.push(&data);
                model.extend_from_slice(&data);
                check_state(&ht, &model);
            }
            Op::Read(start, stop) => {
                let (start, stop) = (u64::from(start), u64::from(stop));
                check_read(&ht, &model, start, stop);
                reads.push((start, stop));
            }
            Op::ReadFar(start, stop) => {
                check_read(&ht, &model, start, stop);
                reads.push((start, stop));
            }
        }
    }
    check_state(&ht, &model);

    // The frozen form must serve exactly the same data.
    let contiguous = ht.contiguous();
    let dropped = ht.dropped();
    let before: Vec<_> = reads
        .iter()
        .map(|&(a, b)| {
            let mut out = Vec::new();
            (ht.read(a, b, &mut out), out)
        })
        .collect();
    let frozen = ht.freeze();
    assert_eq!(frozen.len(), model.len() as u64);
    assert_eq!(frozen.held(), contiguous.len());
    assert_eq!(frozen.dropped(), dropped);
    assert_eq!(frozen.contiguous(), contiguous);
    for (&(a, b), (info, data)) in reads.iter().zip(before) {
        let mut out = Vec::new();
        assert_eq!(frozen.read(a, b, &mut out), info);
        assert_eq!(out, data);
    }
});
