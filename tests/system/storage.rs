//! The agent's stores under a storage fault, black-box: the file system
//! under its outbox and local store fills up while the agent runs, then has
//! room again; and a small file system's reserve.
//!
//! `agent run` runs inside `unshare -Urmpf` (user, mount and pid namespaces:
//! no privileges needed, and everything in them dies with the test) with one
//! small tmpfs bind-mounted on `<data_dir>/outbox` and `<data_dir>/store`
//! (one disk for both, as on a controller), so the control socket
//! `<data_dir>/control.sock` stays where the test reads status from. The
//! shell script in the namespace does what the test asks, one command at a
//! time (start, fill, free, stop, verify), through numbered files it polls
//! for with a deadline.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

/// The script: the disk, then commands `cmd-<n>` ("start", "fill <bytes to
/// leave free>", "free", "stop", "verify", "end"), each answered by `done-<n>`.
const SCRIPT: &str = r#"set -u
mount -t tmpfs -o "size=$SIZE" tmpfs "$DISK" || exit 97
mkdir -p "$DISK/outbox" "$DISK/store"
mount --bind "$DISK/outbox" "$DATA/outbox" || exit 97
mount --bind "$DISK/store" "$DATA/store" || exit 97
pid=
n=0
while :; do
  n=$((n+1))
  i=0
  until [ -e "$MARKS/cmd-$n" ]; do
    i=$((i+1)); [ $i -gt 2400 ] && { [ -n "$pid" ] && kill -TERM $pid; exit 95; }; sleep 0.05
  done
  read -r cmd arg < "$MARKS/cmd-$n"
  case "$cmd" in
    start) "$AGENT" run --config "$CONFIG" & pid=$! ;;
    fill)
      if [ "$arg" = 0 ]; then
        dd if=/dev/zero of="$DISK/filler" bs=64k 2>/dev/null
      else
        avail=$(df -B1 --output=avail "$DISK" | tail -n 1 | tr -d ' ')
        [ $((avail - arg)) -gt 0 ] && fallocate -l $((avail - arg)) "$DISK/filler"
      fi ;;
    free) rm -f "$DISK/filler" ;;
    stop) kill -TERM $pid; wait $pid; echo $? > "$MARKS/exit-$n"; pid= ;;
    verify) "$AGENT" store --config "$CONFIG" verify > "$MARKS/verify-$n.json" ;;
    end) : > "$MARKS/done-$n"; exit 0 ;;
  esac
  : > "$MARKS/done-$n"
done
"#;

pub(crate) struct Rig {
    _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub config: PathBuf,
    marks: PathBuf,
    proc: Proc,
    step: u32,
}

