//! The load generator behind the perf gate (DESIGN.md 1.10).
//!
//! HTTP/1.1 over keep-alive connections, in one of two modes:
//! - closed loop: each connection sends its next request when the last one
//!   is answered, as `wrk` does;
//! - open loop: requests are due at fixed intervals and each one's latency
//!   is measured from when it was due, not from when a connection got round
//!   to sending it, as `wrk2` does. A stalled server then shows in the
//!   figures with every request it kept waiting, instead of hiding behind
//!   the requests it kept from being sent (coordinated omission).
//!
//! For speed the connections run on one OS thread per core (no more threads
//! than connections), each thread a current-thread tokio runtime: no work
//! stealing and no cross-thread wake-ups. Each connection's hyper dispatcher
//! is polled in the same task as its requests, and each thread records into
//! its own histogram, merged at the end: no locks on the hot path.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::HOST;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use url::{Host, Url};

/// The longest latency told apart (one hour); longer ones count as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant figures of the latency histograms.
const SIGNIFICANT_FIGURES: u8 = 3;
/// The open loop wakes this long before a request is due: tokio's timer
/// fires on whole milliseconds, after the deadline, which would add up to a
/// millisecond of the generator's own to every latency. A request sent a
/// little early is measured from when it was sent, never from before.
const TIMER_LEAD: Duration = Duration::from_millis(1);
/// Pause after a failed connect in the closed loop, so an unreachable target
/// costs some errors a second rather than a spinning core.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// The request sent over and over.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub method: Method,
    /// `http://` or `https://`; the path and query are sent, the host and
    /// port are connected to and sent as `Host` (unless `headers` has one).
    pub url: Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl LoadRequest {
    /// A `GET` of `url` without extra headers.
    pub fn get(url: Url) -> Self {
        Self {
            method: Method::GET,
            url,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
}

/// What load to drive, for how long.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub request: LoadRequest,
    /// The measured period, after the warm-up.
    pub duration: Duration,
    /// Sent but excluded from every figure: requests due (open loop) or sent
    /// (closed loop) before it ends.
    pub warmup: Duration,
    /// Connections: each one a worker in the closed loop, and the most
    /// requests in flight in the open loop.
    pub concurrency: usize,
    /// `Some(r)`: open loop, `r` requests per second. `None`: closed loop.
    pub rate: Option<f64>,
    /// A request not answered (body included) within it is an error, and so
    /// is a connection not made within it.
    pub request_timeout: Duration,
    /// `https` without checking the certificate (self-signed test gateways).
    pub insecure: bool,
}

impl LoadSpec {
    /// A closed loop of `concurrency` connections for `duration`, no
    /// warm-up, a 10 s request timeout and verified certificates.
    pub fn closed(request: LoadRequest, duration: Duration, concurrency: usize) -> Self {
        Self {
            request,
            duration,
            warmup: Duration::ZERO,
            concurrency,
            rate: None,
            request_timeout: Duration::from_secs(10),
            insecure: false,
        }
    }
}

/// The figures of one run, over the measured period only.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Requests answered or failed (errors included).
    pub requests: u64,
    /// Requests answered with a status other than 2xx, failed on their
    /// connection, or not answered within the request timeout.
    pub errors: u64,
    /// Open loop only: requests due during the run but never sent because
    /// every connection was still busy when it ended. Not in `requests`;
    /// their wait until the end is in the latencies, as a lower bound.
    pub missed: u64,
    /// The measured period (`LoadSpec::duration`).
    pub duration: Duration,
    /// Successful (2xx) requests per second of the measured period.
    pub tps: f64,
    /// Latency percentiles of every answered request (any status), every
    /// timed-out one (its wait until the timeout) and every missed one.
    /// Open loop: from when each request was due (or was sent, if that was
    /// a little earlier).
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// `errors / requests` (0 when nothing was sent).
    pub error_rate: f64,
    /// The first error of the measured period, e.g. `HTTP 503`, for a
    /// failure message.
    pub first_error: Option<String>,
}

