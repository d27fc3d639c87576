//! zstd compression of finished captures, and ranged reads of what it made.
//!
//! Compressed data is a sequence of independent zstd frames, each holding at most
//! [`FRAME_SIZE`] bytes of input and its content size. Concatenated frames are a
//! valid `.zst` stream (`zstd -d` decodes them to the original bytes), and a
//! [`FrameIndex`] (decompressed offset → compressed offset of every frame) lets a
//! ranged read decompress only the frames that hold the range instead of the whole
//! stream. At level 1 the frame boundaries cost well under 1% of ratio: the match
//! window (512 KiB) is far smaller than a frame.
//!
//! Entry points:
//!
//! * [`compress_file`] / [`compress_path`]: a whole file into another, streaming
//!   through one frame-sized buffer (a kept capture file on completion);
//! * [`compress_slices`]: bytes in memory (a finished memory capture, or a read
//!   range asked for as zstd);
//! * [`PackedHeadTail`]: a finished head/tail capture held compressed, with the
//!   stream offsets it needs to serve ranged reads and say what is missing;
//! * [`read_range`]: bytes `[start, stop)` of the decompressed stream, from
//!   compressed bytes in memory or in a file, with or without an index.
//!
//! Safe code only: the file I/O goes through `rustix`'s safe wrappers.

use std::io;
use std::ops::{Range, RangeInclusive};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use rustix::io::Errno;

use super::headtail::{Frozen, ReadInfo};

/// The algorithm name results report.
pub const ALGORITHM: &str = "zstd";

/// The level used when a spec gives none.
pub const DEFAULT_LEVEL: i32 = 1;

/// Levels a spec may ask for. Level 0 (zstd's "default", 3) and the negative
/// "fast" levels are left out to keep one meaning per number; 20–22 need
/// windows far larger than a frame.
pub const LEVELS: RangeInclusive<i32> = 1..=19;

/// Input bytes per zstd frame: the unit a ranged read decompresses.
pub const FRAME_SIZE: usize = 4 << 20;

/// Where each frame of a compressed stream starts, in both streams.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameIndex {
    /// `(decompressed offset, compressed offset)` of each frame, ascending.
    starts: Vec<(u64, u64)>,
    raw_len: u64,
    zst_len: u64,
}

impl FrameIndex {
    /// Decompressed length of the whole stream.
    pub fn raw_len(&self) -> u64 {
        self.raw_len
    }

    /// Compressed length of the whole stream.
    pub fn compressed_len(&self) -> u64 {
        self.zst_len
    }

    /// Number of frames.
    pub fn frames(&self) -> usize {
        self.starts.len()
    }

    fn push(&mut self, raw: u64, zst: u64) {
        self.starts.push((self.raw_len, self.zst_len));
        self.raw_len += raw;
        self.zst_len += zst;
    }

    /// Frame `i` as (decompressed range, compressed range).
    fn frame(&self, i: usize) -> Option<(Range<u64>, Range<u64>)> {
        let &(raw, zst) = self.starts.get(i)?;
        let (raw_end, zst_end) = self
            .starts
            .get(i + 1)
            .copied()
            .unwrap_or((self.raw_len, self.zst_len));
        Some((raw..raw_end, zst..zst_end))
    }

    /// The frame holding decompressed offset `off` (`off < raw_len`).
    fn locate(&self, off: u64) -> usize {
        self.starts
            .partition_point(|&(raw, _)| raw <= off)
            .saturating_sub(1)
    }

    /// Builds the index of compressed bytes by walking their frame headers. Fails
    /// on a frame that does not record its content size (as the `zstd` command's
    /// streamed output may not) or on bytes that are not zstd frames.
    pub fn scan(zst: &[u8]) -> io::Result<FrameIndex> {
        let mut index = FrameIndex::default();
        let mut rest = zst;
        while !rest.is_empty() {
            let size = zstd::zstd_safe::find_frame_compressed_size(rest).map_err(zstd_error)?;
            let raw = match zstd::zstd_safe::get_frame_content_size(rest) {
                Ok(Some(n)) => n,
                _ => return Err(invalid("zstd frame without a content size")),
            };
            index.push(raw, size as u64);
            rest = rest.get(size..).unwrap_or_default();
        }
        Ok(index)
    }
}