impl Rig {
    /// Two durable channels, 200 samples a second; small segments; a tmpfs
    /// of `size` (e.g. "4m") as the agent's disk; `outbox` is more TOML for
    /// the `[outbox]` table. The agent is not started yet.
    pub(crate) fn new(id: &str, broker: &str, bus: &str, size: &str, outbox: &str) -> Rig {
        require_unshare();
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            "[outbox]\nflush_interval_ms = 100\nsegment_bytes = 65536\n{outbox}\n\n\
             [uplink]\nbackoff_max_ms = 300\n\n\
             [[channel]]\nname = \"a\"\nperiod_ms = 10\ndriver = {{ kind = \"ramp\" }}\n\n\
             [[channel]]\nname = \"b\"\nperiod_ms = 10\ndriver = {{ kind = \"ramp\" }}\n"
        );
        let config = agent_config(dir.path(), id, broker, bus, &body);
        let data = dir.path().join(format!("{id}-data"));
        let (marks, disk) = (dir.path().join("marks"), dir.path().join("disk"));
        for path in [data.join("outbox"), data.join("store"), marks.clone(), disk.clone()] {
            std::fs::create_dir_all(path).unwrap();
        }
        let mut cmd = Command::new("unshare");
        cmd.args(["-Urmpf", "--kill-child", "sh", "-c", SCRIPT])
            .env("SIZE", size)
            .env("DISK", &disk)
            .env("DATA", &data)
            .env("MARKS", &marks)
            .env("CONFIG", &config)
            .env("AGENT", bin("agent"));
        let proc = Proc::spawn("agent in unshare", cmd);
        Rig { _dir: dir, data, config, marks, proc, step: 0 }
    }

    /// Has the script do `command` and waits until it has.
    pub(crate) fn run(&mut self, command: &str) {
        self.step += 1;
        // Renamed into place: the script never reads a command half written.
        let (temporary, file) = (self.marks.join("cmd.tmp"), self.marks.join(format!("cmd-{}", self.step)));
        std::fs::write(&temporary, format!("{command}\n")).unwrap();
        std::fs::rename(temporary, file).unwrap();
        let done = self.marks.join(format!("done-{}", self.step));
        let proc = &mut self.proc;
        wait_for(&format!("the script to do '{command}'"), 60 * SECOND, || {
            assert!(done.exists() || proc.is_running(), "the script ended early: {}", proc.stderr());
            done.exists().then_some(())
        });
    }

    /// Stops the agent; its exit status.
    pub(crate) fn stop(&mut self) -> i32 {
        self.run("stop");
        let code = std::fs::read_to_string(self.marks.join(format!("exit-{}", self.step))).unwrap();
        code.trim().parse().unwrap()
    }

    /// `agent store verify` of the log as the stopped agent left it: no
    /// damage and no torn tail, however many writes failed. `backlog`: the
    /// hub never came, so records must be there to verify; once it has
    /// drained the outbox, an empty log is as good.
    pub(crate) fn assert_log_intact(&mut self, backlog: bool) {
        self.run("verify");
        let text = std::fs::read_to_string(self.marks.join(format!("verify-{}.json", self.step)))
            .unwrap_or_default();
        let verify: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("verify.json {text:?}: {e}"));
        assert_eq!(
            (&verify["damaged"], &verify["torn_tail_bytes"]),
            (&Value::from(0), &Value::from(0)),
            "{verify}"
        );
        if backlog {
            assert!(verify["intact"].as_u64().unwrap() > 0, "{verify}");
        }
    }

    pub(crate) fn stderr(&self) -> String {
        self.proc.stderr()
    }

    pub(crate) fn end(mut self) {
        self.run("end");
        assert!(self.proc.wait_exit(10 * SECOND).is_some_and(|s| s.success()), "{}", self.proc.stderr());
    }
}

pub(crate) fn durable_seq(status: &Value) -> Option<u64> {
    status["outbox"]["durable"][1].as_u64()
}

/// The hub's row for `agent` in `hub agents --json`, once `check` accepts it.
pub(crate) fn hub_agent(hub: &HubProc, agent: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, 30 * SECOND, || {
        let out = hub_cli(&["agents", "--json", "--broker", &hub.broker]);
        let agents: Value = serde_json::from_slice(&out.stdout).ok()?;
        let row = agents.as_array()?.iter().find(|a| a["agent"] == agent)?.clone();
        check(&row).then_some(row)
    })
}

