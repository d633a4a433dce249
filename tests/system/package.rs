//! The Debian packages (scripts/package.sh builds them): unpacked into a
//! scratch root, their layout, control fields and systemd units checked.

use std::path::{Path, PathBuf};
use std::process::Command;

use system_tests::*;

/// The newest `.deb` named `<name>_*_<arch>.deb` that scripts/package.sh left.
fn deb(name: &str, arch: &str) -> Option<PathBuf> {
    if std::env::var("PLANTD_SKIP_PACKAGES").as_deref() == Ok("1") {
        eprintln!("PLANTD_SKIP_PACKAGES=1: not testing {name} ({arch})");
        return None;
    }
    let root = workspace_root().join("target");
    let dirs = ["debian", "aarch64-unknown-linux-gnu/debian", "armv7-unknown-linux-gnueabihf/debian"];
    let mut found: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d)).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|p| {
            let file = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            file.starts_with(&format!("{name}_")) && file.ends_with(&format!("_{arch}.deb"))
        })
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let newest = found.pop();
    assert!(
        newest.is_some(),
        "no {name} package for {arch} under target/: run scripts/package.sh (scripts/test.sh does)"
    );
    newest
}

fn control(deb: &Path, field: &str) -> String {
    let out = output(Command::new("dpkg-deb").args(["-f"]).arg(deb).arg(field));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn unpack(deb: &Path) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let out = output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root.path()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    root
}

/// Where the package put its unit (cargo-deb uses lib/ or usr/lib/).
fn unit(root: &Path, name: &str) -> PathBuf {
    ["lib/systemd/system", "usr/lib/systemd/system"]
        .iter()
        .map(|d| root.join(d).join(format!("{name}.service")))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name}.service is not in the package"))
}

fn check_unit(root: &Path, name: &str, binary: &str) {
    let path = unit(root, name);
    let text = std::fs::read_to_string(&path).unwrap();
    for line in [
        &format!("ExecStart=/usr/bin/{binary} "),
        "Restart=on-failure",
        "DynamicUser=yes",
        &format!("StateDirectory={name}"),
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LoadCredential=",
        "Type=notify",
        "WatchdogSec=",
        "SystemCallFilter=@system-service",
    ] {
        assert!(text.contains(line), "{name}.service lacks {line}");
    }
    // systemd-analyze only warns about unknown keys and bad values, so any
    // output fails. It wants ExecStart to exist on this machine: the copy it
    // checks points there at the unpacked binary, and differs in nothing else.
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| dir.join("systemd-analyze").is_file()) {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join(format!("{name}.service"));
        let unpacked = root.join("usr/bin").join(binary);
        std::fs::write(&copy, text.replace(&format!("/usr/bin/{binary}"), unpacked.to_str().unwrap()))
            .unwrap();
        let out = output(Command::new("systemd-analyze").arg("verify").arg(&copy));
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {name}.service:\n{said}"
        );
        let exposure = exposure(&copy);
        assert!(exposure <= 2.0, "systemd-analyze security rates {name}.service {exposure} (at most 2.0)");
    }
}

/// `systemd-analyze security --offline=true`'s overall exposure (0 safest, 10 worst).
fn exposure(unit: &Path) -> f64 {
    let out = output(Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(unit));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| {
        panic!(
            "no exposure level in systemd-analyze's output:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let value = line.rsplit(':').next().and_then(|rest| rest.split_whitespace().next());
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("unreadable exposure: {line}"))
}

/// Installing enables the unit: postinst carries cargo-deb's deb-systemd-helper calls.
fn check_enabled_on_install(deb: &Path, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = output(Command::new("dpkg-deb").arg("-e").arg(deb).arg(dir.path()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let postinst = std::fs::read_to_string(dir.path().join("postinst")).expect("the package has a postinst");
    assert!(
        postinst.contains("deb-systemd-helper") && postinst.contains(&format!("{name}.service")),
        "{postinst}"
    );
    assert!(
        postinst.contains("keygen") && postinst.contains("key_secret"),
        "the host gets its key pair: {postinst}"
    );
    let conffiles = std::fs::read_to_string(dir.path().join("conffiles")).unwrap_or_default();
    assert!(conffiles.contains("/etc/plantd/"), "the config is a conffile: {conffiles}");
}

#[test]
fn hub_package_installs_a_working_layout() {
    let Some(deb) = deb("plantd-hub", "amd64") else { return };
    assert_eq!(control(&deb, "Architecture"), "amd64");
    assert!(control(&deb, "Depends").contains("libzmq5"), "{}", control(&deb, "Depends"));
    let root = unpack(&deb);
    let binary = root.path().join("usr/bin/plantd-hub");
    assert!(binary.is_file());
    let config = root.path().join("etc/plantd/hub.toml");
    let out = output(Command::new(&binary).args(["serve", "--print-config", "--config"]).arg(&config));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("data_dir = \"/var/lib/plantd-hub\""), "{printed}");
    check_unit(root.path(), "plantd-hub", "plantd-hub");
    check_enabled_on_install(&deb, "plantd-hub");
    readme_links_resolve(&root.path().join("usr/share/doc/plantd-hub"));
}

/// The installed README's links into docs/ resolve beside it: the pages are installed too.
fn readme_links_resolve(doc: &Path) {
    let readme = std::fs::read_to_string(doc.join("README.md")).expect("the README is installed");
    let pages: std::collections::BTreeSet<&str> = readme
        .split("](docs/")
        .skip(1)
        .map(|rest| rest.split([')', '#']).next().unwrap_or_default())
        .collect();
    assert!(pages.len() >= 10, "the README links its pages: {pages:?}");
    for page in pages {
        assert!(doc.join("docs").join(page).is_file(), "docs/{page} is not installed beside the README");
    }
}

#[test]
fn agent_packages_are_built_for_the_pi() {
    for (arch, machine) in [("arm64", "AArch64"), ("armhf", "ARM")] {
        let Some(deb) = deb("plantd-agent", arch) else { return };
        assert_eq!(control(&deb, "Architecture"), arch);
        assert!(control(&deb, "Depends").contains("libzmq5"));
        let root = unpack(&deb);
        let binary = root.path().join("usr/bin/plantd-agent");
        let header = output(Command::new("readelf").arg("-h").arg(&binary));
        assert!(String::from_utf8_lossy(&header.stdout).contains(machine), "{arch} binary is for {machine}");
        let config = std::fs::read_to_string(root.path().join("etc/plantd/agent.toml")).unwrap();
        assert!(config.contains("data_dir = \"/var/lib/plantd-agent\""));
        check_unit(root.path(), "plantd-agent", "plantd-agent");
        check_enabled_on_install(&deb, "plantd-agent");
        readme_links_resolve(&root.path().join("usr/share/doc/plantd-agent"));
    }
}
