//! Validation ([`validate`], [`validate_with_existing`]): what the types alone
//! cannot express, checked across a whole request (fd names and duplicates,
//! captures, compression, pipes matched by fd number, strings without NUL).

use std::collections::{HashMap, HashSet};

use super::names::bad_fd_name;
use super::{
    COMPRESS_ALGORITHMS, COMPRESS_LEVELS, CaptureMode, FdSpec, Input, MAX_CAPTURE_WINDOW, ProcSpec,
    SpecError, parse_fd_name,
};

/// Checks what the types cannot: see [`validate_with_existing`], with no existing procs.
pub fn validate(input: &Input) -> Result<(), SpecError> {
    validate_with_existing(input, |_| false)
}

/// Checks a parsed request against the contract, given which proc ids the agent
/// already has (`existing(id)` is true for those). Returns the first problem found,
/// in input order:
///
/// * a proc id that already exists, or is empty;
/// * an empty `argv`;
/// * a NUL byte in `exe`, `argv`, an `env.vars` name or value, or a file path;
/// * an `env.vars` name that is empty or contains `=`;
/// * an unknown event name in `perf`;
/// * a bad fd name (also in a `pipe-read`'s `fd`);
/// * an fd listed twice in one proc, including aliases (`"1"` and `"stdout"`);
/// * a capture whose `head + tail` exceeds [`MAX_CAPTURE_WINDOW`];
/// * a `pipe-read` that names no `pipe-write` of this request, or a second
///   `pipe-read` of the same `pipe-write`;
/// * a `pipe-write` that no `pipe-read` of this request reads.
///
/// Pipe ends are compared by fd number, so `"1"` matches `"stdout"`.
pub fn validate_with_existing(
    input: &Input,
    existing: impl Fn(&str) -> bool,
) -> Result<(), SpecError> {
    // Write ends in input order, and whether a pipe-read has claimed each one.
    let mut writes: Vec<(&str, i32)> = Vec::new();
    let mut write_index: HashMap<(&str, i32), usize> = HashMap::new();

    for (proc_id, spec) in input.specs.iter() {
        if existing(proc_id) {
            return Err(SpecError::DuplicateProcId {
                proc_id: proc_id.clone(),
            });
        }
        if proc_id.is_empty() {
            return Err(SpecError::EmptyProcId);
        }
        validate_strings(proc_id, spec)?;
        if let Some(name) = spec.perf.as_ref().and_then(|p| p.unknown_event()) {
            return Err(SpecError::BadPerfEvent {
                proc_id: proc_id.clone(),
                name: name.to_owned(),
            });
        }

        let mut seen = HashSet::new();
        for (name, fd_spec) in &spec.fds {
            let fd = parse_fd_name(name).map_err(|_| bad_fd_name(proc_id, name))?;
            if !seen.insert(fd) {
                return Err(SpecError::DuplicateFd {
                    proc_id: proc_id.clone(),
                    fd,
                });
            }
            match fd_spec {
                FdSpec::File { path, .. } if path.contains('\0') => {
                    return Err(SpecError::Nul {
                        proc_id: proc_id.clone(),
                        field: format!("fds.{name}.file.path"),
                    });
                }
                // Only permission bits: not the file type, which open ignores,
                // and setuid/setgid/sticky are 0o7000, allowed as open allows.
                FdSpec::File { mode, .. } if *mode > 0o7777 => {
                    return Err(SpecError::BadField {
                        proc_id: proc_id.clone(),
                        field: format!("fds.{name}.file.mode"),
                        msg: format!("{mode:#o} is not a file mode (at most 0o7777)"),
                    });
                }
                FdSpec::Capture {
                    head,
                    tail,
                    compress,
                    compress_level,
                    mode,
                    path,
                    dir,
                    memory,
                    ..
                } => {
                    check_capture_target(proc_id, name, fd, *mode, path, dir, *memory)?;
                    let window = head.unwrap_or(0).checked_add(tail.unwrap_or(0));
                    if window.is_none_or(|w| w > MAX_CAPTURE_WINDOW) {
                        return Err(SpecError::CaptureTooLarge {
                            proc_id: proc_id.clone(),
                            fd,
                        });
                    }
                    check_compress(proc_id, fd, compress.as_deref(), *compress_level)?;
                }
                FdSpec::PipeWrite => {
                    write_index.insert((proc_id.as_str(), fd), writes.len());
                    writes.push((proc_id.as_str(), fd));
                }
                _ => {}
            }
        }
    }

    let mut claimed = vec![false; writes.len()];
    for (proc_id, spec) in input.specs.iter() {
        for (_, fd_spec) in &spec.fds {
            let FdSpec::PipeRead {
                proc_id: from_id,
                fd: from_name,
            } = fd_spec
            else {
                continue;
            };
            let from_fd = parse_fd_name(from_name).map_err(|_| bad_fd_name(proc_id, from_name))?;
            let slot = write_index
                .get(&(from_id.as_str(), from_fd))
                .and_then(|&i| claimed.get_mut(i));
            match slot {
                None => {
                    return Err(SpecError::UnmatchedReadPipe {
                        proc_id: from_id.clone(),
                        fd: from_name.clone(),
                    });
                }
                Some(true) => {
                    return Err(SpecError::DuplicatePipeRead {
                        proc_id: from_id.clone(),
                        fd: from_fd,
                    });
                }
                Some(c) => *c = true,
            }
        }
    }
    if let Some((&(proc_id, fd), _)) = writes.iter().zip(&claimed).find(|(_, c)| !**c) {
        return Err(SpecError::UnmatchedWritePipe {
            proc_id: proc_id.to_owned(),
            fd,
        });
    }
    Ok(())
}

