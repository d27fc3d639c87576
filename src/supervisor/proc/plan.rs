//! Plan building: from a [`ProcSpec`] to the [`ChildPlan`] the child is
//! spawned from, with the captures it sets up ([`prepare`]), and the opens a
//! spec needs done off the reactor first ([`opens_for`]).

use super::super::opener::{self, OpenReq, Opened};
use super::compress::{CompressState, Compression};
use super::env::{BuiltEnv, EnvCache};
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
use crate::sys::spawn::{ChildPlan, Source};
use rustix::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use rustix::io::Errno;
use std::borrow::Cow;
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
    /// Whether unnamed fds 0 and 1 are `/dev/null` (`Config::own_stdin_stdout`).
    pub own_stdin_stdout: bool,
}

impl<'a> PlanContext<'a> {
    /// The context of `config`'s plans, for children that start from `env`
    /// and `cwd`, with `/dev/null` from `null` and long-lived fds moved to
    /// `fd_floor` or above.
    pub fn new(
        config: &'a super::super::Config,
        env: &'a [(std::ffi::OsString, std::ffi::OsString)],
        cwd: Option<&'a Path>,
        null: &'a NullFds,
        fd_floor: RawFd,
    ) -> PlanContext<'a> {
        PlanContext {
            env,
            tmpdir: &config.tmpdir,
            pipe_size: config.pipe_size,
            head: config.capture_head,
            tail: config.capture_tail,
            fd_floor,
            pdeath_sig: config.pdeath_sig,
            cwd,
            perf: config.perf,
            restrict_exe: config.restrict_exe.as_deref(),
            report_env: config.report_env,
            null,
            own_stdin_stdout: config.own_stdin_stdout,
        }
    }
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
///
/// In order: the exe check, the start state ([`control`]), the environment,
/// the exec, then the fd list entry by entry ([`FdList`]), then perf counters.
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
    let mut errors: Vec<String> = exe_refusal(id, &exe, ps, ctx).into_iter().collect();
    let ctl = control_for(id, ps, ctx, opened.remove(&opener::CONTROL), &mut errors);
    let env = env_cache.get(&env_spec(ps, ctl.as_ref()), ctx.env);
    let mut plan = match child_plan(&exe, ps, &env) {
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

    let mut list = FdList {
        plan,
        // Refused already: its files are not opened (none created or
        // truncated for a proc that cannot start).
        opens_skipped: !errors.is_empty(),
        errors,
        opened,
        ..FdList::new(id, ps, ctx, child_cwd.as_deref(), pipes)
    };
    if ctx.own_stdin_stdout {
        // The agent's stdin and stdout are its protocol: the child's 0 and 1
        // start as /dev/null, so one that does not name them (or dups them,
        // or gives them as "inherit") cannot read the requests or write into
        // the replies. Entries that name them replace these.
        for fd in [0, 1] {
            let null = list.null(fd, spec::OpenFlag::Default).map(Some);
            list.install(fd, null, None);
        }
    }
    for (index, (name, fs)) in ps.fds.iter().enumerate() {
        list.entry(index, name, fs);
    }
    list.finish();
    let FdList {
        mut plan,
        errors,
        fds,
        captures,
        out_of_fds,
        ..
    } = list;

    let perf = plan.as_mut().and_then(|p| perf_for(p, ps, ctx));
    Prepared {
        plan,
        exe,
        fds,
        captures,
        errors,
        out_of_fds,
        started_with: start_info(ps, ctx, child_cwd, ctl.as_ref(), env),
        timeout: timeout_state(ctl.as_ref()),
        kill_group: ps.kill_group,
        perf,
    }
}

/// Why `--restrict-exe` refuses the proc's `exe`, if it does.
fn exe_refusal(id: &str, exe: &str, ps: &ProcSpec, ctx: &PlanContext<'_>) -> Option<String> {
    let allowed = ctx.restrict_exe?;
    if exe != allowed {
        return Some(format!(
            "proc {id}: exe {exe:?} is not allowed: this agent runs only {allowed:?} (--restrict-exe)"
        ));
    }
    // A relative exe is found from the child's directory: the allowed text
    // names the allowed program only where that is the agent's.
    (!exe.starts_with('/') && ps.cwd.is_some()).then(|| {
        format!(
            "proc {id}: exe {exe:?} is not allowed with a cwd: a relative exe is found from \
             the child's working directory, and --restrict-exe allows it only from the agent's"
        )
    })
}

/// The proc's resolved start state: resolved on an opener thread where it
/// takes NSS lookups (`opened`, see [`opens_for`]), else here. Its errors go
/// to `errors`.
fn control_for(
    id: &str,
    ps: &ProcSpec,
    ctx: &PlanContext<'_>,
    opened: Option<Opened>,
    errors: &mut Vec<String>,
) -> Option<control::Control> {
    let ctl = match opened {
        Some(Opened::Control(r)) => r,
        _ => control::resolve(id, ps, &control_defaults(ctx)),
    };
    match ctl {
        Ok(c) => Some(c),
        Err(es) => {
            errors.extend(es.iter().map(ToString::to_string));
            None
        }
    }
}