/// Why a run could not be made at all. Failures of single requests are not
/// errors of the run: they are counted in [`LoadReport::errors`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid load: {0}")]
    Invalid(String),
    #[error("{url}: unsupported scheme `{scheme}` (http or https)")]
    Scheme { url: String, scheme: String },
    #[error("{url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: ConnectError },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot start the load threads: {0}")]
    Threads(String),
    #[error("latency histogram: {0}")]
    Histogram(String),
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TCP: {0}")]
    Tcp(io::Error),
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    #[error("HTTP/1.1 handshake: {0}")]
    Handshake(hyper::Error),
    #[error("no connection within {0:?}")]
    Timeout(Duration),
}

/// Limits a report must meet; `None` checks nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    pub min_tps: Option<f64>,
    pub max_p95: Option<Duration>,
    pub max_p99: Option<Duration>,
    pub max_error_rate: Option<f64>,
}

/// One threshold a report did not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `min_tps`, `max_p95`, `max_p99` or `max_error_rate`.
    pub name: &'static str,
    /// E.g. `min_tps: 412.3 tps < 750`.
    pub message: String,
}

impl Thresholds {
    /// The thresholds `report` does not meet, in the order above. A run that
    /// measured no request meets none of them: no figure stands for it.
    pub fn failed(&self, report: &LoadReport) -> Vec<Failure> {
        let mut failed = Vec::new();
        let mut fail = |name, message: String| {
            failed.push(Failure {
                name,
                message: format!("{name}: {message}"),
            })
        };
        let nothing = report.requests == 0;
        if let Some(min) = self.min_tps {
            if nothing || report.tps < min {
                fail("min_tps", format!("{:.1} tps < {min}", report.tps));
            }
        }
        for (name, max, actual, label) in [
            ("max_p95", self.max_p95, report.p95, "p95"),
            ("max_p99", self.max_p99, report.p99, "p99"),
        ] {
            let Some(max) = max else { continue };
            if nothing {
                fail(name, format!("no request measured, no {label}"));
            } else if actual > max {
                fail(name, format!("{label} {} > {}", ms(actual), ms(max)));
            }
        }
        if let Some(max) = self.max_error_rate {
            if nothing {
                fail("max_error_rate", "no request measured".to_owned());
            } else if report.error_rate > max {
                fail(
                    "max_error_rate",
                    format!(
                        "error rate {:.4} > {max} ({} of {})",
                        report.error_rate, report.errors, report.requests
                    ),
                );
            }
        }
        failed
    }
}

/// `200 ms`, `12.5 ms`.
fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms.fract() == 0.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// Drives the load `spec` describes and measures it.
///
/// One connection is made first: a target that cannot be reached at all is
/// an error, not a report full of errors. Dropping the future stops the
/// load threads.
pub async fn run_load(spec: &LoadSpec) -> Result<LoadReport, LoadError> {
    validate(spec)?;
    let target = Arc::new(Target::new(spec).await?);
    target
        .connect()
        .await
        .map_err(|reason| LoadError::Connect {
            url: target.url.clone(),
            reason,
        })?;

    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(spec.concurrency);
    let start = Instant::now();
    let (Some(measure_from), Some(end)) = (
        start.checked_add(spec.warmup),
        start.checked_add(spec.warmup.saturating_add(spec.duration)),
    ) else {
        return Err(LoadError::Invalid(
            "warmup and duration are too long".into(),
        ));
    };
    let plan = Arc::new(Plan {
        start,
        measure_from,
        end,
        rate: spec.rate,
        slots: AtomicU64::new(0),
    });
    // Dropped when this future ends or is dropped: the threads then stop.
    let (_running, stopped) = watch::channel(());
    let mut results = Vec::with_capacity(threads);
    for index in 0..threads {
        let connections =
            spec.concurrency / threads + usize::from(index < spec.concurrency % threads);
        results.push(spawn_thread(
            index,
            connections,
            Stats::new()?,
            target.clone(),
            plan.clone(),
            stopped.clone(),
        )?);
    }
    let mut total = Stats::new()?;
    for result in results {
        let stats = result
            .await
            .map_err(|_| LoadError::Threads("a load thread ended without its figures".into()))?
            .map_err(LoadError::Threads)?;
        total.merge(stats)?;
    }
    if let Some(rate) = spec.rate {
        total.record_missed(&plan, rate);
    }
    let report = total.report(spec.duration);
    tracing::debug!(
        url = %target.url,
        requests = report.requests,
        errors = report.errors,
        tps = report.tps,
        "load run finished"
    );
    Ok(report)
}

