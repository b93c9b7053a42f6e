//! Fault injection: a store wrapper that makes chosen calls fail, deterministically.
//!
//! [`Unreliable`] wraps any [`ObjectStore`] (in the spirit of neon's `UnreliableWrapper`)
//! and, following a [`FaultPlan`], answers some calls with what a real store or network
//! does to a client on a bad day: a transient 5xx or 429, a request that hangs past its time
//! limit, a connection reset (before the request, or in the middle of a download), an answer
//! lost after the store carried the request out, a body that ends early, a slow answer, and
//! permanent 401/403/404 refusals. The errors are the ones object_store's own clients
//! produce, so [`super::StorageError`]'s classification and the retry helper see exactly what
//! they would see in production.
//!
//! Which calls fail is decided by counting, never by the clock: every rule counts the calls
//! that match its operations and key, and its schedule picks call numbers from that count
//! (the first N, every K-th, all after N, a list, or a seeded pseudo-random choice). The same
//! plan and the same sequence of calls always inject the same faults.
//!
//! The real binary can run with it: when the environment variable [`ENV`]
//! (`WALARCHIVE_FAULTS`) is set, the binary passes its value down (in
//! [`super::StorageEnv`]) and [`super::open`] wraps the store it opened (see
//! [`from_plan`]); unset or empty, nothing changes. It is a testing hook: never set it in
//! production. The plan's text format is documented on [`FaultPlan`].
#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// The environment variable holding a fault plan for [`super::open`] (testing only; the
/// binary reads it into [`super::StorageEnv`]).
pub const ENV: &str = "WALARCHIVE_FAULTS";

/// The `store` name in the errors this wrapper makes up.
const STORE: &str = "Unreliable";

/// A kind of store call, as rules select them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// An upload (`put_opts`, and the start of a multipart upload).
    Put,
    /// A download (`get_opts` without `head`), ranged or not.
    Get,
    /// A metadata request (`get_opts` with `head`, i.e. `head`).
    Head,
    /// A listing (`list`, `list_with_offset`, `list_with_delimiter`).
    List,
    /// A deletion (each location of `delete_stream`).
    Delete,
    /// A server-side copy (`copy_opts`; also the copy half of a rename).
    Copy,
}

impl Op {
    /// Every operation, in [`Op::index`] order.
    pub const ALL: [Op; 6] = [Op::Put, Op::Get, Op::Head, Op::List, Op::Delete, Op::Copy];

    /// Position in [`Op::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used in fault plans and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Copy => "copy",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Op, String> {
        Op::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| {
                format!("unknown operation {s:?} (put, get, head, list, delete, copy, any)")
            })
    }
}

/// What happens to a call a rule selects.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The store answers with this HTTP status and does nothing. 401, 403 and 404 become
    /// object_store's `Unauthenticated`, `PermissionDenied` and `NotFound` (permanent);
    /// any other status is a generic error whose message carries "status code: NNN", as
    /// object_store's HTTP clients report it (5xx, 408 and 429 are transient, other 4xx
    /// permanent).
    Status(u16),
    /// The request hangs: nothing is done, and after the request timeout plus a second it
    /// fails with a timeout error. The retry helper's per-attempt limit fires first.
    Timeout,
    /// The connection is reset. For a download, after `after` bytes of the body (default:
    /// half of it) once the store has answered; for any other call, before the request
    /// reaches the store (nothing is done).
    Reset {
        /// Body bytes delivered before the reset (downloads only).
        after: Option<u64>,
    },
    /// The store carries the request out but the answer is lost (a reset after the fact):
    /// a put or a delete is done, and the client sees a transient error.
    Lost,
    /// Downloads only: the body ends, without an error, after this many bytes (a broken
    /// proxy or store; the reader must notice by itself).
    Truncate(u64),
    /// The answer comes this much later; the call then proceeds normally.
    Slow(Duration),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Status(code) => write!(f, "{code}"),
            Fault::Timeout => f.write_str("timeout"),
            Fault::Reset { after: None } => f.write_str("reset"),
            Fault::Reset { after: Some(n) } => write!(f, "reset:{n}"),
            Fault::Lost => f.write_str("lost"),
            Fault::Truncate(n) => write!(f, "truncate:{n}"),
            Fault::Slow(d) => write!(f, "slow:{}", d.as_millis()),
        }
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let number = |what: &str| -> Result<u64, String> {
            arg.ok_or_else(|| format!("{name} needs :{what}"))?
                .parse::<u64>()
                .map_err(|_| format!("bad {what} in {s:?}"))
        };
        match (name, arg) {
            ("timeout", None) => Ok(Fault::Timeout),
            ("lost", None) => Ok(Fault::Lost),
            ("reset", None) => Ok(Fault::Reset { after: None }),
            ("reset", Some(_)) => Ok(Fault::Reset {
                after: Some(number("BYTES")?),
            }),
            ("truncate", _) => Ok(Fault::Truncate(number("BYTES")?)),
            ("slow", _) => Ok(Fault::Slow(Duration::from_millis(number("MS")?))),
            (code, None) if code.len() == 3 => match code.parse::<u16>() {
                Ok(c) if (400..600).contains(&c) => Ok(Fault::Status(c)),
                _ => Err(format!("unknown fault {s:?}")),
            },
            _ => Err(format!(
                "unknown fault {s:?} (an HTTP status 400-599, timeout, reset[:BYTES], lost, truncate:BYTES, slow:MS)"
            )),
        }
    }
}

