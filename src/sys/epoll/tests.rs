//! The epoll driver against real pipes, pidfds, timers and files.

use super::*;
use std::time::Instant;

/// Turns until `n` completions have come or a second has passed: each with
/// its bytes and the tag its finish freed.
fn collect(p: &mut Poller<u32>, n: usize) -> Vec<(Cqe, Vec<u8>, Option<u32>)> {
    let mut out = Vec::new();
    let mut cqes = Vec::new();
    let start = Instant::now();
    while out.len() < n && start.elapsed() < Duration::from_secs(1) {
        p.submit_and_wait(1, Some(Duration::from_millis(100)))
            .expect("wait");
        p.reap(&mut cqes);
        for cqe in &cqes {
            let data = p.data(cqe).to_vec();
            let freed = p.finish(cqe);
            out.push((*cqe, data, freed));
        }
    }
    out
}

#[test]
fn a_pipe_read_goes_on_with_more_set_and_ends_at_end_of_file() {
    let mut p = Poller::new(1 << 16, 1 << 16).expect("epoll");
    let (r, w) = crate::sys::pipe::pipe().expect("pipe");
    p.read_multishot(Rc::new(r), 7);
    rustix::io::write(&w, b"hello ").expect("write");
    let first = collect(&mut p, 1);
    let (cqe, data, freed) = &first[0];
    assert!(cqe.more);
    assert_eq!(data, b"hello ");
    assert_eq!(*freed, None, "kept while more is set");
    rustix::io::write(&w, b"world").expect("write");
    drop(w);
    let rest = collect(&mut p, 2);
    let bytes: Vec<u8> = rest.iter().flat_map(|(_, d, _)| d.clone()).collect();
    assert_eq!(bytes, b"world");
    let (last, _, freed) = rest.last().expect("end of file");
    assert_eq!(last.result, Ok(0));
    assert!(!last.more);
    assert_eq!(*freed, Some(7));
    assert_eq!(p.in_flight(), 0);
}

#[test]
fn pipes_past_a_full_arena_are_read_on_later_turns_in_order() {
    // 200 pipes of 3000 bytes each through a 16 KiB arena: most turns fill
    // it, and what did not fit must come on the next turns, whole and in
    // order.
    let mut p = Poller::new(16 << 10, 4096).expect("epoll");
    let mut writers = Vec::new();
    for i in 0..200u32 {
        let (r, w) = crate::sys::pipe::pipe().expect("pipe");
        p.read_multishot(Rc::new(r), i);
        let msg: Vec<u8> = (0..3000u32).map(|b| ((b * 7 + i) % 251) as u8).collect();
        rustix::io::write(&w, &msg).expect("write");
        writers.push((w, msg));
    }
    let want: Vec<Vec<u8>> = writers.drain(..).map(|(_, m)| m).collect();
    let mut got = vec![Vec::new(); 200];
    let mut open = 200;
    let mut cqes = Vec::new();
    let mut turns = 0;
    let start = Instant::now();
    while open > 0 && start.elapsed() < Duration::from_secs(5) {
        p.submit_and_wait(1, Some(Duration::from_millis(100)))
            .expect("wait");
        turns += 1;
        p.reap(&mut cqes);
        let taken: usize = cqes.iter().map(|c| p.data(c).len()).sum();
        assert!(
            taken <= 16 << 10,
            "a turn read {taken} bytes, past its arena"
        );
        for cqe in &cqes {
            let i = *p.tag(cqe).expect("known op") as usize;
            got[i].extend_from_slice(p.data(cqe));
            if p.finish(cqe).is_some() {
                assert_eq!(cqe.result, Ok(0), "pipe {i}");
                open -= 1;
            }
        }
    }
    assert_eq!(open, 0, "every pipe reached end of file");
    assert!(turns > 30, "{turns} turns: the arena did not bound them");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g == w, "pipe {i}: {} bytes, not its 3000", g.len());
    }
}

#[test]
fn a_cancel_ends_an_op_once_and_spares_the_op_that_took_its_slot() {
    let mut p = Poller::new(1 << 16, 1 << 16).expect("epoll");
    let (r1, _w1) = crate::sys::pipe::pipe().expect("pipe");
    let old = p.read_multishot(Rc::new(r1), 1);
    p.cancel(old);
    p.cancel(old);
    let got = collect(&mut p, 1);
    assert_eq!(got.len(), 1, "one completion for two cancels");
    assert_eq!(got[0].0.result, Err(Errno::CANCELED));
    assert_eq!(got[0].2, Some(1));
    let (r2, w2) = crate::sys::pipe::pipe().expect("pipe");
    let new = p.read_multishot(Rc::new(r2), 2);
    assert_eq!(slot_key(old), slot_key(new), "the slot was reused");
    p.cancel(old);
    rustix::io::write(&w2, b"still here").expect("write");
    let got = collect(&mut p, 1);
    assert_eq!(got[0].1, b"still here", "{:?}", got[0].0);
}

#[test]
fn timers_fire_in_order_and_a_cancelled_one_says_so() {
    let mut p = Poller::new(4096, 4096).expect("epoll");
    let t0 = Instant::now();
    p.timeout(Duration::from_millis(120), 2);
    p.timeout(Duration::from_millis(60), 1);
    let gone = p.timeout(Duration::from_millis(30), 3);
    p.cancel(gone);
    let mut seen = Vec::new();
    let mut cqes = Vec::new();
    while seen.len() < 3 && t0.elapsed() < Duration::from_secs(5) {
        p.submit_and_wait(1, None).expect("wait");
        p.reap(&mut cqes);
        for c in &cqes {
            seen.push((p.finish(c).expect("single-shot"), c.result, t0.elapsed()));
        }
    }
    let order: Vec<_> = seen.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        order,
        [
            (3, Err(Errno::CANCELED)),
            (1, Err(Errno::TIME)),
            (2, Err(Errno::TIME))
        ]
    );
    assert!(seen[1].2 >= Duration::from_millis(60), "{:?}", seen[1].2);
    assert!(seen[2].2 >= Duration::from_millis(120), "{:?}", seen[2].2);
}

