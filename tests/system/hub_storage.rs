//! The hub's stores under storage faults: damaged files at start (the hub
//! starts, degraded and saying what it lost, never a crash loop), and a full
//! disk that heals without a restart, with nothing published twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use proto::ingest::Reply;
use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

fn copy_dir(from: &Path, to: &Path) {
    let out = output(Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to));
    assert!(out.status.success(), "cp: {}", String::from_utf8_lossy(&out.stderr));
}

/// A way to damage a sled store's files, as a power cut, a failing card or a
/// stray write would.
type Damage = (&'static str, fn(&Path));

fn file(store: &Path, name: &str) -> PathBuf {
    store.join(name)
}

fn truncate_to(path: &Path, fraction: f64) {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len((len as f64 * fraction) as u64).unwrap();
}

fn flip(path: &Path, count: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let mut rng = fastrand::Rng::with_seed(count as u64);
    for _ in 0..count.min(bytes.len()) {
        let at = rng.usize(..bytes.len());
        bytes[at] ^= 1 << rng.u8(..8);
    }
    std::fs::write(path, bytes).unwrap();
}

fn zero_block(path: &Path, at: f64) {
    let mut bytes = std::fs::read(path).unwrap();
    let start = ((bytes.len() as f64 * at) as usize).min(bytes.len());
    let end = (start + 4096).min(bytes.len());
    bytes[start..end].fill(0);
    std::fs::write(path, bytes).unwrap();
}

const DAMAGE: [Damage; 14] = [
    ("the log truncated to 25 %", |s| truncate_to(&file(s, "db"), 0.25)),
    ("the log truncated to 50 %", |s| truncate_to(&file(s, "db"), 0.50)),
    ("the log truncated to 75 %", |s| truncate_to(&file(s, "db"), 0.75)),
    ("the log truncated to 90 %", |s| truncate_to(&file(s, "db"), 0.90)),
    ("the log emptied", |s| truncate_to(&file(s, "db"), 0.0)),
    ("64 random bytes of the log flipped", |s| flip(&file(s, "db"), 64)),
    ("8 random bytes of the log flipped", |s| flip(&file(s, "db"), 8)),
    ("a 4 KiB block of the log zeroed at a third", |s| zero_block(&file(s, "db"), 0.33)),
    ("a 4 KiB block of the log zeroed at two thirds", |s| zero_block(&file(s, "db"), 0.66)),
    ("garbage after the log", |s| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(file(s, "db")).unwrap();
        f.write_all(&[0xab; 10_000]).unwrap();
    }),
    ("garbage in conf", |s| std::fs::write(file(s, "conf"), b"\x00\xffnot a sled config\n").unwrap()),
    ("conf emptied", |s| std::fs::write(file(s, "conf"), b"").unwrap()),
    ("conf deleted", |s| std::fs::remove_file(file(s, "conf")).unwrap()),
    ("the snapshots deleted", |s| {
        for entry in std::fs::read_dir(s).unwrap().flatten() {
            if entry.file_name().to_string_lossy().starts_with("snap.") {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }),
];

/// The exit status of `hub state` and `hub consumers` when no answer came
/// (an answer that the scope or consumer is gone is one).
const NO_REPLY: i32 = 3;

/// Durable samples in the template's journal, held for consumer `kept`.
const SAMPLES: u64 = 3000;

/// Dead letters in the template's dead-letter store: pipeline `dead` gives up
/// on every sample (its recorder's directory is a file) until it holds these.
const LETTERS: usize = 50;

/// A consumer that keeps the journal, a pipeline that records, and one that
/// dead-letters; RECORD and BLOCKED are paths.
const CONFIG: &str = r#"
[[consumer]]
name = "kept"

[[pipeline]]
name = "p"
ingest = true
[pipeline.record]
path = "RECORD"

[[pipeline]]
name = "dead"
ingest = true
max_attempts = 1
dlq_max_records = 50
[pipeline.record]
path = "BLOCKED"
"#;

/// `hub dlq list`'s letters (`None`: no answer).
fn letters(broker: &str) -> Option<Vec<Value>> {
    let out = hub_cli(&["dlq", "list", "--broker", broker]);
    if out.status.code() == Some(NO_REPLY) {
        return None;
    }
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Some(list["letters"].as_array().cloned().unwrap_or_default())
}

/// Issue 27: 14 kinds of damage to each of the hub's stores. Every time the
/// hub starts (no panic, no crash loop), is ready, and where it had to set
/// the store aside says so in `/readyz` and `/metrics`.
#[test]
fn every_kind_of_damage_to_each_store_leaves_a_hub_that_starts_and_says_so() {
    let template = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("hub.toml");
    let blocked = work.path().join("blocked");
    std::fs::write(&blocked, "a file where the recorder wants a directory").unwrap();
    let config_text = CONFIG
        .replace("RECORD", &work.path().join("p.jsonl").display().to_string())
        .replace("BLOCKED", &blocked.join("out.jsonl").display().to_string());
    std::fs::write(&config, config_text).unwrap();
    let args = ["--config", config.to_str().unwrap()];
    {
        // Data in every store: journal entries, watermarks, state keys, the pipeline's store.
        let data = tempfile::tempdir().unwrap();
        let hub = HubProc::start_in(data, &free_endpoint(), &args);
        for start in (1..=SAMPLES).step_by(100) {
            wait_for("a batch acknowledged", 10 * SECOND, || {
                matches!(send_ingest(&hub.broker, start..=start + 99), Some(Reply::Ack { .. })).then_some(())
            });
        }
        for i in 0..20 {
            let out = hub_cli(&[
                "state",
                "--broker",
                &hub.broker,
                "--scope",
                "plant",
                "set",
                &format!("k{i}"),
                "v",
            ]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        wait_for("the dead-letter store full", 30 * SECOND, || {
            letters(&hub.broker).filter(|l| l.len() == LETTERS).map(drop)
        });
        let HubProc { mut proc, data, .. } = hub;
        proc.signal(libc::SIGTERM);
        assert!(proc.wait_exit(20 * SECOND).is_some_and(|s| s.success()), "a clean stop");
        copy_dir(data.path(), template.path());
    }
    let runs: Vec<_> = ["ingest", "state", "pipelines"]
        .into_iter()
        .map(|store| {
            let (template, args) = (template.path().to_path_buf(), args.map(String::from));
            std::thread::spawn(move || {
                let mut outcomes = BTreeMap::new();
                for (what, damage) in DAMAGE {
                    let data = tempfile::tempdir().unwrap();
                    copy_dir(&template, data.path());
                    damage(&data.path().join(store));
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let mut hub = HubProc::start_in(data, &free_endpoint(), &args);
                    let http = hub.http.clone();
                    let answer = std::panic::catch_unwind(move || http_get(&http, "/readyz"));
                    let Ok((status, ready)) = answer else {
                        let running = hub.proc.is_running();
                        panic!("{store}, {what}: no answer (running: {running}): {}", hub.proc.stderr());
                    };
                    let log = hub.proc.stderr();
                    assert!(!log.contains("panicked"), "{store}, {what}: a panic: {log}");
                    assert_eq!(status, 200, "{store}, {what}: ready: {ready}");
                    let ready: Value = serde_json::from_str(&ready).unwrap();
                    let label = if store == "pipelines" { "dead letters" } else { store };
                    let metrics = http_get(&hub.http, "/metrics").1;
                    let counted =
                        prometheus_value(&metrics, &format!("plantd_store_recovered{{store=\"{label}\"}}"))
                            == Some(1);
                    let said =
                        ready["components"][format!("store:{label}")]["detail"].as_str().map(str::to_string);
                    assert_eq!(counted, said.is_some(), "{store}, {what}: counted as said: {ready}");
                    // And shown to the operator: under `hub agents`, and in the web view.
                    let agents = wait_for(&format!("{store}, {what}: hub agents"), 20 * SECOND, || {
                        let out = hub_cli(&["agents", "--broker", &hub.broker]);
                        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
                    });
                    let overview: Value =
                        serde_json::from_str(&http_get(&hub.http, "/api/overview").1).unwrap();
                    let in_web = overview["stores"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| s["store"] == label && s["recovered"].is_string()));
                    let in_cli = agents.contains(&format!("hub store '{label}' was found damaged at start"));
                    assert_eq!(
                        (in_cli, in_web),
                        (counted, counted),
                        "{store}, {what}: shown as said: {agents}"
                    );
                    // What the store still holds: anything lost must have been said.
                    let held = match store {
                        "ingest" => {
                            let shown = wait_for(
                                &format!("{store}, {what}: the consumer service's answer"),
                                20 * SECOND,
                                || {
                                    let shown =
                                        hub_cli(&["consumers", "show", "kept", "--broker", &hub.broker]);
                                    (shown.status.code() != Some(NO_REPLY)).then_some(shown.stdout)
                                },
                            );
                            let shown: Value = serde_json::from_slice(&shown).unwrap_or(Value::Null);
                            shown["backlog"]["records"].as_u64().unwrap_or(0) == SAMPLES
                        }
                        "state" => {
                            let keys = wait_for(
                                &format!("{store}, {what}: the state service's answer"),
                                20 * SECOND,
                                || {
                                    let keys = hub_cli(&[
                                        "state",
                                        "--broker",
                                        &hub.broker,
                                        "--scope",
                                        "plant",
                                        "list-keys",
                                    ]);
                                    (keys.status.code() != Some(NO_REPLY)).then_some(keys.stdout)
                                },
                            );
                            let keys: Value = serde_json::from_slice(&keys).unwrap_or(Value::Null);
                            keys["data"]["keys"].as_array().is_some_and(|keys| keys.len() == 20)
                        }
                        _ => {
                            let letters = wait_for(
                                &format!("{store}, {what}: the dead-letter service's answer"),
                                20 * SECOND,
                                || letters(&hub.broker),
                            );
                            letters.len() == LETTERS
                        }
                    };
                    assert!(held || said.is_some(), "{store}, {what}: data lost without a word: {ready}");
                    outcomes.insert(what, said.unwrap_or_else(|| "opened as it was".into()));
                }
                (store, outcomes)
            })
        })
        .collect();
    for run in runs {
        let (store, outcomes) = run.join().unwrap();
        for (what, outcome) in outcomes {
            eprintln!("{store}: {what}: {outcome}");
        }
    }
}

/// A hub whose data directory's `store` is an 8 MiB tmpfs, inside `unshare
/// -Urmpf` (no privileges; its network is the test's), and a shell that
/// fills and frees that tmpfs when the test says (by files in `marks`).
struct SmallDisk {
    hub: Proc,
    broker: String,
    ports: HubPorts,
    marks: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn start(store: &str, config: &str) -> SmallDisk {
        require_unshare();
        let dir = tempfile::tempdir().unwrap();
        let (data, marks) = (dir.path().join("data"), dir.path().join("marks"));
        std::fs::create_dir_all(data.join(store)).unwrap();
        std::fs::create_dir_all(&marks).unwrap();
        let config_file = dir.path().join("hub.toml");
        std::fs::write(&config_file, config).unwrap();
        let (broker, ports) = (free_endpoint(), HubPorts::new());
        let mut hub_args = vec!["serve".to_string(), "--broker".into(), broker.clone(), "--data-dir".into()];
        hub_args.push(data.display().to_string());
        hub_args.extend(["--config".into(), config_file.display().to_string()]);
        hub_args.extend(ports.args());
        let script = r#"set -u
mount -t tmpfs -o size=8m tmpfs "$DISK" || exit 97
"$HUB" "$@" &
pid=$!
await() { i=0; until [ -e "$MARKS/$1" ]; do i=$((i+1)); [ $i -gt 1200 ] && { kill -TERM $pid; exit 95; }; sleep 0.05; done; }
await fill
dd if=/dev/zero of="$DISK/filler" bs=64k 2>/dev/null
: > "$MARKS/filled"
await free
rm -f "$DISK/filler"
: > "$MARKS/freed"
await stop
kill -TERM $pid
wait $pid
"#;
        let mut cmd = Command::new("unshare");
        cmd.args(["-Urmpf", "--kill-child", "sh", "-c", script, "sh"]).args(&hub_args);
        cmd.env("DISK", data.join(store)).env("MARKS", &marks).env("HUB", bin("hub"));
        let hub = Proc::spawn(&format!("hub with {store} on a small tmpfs"), cmd);
        SmallDisk { hub, broker, ports, marks, _dir: dir }
    }

    /// Tells the shell to do `what` and waits until it has.
    fn ask(&self, what: &str, done: &str) {
        std::fs::write(self.marks.join(what), b"").unwrap();
        wait_for(&format!("the tmpfs to be {done}"), 20 * SECOND, || {
            self.marks.join(done).exists().then_some(())
        });
    }

    fn fill(&self) {
        self.ask("fill", "filled");
    }

    /// Frees the disk; the moment it was freed.
    fn free(&self) -> Instant {
        self.ask("free", "freed");
        Instant::now()
    }

    fn ready(&self) -> bool {
        http_get(&self.ports.http, "/readyz").0 == 200
    }

    fn stop(mut self) {
        std::fs::write(self.marks.join("stop"), b"").unwrap();
        assert!(self.hub.wait_exit(20 * SECOND).is_some(), "the hub stops");
        let stderr = self.hub.stderr();
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Ingest answers Retry while its disk is full, publishes nothing twice, and
/// works again within seconds of space returning, without a restart.
#[test]
fn a_full_disk_heals_without_a_restart_and_nothing_is_published_twice() {
    let disk = SmallDisk::start("ingest", "[[consumer]]\nname = \"kept\"\n");
    let broker = disk.broker.clone();

    // Every durable sample the bus carries, by seq: each must come once.
    let ctx = zmq::Context::new();
    let backend = disk.ports.buses["metric"].backend.clone();
    let mut bus =
        transport::Subscriber::connect(&ctx, backend.as_str(), &[b"org.plantd.Metric.pump-1."]).unwrap();
    let mut published: BTreeMap<u64, u32> = BTreeMap::new();
    let mut listen = |published: &mut BTreeMap<u64, u32>| {
        while let Ok(Some(m)) = bus.recv(Duration::from_millis(1)) {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            *published.entry(v["seq"].as_u64().unwrap()).or_default() += 1;
        }
    };
    let mut next = 1u64;
    // A batch of 100 until one is acknowledged; its seqs move on only then.
    let send_until_acked = |next: &mut u64, what: &str, within: Duration| {
        wait_for(what, within, || {
            let reply = send_ingest(&broker, *next..=*next + 99);
            matches!(reply, Some(Reply::Ack { .. })).then(|| *next += 100)
        })
    };
    send_until_acked(&mut next, "the hub to take a first batch", 20 * SECOND);

    disk.fill();
    let refused = wait_for("ingest to answer Retry on the full disk", 30 * SECOND, || {
        listen(&mut published);
        match send_ingest(&broker, next..=next + 99) {
            Some(Reply::Ack { .. }) => {
                next += 100;
                None
            }
            Some(Reply::Retry { reason, .. }) => Some(reason),
            other => panic!("{other:?}"),
        }
    });
    assert!(refused.contains("storage"), "{refused}");
    for _ in 0..20 {
        let reply = send_ingest(&broker, next..=next + 99);
        assert!(matches!(reply, Some(Reply::Retry { .. })), "still full: {reply:?}");
    }
    assert!(!disk.ready(), "not ready while ingest cannot store");

    let freed = disk.free();
    send_until_acked(&mut next, "ingest to take a batch again", 10 * SECOND);
    let healed = freed.elapsed();
    wait_for("the hub to be ready again", 10 * SECOND, || disk.ready().then_some(()));
    send_until_acked(&mut next, "one more batch", 10 * SECOND);
    wait_for("the last accepted sample on the bus", 10 * SECOND, || {
        listen(&mut published);
        published.contains_key(&(next - 1)).then_some(())
    });
    let twice: Vec<u64> = published.iter().filter(|(_, n)| **n > 1).map(|(s, _)| *s).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    disk.stop();
    eprintln!("ingest took batches again {healed:?} after space returned");
}

/// The state store refuses writes while its disk is full (it cannot make
/// them durable), is opened again within seconds of space returning, and
/// still holds every write it made durable before.
#[test]
fn a_full_state_disk_heals_without_a_restart() {
    let disk = SmallDisk::start("state", "");
    let state = |args: &[&str]| {
        let mut all = vec!["state", "--broker", disk.broker.as_str(), "--scope", "plant"];
        all.extend_from_slice(args);
        let out = hub_cli(&all);
        (out.status.code(), serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null))
    };
    // 16 KiB values, so a few hundred fill the 8 MiB the filler leaves.
    let big = "x".repeat(16 << 10);
    wait_for("the state service", 20 * SECOND, || {
        (state(&["set", "before", "kept"]).0 == Some(0)).then_some(())
    });
    // Made durable: the flush interval passes before the disk fills.
    wait_for("the first write to be durable", 10 * SECOND, || {
        let metrics = http_get(&disk.ports.http, "/metrics").1;
        (prometheus_value(&metrics, "plantd_state_durable_writes_total").unwrap_or(0) >= 1).then_some(())
    });

    disk.fill();
    let mut n = 0;
    let refused = wait_for("the state store to refuse writes on the full disk", 60 * SECOND, || {
        n += 1;
        let (code, reply) = state(&["set", &format!("k{n}"), &big]);
        (code != Some(0)).then_some(reply)
    });
    eprintln!("refused after {n} writes: {refused}");
    wait_for("the hub to say it is not ready", 10 * SECOND, || (!disk.ready()).then_some(()));
    let agents = hub_cli(&["agents", "--broker", &disk.broker]);
    let agents = String::from_utf8_lossy(&agents.stdout);
    assert!(agents.contains("hub store 'state' is failing: No space left on device"), "{agents}");

    let freed = disk.free();
    wait_for("the state store to take writes again", 10 * SECOND, || {
        (state(&["set", "after", "taken"]).0 == Some(0)).then_some(())
    });
    let healed = freed.elapsed();
    wait_for("the hub to be ready again", 10 * SECOND, || disk.ready().then_some(()));
    let (code, reply) = state(&["get", "before"]);
    assert_eq!((code, reply["data"]["value"].clone()), (Some(0), Value::from("kept")));
    let metrics = http_get(&disk.ports.http, "/metrics").1;
    assert_eq!(prometheus_value(&metrics, "plantd_state_store_reopens_total"), Some(1), "{metrics}");
    disk.stop();
    eprintln!("the state store took writes again {healed:?} after space returned");
}

/// The dead-letter store on a full disk: the stage that gives up on a
/// sample waits while its letter cannot be stored (the sample is not lost),
/// and once space returns the store is opened again and every sample ends
/// up a dead letter, without a restart.
#[test]
fn a_full_dead_letter_disk_heals_without_a_restart_and_loses_no_letter() {
    let work = tempfile::tempdir().unwrap();
    let blocked = work.path().join("blocked");
    std::fs::write(&blocked, "a file where the recorder wants a directory").unwrap();
    let config = format!(
        "[[pipeline]]\nname = \"dead\"\ningest = true\nmax_attempts = 1\ndlq_max_records = 10000\n\
         [pipeline.record]\npath = \"{}\"\n",
        blocked.join("out.jsonl").display()
    );
    let disk = SmallDisk::start("pipelines", &config);
    let store_ok = || {
        let out = hub_cli(&["call", "--broker", &disk.broker, "org.plantd.Hub", "stores"]);
        let stores: Value = serde_json::from_slice(&out.stdout).ok()?;
        let row = stores.as_array()?.iter().find(|s| s["store"] == "dead letters")?.clone();
        Some((row["ok"].as_bool()?, row["reopens"].as_u64()?))
    };
    let send_acked = |seqs: std::ops::RangeInclusive<u64>| {
        wait_for("a batch acknowledged", 20 * SECOND, || {
            matches!(send_ingest(&disk.broker, seqs.clone()), Some(Reply::Ack { .. })).then_some(())
        })
    };
    send_acked(1..=100);
    wait_for("100 dead letters", 20 * SECOND, || letters(&disk.broker).filter(|l| l.len() == 100).map(drop));

    disk.fill();
    send_acked(101..=200);
    wait_for("the dead-letter store to fail on the full disk", 30 * SECOND, || {
        (store_ok()? == (false, 0)).then_some(())
    });
    wait_for("the hub to say it is not ready", 10 * SECOND, || (!disk.ready()).then_some(()));

    let freed = disk.free();
    wait_for("the dead-letter store opened again", 10 * SECOND, || (store_ok()? == (true, 1)).then_some(()));
    let healed = freed.elapsed();
    send_acked(201..=300);
    let all = wait_for("every sample a dead letter", 30 * SECOND, || {
        letters(&disk.broker).filter(|l| l.len() >= 300)
    });
    // Each letter's sample, over one connection (`hub dlq show ID` each).
    let ctx = zmq::Context::new();
    let options = transport::ClientOptions { timeout: 5 * SECOND, retries: 0, ..Default::default() };
    let mut client = transport::Client::new(&ctx, transport::Endpoint::plain(&disk.broker), options);
    let mut seqs = std::collections::BTreeSet::new();
    for letter in &all {
        let show = format!("dlq show {}", letter["id"]);
        let reply = client.request("org.plantd.Hub.Dlq", &[show.as_bytes()]).unwrap();
        let shown: Value = serde_json::from_slice(&reply[0]).unwrap();
        seqs.insert(shown["body"]["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (1..=300).collect(), "each sample dead-lettered");
    wait_for("the hub to be ready again", 10 * SECOND, || disk.ready().then_some(()));
    disk.stop();
    eprintln!(
        "the dead-letter store was opened again {healed:?} after space returned ({} letters)",
        all.len()
    );
}
