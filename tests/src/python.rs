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
