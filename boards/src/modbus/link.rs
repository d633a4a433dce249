//! One thread per link owns its wire. Channels hand it reads and writes;
//! reads that arrive together are planned into as few requests as possible;
//! a unit that stops answering is skipped and probed again later, so one
//! dead unit on an RS-485 bus does not make its neighbours miss their periods.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::codec::Raw;
use super::config::LinkConfig;
use super::plan::{plan, Want};
use super::wire::{self, Reply, Request, Wire, WireError};

enum Job {
    Read { want: Want, deadline: Instant, reply: mpsc::SyncSender<Result<Raw, String>> },
    Write { unit: u8, request: Request, deadline: Instant, reply: mpsc::SyncSender<Result<(), String>> },
}

/// What a link has done, for `status` and the metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkStatus {
    pub requests: u64,
    pub timeouts: u64,
    pub exceptions: u64,
    pub garbled: u64,
    /// Reads not sent because their unit is skipped after repeated timeouts.
    pub skipped: u64,
    pub late_replies: u64,
    pub connects: u64,
    /// Units skipped now.
    pub degraded_units: Vec<u8>,
    /// The last failure, for a field engineer.
    pub last_error: Option<String>,
}

/// A channel's way to its link's thread.
#[derive(Clone)]
pub struct LinkHandle {
    config: Arc<LinkConfig>,
    jobs: mpsc::Sender<Job>,
    status: Arc<Mutex<LinkStatus>>,
}

impl LinkHandle {
    /// Starts the link's thread; it connects on the first request and ends
    /// when the last handle is dropped.
    pub fn start(config: LinkConfig) -> std::io::Result<LinkHandle> {
        let (jobs, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(LinkStatus::default()));
        let config = Arc::new(config);
        let (c, s) = (config.clone(), status.clone());
        std::thread::Builder::new().name(format!("modbus-{}", config.name)).spawn(move || {
            Link { wire: wire::open(&c), units: HashMap::new(), status: s, config: c }.run(rx)
        })?;
        Ok(LinkHandle { config, jobs, status })
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    pub fn status(&self) -> LinkStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How long a caller waits for its turn and its answer: the gather
    /// window and a few timeouts of the requests queued before it.
    fn patience(&self) -> Duration {
        Duration::from_millis(self.config.gather_ms) + self.config.timeout() * 5 + Duration::from_secs(1)
    }

    /// Reads one point; blocks (on the caller's blocking thread) for the answer.
    pub fn read(&self, want: Want) -> Result<Raw, String> {
        self.ask(|deadline, reply| Job::Read { want, deadline, reply })
    }

    pub fn write(&self, unit: u8, request: Request) -> Result<(), String> {
        self.ask(|deadline, reply| Job::Write { unit, request, deadline, reply })
    }

    /// Hands the link a job that answers on `reply` and waits for the answer,
    /// as long as [`patience`](Self::patience) and no longer (nor does the link
    /// start a job past its deadline).
    fn ask<T>(
        &self,
        job: impl FnOnce(Instant, mpsc::SyncSender<Result<T, String>>) -> Job,
    ) -> Result<T, String> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send(job(Instant::now() + self.patience(), reply))
            .map_err(|_| "the link's thread has stopped".to_string())?;
        answer.recv_timeout(self.patience()).unwrap_or_else(|_| Err("the link did not answer in time".into()))
    }
}

/// Every configured link, by name.
#[derive(Clone, Default)]
pub struct Links {
    by_name: BTreeMap<String, LinkHandle>,
}