/// What a compression produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Input bytes read.
    pub raw_len: u64,
    /// Compressed bytes written.
    pub compressed_len: u64,
    /// Where each frame starts; serves [`read_range`] without decompressing
    /// the frames before the range.
    pub index: FrameIndex,
}

/// Checks a level against [`LEVELS`].
pub fn check_level(level: i32) -> io::Result<()> {
    if LEVELS.contains(&level) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "zstd level {level} out of range {}..={}",
                LEVELS.start(),
                LEVELS.end()
            ),
        ))
    }
}

fn zstd_error(code: usize) -> io::Error {
    invalid(zstd::zstd_safe::get_error_name(code))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// One reusable compression context and its output buffer.
struct FrameWriter<'a> {
    cctx: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
    cancel: Option<&'a AtomicBool>,
}

/// The error a compression stopped by its cancel flag fails with
/// ([`io::ErrorKind::Interrupted`]).
pub fn cancelled() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "compression cancelled")
}

impl<'a> FrameWriter<'a> {
    fn new(level: i32, cancel: Option<&'a AtomicBool>) -> io::Result<FrameWriter<'a>> {
        check_level(level)?;
        Ok(FrameWriter {
            cctx: zstd::bulk::Compressor::new(level)?,
            // Grown by `frame` to what its input needs (a small read must not
            // cost a whole frame's bound).
            out: Vec::new(),
            cancel,
        })
    }

    /// Compresses `chunk` into one frame, hands it to `sink` and indexes it.
    /// Fails with [`cancelled`] instead once the cancel flag is set, so a long
    /// compression stops within one frame's time.
    fn emit(
        &mut self,
        chunk: &[u8],
        index: &mut FrameIndex,
        sink: &mut impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Acquire)) {
            return Err(cancelled());
        }
        let frame = self.frame(chunk)?;
        sink(frame)?;
        index.push(chunk.len() as u64, frame.len() as u64);
        Ok(())
    }

    /// Ends a stream: one empty frame if there is none yet, so that the output
    /// is a valid `.zst` of nothing.
    fn finish(
        &mut self,
        index: &mut FrameIndex,
        sink: &mut impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if index.frames() == 0 {
            self.emit(&[], index, sink)?;
        }
        Ok(())
    }

    /// Compresses `input` (at most [`FRAME_SIZE`] bytes) into one frame, left in
    /// `self.out`.
    fn frame(&mut self, input: &[u8]) -> io::Result<&[u8]> {
        self.out.clear();
        let bound = zstd::zstd_safe::compress_bound(input.len());
        if self.out.capacity() < bound {
            self.out.reserve(bound);
        }
        self.cctx.compress_to_buffer(input, &mut self.out)?;
        Ok(&self.out)
    }
}

/// Reads from `fd` at `offset` until `buf` is full or end of file.
fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    crate::sys::fd::pread_full(fd, buf, offset).map_err(io::Error::from)
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = data.get(n..).unwrap_or_default(),
            Err(Errno::INTR) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    Ok(())
}

