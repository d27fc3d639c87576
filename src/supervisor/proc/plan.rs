//! Plan building: from a [`ProcSpec`] to the [`ChildPlan`] the child is
//! spawned from, with the captures it sets up ([`prepare`]), and the opens a
//! spec needs done off the reactor first ([`opens_for`]).

use super::super::opener::{self, OpenReq, Opened};
use super::compress::{CompressState, Compression};
use super::env::EnvCache;
use super::errors::{fd_error, refusal};
use super::life::{StartInfo, TimeoutState};
use super::sources::{NullFds, RequestPipes};
use super::store::{Capture, PipeIn, Store};
use crate::capture::headtail::HeadTail;
use crate::capture::kept::{self, KeptFile};
use crate::control;
use crate::spec::{self, CaptureMode, FdSpec, ProcSpec};
use crate::sys::fd;
use crate::sys::pipe;
use crate::sys::spawn::ChildPlan;
use rustix::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use rustix::io::Errno;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Agent-wide settings a plan needs.
pub(crate) struct PlanContext<'a> {
    pub env: &'a [(std::ffi::OsString, std::ffi::OsString)],
    pub tmpdir: &'a Path,
    pub pipe_size: usize,
    pub head: usize,
    pub tail: usize,
    /// Floor for long-lived fds (see `sys::fd::move_high`).
    pub fd_floor: RawFd,
    /// The agent-wide parent-death signal (`Config::pdeath_sig`).
    pub pdeath_sig: Option<i32>,
    /// The agent's working directory, read once at start (as its environment is).
    pub cwd: Option<&'a Path>,
    /// Whether procs whose spec has no `perf` count every perf event (`Config::perf`).
    pub perf: bool,
    /// The one exe allowed (`Config::restrict_exe`).
    pub restrict_exe: Option<&'a str>,
    /// Whether results carry the environment by default (`Config::report_env`).
    pub report_env: bool,
    /// `/dev/null`, opened once per way of opening it.
    pub null: &'a NullFds,
}

/// A plan ready to spawn, with the captures it sets up.
pub(crate) struct Prepared {
    pub plan: Option<ChildPlan>,
    pub exe: String,
    pub fds: Vec<(String, Option<usize>)>,
    pub captures: Vec<Capture>,
    pub errors: Vec<String>,
    /// Whether the errors include running out of fds (`EMFILE`, `ENFILE`), so
    /// that the same spec may start once other processes have let go of theirs.
    pub out_of_fds: bool,
    /// The start state given to the child (result extensions).
    pub started_with: StartInfo,
    /// The resolved timeout, if the spec has one.
    pub timeout: Option<TimeoutState>,
    /// Whether signals go to the whole process group.
    pub kill_group: bool,
    /// The perf counters the child opens, if any are asked for.
    pub perf: Option<crate::metrics::perf::PerfState>,
}