#[test]
fn a_full_disk_drops_and_counts_keeps_the_agent_running_and_recovers() {
    let ports = HubPorts::new();
    let broker = free_endpoint();
    let metric = ports.buses["metric"].clone();
    // With a reserve the outbox stops growing and drops for space; dropping
    // frees whole segments now and then, so writes fail only part of the time.
    let mut rig = Rig::new("s1", &broker, &metric.frontend, "4m", "min_free_bytes = 1048576");
    rig.run("start");
    wait_for_status(&rig.data, "a backlog on disk (the hub is down)", 30 * SECOND, |s| {
        (durable_seq(s)? >= 300).then_some(())
    });
    rig.run("fill 0");

    // Full: the store reports the failure, drops for space are counted, and
    // the agent goes on sampling and answering, saying why it drops.
    let failing = wait_for_status(&rig.data, "the store to report the full disk", 30 * SECOND, |s| {
        let o = &s["outbox"];
        (s["store"]["ok"] == false
            && o["space_low"] == true
            && o["dropped_for_space"].as_u64()? > 0
            && s["store_errors"].as_u64()? > 0)
            .then(|| s.clone())
    });
    let error = failing["store"]["error"].as_str().unwrap();
    assert!(error.contains("No space left on device"), "{failing}");
    assert!(failing["store"]["since"].as_str().is_some(), "{failing}");
    let warnings = failing["warnings"].to_string();
    assert!(warnings.contains("under the outbox's reserve of 1.0 MiB"), "{failing}");
    let appended = failing["outbox"]["last_appended"][1].as_u64().unwrap();
    wait_for_status(&rig.data, "sampling to go on while the disk is full", 20 * SECOND, |s| {
        (s["outbox"]["last_appended"][1].as_u64()? > appended + 50).then_some(())
    });
    let stuck = durable_seq(&failing).unwrap_or(0);

    // Room again: appends work, become durable, and reach the hub.
    rig.run("free");
    let healthy = wait_for_status(&rig.data, "the store to recover", 30 * SECOND, |s| {
        (s["store"]["ok"] == true && s["outbox"]["space_low"] == false && durable_seq(s)? > stuck + 100)
            .then(|| s.clone())
    });
    assert_eq!(healthy["warnings"], Value::Array(vec![]), "{healthy}");
    let epoch = healthy["epoch"].as_u64().unwrap();
    let recovered = durable_seq(&healthy).unwrap();
    let collector = Collector::start(&metric.backend, "org.plantd.Metric.s1.");
    let _hub = HubProc::start_with_ports(tempfile::tempdir().unwrap(), &broker, ports, &[]);
    wait_for("samples made durable after the recovery at the hub", 60 * SECOND, || {
        collector.durable().iter().any(|s| s.epoch == epoch && s.seq >= recovered).then_some(())
    });
    let errors_then = healthy["store_errors"].as_u64().unwrap();
    let now = agent_status(&rig.data).expect("the agent still answers");
    assert_eq!(now["store_errors"].as_u64().unwrap(), errors_then, "no new losses once there is room");

    // It stops cleanly: the store is healthy.
    assert_eq!(rig.stop(), 0, "{}", rig.stderr());
    // The hub may have taken every record by now.
    rig.assert_log_intact(false);
    rig.end();
}

#[test]
fn an_agent_stopped_while_the_disk_is_full_exits_with_ex_ioerr() {
    // No reserve: nothing is dropped for space, so nothing frees room and
    // every write fails until the agent stops.
    let mut rig = Rig::new("s2", &free_endpoint(), &free_endpoint(), "4m", "min_free_bytes = 0");
    rig.run("start");
    wait_for_status(&rig.data, "the agent", 30 * SECOND, |s| (durable_seq(s)? >= 50).then_some(()));
    rig.run("fill 0");
    let failing = wait_for_status(&rig.data, "the store to report the full disk", 30 * SECOND, |s| {
        (s["store"]["ok"] == false && s["store_errors"].as_u64()? > 0).then(|| s.clone())
    });
    assert_eq!(failing["outbox"]["dropped_for_space"], 0, "{failing}");
    assert_eq!(rig.stop(), 74, "EX_IOERR: {}", rig.stderr());
    assert!(rig.stderr().contains("stopped with the store failing"), "{}", rig.stderr());
    rig.assert_log_intact(true);
    rig.end();
}