/// Compresses all of `src` (read from offset 0 to end of file, whatever its
/// file offset) and writes the frames to `dst` at its current offset. Reads
/// [`FRAME_SIZE`] bytes at a time; memory used is about twice that plus the
/// zstd context.
///
/// An empty `src` gives one empty frame. Fails on an I/O error, a level
/// outside [`LEVELS`], or with [`cancelled`] once `cancel` is set (checked
/// before every frame); `dst` then holds a partial stream.
pub fn compress_file(
    src: impl AsFd,
    dst: impl AsFd,
    level: i32,
    cancel: Option<&AtomicBool>,
) -> io::Result<Stats> {
    let (src, dst) = (src.as_fd(), dst.as_fd());
    let mut writer = FrameWriter::new(level, cancel)?;
    let mut buf = vec![0u8; FRAME_SIZE];
    let mut index = FrameIndex::default();
    let mut sink = |frame: &[u8]| write_all(dst, frame);
    loop {
        let n = pread_full(src, &mut buf, index.raw_len())?;
        if n == 0 {
            break;
        }
        writer.emit(buf.get(..n).unwrap_or_default(), &mut index, &mut sink)?;
        if n < FRAME_SIZE {
            break;
        }
    }
    writer.finish(&mut index, &mut sink)?;
    Ok(Stats {
        raw_len: index.raw_len(),
        compressed_len: index.compressed_len(),
        index,
    })
}

/// [`compress_file`] from the file at `src` into a new file at `dst` (created
/// or truncated, mode 0o644 before the umask).
pub fn compress_path(src: &Path, dst: &Path, level: i32) -> io::Result<Stats> {
    let src = std::fs::File::open(src)?;
    let dst = std::fs::File::create(dst)?;
    compress_file(&src, &dst, level, None)
}

/// Compresses the concatenation of `parts` into frames of at most
/// [`FRAME_SIZE`] bytes (no frame spans two parts). Empty input gives one
/// empty frame.
pub fn compress_slices(parts: &[&[u8]], level: i32) -> io::Result<(Vec<u8>, FrameIndex)> {
    compress_framed(parts, level, FRAME_SIZE, None)
}

/// [`compress_slices`] with frames of at most `frame_size` bytes, stopped
/// (with [`cancelled`]) once `cancel` is set.
fn compress_framed(
    parts: &[&[u8]],
    level: i32,
    frame_size: usize,
    cancel: Option<&AtomicBool>,
) -> io::Result<(Vec<u8>, FrameIndex)> {
    let mut writer = FrameWriter::new(level, cancel)?;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    // Log-like text at level 1 shrinks several times; grow from a quarter.
    let mut out = Vec::with_capacity(total / 4 + 64);
    let mut index = FrameIndex::default();
    let mut sink = |frame: &[u8]| {
        out.extend_from_slice(frame);
        Ok(())
    };
    for part in parts {
        for chunk in part.chunks(frame_size.max(1)) {
            writer.emit(chunk, &mut index, &mut sink)?;
        }
    }
    writer.finish(&mut index, &mut sink)?;
    Ok((out, index))
}

/// Compressed bytes to read from: in memory, or a file read with `pread`.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// A file, read from offset 0 (its file offset is not used).
    Fd(BorrowedFd<'a>),
}

impl Source<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self {
            Source::Bytes(b) => {
                let from = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let have = b.get(from..).unwrap_or_default();
                let n = have.len().min(buf.len());
                if let (Some(dst), Some(src)) = (buf.get_mut(..n), have.get(..n)) {
                    dst.copy_from_slice(src);
                }
                Ok(n)
            }
            Source::Fd(fd) => pread_full(*fd, buf, offset),
        }
    }
}

/// A sequential reader over a [`Source`], for streaming decompression.
struct SourceReader<'a> {
    src: Source<'a>,
    pos: u64,
}

impl io::Read for SourceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// What [`read_range`] served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRead {
    /// Start of the bytes appended (the request's start, clamped).
    pub start: u64,
    /// End of the bytes appended (exclusive).
    pub stop: u64,
    /// The decompressed length of the whole stream, when known: always with an
    /// index, and without one when the read reached the end of the stream.
    pub len: Option<u64>,
}

/// Appends bytes `[start, stop)` of the decompressed stream of `src` to `out`,
/// clamped to the stream's length (a range past the end, or with `stop <=
/// start`, appends nothing).
///
/// With `index` only the frames overlapping the range are read and
/// decompressed. Without one the stream is decompressed from its start,
/// discarding bytes before `start`; any valid zstd data works then (frames
/// without content sizes, as streamed by the `zstd` command, too).
pub fn read_range(
    src: Source<'_>,
    index: Option<&FrameIndex>,
    start: u64,
    stop: u64,
    out: &mut Vec<u8>,
) -> io::Result<RangeRead> {
    match index {
        Some(index) => read_indexed(src, index, start, stop, out),
        None => read_streaming(src, start, stop, out),
    }
}

