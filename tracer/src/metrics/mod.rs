//! `watch --metrics`: Prometheus metrics of the live run.
//!
//! The event loop only bumps plain counters ([`Counters`]) and, once a second, publishes a
//! [`Snapshot`] (a pointer swapped under a mutex held for the swap alone). The HTTP server
//! runs on its own thread and does the slow parts on each scrape: the top-N cut, the
//! owners' descriptor counts and limits from /proc, and the text encoding.

use std::{
    collections::{BTreeSet, HashMap},
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    thread,
};

use anyhow::Context as _;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    attribute::procfs::ProcFs,
    model::State,
    output::summary::{Group, ServicePort},
};

/// States are counted in arrays indexed by their number; larger (unknown) ones share the
/// last slot.
const STATES: usize = 16;

/// The comm of stuck sockets whose owner is not known (yet, or at all).
pub const UNKNOWN: &str = "unknown";
/// The comm under which groups beyond the top N are summed.
pub const OTHER: &str = "other";

fn slot(s: State) -> usize {
    usize::from(s.0).min(STATES - 1)
}

/// What the event loop counts: a few array increments per event, nothing more.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    transitions: [[u64; STATES]; STATES],
    stuck: [u64; STATES],
    resolved: [u64; STATES],
}

impl Counters {
    /// One transition from `old` to `new`.
    pub fn transition(&mut self, old: State, new: State) {
        self.transitions[slot(old)][slot(new)] += 1;
    }

    /// One socket reported stuck in `state`.
    pub fn stuck(&mut self, state: State) {
        self.stuck[slot(state)] += 1;
    }

    /// One stuck socket that left `state`.
    pub fn resolved(&mut self, state: State) {
        self.resolved[slot(state)] += 1;
    }
}

/// One published view of the run, rendered on each scrape.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub counters: Counters,
    /// Transitions read from the probe.
    pub events: u64,
    /// Transitions the probe dropped.
    pub lost: u64,
    /// Runs of the probe the kernel skipped (a BPF program already running on that CPU).
    pub missed: u64,
    /// Sockets tracked per state.
    pub sockets: Vec<(State, usize)>,
    /// Sockets stuck now, grouped as the summary groups them, largest first.
    pub groups: Vec<Group>,
    /// When it was taken (monotonic ns), for the ages of the oldest.
    pub at_ns: u64,
}

/// Where the event loop publishes snapshots for the server.
#[derive(Clone, Debug, Default)]
pub struct Published(Arc<Mutex<Arc<Snapshot>>>);

impl Published {
    /// Replaces the snapshot; the lock is held for the pointer swap only.
    pub fn publish(&self, snapshot: Snapshot) {
        let new = Arc::new(snapshot);
        let old = std::mem::replace(&mut *self.lock(), new);
        // Freed outside the lock.
        drop(old);
    }

    /// The latest snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<Snapshot>> {
        // A panic elsewhere cannot leave a pointer half-swapped.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Parses `--metrics`: `HOST:PORT`, or a bare port on 127.0.0.1.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| {
        format!("`{s}` is not an address to serve metrics on: give PORT or IP:PORT, e.g. 127.0.0.1:9977")
    })
}

/// The HTTP server of `/metrics`, on a thread of its own.
pub struct Server {
    addr: SocketAddr,
}

impl Server {
    /// Listens on `addr` (failing now, before the probe is loaded, when the address is
    /// taken) and serves `published` with at most `top` groups and owners.
    pub fn start(addr: SocketAddr, top: usize, published: Published) -> anyhow::Result<Self> {
        // Bound here rather than by tiny_http, to keep the OS error's kind for the message.
        let listener = TcpListener::bind(addr).map_err(|e| {
            anyhow::anyhow!(
                "cannot serve metrics on {addr}: {e}; choose another address with --metrics"
            )
        })?;
        let addr = listener
            .local_addr()
            .context("cannot read the metrics address")?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&server, top, &published))
            .context("cannot start the metrics thread")?;
        Ok(Self { addr })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Answers scrapes until the process ends. tiny_http reads each connection's request on
/// a pool thread of its own, so a slow client holds only its own connection.
fn serve(server: &tiny_http::Server, top: usize, published: &Published) {
    let proc = ProcFs::default();
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or_default();
        let response = match (request.method(), path) {
            (tiny_http::Method::Get, "/metrics") => {
                let text = render(
                    &published.latest(),
                    top,
                    crate::output::monotonic_ns(),
                    |pid| owner_fds(&proc, pid),
                );
                tiny_http::Response::from_string(text).with_header(
                    tiny_http::Header::from_bytes(
                        "Content-Type",
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .expect("a valid header"),
                )
            }
            _ => tiny_http::Response::from_string("not found: metrics are at /metrics\n")
                .with_status_code(404),
        };
        // A client that went away is its own problem.
        let _ = request.respond(response);
    }
}

