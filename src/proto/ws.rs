//! The Procstar agent over WebSocket (`--agent`): chaperone dials the
//! scheduler's server (`wss://HOST:PORT/`), registers, and serves its requests.
//!
//! - Each connection opens with `Register`; the server must answer
//!   `Registered` within [`REGISTER_TIMEOUT`], else the attempt failed.
//! - Failed attempts back off from `--connect-interval-start`, times
//!   `--connect-interval-mult`, up to `--connect-interval-max`;
//!   `--connect-count-max` failures in a row end the agent (exit 1). A
//!   successful registration resets both.
//! - A WebSocket ping goes out every [`PING_INTERVAL`]; a connection on which
//!   nothing has arrived for `--agent-read-timeout` is dropped and redialled.
//! - A process's result is sent unasked when it starts and when it ends. What
//!   happens while no connection is up is remembered per process (one entry
//!   each, so the memory is bounded by the process table) and its current
//!   result is sent once the next connection has registered: a server restart
//!   loses no termination.
//! - Requests are served concurrently (a slow result does not hold up a
//!   signal), each reaching the agent in the order it arrived; but one
//!   `ProcFdDataRequest` at a time, as its reply holds its whole range: what
//!   comes after one waits, read and queued in order, until its reply is sent.

use super::{Reply, decode_msgpack, encode_msgpack_split, serve};
use crate::spec::ProcId;
use crate::supervisor::{Event, Handle, ShutdownState, Subscription};
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// How long the server has to answer `Register` with `Registered`.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the agent pings the server.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// How long a TCP + TLS + WebSocket handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a write may wait for the server to take it before the
/// connection is dropped (and redialled).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests served at once on one connection; past it, reading waits.
pub const MAX_IN_FLIGHT: usize = 1024;
/// `ProcFdDataRequest`s served at once on one connection (one, as Procstar
/// serves every request): each reply holds
/// its whole range (a capture can be gigabytes), so past this, reading waits
/// until one is sent. Ten requests for a 200 MiB capture to a server slow to
/// read took the agent to 2 GB with only [`MAX_IN_FLIGHT`] as the bound.
pub const MAX_FD_DATA_IN_FLIGHT: usize = 1;
/// How long, once every process has ended in a terminate or kill shutdown,
/// the server has to delete them before the agent says done.
pub const DELETE_GRACE: Duration = Duration::from_secs(5);
/// The largest message (and frame) read: as large as an HTTP request body.
/// A larger one cannot be skipped, so it ends the connection; the next one
/// begins with a `RequestError` saying why.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct WsConfig {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// The agent's group.
    pub group_id: String,
    /// The connection id, stable across reconnects.
    pub conn_id: String,
    /// First reconnect interval.
    pub interval_start: Duration,
    /// Factor between successive intervals.
    pub interval_mult: f64,
    /// Longest interval.
    pub interval_max: Duration,
    /// Consecutive failed attempts before giving up.
    pub count_max: u64,
    /// Redial when nothing has arrived for this long.
    pub read_timeout: Duration,
    /// Sent in `Register` (`PROCSTAR_AGENT_TOKEN`).
    pub access_token: String,
    /// An extra trusted root certificate, PEM (`PROCSTAR_AGENT_CERT`).
    pub cert: Option<PathBuf>,
    /// `--restrict-exe`, reported in `Register`.
    pub restricted_exe: Option<String>,
    /// Where the connection stands, for `GET /agent` and the status page.
    pub link: Link,
}

/// Where the agent's connection to its server stands, shared with readers
/// on the same runtime (`GET /agent`).
#[derive(Clone, Debug, Default)]
pub struct Link(Arc<std::sync::Mutex<LinkState>>);

/// A snapshot of [`Link`].
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LinkState {
    /// `wss://HOST:PORT/`.
    pub url: String,
    /// The agent's group and connection ids.
    pub group_id: String,
    /// The connection id.
    pub conn_id: String,
    /// `connecting`, `connected`, `disconnected`, `gave up` or `closed`.
    pub state: &'static str,
    /// When it entered that state (RFC 3339).
    pub since: String,
    /// Connections registered so far.
    pub connections: u64,
    /// Failed attempts since the last success.
    pub failures: u64,
    /// What the last failure was.
    pub last_error: Option<String>,
}

