//! Keys and identities over their life: made (`hub keygen`), added, listed
//! and removed (`hub keys`), revoked in a running hub by a reload (calls,
//! subscriptions and publishers' connections stop, without a restart), and
//! certificates made by pyzmq used unchanged.

use std::time::Duration;

use serde_json::Value;
use system_tests::*;
use transport::Subscriber;

use crate::security::as_;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn keygen_and_keys_manage_the_allow_list() {
    let site = Site::new();
    let keys_dir = site.path().join("made");
    let out = hub_cli(&["keygen", "--dir", keys_dir.to_str().unwrap(), "pump-7"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    let secret = keys_dir.join("pump-7.key_secret");
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    let again = hub_cli(&["keygen", "--dir", keys_dir.to_str().unwrap(), "pump-7"]);
    assert!(!again.status.success(), "never overwrites");
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));

    let config = site.config("\"pump-*\" = [\"agent\"]", "");
    let config = config.to_str().unwrap();
    let keys = |args: &[&str]| hub_cli(&[&["keys", "--config", config][..], args].concat());
    let refused = keys(&["add", secret.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("secret key"),
        "a secret certificate is refused"
    );
    let added = keys(&["add", keys_dir.join("pump-7.key").to_str().unwrap(), "--name", "pump-station-7"]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let listed = keys(&["--json", "list"]);
    let list: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let row = &list["identities"][0];
    assert_eq!((row["identity"].as_str(), row["roles"][0].as_str()), (Some("pump-station-7"), Some("agent")));
    assert!(keys(&["remove", "pump-station-7"]).status.success());
    let list: Value = serde_json::from_slice(&keys(&["--json", "list"]).stdout).unwrap();
    assert_eq!(list["identities"], serde_json::json!([]));
    let no_hub = keys(&["reload"]);
    assert!(!no_hub.status.success(), "reload needs a running hub");
}

#[test]
fn a_removed_key_stops_working_after_a_reload_without_a_restart() {
    let site = Site::new();
    let (viewer, other, writer) =
        (site.identity("grafana"), site.identity("grafana-2"), site.identity("writer"));
    let hub = site.hub("\"grafana*\" = [\"viewer\"]\n\"writer\" = [\"operator\"]", "");
    let pid = hub.proc.pid();
    assert_eq!(as_(&site, &viewer, &hub, "mmi.service", &["org.plantd.State"]).unwrap(), ["200"]);
    let ctx = zmq::Context::new();
    let event = hub.bus("event").clone();
    let mut removed_sub = Subscriber::connect(&ctx, site.endpoint(&viewer, &event.backend), &[b""]).unwrap();
    let mut kept_sub = Subscriber::connect(&ctx, site.endpoint(&other, &event.backend), &[b""]).unwrap();
    let ops = transport::Publisher::connect(&ctx, hub.endpoint(&event.frontend), Default::default()).unwrap();
    wait_for("both subscribers to hear an event", 20 * SECOND, || {
        ops.publish(b"org.plantd.Before", b"{}").unwrap();
        let a = removed_sub.recv(Duration::from_millis(50)).ok().flatten();
        let b = kept_sub.recv(Duration::from_millis(50)).ok().flatten();
        (a.is_some() && b.is_some()).then_some(())
    });
    // A publisher whose key goes too: the bus closes its connection.
    let writer_pub =
        transport::Publisher::connect(&ctx, site.endpoint(&writer, &event.frontend), Default::default())
            .unwrap();
    wait_for("the writer's event to be heard", 20 * SECOND, || {
        writer_pub.publish(b"org.plantd.Writer", b"{}").unwrap();
        kept_sub.recv(Duration::from_millis(50)).ok().flatten().filter(|m| m.topic == b"org.plantd.Writer")
    });
    std::fs::remove_file(site.clients_dir().join("writer.key")).unwrap();

    let config = site.path().join("hub.toml");
    let config = config.to_str().unwrap();
    std::fs::remove_file(site.clients_dir().join("grafana.key")).unwrap();
    let data = hub.data.path().to_str().unwrap();
    let out = hub_cli(&["keys", "--config", config, "--data-dir", data, "--json", "reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["reloaded"]["removed"], serde_json::json!(["grafana", "writer"]));
    wait_for("the bus to close the revoked publisher's connection", 20 * SECOND, || {
        let log = hub.proc.stderr();
        log.lines()
            .any(|l| l.contains("bus 'event': closed ") && l.contains("connection(s) of revoked identities"))
            .then_some(())
    });

    wait_for("the removed key's calls to stop", 20 * SECOND, || {
        as_(&site, &viewer, &hub, "mmi.service", &["org.plantd.State"]).is_none().then_some(())
    });
    while removed_sub.recv(Duration::from_millis(10)).ok().flatten().is_some() {}
    wait_for("the kept subscriber to hear an event after the reload", 20 * SECOND, || {
        ops.publish(b"org.plantd.After", b"{}").unwrap();
        kept_sub.recv(Duration::from_millis(50)).ok().flatten().filter(|m| m.topic == b"org.plantd.After")
    });
    let leaked = std::iter::from_fn(|| removed_sub.recv(Duration::from_millis(100)).ok().flatten())
        .find(|m| m.topic == b"org.plantd.After");
    assert!(leaked.is_none(), "the removed subscriber still hears new events");
    assert_eq!(as_(&site, &other, &hub, "mmi.service", &["org.plantd.State"]).unwrap(), ["200"]);
    assert_eq!(hub.proc.pid(), pid, "no restart");
}

#[test]
fn pyzmq_peers_with_pyzmq_certificates_work_against_a_secure_hub() {
    let site = Site::new();
    // Certificates made by pyzmq's zmq.auth.create_certificates, used unchanged.
    let made = site.path().join("pyzmq");
    std::fs::create_dir_all(&made).unwrap();
    for name in ["py-client", "py-worker"] {
        let out = python_run(&["certs", "--dir", made.to_str().unwrap(), "--name", name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::copy(made.join(format!("{name}.key")), site.clients_dir().join(format!("{name}.key")))
            .unwrap();
    }
    let roles = "\"py-worker\" = [\"py-echo\"]\n\"py-client\" = [\"py-user\"]\n\n[security.roles.py-echo]\nprovide = [\"py.echo\"]\n\n[security.roles.py-user]\ncall = [\"py.echo\"]";
    let hub = site.hub(roles, "");
    let (hub_key, cert) = (site.hub_public.to_str().unwrap(), |n: &str| made.join(format!("{n}.key_secret")));
    for dialect in ["rfc7", "plantd"] {
        let worker_cert = cert("py-worker");
        let _worker = python_peer(
            "py worker",
            &[
                "worker",
                "--dialect",
                dialect,
                "--broker",
                &hub.broker,
                "--service",
                "py.echo",
                "--cert",
                worker_cert.to_str().unwrap(),
                "--server-cert",
                hub_key,
            ],
        );
        hub.wait_for_service("py.echo");
        let client_cert = cert("py-client");
        let out = python_run(&[
            "client",
            "--dialect",
            dialect,
            "--broker",
            &hub.broker,
            "--service",
            "py.echo",
            "--cert",
            client_cert.to_str().unwrap(),
            "--server-cert",
            hub_key,
            "--timeout",
            "10",
            "hello",
            dialect,
        ]);
        assert!(out.status.success(), "{dialect}: {}", String::from_utf8_lossy(&out.stderr));
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["final"], serde_json::json!(["hello", dialect]));
        drop(_worker);
        hub.wait_for_no_service("py.echo", 20 * SECOND);
    }
}