fn read_indexed(
    src: Source<'_>,
    index: &FrameIndex,
    start: u64,
    stop: u64,
    out: &mut Vec<u8>,
) -> io::Result<RangeRead> {
    let len = index.raw_len();
    let stop = stop.min(len);
    let start = start.min(stop);
    let served = RangeRead {
        start,
        stop,
        len: Some(len),
    };
    if start == stop {
        return Ok(served);
    }
    let mut dctx = zstd::bulk::Decompressor::new()?;
    let mut zbuf = Vec::new();
    let mut raw = Vec::new();
    out.reserve(usize::try_from(stop - start).unwrap_or(0));
    let mut i = index.locate(start);
    while let Some((raw_range, zst_range)) = index.frame(i) {
        if raw_range.start >= stop {
            break;
        }
        let zlen = usize::try_from(zst_range.end - zst_range.start)
            .map_err(|_| invalid("frame too large"))?;
        let rlen = usize::try_from(raw_range.end - raw_range.start)
            .map_err(|_| invalid("frame too large"))?;
        zbuf.resize(zlen, 0);
        if src.read_at(&mut zbuf, zst_range.start)? != zlen {
            return Err(invalid("compressed data shorter than its index"));
        }
        raw.clear();
        raw.reserve(rlen);
        let n = dctx.decompress_to_buffer(&zbuf, &mut raw)?;
        if n != rlen {
            return Err(invalid("frame size differs from its index"));
        }
        let lo = usize::try_from(start.saturating_sub(raw_range.start)).unwrap_or(0);
        let hi = usize::try_from(stop.min(raw_range.end) - raw_range.start).unwrap_or(0);
        out.extend_from_slice(raw.get(lo..hi).unwrap_or_default());
        i += 1;
    }
    Ok(served)
}

fn read_streaming(
    src: Source<'_>,
    start: u64,
    stop: u64,
    out: &mut Vec<u8>,
) -> io::Result<RangeRead> {
    use std::io::Read;
    let mut dec = zstd::stream::read::Decoder::new(SourceReader { src, pos: 0 })?;
    let mut pos = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    let first = out.len();
    loop {
        let n = match dec.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            // End of stream: `pos` is its length.
            let stop = stop.min(pos);
            let start = start.min(stop);
            return Ok(RangeRead {
                start,
                stop,
                len: Some(pos),
            });
        }
        let chunk = pos..pos + n as u64;
        let lo = start.max(chunk.start).min(chunk.end);
        let hi = stop.min(chunk.end).max(lo);
        if lo < hi {
            let a = usize::try_from(lo - chunk.start).unwrap_or(0);
            let b = usize::try_from(hi - chunk.start).unwrap_or(0);
            out.extend_from_slice(buf.get(a..b).unwrap_or_default());
        }
        pos = chunk.end;
        if pos >= stop && stop > start {
            let served = (out.len() - first) as u64;
            return Ok(RangeRead {
                start,
                stop: start + served,
                len: None,
            });
        }
    }
}

/// A finished head/tail capture held compressed: the held bytes (head then tail)
/// as zstd frames, plus the stream offsets they stand for.
#[derive(Clone, Debug)]
pub struct PackedHeadTail {
    zst: Bytes,
    index: FrameIndex,
    head_len: u64,
    tail_len: u64,
    total: u64,
    level: i32,
}