impl Link {
    /// A link to `cfg`'s server, not yet tried.
    pub fn new(host: &str, port: u16, group_id: &str, conn_id: &str) -> Link {
        let link = Link::default();
        link.update(|l| {
            l.url = format!("wss://{host}:{port}/");
            l.group_id = group_id.to_string();
            l.conn_id = conn_id.to_string();
        });
        link.set("connecting");
        link
    }

    /// The state now.
    pub fn get(&self) -> LinkState {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut LinkState)) {
        if let Ok(mut l) = self.0.lock() {
            f(&mut l);
        }
    }

    fn set(&self, state: &'static str) {
        self.update(|l| {
            if l.state != state {
                l.state = state;
                l.since = crate::supervisor::rfc3339(std::time::SystemTime::now());
            }
        });
    }
}

/// How the agent loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The agent shut down and told the server (`ShutDown` done).
    Done,
    /// `count_max` attempts in a row failed.
    GaveUp,
}

/// Why the TLS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The extra root certificate could not be read.
    #[error("cannot read PROCSTAR_AGENT_CERT {path}: {err}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What failed.
        err: String,
    },
    /// The root store or configuration could not be built.
    #[error("TLS setup: {0}")]
    Config(String),
}

/// The TLS client configuration: the system's roots plus `cert`.
pub fn tls_config(cert: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!("system root certificates: {e}");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!("system root certificates: {added} added, {ignored} ignored");
    let mut pinned = Vec::new();
    if let Some(path) = cert {
        let err = |err: String| TlsError::Cert {
            path: path.to_path_buf(),
            err,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no certificate in the file".into()));
        }
        for c in &certs {
            roots.add(c.clone()).map_err(|e| err(e.to_string()))?;
        }
        pinned = certs;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Config(e.to_string()))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { webpki, pinned }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Whether a subject alternative name as webpki shows it (`DnsName("x")`,
/// `IpAddress(1.2.3.4)` …) is of the kind of `server_name`.
fn same_kind(presented: &str, server_name: &rustls::pki_types::ServerName<'_>) -> bool {
    use rustls::pki_types::ServerName;
    match server_name {
        ServerName::DnsName(_) => presented.starts_with("DnsName("),
        ServerName::IpAddress(_) => presented.starts_with("IpAddress("),
        _ => true,
    }
}

/// The system's and `PROCSTAR_AGENT_CERT`'s roots, as webpki checks them;
/// and besides, a server whose certificate is exactly one of
/// `PROCSTAR_AGENT_CERT`'s, as OpenSSL (Procstar's TLS) takes it.
///
/// A self-signed certificate made the common way (`openssl req -x509`) has
/// `CA:TRUE`, and often no subject alternative name: webpki refuses it as a
/// server's (`CaUsedAsEndEntity`, or not valid for the name) where OpenSSL
/// takes it from its CA file, so a fleet that worked with Procstar would not
/// connect. Such a certificate given as `PROCSTAR_AGENT_CERT` is pinned: the
/// server must present exactly it and prove it holds its key (the handshake's
/// signature is checked as for any other); its dates and its subject
/// alternative names (if it has any) still count.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as E;
        let checked = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match checked {
            Err(rustls::Error::InvalidCertificate(
                E::Expired
                | E::ExpiredContext { .. }
                | E::NotValidYet
                | E::NotValidYetContext { .. }
                | E::Revoked,
            )) => checked,
            Err(e)
                if self
                    .pinned
                    .iter()
                    .any(|c| c.as_ref() == end_entity.as_ref()) =>
            {
                // Its name still counts, as for OpenSSL: a subject
                // alternative name must match; with none, OpenSSL would read
                // the CN, which webpki cannot, and the exact certificate
                // stands for it.
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                let named = match rustls::client::verify_server_name(&parsed, server_name) {
                    // Only names of the kind asked for count (a DNS name
                    // for a host name), as for OpenSSL's X509_check_host.
                    Err(rustls::Error::InvalidCertificate(E::NotValidForNameContext {
                        presented,
                        ..
                    })) if !presented.iter().any(|n| same_kind(n, server_name)) => Ok(()),
                    other => other,
                };
                named.map(|()| {
                    tracing::debug!(
                        "the server's certificate is PROCSTAR_AGENT_CERT's own: taken as pinned ({e})"
                    );
                    rustls::client::danger::ServerCertVerified::assertion()
                })
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An entry of a connection's output: a request's replies, or the
/// notifications for a batch of events with the shutdown states it saw.
enum Out {
    Replies(Vec<Reply>),
    Notes(Vec<Reply>, Vec<ShutdownState>),
}

/// What an entry of a connection's output not yet delivered was made from.
enum Entry {
    /// A request's replies (lost with the connection, as the request is).
    Reply,
    /// A `ProcFdDataRequest`'s: counted against [`MAX_FD_DATA_IN_FLIGHT`].
    FdData,
    /// Notifications, from these events: owed to the next connection if this
    /// one is lost before they are sent.
    Notes(Vec<Event>),
}

/// What came in on a connection and waits behind an fd data request's reply,
/// in order.
enum Waiting {
    /// A request, read.
    Msg(super::Decoded),
    /// A reply made at once (to a text frame).
    Reply(Reply),
    /// Events, whose notifications go out after what came before them.
    Events(Vec<Event>),
}

/// What is owed to the server once a connection is up.
#[derive(Default)]
struct Owed {
    /// Processes whose result changed while no connection was up.
    results: BTreeSet<ProcId>,
    /// Every process's result (after missed events).
    all: bool,
}

/// The agent's side of the protocol across connections.
struct Agent {
    handle: Handle,
    cfg: WsConfig,
    tls: Arc<rustls::ClientConfig>,
    events: Subscription,
    state: ShutdownState,
    owed: Owed,
    /// When the shutdown state became done in the core: the server then has
    /// [`DELETE_GRACE`] to delete what is left.
    done_at: Option<Instant>,
    /// Why the last connection was ended by a message too large to read,
    /// told first on the next one.
    too_large: Option<String>,
}

/// Runs the agent until it shuts down or gives up. `events` must have been
/// subscribed before any process was started, so that none is missed.
pub async fn run(
    handle: Handle,
    events: Subscription,
    cfg: WsConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Outcome {
    let mut agent = Agent {
        handle,
        cfg,
        tls,
        events,
        state: ShutdownState::Active,
        owed: Owed::default(),
        done_at: None,
        too_large: None,
    };
    agent.run().await
}

/// What a wait between connections ended with.
enum Woke<T> {
    Ready(T),
    /// The agent is done: stop trying.
    Done,
}

impl Agent {
    async fn run(&mut self) -> Outcome {
        let outcome = self.run_links().await;
        self.cfg.link.set(match outcome {
            Outcome::Done => "closed",
            Outcome::GaveUp => "gave up",
        });
        outcome
    }

    async fn run_links(&mut self) -> Outcome {
        let mut failures: u64 = 0;
        let mut interval = self.cfg.interval_start;
        loop {
            self.cfg.link.set("connecting");
            let attempt = {
                let (handle, cfg) = (self.handle.clone(), self.cfg.clone());
                let (tls, state) = (self.tls.clone(), self.state);
                let connect = async move { connect_and_register(&handle, &cfg, tls, state).await };
                self.absorb_while(connect).await
            };
            let ws = match attempt {
                Woke::Done => return Outcome::Done,
                Woke::Ready(Ok(ws)) => ws,
                Woke::Ready(Err(e)) => {
                    failures += 1;
                    self.cfg.link.set("disconnected");
                    self.cfg.link.update(|l| {
                        l.failures = failures;
                        l.last_error = Some(e.to_string());
                    });
                    tracing::warn!(
                        "connecting to wss://{}:{}/ failed ({failures} in a row): {e}",
                        self.cfg.host,
                        self.cfg.port
                    );
                    if failures >= self.cfg.count_max {
                        tracing::error!("giving up after {failures} failed connections");
                        return Outcome::GaveUp;
                    }
                    if let Woke::Done = self.absorb_while(tokio::time::sleep(interval)).await {
                        return Outcome::Done;
                    }
                    interval = Duration::try_from_secs_f64(
                        interval.as_secs_f64() * self.cfg.interval_mult,
                    )
                    .unwrap_or(self.cfg.interval_max)
                    .min(self.cfg.interval_max);
                    continue;
                }
            };
            failures = 0;
            interval = self.cfg.interval_start;
            tracing::info!("registered with wss://{}:{}/", self.cfg.host, self.cfg.port);
            self.cfg.link.set("connected");
            self.cfg.link.update(|l| {
                l.connections += 1;
                l.failures = 0;
            });
            let done = self.connected(ws).await;
            self.cfg.link.set("disconnected");
            if done {
                return Outcome::Done;
            }
            // A server that takes the connection and drops it at once must
            // not make a tight loop.
            if let Woke::Done = self.absorb_while(tokio::time::sleep(interval)).await {
                return Outcome::Done;
            }
        }
    }

    /// Waits for `fut` while no connection is up, noting what the server will
    /// be owed.
    async fn absorb_while<T>(&mut self, fut: impl std::future::Future<Output = T>) -> Woke<T> {
        tokio::pin!(fut);
        loop {
            // With no server to tell, a done agent stops at once.
            if self.done_at.is_some() {
                return Woke::Done;
            }
            tokio::select! {
                r = &mut fut => return Woke::Ready(r),
                e = self.events.event() => match e {
                    Some(Event::Missed(n)) => {
                        // A missed shutdown change would never come again.
                        self.owe(Event::Missed(n));
                        let s = self.handle.shutdown_state().await;
                        self.shutdown_state(s);
                    }
                    Some(e) => self.owe(e),
                    None => return Woke::Done,
                },
            }
        }
    }

    /// Notes an event that no connection can carry now.
    fn owe(&mut self, e: Event) {
        match e {
            Event::Started(id) | Event::Exited(id) => {
                self.owed.results.insert(id);
            }
            // The next `Register`'s ids tell the server.
            Event::Deleted(id) => {
                self.owed.results.remove(&id);
            }
            Event::Compressed(..) => {}
            Event::Missed(_) => self.owed.all = true,
            Event::Shutdown(s) => self.shutdown_state(s),
        }
    }

    fn shutdown_state(&mut self, s: ShutdownState) {
        if s == ShutdownState::Done {
            self.done_at.get_or_insert_with(Instant::now);
        } else {
            self.state = s;
        }
    }

    /// Serves one registered connection; true once the agent is done.
    ///
    /// Replies and notifications go out in one order, the order their
    /// requests and events came in: a result asked for while a process ran
    /// never follows the notice that it ended, and nothing about a process
    /// follows its `ProcDelete`. At most [`MAX_IN_FLIGHT`] requests are
    /// served at once; past that the connection is not read.
    async fn connected(&mut self, ws: Ws) -> bool {
        let mut pending = VecDeque::new();
        let mut waiting = VecDeque::new();
        let done = self.serve_link(ws, &mut pending, &mut waiting).await;
        if !done {
            // The connection went with events whose notifications were not
            // sent (or not yet made): what they say is owed to the next one
            // as if no connection had been up, so that no result and no
            // shutdown state (a `done` above all) is lost.
            let unsent = pending.into_iter().filter_map(|e| match e {
                Entry::Notes(events) => Some(events),
                _ => None,
            });
            let unmade = waiting.into_iter().filter_map(|w| match w {
                Waiting::Events(events) => Some(events),
                _ => None,
            });
            let mut missed = false;
            for e in unsent.chain(unmade).flatten() {
                missed |= matches!(e, Event::Missed(_));
                self.owe(e);
            }
            if missed {
                // A shutdown change in the gap would never come again.
                let s = self.handle.shutdown_state().await;
                self.shutdown_state(s);
            }
        }
        done
    }

    /// Moves what waits to the output, in order, up to the first
    /// `ProcFdDataRequest` that must wait for another's reply to be sent.
    fn admit(
        &mut self,
        waiting: &mut VecDeque<Waiting>,
        pending: &mut VecDeque<Entry>,
        out: &mut FuturesOrdered<Pin<Box<dyn Future<Output = Out> + Send>>>,
    ) {
        while let Some(w) = waiting.front() {
            let fd_data = matches!(
                w,
                Waiting::Msg(m) if matches!(m.request, Ok(super::Request::ProcFdDataRequest { .. }))
            );
            if fd_data
                && pending
                    .iter()
                    .filter(|e| matches!(e, Entry::FdData))
                    .count()
                    >= MAX_FD_DATA_IN_FLIGHT
            {
                return;
            }
            match waiting.pop_front() {
                Some(Waiting::Msg(msg)) => {
                    pending.push_back(if fd_data { Entry::FdData } else { Entry::Reply });
                    let call = serve(&self.handle, msg);
                    out.push_back(Box::pin(async move { Out::Replies(call.await) }));
                }
                Some(Waiting::Reply(reply)) => {
                    pending.push_back(Entry::Reply);
                    out.push_back(Box::pin(std::future::ready(Out::Replies(vec![reply]))));
                }
                Some(Waiting::Events(batch)) => {
                    pending.push_back(Entry::Notes(batch.clone()));
                    out.push_back(self.notes(batch));
                }
                None => return,
            }
        }
    }

    /// [`Agent::connected`]'s loop. `pending` has an entry per entry of the
    /// output not yet delivered, in order (see [`Entry`]); `waiting`, what
    /// came in behind an fd data request, not yet served.
    async fn serve_link(
        &mut self,
        mut ws: Ws,
        pending: &mut VecDeque<Entry>,
        waiting: &mut VecDeque<Waiting>,
    ) -> bool {
        let mut out: FuturesOrdered<Pin<Box<dyn Future<Output = Out> + Send>>> =
            FuturesOrdered::new();
        let mut deadline = Instant::now() + self.cfg.read_timeout;
        // Pongs count as reads: pinging at half the read timeout keeps an
        // idle connection up however short the timeout is.
        let every = PING_INTERVAL
            .min(self.cfg.read_timeout / 2)
            .max(Duration::from_millis(100));
        let mut ping = tokio::time::interval_at(Instant::now() + every, every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        // Why the last connection ended, if a message ended it.
        if let Some(why) = self.too_large.take() {
            pending.push_back(Entry::Reply);
            out.push_back(Box::pin(std::future::ready(Out::Replies(vec![
                Reply::unreadable(why),
            ]))));
        }
        // First what the server missed while no connection was up.
        let owed = std::mem::take(&mut self.owed);
        let h = self.handle.clone();
        // Owed again if it is not delivered.
        let again = if owed.all {
            vec![Event::Missed(0)]
        } else {
            owed.results.iter().cloned().map(Event::Exited).collect()
        };
        pending.push_back(Entry::Notes(again));
        out.push_back(Box::pin(async move {
            let ids: Vec<ProcId> = if owed.all {
                h.proc_ids().await
            } else {
                owed.results.into_iter().collect()
            };
            Out::Replies(super::results(&h, ids).await)
        }));

        loop {
            if let Some(at) = self.done_at {
                let left = self.handle.proc_ids().await.len();
                if left == 0 || at.elapsed() >= DELETE_GRACE {
                    // What happened before the last answer (a deletion above
                    // all) is told first.
                    let batch: Vec<Event> = self.events.try_iter().collect();
                    if !batch.is_empty() {
                        waiting.push_back(Waiting::Events(batch));
                    }
                    self.admit(waiting, pending, &mut out);
                    while let Some(o) = out.next().await {
                        pending.pop_front();
                        if self.deliver(&mut ws, o).await.is_err() {
                            return true;
                        }
                        self.admit(waiting, pending, &mut out);
                    }
                    let done = Reply::ShutDown {
                        shutdown_state: ShutdownState::Done,
                    };
                    if self.send_all(&mut ws, vec![done]).await.is_ok() {
                        let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.close(None)).await;
                    }
                    return true;
                }
            }
            let grace = self.done_at.map(|at| at + DELETE_GRACE).unwrap_or(deadline);
            tokio::select! {
                biased;
                msg = ws.next(), if out.len() + waiting.len() < MAX_IN_FLIGHT => {
                    deadline = Instant::now() + self.cfg.read_timeout;
                    match msg {
                        Some(Ok(Message::Binary(frame))) => {
                            waiting.push_back(Waiting::Msg(decode_msgpack(&frame)));
                            self.admit(waiting, pending, &mut out);
                        }
                        Some(Ok(Message::Text(t))) => {
                            let reply = Reply::unreadable(format!(
                                "text frame ({} bytes): messages are binary MessagePack",
                                t.len()
                            ));
                            tracing::warn!("text frame from the server; answered with an error");
                            waiting.push_back(Waiting::Reply(reply));
                            self.admit(waiting, pending, &mut out);
                        }
                        Some(Ok(Message::Close(c))) => {
                            tracing::warn!("server closed the connection: {c:?}");
                            return false;
                        }
                        Some(Ok(_)) => {} // ping (answered by the stack), pong
                        Some(Err(e)) => {
                            tracing::warn!("connection failed: {e}");
                            if let tokio_tungstenite::tungstenite::Error::Capacity(c) = &e {
                                self.too_large = Some(format!(
                                    "a message was too large to read ({c}; at most {} MiB), \
                                     so the agent closed the connection it came on",
                                    MAX_MESSAGE >> 20
                                ));
                            }
                            return false;
                        }
                        None => {
                            tracing::warn!("connection ended");
                            return false;
                        }
                    }
                }
                Some(o) = out.next() => {
                    // Delivered or, when the send fails, owed by `deliver`.
                    pending.pop_front();
                    let began = Instant::now();
                    if self.deliver(&mut ws, o).await.is_err() {
                        return false;
                    }
                    // Nothing is read while a long reply (a large capture)
                    // is sent: the server's silence then is no sign of a
                    // dead link, until a ping has had time for its pong.
                    if began.elapsed() >= every {
                        deadline = deadline.max(Instant::now() + every);
                    }
                    self.admit(waiting, pending, &mut out);
                }
                e = self.events.event() => {
                    let Some(e) = e else { return true };
                    // Take every event waiting, so a burst costs one round trip.
                    let mut batch = vec![e];
                    batch.extend(self.events.try_iter());
                    // Behind what came in before it, as its notifications go.
                    waiting.push_back(Waiting::Events(batch));
                    self.admit(waiting, pending, &mut out);
                }
                _ = ping.tick() => {
                    let ping = ws.send(Message::Ping(Default::default()));
                    if !matches!(tokio::time::timeout(WRITE_TIMEOUT, ping).await, Ok(Ok(()))) {
                        return false;
                    }
                }
                _ = tokio::time::sleep_until(grace) => {
                    if self.done_at.is_none() {
                        tracing::warn!(
                            "nothing from the server for {:?}; reconnecting",
                            self.cfg.read_timeout
                        );
                        return false;
                    }
                }
            }
        }
    }

    /// The notifications for a batch of events, as an entry of the output.
    fn notes(&self, batch: Vec<Event>) -> Pin<Box<dyn Future<Output = Out> + Send>> {
        let h = self.handle.clone();
        Box::pin(async move {
            let (replies, states) = super::notifications(&h, batch).await;
            Out::Notes(replies, states)
        })
    }

    /// Sends one entry of the output.
    async fn deliver(&mut self, ws: &mut Ws, o: Out) -> Result<(), ()> {
        match o {
            Out::Replies(r) => self.send_all(ws, r).await,
            Out::Notes(r, states) => {
                for s in states {
                    self.shutdown_state(s);
                }
                self.send_all(ws, r).await
            }
        }
    }

    /// Sends `replies` in order; if any send fails, every process whose
    /// result was in the batch is owed to the next connection (a frame queued
    /// is not a frame delivered; a result sent twice does no harm).
    async fn send_all(&mut self, ws: &mut Ws, replies: Vec<Reply>) -> Result<(), ()> {
        let ids: Vec<ProcId> = replies
            .iter()
            .filter_map(|r| match r {
                Reply::ProcResult { proc_id, .. } => Some(proc_id.clone()),
                _ => None,
            })
            .collect();
        // Queued frame by frame, flushed once: a burst of a thousand results
        // is a few TLS records, not a thousand writes.
        let write = async {
            for r in &replies {
                feed_reply(ws, r).await?;
            }
            // The last frames may still be unsent: bounded too, or a peer
            // that stops reading would hold this link (no pings, no read
            // deadline) for good.
            match tokio::time::timeout(WRITE_TIMEOUT, ws.flush()).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(too_slow()),
            }
        };
        // A range read as it is sent may take longer than WRITE_TIMEOUT in
        // all; each of its pieces gets that long (`feed_reply`).
        let sent = if replies.iter().any(|r| streamed(r).is_some()) {
            write.await
        } else {
            match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(r) => r,
                Err(_) => Err(too_slow()),
            }
        };
        sent.map_err(|e| {
            tracing::warn!("sending failed: {e}");
            self.owed.results.extend(ids);
        })
    }
}

async fn send(ws: &mut Ws, reply: &Reply) -> Result<(), ()> {
    let sent = async {
        feed(ws, encode_msgpack_split(reply)).await?;
        ws.flush().await
    };
    sent.await
        .map_err(|e| tracing::warn!("sending failed: {e}"))
}

/// The bytes `reply` carries still to be read from a file, if any.
fn streamed(reply: &Reply) -> Option<&super::More> {
    match reply {
        Reply::ProcFdData { data, .. } => data.more.as_ref(),
        _ => None,
    }
}

fn too_slow() -> String {
    format!("the server took nothing for {WRITE_TIMEOUT:?}")
}

/// Queues `reply` as [`feed`] does. One whose payload has
/// [`super::Payload::more`] goes on as continuation frames read a piece at a
/// time, each piece read and queued within [`WRITE_TIMEOUT`]: a capture of
/// any size is sent holding one piece. A piece that cannot be read ends the
/// connection, since the message's length is already sent.
async fn feed_reply(ws: &mut Ws, reply: &Reply) -> Result<(), String> {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let Some(more) = streamed(reply) else {
        return feed(ws, encode_msgpack_split(reply))
            .await
            .map_err(|e| e.to_string());
    };
    let mut first = true;
    let mut queue = async |ws: &mut Ws, payloads: Vec<bytes::Bytes>, last: bool| {
        let n = payloads.len();
        for (i, p) in payloads.into_iter().enumerate() {
            let opcode = OpCode::Data(if first { Data::Binary } else { Data::Continue });
            first = false;
            let frame = Frame::message(p, opcode, last && i + 1 == n);
            match tokio::time::timeout(WRITE_TIMEOUT, ws.feed(Message::Frame(frame))).await {
                Ok(r) => r.map_err(|e| e.to_string())?,
                Err(_) => return Err(too_slow()),
            }
        }
        Ok(())
    };
    queue(ws, frames(encode_msgpack_split(reply), FRAGMENT), false).await?;
    let mut at = more.from;
    while at < more.to {
        let piece = match tokio::time::timeout(WRITE_TIMEOUT, more.piece(at)).await {
            Ok(p) => p?,
            Err(_) => return Err(format!("reading a capture took over {WRITE_TIMEOUT:?}")),
        };
        at += piece.len() as u64;
        queue(
            ws,
            frames((piece, bytes::Bytes::new()), FRAGMENT),
            at >= more.to,
        )
        .await?;
    }
    Ok(())
}

/// The largest frame sent: a larger message goes as a fragmented one.
const FRAGMENT: usize = 1 << 20;

/// Queues one binary message, the concatenation of `parts` (see
/// [`encode_msgpack_split`]). One larger than [`FRAGMENT`] (a whole
/// capture's data) goes as frames of that size, each queued once the last has
/// been written: the WebSocket library formats a frame whole into a write
/// buffer that keeps its capacity, so a 256 MiB message sent as one frame
/// left 256 MiB held for the connection's life. The peer reassembles it
/// (RFC 6455, 5.4); only control frames may come between fragments.
async fn feed(
    ws: &mut Ws,
    parts: (bytes::Bytes, bytes::Bytes),
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let frames = frames(parts, FRAGMENT);
    let last = frames.len() - 1;
    if last == 0 {
        let one = frames.into_iter().next().unwrap_or_default();
        return ws.feed(Message::Binary(one)).await;
    }
    for (i, payload) in frames.into_iter().enumerate() {
        let opcode = OpCode::Data(if i == 0 { Data::Binary } else { Data::Continue });
        ws.feed(Message::Frame(Frame::message(payload, opcode, i == last)))
            .await?;
    }
    Ok(())
}

/// The payloads of the frames, at most `size` bytes each, that carry the
/// concatenation of `head` and `tail` (at least one, though empty): a frame
/// within one part shares its bytes; only one that straddles them is copied.
fn frames((head, tail): (bytes::Bytes, bytes::Bytes), size: usize) -> Vec<bytes::Bytes> {
    let total = head.len() + tail.len();
    let mut out = Vec::with_capacity(total.div_ceil(size).max(1));
    let mut at = 0;
    loop {
        let end = total.min(at + size);
        out.push(if end <= head.len() {
            head.slice(at..end)
        } else if at >= head.len() {
            tail.slice(at - head.len()..end - head.len())
        } else {
            let mut v = Vec::with_capacity(end - at);
            v.extend_from_slice(&head[at..]);
            v.extend_from_slice(&tail[..end - head.len()]);
            v.into()
        });
        at = end;
        if at >= total {
            return out;
        }
    }
}

/// Dials the server, sends `Register` and waits for `Registered`.
async fn connect_and_register(
    handle: &Handle,
    cfg: &WsConfig,
    tls: Arc<rustls::ClientConfig>,
    state: ShutdownState,
) -> Result<Ws, String> {
    let host = if cfg.host.contains(':') && !cfg.host.starts_with('[') {
        format!("[{}]", cfg.host)
    } else {
        cfg.host.clone()
    };
    let url = format!("wss://{host}:{}/", cfg.port);
    let limits = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        Some(limits),
        true,
        Some(Connector::Rustls(tls)),
    );
    let (mut ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| {
            let e = e.to_string();
            if e.contains("invalid peer certificate") {
                // rustls names the check that failed, not what to do.
                format!(
                    "{e} (the server's certificate is not trusted: give it, or the CA \
                     that signed it, in PEM as PROCSTAR_AGENT_CERT)"
                )
            } else {
                e
            }
        })?;
    let register = Reply::Register {
        conn: super::ConnInfo {
            conn_id: cfg.conn_id.clone(),
            group_id: cfg.group_id.clone(),
            restricted_exe: cfg.restricted_exe.clone(),
        },
        proc: super::ProcInfo::current(),
        proc_ids: handle.proc_ids().await,
        access_token: cfg.access_token.clone(),
        // The agent's own, not what the events last said: they may have
        // been missed.
        shutdown_state: match handle.shutdown_state().await {
            ShutdownState::Done => state,
            s => s,
        },
    };
    send(&mut ws, &register)
        .await
        .map_err(|()| "sending Register failed".to_string())?;
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("no Registered within {REGISTER_TIMEOUT:?}"))?;
        match msg {
            Some(Ok(Message::Binary(frame))) => {
                return match decode_msgpack(&frame).request {
                    Ok(super::Request::Registered) => Ok(ws),
                    Ok(other) => Err(format!("expected Registered, got {other:?}")),
                    Err(e) => Err(format!("expected Registered: {e}")),
                };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(c))) => {
                return Err(format!("closed before Registered (a wrong token?): {c:?}"));
            }
            Some(Ok(other)) => return Err(format!("expected Registered, got {other:?}")),
            Some(Err(e)) => return Err(format!("before Registered: {e}")),
            None => return Err("closed before Registered (a wrong token?)".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::frames;
    use bytes::Bytes;

    #[test]
    fn frames_carry_both_parts_in_order_sharing_what_they_can() {
        let bytes = |n: usize, seed: u8| -> Bytes {
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect::<Vec<_>>()
                .into()
        };
        for (h, t) in [
            (0, 0),
            (3, 0),
            (0, 3),
            (10, 0),
            (4, 6),
            (10, 10),
            (7, 25),
            (25, 7),
            (3, 40),
        ] {
            let (head, tail) = (bytes(h, 1), bytes(t, 2));
            let got = frames((head.clone(), tail.clone()), 10);
            assert_eq!(got.len(), (h + t).div_ceil(10).max(1), "{h}+{t}");
            assert!(got.iter().all(|f| f.len() <= 10), "{h}+{t}");
            assert!(
                got[..got.len() - 1].iter().all(|f| f.len() == 10),
                "{h}+{t}"
            );
            assert_eq!(got.concat(), [&head[..], &tail[..]].concat(), "{h}+{t}");
            // A frame that starts past the head is a view of the tail.
            let tail_range = tail.as_ptr_range();
            for (i, f) in got.iter().enumerate() {
                if i * 10 >= h && !f.is_empty() {
                    assert!(
                        tail_range.contains(&f.as_ptr()),
                        "{h}+{t}: frame {i} copied"
                    );
                }
            }
        }
    }
}