fn validate(spec: &LoadSpec) -> Result<(), LoadError> {
    let invalid = |m: &str| Err(LoadError::Invalid(m.to_owned()));
    if spec.concurrency == 0 {
        return invalid("concurrency must be at least 1");
    }
    if spec.duration.is_zero() {
        return invalid("duration must be longer than zero");
    }
    if spec.request_timeout.is_zero() {
        return invalid("request_timeout must be longer than zero");
    }
    // Every instant of the run (its end, a request's deadline) must exist.
    let horizon = spec
        .warmup
        .checked_add(spec.duration)
        .and_then(|d| d.checked_add(spec.request_timeout.checked_mul(2)?));
    if horizon
        .and_then(|h| Instant::now().checked_add(h))
        .is_none()
    {
        return invalid("warmup, duration and request_timeout are too long");
    }
    if let Some(rate) = spec.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(LoadError::Invalid(format!(
                "rate must be a positive number of requests per second, not {rate}"
            )));
        }
    }
    Ok(())
}

/// Where and what to send, shared by every connection.
struct Target {
    url: String,
    addrs: Vec<SocketAddr>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    method: Method,
    /// Origin form (path and query): hyper sends the URI as given.
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
}

impl Target {
    async fn new(spec: &LoadSpec) -> Result<Self, LoadError> {
        let url = &spec.request.url;
        let bad = |reason: &str| LoadError::BadUrl {
            url: url.to_string(),
            reason: reason.to_owned(),
        };
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            scheme => {
                return Err(LoadError::Scheme {
                    url: url.to_string(),
                    scheme: scheme.to_owned(),
                })
            }
        };
        let (Some(host), Some(host_str), Some(port)) =
            (url.host(), url.host_str(), url.port_or_known_default())
        else {
            return Err(bad("no host"));
        };
        let addrs = match host {
            Host::Ipv4(ip) => vec![SocketAddr::from((ip, port))],
            Host::Ipv6(ip) => vec![SocketAddr::from((ip, port))],
            Host::Domain(name) => {
                let resolve = |reason: String| LoadError::Resolve {
                    host: name.to_owned(),
                    reason,
                };
                let addrs: Vec<SocketAddr> = tokio::time::timeout(
                    spec.request_timeout,
                    tokio::net::lookup_host((name, port)),
                )
                .await
                .map_err(|_| resolve(format!("no answer within {:?}", spec.request_timeout)))?
                .map_err(|e| resolve(e.to_string()))?
                .collect();
                if addrs.is_empty() {
                    return Err(resolve("no address".into()));
                }
                addrs
            }
        };
        let tls = if https {
            let server_name = match host {
                Host::Ipv4(ip) => ServerName::from(IpAddr::V4(ip)),
                Host::Ipv6(ip) => ServerName::from(IpAddr::V6(ip)),
                Host::Domain(name) => ServerName::try_from(name.to_owned())
                    .map_err(|e| bad(&format!("not a TLS server name: {e}")))?,
            };
            Some((tls_connector(spec.insecure)?, server_name))
        } else {
            None
        };

        let path_and_query = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let uri = Uri::try_from(path_and_query).map_err(|e| bad(&e.to_string()))?;

