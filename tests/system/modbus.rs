//! The agent's Modbus master against pymodbus's servers (TCP, and RTU over a
//! pair of pseudo-terminals from socat): every type and word order, exceptions,
//! writes checked from a pymodbus client, a server killed and restarted, a
//! late reply, merged reads counted at the server, an absent unit on a bus;
//! and 4-20 mA inputs through IIO fixture trees.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

/// `tests/interop/modbus_server.py`, its request log collected as it comes.
struct Server {
    _proc: Proc,
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut cmd = Command::new(python());
        cmd.arg(workspace_root().join("tests/interop/modbus_server.py")).args(args);
        let mut proc = Proc::spawn("modbus-server", cmd);
        let lines = Lines::new(proc.take_stdout());
        let ready = lines
            .next(20 * SECOND)
            .unwrap_or_else(|| panic!("the server never said ready: {}", proc.stderr()));
        let port = ready.strip_prefix("ready port=").map_or(0, |p| p.parse().expect("a port"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sink = requests.clone();
        std::thread::spawn(move || {
            // Ends when the server's stdout closes.
            while let Some(line) = lines.next(Duration::from_secs(3600)) {
                sink.lock().unwrap().push(line);
            }
        });
        Server { _proc: proc, port, requests }
    }

    fn tcp(load: &Value, extra: &[&str]) -> (Server, tempfile::NamedTempFile) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), load.to_string()).unwrap();
        let mut args = vec!["--tcp", "0", "--load", file.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        (Server::start(&args), file)
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// `tests/interop/modbus_client.py <args>`: pymodbus's own client.
fn pymodbus_client(args: &[&str]) -> Value {
    let out = output(
        Command::new(python()).arg(workspace_root().join("tests/interop/modbus_client.py")).args(args),
    );
    assert!(out.status.success(), "modbus_client {args:?}: {}", String::from_utf8_lossy(&out.stdout));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An agent config with `[[modbus]]` links and channels (no hub needed).
fn config(dir: &Path, id: &str, body: &str) -> PathBuf {
    agent_config(dir, id, &free_endpoint(), &free_endpoint(), body)
}

fn once(config: &Path) -> (Option<i32>, Vec<Value>) {
    let out = agent_cli(&["once", "--config", config.to_str().unwrap()]);
    let lines =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (out.status.code(), lines)
}

fn value_of<'a>(lines: &'a [Value], channel: &str) -> &'a Value {
    let line =
        lines.iter().find(|l| l["channel"] == channel).unwrap_or_else(|| panic!("no {channel} in {lines:?}"));
    &line["value"]
}

