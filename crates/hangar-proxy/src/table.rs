//! The route table: app name → upstream set, read lock-free on every request
//! and replaced wholesale (copy-on-write) by the rare [`RouteSink`] updates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use futures_util::future::Shared;
use hangar_core::route::{Activity, Limits, RouteSink, WakeError, WakeFuture, Waker};
use tokio::sync::Notify;

use crate::error::ProxyError;

/// After a failed attempt to start an extra machine for the soft limit, how
/// long before the next.
pub(crate) const GROW_COOLDOWN: Duration = Duration::from_secs(2);

/// One machine serving an app.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// Where the machine listens.
    pub(crate) addr: SocketAddr,
    /// Requests in flight on this machine; carried over (by address) when
    /// the route is replaced, so limits hold across updates, and kept in
    /// [`AppRoute::draining`] after the machine left the route, so the node
    /// can wait for them before it stops the machine.
    pub(crate) in_flight: Arc<AtomicUsize>,
}

/// The current upstream set of one app.
#[derive(Debug)]
pub(crate) struct AppRoute {
    /// The app's name, for the 502/503 bodies and logs.
    pub(crate) name: Box<str>,
    /// The machines, in the order the node agent published them; a slice
    /// because it is never mutated (an update builds a new `AppRoute`).
    pub(crate) upstreams: Box<[Upstream]>,
    /// Where the least-in-flight scan starts, advanced per request so ties
    /// go round-robin; atomic so concurrent requests pick without a lock.
    next: AtomicUsize,
    /// Per-machine concurrency limits.
    pub(crate) limits: Limits,
    /// Requests in flight and the last activity; carried over when the
    /// route is replaced, so an update does not reset the idle clock.
    pub(crate) activity: Arc<AppActivity>,
    /// Machines a publish removed from the route, with their counters:
    /// never picked, only read by [`Activity::in_flight_to`] so the node can
    /// drain a machine before stopping it. Those removed by the publish
    /// that made this route are all here (a request that resolved the old
    /// route may still be claiming one); older ones only while requests
    /// are still in flight to them.
    pub(crate) draining: Box<[Upstream]>,
    /// Set once a publish has replaced this route: a request that claimed
    /// an upstream on it re-picks on the current route (see
    /// [`AppRoute::is_replaced`]), so no new request reaches a machine the
    /// node is draining.
    replaced: AtomicBool,
}

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A Prometheus histogram with fixed buckets, updated lock-free.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Observations at or under each bound (not cumulative; summed on render).
    buckets: [AtomicU64; BUCKETS.len()],
    /// Observations over the last bound.
    over: AtomicU64,
    /// Sum of observations in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match BUCKETS.iter().position(|b| secs <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, app: &str) {
        use std::fmt::Write;
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{app=\"{app}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.over.load(Ordering::Relaxed);
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{app=\"{app}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(out, "{name}_sum{{app=\"{app}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{app=\"{app}\"}} {cumulative}");
    }
}

/// Request activity and metrics of one app.
#[derive(Debug)]
pub(crate) struct AppActivity {
    /// Requests whose response has not finished streaming.
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when a request last started or ended.
    last_ms: AtomicU64,
    /// The clock origin of `last_ms`.
    epoch: Instant,
    /// Answered requests by status class (1xx … 5xx).
    by_class: [AtomicU64; 5],
    /// Time to the response head.
    latency: Histogram,
    /// Wakes (starts or resumes for a request).
    wakes: AtomicU64,
    /// How long wakes took.
    wake_latency: Histogram,
    /// Requests waiting for a machine under its hard limit.
    pub(crate) queued: AtomicUsize,
    /// Requests refused (503) because every machine stayed at its hard limit.
    pub(crate) rejected: AtomicU64,
    /// Requests sent to another machine because connecting to the one
    /// picked failed (counted per retry), so a dead machine still in the
    /// route shows in the metrics even though its requests succeed.
    pub(crate) failovers: AtomicU64,
    /// Woken when a request ends or the route changes, for queued requests.
    pub(crate) released: Notify,
    /// An extra machine is being started for the soft limit.
    growing: AtomicBool,
    /// No new extra-machine start before this (ms since `epoch`): after a
    /// failed one, so a saturated app does not ask for one per request.
    grow_not_before_ms: AtomicU64,
}

impl AppActivity {
    fn new() -> Self {
        AppActivity {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            by_class: Default::default(),
            latency: Histogram::default(),
            wakes: AtomicU64::new(0),
            wake_latency: Histogram::default(),
            queued: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            released: Notify::new(),
            growing: AtomicBool::new(false),
            grow_not_before_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Counts one answered request.
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(elapsed);
    }

    fn render(&self, out: &mut String, app: &str) {
        use std::fmt::Write;
        for (i, n) in self.by_class.iter().enumerate() {
            let _ = writeln!(
                out,
                "hangar_proxy_requests_total{{app=\"{app}\",code=\"{}xx\"}} {}",
                i + 1,
                n.load(Ordering::Relaxed)
            );
        }
        let in_flight = self.in_flight.load(Ordering::Relaxed) as u64;
        let queued = self.queued.load(Ordering::Relaxed) as u64;
        for (name, value) in [
            ("hangar_proxy_in_flight", in_flight),
            (
                "hangar_proxy_wakes_total",
                self.wakes.load(Ordering::Relaxed),
            ),
            ("hangar_proxy_queued", queued),
            (
                "hangar_proxy_rejected_total",
                self.rejected.load(Ordering::Relaxed),
            ),
            (
                "hangar_proxy_failovers_total",
                self.failovers.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "{name}{{app=\"{app}\"}} {value}");
        }
        self.latency
            .render(out, "hangar_proxy_request_duration_seconds", app);
        self.wake_latency
            .render(out, "hangar_proxy_wake_duration_seconds", app);
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Claims the right to start one extra machine (soft limit): true for
    /// one caller at a time, and not again soon after a failed attempt.
    pub(crate) fn claim_grow(&self) -> bool {
        self.now_ms() >= self.grow_not_before_ms.load(Ordering::Relaxed)
            && self
                .growing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Ends the claim of [`AppActivity::claim_grow`]; after a failure the
    /// next attempt waits `cooldown`.
    pub(crate) fn end_grow(&self, cooldown: Option<Duration>) {
        if let Some(cooldown) = cooldown {
            let until = self.now_ms() + cooldown.as_millis() as u64;
            self.grow_not_before_ms.store(until, Ordering::Relaxed);
        }
        self.growing.store(false, Ordering::Release);
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.epoch.elapsed().saturating_sub(last))
    }
}

/// One request's claim on its app and machine: counts as activity and as
/// the machine's in-flight load until dropped (after the response body has
/// streamed, the WebSocket tunnel has closed, or on error).
#[derive(Debug)]
pub(crate) struct ActivityGuard {
    /// The app's activity, whose in-flight count this request holds.
    activity: Arc<AppActivity>,
    /// The machine's in-flight counter (the one in [`Upstream`]), whose
    /// slot this request holds.
    machine: Arc<AtomicUsize>,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.activity.touch();
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        // SeqCst pairs with the queue: a waiter counts itself in `queued`
        // before it re-reads the loads, and we free the slot before reading
        // `queued`, so either it sees the slot or we see it and wake it.
        self.machine.fetch_sub(1, Ordering::SeqCst);
        if self.activity.queued.load(Ordering::SeqCst) > 0 {
            self.activity.released.notify_one();
        }
    }
}

/// The outcome of [`AppRoute::try_pick`].
#[derive(Debug)]
pub(crate) enum Pick {
    /// This upstream (an index into `upstreams`), claimed by the guard.
    Chosen(usize, ActivityGuard),
    /// Every machine is at its hard limit.
    Full,
    /// The app has no machine up (or, for
    /// [`AppRoute::try_pick_excluding`], none but the excluded ones).
    NoMachine,
}

/// How often a pick retries after losing a race for a machine's last slot.
const PICK_ATTEMPTS: usize = 4;

impl AppRoute {
    /// Chooses the machine for one request and claims a slot on it. The
    /// single place the balancing policy lives: least in flight, ties taken
    /// round-robin, never past the hard limit.
    pub(crate) fn try_pick(&self) -> Pick {
        self.pick_where(|_| true)
    }

    /// [`AppRoute::try_pick`] among the machines not in `failed` (those a
    /// connect to has already failed for this request).
    pub(crate) fn try_pick_excluding(&self, failed: &[SocketAddr]) -> Pick {
        if failed.is_empty() {
            return self.try_pick();
        }
        if self.upstreams.iter().all(|u| failed.contains(&u.addr)) {
            return Pick::NoMachine;
        }
        self.pick_where(|u| !failed.contains(&u.addr))
    }

    /// The balancing policy over the machines `usable` accepts; at least
    /// one must be, or the route be empty. Inlined, so `try_pick`'s
    /// always-true filter costs nothing.
    #[inline(always)]
    fn pick_where(&self, usable: impl Fn(&Upstream) -> bool) -> Pick {
        let n = self.upstreams.len();
        if n == 0 {
            return Pick::NoMachine;
        }
        // Relaxed: the cursor only spreads ties, it orders no other memory.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let hard = self.limits.hard.map(|h| h as usize);
        for _ in 0..PICK_ATTEMPTS {
            let (mut best, mut best_load) = (start % n, usize::MAX);
            for k in 0..n {
                let i = (start + k) % n;
                let upstream = &self.upstreams[i];
                if !usable(upstream) {
                    continue;
                }
                let load = upstream.in_flight.load(Ordering::SeqCst);
                if load < best_load {
                    (best, best_load) = (i, load);
                    if load == 0 {
                        break;
                    }
                }
            }
            let slot = &self.upstreams[best].in_flight;
            match hard {
                Some(h) if best_load >= h => return Pick::Full,
                Some(_) => {
                    if slot
                        .compare_exchange(
                            best_load,
                            best_load + 1,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        )
                        .is_err()
                    {
                        continue;
                    }
                }
                None => {
                    slot.fetch_add(1, Ordering::SeqCst);
                }
            }
            self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
            self.activity.touch();
            let guard = ActivityGuard {
                activity: Arc::clone(&self.activity),
                machine: Arc::clone(slot),
            };
            return Pick::Chosen(best, guard);
        }
        Pick::Full
    }

    /// Whether a publish has replaced this route since it was resolved. A
    /// request checks this after [`AppRoute::try_pick`] claimed its slot and
    /// picks again on the current route if so: the claim (SeqCst) comes
    /// before this read, and the publish marks the route (SeqCst) before
    /// [`Activity::in_flight_to`] can read the removed machine's counter, so
    /// either the node sees the claim or the request sees the mark.
    pub(crate) fn is_replaced(&self) -> bool {
        self.replaced.load(Ordering::SeqCst)
    }

    /// Whether the machine at `index` is past the soft limit; as it was the
    /// least loaded when picked, every machine then was at least at it.
    pub(crate) fn over_soft_limit(&self, index: usize) -> bool {
        match (self.limits.soft, self.upstreams.get(index)) {
            (Some(soft), Some(u)) => u.in_flight.load(Ordering::Relaxed) > soft as usize,
            _ => false,
        }
    }

    /// How many requests may wait for a slot when every machine is at its
    /// hard limit: as many again as the machines can hold.
    pub(crate) fn queue_capacity(&self) -> usize {
        let hard = self.limits.hard.unwrap_or(1).max(1) as usize;
        hard.saturating_mul(self.upstreams.len().max(1))
    }
}

/// The edge proxy's routing state: which app answers for which host, and
/// where its machines are.
///
/// Reads (one per request) are a lock-free [`ArcSwap`] load and one hash
/// lookup. Writes copy the map and swap it in; they happen only when the node
/// agent starts or stops a machine, so their cost does not matter.
pub struct RouteTable {
    /// The domain apps are served under, lowercase without a trailing dot;
    /// kept for the 404 bodies that tell the client what Hangar serves.
    domain: Box<str>,
    /// `.` + `domain`, precomputed so the per-request suffix match allocates
    /// nothing.
    dot_domain: Box<str>,
    /// App name → route. An `ArcSwap` so the hot path never takes a lock and
    /// a reader never sees a half-applied update.
    routes: ArcSwap<HashMap<Box<str>, Arc<AppRoute>>>,
    /// Custom domain → app name: hosts outside the domain that an app
    /// added (`hangar domains add`). Swapped whole on each change.
    aliases: ArcSwap<HashMap<Box<str>, Box<str>>>,
    /// Who starts a machine when a request finds none (set once at start).
    waker: OnceLock<Arc<dyn Waker>>,
    /// Wakes under way, one per app: concurrent requests share it, so N
    /// requests to a stopped app cause one start.
    wakes: Mutex<HashMap<Box<str>, Shared<WakeFuture>>>,
    /// Serialises [`RouteSink`] writers, so each publish builds on the
    /// route the previous one left and no in-flight counter (live or
    /// draining) is lost to two racing updates. Never taken by requests.
    writes: Mutex<()>,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("domain", &self.domain)
            .field("apps", &self.routes.load().len())
            .field("waker", &self.waker.get().is_some())
            .finish()
    }
}

impl RouteTable {
    /// An empty table serving apps at `<app>.<domain>`.
    pub fn new(domain: &str) -> Self {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let dot_domain = format!(".{domain}");
        RouteTable {
            domain: domain.into_boxed_str(),
            dot_domain: dot_domain.into_boxed_str(),
            routes: ArcSwap::from_pointee(HashMap::new()),
            aliases: ArcSwap::from_pointee(HashMap::new()),
            waker: OnceLock::new(),
            wakes: Mutex::new(HashMap::new()),
            writes: Mutex::new(()),
        }
    }

    /// Replaces the custom domains: `(host, app)` pairs, hosts lowercase
    /// without a trailing dot.
    pub fn set_aliases(&self, aliases: impl IntoIterator<Item = (String, String)>) {
        let map: HashMap<Box<str>, Box<str>> = aliases
            .into_iter()
            .map(|(host, app)| {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                (host.into_boxed_str(), app.into_boxed_str())
            })
            .collect();
        tracing::info!(domains = map.len(), "custom domains set");
        self.aliases.store(Arc::new(map));
    }

    /// Lets the proxy wake apps whose machines are stopped or suspended.
    pub fn set_waker(&self, waker: Arc<dyn Waker>) {
        let _ = self.waker.set(waker);
    }

    /// Wakes `app` (single-flight): the first caller starts the wake, the
    /// others wait for the same outcome. `None` when no waker is set.
    pub(crate) async fn wake(&self, app: &str) -> Option<Result<(), WakeError>> {
        let waker = self.waker.get()?;
        let flight = {
            let mut wakes = self.wakes.lock().unwrap_or_else(|p| p.into_inner());
            wakes
                .entry(app.into())
                .or_insert_with(|| waker.wake(app).shared())
                .clone()
        };
        let started = Instant::now();
        let outcome = flight.await;
        // The first to finish clears the slot (and counts the wake); a later
        // request starts anew.
        let first = self
            .wakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(app)
            .is_some();
        if first && let Some(route) = self.routes.load().get(app) {
            route.activity.wakes.fetch_add(1, Ordering::Relaxed);
            route.activity.wake_latency.observe(started.elapsed());
        }
        Some(outcome)
    }

    /// Starts one more machine for `route`'s app in the background (every
    /// machine is past its soft limit); at most one at a time per app, and
    /// after a failure not again for [`GROW_COOLDOWN`].
    pub(crate) fn grow(&self, route: &AppRoute) {
        let Some(waker) = self.waker.get() else {
            return;
        };
        let activity = &route.activity;
        if !activity.claim_grow() {
            return;
        }
        let (app, activity) = (route.name.clone(), Arc::clone(activity));
        let flight = waker.wake_another(&app);
        tokio::spawn(async move {
            match flight.await {
                Ok(()) => {
                    tracing::info!(%app, "started another machine: all were past the soft limit");
                    activity.wakes.fetch_add(1, Ordering::Relaxed);
                    activity.end_grow(None);
                }
                Err(reason) => {
                    tracing::debug!(%app, %reason, "no extra machine for the soft limit");
                    activity.end_grow(Some(GROW_COOLDOWN));
                }
            }
        });
    }

    /// The domain apps are served under (normalised: lowercase, no trailing dot).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The upstreams currently published for `app`, `None` if the app is
    /// unknown. For diagnostics and tests; the request path does not use it.
    pub fn upstreams(&self, app: &str) -> Option<Vec<SocketAddr>> {
        let routes = self.routes.load();
        routes
            .get(app)
            .map(|r| r.upstreams.iter().map(|u| u.addr).collect())
    }

    /// Maps a raw Host value (or URI authority) to the app that serves it.
    ///
    /// The host is normalised (port and one trailing dot stripped,
    /// lowercased); it must be exactly one label followed by the domain.
    pub(crate) fn resolve(&self, raw_host: &str) -> Result<Arc<AppRoute>, ProxyError> {
        let host = strip_port(raw_host.trim());
        let host = host.strip_suffix('.').unwrap_or(host);
        // Lowercasing allocates only for the rare client that sends capitals.
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let aliases = self.aliases.load();
        let app = match self.label_of(host) {
            Some(app) => app,
            None => match aliases.get(host) {
                Some(app) => &**app,
                None => {
                    return Err(ProxyError::ForeignHost {
                        host: host.to_owned(),
                        domain: self.domain.to_string(),
                    });
                }
            },
        };
        match self.routes.load().get(app) {
            Some(route) => Ok(Arc::clone(route)),
            None => Err(ProxyError::UnknownApp {
                host: host.to_owned(),
            }),
        }
    }

    /// The app label of a normalised host: exactly one label before the domain.
    fn label_of<'h>(&self, host: &'h str) -> Option<&'h str> {
        match host.strip_suffix(&*self.dot_domain) {
            Some(label) if !label.is_empty() && !label.contains('.') => Some(label),
            _ => None,
        }
    }

    /// The app a raw Host value (or URI authority) names, whether or not
    /// such an app exists: what [`RouteTable`] routes by. For diagnostics
    /// and the fuzz target; the request path resolves in one step.
    pub fn app_of_host(&self, raw_host: &str) -> Option<String> {
        let host = strip_port(raw_host.trim());
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        self.label_of(&host).map(str::to_owned).or_else(|| {
            self.aliases
                .load()
                .get(host.as_str())
                .map(|a| a.to_string())
        })
    }

    /// The error for a request that names no usable host.
    pub(crate) fn missing_host(&self) -> ProxyError {
        ProxyError::MissingHost {
            domain: self.domain.to_string(),
        }
    }

    /// The error for a Host header that is not visible ASCII.
    pub(crate) fn invalid_host(&self) -> ProxyError {
        ProxyError::InvalidHost {
            domain: self.domain.to_string(),
        }
    }
}