        let mut headers = HeaderMap::with_capacity(spec.request.headers.len() + 1);
        if !spec.request.headers.iter().any(|(name, _)| name == HOST) {
            // `Url` leaves the port out when it is the scheme's default.
            let authority = match url.port() {
                Some(port) => format!("{host_str}:{port}"),
                None => host_str.to_owned(),
            };
            let value = HeaderValue::try_from(authority).map_err(|e| bad(&e.to_string()))?;
            headers.insert(HOST, value);
        }
        for (name, value) in &spec.request.headers {
            headers.append(name.clone(), value.clone());
        }
        Ok(Self {
            url: url.to_string(),
            addrs,
            tls,
            method: spec.request.method.clone(),
            uri,
            headers,
            body: spec.request.body.clone(),
            timeout: spec.request_timeout,
        })
    }

    /// The request, from parts that are cheap to clone (the body is shared).
    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }

    async fn connect(&self) -> Result<Stream, ConnectError> {
        tokio::time::timeout(self.timeout, self.connect_once())
            .await
            .unwrap_or(Err(ConnectError::Timeout(self.timeout)))
    }

    async fn connect_once(&self) -> Result<Stream, ConnectError> {
        let mut last = None;
        for addr in &self.addrs {
            let tcp = match TcpStream::connect(addr).await {
                Ok(tcp) => tcp,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            // Requests are single small writes: don't hold them back.
            tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
            return match &self.tls {
                None => Ok(Stream::Plain(tcp)),
                Some((connector, name)) => connector
                    .connect(name.clone(), tcp)
                    .await
                    .map(|tls| Stream::Tls(Box::new(tls)))
                    .map_err(ConnectError::Tls),
            };
        }
        Err(ConnectError::Tcp(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no address to connect to")
        })))
    }

    async fn open(&self) -> Result<Connection, ConnectError> {
        let stream = self.connect().await?;
        http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)
    }
}

type Connection = (
    http1::SendRequest<Full<Bytes>>,
    http1::Connection<TokioIo<Stream>, Full<Bytes>>,
);

fn tls_connector(insecure: bool) -> Result<TlsConnector, LoadError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `insecure`: accepts any certificate, yet still checks the handshake's
/// signatures so the session is at least with the certificate's key holder.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A plain or TLS connection, one type for hyper.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// When requests are due, shared by every connection of a run.
struct Plan {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    rate: Option<f64>,
    /// Open loop: the next slot not yet taken by a connection.
    slots: AtomicU64,
}

enum Next {
    /// Closed loop: send now.
    Now,
    /// Open loop: the request was due then (about now, or earlier).
    Due(Instant),
    Stop,
}

impl Plan {
    /// Open loop: when slot `i` is due, if before the end.
    fn slot(&self, i: u64, rate: f64) -> Option<Instant> {
        let offset = Duration::try_from_secs_f64(i as f64 / rate).ok()?;
        self.start.checked_add(offset).filter(|at| *at < self.end)
    }

    /// The next request to send, waiting for its slot in the open loop. No
    /// new request starts after the end, even one overdue.
    async fn next(&self) -> Next {
        if Instant::now() >= self.end {
            return Next::Stop;
        }
        let Some(rate) = self.rate else {
            return Next::Now;
        };
        let Some(due) = self.slot(self.slots.fetch_add(1, Ordering::Relaxed), rate) else {
            return Next::Stop;
        };
        if let Some(wake) = due.checked_sub(TIMER_LEAD) {
            if wake > Instant::now() {
                tokio::time::sleep_until(wake.into()).await;
            }
        }
        Next::Due(due)
    }
}

/// One thread's figures (and, merged, the run's).
struct Stats {
    latencies: Histogram<u64>,
    requests: u64,
    successes: u64,
    errors: u64,
    missed: u64,
    /// The earliest error and when it happened.
    first_error: Option<(Instant, String)>,
}

enum Outcome<'a> {
    Answered(StatusCode),
    TimedOut(Duration),
    Failed(&'a dyn std::error::Error),
}