/// Open descriptors and their soft limit of process `pid`, now.
fn owner_fds(proc: &ProcFs, pid: u32) -> (Option<usize>, Option<u64>) {
    (
        proc.fd_count(pid),
        proc.process(pid).and_then(|p| p.fd_limit),
    )
}

/// The labels of one stuck-socket series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    state: String,
    comm: String,
    port: String,
    netns: String,
}

/// Stuck sockets under one label set.
#[derive(Clone, Copy, Debug)]
struct Stuck {
    count: usize,
    oldest_since_ns: u64,
}

/// The service port as a label: the port number alone (local for accepted sockets, remote
/// for connected ones, as in the summary).
fn port_label(p: ServicePort) -> String {
    match p {
        ServicePort::Local(port) | ServicePort::Remote(_, port) => port.to_string(),
    }
}

/// Renders `snap` in the text exposition format with at most `top` stuck-socket groups
/// per state (the rest summed under comm="other") and owners; `fds` reads an owner's open
/// descriptors and limit now.
pub fn render(
    snap: &Snapshot,
    top: usize,
    now_ns: u64,
    mut fds: impl FnMut(u32) -> (Option<usize>, Option<u64>),
) -> String {
    let mut registry = Registry::default();

    let transitions = Family::<Vec<(String, String)>, Counter>::default();
    for (from, row) in snap.counters.transitions.iter().enumerate() {
        for (to, &n) in row.iter().enumerate() {
            if n > 0 {
                let labels = vec![
                    ("from".into(), State(from as u8).to_string()),
                    ("to".into(), State(to as u8).to_string()),
                ];
                transitions.get_or_create(&labels).inc_by(n);
            }
        }
    }
    registry.register(
        "tracer_transitions",
        "TCP state transitions seen",
        transitions,
    );

    let per_state = |counts: &[u64; STATES]| {
        let family = Family::<Vec<(String, String)>, Counter>::default();
        for (s, &n) in counts.iter().enumerate() {
            if n > 0 {
                family
                    .get_or_create(&vec![("state".into(), State(s as u8).to_string())])
                    .inc_by(n);
            }
        }
        family
    };
    registry.register(
        "tracer_stuck",
        "Sockets reported stuck past their state's threshold",
        per_state(&snap.counters.stuck),
    );
    registry.register(
        "tracer_resolved",
        "Stuck sockets that left their state",
        per_state(&snap.counters.resolved),
    );
    let events = Counter::<u64>::default();
    events.inc_by(snap.events);
    registry.register("tracer_events", "Transitions read from the probe", events);
    let lost = Counter::<u64>::default();
    lost.inc_by(snap.lost);
    registry.register(
        "tracer_events_lost",
        "Transitions the probe dropped (ring buffer full)",
        lost,
    );
    let missed = Counter::<u64>::default();
    missed.inc_by(snap.missed);
    registry.register(
        "tracer_events_missed",
        "Transitions the kernel did not run the probe for (a BPF program already running on that CPU; may include filtered ones)",
        missed,
    );

    let sockets = Family::<Vec<(String, String)>, Gauge>::default();
    for (s, n) in &snap.sockets {
        sockets
            .get_or_create(&vec![("state".into(), s.to_string())])
            .set(*n as i64);
    }
    registry.register("tracer_sockets", "Sockets tracked, per state", sockets);

    let (stuck, owners) = cut(&snap.groups, top);
    let count = Family::<Vec<(String, String)>, Gauge>::default();
    let oldest =
        Family::<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (k, s) in &stuck {
        let labels = vec![
            ("state".into(), k.state.clone()),
            ("comm".into(), k.comm.clone()),
            ("port".into(), k.port.clone()),
            ("netns".into(), k.netns.clone()),
        ];
        count.get_or_create(&labels).set(s.count as i64);
        let age = now_ns.saturating_sub(s.oldest_since_ns) as f64 / 1e9;
        oldest.get_or_create(&labels).set(age);
    }
    registry.register(
        "tracer_stuck_sockets",
        "Sockets stuck now, by state, owner command and service port",
        count,
    );
    registry.register(
        "tracer_stuck_oldest_seconds",
        "Time the oldest of these sockets has been in its state",
        oldest,
    );

    let open = Family::<Vec<(String, String)>, Gauge>::default();
    let limit = Family::<Vec<(String, String)>, Gauge>::default();
    for (pid, comm, seen_count, seen_limit) in owners {
        let (now_count, now_limit) = fds(pid);
        let labels = vec![("comm".into(), comm), ("pid".into(), pid.to_string())];
        if let Some(n) = now_count.or(seen_count) {
            open.get_or_create(&labels).set(n as i64);
        }
        if let Some(n) = now_limit.or(seen_limit) {
            limit
                .get_or_create(&labels)
                .set(n.min(i64::MAX as u64) as i64);
        }
    }
    registry.register(
        "tracer_owner_open_fds",
        "Open descriptors of processes holding stuck sockets",
        open,
    );
    registry.register(
        "tracer_owner_fd_limit",
        "Descriptor limit (soft) of processes holding stuck sockets",
        limit,
    );

    // A gauge at 1 rather than an OpenMetrics info: promtool and the classic text parser
    // know no info type.
    let build = Family::<Vec<(String, String)>, Gauge>::default();
    build
        .get_or_create(&vec![
            ("version".into(), env!("CARGO_PKG_VERSION").into()),
            ("arch".into(), std::env::consts::ARCH.into()),
        ])
        .set(1);
    registry.register("tracer_build_info", "The tracer's version, always 1", build);

    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    classic(&text)
}

