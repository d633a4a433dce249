//! Keys and secret files: one public key is one identity (`hub keys add`,
//! a key in two allow-list files), secret files others may read are refused
//! by every command that reads them, and key directories are private.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use proto::mdp::Dialect;
use serde_json::Value;
use system_tests::*;

const SECOND: Duration = Duration::from_secs(1);

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts `out` is the configuration error (78) for `file`, naming its fix.
fn assert_refused(what: &str, out: &Output, file: &Path) {
    let said = stderr(out);
    assert_eq!(out.status.code(), Some(78), "{what}: {said}");
    assert!(said.contains(&format!("`chmod 600 {}`", file.display())), "{what}: {said}");
}

/// `hub serve --config config` on free ports; it must exit (it is refused), within 20 s.
fn serve(config: &Path) -> Output {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("hub"));
    cmd.args(["serve", "--broker", &free_endpoint(), "--data-dir"]).arg(data.path());
    cmd.args(HubPorts::new().args()).arg("--config").arg(config);
    run_bounded("hub serve with a loose secret", &mut cmd, 20 * SECOND)
}

#[test]
fn hub_keys_add_refuses_a_key_already_allowed_under_another_name() {
    let site = Site::new();
    let pump = site.identity("pump-2");
    let config = site.config("\"pump-*\" = [\"agent\"]\n\"ops-*\" = [\"operator\"]", "");
    let keys = |args: &[&str]| hub_cli(&[&["keys", "--config", config.to_str().unwrap()][..], args].concat());
    let before: Vec<_> = std::fs::read_dir(site.clients_dir()).unwrap().map(|e| e.unwrap().path()).collect();

    let out = keys(&["add", pump.public.to_str().unwrap(), "--name", "ops-0"]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("already allowed as pump-2") && said.contains("pump-2.key"), "{said}");
    assert!(said.contains("hub keys remove pump-2"), "says what to do: {said}");
    let after: Vec<_> = std::fs::read_dir(site.clients_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(after, before, "the allow-list is unchanged");
    let list: Value = serde_json::from_slice(&keys(&["--json", "list"]).stdout).unwrap();
    assert_eq!(list["identities"][0]["identity"], "pump-2");
    assert_eq!(list["identities"].as_array().unwrap().len(), 1);
}

#[test]
fn a_key_in_two_allow_list_files_keeps_both_names_out() {
    let site = Site::new();
    let pump = site.identity("pump-2");
    // "ops-0.key" sorts before "pump-2.key": "first file wins" made pump-2's key an operator.
    let copy = site.clients_dir().join("ops-0.key");
    std::fs::copy(&pump.public, &copy).unwrap();
    let hub = site.hub("\"pump-*\" = [\"agent\"]\n\"ops-*\" = [\"operator\"]", "");
    let as_pump = || call(site.endpoint(&pump, &hub.broker), Dialect::Rfc7, "mmi.service", &["x"], SECOND);
    let refused_before = hub.denials("(unknown)", "connect");
    assert_eq!(as_pump(), None, "the key is refused at the handshake");
    wait_for("the refusal to be counted", 10 * SECOND, || {
        (hub.denials("(unknown)", "connect") > refused_before).then_some(())
    });
    assert_eq!(hub.metric("plantd_security_allowlist_conflicts"), 2);
    let log = hub.proc.stderr();
    assert!(log.contains("ops-0.key and ") && log.contains("pump-2.key hold the same key"), "{log}");

    // Fixed, then broken again by hand: the reload does the same.
    let (config, data) = (site.path().join("hub.toml"), hub.data.path().to_path_buf());
    let reload = || {
        let args = ["keys", "--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()];
        let out = hub_cli(&[&args[..], &["--json", "reload"]].concat());
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["reloaded"].clone()
    };
    std::fs::remove_file(&copy).unwrap();
    assert_eq!(reload()["added"], serde_json::json!(["pump-2"]));
    assert_eq!(as_pump(), Some(vec!["404".to_string()]), "pump-2 alone has its key again");
    std::fs::copy(&pump.public, &copy).unwrap();
    let report = reload();
    assert_eq!(report["removed"], serde_json::json!(["pump-2"]), "{report}");
    let conflict = report["conflicts"][0].as_str().unwrap_or_default();
    assert!(conflict.contains("ops-0.key") && conflict.contains("pump-2.key"), "{report}");
    wait_for("pump-2's key to be refused again", 10 * SECOND, || as_pump().is_none().then_some(()));
}

#[test]
fn secret_files_others_may_read_stop_serve_agent_run_the_checks_and_clients() {
    let site = Site::new();
    let pump = site.identity("pump-1");
    let config = site.config("\"pump-*\" = [\"agent\"]", "");
    let check = |config: &Path| hub_cli(&["check-config", config.to_str().unwrap()]);
    assert!(check(&config).status.success(), "0600 passes: {}", stderr(&check(&config)));

    // The hub's secret key at 0644.
    chmod(&site.hub_secret, 0o644);
    assert_refused("check-config", &check(&config), &site.hub_secret);
    assert_refused("serve", &serve(&config), &site.hub_secret);
    let call_as = |cert: &Path| {
        let (cert, server) = (cert.to_str().unwrap(), site.hub_public.to_str().unwrap());
        let broker = free_endpoint();
        hub_cli(&["call", "--broker", &broker, "--cert", cert, "--server-cert", server, "mmi.service", "x"])
    };
    assert_refused("hub call --cert", &call_as(&site.hub_secret), &site.hub_secret);
    chmod(&site.hub_secret, 0o600);

    // systemd's credentials: 0440 (the ACL mask in the group bits) is how
    // LoadCredential= hands the key over; readable by every user is not.
    let credentials = tempfile::tempdir().unwrap();
    let credential = credentials.path().join("hub.key_secret");
    std::fs::copy(&site.hub_secret, &credential).unwrap();
    let with_credentials = |mode_bits| {
        chmod(&credential, mode_bits);
        let mut cmd = Command::new(bin("hub"));
        cmd.arg("check-config").arg(&config).env("CREDENTIALS_DIRECTORY", credentials.path());
        output(&mut cmd)
    };
    let out = with_credentials(0o440);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_refused("a credential every user may read", &with_credentials(0o444), &credential);

    // The HTTP token at 0644.
    let token = site.path().join("http.token");
    std::fs::write(&token, "a-long-random-token\n").unwrap();
    chmod(&token, 0o644);
    let with_token =
        site.config("\"pump-*\" = [\"agent\"]", &format!("[http]\ntoken_file = \"{}\"", token.display()));
    assert_refused("check-config", &check(&with_token), &token);
    assert_refused("serve", &serve(&with_token), &token);

    // An agent's secret key at 0666.
    chmod(&pump.secret, 0o666);
    let dir = tempfile::tempdir().unwrap();
    let body = site.agent_keys(&pump);
    let agent = agent_config(dir.path(), "pump-1", &free_endpoint(), &free_endpoint(), &body);
    let out = agent_cli(&["check", "--config-only", agent.to_str().unwrap()]);
    assert_refused("agent check --config-only", &out, &pump.secret);
    let mut run = Command::new(bin("agent"));
    run.arg("run").arg("--config").arg(&agent);
    assert_refused(
        "agent run",
        &run_bounded("agent run with a loose key", &mut run, 20 * SECOND),
        &pump.secret,
    );
}

#[test]
fn keygen_makes_private_directories_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let under_umask_000 = |program: &str, args: &str| {
        let script = format!("umask 000; exec {} {args}", bin(program).display());
        output(Command::new("sh").arg("-c").arg(script))
    };
    let hub_keys = dir.path().join("hub/keys");
    let out = under_umask_000("hub", &format!("keygen --dir {} pump-7", hub_keys.display()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!((mode(&dir.path().join("hub")), mode(&hub_keys)), (0o700, 0o700));
    assert_eq!(mode(&hub_keys.join("pump-7.key_secret")), 0o600);
    let agent_keys = dir.path().join("agent/keys");
    let out = under_umask_000("agent", &format!("keygen --dir {}", agent_keys.display()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!((mode(&dir.path().join("agent")), mode(&agent_keys)), (0o700, 0o700));

    // A directory that exists is the operator's: left as it is, with a word
    // when others may write into it.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let out = hub_cli(&["keygen", "--dir", shared.to_str().unwrap(), "ops-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("chmod go-w"), "{}", stderr(&out));
    assert_eq!(mode(&shared), 0o777);
}