impl Stats {
    fn new() -> Result<Self, LoadError> {
        let latencies = Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_FIGURES)
            .map_err(|e| LoadError::Histogram(e.to_string()))?;
        Ok(Self {
            latencies,
            requests: 0,
            successes: 0,
            errors: 0,
            missed: 0,
            first_error: None,
        })
    }

    /// A request due (open loop) or sent (closed loop) at `at`, whose
    /// latency runs from `start` to `end`.
    fn record(
        &mut self,
        plan: &Plan,
        at: Instant,
        (start, end): (Instant, Instant),
        outcome: Outcome<'_>,
    ) {
        if at < plan.measure_from {
            return;
        }
        self.requests += 1;
        let micros = end.saturating_duration_since(start).as_micros();
        let micros = u64::try_from(micros).unwrap_or(u64::MAX);
        match outcome {
            Outcome::Answered(status) => {
                self.latencies.saturating_record(micros);
                if status.is_success() {
                    self.successes += 1;
                } else {
                    self.error(end, || format!("HTTP {}", status.as_u16()));
                }
            }
            Outcome::TimedOut(timeout) => {
                self.latencies.saturating_record(micros);
                self.error(end, || format!("no answer within {timeout:?}"));
            }
            Outcome::Failed(error) => self.error(end, || error_chain(error)),
        }
    }

    fn error(&mut self, at: Instant, message: impl FnOnce() -> String) {
        self.errors += 1;
        // Formatted once per thread, not on every error.
        if self.first_error.is_none() {
            self.first_error = Some((at, message()));
        }
    }

    /// Open-loop slots due before the end that no connection took: each
    /// waited at least until the end.
    fn record_missed(&mut self, plan: &Plan, rate: f64) {
        let mut i = plan.slots.load(Ordering::Relaxed);
        while let Some(due) = plan.slot(i, rate) {
            if due >= plan.measure_from {
                self.missed += 1;
                let micros = plan.end.saturating_duration_since(due).as_micros();
                self.latencies
                    .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
            }
            i += 1;
        }
    }

    fn merge(&mut self, other: Stats) -> Result<(), LoadError> {
        self.latencies
            .add(&other.latencies)
            .map_err(|e| LoadError::Histogram(format!("{e:?}")))?;
        self.requests += other.requests;
        self.successes += other.successes;
        self.errors += other.errors;
        self.missed += other.missed;
        if let Some((at, message)) = other.first_error {
            if self
                .first_error
                .as_ref()
                .is_none_or(|(first, _)| at < *first)
            {
                self.first_error = Some((at, message));
            }
        }
        Ok(())
    }

    fn report(self, duration: Duration) -> LoadReport {
        let h = &self.latencies;
        let at = |q: f64| Duration::from_micros(h.value_at_quantile(q));
        LoadReport {
            requests: self.requests,
            errors: self.errors,
            missed: self.missed,
            duration,
            tps: self.successes as f64 / duration.as_secs_f64(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: Duration::from_micros(h.max()),
            error_rate: if self.requests == 0 {
                0.0
            } else {
                self.errors as f64 / self.requests as f64
            },
            first_error: self.first_error.map(|(_, message)| message),
        }
    }
}

/// `connection error: Connection reset by peer (os error 104)`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        message.push_str(": ");
        message.push_str(&e.to_string());
        source = e.source();
    }
    message
}

/// Runs `connections` connections on a thread of its own with a
/// current-thread runtime; its figures come back through the receiver.
fn spawn_thread(
    index: usize,
    connections: usize,
    stats: Stats,
    target: Arc<Target>,
    plan: Arc<Plan>,
    mut stopped: watch::Receiver<()>,
) -> Result<oneshot::Receiver<Result<Stats, String>>, LoadError> {
    let (tx, rx) = oneshot::channel();
    let run = move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let stats = Rc::new(RefCell::new(stats));
        let local = tokio::task::LocalSet::new();
        let panicked = local.block_on(&runtime, async {
            let tasks: Vec<_> = (0..connections)
                .map(|_| {
                    tokio::task::spawn_local(connection(
                        target.clone(),
                        plan.clone(),
                        stats.clone(),
                    ))
                })
                .collect();
            let all = async {
                let mut panicked = false;
                for task in tasks {
                    panicked |= task.await.is_err();
                }
                panicked
            };
            tokio::select! {
                panicked = all => panicked,
                // The run was dropped: nobody waits for the figures.
                _ = stopped.changed() => false,
            }
        });
        // Drops the connections' tasks and with them their share of `stats`.
        drop(local);
        if panicked {
            return Err("a load connection panicked".to_owned());
        }
        Rc::try_unwrap(stats)
            .map(RefCell::into_inner)
            .map_err(|_| "the figures are still in use".to_owned())
    };
    std::thread::Builder::new()
        .name(format!("gantry-load-{index}"))
        .spawn(move || {
            // The receiver is gone only when the run was dropped.
            let _ = tx.send(run());
        })
        .map_err(|e| LoadError::Threads(e.to_string()))?;
    Ok(rx)
}

