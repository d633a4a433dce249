//! Sample batches in flight: while a backlog drains, the next batch goes
//! before the last is answered, up to the smaller of `uplink.max_in_flight`
//! and the window the hub says it takes ([`proto::ingest`] has the rules).
//!
//! All of them go on one socket, so the broker gets them in the order sent.
//! Each names the batch it follows, so the hub never takes it before that
//! one. With a window they go to the ordered service, which only hubs that
//! keep that order have: a hub swapped for an older one (the socket
//! reconnects to it silently) leaves them unanswered, and the agent goes
//! back to one batch at a time on the plain service. An Ack of any batch
//! therefore covers every batch before it, and the outbox retires through it.
//! Any other answer (or none in time) drops the socket and everything in
//! flight: the outbox sends again from its oldest record, and the hub drops
//! what it already had as repeats.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use proto::ingest::{Echo, Order, Reply};
use transport::{AsyncPipeline, ClientError, Endpoint};

use crate::outbox::Key;

/// A batch as the uplink sends it.
pub struct Outgoing {
    /// The outbox key of its last record (none: a report alone).
    pub through: Option<Key>,
    /// (epoch, seq) of its last sample: what the next batch follows.
    pub last: Option<(u64, u64)>,
    /// The agent id it went under, and whether that is this agent's own.
    pub agent: Arc<str>,
    pub ours: bool,
    pub count: usize,
    /// When no answer by then, the hub (or the link) is taken to be away.
    pub deadline: Instant,
}

/// One batch on the wire.
pub struct Flight {
    /// Its [`Order::id`], echoed in the hub's reply.
    pub id: u64,
    /// Sent to the ordered service (only hubs with echoes answer it).
    pub ordered: bool,
    pub batch: Outgoing,
}

/// The batches in flight and the socket they went on.
pub struct Window {
    ctx: zmq::Context,
    broker: Endpoint,
    pipeline: Option<AsyncPipeline>,
    flights: VecDeque<Flight>,
    /// Batches the hub takes in flight, from its last reply; 1 until a
    /// reply says more (a hub that predates this never does).
    hub_window: u32,
    next_id: u64,
}

/// A reply, matched to the batch it answers.
pub struct Answered {
    pub reply: Result<Reply, String>,
    /// The batch, and how many flights (it and those before it) it settles.
    pub flight: Flight,
    pub settles: usize,
    pub records: usize,
}