/// The environment spec the child's environment is built from.
fn env_spec<'s>(ps: &'s ProcSpec, ctl: Option<&control::Control>) -> Cow<'s, spec::EnvSpec> {
    // env.user_env: HOME, USER, LOGNAME and SHELL go in after `inherit` and before
    // `vars`, which is the same as `vars` entries that the spec's own override.
    match ctl.and_then(|c| c.user_env.as_ref()) {
        Some(user_env) => {
            let mut e = ps.env.clone();
            for (k, v) in user_env {
                e.vars.entry(k.clone()).or_insert_with(|| Some(v.clone()));
            }
            Cow::Owned(e)
        }
        None => Cow::Borrowed(&ps.env),
    }
}

/// The plan's exec: `exe`, the spec's argv and the built environment; `Err`
/// if one of them holds a NUL byte.
fn child_plan(exe: &str, ps: &ProcSpec, env: &Result<BuiltEnv, Errno>) -> Result<ChildPlan, Errno> {
    let argv: Vec<Vec<u8>> = ps.argv.iter().map(|a| a.as_bytes().to_vec()).collect();
    env.as_ref()
        .map_err(|_| Errno::INVAL)
        .and_then(|e| ChildPlan::with_env(std::ffi::OsStr::new(exe), argv, e.envp.clone()))
}

/// perf counters: only when asked for (no probe, no cost otherwise).
fn perf_for(
    plan: &mut ChildPlan,
    ps: &ProcSpec,
    ctx: &PlanContext<'_>,
) -> Option<crate::metrics::perf::PerfState> {
    let events = crate::metrics::perf::requested(ps.perf.as_ref(), ctx.perf);
    if events.is_empty() {
        return None;
    }
    let (setup, perf_plan) = crate::metrics::perf::Setup::for_events(&events);
    plan.set_perf(perf_plan);
    Some(crate::metrics::perf::PerfState::Pending(setup))
}

/// The start state the child is given, as its result reports it.
fn start_info(
    ps: &ProcSpec,
    ctx: &PlanContext<'_>,
    child_cwd: Option<PathBuf>,
    ctl: Option<&control::Control>,
    env: Result<BuiltEnv, Errno>,
) -> StartInfo {
    StartInfo {
        cwd: child_cwd.map(|p| p.to_string_lossy().into_owned()),
        umask: ctl
            .and_then(|c| c.umask)
            .or_else(|| control::agent_info().umask),
        env: env
            .ok()
            .filter(|_| ps.env.report.unwrap_or(ctx.report_env))
            .map(|e| e.map),
    }
}

/// The spec's timeout, resolved, with nothing done yet.
fn timeout_state(ctl: Option<&control::Control>) -> Option<TimeoutState> {
    ctl.and_then(|c| c.timeout).map(TimeoutState::new)
}

/// A spec's fd list being applied to its plan, entry by entry in list order:
/// each kind of fd has its own function, which gives what the child's fd is
/// made from (or an error, or nothing to install), and [`FdList::install`]
/// puts it in the plan.
struct FdList<'a> {
    id: &'a str,
    ps: &'a ProcSpec,
    ctx: &'a PlanContext<'a>,
    /// The directory the child starts in (see [`child_cwd`]).
    child_cwd: Option<&'a Path>,
    /// Opens done off the reactor, by index in the spec's `fds`.
    opened: HashMap<usize, Opened>,
    pipes: &'a mut RequestPipes,
    /// The plan, `None` once it has failed (the fds are still opened, for
    /// their errors).
    plan: Option<ChildPlan>,
    errors: Vec<String>,
    /// fd name → capture index, in spec order ([`Prepared::fds`]).
    fds: Vec<(String, Option<usize>)>,
    captures: Vec<Capture>,
    /// Kept capture files this proc created (removed again if it cannot start).
    created_kept: Vec<PathBuf>,
    /// The child's fd table as the list is applied: target → raw source in the plan
    /// (or the agent's own 0–2), for `dup` resolution in list order.
    table: HashMap<RawFd, Option<RawFd>>,
    /// Whether an fd failed for want of fds (EMFILE, ENFILE): worth a retry later.
    out_of_fds: bool,
    /// Whether the proc was refused before its fds (its exe, a control
    /// field): files not opened yet are then not opened at all.
    opens_skipped: bool,
}

/// A `capture` entry's settings, borrowed from its [`FdSpec::Capture`].
struct CaptureReq<'s> {
    mode: &'s CaptureMode,
    encoding: &'s spec::Encoding,
    attached: &'s bool,
    head: &'s Option<u64>,
    tail: &'s Option<u64>,
    compress: &'s Option<String>,
    compress_level: &'s Option<i64>,
    path: &'s Option<String>,
    dir: &'s Option<String>,
    memory: &'s bool,
}

impl<'a> FdList<'a> {
    /// An empty list for a plan still to be given (`plan`, `errors` and
    /// `opened` are set by the caller).
    fn new(
        id: &'a str,
        ps: &'a ProcSpec,
        ctx: &'a PlanContext<'a>,
        child_cwd: Option<&'a Path>,
        pipes: &'a mut RequestPipes,
    ) -> Self {
        FdList {
            id,
            ps,
            ctx,
            child_cwd,
            opened: HashMap::new(),
            pipes,
            plan: None,
            errors: Vec::new(),
            fds: Vec::new(),
            captures: Vec::new(),
            created_kept: Vec::new(),
            table: (0..=2).map(|fd| (fd, Some(fd))).collect(),
            out_of_fds: false,
            opens_skipped: false,
        }
    }