/// Builds the child plan for one spec. Failures to open fds are collected as
/// Procstar-style error strings; the plan is then `None` and nothing is spawned.
pub(crate) fn prepare(
    id: &str,
    ps: &ProcSpec,
    ctx: &PlanContext<'_>,
    pipes: &mut RequestPipes,
    env_cache: &mut EnvCache,
    opened: Vec<(usize, Opened)>,
) -> Prepared {
    let mut opened: HashMap<usize, Opened> = opened.into_iter().collect();
    let exe = ps.exe().unwrap_or_default().to_string();
    let mut errors = Vec::new();
    if let Some(allowed) = ctx.restrict_exe.filter(|a| *a != exe) {
        errors.push(format!(
            "proc {id}: exe {exe:?} is not allowed: this agent runs only {allowed:?} (--restrict-exe)"
        ));
    }
    // Resolved on an opener thread where it takes NSS lookups (`opens_for`).
    let ctl = match opened.remove(&opener::CONTROL) {
        Some(Opened::Control(r)) => r,
        _ => control::resolve(id, ps, &control_defaults(ctx)),
    };
    let ctl = match ctl {
        Ok(c) => Some(c),
        Err(es) => {
            errors.extend(es.iter().map(ToString::to_string));
            None
        }
    };
    // env.user_env: HOME, USER, LOGNAME and SHELL go in after `inherit` and before
    // `vars`, which is the same as `vars` entries that the spec's own override.
    let user_env_spec;
    let env_spec = match ctl.as_ref().and_then(|c| c.user_env.as_ref()) {
        Some(user_env) => {
            let mut e = ps.env.clone();
            for (k, v) in user_env {
                e.vars.entry(k.clone()).or_insert_with(|| Some(v.clone()));
            }
            user_env_spec = e;
            &user_env_spec
        }
        None => &ps.env,
    };
    let env = env_cache.get(env_spec, ctx.env);
    let argv: Vec<Vec<u8>> = ps.argv.iter().map(|a| a.as_bytes().to_vec()).collect();
    let plan = env
        .as_ref()
        .map_err(|_| Errno::INVAL)
        .and_then(|e| ChildPlan::with_env(std::ffi::OsStr::new(&exe), argv, e.envp.clone()));
    let mut plan = match plan {
        Ok(p) => Some(p),
        Err(_) => {
            errors.push(format!("proc {id}: exe, argv or env contains a NUL byte"));
            None
        }
    };
    let child_cwd = child_cwd(ps, ctx);
    if let (Some(p), Some(c)) = (plan.as_mut(), ctl.as_ref()) {
        apply_control(p, c);
    }

    let mut fds = Vec::new();
    let mut captures = Vec::new();
    // Kept capture files this proc created (removed again if it cannot start).
    let mut created_kept: Vec<PathBuf> = Vec::new();
    // The child's fd table as the list is applied: target → raw source in the plan
    // (or the agent's own 0–2), for `dup` resolution in list order.
    let mut table: HashMap<RawFd, Option<RawFd>> = (0..=2).map(|fd| (fd, Some(fd))).collect();
    // Whether an fd failed for want of fds (EMFILE, ENFILE): worth a retry later.
    let mut out_of_fds = false;

    for (index, (name, fs)) in ps.fds.iter().enumerate() {
        // Whether this fd's error is already reported (a refused path).
        let mut refused = false;
        let fd = match spec::parse_fd_name(name) {
            Ok(fd) => fd,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let norm = spec::fd_name(fd);
        let mut cap_index = None;
        let source: Result<Option<OwnedFd>, Errno> = match fs {
            FdSpec::Inherit => Ok(None),
            FdSpec::Close => {
                if let Some(p) = plan.as_mut() {
                    if (0..=2).contains(&fd) {
                        p.close(fd);
                    }
                }
                table.insert(fd, None);
                Ok(None)
            }
            FdSpec::Null { flags } => ctx.null.get(flags.oflags(fd), ctx.fd_floor).map(Some),
            FdSpec::File { path, flags, mode } => {
                let at = file_path(ps, child_cwd.as_deref(), path);
                let r = match opened.remove(&index) {
                    Some(Opened::File(r)) => r,
                    _ => fd::open_for_child(&at, flags.oflags(fd), *mode),
                };
                match r {
                    Ok(f) => Ok(Some(f)),
                    Err(fd::OpenFailure::Sys(e)) => Err(e),
                    Err(refused) => {
                        errors.push(refusal(fd, &at, &refused));
                        Ok(None)
                    }
                }
            }
            FdSpec::Dup { fd: from } => match table.get(from).copied().flatten() {
                Some(raw) => fd::dup_cloexec_raw(raw, 0).map(Some),
                None => Err(Errno::BADF),
            },
            FdSpec::Capture {
                mode,
                encoding,
                attached,
                head,
                tail,
                compress,
                compress_level,
                path,
                dir,
                memory,
            } => {
                let head = head.map_or(ctx.head, |h| usize::try_from(h).unwrap_or(usize::MAX));
                let tail = tail.map_or(ctx.tail, |t| usize::try_from(t).unwrap_or(usize::MAX));
                let made = match mode {
                    CaptureMode::Memory => pipe::capture_pipe(ctx.pipe_size).map(|p| {
                        (
                            Store::Memory {
                                pipe: PipeIn::new(fd::move_high(p.read, ctx.fd_floor)),
                                live: HeadTail::new(head, tail),
                                frozen: None,
                            },
                            p.write,
                        )
                    }),
                    CaptureMode::File => {
                        let target = (path.as_deref(), dir.as_deref());
                        let r = match opened.remove(&index) {
                            Some(Opened::Kept(r)) => r,
                            _ => open_kept(id, &norm, target, child_cwd.as_deref()),
                        };
                        let r = match r {
                            Ok(x) => Ok(x),
                            Err(fd::OpenFailure::Sys(e)) => Err(e),
                            Err(why) => {
                                let shown = path.as_deref().or(dir.as_deref()).unwrap_or("");
                                errors.push(refusal(fd, Path::new(shown), &why));
                                refused = true;
                                Err(Errno::PERM)
                            }
                        };
                        r.and_then(|(f, at, new)| {
                            if new {
                                created_kept.push(at.clone());
                            }
                            let p = pipe::capture_pipe(ctx.pipe_size)?;
                            let f = fd::move_high(f, ctx.fd_floor);
                            let cap = kept::staging_cap(ctx.pipe_size);
                            let file = KeptFile::new(f, at, cap);
                            Ok((
                                Store::Kept {
                                    pipe: PipeIn::new(fd::move_high(p.read, ctx.fd_floor)),
                                    file: Box::new(file),
                                },
                                p.write,
                            ))
                        })
                    }
                    CaptureMode::Tempfile => fd::tempfile(ctx.tmpdir).and_then(|f| {
                        let child = fd::dup_cloexec(f.as_fd())?;
                        let f = fd::move_high(f, ctx.fd_floor);
                        Ok((Store::Tempfile { file: Arc::new(f) }, child))
                    }),
                };
                made.map(|(store, child)| {
                    cap_index = Some(captures.len());
                    captures.push(Capture {
                        name: norm.clone(),
                        encoding: *encoding,
                        attached: *attached,
                        store,
                        window: (*mode == CaptureMode::File && *memory)
                            .then_some((head as u64, tail as u64)),
                        // Validated: "zstd" is the only algorithm, levels fit i32.
                        compression: compress.as_ref().map(|_| Compression {
                            level: compress_level
                                .and_then(|l| i32::try_from(l).ok())
                                .unwrap_or(crate::capture::compress::DEFAULT_LEVEL),
                            state: CompressState::Pending,
                        }),
                    });
                    Some(child)
                })
            }
            FdSpec::PipeWrite => Ok(pipes
                .get_mut(&(id.to_string(), fd))
                .and_then(|(_, w)| w.take())),
            FdSpec::PipeRead { proc_id, fd: wfd } => {
                let wfd = spec::parse_fd_name(wfd).unwrap_or(-1);
                Ok(pipes
                    .get_mut(&(proc_id.clone(), wfd))
                    .and_then(|(r, _)| r.take()))
            }
        };
        match source {
            Ok(Some(src)) => {
                table.insert(fd, Some(src.as_raw_fd()));
                if let Some(p) = plan.as_mut() {
                    if fd < 0 {
                        errors.push(fd_error(fd, Errno::BADF));
                    } else {
                        p.dup(src, fd);
                    }
                }
            }
            Ok(None) => {}
            Err(_) if refused => {}
            Err(e) => {
                out_of_fds |= e == Errno::MFILE || e == Errno::NFILE;
                errors.push(fd_error(fd, e));
            }
        }
        fds.push((norm, cap_index));
    }
    if !errors.is_empty() {
        plan = None;
        // Nothing starts: remove the kept files this proc created (an existing
        // file named by `path` was truncated, and is left).
        for p in &created_kept {
            let _ = std::fs::remove_file(p);
        }
    }
    // perf counters: only when asked for (no probe, no cost otherwise).
    let perf = match plan.as_mut() {
        Some(p) => {
            let events = crate::metrics::perf::requested(ps.perf.as_ref(), ctx.perf);
            let setup = (!events.is_empty())
                .then(|| crate::metrics::perf::Setup::new(&events, crate::metrics::perf::probe()));
            setup.map(|s| {
                p.set_perf(s.plan());
                crate::metrics::perf::PerfState::Pending(s)
            })
        }
        None => None,
    };
    let started_with = StartInfo {
        cwd: child_cwd.map(|p| p.to_string_lossy().into_owned()),
        umask: ctl
            .as_ref()
            .and_then(|c| c.umask)
            .or_else(|| control::agent_info().umask),
        env: env
            .ok()
            .filter(|_| ps.env.report.unwrap_or(ctx.report_env))
            .map(|e| e.map),
    };
    let timeout = ctl.as_ref().and_then(|c| c.timeout).map(|t| TimeoutState {
        timer: None,
        after: t.after,
        signum: t.signum,
        kill_after: t.kill_after,
        fired_at: None,
        killed: false,
    });
    Prepared {
        plan,
        exe,
        fds,
        captures,
        errors,
        out_of_fds,
        started_with,
        timeout,
        kill_group: ps.kill_group,
        perf,
    }
}

/// The opens a spec needs done off the reactor (`file` fds and kept capture
/// files), by index in its `fds`.
pub(crate) fn opens_for(id: &str, ps: &ProcSpec, ctx: &PlanContext<'_>) -> Vec<OpenReq> {
    let cwd = child_cwd(ps, ctx);
    let mut opens = Vec::new();
    if control::needs_lookups(ps) {
        opens.push(OpenReq::Control {
            id: id.to_string(),
            spec: Box::new(ps.clone()),
            defaults: control_defaults(ctx),
        });
    }
    for (index, (name, fs)) in ps.fds.iter().enumerate() {
        let Ok(fd) = spec::parse_fd_name(name) else {
            continue;
        };
        match fs {
            FdSpec::File { path, flags, mode } => opens.push(OpenReq::File {
                index,
                path: file_path(ps, cwd.as_deref(), path),
                flags: flags.oflags(fd),
                mode: *mode,
            }),
            FdSpec::Capture {
                mode: CaptureMode::File,
                path,
                dir,
                ..
            } => opens.push(OpenReq::Kept {
                index,
                id: id.to_string(),
                fd_name: spec::fd_name(fd),
                path: path.clone(),
                dir: dir.clone(),
                cwd: cwd.clone(),
            }),
            _ => {}
        }
    }
    opens
}

/// Opens a kept capture file: `path` (relative to the child's starting directory)
/// or a new name in `dir`. Returns the file, its path, and whether this call
/// created it (so that a proc that cannot start removes only what it made).
pub(crate) fn open_kept(
    id: &str,
    fd_name: &str,
    (path, dir): (Option<&str>, Option<&str>),
    cwd: Option<&Path>,
) -> Result<(OwnedFd, PathBuf, bool), fd::OpenFailure> {
    let resolve = |p: &str| match cwd {
        Some(c) => c.join(p),
        None => PathBuf::from(p),
    };
    match (path, dir) {
        (Some(p), _) => {
            let p = resolve(p);
            match kept::create_new_at(&p) {
                Ok(f) => Ok((f, p, true)),
                Err(fd::OpenFailure::Sys(Errno::EXIST)) => {
                    kept::create_at(&p).map(|f| (f, p, false))
                }
                Err(e) => Err(e),
            }
        }
        (None, Some(d)) => kept::create_in_dir(&resolve(d), id, fd_name).map(|(f, p)| (f, p, true)),
        (None, None) => Err(fd::OpenFailure::Sys(Errno::INVAL)),
    }
}

/// Puts a proc's resolved start state into its child plan.
fn apply_control(plan: &mut ChildPlan, c: &control::Control) {
    plan.set_sigmask(c.mask);
    plan.set_ignore(c.ignore);
    match c.session {
        control::Session::New => plan.set_setsid(true),
        control::Session::Group(pgid) => plan.set_process_group(pgid),
        control::Session::Inherit => plan.set_setsid(false),
    }
    if let Some(u) = c.umask {
        plan.set_umask(u);
    }
    if let Some(sig) = c.pdeath_sig {
        plan.set_pdeath_sig(sig, rustix::process::getpid().as_raw_nonzero().get());
    }
    if let Some(cwd) = &c.cwd {
        plan.set_cwd(cwd.clone());
    }
    for &(resource, soft, hard) in &c.rlimits {
        plan.add_rlimit(resource, soft, hard);
    }
    if let Some(creds) = &c.creds {
        plan.set_user(creds.uid, creds.gid, creds.groups.clone());
    }
}

/// The directory the child starts in: relative `file` paths are opened there.
fn child_cwd(ps: &ProcSpec, ctx: &PlanContext<'_>) -> Option<PathBuf> {
    match (ps.cwd.as_deref().map(Path::new), ctx.cwd) {
        (Some(c), Some(a)) => Some(a.join(c)),
        (Some(c), None) => Some(c.to_path_buf()),
        (None, a) => a.map(Path::to_path_buf),
    }
}

/// Where a `file` fd's path is opened: in the child's directory when the
/// spec sets `cwd`, else as given (relative to the agent's).
fn file_path(ps: &ProcSpec, child_cwd: Option<&Path>, path: &str) -> PathBuf {
    match (&ps.cwd, child_cwd) {
        (Some(_), Some(dir)) => dir.join(path),
        _ => PathBuf::from(path),
    }
}

fn control_defaults(ctx: &PlanContext<'_>) -> control::Defaults {
    control::Defaults {
        pdeath_sig: ctx.pdeath_sig,
    }
}