/// A raw Host value (or SNI) as the edge compares hosts: `:port` and one
/// trailing dot stripped, lowercase. Borrows unless it must lowercase.
pub fn normalize(raw_host: &str) -> std::borrow::Cow<'_, str> {
    let host = strip_port(raw_host.trim());
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

/// Strips a `:port` suffix, keeping bracketed IPv6 literals whole.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.find(':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

impl RouteSink for RouteTable {
    fn publish(&self, app: &str, upstreams: Vec<SocketAddr>, limits: Limits) {
        let name: Box<str> = app.to_ascii_lowercase().into_boxed_str();
        let _writing = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.routes.load().get(&name).cloned();
        // Every machine the app had, live or draining: an address keeps its
        // counter across updates, even one that left and came back.
        let known: Vec<&Upstream> = previous
            .iter()
            .flat_map(|r| r.upstreams.iter().chain(r.draining.iter()))
            .collect();
        let mut live: Vec<Upstream> = Vec::with_capacity(upstreams.len());
        for addr in upstreams {
            // A repeated address shares its counter: the limits are per machine.
            let in_flight = live
                .iter()
                .chain(known.iter().copied())
                .find(|u| u.addr == addr)
                .map(|u| Arc::clone(&u.in_flight))
                .unwrap_or_default();
            live.push(Upstream { addr, in_flight });
        }
        // Removed now: kept whatever their count (a request that resolved
        // the old route may be claiming one). Removed earlier: kept while
        // requests to them are in flight.
        let mut draining: Vec<Upstream> = Vec::new();
        if let Some(prev) = &previous {
            let busy = |u: &&Upstream| u.in_flight.load(Ordering::SeqCst) > 0;
            for u in prev
                .upstreams
                .iter()
                .chain(prev.draining.iter().filter(busy))
            {
                let gone = !live.iter().any(|l| l.addr == u.addr);
                if gone && !draining.iter().any(|d| d.addr == u.addr) {
                    draining.push(u.clone());
                }
            }
        }
        tracing::info!(
            app = %name,
            upstreams = live.len(),
            draining = draining.len(),
            "route set"
        );
        let activity = previous
            .as_ref()
            .map(|r| Arc::clone(&r.activity))
            .unwrap_or_else(|| Arc::new(AppActivity::new()));
        let route = Arc::new(AppRoute {
            name: name.clone(),
            upstreams: live.into_boxed_slice(),
            next: AtomicUsize::new(0),
            limits,
            activity: Arc::clone(&activity),
            draining: draining.into_boxed_slice(),
            replaced: AtomicBool::new(false),
        });
        self.routes.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(name.clone(), Arc::clone(&route));
            next
        });
        // After the swap, before anyone can read a removed machine's
        // counter from the new route: see `AppRoute::is_replaced`.
        if let Some(prev) = &previous {
            prev.replaced.store(true, Ordering::SeqCst);
        }
        // Queued requests look again: a new machine or new limits may
        // have room for them.
        activity.released.notify_waiters();
    }

    fn remove_app(&self, app: &str) {
        let name = app.to_ascii_lowercase();
        let _writing = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        tracing::info!(app = %name, "route removed");
        self.routes.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(name.as_str());
            next
        });
    }
}