/// Checks a capture's `compress` and `compress_level`.
fn check_compress(
    proc_id: &str,
    fd: i32,
    compress: Option<&str>,
    level: Option<i64>,
) -> Result<(), SpecError> {
    let bad = |field, msg: String| SpecError::BadCompress {
        proc_id: proc_id.to_owned(),
        fd,
        field,
        msg,
    };
    match compress {
        Some(c) if !COMPRESS_ALGORITHMS.contains(&c) => {
            return Err(bad(
                "compress",
                format!("unknown algorithm {c:?} (expected one of {COMPRESS_ALGORITHMS:?})"),
            ));
        }
        None if level.is_some() => {
            return Err(bad("compress_level", "given without compress".to_string()));
        }
        _ => {}
    }
    match level {
        Some(l) if !COMPRESS_LEVELS.contains(&l) => Err(bad(
            "compress_level",
            format!(
                "{l} out of range {}..={}",
                COMPRESS_LEVELS.start(),
                COMPRESS_LEVELS.end()
            ),
        )),
        _ => Ok(()),
    }
}

/// Checks `path`, `dir` and `memory` of a capture against its mode.
fn check_capture_target(
    proc_id: &str,
    name: &str,
    fd: i32,
    mode: CaptureMode,
    path: &Option<String>,
    dir: &Option<String>,
    memory: bool,
) -> Result<(), SpecError> {
    let bad = |field, msg| SpecError::BadCapture {
        proc_id: proc_id.to_owned(),
        fd,
        field,
        msg,
    };
    if mode != CaptureMode::File {
        let extra = [
            ("path", path.is_some()),
            ("dir", dir.is_some()),
            ("memory", memory),
        ];
        if let Some((field, _)) = extra.into_iter().find(|(_, set)| *set) {
            return Err(bad(field, "only mode \"file\" takes it"));
        }
        return Ok(());
    }
    let (field, value) = match (path, dir) {
        (Some(_), Some(_)) => return Err(bad("path", "give either path or dir, not both")),
        (None, None) => return Err(bad("path", "mode \"file\" needs a path or a dir")),
        (Some(p), None) => ("path", p),
        (None, Some(d)) => ("dir", d),
    };
    if value.is_empty() {
        return Err(bad(field, "is empty"));
    }
    if value.contains('\0') {
        return Err(SpecError::Nul {
            proc_id: proc_id.to_owned(),
            field: format!("fds.{name}.capture.{field}"),
        });
    }
    Ok(())
}

/// Checks argv, exe and env.vars of one proc.
fn validate_strings(proc_id: &str, spec: &ProcSpec) -> Result<(), SpecError> {
    let nul = |field: String| SpecError::Nul {
        proc_id: proc_id.to_owned(),
        field,
    };
    if spec.argv.is_empty() {
        return Err(SpecError::EmptyArgv {
            proc_id: proc_id.to_owned(),
        });
    }
    if spec.exe.as_deref().is_some_and(|e| e.contains('\0')) {
        return Err(nul("exe".to_owned()));
    }
    if let Some(i) = spec.argv.iter().position(|a| a.contains('\0')) {
        return Err(nul(format!("argv[{i}]")));
    }
    for (name, value) in &spec.env.vars {
        if name.contains('\0') {
            return Err(nul(format!("env.vars name {name:?}")));
        }
        if name.is_empty() || name.contains('=') {
            return Err(SpecError::BadEnvName {
                proc_id: proc_id.to_owned(),
                name: name.clone(),
            });
        }
        if value.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(nul(format!("env.vars.{name}")));
        }
    }
    Ok(())
}
