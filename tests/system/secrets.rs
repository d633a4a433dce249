//! Secret files others may read are refused by every command that reads
//! them, and key directories are private.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

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
