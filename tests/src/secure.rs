//! A site with security, for the black-box tests: the hub's key pair, an
//! allow-list directory, identities with their certificates, and a hub
//! config naming them.

use std::path::{Path, PathBuf};

use transport::curve::{read_client_keys, write_new_pair, ClientKeys};
use transport::Endpoint;

use crate::{HubPorts, HubProc};

/// One identity's certificate files.
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub public: PathBuf,
    pub secret: PathBuf,
}

pub struct Site {
    pub dir: tempfile::TempDir,
    pub hub_public: PathBuf,
    pub hub_secret: PathBuf,
    /// More `[security]` lines for the hub's config (e.g. `handshake_timeout_ms = 500`).
    pub security_extra: String,
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

impl Site {
    pub fn new() -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("clients")).unwrap();
        let (hub_public, hub_secret) = write_new_pair(&dir.path().join("keys"), "hub", "tests").unwrap();
        Site { dir, hub_public, hub_secret, security_extra: String::new() }
    }

    pub fn clients_dir(&self) -> PathBuf {
        self.dir.path().join("clients")
    }

    /// A new identity, listed in the allow-list.
    pub fn identity(&self, name: &str) -> Identity {
        let id = self.stranger(name);
        std::fs::copy(&id.public, self.clients_dir().join(format!("{name}.key"))).unwrap();
        id
    }

    /// A new key pair the hub does not know.
    pub fn stranger(&self, name: &str) -> Identity {
        let (public, secret) = write_new_pair(&self.dir.path().join("keys"), name, "tests").unwrap();
        Identity { name: name.into(), public, secret }
    }

    /// `identity`'s client keys for this site's hub.
    pub fn keys(&self, identity: &Identity) -> ClientKeys {
        read_client_keys(&identity.secret, &self.hub_public).unwrap()
    }

    /// `address` reached as `identity`.
    pub fn endpoint(&self, identity: &Identity, address: &str) -> Endpoint {
        Endpoint::curve(address, self.keys(identity))
    }

    /// Writes a hub config with `[security]` (the `identities` table is
    /// `roles`, TOML lines like `"pump-*" = ["agent"]`) and `extra` TOML
    /// after it; returns its path.
    pub fn config(&self, roles: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join("hub.toml");
        let text = format!(
            "{extra}\n\n[security]\nserver_cert = \"{}\"\nclients_dir = \"{}\"\nlog_interval_ms = 100\n{}\n\n[security.identities]\n\"ops\" = [\"operator\"]\n{roles}\n",
            self.hub_secret.display(),
            self.clients_dir().display(),
            self.security_extra,
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts a hub with this site's security; the harness calls it as `ops` (an operator).
    pub fn hub(&self, roles: &str, extra: &str) -> HubProc {
        self.hub_on(roles, extra, HubPorts::new)
    }

    /// [`Site::hub`] on the buses `ports` makes.
    pub fn hub_on(&self, roles: &str, extra: &str, ports: impl Fn() -> HubPorts) -> HubProc {
        let ops = if self.clients_dir().join("ops.key").exists() {
            Identity {
                name: "ops".into(),
                public: self.dir.path().join("keys/ops.key"),
                secret: self.dir.path().join("keys/ops.key_secret"),
            }
        } else {
            self.identity("ops")
        };
        let config = self.config(roles, extra);
        HubProc::start_secure_on(&config, self.keys(&ops), ports)
    }

    /// `[hub]` lines for an agent config: this site's hub key, `identity`'s
    /// certificate (put them first in the body given to `agent_config`).
    pub fn agent_keys(&self, identity: &Identity) -> String {
        format!(
            "server_cert = \"{}\"\nclient_cert = \"{}\"\n",
            self.hub_public.display(),
            identity.secret.display()
        )
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