impl PackedHeadTail {
    /// Compresses the held bytes of `frozen`; fails with [`cancelled`] once
    /// `cancel` is set (checked before every frame).
    pub fn pack(
        frozen: &Frozen,
        level: i32,
        cancel: Option<&AtomicBool>,
    ) -> io::Result<PackedHeadTail> {
        let (zst, index) =
            compress_framed(&[frozen.head(), frozen.tail()], level, FRAME_SIZE, cancel)?;
        Ok(PackedHeadTail {
            zst: Bytes::from(zst),
            index,
            head_len: frozen.head().len() as u64,
            tail_len: frozen.tail().len() as u64,
            total: frozen.len(),
            level,
        })
    }

    /// Total bytes the stream produced (held or dropped).
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether the stream was empty.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Bytes held before compression (head plus tail).
    pub fn held(&self) -> u64 {
        self.head_len + self.tail_len
    }

    /// The compression level used.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Stream offsets dropped between head and tail, as [`Frozen::dropped`].
    pub fn dropped(&self) -> Option<Range<u64>> {
        let hi = self.total - self.tail_len;
        (self.head_len < hi).then_some(self.head_len..hi)
    }

    /// The compressed bytes as stored: a `.zst` stream that decompresses to the
    /// held bytes (head then tail; the stream's dropped middle is not in it).
    pub fn compressed(&self) -> &Bytes {
        &self.zst
    }

    /// The frame index of [`Self::compressed`].
    pub fn index(&self) -> &FrameIndex {
        &self.index
    }

    /// Same as [`Frozen::read`], decompressing the frames the range needs.
    pub fn read(&self, start: u64, stop: u64, out: &mut Vec<u8>) -> io::Result<ReadInfo> {
        let stop = stop.min(self.total);
        let start = start.min(stop);
        let tail_start = self.total - self.tail_len;
        // Held offsets: the head part maps to itself, the tail part follows the
        // head. The two parts are adjacent in held space whenever both exist.
        let held_lo = if start < self.head_len {
            start
        } else {
            self.head_len + start.max(tail_start) - tail_start
        };
        let held_hi = if stop <= self.head_len {
            stop
        } else {
            self.head_len + stop.max(tail_start) - tail_start
        };
        if held_lo < held_hi {
            read_range(
                Source::Bytes(&self.zst),
                Some(&self.index),
                held_lo,
                held_hi,
                out,
            )?;
        }
        let gap_lo = start.max(self.head_len);
        let gap_hi = stop.min(tail_start);
        let missing = (gap_lo < gap_hi).then_some(gap_lo..gap_hi);
        Ok(ReadInfo {
            start,
            stop,
            dropped: missing.as_ref().map(|_| self.head_len..tail_start),
            missing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::headtail::HeadTail;
    use proptest::prelude::*;
    use std::io::{Seek, Write};

    /// Deterministic log-like lines.
    fn log_text(n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 100);
        let mut i = 0u64;
        while out.len() < n {
            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            out.extend_from_slice(
                format!(
                    "2026-01-01T00:00:{:02} INFO worker-{} request {x} done\n",
                    i % 60,
                    i % 7
                )
                .as_bytes(),
            );
            i += 1;
        }
        out.truncate(n);
        out
    }

    fn decode_all(zst: &[u8]) -> Vec<u8> {
        zstd::stream::decode_all(zst).unwrap()
    }

    #[test]
    fn compress_file_round_trips_and_indexes_frames() {
        let data = log_text(FRAME_SIZE * 2 + 12345);
        let mut src = tempfile::tempfile().unwrap();
        src.write_all(&data).unwrap();
        // The source's file offset is at its end: compress_file reads from 0.
        let mut dst = tempfile::tempfile().unwrap();
        let stats = compress_file(&src, &dst, 1, None).unwrap();
        assert_eq!(stats.raw_len, data.len() as u64);
        assert_eq!(stats.index.frames(), 3);
        assert_eq!(stats.index.raw_len(), data.len() as u64);
        let len = dst.stream_position().unwrap();
        assert_eq!(stats.compressed_len, len);
        assert!(len < data.len() as u64 / 3, "log text compresses: {len}");
        let zst = std::fs::read(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            dst.as_raw_fd()
        }))
        .unwrap();
        assert_eq!(decode_all(&zst), data);
        assert_eq!(FrameIndex::scan(&zst).unwrap(), stats.index);
        // Ranged reads from the file straddling a frame boundary.
        let mut out = Vec::new();
        let (a, b) = (FRAME_SIZE as u64 - 10, FRAME_SIZE as u64 * 2 + 7);
        let r = read_range(Source::Fd(dst.as_fd()), Some(&stats.index), a, b, &mut out).unwrap();
        assert_eq!((r.start, r.stop, r.len), (a, b, Some(data.len() as u64)));
        assert_eq!(out, &data[a as usize..b as usize]);
    }