/// Which of a rule's matching calls (numbered from 1) it fails.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// Every matching call.
    Always,
    /// Calls 1..=N.
    First(u64),
    /// Calls K, 2K, 3K, ...
    Every(u64),
    /// Every call after the N-th.
    After(u64),
    /// Exactly these calls.
    Calls(Vec<u64>),
    /// Each call with probability `p`, from a pseudo-random function of `seed`, the rule's
    /// position and the call number (the same plan always picks the same calls).
    Probability {
        /// Probability, 0 to 1.
        p: f64,
        /// Seed.
        seed: u64,
    },
}

impl Schedule {
    /// Whether matching call `n` (1-based) of rule number `rule` is failed.
    pub fn fires(&self, rule: usize, n: u64) -> bool {
        match self {
            Schedule::Always => true,
            Schedule::First(k) => n <= *k,
            Schedule::Every(k) => *k > 0 && n.is_multiple_of(*k),
            Schedule::After(k) => n > *k,
            Schedule::Calls(list) => list.contains(&n),
            Schedule::Probability { p, seed } => {
                let x = splitmix64(seed ^ splitmix64(rule as u64) ^ splitmix64(n.wrapping_add(1)));
                ((x >> 11) as f64 / (1u64 << 53) as f64) < *p
            }
        }
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One rule of a [`FaultPlan`].
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The operations it applies to (empty: all).
    pub ops: Vec<Op>,
    /// Only calls whose full object key (or listing prefix) contains this text.
    pub key: Option<String>,
    /// What it does.
    pub fault: Fault,
    /// Which matching calls it does it to.
    pub schedule: Schedule,
}

impl Rule {
    fn matches(&self, op: Op, key: &str) -> bool {
        (self.ops.is_empty() || self.ops.contains(&op))
            && self.key.as_deref().is_none_or(|k| key.contains(k))
    }
}

/// Rules saying which calls fail and how.
///
/// Text form (the value of `WALARCHIVE_FAULTS`): rules separated by `;`, each a list of
/// `name=value` words separated by spaces:
///
/// | word | meaning |
/// |---|---|
/// | `fault=F` | required: an HTTP status (`503`, `500`, `429`, `400`, `401`, `403`, `404`...), `timeout`, `reset`, `reset:BYTES` (downloads), `lost`, `truncate:BYTES` (downloads), `slow:MS` (see [`Fault`]) |
/// | `op=OPS` | `put`, `get`, `head`, `list`, `delete`, `copy` or `any` (default), several separated by commas |
/// | `key=TEXT` | only calls whose full key (or listing prefix) contains TEXT |
/// | `first=N`, `every=K`, `after=N`, `calls=A,B,...`, `prob=P` | which matching calls, counted from 1 per rule (default: all) |
/// | `seed=S` | seed for `prob` (default 0) |
///
/// Every rule counts every call it matches; a call gets the fault of the first rule whose
/// schedule selects it, and at most one. Example: `op=put fault=503 first=2; op=get
/// key=/wal/ fault=reset:4096 every=3` fails the first two uploads with 503 and cuts every
/// third WAL download after 4 KiB.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

impl FromStr for FaultPlan {
    type Err = String;
    fn from_str(s: &str) -> Result<FaultPlan, String> {
        let mut rules = Vec::new();
        for text in s.split(';').map(str::trim).filter(|r| !r.is_empty()) {
            rules.push(parse_rule(text).map_err(|e| format!("rule {text:?}: {e}"))?);
        }
        Ok(FaultPlan { rules })
    }
}

fn parse_rule(text: &str) -> Result<Rule, String> {
    let mut ops = Vec::new();
    let mut key = None;
    let mut fault = None;
    let mut schedule = None;
    let mut prob = None;
    let mut seed = 0u64;
    let count = |v: &str| v.parse::<u64>().map_err(|_| format!("bad count {v:?}"));
    for word in text.split_whitespace() {
        let (name, value) = word
            .split_once('=')
            .ok_or_else(|| format!("{word:?} is not name=value"))?;
        let mut set = |s: Schedule| match schedule.replace(s) {
            None => Ok(()),
            Some(_) => Err("more than one of first, every, after, calls, prob".to_string()),
        };
        match name {
            "op" => {
                for op in value.split(',') {
                    if op != "any" {
                        ops.push(op.parse()?);
                    }
                }
            }
            "key" => key = Some(value.to_string()),
            "fault" => fault = Some(value.parse::<Fault>()?),
            "first" => set(Schedule::First(count(value)?))?,
            "every" => set(Schedule::Every(count(value)?.max(1)))?,
            "after" => set(Schedule::After(count(value)?))?,
            "calls" => set(Schedule::Calls(
                value.split(',').map(count).collect::<Result<_, _>>()?,
            ))?,
            "prob" => {
                let p = value
                    .parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| format!("bad probability {value:?} (0 to 1)"))?;
                prob = Some(p);
                set(Schedule::Always)?;
            }
            "seed" => seed = count(value)?,
            other => return Err(format!("unknown word {other:?}")),
        }
    }
    let fault = fault.ok_or("no fault=")?;
    let schedule = match prob {
        Some(p) => Schedule::Probability { p, seed },
        None => schedule.unwrap_or(Schedule::Always),
    };
    if matches!(fault, Fault::Truncate(_) | Fault::Reset { after: Some(_) }) && ops != [Op::Get] {
        return Err(format!(
            "fault={fault} applies to downloads only: add op=get"
        ));
    }
    Ok(Rule {
        ops,
        key,
        fault,
        schedule,
    })
}