/// The Prometheus text format (0.0.4) of OpenMetrics `text`, which prometheus-client
/// writes: a counter's HELP and TYPE lines name it with its `_total` suffix, as its
/// samples do, and there is no `# EOF`. Every Prometheus and promtool reads this format;
/// promtool reads no other.
fn classic(text: &str) -> String {
    let counters: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 16 * counters.len());
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// An owner of stuck sockets: pid, comm, open descriptors and limit when looked up.
type OwnerRow = (u32, String, Option<usize>, Option<u64>);

/// Stuck sockets by label set, at most `top` per state plus one "other" per state, and the
/// owners of the `top` largest groups (those with a pid).
fn cut(groups: &[Group], top: usize) -> (Vec<(Key, Stuck)>, Vec<OwnerRow>) {
    // Groups that differ only in what is not a label (pid, the remote address) share a
    // series.
    let mut merged: HashMap<Key, Stuck> = HashMap::new();
    for g in groups {
        let key = Key {
            state: g.state.to_string(),
            comm: g.comm.clone().unwrap_or_else(|| UNKNOWN.into()),
            port: port_label(g.port),
            netns: g.netns.map(|n| n.to_string()).unwrap_or_default(),
        };
        let s = merged.entry(key).or_insert(Stuck {
            count: 0,
            oldest_since_ns: g.oldest_since_ns,
        });
        s.count += g.count;
        s.oldest_since_ns = s.oldest_since_ns.min(g.oldest_since_ns);
    }
    let mut merged: Vec<_> = merged.into_iter().collect();
    merged.sort_by(|(ka, a), (kb, b)| {
        (&ka.state, b.count, a.oldest_since_ns, ka).cmp(&(
            &kb.state,
            a.count,
            b.oldest_since_ns,
            kb,
        ))
    });
    let mut out: Vec<(Key, Stuck)> = Vec::new();
    let mut others: HashMap<String, Stuck> = HashMap::new();
    let mut kept_in_state = 0;
    let mut last_state = None;
    for (k, s) in merged {
        if last_state.as_ref() != Some(&k.state) {
            last_state = Some(k.state.clone());
            kept_in_state = 0;
        }
        if kept_in_state < top {
            kept_in_state += 1;
            out.push((k, s));
            continue;
        }
        let o = others.entry(k.state).or_insert(Stuck {
            count: 0,
            oldest_since_ns: s.oldest_since_ns,
        });
        o.count += s.count;
        o.oldest_since_ns = o.oldest_since_ns.min(s.oldest_since_ns);
    }
    let mut others: Vec<_> = others.into_iter().collect();
    others.sort_by(|a, b| a.0.cmp(&b.0));
    for (state, s) in others {
        let key = Key {
            state,
            comm: OTHER.into(),
            port: String::new(),
            netns: String::new(),
        };
        out.push((key, s));
    }

    // The summary's groups come largest first.
    let mut seen = BTreeSet::new();
    let mut owners = Vec::new();
    for g in groups {
        let (Some(pid), Some(comm)) = (g.pid, &g.comm) else {
            continue;
        };
        if owners.len() == top {
            break;
        }
        if seen.insert(pid) {
            owners.push((pid, comm.clone(), g.fd_count, g.fd_limit));
        }
    }
    (out, owners)
}

#[cfg(test)]
mod tests;