impl RouteTable {
    /// Prometheus text exposition of every app's proxy metrics.
    pub fn render_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP hangar_proxy_requests_total Requests answered for an app, by status class.\n\
             # TYPE hangar_proxy_requests_total counter\n\
             # HELP hangar_proxy_in_flight Requests (and open streams) in flight.\n\
             # TYPE hangar_proxy_in_flight gauge\n\
             # HELP hangar_proxy_wakes_total Machines started or resumed for a request.\n\
             # TYPE hangar_proxy_wakes_total counter\n\
             # HELP hangar_proxy_queued Requests waiting for a machine under its hard limit.\n\
             # TYPE hangar_proxy_queued gauge\n\
             # HELP hangar_proxy_rejected_total Requests refused: every machine stayed at its hard limit.\n\
             # TYPE hangar_proxy_rejected_total counter\n\
             # HELP hangar_proxy_failovers_total Requests retried on another machine after a connect failed.\n\
             # TYPE hangar_proxy_failovers_total counter\n\
             # HELP hangar_proxy_request_duration_seconds Time to the response head.\n\
             # TYPE hangar_proxy_request_duration_seconds histogram\n\
             # HELP hangar_proxy_wake_duration_seconds Time from wake to routed.\n\
             # TYPE hangar_proxy_wake_duration_seconds histogram\n",
        );
        let routes = self.routes.load();
        let mut apps: Vec<_> = routes.iter().collect();
        apps.sort_by(|a, b| a.0.cmp(b.0));
        for (name, route) in apps {
            route.activity.render(&mut out, name);
        }
        out
    }
}