/// Issue 27: with no reserve, a full disk stopped the uplink (3 812 records
/// unsent for 30 s with the hub up), and the local store still failed a
/// minute after space returned. Now what is on disk drains while the disk
/// is full, everything heals within seconds of space returning, without a
/// restart, and the losses stay counted across a restart, at the hub too.
#[test]
fn a_full_disk_drains_to_the_hub_and_heals_within_seconds_and_its_losses_stay_counted() {
    let ports = HubPorts::new();
    let broker = free_endpoint();
    let metric = ports.buses["metric"].clone();
    let mut rig = Rig::new("s3", &broker, &metric.frontend, "4m", "min_free_bytes = 0");
    rig.run("start");
    // A backlog on disk while the hub is down, then no room at all.
    let before = wait_for_status(&rig.data, "a backlog on disk", 30 * SECOND, |s| {
        (durable_seq(s)? >= 600).then(|| s.clone())
    });
    let epoch = before["epoch"].as_u64().unwrap();
    rig.run("fill 0");
    let full = wait_for_status(&rig.data, "writes to fail", 30 * SECOND, |s| {
        (s["store"]["ok"] == false && s["store_errors"].as_u64()? > 0).then(|| s.clone())
    });
    let on_disk = durable_seq(&full).unwrap();

    // The hub comes back while the disk is still full: what is on disk reaches it.
    let collector = Collector::start(&metric.backend, "org.plantd.Metric.s3.");
    let hub = HubProc::start_with_ports(tempfile::tempdir().unwrap(), &broker, ports, &[]);
    let drained = Instant::now();
    wait_for("the backlog on disk at the hub, the disk still full", 20 * SECOND, || {
        let seen: std::collections::HashSet<u64> =
            collector.durable().iter().filter(|s| s.epoch == epoch).map(|s| s.seq).collect();
        (1..=on_disk).all(|seq| seen.contains(&seq)).then_some(())
    });
    eprintln!("{on_disk} samples on the full disk reached the hub in {:?}", drained.elapsed());
    // The local store fails too, once sled needs a page the disk lacks.
    let waited = Instant::now();
    wait_for_status(&rig.data, "the local store to fail on the full disk", 60 * SECOND, |s| {
        (s["store"]["local"]["ok"] == false).then_some(())
    });
    eprintln!("the local store failed {:?} after the drain", waited.elapsed());

    // Space returns: the outbox and the local store write again within
    // seconds, no restart (the same epoch), and the backlog is gone.
    rig.run("free");
    let freed = Instant::now();
    let healed =
        wait_for_status(&rig.data, "both stores to write again and the backlog to drain", 10 * SECOND, |s| {
            (s["store"]["ok"] == true
                && s["outbox"]["records"].as_u64()? < 100
                && s["link"]["state"] == "up"
                && durable_seq(s)? > on_disk + 200)
                .then(|| s.clone())
        });
    eprintln!("healed {:?} after space returned: {}", freed.elapsed(), healed["store"]);
    assert_eq!(healed["epoch"].as_u64(), Some(epoch), "no restart");
    assert!(healed["store"]["reopens"].as_u64().unwrap() >= 1, "the local store was opened again: {healed}");
    let lost = healed["store_errors"].as_u64().unwrap();
    assert!(lost > 0);
    let newest = durable_seq(&healed).unwrap();
    wait_for("samples made after the recovery at the hub", 10 * SECOND, || {
        collector.durable().iter().any(|s| s.epoch == epoch && s.seq >= newest).then_some(())
    });

    // The hub shows the losses: `hub agents` and its /metrics.
    let row = hub_agent(&hub, "s3", "the hub to show the lost samples", |row| {
        row["store_errors"].as_u64() == Some(lost) && row["store_ok"] == true
    });
    assert_eq!(row["warnings"], Value::Array(vec![]), "{row}");
    let metrics = http_get(&hub.http, "/metrics").1;
    let series = "plantd_ingest_agent_samples_lost{agent=\"s3\",reason=\"store_error\"}";
    assert_eq!(prometheus_value(&metrics, series), Some(lost), "{metrics}");

    // It stops cleanly once space has returned, and the losses outlive it.
    assert_eq!(rig.stop(), 0, "{}", rig.stderr());
    rig.run("start");
    let again = wait_for_status(&rig.data, "the agent again", 30 * SECOND, |s| {
        (s["epoch"].as_u64()? != epoch).then(|| s.clone())
    });
    assert_eq!(again["store_errors"].as_u64(), Some(lost), "kept across the restart: {again}");
    let new_epoch = again["epoch"].as_u64().unwrap();
    hub_agent(&hub, "s3", "the hub to show the losses after the restart", |row| {
        row["epoch"].as_u64() == Some(new_epoch) && row["store_errors"].as_u64() == Some(lost)
    });
    assert_eq!(rig.stop(), 0, "{}", rig.stderr());
    rig.end();
}

