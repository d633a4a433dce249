//! The ARM builds of the agent, run under qemu-user against the x86-64 hub.

use std::time::Duration;

use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);
/// A one-shot agent command under emulation: seconds normally, so a minute
/// means it is stuck.
const QEMU_CLI: Duration = Duration::from_secs(60);

#[test]
fn aarch64_agent_under_qemu_serves_the_x86_hub_over_curve() {
    let Some(mut agent) = arm_agent("arm64") else { return };
    let site = Site::new();
    let (pump, viewer) = (site.identity("pi64"), site.identity("grafana"));
    let hub = site.hub("\"pi64\" = [\"agent\"]\n\"grafana\" = [\"viewer\"]", "");
    let metric = hub.bus("metric").clone();
    let collector = Collector::start(site.endpoint(&viewer, &metric.backend), "org.plantd.Metric.pi64.");
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}\n[[channel]]\nname = \"temp\"\nperiod_ms = 100\ndriver = {{ kind = \"sine\" }}\n",
        site.agent_keys(&pump)
    );
    let config = agent_config(dir.path(), "pi64", &hub.broker, &metric.frontend, &body);

    // agent check passes, CURVE handshake included (a clock qemu cannot vouch for is only a warning).
    let Some(mut check) = arm_agent("arm64") else { return };
    check.args(["check", "--json", "--config"]).arg(&config);
    let out = run_bounded("arm64 agent check", &mut check, QEMU_CLI);
    let checks: Vec<Value> = serde_json::from_slice(&out.stdout).expect("check prints JSON");
    assert_eq!(out.status.code(), Some(0), "{checks:?}");
    assert!(checks.iter().any(|c| c["check"] == "hub keys" && c["status"] == "ok"), "{checks:?}");

    agent.arg("run").arg("--config").arg(&config);
    let _agent = Proc::spawn("arm64 agent", agent);
    wait_for("durable samples from the arm64 agent", 60 * SECOND, || {
        (collector.durable().len() >= 5).then_some(())
    });
    hub.wait_for_service("org.plantd.Agent.pi64");
    let reply = call(
        site.endpoint(&viewer, &hub.broker),
        proto::mdp::Dialect::Rfc7,
        "org.plantd.Agent.pi64",
        &["status"],
        10 * SECOND,
    )
    .expect("the arm64 agent answers");
    let status: Value = serde_json::from_str(&reply[0]).unwrap();
    assert_eq!(status["id"], "pi64");
    assert_eq!(status["link"]["state"], "up");
}

#[test]
fn armv7_agent_under_qemu_samples_once() {
    let Some(mut agent) = arm_agent("armhf") else { return };
    agent.args(["once", "--board", "sim", "--id", "pi32"]);
    let out = run_bounded("armhf agent once", &mut agent, QEMU_CLI);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5, "the sim board's five channels");
    assert!(lines.iter().any(|l| l["channel"] == "temperature" && l["value"].as_f64() == Some(20.0)));
}
