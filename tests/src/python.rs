//! The third-party peers in tests/interop/peers.py.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::{output, workspace_root, Proc};

/// The Python interpreter with the interop peers installed (pyzmq,
/// majortomo). `scripts/setup.sh` creates it; `PLANTD_PYTHON` overrides.
pub fn python() -> PathBuf {
    let path = std::env::var_os("PLANTD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/interop-venv/bin/python"));
    assert!(
        path.exists(),
        "no Python for the interop peers at {}: run scripts/setup.sh (scripts/test.sh does), \
         or point PLANTD_PYTHON at a python with pyzmq and majortomo==0.2.0",
        path.display()
    );
    path
}

/// Starts `tests/interop/peers.py <args>`.
pub fn python_peer(name: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(workspace_root().join("tests/interop/peers.py")).args(args);
    Proc::spawn(name, cmd)
}

/// Runs `tests/interop/peers.py <args>` to completion (killed, and the test
/// failed, past [`CLI_DEADLINE`]).
pub fn python_run(args: &[&str]) -> Output {
    output(Command::new(python()).arg(workspace_root().join("tests/interop/peers.py")).args(args))
}

/// `/metrics` text as Prometheus's own Python parser reads it: `{family:
/// {"type", "samples": [[name, labels, value], ...]}}`. Panics, with the
/// parser's complaint, if it refuses the text.
pub fn prometheus_parse(text: &str) -> serde_json::Value {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = {f.name: f for f in text_string_to_metric_families(open(sys.argv[1]).read())}
print(json.dumps({name: {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
                  for name, f in families.items()}))
"#;
    let file = tempfile::NamedTempFile::new().expect("a temp file");
    std::fs::write(file.path(), text).expect("write the exposition");
    let out = output(Command::new(python()).args(["-c", script]).arg(file.path()));
    assert!(
        out.status.success(),
        "the parser refused the exposition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the parser printed JSON")
}