    /// Applies entry `index` of the spec's `fds`: fd `name` set up as `fs` says.
    fn entry(&mut self, index: usize, name: &str, fs: &FdSpec) {
        let fd = match spec::parse_fd_name(name) {
            Ok(fd) => fd,
            Err(e) => {
                self.errors.push(e.to_string());
                return;
            }
        };
        let norm = spec::fd_name(fd);
        let mut cap_index = None;
        let source: Result<Option<Source>, Errno> = match fs {
            FdSpec::Inherit => Ok(None),
            FdSpec::Close => {
                self.close(fd);
                Ok(None)
            }
            FdSpec::Null { flags } => self.null(fd, *flags).map(Some),
            FdSpec::File { path, flags, mode } => owned(self.file(index, fd, path, *flags, *mode)),
            FdSpec::Dup { fd: from } => owned(self.dup(*from).map(Some)),
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
                let req = CaptureReq {
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
                };
                owned(self.capture(index, fd, &norm, &req).map(|made| {
                    made.map(|(i, child)| {
                        cap_index = Some(i);
                        child
                    })
                }))
            }
            FdSpec::PipeWrite => owned(Ok(self.pipe_write(fd))),
            FdSpec::PipeRead { proc_id, fd: wfd } => owned(Ok(self.pipe_read(proc_id, wfd))),
        };
        // A relative path that cannot be found is named with the directory
        // it was looked for in: the spec's cwd, which may be what is wrong.
        let relative_to = match (fs, &self.ps.cwd, self.child_cwd) {
            (FdSpec::File { path, .. }, Some(_), Some(dir)) if !path.starts_with('/') => {
                Some(format!("{path} is relative to cwd {}", dir.display()))
            }
            _ => None,
        };
        // A tempfile that cannot be made: the directory is what is wrong
        // (missing, read-only, full, or a file system without O_TMPFILE).
        let source = match (source, fs) {
            (Err(e), FdSpec::Capture { mode, .. })
                if *mode == CaptureMode::Tempfile && e != Errno::MFILE && e != Errno::NFILE =>
            {
                self.errors.push(format!(
                    "{}: a tempfile capture is made in {} (the agent's temporary directory)",
                    fd_error(fd, e),
                    self.ctx.tmpdir.display()
                ));
                Ok(None)
            }
            (source, _) => source,
        };
        self.install(fd, source, relative_to.as_deref());
        self.fds.push((norm, cap_index));
    }

    /// Puts what an entry gave in the plan as the child's `fd` (and in the fd
    /// table, for later `dup`s), or reports why the entry failed.
    /// `relative_to` says where a relative path was looked for, for an entry
    /// whose path was not found.
    fn install(
        &mut self,
        fd: RawFd,
        source: Result<Option<Source>, Errno>,
        relative_to: Option<&str>,
    ) {
        match source {
            Ok(Some(src)) => {
                self.table.insert(fd, Some(src.as_raw_fd()));
                if let Some(p) = self.plan.as_mut() {
                    if fd < 0 {
                        self.errors.push(fd_error(fd, Errno::BADF));
                    } else {
                        p.dup(src, fd);
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                self.out_of_fds |= e == Errno::MFILE || e == Errno::NFILE;
                match relative_to.filter(|_| e == Errno::NOENT || e == Errno::NOTDIR) {
                    Some(hint) => self.errors.push(format!("{}: {hint}", fd_error(fd, e))),
                    None => self.errors.push(fd_error(fd, e)),
                }
            }
        }
    }

    /// Ends the list: with any error nothing starts, so the plan is dropped
    /// and the kept files this proc created are removed (an existing file
    /// named by `path` was truncated, and is left).
    fn finish(&mut self) {
        if !self.errors.is_empty() {
            self.plan = None;
            for p in &self.created_kept {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// `close`: the child closes the fd (only 0–2 need it: no other agent fd
    /// reaches a child), and a later `dup` of it fails.
    fn close(&mut self, fd: RawFd) {
        if let Some(p) = self.plan.as_mut() {
            if (0..=2).contains(&fd) {
                p.close(fd);
            }
        }
        self.table.insert(fd, None);
    }

    /// `null`: the agent's `/dev/null` opened as `flags` say, shared or a
    /// duplicate (see `NullFds::get`).
    fn null(&self, fd: RawFd, flags: spec::OpenFlag) -> Result<Source, Errno> {
        self.ctx.null.get(flags.oflags(fd), self.ctx.fd_floor)
    }

    /// `file`: the file the opener thread opened, or opened here. A path
    /// refused because in the agent it would mean the agent is reported here,
    /// and nothing is installed.
    fn file(
        &mut self,
        index: usize,
        fd: RawFd,
        path: &str,
        flags: spec::OpenFlag,
        mode: u32,
    ) -> Result<Option<OwnedFd>, Errno> {
        let at = file_path(self.ps, self.child_cwd, path);
        let r = match self.opened.remove(&index) {
            Some(Opened::File(r)) => r,
            _ if self.opens_skipped => return Ok(None),
            _ => fd::open_for_child(&at, flags.oflags(fd), mode),
        };
        match r {
            Ok(f) => Ok(Some(f)),
            Err(fd::OpenFailure::Sys(e)) => Err(e),
            Err(refused) => {
                self.errors.push(refusal(fd, &at, &refused));
                Ok(None)
            }
        }
    }

    /// `dup`: a duplicate of what the child's fd `from` is at this point of
    /// the list; `EBADF` if it is closed.
    fn dup(&self, from: RawFd) -> Result<OwnedFd, Errno> {
        match self.table.get(&from).copied().flatten() {
            Some(raw) => fd::dup_cloexec_raw(raw, 0),
            None => Err(Errno::BADF),
        }
    }

    /// `capture`: the store for the spec's mode, added to the captures;
    /// returns its index and the fd the child writes to. `None` when a kept
    /// file's path was refused (reported here).
    fn capture(
        &mut self,
        index: usize,
        fd: RawFd,
        norm: &str,
        req: &CaptureReq<'_>,
    ) -> Result<Option<(usize, OwnedFd)>, Errno> {
        let ctx = self.ctx;
        let head = req
            .head
            .map_or(ctx.head, |h| usize::try_from(h).unwrap_or(usize::MAX));
        let tail = req
            .tail
            .map_or(ctx.tail, |t| usize::try_from(t).unwrap_or(usize::MAX));
        let made = match req.mode {
            CaptureMode::Memory => self.capture_memory(head, tail).map(Some),
            CaptureMode::File => {
                let target = (req.path.as_deref(), req.dir.as_deref());
                self.capture_kept(index, fd, norm, target, req.compress.is_some())
            }
            CaptureMode::Tempfile => self.capture_tempfile().map(Some),
        };
        let Some((store, child)) = made? else {
            return Ok(None);
        };
        let i = self.captures.len();
        self.captures.push(Capture {
            name: norm.to_string(),
            encoding: *req.encoding,
            attached: *req.attached,
            store,
            window: (*req.mode == CaptureMode::File && *req.memory)
                .then_some((head as u64, tail as u64)),
            // Validated: "zstd" is the only algorithm, levels fit i32.
            compression: req.compress.as_ref().map(|_| Compression {
                level: req
                    .compress_level
                    .and_then(|l| i32::try_from(l).ok())
                    .unwrap_or(crate::capture::compress::DEFAULT_LEVEL),
                state: CompressState::Pending,
            }),
        });
        Ok(Some((i, child)))
    }

    /// Mode `memory`: a pipe the reactor drains into a head/tail buffer.
    fn capture_memory(&self, head: usize, tail: usize) -> Result<(Store, OwnedFd), Errno> {
        let p = pipe::capture_pipe()?;
        let store = Store::Memory {
            pipe: PipeIn::new(fd::move_high(p.read, self.ctx.fd_floor), self.ctx.pipe_size),
            live: HeadTail::new(head, tail),
            frozen: None,
        };
        Ok((store, p.write))
    }

    /// Mode `file`: the kept file (opened by the opener thread, or here) and a
    /// pipe the reactor drains into it. `None` when its path was refused
    /// (reported here).
    fn capture_kept(
        &mut self,
        index: usize,
        fd: RawFd,
        norm: &str,
        (path, dir): (Option<&str>, Option<&str>),
        zst: bool,
    ) -> Result<Option<(Store, OwnedFd)>, Errno> {
        let r = match self.opened.remove(&index) {
            Some(Opened::Kept(r)) => r,
            _ if self.opens_skipped => return Ok(None),
            _ => open_kept(self.id, norm, (path, dir), zst, self.child_cwd),
        };
        let (f, at, new) = match r {
            Ok(x) => x,
            Err(fd::OpenFailure::Sys(e)) => return Err(e),
            Err(why) => {
                let shown = path.or(dir).unwrap_or("");
                self.errors.push(refusal(fd, Path::new(shown), &why));
                return Ok(None);
            }
        };
        if new {
            self.created_kept.push(at.clone());
        }
        let p = pipe::capture_pipe()?;
        let f = fd::move_high(f, self.ctx.fd_floor);
        let cap = kept::staging_cap(self.ctx.pipe_size);
        let file = KeptFile::new(f, at, cap);
        let store = Store::Kept {
            pipe: PipeIn::new(fd::move_high(p.read, self.ctx.fd_floor), self.ctx.pipe_size),
            file: Box::new(file),
        };
        Ok(Some((store, p.write)))
    }

    /// Mode `tempfile`: an unlinked file the child writes to directly.
    fn capture_tempfile(&self) -> Result<(Store, OwnedFd), Errno> {
        let f = fd::tempfile(self.ctx.tmpdir)?;
        let child = fd::dup_cloexec(f.as_fd())?;
        let f = fd::move_high(f, self.ctx.fd_floor);
        Ok((Store::Tempfile { file: Arc::new(f) }, child))
    }

    /// `pipe-write`: the write end of this proc's pipe for `fd`, if the
    /// request made one (each end goes to one child).
    fn pipe_write(&mut self, fd: RawFd) -> Option<OwnedFd> {
        self.pipes
            .get_mut(&(self.id.to_string(), fd))
            .and_then(|(_, w)| w.take())
    }

    /// `pipe-read`: the read end of the pipe from proc `proc_id`'s fd `wfd`.
    fn pipe_read(&mut self, proc_id: &spec::ProcId, wfd: &str) -> Option<OwnedFd> {
        let wfd = spec::parse_fd_name(wfd).unwrap_or(-1);
        self.pipes
            .get_mut(&(proc_id.clone(), wfd))
            .and_then(|(r, _)| r.take())
    }
}

/// The opens a spec needs done off the reactor (`file` fds and kept capture
/// files), by index in its `fds`.
pub(crate) fn opens_for(id: &str, ps: &ProcSpec, ctx: &PlanContext<'_>) -> Vec<OpenReq> {
    let cwd = child_cwd(ps, ctx);
    let mut opens = Vec::new();
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
                compress,
                ..
            } => opens.push(OpenReq::Kept {
                index,
                id: id.to_string(),
                fd_name: spec::fd_name(fd),
                path: path.clone(),
                dir: dir.clone(),
                zst: compress.is_some(),
                cwd: cwd.clone(),
            }),
            _ => {}
        }
    }
    let lookups = control::needs_lookups(ps);
    // A proc refused before its fds opens none of its files: `prepare` says
    // why. (One whose control takes lookups is resolved first, on the
    // opener thread, which then stops at a failure.) Checked only for a
    // proc with files, off the path of those without.
    if !opens.is_empty()
        && (exe_refusal(id, ps.exe().unwrap_or_default(), ps, ctx).is_some()
            || (!lookups && control::resolve(id, ps, &control_defaults(ctx)).is_err()))
    {
        opens.clear();
    }
    if lookups {
        opens.insert(
            0,
            OpenReq::Control {
                id: id.to_string(),
                spec: Box::new(ps.clone()),
                defaults: control_defaults(ctx),
            },
        );
    }
    opens
}

/// Opens a kept capture file: `path` (relative to the child's starting directory)
/// or a new name in `dir` (one free with `.zst` added too, if `zst`: the
/// capture is to be compressed there). Returns the file, its path, and whether
/// this call created it (so that a proc that cannot start removes only what it
/// made).
pub(crate) fn open_kept(
    id: &str,
    fd_name: &str,
    (path, dir): (Option<&str>, Option<&str>),
    zst: bool,
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
        (None, Some(d)) => {
            kept::create_in_dir(&resolve(d), id, fd_name, zst).map(|(f, p)| (f, p, true))
        }
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
        nofile: crate::sys::fd::child_fd_limit(),
    }
}

