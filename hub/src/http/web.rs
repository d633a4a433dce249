//! The live web view and the JSON it reads. The page is plain HTML, JS and
//! CSS built into the binary (no build step, nothing fetched from elsewhere:
//! plant networks are offline).
//!
//! | path | what |
//! | --- | --- |
//! | `/`, `/app.js`, `/app.css` | the page |
//! | `/api/overview` | services and workers, agents, the hub's stores, buses, recent state changes, channels |
//! | `/api/events` | the overview again every second, as server-sent events |
//! | `/api/samples?topic=T` | one channel: its recent samples, then each new one, as events |
//!
//! The page's own files ([`PUBLIC`]) need no token: it asks for the token on
//! the page, keeps it in the tab's `sessionStorage`, sends it as
//! `Authorization: Bearer` and opens each live stream with a ticket.
//!
//! The overview's `hub.stream_s` is the seconds since its event stream began
//! (the page divides counter deltas by its deltas for rates); a samples
//! event is `{"topic", "unit", "points": [{"wall_ns", "t_ms", "value"}]}`.
//!
//! What the page shows of the buses comes from their in-process taps
//! ([`Watcher`]): the state bus always (recent changes), the metric bus only
//! for the channels someone is charting, with the last minutes kept. What is
//! kept of a state change is cut to [`SHOWN_BYTES`] a field (a 900 kB key or
//! value is shown as its first bytes, marked), and all kept changes together
//! to [`STATE_CHANGES_BYTES`]: the overview, sent every second to every open
//! page, stays small whatever clients write.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use httpd::{Get, Reply};
use serde_json::{json, Value};
use transport::ShutdownWatch;

use super::Sources;
use crate::broker::ServiceRow;
use crate::bus::BusCounters;

/// Points kept per charted channel, and for how long after its last viewer.
const POINTS: usize = 1200;
const KEEP_AFTER_VIEW: Duration = Duration::from_secs(600);
/// Channels charted at once, at most.
const MAX_CHARTS: usize = 64;
/// State changes kept.
const STATE_CHANGES: usize = 50;
/// Bytes of a state change's scope, key, time or value (as JSON text) shown; the rest is cut.
pub const SHOWN_BYTES: usize = 256;
/// Bytes of all the state changes kept (as JSON), at most: older ones go first.
pub const STATE_CHANGES_BYTES: usize = 64 << 10;

/// The page's own code, served without the token: it holds no data, and the
/// page has to load to ask for the token.
pub const PUBLIC: &[&str] = &["/", "/index.html", "/app.js", "/app.css", "/favicon.svg"];

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const APP_CSS: &str = include_str!("web/app.css");

/// One sample as the chart draws it.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Receive order, so a stream knows what it has sent.
    pub n: u64,
    pub wall_ns: i64,
    pub value: Value,
}

#[derive(Default)]
struct Chart {
    /// The channel's unit, from its samples.
    unit: String,
    points: VecDeque<Point>,
    next: u64,
    viewers: usize,
    last_viewed: Option<Instant>,
}

/// What the web view reads besides the components' own state.
#[derive(Clone, Default)]
pub struct Feeds {
    pub buses: Vec<(String, Arc<BusCounters>)>,
    state_changes: Arc<Mutex<Changes>>,
    /// State changes shown cut (a field over SHOWN_BYTES), for metrics.
    pub truncated: Arc<AtomicU64>,
    charts: Arc<Mutex<HashMap<String, Chart>>>,
}

/// The latest state changes as shown, newest first, with their size as JSON.
#[derive(Default)]
struct Changes {
    kept: VecDeque<(Value, usize)>,
    bytes: usize,
}