#[test]
fn a_write_lands_at_its_offset_on_a_writer_thread_and_hands_the_buffer_back() {
    let mut p = Poller::new(4096, 4096).expect("epoll");
    let file = Arc::new(crate::sys::fd::tempfile(&std::env::temp_dir()).expect("tempfile"));
    p.write(file.clone(), b"world".to_vec(), 6, 1);
    p.write(file.clone(), b"hello ".to_vec(), 0, 2);
    let mut cqes = Vec::new();
    let mut bufs = Vec::new();
    let start = Instant::now();
    while bufs.len() < 2 && start.elapsed() < Duration::from_secs(5) {
        p.submit_and_wait(1, Some(Duration::from_millis(100)))
            .expect("wait");
        p.reap(&mut cqes);
        for cqe in &cqes {
            let buf = p.take_write_buf(cqe);
            let tag = p.finish(cqe).expect("single-shot");
            bufs.push((tag, cqe.result, buf));
        }
    }
    bufs.sort_by_key(|b| b.0);
    assert_eq!(
        bufs,
        [
            (1, Ok(5), b"world".to_vec()),
            (2, Ok(6), b"hello ".to_vec())
        ]
    );
    let mut out = [0u8; 16];
    let n = crate::sys::fd::pread_full(&*file, &mut out, 0).expect("pread");
    assert_eq!(&out[..n], b"hello world");
}

#[test]
fn an_exit_wait_completes_and_leaves_the_zombie_to_reap() {
    let mut p = Poller::new(4096, 4096).expect("epoll");
    let mut child = std::process::Command::new("/bin/true")
        .spawn()
        .expect("spawn true");
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_child(&child),
        rustix::process::PidfdFlags::empty(),
    )
    .expect("pidfd_open");
    p.wait_exit(Rc::new(pidfd), 3);
    let got = collect(&mut p, 1);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.result, got[0].2), (Ok(0), Some(3)));
    assert!(child.wait().expect("reap").success());
}

#[test]
fn a_single_read_of_a_blocking_eventfd_waits_for_it_to_be_readable() {
    let mut p = Poller::new(4096, 4096).expect("epoll");
    let efd = Rc::new(eventfd(0, EventfdFlags::CLOEXEC).expect("eventfd"));
    p.read(efd.clone(), 8, 5);
    p.submit_and_wait(0, None).expect("look");
    let mut cqes = Vec::new();
    p.reap(&mut cqes);
    assert!(
        cqes.is_empty(),
        "nothing to read yet, and the read did not block"
    );
    rustix::io::write(&*efd, &3u64.to_ne_bytes()).expect("write");
    p.submit_and_wait(1, Some(Duration::from_secs(1)))
        .expect("wait");
    p.reap(&mut cqes);
    assert_eq!(cqes.len(), 1);
    assert_eq!(p.read_buf(&cqes[0]), 3u64.to_ne_bytes());
    assert_eq!(p.finish(&cqes[0]), Some(5));
}

#[test]
fn a_pipe_left_unread_by_a_full_arena_is_read_first_on_the_next_turn() {
    // An arena of one read: two full pipes, and epoll lists them in the same
    // order every turn. Each turn must read the one the last turn left,
    // or the first would take the arena every turn and the second starve.
    let mut p = Poller::new(4096, 4096).expect("epoll");
    let mut keep = Vec::new();
    for i in 0..2u32 {
        let (r, w) = crate::sys::pipe::pipe().expect("pipe");
        p.read_multishot(Rc::new(r), i);
        rustix::io::write(&w, &[b'a' + i as u8; 16384]).expect("write");
        keep.push(w);
    }
    let mut order = Vec::new();
    let mut cqes = Vec::new();
    for _ in 0..6 {
        p.submit_and_wait(1, Some(Duration::from_secs(1)))
            .expect("wait");
        p.reap(&mut cqes);
        let tags: Vec<u32> = cqes.iter().map(|c| *p.tag(c).expect("op")).collect();
        assert_eq!(tags.len(), 1, "one read fills the arena: {tags:?}");
        order.push(tags[0]);
        for c in &cqes {
            p.finish(c);
        }
    }
    assert_eq!(
        order,
        [
            order[0],
            1 - order[0],
            order[0],
            1 - order[0],
            order[0],
            1 - order[0]
        ]
    );
}

#[test]
fn a_wait_for_a_far_timer_is_cut_to_the_longest_wait_and_cancelled_timers_go() {
    let mut p = Poller::new(4096, 4096).expect("epoll");
    // 40 days: past what epoll_wait's milliseconds can say.
    let far = p.timeout(Duration::from_secs(40 * 86_400), 1);
    p.submit_and_wait(0, None).expect("a wait that fits");
    p.cancel(far);
    p.submit_and_wait(0, None).expect("look");
    let mut cqes = Vec::new();
    p.reap(&mut cqes);
    assert_eq!(cqes.len(), 1);
    assert_eq!(cqes[0].result, Err(Errno::CANCELED));
    p.finish(&cqes[0]);
    p.submit_and_wait(0, None).expect("look");
    assert!(p.timers.is_empty(), "the cancelled timer left the heap");
}