/// An fd the plan owns, as a [`Source`].
fn owned(fd: Result<Option<OwnedFd>, Errno>) -> Result<Option<Source>, Errno> {
    fd.map(|fd| fd.map(Source::Owned))
}

#[cfg(test)]
mod tests {
    use super::super::sources::request_pipes;
    use super::*;
    use crate::sys::spawn::FdAction;

    /// The head and tail a capture gets when its spec gives none.
    const HEAD: usize = 100;
    const TAIL: usize = 50;

    /// Builds proc `id`'s plan as the reactor does, with no opens done
    /// beforehand (so `file` fds and kept files are opened here).
    fn build(
        input: &spec::Input,
        id: &str,
        pipes: &mut RequestPipes,
        restrict_exe: Option<&str>,
    ) -> Prepared {
        let ps = input.specs.get(id).expect("a spec for the id");
        build_spec(id, ps, pipes, restrict_exe)
    }

    fn build_spec(
        id: &str,
        ps: &ProcSpec,
        pipes: &mut RequestPipes,
        restrict_exe: Option<&str>,
    ) -> Prepared {
        let null = NullFds::default();
        let tmp = std::env::temp_dir();
        let ctx = context(&tmp, &null, restrict_exe);
        prepare(id, ps, &ctx, pipes, &mut EnvCache::default(), Vec::new())
    }