impl Changes {
    fn push(&mut self, change: Value) {
        let size = change.to_string().len();
        self.kept.push_front((change, size));
        self.bytes += size;
        while self.kept.len() > STATE_CHANGES || self.bytes > STATE_CHANGES_BYTES {
            let Some((_, size)) = self.kept.pop_back() else { break };
            self.bytes -= size;
        }
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), and whether it was.
fn cut(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

/// A state change as the page shows it: each field cut to SHOWN_BYTES. A
/// value too long is sent as `value_preview` (its JSON text, cut) with
/// `value_bytes`; `truncated` names the fields cut. None if it is no change.
pub fn shown_change(payload: &[u8]) -> Option<(Value, bool)> {
    let event: proto::state::Event = serde_json::from_slice(payload).ok()?;
    let mut truncated = Vec::new();
    let mut field = |name: &'static str, text: &str| {
        let (shown, was_cut) = cut(text, SHOWN_BYTES);
        if was_cut {
            truncated.push(name);
        }
        json!(shown)
    };
    let mut change = json!({
        "ts": field("ts", &event.ts),
        "scope": field("scope", &event.scope),
        "key": event.key.as_deref().map(|key| field("key", key)),
        "op": event.op,
    });
    if let Some(key) = event.key.as_deref().filter(|key| key.len() > SHOWN_BYTES) {
        change["key_bytes"] = json!(key.len());
    }
    if let Some(value) = event.value {
        let text = value.to_string();
        match cut(&text, SHOWN_BYTES) {
            (_, false) => change["value"] = value,
            (preview, true) => {
                truncated.push("value");
                change["value_preview"] = json!(preview);
                change["value_bytes"] = json!(text.len());
            }
        }
    }
    let was_cut = !truncated.is_empty();
    if was_cut {
        change["truncated"] = json!(truncated);
    }
    Some((change, was_cut))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Feeds {
    /// Feeds for these buses' counters.
    pub fn new(buses: Vec<(String, Arc<BusCounters>)>) -> Feeds {
        Feeds { buses, ..Feeds::default() }
    }

    /// Starts charting `topic` (or counts one more viewer); false if
    /// `MAX_CHARTS` other channels are charted.
    fn view(&self, topic: &str) -> bool {
        let mut charts = lock(&self.charts);
        if !charts.contains_key(topic) && charts.len() >= MAX_CHARTS {
            return false;
        }
        let chart = charts.entry(topic.to_string()).or_default();
        chart.viewers += 1;
        chart.last_viewed = Some(Instant::now());
        true
    }

    fn unview(&self, topic: &str) {
        if let Some(chart) = lock(&self.charts).get_mut(topic) {
            chart.viewers = chart.viewers.saturating_sub(1);
            chart.last_viewed = Some(Instant::now());
        }
    }

    /// Points of `topic` after `n`, and its unit.
    fn points_after(&self, topic: &str, n: Option<u64>) -> (Vec<Point>, String) {
        let charts = lock(&self.charts);
        let Some(chart) = charts.get(topic) else { return (Vec::new(), String::new()) };
        (chart.points.iter().filter(|p| n.is_none_or(|n| p.n > n)).cloned().collect(), chart.unit.clone())
    }

    fn record(&self, topic: &str, wall_ns: i64, value: Value, unit: Option<&str>) {
        let mut charts = lock(&self.charts);
        let Some(chart) = charts.get_mut(topic) else { return };
        if let Some(unit) = unit {
            if chart.unit != unit {
                chart.unit = unit.to_string();
            }
        }
        chart.next += 1;
        chart.points.push_back(Point { n: chart.next, wall_ns, value });
        if chart.points.len() > POINTS {
            chart.points.pop_front();
        }
    }

    /// Topics charted now (subscribed on the metric tap), after dropping
    /// those nobody has viewed for a while.
    fn charted(&self) -> BTreeSet<String> {
        let mut charts = lock(&self.charts);
        charts.retain(|_, c| c.viewers > 0 || c.last_viewed.is_some_and(|t| t.elapsed() < KEEP_AFTER_VIEW));
        charts.keys().cloned().collect()
    }
}

/// Follows the buses' taps for the web view, on its own thread: every state
/// change, and the samples of the channels being charted.
pub struct Watcher {
    feeds: Feeds,
    state_tap: Option<String>,
    metric_tap: Option<String>,
}

impl Watcher {
    pub fn new(feeds: Feeds, state_tap: Option<String>, metric_tap: Option<String>) -> Watcher {
        Watcher { feeds, state_tap, metric_tap }
    }

    pub fn run(self, ctx: &zmq::Context, stop: &ShutdownWatch) -> zmq::Result<()> {
        let connect = |tap: &Option<String>| -> zmq::Result<Option<zmq::Socket>> {
            let Some(endpoint) = tap else { return Ok(None) };
            let socket = ctx.socket(zmq::SUB)?;
            socket.set_rcvhwm(10_000)?;
            socket.connect(endpoint)?;
            Ok(Some(socket))
        };
        let (state, metric) = (connect(&self.state_tap)?, connect(&self.metric_tap)?);
        if let Some(state) = &state {
            state.set_subscribe(proto::state::TOPIC_PREFIX.as_bytes())?;
        }
        let mut subscribed = BTreeSet::new();
        while !stop.is_set() {
            if let Some(metric) = &metric {
                let wanted = self.feeds.charted();
                for topic in subscribed.difference(&wanted) {
                    metric.set_unsubscribe(topic.as_bytes())?;
                }
                for topic in wanted.difference(&subscribed) {
                    metric.set_subscribe(topic.as_bytes())?;
                }
                subscribed = wanted;
            }
            let mut items: Vec<zmq::PollItem<'_>> =
                state.iter().chain(metric.iter()).map(|s| s.as_poll_item(zmq::POLLIN)).collect();
            items.push(stop.poll_item());
            match zmq::poll(&mut items, 250) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e),
            }
            if let Some(state) = &state {
                while let Ok(frames) = state.recv_multipart(zmq::DONTWAIT) {
                    self.state_change(&frames);
                }
            }
            if let Some(metric) = &metric {
                while let Ok(frames) = metric.recv_multipart(zmq::DONTWAIT) {
                    self.sample(&frames);
                }
            }
        }
        Ok(())
    }

