//! The agent's store under a storage fault, black-box: the outbox's file
//! system fills up while the agent runs, then has room again.
//!
//! `agent run` runs inside `unshare -Urmpf` (user, mount and pid namespaces:
//! no privileges needed, and everything in them dies with the test) with a
//! small tmpfs mounted on `<data_dir>/outbox` only, so the control socket
//! `<data_dir>/control.sock` stays where the test reads status from. The
//! shell script that starts the agent fills the tmpfs, then waits (polling,
//! with a deadline) for marker files the test creates outside it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

struct Rig {
    _dir: tempfile::TempDir,
    data: PathBuf,
    marks: PathBuf,
    config: PathBuf,
}

impl Rig {
    /// Two durable channels, 200 samples a second; small segments; a reserve
    /// of `min_free_bytes` on a 4 MiB file system.
    fn new(id: &str, broker: &str, bus: &str, min_free_bytes: u64) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            "[outbox]\nflush_interval_ms = 100\nsegment_bytes = 65536\nmin_free_bytes = {min_free_bytes}\n\n\
             [uplink]\nbackoff_max_ms = 300\n\n\
             [[channel]]\nname = \"a\"\nperiod_ms = 10\ndriver = {{ kind = \"ramp\" }}\n\n\
             [[channel]]\nname = \"b\"\nperiod_ms = 10\ndriver = {{ kind = \"ramp\" }}\n"
        );
        let config = agent_config(dir.path(), id, broker, bus, &body);
        let data = dir.path().join(format!("{id}-data"));
        let marks = dir.path().join("marks");
        std::fs::create_dir_all(data.join("outbox")).unwrap();
        std::fs::create_dir_all(&marks).unwrap();
        Rig { _dir: dir, data, marks, config }
    }

    /// Starts the agent on a 4 MiB tmpfs, fills it once the test says `fill`
    /// (and has seen a backlog on disk), deletes the filler on `free`, stops
    /// the agent on `stop` and runs `agent store verify` into `verify.json`.
    /// The script's exit status is the agent's.
    fn start(&self, free_before_stop: bool) -> Proc {
        let script = format!(
            r#"set -u
mount -t tmpfs -o size=4m tmpfs "$DATA/outbox" || exit 97
"$AGENT" run --config "$CONFIG" &
pid=$!
await() {{ i=0; until [ -e "$MARKS/$1" ]; do i=$((i+1)); [ $i -gt 1200 ] && {{ kill -TERM $pid; exit 95; }}; sleep 0.05; done; }}
await fill
dd if=/dev/zero of="$DATA/outbox/filler" bs=64k 2>/dev/null
: > "$MARKS/filled"
if [ {free} = 1 ]; then
  await free
  rm -f "$DATA/outbox/filler"
  : > "$MARKS/freed"
fi
await stop
kill -TERM $pid
wait $pid
code=$?
# What the failed writes left in the log, read before the tmpfs goes away.
"$AGENT" store --config "$CONFIG" verify > "$MARKS/verify.json"
exit $code
"#,
            free = u8::from(free_before_stop)
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["-Urmpf", "--kill-child", "sh", "-c", &script])
            .env("DATA", &self.data)
            .env("MARKS", &self.marks)
            .env("CONFIG", &self.config)
            .env("AGENT", bin("agent"));
        Proc::spawn("agent in unshare", cmd)
    }

    /// `agent store verify` of the log as the stopped agent left it: no
    /// damage and no torn tail, however many writes failed. `backlog`: the
    /// hub never came, so records must be there to verify; once it has
    /// drained the outbox, an empty log is as good.
    fn assert_log_intact(&self, backlog: bool) {
        let text = std::fs::read_to_string(self.marks.join("verify.json")).unwrap_or_default();
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

    fn mark(&self, name: &str) {
        std::fs::write(self.marks.join(name), b"").unwrap();
    }

    fn wait_mark(&self, name: &str, proc: &mut Proc) {
        wait_for(&format!("the script to reach '{name}'"), 60 * SECOND, || {
            assert!(proc.is_running(), "the script ended early: {}", proc.stderr());
            self.marks.join(name).exists().then_some(())
        });
    }
}

fn durable_seq(status: &Value) -> Option<u64> {
    status["outbox"]["durable"][1].as_u64()
}

#[test]
fn a_full_disk_drops_and_counts_keeps_the_agent_running_and_recovers() {
    require_unshare();
    let ports = HubPorts::new();
    let broker = free_endpoint();
    let metric = ports.buses["metric"].clone();
    // With a reserve the outbox stops growing and drops for space; dropping
    // frees whole segments now and then, so writes fail only part of the time.
    let rig = Rig::new("s1", &broker, &metric.frontend, 1 << 20);
    let mut proc = rig.start(true);
    wait_for_status(&rig.data, "a backlog on disk (the hub is down)", 30 * SECOND, |s| {
        (durable_seq(s)? >= 300).then_some(())
    });
    rig.mark("fill");
    rig.wait_mark("filled", &mut proc);

    // Full: the store reports the failure, drops for space are counted, and
    // the agent goes on sampling and answering.
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
    let appended = failing["outbox"]["last_appended"][1].as_u64().unwrap();
    wait_for_status(&rig.data, "sampling to go on while the disk is full", 20 * SECOND, |s| {
        (s["outbox"]["last_appended"][1].as_u64()? > appended + 50).then_some(())
    });
    let stuck = durable_seq(&failing).unwrap_or(0);

    // Room again: appends work, become durable, and reach the hub.
    rig.mark("free");
    rig.wait_mark("freed", &mut proc);
    let healthy = wait_for_status(&rig.data, "the store to recover", 30 * SECOND, |s| {
        (s["store"]["ok"] == true && s["outbox"]["space_low"] == false && durable_seq(s)? > stuck + 100)
            .then(|| s.clone())
    });
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
    rig.mark("stop");
    let status = proc.wait_exit(30 * SECOND).expect("the agent stops");
    assert_eq!(status.code(), Some(0), "{}", proc.stderr());
    // The hub may have taken every record by now.
    rig.assert_log_intact(false);
}

#[test]
fn an_agent_stopped_while_the_disk_is_full_exits_with_ex_ioerr() {
    require_unshare();
    // No reserve: nothing is dropped for space, so nothing frees room and
    // every write fails until the agent stops.
    let rig = Rig::new("s2", &free_endpoint(), &free_endpoint(), 0);
    let mut proc = rig.start(false);
    wait_for_status(&rig.data, "the agent", 30 * SECOND, |s| (durable_seq(s)? >= 50).then_some(()));
    rig.mark("fill");
    rig.wait_mark("filled", &mut proc);
    let failing = wait_for_status(&rig.data, "the store to report the full disk", 30 * SECOND, |s| {
        (s["store"]["ok"] == false && s["store_errors"].as_u64()? > 0).then(|| s.clone())
    });
    assert_eq!(failing["outbox"]["dropped_for_space"], 0, "{failing}");
    rig.mark("stop");
    let status = proc.wait_exit(30 * SECOND).expect("the agent stops");
    assert_eq!(status.code(), Some(74), "EX_IOERR: {}", proc.stderr());
    assert!(proc.stderr().contains("stopped with the store failing"), "{}", proc.stderr());
    rig.assert_log_intact(true);
}