/// One connection's life: connect, send until the run ends, reconnect when
/// the server closes the connection or it fails.
async fn connection(target: Arc<Target>, plan: Arc<Plan>, stats: Rc<RefCell<Stats>>) {
    // An open-loop request taken but not sent because its connection had
    // closed: the next connection sends it, still late from when it was due.
    let mut pending = None;
    loop {
        let (mut sender, conn) = match target.open().await {
            Ok(connection) => connection,
            Err(error) => {
                // The request this connection was for fails.
                let due = match pending.take() {
                    Some(due) => Some(due),
                    None => match plan.next().await {
                        Next::Stop => return,
                        Next::Now => None,
                        Next::Due(due) => Some(due),
                    },
                };
                let now = Instant::now();
                let start = due.map_or(now, |due| due.min(now));
                let at = due.unwrap_or(now);
                let outcome = Outcome::Failed(&error);
                stats.borrow_mut().record(&plan, at, (start, now), outcome);
                if due.is_none() {
                    tokio::time::sleep(CONNECT_BACKOFF).await;
                }
                continue;
            }
        };
        let work = send_all(&mut sender, &target, &plan, &stats, &mut pending);
        if let Exit::Done = drive(conn, work).await {
            return;
        }
    }
}

enum Exit {
    Done,
    Reconnect,
}

/// Sends requests on one connection until the run ends or the connection
/// is no longer usable.
async fn send_all(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    target: &Target,
    plan: &Plan,
    stats: &RefCell<Stats>,
    pending: &mut Option<Instant>,
) -> Exit {
    // One timer for every request on the connection, armed for the first
    // and moved on only when it fires early: re-arming it per request would
    // cost a timer-wheel insertion and removal each time.
    let mut watchdog = pin!(tokio::time::sleep(target.timeout));
    loop {
        let due = match pending.take() {
            Some(due) => Some(due),
            None => match plan.next().await {
                Next::Stop => return Exit::Done,
                Next::Now => None,
                Next::Due(due) => Some(due),
            },
        };
        if sender.ready().await.is_err() {
            // Closed between requests (the server ended keep-alive): not this
            // request's failure, it goes out on a new connection.
            *pending = due;
            return Exit::Reconnect;
        }
        let sent = Instant::now();
        let deadline = sent + target.timeout;
        let mut exchange = pin!(exchange(sender, target.request()));
        let result = poll_fn(|cx| {
            if let Poll::Ready(result) = exchange.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            while watchdog.as_mut().poll(cx).is_ready() {
                if Instant::now() >= deadline {
                    return Poll::Ready(None);
                }
                // Armed for an earlier request: on to this one's deadline.
                watchdog.as_mut().reset(deadline.into());
            }
            Poll::Pending
        })
        .await;
        let end = Instant::now();
        // Late (every connection was busy): measured from when it was due.
        let span = (due.map_or(sent, |due| due.min(sent)), end);
        let at = due.unwrap_or(sent);
        let mut stats = stats.borrow_mut();
        match result {
            Some(Ok(status)) => stats.record(plan, at, span, Outcome::Answered(status)),
            Some(Err(error)) => {
                stats.record(plan, at, span, Outcome::Failed(&error));
                return Exit::Reconnect;
            }
            None => {
                // The connection may still carry the late answer: drop it.
                stats.record(plan, at, span, Outcome::TimedOut(target.timeout));
                return Exit::Reconnect;
            }
        }
    }
}

/// One request and its whole answer; the body is read and dropped frame by
/// frame (no buffering) so the connection can carry the next request.
async fn exchange(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<StatusCode, hyper::Error> {
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(status)
}

/// Polls hyper's connection (which does the reading and writing) in the same
/// task as the requests on it, instead of a task of its own: no wake-ups
/// between tasks for every request.
async fn drive<C: Future, W: Future>(conn: C, work: W) -> W::Output {
    let mut conn = pin!(Some(conn));
    let mut work = pin!(work);
    poll_fn(move |cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        if let Some(running) = conn.as_mut().as_pin_mut() {
            if running.poll(cx).is_ready() {
                // Closed or failed. Dropping it is what tells the sender,
                // whose next `ready()` then fails.
                conn.set(None);
            }
        }
        // The connection may have just delivered what the work waits for.
        work.as_mut().poll(cx)
    })
    .await
}