    fn state_change(&self, frames: &[Vec<u8>]) {
        let Some((_, payload)) = proto::bus::split(frames) else { return };
        let Some((change, was_cut)) = shown_change(payload) else { return };
        if was_cut {
            self.feeds.truncated.fetch_add(1, Relaxed);
        }
        lock(&self.feeds.state_changes).push(change);
    }

    fn sample(&self, frames: &[Vec<u8>]) {
        let Some((topic, payload)) = proto::bus::split(frames) else { return };
        let Ok(sample) = serde_json::from_slice::<Value>(payload) else { return };
        let wall_ns = sample["wall_ns"].as_i64().unwrap_or_else(crate::clock::wall_ns);
        // A chart of one channel: the exact topic, not everything under it.
        let topic = String::from_utf8_lossy(topic);
        self.feeds.record(&topic, wall_ns, sample["value"].clone(), sample["unit"].as_str());
    }
}

pub fn route(sources: &Sources, get: &Get<'_>) -> Reply {
    let asset =
        |content_type, body: &str| Reply::Body { status: 200, content_type, body: body.as_bytes().to_vec() };
    match get.path {
        "/" | "/index.html" => asset("text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => asset("text/javascript; charset=utf-8", APP_JS),
        "/app.css" => asset("text/css; charset=utf-8", APP_CSS),
        "/favicon.svg" => asset("image/svg+xml", include_str!("web/favicon.svg")),
        "/api/overview" => Reply::json(200, overview(sources).to_string()),
        "/api/events" => {
            let sources = Overview::from(sources);
            let ticks = smol::stream::unfold((sources, true), |(sources, first)| async move {
                if !first {
                    smol::Timer::after(Duration::from_secs(1)).await;
                }
                let json = sources.json().to_string();
                Some((json, (sources, false)))
            });
            Reply::Events(Box::pin(ticks))
        }
        "/api/samples" => {
            let Some(topic) = get.param("topic").filter(|t| t.starts_with(proto::sample::TOPIC_PREFIX))
            else {
                return Reply::text(
                    400,
                    format!("give ?topic={}<agent>.<channel>\n", proto::sample::TOPIC_PREFIX),
                );
            };
            let feeds = sources.web.clone();
            if !feeds.view(&topic) {
                return Reply::text(
                    503,
                    format!("{MAX_CHARTS} channels are charted already: try again later\n"),
                );
            }
            Reply::Events(Box::pin(samples(feeds, topic)))
        }
        _ => Reply::not_found(),
    }
}

/// `{"points": [...]}` at once (what is kept), then every 250 ms what is new.
fn samples(feeds: Feeds, topic: String) -> impl smol::stream::Stream<Item = String> + Send {
    struct Viewing {
        feeds: Feeds,
        topic: String,
        last: Option<u64>,
    }
    impl Drop for Viewing {
        fn drop(&mut self) {
            self.feeds.unview(&self.topic);
        }
    }
    let viewing = Viewing { feeds, topic, last: None };
    smol::stream::unfold(viewing, |mut v| async move {
        loop {
            if v.last.is_some() {
                smol::Timer::after(Duration::from_millis(250)).await;
            }
            let (points, unit) = v.feeds.points_after(&v.topic, v.last);
            let first = v.last.is_none();
            if let Some(p) = points.last() {
                v.last = Some(p.n);
            } else if first {
                v.last = Some(0);
            }
            if first || !points.is_empty() {
                // t_ms: JavaScript numbers hold milliseconds exactly, not nanoseconds.
                let points: Vec<Value> = points
                    .iter()
                    .map(|p| json!({"wall_ns": p.wall_ns, "t_ms": p.wall_ns / 1_000_000, "value": p.value}))
                    .collect();
                let event = json!({"topic": v.topic, "unit": unit, "points": points}).to_string();
                return Some((event, v));
            }
        }
    })
}

/// What the overview is made from, owned (an event stream outlives the request).
struct Overview {
    broker: crate::broker::Snapshot,
    agents: Option<Arc<crate::ingest::agents::Agents>>,
    feeds: Feeds,
    security: bool,
    storage: crate::storage::Storage,
    started: Instant,
}

impl Overview {
    fn from(sources: &Sources) -> Overview {
        Overview {
            broker: sources.broker.clone(),
            agents: sources.ingest.as_ref().map(|(_, agents)| agents.clone()),
            feeds: sources.web.clone(),
            security: sources.security.is_some(),
            storage: sources.storage.clone(),
            started: Instant::now(),
        }
    }

    fn json(&self) -> Value {
        let services: Vec<ServiceRow> = self.broker.lock().map(|s| s.services.clone()).unwrap_or_default();
        let agents =
            self.agents.as_ref().map_or(json!([]), |a| a.to_json(Instant::now(), crate::clock::wall_ns()));
        let buses: Vec<Value> = self
            .feeds
            .buses
            .iter()
            .map(|(name, counters)| {
                let mut bus: serde_json::Map<String, Value> =
                    counters.snapshot().iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                bus.insert("bus".into(), json!(name));
                bus.insert("subscriptions".into(), json!(counters.subscriptions.load(Relaxed)));
                Value::Object(bus)
            })
            .collect();
        let changes: Vec<Value> =
            lock(&self.feeds.state_changes).kept.iter().map(|(change, _)| change.clone()).collect();
        json!({
            "hub": {"version": env!("CARGO_PKG_VERSION"), "security": self.security, "stream_s": self.started.elapsed().as_secs_f64()},
            "services": services,
            "agents": agents,
            "stores": self.storage.report(),
            "buses": buses,
            "state_changes": changes,
        })
    }
}

fn overview(sources: &Sources) -> Value {
    Overview::from(sources).json()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, value: Value) -> Vec<u8> {
        let event = proto::state::Event {
            scope: "plant".into(),
            key: Some(key.into()),
            op: proto::state::EventOp::Set,
            value: Some(value),
            ts: "2026-01-01T00:00:00Z".into(),
        };
        serde_json::to_vec(&event).unwrap()
    }

    #[test]
    fn a_small_change_is_shown_whole_and_a_huge_one_cut_and_marked() {
        let (small, cut) = shown_change(&event("setpoint", json!({"v": 1.5}))).unwrap();
        assert!(!cut);
        assert_eq!(
            small,
            json!({"ts": "2026-01-01T00:00:00Z", "scope": "plant", "key": "setpoint", "op": "set", "value": {"v": 1.5}})
        );

        let huge_key = "k".repeat(900_000);
        let huge_value = json!("é".repeat(450_000));
        let (shown, cut) = shown_change(&event(&huge_key, huge_value)).unwrap();
        assert!(cut);
        assert_eq!(shown["key"].as_str().unwrap().len(), SHOWN_BYTES);
        assert_eq!(shown["key_bytes"], 900_000);
        assert!(shown.get("value").is_none());
        let preview = shown["value_preview"].as_str().unwrap();
        assert!(preview.len() <= SHOWN_BYTES && preview.starts_with("\"éé"), "{preview}");
        assert_eq!(shown["value_bytes"], 900_002);
        assert_eq!(shown["truncated"], json!(["key", "value"]));
        assert!(shown.to_string().len() < 1024, "{}", shown.to_string().len());
        assert!(shown_change(b"{\"not\": \"a change\"}").is_none());
    }

    #[test]
    fn the_kept_changes_are_bounded_in_number_and_bytes() {
        let mut changes = Changes::default();
        for i in 0..80 {
            changes.push(shown_change(&event(&format!("k{i}"), json!(i))).unwrap().0);
        }
        assert_eq!(changes.kept.len(), STATE_CHANGES);
        assert_eq!(changes.kept[0].0["key"], "k79", "newest first");
        // Keys of control characters grow six-fold as JSON: the byte bound holds anyway.
        let nasty = "\u{1}".repeat(SHOWN_BYTES);
        for _ in 0..80 {
            changes.push(shown_change(&event(&nasty, json!("\u{1}".repeat(10_000)))).unwrap().0);
        }
        let total: usize = changes.kept.iter().map(|(c, _)| c.to_string().len()).sum();
        assert_eq!(total, changes.bytes);
        assert!(total <= STATE_CHANGES_BYTES, "{total}");
        assert!(changes.kept.len() < STATE_CHANGES, "fewer kept when each is big: {}", changes.kept.len());
    }
}
