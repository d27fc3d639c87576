//! The command protocol between an agent's clients ([`Handle`](super::Handle))
//! and its reactor thread: one [`Command`] per request, each carrying the
//! callback that takes its reply.

use super::error::{FdDataError, ProcError, StartError};
use super::proc::{Content, Snapshot};
use super::types::{FdWaited, ShutdownPolicy, ShutdownState};
use crate::spec::{self, Input, ProcId};

/// The callback that takes a command's reply (run on the reactor thread).
type Reply<T> = Box<dyn FnOnce(T) + Send>;

/// When a start request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAnswer {
    /// Once every process of the request has a pid, has failed to start, or
    /// waits in the queue behind `max_running`.
    Launched,
    /// Once the request is validated and its processes queued; each then
    /// tells of its start with an
    /// [`Event::Started`](super::Event::Started).
    Accepted,
}

/// A command to the reactor thread.
pub(crate) enum Command {
    /// Start a request's processes; answered when [`StartAnswer`] says.
    Start(Input, StartAnswer, Reply<Result<Vec<ProcId>, StartError>>),
    Result(ProcId, Reply<Option<Snapshot>>),
    /// A result with every capture detached (counts only).
    ResultBrief(ProcId, Reply<Option<Snapshot>>),
    Results(Reply<Vec<(ProcId, Snapshot)>>),
    /// The results of these processes, in this order (unknown ids left out).
    ResultsOf(Vec<ProcId>, Reply<Vec<(ProcId, Snapshot)>>),
    Ids(Reply<Vec<ProcId>>),
    Overview(super::status::Select, Reply<super::status::Overview>),
    History(ProcId, Reply<Option<Vec<super::status::Point>>>),
    /// Wait for exit; with `true`, also for every compression of the process.
    Wait(ProcId, bool, Reply<Option<Snapshot>>),
    /// Wait until every process in the table is final (settled, compressed).
    WaitAll(Reply<()>),
    Signal(ProcId, i32, Reply<Result<(), ProcError>>),
    FdData(
        ProcId,
        String,
        (u64, u64),
        Reply<Result<FdContent, FdDataError>>,
    ),
    /// Wait until a capture holds more than `offset` bytes, can grow no more,
    /// or the deadline passes.
    FdWait(
        ProcId,
        String,
        u64,
        std::time::Instant,
        Reply<Result<FdWaited, FdDataError>>,
    ),
    Delete(ProcId, Reply<Result<(), ProcError>>),
    Subscribe(super::events::Publisher),
    /// Begin shutting down by a policy (answered once it is under way).
    Shutdown(ShutdownPolicy, Reply<()>),
    /// Wait for the shutdown state `done`.
    WaitDone(Reply<()>),
    /// The shutdown state now.
    State(Reply<ShutdownState>),
    /// The agent is dropped: take no more commands, finish once nothing runs.
    /// With `leave_table`, the process is about to exit: the table of
    /// processes is not freed (see [`Agent::close_for_exit`](super::Agent::close_for_exit)).
    Close {
        leave_table: bool,
    },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Command::Start(..) => "Start",
            Command::Result(..) => "Result",
            Command::ResultBrief(..) => "ResultBrief",
            Command::Results(..) => "Results",
            Command::ResultsOf(..) => "ResultsOf",
            Command::Ids(..) => "Ids",
            Command::Overview(..) => "Overview",
            Command::History(..) => "History",
            Command::Wait(..) => "Wait",
            Command::WaitAll(..) => "WaitAll",
            Command::Signal(..) => "Signal",
            Command::FdData(..) => "FdData",
            Command::FdWait(..) => "FdWait",
            Command::Delete(..) => "Delete",
            Command::Subscribe(..) => "Subscribe",
            Command::Close { .. } => "Close",
            Command::Shutdown(..) => "Shutdown",
            Command::WaitDone(..) => "WaitDone",
            Command::State(..) => "State",
        };
        f.write_str(name)
    }
}

/// Content of a capture for readers: what the reactor holds of it, and its
/// encoding.
pub(crate) type FdContent = (Content, spec::Encoding);