    #[test]
    fn compress_stops_at_a_frame_boundary_once_cancelled() {
        let data = log_text(FRAME_SIZE + 1);
        let mut src = tempfile::tempfile().unwrap();
        src.write_all(&data).unwrap();
        let mut dst = tempfile::tempfile().unwrap();
        let cancel = AtomicBool::new(true);
        let err = compress_file(&src, &dst, 1, Some(&cancel)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        assert_eq!(dst.stream_position().unwrap(), 0, "no frame written");
        let mut ht = HeadTail::new(1000, 1000);
        ht.push(&data);
        let err = PackedHeadTail::pack(&ht.freeze(), 1, Some(&cancel)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        // Unset, the same calls go through.
        cancel.store(false, Ordering::Release);
        let stats = compress_file(&src, &dst, 1, Some(&cancel)).unwrap();
        assert_eq!(stats.raw_len, data.len() as u64);
    }

    #[test]
    fn compress_file_of_empty_file_is_empty() {
        let src = tempfile::tempfile().unwrap();
        let dst = tempfile::tempfile().unwrap();
        let stats = compress_file(&src, &dst, 1, None).unwrap();
        assert_eq!(stats.raw_len, 0);
        assert!(stats.compressed_len > 0, "one empty frame");
        let mut out = Vec::new();
        let r = read_range(Source::Fd(dst.as_fd()), Some(&stats.index), 0, 10, &mut out).unwrap();
        assert_eq!((r.start, r.stop, out.len()), (0, 0, 0));
        let r = read_range(Source::Fd(dst.as_fd()), None, 0, 10, &mut out).unwrap();
        assert_eq!((r.start, r.stop, r.len, out.len()), (0, 0, Some(0), 0));
        let (zst, index) = compress_slices(&[], 1).unwrap();
        assert_eq!((index.raw_len(), index.frames()), (0, 1));
        assert!(decode_all(&zst).is_empty());
    }

    #[test]
    fn compress_path_output_decodes_with_zstd_command() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("log"), dir.path().join("log.zst"));
        let data = log_text(300_000);
        std::fs::write(&src, &data).unwrap();
        let stats = compress_path(&src, &dst, 3).unwrap();
        assert_eq!(stats.raw_len, data.len() as u64);
        let out = match std::process::Command::new("zstd")
            .args(["-d", "-c", "-q"])
            .arg(&dst)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                crate::test_skip("capture::compress zstd command", &e.to_string(), false);
                return;
            }
        };
        assert!(out.status.success());
        assert_eq!(out.stdout, data);
    }

    #[test]
    fn levels_outside_range_are_rejected() {
        for level in [0, -1, 20, i32::MAX] {
            let e = compress_slices(&[b"x"], level).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{level}");
        }
        assert!(compress_slices(&[b"x"], 19).is_ok());
    }

    #[test]
    fn streaming_read_handles_zstd_command_style_frames() {
        // A streamed frame (no content size) can't be indexed but reads fine.
        let data = log_text(100_000);
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        enc.write_all(&data).unwrap();
        let zst = enc.finish().unwrap();
        assert!(FrameIndex::scan(&zst).is_err());
        let mut out = Vec::new();
        let r = read_range(Source::Bytes(&zst), None, 500, 70_000, &mut out).unwrap();
        assert_eq!((r.start, r.stop, r.len), (500, 70_000, None));
        assert_eq!(out, &data[500..70_000]);
        out.clear();
        let r = read_range(Source::Bytes(&zst), None, 99_990, 200_000, &mut out).unwrap();
        assert_eq!((r.start, r.stop, r.len), (99_990, 100_000, Some(100_000)));
        assert_eq!(out, &data[99_990..]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        assert!(read_range(Source::Bytes(b"not zstd at all"), None, 0, 5, &mut out).is_err());
        assert!(FrameIndex::scan(b"not zstd at all").is_err());
        // An index that claims more than the bytes hold.
        let (zst, index) = compress_slices(&[&log_text(1000)], 1).unwrap();
        let cut = &zst[..zst.len() / 2];
        assert!(read_range(Source::Bytes(cut), Some(&index), 0, 1000, &mut out).is_err());
    }

    #[test]
    fn packed_head_tail_maps_stream_offsets() {
        let data = log_text(100);
        let mut ht = HeadTail::new(10, 20);
        ht.push(&data);
        let frozen = ht.freeze();
        let packed = PackedHeadTail::pack(&frozen, 1, None).unwrap();
        assert_eq!(packed.len(), 100);
        assert_eq!(packed.held(), 30);
        assert_eq!(packed.dropped(), Some(10..80));
        assert_eq!(
            decode_all(packed.compressed()),
            [&data[..10], &data[80..]].concat()
        );
        for (a, b) in [
            (0, 5),
            (5, 50),
            (50, 60),
            (70, 90),
            (0, 100),
            (95, 200),
            (300, 400),
            (60, 10),
        ] {
            let (mut want, mut got) = (Vec::new(), Vec::new());
            let wi = frozen.read(a, b, &mut want);
            let gi = packed.read(a, b, &mut got).unwrap();
            assert_eq!(wi, gi, "{a}..{b}");
            assert_eq!(want, got, "{a}..{b}");
        }
    }

    proptest! {
        #[test]
        fn read_range_matches_vec_model(
            len in 0usize..20_000,
            parts in 1usize..4,
            start in 0u64..25_000,
            span in 0u64..25_000,
            indexed in any::<bool>(),
            frame in 1usize..5_000,
        ) {
            let data = log_text(len);
            let cut = len / parts;
            let pieces: Vec<&[u8]> = if parts == 1 { vec![&data] } else { vec![&data[..cut], &data[cut..]] };
            let (zst, index) = compress_framed(&pieces, 1, frame, None).unwrap();
            prop_assert_eq!(index.raw_len(), len as u64);
            prop_assert_eq!(FrameIndex::scan(&zst).unwrap(), index.clone());
            let mut out = Vec::new();
            let stop = start.saturating_add(span);
            let r = read_range(Source::Bytes(&zst), indexed.then_some(&index), start, stop, &mut out).unwrap();
            let lo = (start as usize).min(len);
            let hi = (stop as usize).min(len).max(lo);
            prop_assert_eq!(&out[..], &data[lo..hi]);
            prop_assert_eq!((r.start, r.stop), (lo as u64, hi as u64));
        }

        #[test]
        fn packed_read_matches_frozen(
            len in 0usize..3_000,
            head in 0usize..1_000,
            tail in 0usize..1_000,
            start in 0u64..3_500,
            stop in 0u64..3_500,
        ) {
            let data = log_text(len);
            let mut ht = HeadTail::new(head, tail);
            for chunk in data.chunks(333) {
                ht.push(chunk);
            }
            let frozen = ht.freeze();
            let packed = PackedHeadTail::pack(&frozen, 1, None).unwrap();
            prop_assert_eq!(packed.dropped(), frozen.dropped());
            let (mut want, mut got) = (Vec::new(), Vec::new());
            let wi = frozen.read(start, stop, &mut want);
            let gi = packed.read(start, stop, &mut got).unwrap();
            prop_assert_eq!(wi, gi);
            prop_assert_eq!(want, got);
        }
    }
}
