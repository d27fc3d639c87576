//! Checks `HeadTail` against a naive model: a `Vec<u8>` of everything pushed.
//! `Shed` ops (an `--output-limit` taking bytes from the middle) switch the
//! exact head/tail-size check to the invariants that must still hold: the head
//! is a prefix, the tail a suffix, the dropped range is what lies between, and
//! the footprint shrinks by exactly what was shed.
#![no_main]

use arbitrary::Arbitrary;
use chaperone::capture::headtail::HeadTail;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Push(Vec<u8>),
    Read(u16, u16),
    ReadFar(u64, u64),
    /// Shed bytes with nothing pending, as a victim of the limit.
    Shed(u16),
    /// Shed bytes with a push pending, then push it, as a growing capture.
    ShedThenPush(u16, Vec<u8>),
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

/// Checks what must hold after any sheds: head a prefix, tail a suffix, the
/// dropped range between them.
fn check_shed_state(ht: &HeadTail, model: &[u8]) {
    let total = model.len();
    assert_eq!(ht.len(), total as u64);
    let [head, t0, t1] = ht.slices();
    let tail = [t0, t1].concat();
    assert!(head.len() + tail.len() <= total);
    assert_eq!(head, &model[..head.len()]);
    assert_eq!(&tail[..], &model[total - tail.len()..]);
    assert_eq!(ht.held(), head.len() + tail.len());
    let (lo, hi) = (head.len() as u64, (total - tail.len()) as u64);
    assert_eq!(ht.dropped(), (lo < hi).then_some(lo..hi));
    assert!(head.len() <= ht.head_limit() && tail.len() <= ht.tail_limit());
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
    let mut shed = false;
    let check = |ht: &HeadTail, model: &[u8], shed: bool| {
        if shed {
            check_shed_state(ht, model)
        } else {
            check_state(ht, model)
        }
    };
    for op in input.ops {
        match op {
            Op::Push(data) => {
                let held = ht.held();
                let growth = ht.growth(data.len());
                ht.push(&data);
                model.extend_from_slice(&data);
                assert_eq!(ht.held(), held + growth);
                check(&ht, &model, shed);
            }
            Op::Shed(k) => {
                let held = ht.held();
                let k = usize::from(k);
                let done = ht.shed(k, 0);
                assert_eq!(done, k.min(held));
                assert_eq!(ht.held(), held - done);
                shed |= done > 0;
                assert_eq!(ht.limited(), shed);
                check(&ht, &model, shed);
            }
            Op::ShedThenPush(k, data) => {
                let footprint = ht.held() + ht.growth(data.len());
                let k = usize::from(k);
                let done = ht.shed(k, data.len());
                assert_eq!(done, k.min(footprint));
                assert_eq!(ht.held() + ht.growth(data.len()), footprint - done);
                ht.push(&data);
                model.extend_from_slice(&data);
                assert_eq!(ht.held(), footprint - done);
                shed |= done > 0;
                if shed {
                    ht.reopen_tail();
                }
                check(&ht, &model, shed);
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
    check(&ht, &model, shed);

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
    let mut frozen = ht.freeze();
    assert_eq!(frozen.limited(), shed);
    assert_eq!(frozen.len(), model.len() as u64);
    assert_eq!(frozen.held(), contiguous.len());
    assert_eq!(frozen.dropped(), dropped);
    assert_eq!(frozen.contiguous(), contiguous);
    for (&(a, b), (info, data)) in reads.iter().zip(before) {
        let mut out = Vec::new();
        assert_eq!(frozen.read(a, b, &mut out), info);
        assert_eq!(out, data);
    }

    // Shedding a finished capture keeps it a prefix + suffix of the stream.
    let held = frozen.held();
    let k = held / 3 + 1;
    let done = frozen.shed(k);
    assert_eq!(done, k.min(held));
    assert_eq!(frozen.held(), held - done);
    let (h, t) = (frozen.head().len(), frozen.tail().len());
    assert_eq!(frozen.head(), &model[..h]);
    assert_eq!(frozen.tail(), &model[model.len() - t..]);
    let (lo, hi) = (h as u64, (model.len() - t) as u64);
    assert_eq!(frozen.dropped(), (lo < hi).then_some(lo..hi));
});