/// Issue 27: a fixed 32 MiB reserve on a 20 MB file system dropped 96 % of
/// the samples with the hub up. Sized from the file system (5 %: 1 MiB
/// here), nothing is dropped; while the disk is short of it, status, `agent
/// check` and `hub agents` say so, and stop saying it when it is over.
#[test]
fn the_reserve_of_a_20_mb_disk_drops_nothing_with_the_link_up_and_is_warned_of_while_short() {
    let hub = HubProc::start();
    let metric = hub.bus("metric").clone();
    let collector = Collector::start(hub.endpoint(&metric.backend), "org.plantd.Metric.s4.");
    let mut rig = Rig::new("s4", &hub.broker, &metric.frontend, "20m", "");
    rig.run("start");
    let up = wait_for_status(&rig.data, "600 samples acknowledged", 30 * SECOND, |s| {
        (s["link"]["samples_acked"].as_u64()? >= 600).then(|| s.clone())
    });
    let o = &up["outbox"];
    assert_eq!(o["min_free_bytes"].as_u64(), Some(1 << 20), "5 % of 20 MiB: {up}");
    assert_eq!(o["reserve"], "sized from the file system");
    assert_eq!(
        (&o["space_low"], &o["dropped_for_space"], &o["dropped"]),
        (&false.into(), &0.into(), &0.into())
    );
    assert_eq!(up["warnings"], Value::Array(vec![]), "{up}");
    let (epoch, acked) = (up["epoch"].as_u64().unwrap(), durable_seq(&up).unwrap() - 50);
    wait_for("every sample up to the acknowledged ones at the hub", 10 * SECOND, || {
        let seen: std::collections::HashSet<u64> =
            collector.durable().iter().filter(|s| s.epoch == epoch).map(|s| s.seq).collect();
        (1..=acked).all(|seq| seen.contains(&seq)).then_some(())
    });

    // Half a MiB left: under the reserve, each new sample drops the oldest, loudly.
    rig.run(&format!("fill {}", 512 << 10));
    let short = wait_for_status(&rig.data, "the agent to drop for space", 20 * SECOND, |s| {
        (s["outbox"]["space_low"] == true && s["outbox"]["dropped_for_space"].as_u64()? > 0)
            .then(|| s.clone())
    });
    let said = short["warnings"][0].as_str().unwrap_or_default().to_string();
    assert!(
        said.contains("under the outbox's reserve of 1.0 MiB (5 % of the 20.0 MiB file system)"),
        "{short}"
    );
    let check = agent_cli(&["check", "--config", rig.config.to_str().unwrap()]);
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    let line = check.lines().find(|l| l.contains("store")).unwrap_or_default();
    assert!(line.starts_with("warn") && line.contains("reserve"), "{check}");
    // The report that first says the disk is short may come before the first drop: wait for both.
    let row = hub_agent(&hub, "s4", "the hub to warn of the short disk and count drops", |row| {
        row["space_low"] == true && row["dropped"].as_u64().is_some_and(|d| d > 0)
    });
    assert!(row["warnings"][0].as_str().unwrap().contains("under its reserve of 1.0 MiB"), "{row}");

    // Room again: the warnings stop, here and at the hub.
    rig.run("free");
    let fine = wait_for_status(&rig.data, "the warning to stop", 10 * SECOND, |s| {
        (s["outbox"]["space_low"] == false && s["warnings"] == Value::Array(vec![])).then(|| s.clone())
    });
    assert_eq!(fine["store"]["ok"], true, "{fine}");
    hub_agent(&hub, "s4", "the hub to stop warning", |row| row["warnings"] == Value::Array(vec![]));
    assert_eq!(rig.stop(), 0, "{}", rig.stderr());
    rig.end();
}