/// Counters: calls per operation and faults injected per rule.
#[derive(Debug)]
struct Shared {
    plan: FaultPlan,
    /// How long a [`Fault::Timeout`] hangs.
    hang: Duration,
    calls: [AtomicU64; 6],
    matched: Vec<AtomicU64>,
    injected: Vec<AtomicU64>,
}

/// What to do with one call.
enum Action {
    Pass,
    Fail(object_store::Error),
    Lost,
    /// Cut the body after this many bytes (None: half), with an error (`true`) or silently.
    Body(Option<u64>, bool),
}

impl Shared {
    async fn act(&self, op: Op, key: &str) -> Action {
        self.calls[op.index()].fetch_add(1, Ordering::SeqCst);
        let mut chosen = None;
        for (i, rule) in self.plan.rules.iter().enumerate() {
            if !rule.matches(op, key) {
                continue;
            }
            let n = self.matched[i].fetch_add(1, Ordering::SeqCst) + 1;
            if chosen.is_none() && rule.schedule.fires(i, n) {
                chosen = Some((i, n));
            }
        }
        let Some((i, n)) = chosen else {
            return Action::Pass;
        };
        self.injected[i].fetch_add(1, Ordering::SeqCst);
        let fault = &self.plan.rules[i].fault;
        tracing::warn!(
            "fault injection: {fault} on {op} {key} (rule {}, matching call {n})",
            i + 1
        );
        match (fault, op) {
            (Fault::Status(code), _) => Action::Fail(status_error(*code, key)),
            (Fault::Timeout, _) => {
                tokio::time::sleep(self.hang).await;
                Action::Fail(io_error(std::io::ErrorKind::TimedOut, "request timed out"))
            }
            (Fault::Reset { after }, Op::Get) => Action::Body(*after, true),
            (Fault::Truncate(n), Op::Get) => Action::Body(Some(*n), false),
            (Fault::Reset { .. } | Fault::Truncate(_), _) => Action::Fail(reset_error()),
            (Fault::Lost, Op::Put | Op::Delete | Op::Copy) => Action::Lost,
            (Fault::Lost, _) => Action::Fail(reset_error()),
            (Fault::Slow(d), _) => {
                tokio::time::sleep(*d).await;
                Action::Pass
            }
        }
    }
}