impl Activity for RouteTable {
    fn idle_for(&self, app: &str) -> Option<Duration> {
        self.routes.load().get(app)?.activity.idle_for()
    }

    fn in_flight_to(&self, app: &str, upstream: SocketAddr) -> usize {
        let routes = self.routes.load();
        let Some(route) = routes.get(app) else {
            return 0;
        };
        route
            .upstreams
            .iter()
            .chain(route.draining.iter())
            .find(|u| u.addr == upstream)
            // SeqCst: pairs with the claim and `AppRoute::is_replaced`.
            .map_or(0, |u| u.in_flight.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let t = RouteTable::new("Localhost.");
        t.set_route("hello", vec!["127.0.0.1:1".parse().expect("addr")]);
        t
    }

    #[test]
    fn domain_is_normalised() {
        assert_eq!(table().domain(), "localhost");
    }

    #[test]
    fn host_forms_that_reach_the_app() {
        let t = table();
        for host in [
            "hello.localhost",
            "hello.localhost:8080",
            "HELLO.LocalHost",
            "hello.localhost.",
            "hello.localhost.:80",
        ] {
            let route = t.resolve(host).unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!(&*route.name, "hello");
        }
    }

    #[test]
    fn custom_domains_route_to_their_app_and_nothing_else() {
        let t = table();
        t.set_aliases([("www.example.com".to_owned(), "hello".to_owned())]);
        let route = t.resolve("WWW.Example.com.:80").expect("routed");
        assert_eq!(&*route.name, "hello");
        assert_eq!(t.app_of_host("www.example.com").as_deref(), Some("hello"));
        assert!(matches!(
            t.resolve("example.com"),
            Err(ProxyError::ForeignHost { .. })
        ));
        // Removed: foreign again.
        t.set_aliases([]);
        assert!(matches!(
            t.resolve("www.example.com"),
            Err(ProxyError::ForeignHost { .. })
        ));
    }

    #[test]
    fn hosts_outside_the_domain_are_foreign() {
        let t = table();
        for host in [
            "localhost",
            "a.hello.localhost",
            ".localhost",
            "hello.example.com",
            "[::1]:80",
            "",
            "hellolocalhost",
        ] {
            match t.resolve(host) {
                Err(ProxyError::ForeignHost { domain, .. }) => assert_eq!(domain, "localhost"),
                other => panic!("{host}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_app_names_the_host() {
        match table().resolve("Nope.localhost:99") {
            Err(e @ ProxyError::UnknownApp { .. }) => {
                assert_eq!(e.to_string(), "no app is deployed at host 'nope.localhost'");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The upstream a pick chose, and its claim.
    fn pick(route: &AppRoute) -> Option<(SocketAddr, ActivityGuard)> {
        match route.try_pick() {
            Pick::Chosen(i, guard) => Some((route.upstreams[i].addr, guard)),
            Pick::Full | Pick::NoMachine => None,
        }
    }

    #[test]
    fn idle_upstreams_take_turns() {
        let t = RouteTable::new("localhost");
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        t.set_route("hello", vec![a, b]);
        let route = t.resolve("hello.localhost").expect("route");
        // Each claim is released at once, so every pick sees a tie.
        let picks: Vec<SocketAddr> = (0..4).map(|_| pick(&route).expect("upstream").0).collect();
        assert_eq!(picks, vec![a, b, a, b]);
    }

    #[test]
    fn least_in_flight_wins() {
        let t = RouteTable::new("localhost");
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        t.set_route("hello", vec![a, b]);
        let route = t.resolve("hello.localhost").expect("route");
        let held: Vec<_> = (0..3).map(|_| pick(&route).expect("upstream")).collect();
        // a, b, then a tie again; whichever had the third now has 2.
        let busy = held[2].0;
        let other = if busy == a { b } else { a };
        for _ in 0..3 {
            assert_eq!(pick(&route).expect("upstream").0, other);
        }
        drop(held);
        assert_eq!(route.upstreams[0].in_flight.load(Ordering::SeqCst), 0);
        assert_eq!(route.upstreams[1].in_flight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn hard_limit_caps_each_machine_and_survives_updates() {
        let t = RouteTable::new("localhost");
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let limits = Limits {
            soft: Some(1),
            hard: Some(2),
        };
        t.publish("hello", vec![a], limits);
        let route = t.resolve("hello.localhost").expect("route");
        let first = pick(&route).expect("slot 1");
        assert!(!route.over_soft_limit(0));
        let second = pick(&route).expect("slot 2");
        assert!(route.over_soft_limit(0), "2 in flight > soft 1");
        assert!(matches!(route.try_pick(), Pick::Full));
        assert_eq!(route.queue_capacity(), 2);
        // A republished route keeps a's load; b has room.
        t.publish("hello", vec![a, b], limits);
        let route = t.resolve("hello.localhost").expect("route");
        let (to, _third) = pick(&route).expect("room on b");
        assert_eq!(to, b);
        drop((first, second));
        assert_eq!(pick(&route).expect("room on a again").0, a);
        assert_eq!(route.queue_capacity(), 4);
    }

    #[test]
    fn removed_upstreams_drain_and_keep_their_counter() {
        let t = RouteTable::new("localhost");
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        t.set_route("hello", vec![a]);
        let old = t.resolve("hello.localhost").expect("route");
        let (to, held) = pick(&old).expect("a");
        assert_eq!((to, t.in_flight_to("hello", a)), (a, 1));
        assert!(!old.is_replaced());

        // a leaves the route: still counted, never picked, old route marked.
        t.set_route("hello", vec![b]);
        assert!(old.is_replaced());
        let route = t.resolve("hello.localhost").expect("route");
        assert_eq!(route.draining.len(), 1);
        assert_eq!(t.in_flight_to("hello", a), 1);
        for _ in 0..4 {
            assert_eq!(pick(&route).expect("b").0, b);
        }
        // Carried over by later publishes while busy.
        t.set_route("hello", vec![b]);
        assert_eq!(t.in_flight_to("hello", a), 1);
        drop(held);
        assert_eq!(t.in_flight_to("hello", a), 0);
        // Idle and removed two publishes ago: forgotten.
        t.set_route("hello", vec![b]);
        let route = t.resolve("hello.localhost").expect("route");
        assert!(route.draining.is_empty());
        assert_eq!(t.in_flight_to("hello", a), 0);
        assert_eq!(t.in_flight_to("nope", a), 0);
    }

    #[test]
    fn an_address_that_comes_back_reuses_its_counter() {
        let t = RouteTable::new("localhost");
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        t.set_route("hello", vec![a, b]);
        let (_, on_a) = pick(&t.resolve("hello.localhost").expect("route")).expect("a");
        t.set_route("hello", vec![b]);
        t.set_route("hello", vec![b, a]);
        let route = t.resolve("hello.localhost").expect("route");
        assert!(route.draining.is_empty());
        assert_eq!(t.in_flight_to("hello", a), 1);
        // a still has one in flight, so the least loaded is b.
        assert_eq!(pick(&route).expect("b").0, b);
        drop(on_a);
        assert_eq!(t.in_flight_to("hello", a), 0);
    }

    #[test]
    fn excluded_upstreams_are_not_picked() {
        let t = RouteTable::new("localhost");
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        t.set_route("hello", vec![a, b]);
        let route = t.resolve("hello.localhost").expect("route");
        for _ in 0..4 {
            match route.try_pick_excluding(&[a]) {
                Pick::Chosen(i, _guard) => assert_eq!(route.upstreams[i].addr, b),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(route.try_pick_excluding(&[b, a]), Pick::NoMachine));
        assert_eq!(t.in_flight_to("hello", a) + t.in_flight_to("hello", b), 0);
    }

    #[test]
    fn remove_and_replace() {
        let t = table();
        assert!(pick(&t.resolve("hello.localhost").expect("route")).is_some());
        t.set_route("hello", vec![]);
        assert!(matches!(
            t.resolve("hello.localhost").expect("route").try_pick(),
            Pick::NoMachine
        ));
        assert_eq!(t.upstreams("hello"), Some(vec![]));
        t.remove_app("hello");
        assert!(matches!(
            t.resolve("hello.localhost"),
            Err(ProxyError::UnknownApp { .. })
        ));
        assert_eq!(t.upstreams("hello"), None);
    }
}
