//! Where the client commands connect, said once (issue 21): options before
//! or after the command, `PLANTD_*` variables, and named contexts in a file,
//! with every command line that worked before still working, and a failing
//! connection naming the context and the key it used.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use system_tests::*;

/// `hub ARGS` with only the given variables of ours set, and the contexts in `file`.
fn hub(file: &Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("hub"));
    for var in ["PLANTD_BROKER", "PLANTD_CERT", "PLANTD_SERVER_CERT", "PLANTD_TIMEOUT_MS", "PLANTD_CONTEXT"] {
        cmd.env_remove(var);
    }
    cmd.env("PLANTD_CONTEXTS", file).envs(vars.iter().copied()).args(args);
    output(&mut cmd)
}

fn ok(out: &Output) -> bool {
    out.status.success()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn options_variables_and_contexts_all_reach_the_hub_and_old_command_lines_still_work() {
    let hub_proc = HubProc::start();
    let broker = hub_proc.broker.as_str();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("contexts.toml");
    // Nowhere to connect without a word: the default is nobody here.
    let dead = free_endpoint();

    // Before the command, after it (every script so far), and from a variable.
    for args in [
        vec!["--broker", broker, "call", "mmi.service", "org.plantd.State"],
        vec!["call", "--broker", broker, "mmi.service", "org.plantd.State"],
        vec!["--timeout", "2000", "state", "--broker", broker, "--scope", "p", "set", "k", "v"],
        vec!["agents", "--broker", broker, "--timeout", "2000"],
    ] {
        let out = hub(&file, &[], &args);
        assert!(ok(&out), "{args:?}: {}", stderr(&out));
    }
    assert!(ok(&hub(&file, &[("PLANTD_BROKER", broker)], &["agents"])));

    // Contexts: the first added is the current one; `use` switches.
    let add = hub(&file, &[], &["context", "add", "dead", "--broker", &dead, "--timeout", "300"]);
    assert!(ok(&add), "{}", stderr(&add));
    let add = hub(&file, &[], &["context", "add", "site-a", "--broker", broker]);
    assert!(ok(&add), "{}", stderr(&add));
    let refused = hub(&file, &[], &["agents"]);
    assert_eq!(refused.status.code(), Some(3), "the current context is 'dead'");
    assert!(stderr(&refused).contains(&format!("broker {dead} from context 'dead'")), "{}", stderr(&refused));
    assert!(ok(&hub(&file, &[], &["--context", "site-a", "agents"])));
    assert!(ok(&hub(&file, &[("PLANTD_CONTEXT", "site-a")], &["agents"])));
    // An option beats the context; the context named with --context beats a variable.
    assert!(ok(&hub(&file, &[], &["agents", "--broker", broker])));
    let named = hub(&file, &[("PLANTD_BROKER", broker)], &["--context", "dead", "agents"]);
    assert_eq!(named.status.code(), Some(3), "{}", stderr(&named));
    assert!(ok(&hub(&file, &[], &["context", "use", "site-a"])));
    assert!(ok(&hub(&file, &[], &["state", "--scope", "p", "get", "k"])));
    let list = String::from_utf8_lossy(&hub(&file, &[], &["context", "list"]).stdout).into_owned();
    assert!(list.lines().any(|l| l.starts_with("* site-a")), "{list}");
    let show = String::from_utf8_lossy(&hub(&file, &[], &["context", "show"]).stdout).into_owned();
    assert!(show.contains(&format!("broker {broker} from context 'site-a'")), "{show}");

    // Mistakes are named, with what to do.
    let unknown = hub(&file, &[], &["--context", "nope", "agents"]);
    assert!(
        stderr(&unknown).contains("no context named 'nope' (known: dead, site-a)"),
        "{}",
        stderr(&unknown)
    );
    assert!(ok(&hub(&file, &[], &["context", "rm", "dead"])));
    std::fs::write(&file, "[context.x]\nbrokr = \"typo\"\n").unwrap();
    let bad = hub(&file, &[], &["agents"]);
    assert!(stderr(&bad).contains("brokr"), "{}", stderr(&bad));
}

#[test]
fn a_context_with_keys_reaches_a_secure_hub_and_a_wrong_key_is_named() {
    let site = Site::new();
    let viewer = site.identity("viewer-1");
    let hub_proc = site.hub("\"viewer-1\" = [\"viewer\"]", "");
    let stranger = site.stranger("stranger");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("contexts.toml");
    let (hub_key, broker) = (site.hub_public.to_str().unwrap(), hub_proc.broker.as_str());
    // The hub knows the viewer's key once it reloads its allow-list.
    wait_for("the hub to allow viewer-1", 20 * std::time::Duration::from_secs(1), || {
        let out = hub(
            &file,
            &[],
            &[
                "call",
                "--broker",
                broker,
                "--cert",
                viewer.secret.to_str()?,
                "--server-cert",
                hub_key,
                "--timeout",
                "500",
                "mmi.service",
                "org.plantd.Hub",
            ],
        );
        ok(&out).then_some(())
    });
    for (name, key) in [("site-a", &viewer), ("wrong", &stranger)] {
        let secret = key.secret.to_str().unwrap();
        let args = [
            "context",
            "add",
            name,
            "--broker",
            broker,
            "--cert",
            secret,
            "--server-cert",
            hub_key,
            "--timeout",
            "500",
        ];
        let add = hub(&file, &[], &args);
        assert!(ok(&add), "{}", stderr(&add));
    }
    let agents = hub(&file, &[], &["agents", "--json"]);
    assert!(ok(&agents), "{}", stderr(&agents));
    let listed: Value = serde_json::from_slice(&agents.stdout).unwrap();
    assert!(listed.is_array(), "{listed}");

    // A key the hub does not know: no reply (CURVE says nothing), and the
    // message says which context and which key were used.
    let refused = hub(&file, &[], &["--context", "wrong", "agents"]);
    assert_eq!(refused.status.code(), Some(3));
    let said = stderr(&refused);
    assert!(said.contains(&format!("key {} from context 'wrong'", stranger.secret.display())), "{said}");

    // A context whose key file is gone is refused when it is added.
    let gone = dir.path().join("gone.key_secret");
    let add =
        hub(&file, &[], &["context", "add", "x", "--cert", gone.to_str().unwrap(), "--server-cert", hub_key]);
    assert!(!ok(&add) && stderr(&add).contains("gone.key_secret"), "{}", stderr(&add));
}
