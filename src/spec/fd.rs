//! [`FdSpec`]: what to do with one of the child's fds (inherit, close, open a
//! file, dup, capture, pipe), with the capture's mode, encoding and limits and
//! the open flags of `null` and `file`.

use serde::de;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ProcId;

/// The largest `head + tail` a capture may ask for, in bytes: the most a single Rust
/// allocation may hold.
pub const MAX_CAPTURE_WINDOW: u64 = isize::MAX as u64;

/// The `capture.compress` values the agent knows.
pub const COMPRESS_ALGORITHMS: &[&str] = &[crate::capture::compress::ALGORITHM];

/// The `capture.compress_level` values accepted.
pub const COMPRESS_LEVELS: std::ops::RangeInclusive<i64> = (*crate::capture::compress::LEVELS
    .start() as i64)
    ..=(*crate::capture::compress::LEVELS.end() as i64);

/// The `capture.compress_level` used when a spec gives none.
pub const DEFAULT_COMPRESS_LEVEL: i64 = crate::capture::compress::DEFAULT_LEVEL as i64;

/// The default `mode` of a `file` fd spec: `0o666`, before the umask.
pub const DEFAULT_FILE_MODE: u32 = 0o666;

/// What to do with one of the child's fds. Externally tagged, lower-case names, as in
/// the contract's fd_spec table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum FdSpec {
    /// Leave the fd as the agent has it: `"inherit"` or `{"inherit": null}`.
    Inherit,
    /// Close the fd in the child: `"close"`. Only meaningful for fds 0–2; no other
    /// agent fd reaches a child, so closing an fd ≥ 3 is a no-op (docs/spec.md).
    Close,
    /// Open `/dev/null` onto the fd: `{"null": {"flags": F}}`. The bare string
    /// `"null"` is rejected.
    Null {
        /// How to open `/dev/null`.
        #[serde(default)]
        flags: OpenFlag,
    },
    /// Open a file in the child onto the fd:
    /// `{"file": {"path": P, "flags": F, "mode": M}}`.
    File {
        /// The path to open.
        path: String,
        /// How to open it.
        #[serde(default)]
        flags: OpenFlag,
        /// The permission bits for a created file, before the umask; JSON writes
        /// `0o644` as 420.
        #[serde(default = "default_file_mode")]
        mode: u32,
    },
    /// `dup2(fd, this fd)` in the child, using the child's fd table at that point of
    /// the list: `{"dup": {"fd": N}}`.
    Dup {
        /// The fd to duplicate.
        fd: i32,
    },
    /// Capture what the child writes to the fd:
    /// `{"capture": {"mode": …, "encoding": …, "attached": …}}`.
    Capture {
        /// Where the agent keeps the data.
        #[serde(default)]
        mode: CaptureMode,
        /// How the result presents the data.
        #[serde(default)]
        encoding: Encoding,
        /// Whether the result carries the data inline (`true`) or only its length.
        #[serde(default = "default_attached")]
        attached: bool,
        /// chaperone extension: keep this many bytes from the start of the stream.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head: Option<u64>,
        /// chaperone extension: keep this many bytes from the end of the stream.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail: Option<u64>,
        /// chaperone extension: compress the capture when the process finishes;
        /// only `"zstd"` is known (checked by [`validate`](super::validate)).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compress: Option<String>,
        /// chaperone extension: the zstd level, in [`COMPRESS_LEVELS`] (default
        /// [`DEFAULT_COMPRESS_LEVEL`]); only with `compress`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compress_level: Option<i64>,
        /// chaperone extension, mode `file`: the file to keep the stream in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// chaperone extension, mode `file`: a directory the agent names the file in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dir: Option<String>,
        /// chaperone extension, mode `file`: also keep the head/tail memory capture.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        memory: bool,
    },
    /// The write end of a pipe to a `pipe-read` of another proc in the same request:
    /// `"pipe-write"`.
    PipeWrite,
    /// The read end of the pipe from proc `proc_id`'s fd `fd`, which must be a
    /// `pipe-write` in the same request: `{"pipe-read": {"proc_id": ID, "fd": NAME}}`.
    PipeRead {
        /// The writing proc.
        proc_id: ProcId,
        /// The writing proc's fd name.
        fd: String,
    },
}

fn default_file_mode() -> u32 {
    DEFAULT_FILE_MODE
}

fn default_attached() -> bool {
    true
}

