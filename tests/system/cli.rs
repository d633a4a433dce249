//! The command line as a user meets it: help, config errors, printed config.

use system_tests::*;

fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn help_teaches_with_examples() {
    for args in [&["--help"][..], &["serve", "--help"], &["call", "--help"], &["echo-worker", "--help"]] {
        let out = hub_cli(args);
        let (stdout, _) = text(&out);
        assert!(out.status.success(), "{args:?}");
        assert!(stdout.contains("Examples:"), "{args:?} help has no examples:\n{stdout}");
    }
}

#[test]
fn print_config_shows_embedded_defaults_and_overrides() {
    let (stdout, _) = text(&hub_cli(&["serve", "--print-config", "--broker", "tcp://127.0.0.1:1234"]));
    assert!(stdout.contains("endpoint = \"tcp://127.0.0.1:1234\""), "{stdout}");
    assert!(stdout.contains("heartbeat_interval_ms = 2500"), "{stdout}");
    assert!(stdout.contains("queue_limit = 10000"), "{stdout}");
    assert!(stdout.contains("request_expiry_ms = 30000"), "{stdout}");
}

#[test]
fn config_file_sets_values_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, "[broker]\nendpoint = \"tcp://127.0.0.1:1\"\nqueue_limit = 7\n").unwrap();
    let path = path.to_str().unwrap();
    let (stdout, _) = text(&hub_cli(&["serve", "--config", path, "--print-config"]));
    assert!(stdout.contains("queue_limit = 7") && stdout.contains("tcp://127.0.0.1:1\""), "{stdout}");
    let (stdout, _) =
        text(&hub_cli(&["serve", "--config", path, "--broker", "tcp://127.0.0.1:2", "--print-config"]));
    assert!(stdout.contains("tcp://127.0.0.1:2\""), "{stdout}");
}

#[test]
fn bad_config_is_a_clear_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, "[broker]\nqueue_limt = 7\n").unwrap();
    let out = hub_cli(&["serve", "--config", path.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("queue_limt") && stderr.contains("hub.toml"), "{stderr}");

    std::fs::write(&path, "[broker]\nheartbeat_liveness = 0\n").unwrap();
    let (_, stderr) = text(&hub_cli(&["serve", "--config", path.to_str().unwrap()]));
    assert!(stderr.contains("broker.heartbeat_liveness"), "{stderr}");

    let (_, stderr) = text(&hub_cli(&["serve", "--config", "/nonexistent/hub.toml"]));
    assert!(stderr.contains("cannot read config file /nonexistent/hub.toml"), "{stderr}");
}

#[test]
fn help_into_a_closed_pipe_ends_quietly() {
    for bin_name in ["hub", "agent"] {
        // `true` exits without reading: the help is written into a closed pipe.
        let script = format!("for i in 1 2 3 4 5; do '{}' --help | true; done", bin(bin_name).display());
        let out = output(std::process::Command::new("sh").args(["-c", &script]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{bin_name}: {stderr}");
    }
}