fn status_error(code: u16, key: &str) -> object_store::Error {
    let reason = match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        412 => "Precondition Failed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    };
    let source =
        format!("Server returned non-2xx status code: {code} {reason} (injected fault)").into();
    let path = key.to_string();
    match code {
        401 => object_store::Error::Unauthenticated { path, source },
        403 => object_store::Error::PermissionDenied { path, source },
        404 => object_store::Error::NotFound { path, source },
        _ => object_store::Error::Generic {
            store: STORE,
            source,
        },
    }
}

fn io_error(kind: std::io::ErrorKind, what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(std::io::Error::new(
            kind,
            format!("{what} (injected fault)"),
        )),
    }
}

fn reset_error() -> object_store::Error {
    io_error(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by peer",
    )
}

/// Passes `limit` bytes of `body`, then fails with a reset (`error`) or ends.
fn cut(
    body: BoxStream<'static, Result<Bytes>>,
    limit: u64,
    error: bool,
) -> BoxStream<'static, Result<Bytes>> {
    stream::unfold(
        (body, 0u64, false),
        move |(mut body, sent, done)| async move {
            if done {
                return None;
            }
            if sent >= limit {
                return error.then(|| (Err(reset_error()), (body, sent, true)));
            }
            match body.next().await {
                None => None,
                Some(Err(e)) => Some((Err(e), (body, sent, true))),
                Some(Ok(chunk)) => {
                    let room = (limit - sent).min(chunk.len() as u64) as usize;
                    let chunk = chunk.slice(..room);
                    Some((Ok(chunk), (body, sent + room as u64, false)))
                }
            }
        },
    )
    .boxed()
}

/// A store that injects the faults of a [`FaultPlan`] into the calls it forwards to `S`.
#[derive(Debug)]
pub struct Unreliable<S: ObjectStore + ?Sized> {
    inner: Arc<S>,
    shared: Arc<Shared>,
}

impl<S: ObjectStore> Unreliable<S> {
    /// Wraps `inner`. [`Fault::Timeout`] hangs for 121 s (the default request timeout plus a
    /// second) unless [`Unreliable::with_request_timeout`] says otherwise.
    pub fn new(inner: S, plan: FaultPlan) -> Self {
        Self::from_arc(Arc::new(inner), plan)
    }
}

impl<S: ObjectStore + ?Sized> Unreliable<S> {
    /// [`Unreliable::new`] for a store already in an `Arc`.
    pub fn from_arc(inner: Arc<S>, plan: FaultPlan) -> Self {
        let n = plan.rules.len();
        Unreliable {
            inner,
            shared: Arc::new(Shared {
                plan,
                hang: Duration::from_secs(121),
                calls: Default::default(),
                matched: (0..n).map(|_| AtomicU64::new(0)).collect(),
                injected: (0..n).map(|_| AtomicU64::new(0)).collect(),
            }),
        }
    }

    /// Makes [`Fault::Timeout`] hang for `timeout` plus a second: past the time limit of one
    /// attempt, so that the retry helper's limit fires first.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        let shared = Arc::get_mut(&mut self.shared).expect("not shared yet");
        shared.hang = timeout + Duration::from_secs(1);
        self
    }

    /// The plan.
    pub fn plan(&self) -> &FaultPlan {
        &self.shared.plan
    }

    /// Calls of `op` so far, failed or not.
    pub fn calls(&self, op: Op) -> u64 {
        self.shared.calls[op.index()].load(Ordering::SeqCst)
    }

    /// Faults injected so far by rule number `rule` (0-based).
    pub fn injected(&self, rule: usize) -> u64 {
        self.shared.injected[rule].load(Ordering::SeqCst)
    }

    /// Faults injected so far, all rules together.
    pub fn injected_total(&self) -> u64 {
        self.shared
            .injected
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: ObjectStore + ?Sized> fmt::Display for Unreliable<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Unreliable({})", self.inner)
    }
}

