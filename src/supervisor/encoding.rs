//! Encodings of fd data on read ([`crate::Agent::fd_data_as`]) and the stored
//! compressed bytes of a capture ([`crate::Agent::fd_compressed`]).

use super::types::FdData;
use base64::Engine as _;
use bytes::Bytes;
use std::ops::Range;

/// How [`crate::Agent::fd_data_as`] presents the bytes of a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadEncoding {
    /// The bytes as they are.
    Raw,
    /// Text: invalid UTF-8 sequences become U+FFFD, and the result says so.
    Utf8,
    /// Standard base64 with padding.
    Base64,
    /// base2048: 11 bits per character, for text channels that count
    /// characters rather than bytes. A range whose length is a multiple of
    /// 11 bytes encodes without a tail mark, so such ranges concatenate.
    Base2048,
    /// The bytes compressed as a zstd stream at this level (see
    /// [`crate::capture::compress::LEVELS`]).
    Zstd {
        /// The zstd level.
        level: i32,
    },
}

/// The bytes of a range in the encoding asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoded {
    /// [`ReadEncoding::Raw`].
    Raw(Bytes),
    /// [`ReadEncoding::Utf8`].
    Utf8 {
        /// The text.
        text: String,
        /// Whether any invalid byte sequence was replaced by U+FFFD.
        replaced: bool,
    },
    /// [`ReadEncoding::Base64`].
    Base64(String),
    /// [`ReadEncoding::Base2048`].
    Base2048(String),
    /// [`ReadEncoding::Zstd`]: a `.zst` stream of the range's held bytes.
    Zstd {
        /// The compressed bytes.
        data: Bytes,
        /// The level used.
        level: i32,
    },
}

/// An fd range, encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedFdData {
    /// Start of the range served (the request's start, clamped to the length).
    pub start: u64,
    /// End of the range served (exclusive), clamped to the length.
    pub stop: u64,
    /// Total bytes the stream has produced so far.
    pub length: u64,
    /// The part of the range that fell in a head/tail capture's dropped middle
    /// (not in the encoded bytes).
    pub missing: Option<Range<u64>>,
    /// Number of bytes the encoding was applied to (`stop - start` less
    /// `missing`).
    pub raw_length: u64,
    /// The bytes held for `[start, stop)`, minus `missing`, encoded.
    pub data: Encoded,
}

/// The compressed bytes of a capture as the agent holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressedFdData {
    /// `"zstd"`.
    pub algorithm: &'static str,
    /// The level the capture was compressed at.
    pub level: i32,
    /// The compressed bytes served: `[start, stop)` of the stored `.zst` stream.
    pub range: Range<u64>,
    /// Total compressed bytes stored.
    pub compressed_length: u64,
    /// Total bytes the stream produced (held or dropped).
    pub length: u64,
    /// The stream's dropped middle, for a head/tail memory capture: the `.zst`
    /// stream decompresses to the held bytes, the head then the tail, so byte
    /// `dropped.start` of the decompressed data is stream offset `dropped.stop`.
    pub dropped: Option<Range<u64>>,
    /// The compressed bytes `range`.
    pub data: Bytes,
}

/// Encodes the held bytes of `d`.
pub(crate) fn encode(d: FdData, enc: ReadEncoding) -> std::io::Result<EncodedFdData> {
    let raw_length = d.data.len() as u64;
    let data = match enc {
        ReadEncoding::Raw => Encoded::Raw(d.data),
        ReadEncoding::Utf8 => {
            // Borrowed when the bytes are valid UTF-8, owned when any were
            // replaced. Bytes on either side of a dropped middle are decoded
            // apart: they were never next to each other.
            let cut = d
                .missing
                .as_ref()
                .and_then(|m| usize::try_from(m.start.saturating_sub(d.start)).ok())
                .filter(|&c| c > 0 && c < d.data.len())
                .unwrap_or(d.data.len());
            let (a, b) = d.data.split_at(cut);
            let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
            let replaced =
                matches!(a, std::borrow::Cow::Owned(_)) || matches!(b, std::borrow::Cow::Owned(_));
            Encoded::Utf8 {
                text: a.into_owned() + &b,
                replaced,
            }
        }
        ReadEncoding::Base64 => {
            Encoded::Base64(base64::engine::general_purpose::STANDARD.encode(&d.data))
        }
        ReadEncoding::Base2048 => Encoded::Base2048(base2048::encode(&d.data)),
        ReadEncoding::Zstd { level } => {
            let (zst, _) = crate::capture::compress::compress_slices(&[&d.data], level)?;
            Encoded::Zstd {
                data: Bytes::from(zst),
                level,
            }
        }
    };
    Ok(EncodedFdData {
        start: d.start,
        stop: d.stop,
        length: d.length,
        missing: d.missing,
        raw_length,
        data,
    })
}

/// Lossy UTF-8 decoding across pieces: an incomplete character at the end of
/// a piece waits for the next.
#[derive(Default)]
pub(crate) struct Utf8Carry {
    held: Vec<u8>,
}

impl Utf8Carry {
    /// The text of `held` and `b`, but for an incomplete character at the
    /// end, which is kept for the next piece.
    pub(crate) fn push(&mut self, b: &[u8]) -> Bytes {
        let mut all = std::mem::take(&mut self.held);
        all.extend_from_slice(b);
        let keep = incomplete_tail(&all);
        self.held = all.split_off(all.len() - keep);
        Bytes::from(String::from_utf8_lossy(&all).into_owned())
    }

    /// What is left at the end (an incomplete character: U+FFFD).
    pub(crate) fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.held);
        Bytes::from(String::from_utf8_lossy(&rest).into_owned())
    }
}

/// The length of an incomplete (but so far valid) UTF-8 sequence ending `b`.
pub(crate) fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let c = b[b.len() - back];
        if c & 0xc0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let need = match c {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return 0,
        };
        // A valid prefix of a longer character may complete in the next piece.
        let prefix = need > back
            && std::str::from_utf8(&b[b.len() - back..]).is_err_and(|e| e.error_len().is_none());
        return if prefix { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lossy UTF-8 across pieces: a character split anywhere comes out whole;
    // an invalid byte or a truncated end becomes U+FFFD.
    proptest::proptest! {
        #[test]
        fn utf8_split_anywhere_decodes_as_whole(text in "\\PC{0,40}", bad in proptest::option::of(0usize..40), cuts in proptest::collection::vec(0usize..200, 0..6)) {
            let mut bytes = text.into_bytes();
            if let Some(b) = bad {
                let at = b.min(bytes.len());
                bytes.insert(at, 0xff);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut carry = Utf8Carry::default();
            let mut out = Vec::new();
            let mut last = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                out.extend_from_slice(&carry.push(&bytes[last..c]));
                last = c;
            }
            out.extend_from_slice(&carry.finish());
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8_lossy(&bytes).into_owned());
        }
    }

    #[test]
    fn a_truncated_character_at_the_end_is_replaced() {
        let mut carry = Utf8Carry::default();
        assert_eq!(&carry.push(b"ab\xe2\x82")[..], b"ab");
        assert_eq!(&carry.finish()[..], "\u{fffd}".as_bytes());
    }
}