#[test]
fn every_type_and_word_order_reads_as_pymodbus_wrote_it() {
    let mut load = vec![
        json!({"table": "holding", "address": 10, "type": "u16", "value": 65000}),
        json!({"table": "holding", "address": 11, "type": "i16", "value": -2}),
        json!({"table": "holding", "address": 12, "type": "u16", "value": 650}),
        json!({"table": "holding", "address": 13, "type": "u16", "value": 0b1010}),
        json!({"table": "holding", "address": 100, "type": "u16", "value": 4242}),
        json!({"table": "coil", "address": 3, "value": true}),
        json!({"table": "discrete", "address": 4, "value": true}),
        json!({"table": "input", "address": 7, "type": "u16", "value": 513}),
    ];
    let mut channels = String::new();
    let mut expect: Vec<(String, Value)> = [
        ("u16", json!(65000)),
        ("i16", json!(-2)),
        ("scaled", json!(650.0 * 0.1 - 40.0)),
        ("bit1", json!(true)),
        ("bit2", json!(false)),
        ("by_ref", json!(4242)),
        ("coil", json!(true)),
        ("discrete", json!(true)),
        ("input", json!(513)),
    ]
    .into_iter()
    .map(|(c, v)| (c.to_string(), v))
    .collect();
    channels.push_str(
        r#"
[[channel]]
name = "u16"
driver = { kind = "modbus", link = "plc", table = "holding", address = 10 }
[[channel]]
name = "i16"
driver = { kind = "modbus", link = "plc", table = "holding", address = 11, type = "i16" }
[[channel]]
name = "scaled"
driver = { kind = "modbus", link = "plc", table = "holding", address = 12, scale = 0.1, offset = -40.0 }
[[channel]]
name = "bit1"
driver = { kind = "modbus", link = "plc", table = "holding", address = 13, type = "bool", bit = 1 }
[[channel]]
name = "bit2"
driver = { kind = "modbus", link = "plc", table = "holding", address = 13, type = "bool", bit = 2 }
[[channel]]
name = "by_ref"
driver = { kind = "modbus", link = "plc", ref = "40101" }
[[channel]]
name = "coil"
driver = { kind = "modbus", link = "plc", table = "coil", address = 3, type = "bool" }
[[channel]]
name = "discrete"
driver = { kind = "modbus", link = "plc", table = "discrete", address = 4, type = "bool" }
[[channel]]
name = "input"
driver = { kind = "modbus", link = "plc", table = "input", address = 7 }
[[channel]]
name = "missing"
driver = { kind = "modbus", link = "plc", table = "holding", address = 2000 }
"#,
    );
    // Each multi-register type in each order, 8 registers apart.
    let typed = [
        ("f32", json!(1.5)),
        ("i32", json!(-123456)),
        ("u32", json!(3_000_000_000u32)),
        ("f64", json!(-2.25)),
        ("i64", json!(-9_000_000_000i64)),
        ("u64", json!(1u64 << 40)),
    ];
    let mut address = 200;
    for (t, v) in &typed {
        for order in ["ABCD", "CDAB", "BADC", "DCBA"] {
            load.push(json!({"table": "holding", "address": address, "type": t, "order": order, "value": v}));
            let name = format!("{t}_{order}");
            channels.push_str(&format!(
                "[[channel]]\nname = \"{name}\"\ndriver = {{ kind = \"modbus\", link = \"plc\", table = \"holding\", address = {address}, type = \"{t}\", order = \"{order}\" }}\n"
            ));
            expect.push((name, v.clone()));
            address += 8;
        }
    }
    let (server, _load) = Server::tcp(&json!({"1": load}), &[]);
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[[modbus]]\nname = \"plc\"\ntransport = \"tcp\"\naddress = \"{}\"\n\n{channels}",
        server.address()
    );
    let config = config(dir.path(), "mb1", &body);
    let (code, lines) = once(&config);
    for (channel, want) in &expect {
        assert_eq!(value_of(&lines, channel), want, "{channel}");
    }
    let missing = lines.iter().find(|l| l["channel"] == "missing").unwrap();
    assert!(missing["error"].as_str().unwrap().contains("exception 02: illegal data address"), "{missing}");
    assert_eq!(code, Some(1), "a channel in fault fails `once`");

    // The field tool shows the registers and every word order.
    let out = agent_cli(&[
        "modbus",
        "read",
        "--tcp",
        &server.address(),
        "holding",
        "208",
        "2",
        "--as",
        "f32",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(read["as"]["values"][0]["CDAB"], 1.5, "{read}");
    assert_eq!(read["registers"], json!([0x0000, 0x3FC0]));
    let out = agent_cli(&["modbus", "read", "--tcp", &server.address(), "holding", "2000"]);
    assert_eq!(out.status.code(), Some(2), "an exception: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("illegal data address"));
}

#[test]
fn a_running_agent_merges_reads_writes_outputs_and_marks_exceptions_bad() {
    let mut load: Vec<Value> = (0..20)
        .map(|i| json!({"table": "holding", "address": 300 + 2 * i, "type": "u32", "value": 1000 + i}))
        .collect();
    load.push(json!({"table": "coil", "address": 5, "value": false}));
    let (server, _load) = Server::tcp(&json!({"1": load}), &[]);
    let mut body =
        format!("[[modbus]]\nname = \"plc\"\ntransport = \"tcp\"\naddress = \"{}\"\n\n", server.address());
    for i in 0..20 {
        body.push_str(&format!(
            "[[channel]]\nname = \"m{i}\"\nperiod_ms = 500\ndriver = {{ kind = \"modbus\", link = \"plc\", table = \"holding\", address = {}, type = \"u32\" }}\n",
            300 + 2 * i
        ));
    }
    body.push_str(
        r#"
[[channel]]
name = "pump"
period_ms = 500
driver = { kind = "modbus", link = "plc", table = "coil", address = 5, type = "bool" }
[[channel]]
name = "setpoint"
period_ms = 500
driver = { kind = "modbus", link = "plc", table = "holding", address = 500, type = "f32", order = "CDAB" }
[[channel]]
name = "broken"
period_ms = 500
driver = { kind = "modbus", link = "plc", table = "input", address = 5000 }
"#,
    );
    let hub = HubProc::start();
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path(), "mb2", &hub.broker, &hub.bus("metric").frontend, &body);
    let data = dir.path().join("mb2-data");
    let _agent = agent_run(&config);
    let samples_of = |s: &Value, c: &str| s["channels"][c]["samples"].as_u64().unwrap_or(0);
    wait_for_status(&data, "ten periods of every channel", 30 * SECOND, |s| {
        (0..20).all(|i| samples_of(s, &format!("m{i}")) >= 10).then_some(())
    });
    let status = agent_status(&data).unwrap();
    assert_eq!(status["channels"]["m7"]["last"], 1007);
    assert_eq!(status["channels"]["m7"]["quality"], "good");
    // An exception is the channel's fault and quality, not the agent's.
    let broken = &status["channels"]["broken"];
    assert_eq!(broken["quality"], "bad", "{broken}");
    assert!(broken["fault"].as_str().unwrap().contains("illegal data address"), "{broken}");
    assert!(status["modbus"]["plc"]["exceptions"].as_u64().unwrap() >= 1);

    // The 20 u32 points (40 registers) are one request a period, never 20. (The
    // first period may come in two or three parts while the channels' tasks start.)
    let merged = || server.requests().iter().filter(|r| r.contains("fc=3 address=300 count=40")).count();
    wait_for("ten merged reads", 10 * SECOND, || (merged() >= 10).then_some(()));
    let block: Vec<String> = server.requests().into_iter().filter(|r| r.contains(" fc=3 ")).collect();
    let singles = block.iter().filter(|r| r.contains("fc=3 address=302 ")).count();
    assert_eq!(singles, 0, "single reads: {block:?}");

    // Writes through the hub, checked with pymodbus's own client.
    let call = |frames: &[&str]| -> Value {
        let reply = hub.try_call("org.plantd.Agent.mb2", frames, 5 * SECOND).expect("the agent answers");
        serde_json::from_str(&reply[0]).unwrap()
    };
    hub.wait_for_service("org.plantd.Agent.mb2");
    assert_eq!(call(&["write", "pump", "true"])["written"], true);
    assert_eq!(call(&["write", "setpoint", "12.5"])["written"], true);
    let at = server.address();
    assert_eq!(pymodbus_client(&["--tcp", &at, "read", "coil", "5", "1"]), json!([true]));
    // 12.5 is 0x41480000; CDAB puts the low word first.
    assert_eq!(pymodbus_client(&["--tcp", &at, "read", "holding", "500", "2"]), json!([0x0000, 0x4148]));
    wait_for_status(&data, "the written setpoint read back", 10 * SECOND, |s| {
        (s["channels"]["setpoint"]["last"] == 12.5).then_some(())
    });
    let refused = call(&["write", "broken", "1"]);
    assert!(refused["error"].as_str().unwrap().contains("input"), "{refused}");
}

#[test]
fn a_killed_server_makes_channels_bad_and_reads_resume_when_it_returns() {
    let load = json!({"1": [{"table": "holding", "address": 0, "type": "u16", "value": 77}]});
    let (server, file) = Server::tcp(&load, &[]);
    let port = server.port;
    let body = format!(
        "[[modbus]]\nname = \"plc\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\ntimeout_ms = 300\nbackoff_max_ms = 1000\n\n\
         [[channel]]\nname = \"level\"\nperiod_ms = 200\ndriver = {{ kind = \"modbus\", link = \"plc\", table = \"holding\", address = 0 }}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "mb3", &body);
    let data = dir.path().join("mb3-data");
    let mut agent = agent_run(&config);
    wait_for_status(&data, "a good reading", 20 * SECOND, |s| {
        (s["channels"]["level"]["last"] == 77).then_some(())
    });
    drop(server);
    let down = wait_for_status(&data, "the channel to go bad", 20 * SECOND, |s| {
        (s["channels"]["level"]["quality"] == "bad").then(|| s.clone())
    });
    assert!(down["channels"]["level"]["fault"].as_str().unwrap().contains("link plc"), "{down}");
    let outage = Instant::now();
    // Four seconds down: reconnects back off (100 ms doubling to 1 s), so a handful, not one per read.
    wait_for("four seconds of outage", 10 * SECOND, || (outage.elapsed() > 4 * SECOND).then_some(()));
    let connects_before = agent_status(&data).unwrap()["modbus"]["plc"]["connects"].as_u64().unwrap();
    let _back = Server::start(&["--tcp", &port.to_string(), "--load", file.path().to_str().unwrap()]);
    let up = wait_for_status(&data, "reads to resume", 20 * SECOND, |s| {
        (s["channels"]["level"]["quality"] == "good").then(|| s.clone())
    });
    assert!(agent.is_running(), "the agent stays up");
    let connects = up["modbus"]["plc"]["connects"].as_u64().unwrap();
    assert_eq!(connects, connects_before + 1, "one reconnect once the server is back");
    assert!(up["modbus"]["plc"]["timeouts"].as_u64().unwrap() <= 2, "{up}");
}

#[test]
fn a_late_reply_is_never_taken_for_the_answer_to_the_next_request() {
    let load = json!({"1": [
        {"table": "holding", "address": 300, "type": "u16", "value": 111},
        {"table": "holding", "address": 400, "type": "u16", "value": 222},
    ]});
    // The read of 300 is answered after 1 s, past the 700 ms timeout, just
    // before the answer to the read of 400 that follows it on the connection.
    let (_server, _load) = Server::tcp(&load, &["--delay", "300:1.0"]);
    let body = format!(
        "[[modbus]]\nname = \"plc\"\ntransport = \"tcp\"\naddress = \"{}\"\ntimeout_ms = 700\n\n\
         [[channel]]\nname = \"a_slow\"\ndriver = {{ kind = \"modbus\", link = \"plc\", table = \"holding\", address = 300 }}\n\
         [[channel]]\nname = \"b_fast\"\ndriver = {{ kind = \"modbus\", link = \"plc\", table = \"holding\", address = 400 }}\n",
        _server.address()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "mb4", &body);
    let (_, lines) = once(&config);
    let slow = lines.iter().find(|l| l["channel"] == "a_slow").unwrap();
    assert!(slow["error"].as_str().unwrap().contains("no answer"), "{slow}");
    assert_eq!(value_of(&lines, "b_fast"), &json!(222), "the late 111 must not be taken for 400's answer");
}

/// A socat pair of pseudo-terminals: the server on one end, the agent on the other.
struct PtyPair {
    _socat: Proc,
    server: PathBuf,
    agent: PathBuf,
    _dir: tempfile::TempDir,
}

impl PtyPair {
    fn new() -> PtyPair {
        let dir = tempfile::tempdir().unwrap();
        let (server, agent) = (dir.path().join("server"), dir.path().join("agent"));
        let mut cmd = Command::new("socat");
        cmd.arg(format!("pty,raw,echo=0,link={}", server.display()))
            .arg(format!("pty,raw,echo=0,link={}", agent.display()));
        let socat = Proc::spawn("socat", cmd);
        wait_for("socat's ptys", 10 * SECOND, || (server.exists() && agent.exists()).then_some(()));
        PtyPair { _socat: socat, server, agent, _dir: dir }
    }
}

#[test]
fn on_an_rtu_bus_an_absent_unit_does_not_slow_the_others() {
    let pty = PtyPair::new();
    let load: serde_json::Map<String, Value> = (1..=3)
        .map(|u| {
            (u.to_string(), json!([{"table": "holding", "address": 0, "type": "u16", "value": 100 * u}]))
        })
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), Value::Object(load).to_string()).unwrap();
    let server = Server::start(&[
        "--serial",
        pty.server.to_str().unwrap(),
        "--units",
        "1,2,3",
        "--load",
        file.path().to_str().unwrap(),
    ]);
    let mut body = format!(
        "[[modbus]]\nname = \"bus\"\ntransport = \"rtu\"\ndevice = \"{}\"\nbaud = 19200\ntimeout_ms = 250\ndegrade_after = 2\nprobe_ms = 5000\n\n",
        pty.agent.display()
    );
    for unit in 1..=4 {
        body.push_str(&format!(
            "[[channel]]\nname = \"u{unit}\"\nperiod_ms = 500\ndriver = {{ kind = \"modbus\", link = \"bus\", unit = {unit}, table = \"holding\", address = 0 }}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "mb5", &body);
    let data = dir.path().join("mb5-data");
    let _agent = agent_run(&config);
    let first = wait_for_status(&data, "unit 4 skipped", 20 * SECOND, |s| {
        (s["modbus"]["bus"]["degraded_units"] == json!([4]) && s["channels"]["u3"]["last"] == 300)
            .then(|| s.clone())
    });
    let started = Instant::now();
    wait_for("six seconds of polling", 10 * SECOND, || (started.elapsed() > 6 * SECOND).then_some(()));
    let last = agent_status(&data).unwrap();
    let periods = started.elapsed().as_secs_f64() / 0.5;
    for unit in 1..=3 {
        let c = format!("u{unit}");
        let got = last["channels"][&c]["samples"].as_u64().unwrap()
            - first["channels"][&c]["samples"].as_u64().unwrap();
        // Every period read, give or take the edges and a probe's timeout.
        assert!(got as f64 >= periods - 2.0, "{c}: {got} readings in {periods:.1} periods");
        assert_eq!(last["channels"][&c]["last"], 100 * unit);
    }
    let u4 = &last["channels"]["u4"];
    assert_eq!(u4["quality"], "bad", "{u4}");
    assert!(u4["fault"].as_str().unwrap().contains("unit 4"), "{u4}");
    // Skipped between probes: at most one probe (one request) per 5 s to unit 4.
    // Two timeouts to skip it, then at most a probe per 5 s: 4 requests in all.
    let probes = server.requests().iter().filter(|r| r.starts_with("request unit=4 ")).count();
    assert!(probes <= 4, "{probes} requests to the absent unit");
}

#[test]
fn agent_check_names_the_unit_that_does_not_answer_and_bad_configs_name_the_field() {
    let load = json!({"1": [{"table": "holding", "address": 0, "type": "u16", "value": 1}]});
    let (server, _load) = Server::tcp(&load, &[]);
    let body = format!(
        "[[modbus]]\nname = \"plc\"\ntransport = \"tcp\"\naddress = \"{}\"\ntimeout_ms = 300\n\n\
         [[channel]]\nname = \"here\"\ndriver = {{ kind = \"modbus\", link = \"plc\", unit = 1, table = \"holding\", address = 0 }}\n\
         [[channel]]\nname = \"gone\"\ndriver = {{ kind = \"modbus\", link = \"plc\", unit = 9, table = \"holding\", address = 0 }}\n",
        server.address()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "mb6", &body);
    let out = agent_cli(&["check", "--config", config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("ok") && l.contains("link plc unit 1")), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("FAIL") && l.contains("link plc unit 9") && l.contains("gone")),
        "{text}"
    );

    let bad = body.replace("link = \"plc\", unit = 9", "link = \"plc2\", unit = 9");
    let config = agent_config(dir.path(), "mb7", &free_endpoint(), &free_endpoint(), &bad);
    let out = agent_cli(&["check", "--config-only", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("channel[1] ('gone').driver.link") && err.contains("plc2"), "{err}");
}

#[test]
fn four_to_twenty_milliamp_inputs_map_to_engineering_units_and_namur_faults_are_bad() {
    let root = tempfile::tempdir().unwrap();
    let dev = root.path().join("sys/bus/iio/devices/iio:device0");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("name"), "ads1115\n").unwrap();
    std::fs::write(dev.join("in_voltage_scale"), "0.125000000\n").unwrap();
    std::fs::write(dev.join("in_voltage0_raw"), "24000\n").unwrap(); // 3000 mV: 12 mA on 250 ohm
    std::fs::write(dev.join("in_voltage1_raw"), "4000\n").unwrap(); // 500 mV: 2 mA, a broken wire
    let body = format!(
        "board_root = \"{}\"\n\n\
         [[channel]]\nname = \"level\"\nunit = \"m\"\ndriver = {{ kind = \"iio\", device = \"ads1115\", channel = \"voltage0\", shunt_ohms = 250.0, map = {{ in = [4, 20], out = [0, 10] }} }}\n\
         [[channel]]\nname = \"flow\"\ndriver = {{ kind = \"iio\", device = \"ads1115\", channel = \"voltage1\", shunt_ohms = 250.0 }}\n",
        root.path().display()
    );
    let dir = tempfile::tempdir().unwrap();
    // Top-level keys go before agent_config's [hub] table.
    let config = agent_config(dir.path(), "mb8", &free_endpoint(), &free_endpoint(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    let (top, channels) = body.split_once("\n\n").unwrap();
    std::fs::write(&config, format!("{top}\n{text}\n{channels}")).unwrap();
    let (code, lines) = once(&config);
    assert_eq!(value_of(&lines, "level"), &json!(5.0));
    let flow = lines.iter().find(|l| l["channel"] == "flow").unwrap();
    assert!(flow["error"].as_str().unwrap().contains("NAMUR"), "{flow}");
    assert_eq!(code, Some(1));

    let data = dir.path().join("mb8-data");
    let _agent = agent_run(&config);
    let status = wait_for_status(&data, "the broken loop reported bad", 20 * SECOND, |s| {
        (s["channels"]["flow"]["quality"] == "bad" && s["channels"]["level"]["quality"] == "good")
            .then(|| s.clone())
    });
    assert_eq!(status["channels"]["flow"]["last"], 2.0, "the bad reading is kept with its value");
}