#[async_trait::async_trait]
impl<S: ObjectStore + ?Sized> ObjectStore for Unreliable<S> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        match self.shared.act(Op::Put, location.as_ref()).await {
            Action::Fail(e) => Err(e),
            Action::Lost => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(reset_error())
            }
            Action::Pass | Action::Body(..) => self.inner.put_opts(location, payload, opts).await,
        }
    }

    /// Faults apply when the upload starts (its parts and completion are not touched).
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        match self.shared.act(Op::Put, location.as_ref()).await {
            Action::Fail(e) => Err(e),
            Action::Lost => Err(reset_error()),
            Action::Pass | Action::Body(..) => self.inner.put_multipart_opts(location, opts).await,
        }
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        let (limit, error) = match self.shared.act(op, location.as_ref()).await {
            Action::Fail(e) => return Err(e),
            Action::Lost => return Err(reset_error()),
            Action::Pass => return self.inner.get_opts(location, options).await,
            Action::Body(limit, error) => (limit, error),
        };
        let GetResult {
            payload,
            meta,
            range,
            attributes,
            extensions,
        } = self.inner.get_opts(location, options).await?;
        let len = range.end - range.start;
        let body = GetResult {
            payload,
            meta: meta.clone(),
            range: range.clone(),
            attributes: Default::default(),
            extensions: Default::default(),
        }
        .into_stream();
        Ok(GetResult {
            payload: GetResultPayload::Stream(cut(body, limit.unwrap_or(len / 2), error)),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let (inner, shared) = (self.inner.clone(), self.shared.clone());
        locations
            .then(move |location| {
                let (inner, shared) = (inner.clone(), shared.clone());
                async move {
                    let location = location?;
                    match shared.act(Op::Delete, location.as_ref()).await {
                        Action::Fail(e) => Err(e),
                        Action::Lost => {
                            inner.delete(&location).await?;
                            Err(reset_error())
                        }
                        Action::Pass | Action::Body(..) => {
                            inner.delete(&location).await.map(|()| location)
                        }
                    }
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let mut listing = Some(self.inner.list(prefix));
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        let shared = self.shared.clone();
        stream::once(async move { shared.act(Op::List, &key).await })
            .flat_map(move |action| match action {
                Action::Fail(e) => stream::iter([Err(e)]).boxed(),
                Action::Lost => stream::iter([Err(reset_error())]).boxed(),
                Action::Pass | Action::Body(..) => listing.take().expect("acted on once"),
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.shared.act(Op::List, &key).await {
            Action::Fail(e) => Err(e),
            Action::Lost => Err(reset_error()),
            Action::Pass | Action::Body(..) => self.inner.list_with_delimiter(prefix).await,
        }
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        match self.shared.act(Op::Copy, to.as_ref()).await {
            Action::Fail(e) => Err(e),
            Action::Lost => {
                self.inner.copy_opts(from, to, options).await?;
                Err(reset_error())
            }
            Action::Pass | Action::Body(..) => self.inner.copy_opts(from, to, options).await,
        }
    }
}

/// Wraps `store` in an [`Unreliable`] following `plan`, the value of [`ENV`] (which the
/// binary reads), when it is set and not empty (a testing hook; a warning says so on every
/// use); returns `store` unchanged otherwise. `request_timeout` is the time limit of one
/// attempt (see [`Unreliable::with_request_timeout`]). A plan that does not parse is an
/// error.
pub fn from_plan(
    store: Arc<dyn ObjectStore>,
    plan: Option<&std::ffi::OsStr>,
    request_timeout: Duration,
) -> Result<Arc<dyn ObjectStore>, String> {
    let Some(value) = plan else {
        return Ok(store);
    };
    let text = value
        .to_str()
        .ok_or_else(|| format!("{ENV} is not valid UTF-8"))?;
    if text.trim().is_empty() {
        return Ok(store);
    }
    let plan: FaultPlan = text.parse().map_err(|e| format!("invalid {ENV}: {e}"))?;
    tracing::warn!("{ENV} is set: injecting storage faults (a testing hook): {text}");
    Ok(Arc::new(
        Unreliable::from_arc(store, plan).with_request_timeout(request_timeout),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageError;
    use futures::TryStreamExt;
    use object_store::memory::InMemory;
    use std::ffi::OsStr;

    fn store(plan: &str) -> Unreliable<InMemory> {
        Unreliable::new(InMemory::new(), plan.parse().unwrap())
    }

    fn classify(e: object_store::Error) -> StorageError {
        StorageError::from(e)
    }

    #[test]
    fn parses_plans() {
        let plan: FaultPlan =
            "op=put fault=503 first=2; op=get,head key=/wal/ fault=reset every=3 ;\
             fault=slow:20; op=any fault=403 prob=0.5 seed=7"
                .parse()
                .unwrap();
        assert_eq!(plan.rules.len(), 4);
        assert_eq!(
            plan.rules[0],
            Rule {
                ops: vec![Op::Put],
                key: None,
                fault: Fault::Status(503),
                schedule: Schedule::First(2)
            }
        );
        assert_eq!(plan.rules[1].ops, [Op::Get, Op::Head]);
        assert_eq!(plan.rules[1].key.as_deref(), Some("/wal/"));
        assert_eq!(plan.rules[2].fault, Fault::Slow(Duration::from_millis(20)));
        assert_eq!(plan.rules[2].schedule, Schedule::Always);
        assert_eq!(
            plan.rules[3].schedule,
            Schedule::Probability { p: 0.5, seed: 7 }
        );
        assert!(plan.rules[3].ops.is_empty());
        assert_eq!("".parse::<FaultPlan>().unwrap(), FaultPlan::default());
        for bad in [
            "op=put",
            "fault=999",
            "fault=503 first=x",
            "fault=503 first=1 every=2",
            "op=push fault=503",
            "fault=truncate:10",
            "op=put fault=reset:10",
            "fault=503 prob=2",
            "fault=503 nonsense",
            "fault=503 colour=blue",
        ] {
            assert!(bad.parse::<FaultPlan>().is_err(), "{bad}");
        }
        let e = "op=put fault=503 oops=1".parse::<FaultPlan>().unwrap_err();
        assert!(e.contains("oops"), "{e}");
    }

    #[test]
    fn schedules_are_deterministic() {
        let picks = |s: &Schedule| (1..=10).filter(|n| s.fires(0, *n)).collect::<Vec<_>>();
        assert_eq!(picks(&Schedule::First(2)), [1, 2]);
        assert_eq!(picks(&Schedule::Every(3)), [3, 6, 9]);
        assert_eq!(picks(&Schedule::After(8)), [9, 10]);
        assert_eq!(picks(&Schedule::Calls(vec![2, 5])), [2, 5]);
        let p = Schedule::Probability { p: 0.5, seed: 1 };
        let a: Vec<u64> = (1..=1000).filter(|n| p.fires(0, *n)).collect();
        let b: Vec<u64> = (1..=1000).filter(|n| p.fires(0, *n)).collect();
        assert_eq!(a, b);
        assert!((400..600).contains(&a.len()), "{}", a.len());
        let other = Schedule::Probability { p: 0.5, seed: 2 };
        assert_ne!(
            a,
            (1..=1000)
                .filter(|n| other.fires(0, *n))
                .collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn injects_classified_errors() {
        let s = store(
            "op=put key=a fault=503 first=1; op=put key=b fault=403; op=get key=c fault=404; \
             op=head fault=401; op=put key=d fault=400; op=list fault=429 first=1",
        );
        let put = |k: &'static str| {
            let s = &s;
            async move { s.put(&Path::from(k), PutPayload::from_static(b"x")).await }
        };
        let e = classify(put("a").await.unwrap_err());
        assert!(!e.is_permanent() && e.to_string().contains("503"), "{e}");
        put("a").await.unwrap();
        let e = classify(put("b").await.unwrap_err());
        assert!(matches!(e, StorageError::AccessDenied(_)), "{e}");
        assert!(classify(s.get(&Path::from("c")).await.unwrap_err()).is_not_found());
        let e = classify(s.head(&Path::from("a")).await.unwrap_err());
        assert!(matches!(e, StorageError::AccessDenied(_)), "{e}");
        let e = classify(put("d").await.unwrap_err());
        assert!(matches!(e, StorageError::Permanent(_)), "{e}");
        let e = classify(s.list(None).try_collect::<Vec<_>>().await.unwrap_err());
        assert!(!e.is_permanent(), "{e}");
        assert_eq!(s.list(None).try_collect::<Vec<_>>().await.unwrap().len(), 1);
        assert_eq!(s.calls(Op::Put), 4);
        assert_eq!(s.calls(Op::List), 2);
        assert_eq!(s.injected(0), 1);
        assert_eq!(s.injected_total(), 6);
        // Nothing failed was stored.
        assert!(s.inner().head(&Path::from("b")).await.is_err());
        assert!(s.inner().head(&Path::from("d")).await.is_err());
    }

    #[tokio::test]
    async fn cuts_and_truncates_bodies() {
        let s = store("op=get fault=reset:3 first=1; op=get fault=truncate:5 calls=2; op=get fault=reset first=3");
        let k = Path::from("obj");
        s.put(&k, PutPayload::from_static(b"0123456789"))
            .await
            .unwrap();
        let r = s.get(&k).await.unwrap();
        let e = classify(r.bytes().await.unwrap_err());
        assert!(!e.is_permanent(), "{e}");
        let r = s.get(&k).await.unwrap();
        assert_eq!(&r.bytes().await.unwrap()[..], b"01234");
        // Default cut: half the body, then the reset.
        let chunks: Vec<_> = s.get(&k).await.unwrap().into_stream().collect().await;
        assert_eq!(&chunks[0].as_ref().unwrap()[..], b"01234");
        assert!(chunks.last().unwrap().is_err());
        assert_eq!(
            &s.get(&k).await.unwrap().bytes().await.unwrap()[..],
            b"0123456789"
        );
    }

    #[tokio::test]
    async fn lost_answers_and_deletes() {
        let s = store("op=put fault=lost first=1; op=delete fault=503 first=1; op=copy fault=lost");
        let k = Path::from("x");
        let e = classify(s.put(&k, PutPayload::from_static(b"v")).await.unwrap_err());
        assert!(!e.is_permanent(), "{e}");
        // The put was carried out.
        assert_eq!(&s.get(&k).await.unwrap().bytes().await.unwrap()[..], b"v");
        assert!(!classify(s.delete(&k).await.unwrap_err()).is_permanent());
        assert!(s.head(&k).await.is_ok());
        s.delete(&k).await.unwrap();
        assert!(s.head(&k).await.is_err());
        s.put(&k, PutPayload::from_static(b"w")).await.unwrap();
        assert!(s.copy(&k, &Path::from("y")).await.is_err());
        assert!(s.head(&Path::from("y")).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_and_hung_calls() {
        let s = Unreliable::new(
            InMemory::new(),
            "op=head fault=timeout first=1; op=head fault=slow:500"
                .parse()
                .unwrap(),
        )
        .with_request_timeout(Duration::from_secs(5));
        let k = Path::from("k");
        s.put(&k, PutPayload::from_static(b"v")).await.unwrap();
        let t = tokio::time::Instant::now();
        let e = classify(s.head(&k).await.unwrap_err());
        assert!(!e.is_permanent(), "{e}");
        assert_eq!(t.elapsed(), Duration::from_secs(6));
        let t = tokio::time::Instant::now();
        s.head(&k).await.unwrap();
        assert_eq!(t.elapsed(), Duration::from_millis(500));
        // Through the retry helper, a hung attempt times out and the next one succeeds.
        let policy = crate::retry::RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            attempt_timeout: Duration::from_secs(1),
        };
        let s = Arc::new(
            Unreliable::new(InMemory::new(), "fault=timeout first=1".parse().unwrap())
                .with_request_timeout(policy.attempt_timeout),
        );
        let r = crate::retry::retry(&policy, "test", || {
            let s = s.clone();
            async move {
                s.put(&Path::from("k"), PutPayload::from_static(b"v"))
                    .await
                    .map_err(StorageError::from)
            }
        })
        .await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(s.calls(Op::Put), 2);
    }

    #[test]
    fn env_hook_is_inert_when_unset_or_empty() {
        let plain: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for plan in [None, Some(" ")] {
            let same = from_plan(plain.clone(), plan.map(OsStr::new), Duration::from_secs(1));
            assert!(Arc::ptr_eq(&plain, &same.unwrap()), "{plan:?}");
        }
        let wrapped = from_plan(
            plain.clone(),
            Some(OsStr::new("op=put fault=503")),
            Duration::from_secs(1),
        );
        assert!(!Arc::ptr_eq(&plain, &wrapped.unwrap()));
        assert!(from_plan(plain, Some(OsStr::new("nonsense")), Duration::from_secs(1)).is_err());
    }
}