impl Window {
    pub fn new(ctx: &zmq::Context, broker: &Endpoint) -> Window {
        Window {
            ctx: ctx.clone(),
            broker: broker.clone(),
            pipeline: None,
            flights: VecDeque::new(),
            hub_window: 1,
            next_id: 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.flights.is_empty()
    }

    /// Samples in flight.
    pub fn records(&self) -> u64 {
        self.flights.iter().map(|f| f.batch.count as u64).sum()
    }

    /// The batch sent last, of those in flight.
    pub fn newest(&self) -> Option<&Outgoing> {
        self.flights.back().map(|f| &f.batch)
    }

    /// Whether another batch may go now, with at most `ours` in flight.
    pub fn has_room(&self, ours: u32) -> bool {
        (self.flights.len() as u32) < ours.min(self.hub_window).max(1)
    }

    /// Forgets everything in flight and the socket (late replies go with it).
    pub fn reset(&mut self) {
        self.flights.clear();
        self.pipeline = None;
        self.hub_window = 1;
    }

    /// Sends `frames` (batch, report or empty) as the next batch, following
    /// the newest in flight; `batch` describes it.
    pub async fn send(&mut self, frames: [&[u8]; 2], batch: Outgoing) -> Result<(), ClientError> {
        if self.pipeline.is_none() {
            let dialect = transport::ClientOptions::default().dialect;
            self.pipeline = Some(AsyncPipeline::connect(&self.ctx, &self.broker, dialect)?);
        }
        let (id, follows) = (self.next_id, self.flights.back().and_then(|f| f.batch.last));
        self.next_id += 1;
        let order = Order { id, follows }.encode();
        let ordered = self.hub_window > 1;
        let service = if ordered { proto::ingest::ORDERED_SERVICE } else { proto::ingest::SERVICE };
        let pipeline = self.pipeline.as_ref().expect("just made");
        pipeline.send(service, &[frames[0], frames[1], &order]).await?;
        self.flights.push_back(Flight { id, ordered, batch });
        Ok(())
    }

    /// The next answer to a batch in flight; `Err` when the oldest's time
    /// ran out first (or the socket failed). Replies to batches no longer
    /// in flight are passed over.
    pub async fn answer(&mut self) -> Result<Answered, String> {
        loop {
            let Some(oldest) = self.flights.front() else { return Err("nothing in flight".into()) };
            let left = oldest.batch.deadline.saturating_duration_since(Instant::now());
            let Some(pipeline) = self.pipeline.as_mut() else { return Err("no socket".into()) };
            let frames = match pipeline.recv(left).await {
                Ok(Some(frames)) => frames,
                Ok(None) => {
                    return Err(format!(
                        "no reply from service '{}' at {} in time: check that the hub is running there",
                        proto::ingest::SERVICE,
                        self.broker.address
                    ))
                }
                Err(e) => return Err(e.to_string()),
            };
            let echo = frames.get(1).and_then(|f| Echo::decode(f).ok());
            let at = match echo {
                Some(echo) => {
                    self.hub_window = echo.window.max(1);
                    self.flights.iter().position(|f| f.id == echo.id)
                }
                // A hub without echoes answers only the plain service, which
                // gets a batch only when it is the one in flight.
                None => {
                    self.hub_window = 1;
                    (self.flights.len() == 1 && !self.flights[0].ordered).then_some(0)
                }
            };
            let Some(at) = at else { continue };
            let reply = frames
                .first()
                .ok_or_else(|| "an empty reply from the hub".to_string())
                .and_then(|f| Reply::decode(f).map_err(|e| format!("undecodable reply from the hub: {e}")));
            let settled: Vec<Flight> = self.flights.drain(..=at).collect();
            let records = settled.iter().map(|f| f.batch.count).sum();
            let settles = settled.len();
            let flight = settled.into_iter().last().expect("at least the one answered");
            return Ok(Answered { reply, flight, settles, records });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A hub from before batches in flight, as its broker answers: the plain
    /// service, one reply frame and no echo; the ordered service it lacks
    /// goes unanswered. Returns the services it was asked for.
    fn older_hub(endpoint: &str) -> std::thread::JoinHandle<Vec<String>> {
        let ctx = zmq::Context::new();
        let router = ctx.socket(zmq::ROUTER).unwrap();
        router.bind(endpoint).unwrap();
        std::thread::spawn(move || {
            let mut asked = Vec::new();
            // Until no request came for a second.
            while router.poll(zmq::POLLIN, 1000).unwrap() > 0 {
                let frames = router.recv_multipart(0).unwrap();
                // [peer, "", MDPC01, service, batch, report, order]
                let service = String::from_utf8_lossy(&frames[3]).into_owned();
                if service == proto::ingest::SERVICE {
                    let ack = Reply::Ack { accepted: 1, duplicates: 0 }.encode();
                    let reply: [&[u8]; 5] = [&frames[0], b"", b"MDPC01", &frames[3], &ack];
                    router.send_multipart(reply, 0).unwrap();
                }
                asked.push(service);
            }
            asked
        })
    }

    fn batch(seq: u64) -> Outgoing {
        let deadline = Instant::now() + Duration::from_millis(300);
        let agent: Arc<str> = "pi".into();
        Outgoing { through: Some(seq), last: Some((1, seq)), agent, ours: true, count: 1, deadline }
    }

    #[test]
    fn a_hub_swapped_for_an_older_one_never_gets_batches_it_cannot_order() {
        let endpoint = testkit::free_endpoint();
        let hub = older_hub(&endpoint);
        let ctx = zmq::Context::new();
        let mut window = Window::new(&ctx, &Endpoint::plain(&endpoint));
        // A window learned from the hub before it was swapped: the socket does not notice the swap.
        window.hub_window = 4;
        smol::block_on(async {
            window.send([b"batch 1", b""], batch(1)).await.unwrap();
            window.send([b"batch 2", b""], batch(2)).await.unwrap();
            assert!(window.answer().await.is_err(), "the older hub took none of them: no Ack to retire by");
            window.reset();
            // One at a time, on the plain service, it is answered (and no window is learned).
            window.send([b"batch 1", b""], batch(1)).await.unwrap();
            let answered = window.answer().await.expect("the older hub answers the plain service");
            assert_eq!((answered.flight.batch.through, answered.settles), (Some(1), 1));
            assert!(matches!(answered.reply, Ok(Reply::Ack { .. })));
            assert_eq!(window.hub_window, 1, "still one at a time");
        });
        let asked = hub.join().unwrap();
        let ordered = proto::ingest::ORDERED_SERVICE.to_string();
        assert_eq!(asked, [ordered.clone(), ordered, proto::ingest::SERVICE.to_string()]);
    }
}