/// Where a capture keeps its data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// An unlinked temporary file (`"tempfile"`, the default).
    #[default]
    Tempfile,
    /// A pipe read into agent memory (`"memory"`).
    Memory,
    /// chaperone extension: a named file the agent writes from a pipe and keeps
    /// after the process is deleted (`"file"`, with `path` or `dir`).
    File,
}

/// How a capture's bytes are presented in results.
///
/// In JSON: `null` (the default) is base64 and `"utf-8"` is lossy UTF-8 text. As a
/// chaperone extension, `"base64"` is accepted too; it is always written as `null`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    /// Raw bytes, base64-encoded (`null`).
    #[default]
    Base64,
    /// Lossy UTF-8 text; invalid bytes become U+FFFD (`"utf-8"`).
    Utf8,
}

impl Serialize for Encoding {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Base64 => serializer.serialize_none(),
            Self::Utf8 => serializer.serialize_str("utf-8"),
        }
    }
}

impl<'de> Deserialize<'de> for Encoding {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const VARIANTS: &[&str] = &["utf-8", "base64"];
        match Option::<String>::deserialize(deserializer)?.as_deref() {
            None | Some("base64") => Ok(Self::Base64),
            Some("utf-8") => Ok(Self::Utf8),
            Some(other) => Err(de::Error::unknown_variant(other, VARIANTS)),
        }
    }
}

/// How `null` and `file` fd specs open their file. PascalCase in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpenFlag {
    /// `Read` for fd 0, `Write` for fds 1 and 2, `ReadWrite` otherwise.
    #[default]
    Default,
    /// Open an existing file for reading.
    Read,
    /// Create or truncate a file for writing.
    Write,
    /// Create a new file for writing; it must not exist.
    Create,
    /// Truncate an existing file for writing; it must exist.
    Replace,
    /// Append to an existing file.
    Append,
    /// Create a file or append to an existing one.
    CreateAppend,
    /// Create or truncate a file for reading and writing.
    ReadWrite,
}

impl OpenFlag {
    /// The open(2) flags for opening onto child fd `fd`, per the contract's table.
    /// The caller adds `O_CLOEXEC` or whatever else it needs.
    pub fn oflags(self, fd: i32) -> i32 {
        use libc::{O_APPEND, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY};
        match self {
            Self::Default => match fd {
                0 => O_RDONLY,
                1 | 2 => O_WRONLY | O_CREAT | O_TRUNC,
                _ => O_RDWR | O_CREAT | O_TRUNC,
            },
            Self::Read => O_RDONLY,
            Self::Write => O_WRONLY | O_CREAT | O_TRUNC,
            Self::Create => O_WRONLY | O_CREAT | O_TRUNC | O_EXCL,
            Self::Replace => O_WRONLY | O_TRUNC,
            Self::Append => O_WRONLY | O_APPEND,
            Self::CreateAppend => O_WRONLY | O_CREAT | O_APPEND,
            Self::ReadWrite => O_RDWR | O_CREAT | O_TRUNC,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flag_oflags_follow_contract_table() {
        use libc::{O_APPEND, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY};
        assert_eq!(OpenFlag::Default.oflags(0), O_RDONLY);
        assert_eq!(OpenFlag::Default.oflags(1), O_WRONLY | O_CREAT | O_TRUNC);
        assert_eq!(OpenFlag::Default.oflags(2), O_WRONLY | O_CREAT | O_TRUNC);
        assert_eq!(OpenFlag::Default.oflags(7), O_RDWR | O_CREAT | O_TRUNC);
        assert_eq!(OpenFlag::Read.oflags(1), O_RDONLY);
        assert_eq!(OpenFlag::Write.oflags(0), O_WRONLY | O_CREAT | O_TRUNC);
        assert_eq!(
            OpenFlag::Create.oflags(1),
            O_WRONLY | O_CREAT | O_TRUNC | O_EXCL
        );
        assert_eq!(OpenFlag::Replace.oflags(1), O_WRONLY | O_TRUNC);
        assert_eq!(OpenFlag::Append.oflags(1), O_WRONLY | O_APPEND);
        assert_eq!(
            OpenFlag::CreateAppend.oflags(1),
            O_WRONLY | O_CREAT | O_APPEND
        );
        assert_eq!(OpenFlag::ReadWrite.oflags(0), O_RDWR | O_CREAT | O_TRUNC);
    }
}