    /// The agent-wide context the tests plan in: no environment, no fd
    /// floor, small pipes, temp files in `tmp`.
    fn context<'a>(
        tmp: &'a Path,
        null: &'a NullFds,
        restrict_exe: Option<&'a str>,
    ) -> PlanContext<'a> {
        PlanContext {
            env: &[],
            tmpdir: tmp,
            pipe_size: 4096,
            head: HEAD,
            tail: TAIL,
            fd_floor: 0,
            pdeath_sig: None,
            cwd: None,
            perf: false,
            restrict_exe,
            report_env: false,
            null,
            own_stdin_stdout: false,
        }
    }

    /// The plan of a request of one proc, `p`, whose `fds` are given as JSON.
    fn with_fds(fds: &str) -> Prepared {
        let input = parse(&format!(
            r#"{{"specs": {{"p": {{"argv": ["/bin/true"], "fds": {fds}}}}}}}"#
        ));
        build(&input, "p", &mut RequestPipes::new(), None)
    }

    fn parse(json: &str) -> spec::Input {
        spec::parse_input(json.as_bytes()).expect("a valid request")
    }

    fn actions(p: &Prepared) -> &[FdAction] {
        p.plan.as_ref().expect("a plan").fd_actions()
    }

    /// The `(source, target)` of each `dup` the plan does.
    fn dups(p: &Prepared) -> Vec<(RawFd, RawFd)> {
        actions(p)
            .iter()
            .filter_map(|a| match *a {
                FdAction::Dup { src, dst } => Some((src, dst)),
                FdAction::Close { .. } => None,
            })
            .collect()
    }

    /// What this process's fd `raw` is, as `/proc/self/fd` shows it
    /// (`pipe:[N]`, a path, ...).
    fn what(raw: RawFd) -> String {
        std::fs::read_link(format!("/proc/self/fd/{raw}"))
            .expect("an open fd")
            .to_string_lossy()
            .into_owned()
    }

    /// The access mode (`O_RDONLY`, `O_WRONLY`, `O_RDWR`) fd `raw` is open with.
    fn access(raw: RawFd) -> i32 {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .expect("a flags line");
        i32::from_str_radix(flags.trim(), 8).unwrap() & libc::O_ACCMODE
    }

    #[test]
    fn a_memory_capture_gives_the_target_fd_the_write_end_of_the_pipe_it_drains() {
        let p = with_fds(r#"[["stdout", {"capture": {"mode": "memory"}}]]"#);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.fds, [("stdout".to_string(), Some(0))]);
        let [(src, 1)] = dups(&p)[..] else {
            panic!("one dup onto fd 1: {:?}", actions(&p));
        };
        let [cap] = &p.captures[..] else {
            panic!("one capture");
        };
        let Store::Memory {
            pipe, live, frozen, ..
        } = &cap.store
        else {
            panic!("a memory store");
        };
        let read = pipe.fd.as_ref().expect("the read end").as_raw_fd();
        assert!(what(src).starts_with("pipe:"), "{}", what(src));
        assert_eq!(what(src), what(read), "both ends of one pipe");
        assert_eq!(access(src), libc::O_WRONLY);
        assert_eq!(access(read), libc::O_RDONLY);
        assert_eq!(pipe.read_key, None);
        assert!(frozen.is_none());
        // The agent's head and tail, and the spec's defaults.
        assert_eq!((live.head_limit(), live.tail_limit()), (HEAD, TAIL));
        assert_eq!(cap.name, "stdout");
        assert!(cap.attached);
        assert_eq!(cap.encoding, spec::Encoding::Base64);
        assert!(cap.window.is_none() && cap.compression.is_none());
    }

    #[test]
    fn a_capture_takes_its_own_head_tail_encoding_and_compression() {
        let p = with_fds(
            r#"[["stderr", {"capture": {"mode": "memory", "encoding": "utf-8",
                "attached": false, "head": 7, "tail": 3, "compress": "zstd",
                "compress_level": 5}}]]"#,
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let cap = &p.captures[0];
        let Store::Memory { live, .. } = &cap.store else {
            panic!("a memory store");
        };
        assert_eq!((live.head_limit(), live.tail_limit()), (7, 3));
        assert_eq!(cap.encoding, spec::Encoding::Utf8);
        assert!(!cap.attached);
        let c = cap.compression.as_ref().expect("compression");
        assert_eq!(c.level, 5);
        assert!(matches!(c.state, CompressState::Pending));
    }

    #[test]
    fn a_tempfile_capture_gives_the_target_fd_the_file_the_store_holds() {
        let p = with_fds(r#"[["stdout", {"capture": {"mode": "tempfile"}}]]"#);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let [(src, 1)] = dups(&p)[..] else {
            panic!("one dup onto fd 1: {:?}", actions(&p));
        };
        let Store::Tempfile { file } = &p.captures[0].store else {
            panic!("a tempfile store");
        };
        assert_eq!(what(src), what(file.as_raw_fd()));
        assert_ne!(src, file.as_raw_fd(), "the child's own duplicate");
        assert!(what(src).ends_with("(deleted)"), "{}", what(src));
    }

    #[test]
    fn a_file_capture_keeps_a_new_file_in_dir_fed_by_a_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let p = with_fds(&format!(
            r#"[["stdout", {{"capture": {{"mode": "file", "dir": {:?}, "memory": true}}}}]]"#,
            dir.path()
        ));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let [(src, 1)] = dups(&p)[..] else {
            panic!("one dup onto fd 1: {:?}", actions(&p));
        };
        let cap = &p.captures[0];
        let Store::Kept { pipe, file } = &cap.store else {
            panic!("a kept store");
        };
        let read = pipe.fd.as_ref().expect("the read end").as_raw_fd();
        assert_eq!(what(src), what(read));
        assert_eq!(access(src), libc::O_WRONLY);
        assert_eq!(&**file.path(), dir.path().join("p.stdout"));
        assert!(file.path().exists());
        // `"memory": true`: the head/tail window an attached result shows.
        assert_eq!(cap.window, Some((HEAD as u64, TAIL as u64)));
    }

    #[test]
    fn null_installs_dev_null_opened_as_its_flags_say() {
        let p = with_fds(r#"[["stdin", {"null": {}}], ["stdout", {"null": {}}]]"#);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let [(i, 0), (o, 1)] = dups(&p)[..] else {
            panic!("dups onto 0 and 1: {:?}", actions(&p));
        };
        assert_eq!(what(i), "/dev/null");
        assert_eq!(what(o), "/dev/null");
        assert_eq!(access(i), libc::O_RDONLY);
        assert_eq!(access(o), libc::O_WRONLY);
        assert!(p.captures.is_empty());
        assert_eq!(
            p.fds,
            [("stdin".to_string(), None), ("stdout".to_string(), None)]
        );
    }

    #[test]
    fn file_installs_the_opened_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let p = with_fds(&format!(
            r#"[["stdout", {{"file": {{"path": {path:?}, "flags": "Write"}}}}]]"#
        ));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let [(src, 1)] = dups(&p)[..] else {
            panic!("one dup onto fd 1: {:?}", actions(&p));
        };
        assert_eq!(what(src), path.to_string_lossy());
        assert!(path.exists());
    }

    #[test]
    fn dup_takes_what_the_fd_is_at_that_point_of_the_list() {
        let p = with_fds(
            r#"[["stdout", {"capture": {"mode": "memory"}}], ["stderr", {"dup": {"fd": 1}}]]"#,
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let [(out, 1), (err, 2)] = dups(&p)[..] else {
            panic!("dups onto 1 and 2: {:?}", actions(&p));
        };
        assert_ne!(out, err);
        assert_eq!(what(err), what(out), "stderr is the capture's pipe too");
        assert_eq!(p.fds[1], ("stderr".to_string(), None));
    }

    #[test]
    fn close_closes_only_0_to_2_and_leaves_nothing_to_dup() {
        let p = with_fds(r#"[["stdin", "close"], ["5", "close"], ["stdout", "inherit"]]"#);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(actions(&p), [FdAction::Close { fd: 0 }]);
        assert_eq!(
            p.fds,
            [
                ("stdin".to_string(), None),
                ("5".to_string(), None),
                ("stdout".to_string(), None)
            ]
        );
    }

    #[test]
    fn a_dup_of_a_closed_fd_fails_the_plan_with_ebadf() {
        let p = with_fds(r#"[["stdin", "close"], ["stderr", {"dup": {"fd": 0}}]]"#);
        assert!(p.plan.is_none());
        assert_eq!(
            p.errors,
            ["failed to set up fd 2: Bad file descriptor (os error 9)"]
        );
        assert!(!p.out_of_fds);
        // The failed fd is still listed.
        assert_eq!(p.fds[1], ("stderr".to_string(), None));
    }

    #[test]
    fn a_negative_fd_fails_the_plan_with_ebadf() {
        let p = with_fds(r#"[["-1", {"null": {}}]]"#);
        assert!(p.plan.is_none());
        assert_eq!(
            p.errors,
            ["failed to set up fd -1: Bad file descriptor (os error 9)"]
        );
    }

    #[test]
    fn a_file_that_cannot_be_opened_fails_the_plan_with_its_errno() {
        let p = with_fds(r#"[["stdin", {"file": {"path": "/nonexistent/chaperone/x"}}]]"#);
        assert!(p.plan.is_none());
        assert_eq!(
            p.errors,
            ["failed to set up fd 0: No such file or directory (os error 2)"]
        );
        assert!(!p.out_of_fds);
    }

    #[test]
    fn a_file_that_is_the_agents_own_proc_entry_is_refused() {
        let p = with_fds(r#"[["stdin", {"file": {"path": "/proc/self/environ"}}]]"#);
        assert!(p.plan.is_none());
        let pid = std::process::id();
        assert_eq!(
            p.errors,
            [format!(
                "failed to set up fd 0: /proc/self/environ is the agent's own \
                 /proc/{pid}/environ: refused, as it would give the child the agent's \
                 memory, fds or environment (the agent opens spec files; use a dup of \
                 another fd, or open it in the child)"
            )]
        );
        assert_eq!(p.fds, [("stdin".to_string(), None)]);
    }

    #[test]
    fn a_failed_plan_removes_the_kept_files_it_created_and_leaves_existing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("existing");
        std::fs::write(&existing, b"old").unwrap();
        let p = with_fds(&format!(
            r#"[["stdout", {{"capture": {{"mode": "file", "dir": {d:?}}}}}],
                ["stderr", {{"capture": {{"mode": "file", "path": {existing:?}}}}}],
                ["stdin", {{"file": {{"path": "/nonexistent/chaperone/x"}}}}]]"#,
            d = dir.path(),
        ));
        assert!(p.plan.is_none());
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        assert!(
            !dir.path().join("p.stdout").exists(),
            "created, then removed"
        );
        assert!(existing.exists(), "named by path and already there: left");
    }

    #[test]
    fn pipe_write_and_pipe_read_take_the_two_ends_of_the_requests_pipe() {
        let input = parse(
            r#"{"specs": {
                "a": {"argv": ["/bin/true"], "fds": [["stdout", "pipe-write"]]},
                "b": {"argv": ["/bin/true"],
                      "fds": [["stdin", {"pipe-read": {"proc_id": "a", "fd": "stdout"}}]]}}}"#,
        );
        let mut pipes = request_pipes(&input).unwrap();
        let a = build(&input, "a", &mut pipes, None);
        let b = build(&input, "b", &mut pipes, None);
        assert!(a.errors.is_empty() && b.errors.is_empty());
        let [(w, 1)] = dups(&a)[..] else {
            panic!("a: one dup onto fd 1: {:?}", actions(&a));
        };
        let [(r, 0)] = dups(&b)[..] else {
            panic!("b: one dup onto fd 0: {:?}", actions(&b));
        };
        assert!(what(w).starts_with("pipe:"));
        assert_eq!(what(w), what(r));
        assert_eq!(access(w), libc::O_WRONLY);
        assert_eq!(access(r), libc::O_RDONLY);
        // Each end went to its child: none is left for another.
        assert!(matches!(
            pipes.get(&("a".to_string(), 1)),
            Some((None, None))
        ));
    }

    #[test]
    fn a_pipe_end_already_taken_installs_nothing() {
        let input = parse(
            r#"{"specs": {"a": {"argv": ["/bin/true"], "fds": [["stdout", "pipe-write"]]}}}"#,
        );
        let mut pipes = request_pipes(&input).unwrap();
        let first = build(&input, "a", &mut pipes, None);
        assert_eq!(dups(&first).len(), 1);
        let again = build(&input, "a", &mut pipes, None);
        assert!(again.errors.is_empty());
        assert!(dups(&again).is_empty());
    }

    #[test]
    fn restrict_exe_refuses_another_exe() {
        let input = parse(r#"{"specs": {"p": {"argv": ["/bin/true"]}}}"#);
        let p = build(&input, "p", &mut RequestPipes::new(), Some("/bin/false"));
        assert!(p.plan.is_none());
        assert_eq!(
            p.errors,
            [
                r#"proc p: exe "/bin/true" is not allowed: this agent runs only "/bin/false" (--restrict-exe)"#
            ]
        );
        let ok = build(&input, "p", &mut RequestPipes::new(), Some("/bin/true"));
        assert!(ok.errors.is_empty() && ok.plan.is_some());
        // A relative exe names another program from another directory.
        let input = parse(r#"{"specs": {"p": {"argv": ["./tool"], "cwd": "/tmp"}}}"#);
        let p = build(&input, "p", &mut RequestPipes::new(), Some("./tool"));
        assert!(p.plan.is_none());
        assert!(
            p.errors.len() == 1 && p.errors[0].contains("is not allowed with a cwd"),
            "{:?}",
            p.errors
        );
        let input = parse(r#"{"specs": {"p": {"argv": ["./tool"]}}}"#);
        let ok = build(&input, "p", &mut RequestPipes::new(), Some("./tool"));
        assert!(ok.errors.is_empty(), "{:?}", ok.errors);
    }

    #[test]
    fn a_nul_byte_in_argv_fails_the_plan() {
        // The parser refuses NUL bytes; a spec built in code can still hold one.
        let input = parse(r#"{"specs": {"p": {"argv": ["/bin/true"]}}}"#);
        let mut ps = input.specs.get("p").unwrap().clone();
        ps.argv.push("a\0b".into());
        let p = build_spec("p", &ps, &mut RequestPipes::new(), None);
        assert!(p.plan.is_none());
        assert_eq!(p.errors, ["proc p: exe, argv or env contains a NUL byte"]);
    }

    #[test]
    fn an_unparsable_fd_name_is_reported_and_left_out() {
        // The parser refuses bad names; a spec built in code can still hold one.
        let input = parse(r#"{"specs": {"p": {"argv": ["/bin/true"]}}}"#);
        let mut ps = input.specs.get("p").unwrap().clone();
        ps.fds.push(("bogus".into(), FdSpec::Inherit));
        ps.fds.push(("stdout".into(), FdSpec::Inherit));
        let p = build_spec("p", &ps, &mut RequestPipes::new(), None);
        assert!(p.plan.is_none());
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        assert!(p.errors[0].contains("bogus"), "{:?}", p.errors);
        assert_eq!(p.fds, [("stdout".to_string(), None)]);
    }

    #[test]
    fn opens_for_lists_file_fds_and_kept_files_by_index() {
        let input = parse(
            r#"{"specs": {"p": {"argv": ["/bin/true"], "cwd": "/tmp", "fds": [
                ["stdin", {"null": {}}],
                ["stdout", {"file": {"path": "out", "flags": "Write"}}],
                ["stderr", {"capture": {"mode": "file", "dir": "caps"}}]]}}}"#,
        );
        let ps = input.specs.get("p").unwrap();
        let null = NullFds::default();
        let tmp = std::env::temp_dir();
        let ctx = context(&tmp, &null, None);
        let opens = opens_for("p", ps, &ctx);
        assert_eq!(opens.len(), 2);
        let OpenReq::File {
            index: 1,
            path,
            flags,
            ..
        } = &opens[0]
        else {
            panic!("a file open for fds[1]");
        };
        // Relative to the child's directory, opened as `w` says.
        assert_eq!(path, Path::new("/tmp/out"));
        assert_eq!(*flags, spec::OpenFlag::Write.oflags(1));
        let OpenReq::Kept {
            index: 2,
            fd_name,
            dir,
            cwd,
            ..
        } = &opens[1]
        else {
            panic!("a kept open for fds[2]");
        };
        assert_eq!(fd_name, "stderr");
        assert_eq!(dir.as_deref(), Some("caps"));
        assert_eq!(cwd.as_deref(), Some(Path::new("/tmp")));
    }
}