impl Links {
    pub fn start(configs: &[LinkConfig]) -> std::io::Result<Links> {
        let mut by_name = BTreeMap::new();
        for c in configs {
            by_name.insert(c.name.clone(), LinkHandle::start(c.clone())?);
        }
        Ok(Links { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&LinkHandle> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &LinkHandle)> {
        self.by_name.iter()
    }
}

/// A unit's record of answering.
#[derive(Default)]
struct Health {
    timeouts_in_row: u32,
    skipped_until: Option<Instant>,
}

enum Admit {
    Go,
    /// Skipped until now: this request is the probe.
    Probe,
    Skip(Duration),
}

struct Link {
    config: Arc<LinkConfig>,
    wire: Box<dyn Wire>,
    units: HashMap<u8, Health>,
    status: Arc<Mutex<LinkStatus>>,
}

impl Link {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        let gather = Duration::from_millis(self.config.gather_ms);
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            let until = Instant::now() + gather;
            while batch.len() < 4096 {
                match jobs.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(job) => batch.push(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            self.serve(batch);
        }
    }

    fn serve(&mut self, batch: Vec<Job>) {
        let now = Instant::now();
        let mut reads = Vec::new();
        for job in batch {
            match job {
                Job::Write { deadline, .. } | Job::Read { deadline, .. } if deadline < now => {}
                Job::Write { unit, request, reply, .. } => {
                    let result =
                        self.transact(unit, &request).map(|_| ()).map_err(|e| self.describe(unit, &e));
                    let _ = reply.send(result);
                }
                Job::Read { want, reply, .. } => reads.push((want, reply)),
            }
        }
        let wants: Vec<Want> = reads.iter().map(|(w, _)| *w).collect();
        let mut planned = plan(&wants, self.config.max_registers, self.config.max_gap);
        // Units being probed go last: a probe that times out delays nobody.
        planned.sort_by_key(|r| self.units.get(&r.unit).is_some_and(|h| h.skipped_until.is_some()));
        for read in planned {
            let request = Request::Read { table: read.table, address: read.address, count: read.count };
            let result = match self.admit(read.unit) {
                Admit::Skip(left) => {
                    self.update(|s| s.skipped += read.members.len() as u64);
                    Err(format!(
                        "unit {} skipped: no answer {} times in a row; probed again in {:.1?}",
                        read.unit, self.config.degrade_after, left
                    ))
                }
                Admit::Go | Admit::Probe => match self.transact(read.unit, &request) {
                    // A merged read over a hole in the device's map: read the points one by one.
                    Err(WireError::Exception { .. }) if read.members.len() > 1 => {
                        for &(i, _) in &read.members {
                            let w = wants[i];
                            let alone = Request::Read { table: w.table, address: w.address, count: w.width };
                            let answer = self
                                .transact(w.unit, &alone)
                                .map(|reply| slice(&reply, 0, w.width))
                                .map_err(|e| self.describe(w.unit, &e));
                            let _ = reads[i].1.send(answer);
                        }
                        continue;
                    }
                    Ok(reply) => Ok(reply),
                    Err(e) => Err(self.describe(read.unit, &e)),
                },
            };
            for &(i, offset) in &read.members {
                let answer = match &result {
                    Ok(reply) => Ok(slice(reply, offset, wants[i].width)),
                    Err(e) => Err(e.clone()),
                };
                let _ = reads[i].1.send(answer);
            }
        }
    }

    fn admit(&mut self, unit: u8) -> Admit {
        let health = self.units.entry(unit).or_default();
        match health.skipped_until {
            None => Admit::Go,
            Some(until) if Instant::now() >= until => {
                // One probe: until it answers, the unit's other reads are skipped.
                health.skipped_until = Some(Instant::now() + self.config.timeout() * 2);
                Admit::Probe
            }
            Some(until) => Admit::Skip(until - Instant::now()),
        }
    }

    /// One request on the wire, with its outcome counted and the unit's health kept.
    fn transact(&mut self, unit: u8, request: &Request) -> Result<Reply, WireError> {
        let result = self.wire.transact(unit, request);
        let probe = Duration::from_millis(self.config.probe_ms);
        let health = self.units.entry(unit).or_default();
        let mut newly_degraded = false;
        match &result {
            Err(WireError::Timeout(_)) => {
                health.timeouts_in_row += 1;
                if health.timeouts_in_row >= self.config.degrade_after {
                    newly_degraded = health.skipped_until.is_none();
                    health.skipped_until = Some(Instant::now() + probe);
                }
            }
            // An exception is an answer: the unit is there.
            Ok(_) | Err(WireError::Exception { .. }) | Err(WireError::Garbled(_)) => {
                if health.skipped_until.take().is_some() {
                    log::info!("modbus link {}: unit {unit} answers again", self.config.name);
                }
                health.timeouts_in_row = 0;
            }
            Err(WireError::Down { .. }) => {}
        }
        if newly_degraded {
            log::warn!(
                "modbus link {}: unit {unit} did not answer {} times in a row; skipped, probed every {:?}",
                self.config.name,
                self.config.degrade_after,
                probe
            );
        }
        let degraded: Vec<u8> = {
            let mut d: Vec<u8> =
                self.units.iter().filter(|(_, h)| h.skipped_until.is_some()).map(|(u, _)| *u).collect();
            d.sort_unstable();
            d
        };
        let counts = self.wire.counts();
        let sent = !matches!(result, Err(WireError::Down { .. }));
        self.update(|s| {
            s.requests += u64::from(sent);
            match &result {
                Err(WireError::Timeout(_)) => s.timeouts += 1,
                Err(WireError::Exception { .. }) => s.exceptions += 1,
                Err(WireError::Garbled(_)) => s.garbled += 1,
                _ => {}
            }
            if let Err(e) = &result {
                s.last_error = Some(format!("unit {unit}: {e}"));
            }
            s.late_replies = counts.late_replies;
            s.connects = counts.connects;
            s.degraded_units = degraded;
        });
        result
    }

    fn describe(&self, unit: u8, e: &WireError) -> String {
        format!("modbus link {} unit {unit}: {e}", self.config.name)
    }

    fn update(&self, f: impl FnOnce(&mut LinkStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// One point's part of a read's reply.
fn slice(reply: &Reply, offset: u16, width: u16) -> Raw {
    let (o, w) = (usize::from(offset), usize::from(width));
    match reply {
        Reply::Bits(bits) => Raw::Bit(bits[o]),
        Reply::Registers(regs) => Raw::Registers(regs[o..o + w].to_vec()),
        Reply::Written => Raw::Registers(Vec::new()),
    }
}
