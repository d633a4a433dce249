//! Who may talk to the hub, and what each may do (the Ironhouse pattern).
//!
//! With `[security]` every TCP socket the hub binds is a CURVE server; the
//! ZAP handler ([`zap`]) admits only the public keys in `clients_dir`, and
//! names each peer after its certificate file. Every message then carries
//! that identity (libzmq's `User-Id` property), and each component asks
//! [`Security::grants`] what the identity may do: deny by default.
//! In-process peers (the hub's own services) have no identity and are trusted.
//!
//! The allow-list is re-read on SIGHUP and `hub keys reload`. A removed key
//! opens no new connection, every message it still sends is refused, and the
//! hub closes the connections it still has open (see `transport::peer`); so
//! does a name given a new key (the old key's connections go). One key in
//! two files is in neither (see [`allowlist::Conflict`]): it is refused,
//! both files are named, and the conflict is counted.

pub mod allowlist;
pub mod denials;
pub mod handshakes;
pub mod holds;
pub mod policy;
pub mod zap;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use transport::curve::{read_key_pair, CertFileError, ServerKeys};

pub use self::allowlist::{AllowList, Conflict};
pub use self::denials::{Denials, Kind};
pub use self::handshakes::Handshakes;
pub use self::holds::HoldOffs;
pub use self::policy::{Grants, Policy, Role, SocketRole};

/// `[security]` in the hub's config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// The hub's own secret certificate (`NAME.key_secret`, from `hub keygen`).
    pub server_cert: PathBuf,
    /// The allow-list: peers' public certificates (`*.key`); an identity is a file's stem.
    pub clients_dir: PathBuf,
    /// Identity (or a prefix ending in `*`) → its roles.
    #[serde(default)]
    pub identities: BTreeMap<String, Vec<String>>,
    /// Roles beside the built-in `agent`, `viewer` and `operator` (a role of
    /// the same name replaces the built-in one).
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
    /// Each identity's denials are logged at most once per this interval (all are counted).
    #[serde(default = "default_log_interval_ms")]
    pub log_interval_ms: u64,
    /// A connection that has not finished its CURVE handshake by then is
    /// closed (libzmq's default is 30 s: a flood of raw connections would
    /// hold that many descriptors that long).
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

fn default_handshake_timeout_ms() -> u64 {
    5_000
}

fn default_log_interval_ms() -> u64 {
    10_000
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("security.server_cert: {0} (make one with `hub keygen hub --dir DIR`)")]
    ServerCert(#[from] CertFileError),
    /// The hub's secret key is open to others (exit 78: `chmod` fixes it,
    /// not a new key pair).
    #[error("security.server_cert: {0}")]
    ServerCertExposed(#[source] CertFileError),
    #[error("security.clients_dir {path}: {source} (create it, and put the peers' .key files there)")]
    ClientsDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Role(#[from] policy::UnknownRole),
}

/// What a reload found.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reload {
    pub identities: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Names now with another key: the old key's connections are closed.
    pub rekeyed: Vec<String>,
    /// Files skipped, with why.
    pub skipped: Vec<String>,
    /// Keys found in several files, with the files: none of their names is allowed.
    pub conflicts: Vec<String>,
}

/// Identities whose open connections must close, since some generation.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    Names(HashSet<String>),
    /// Too many reloads ago to tell: every identity's.
    All,
}

impl Revoked {
    pub fn contains(&self, identity: &str) -> bool {
        match self {
            Revoked::Names(names) => names.contains(identity),
            Revoked::All => true,
        }
    }
}

/// Reloads whose revocations are kept for components that look rarely.
const REVOCATIONS_KEPT: usize = 64;

/// The running hub's security: its keys, the allow-list, the policy, the denials.
pub struct Security {
    pub server: ServerKeys,
    clients_dir: PathBuf,
    policy: Policy,
    allow: RwLock<Arc<AllowList>>,
    generation: AtomicU64,
    /// (generation, identities revoked by the reload that made it).
    revocations: Mutex<VecDeque<(u64, Vec<String>)>>,
    /// Why the last reload failed (the allow-list before it stays in force).
    last_reload_error: Mutex<Option<String>>,
    /// Files refused at the last reload because another holds the same key.
    conflicting_files: AtomicUsize,
    pub denials: Denials,
    /// Identities refused new connections to a socket for a while.
    pub holds: HoldOffs,
    /// Failed handshakes, by kind, and the monitors that report them.
    pub handshakes: Handshakes,
    handshake_timeout: Duration,
    watch: Mutex<handshakes::Watch>,
}

impl Security {
    /// Reads the hub's certificate and the allow-list named by `config`.
    pub fn load(config: &SecurityConfig) -> Result<Security, SecurityError> {
        let server = read_key_pair(&config.server_cert).map_err(|e| match e {
            e @ CertFileError::Exposed(_) => SecurityError::ServerCertExposed(e),
            e => SecurityError::ServerCert(e),
        })?;
        let security = Security::new(server, config, AllowList::default())?;
        security.reload()?;
        Ok(security)
    }

    /// A security context with this allow-list (tests build one without files).
    pub fn new(
        server: ServerKeys,
        config: &SecurityConfig,
        allow: AllowList,
    ) -> Result<Security, SecurityError> {
        Ok(Security {
            server,
            clients_dir: config.clients_dir.clone(),
            policy: Policy::new(&config.identities, &config.roles)?,
            allow: RwLock::new(Arc::new(allow)),
            generation: AtomicU64::new(0),
            revocations: Mutex::default(),
            last_reload_error: Mutex::default(),
            conflicting_files: AtomicUsize::new(0),
            denials: Denials::new(Duration::from_millis(config.log_interval_ms)),
            holds: HoldOffs::default(),
            handshakes: Handshakes::default(),
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
            watch: Mutex::default(),
        })
    }

    /// Re-reads `clients_dir`. Components see the change at their next look at
    /// [`Security::generation`]. A file that cannot be read now keeps the
    /// identity's previous key (a half-written file does not lock a peer out;
    /// deleting the file is how a key is removed), unless another file now
    /// holds that key. A key in several files is in none.
    pub fn reload(&self) -> Result<Reload, SecurityError> {
        let loaded = AllowList::load(&self.clients_dir)
            .map_err(|source| SecurityError::ClientsDir { path: self.clients_dir.clone(), source });
        *self.last_reload_error.lock().unwrap_or_else(|e| e.into_inner()) =
            loaded.as_ref().err().map(|e| e.to_string());
        let allowlist::Loaded { list: mut fresh, skipped, mut conflicts } = loaded?;
        let old = self.allow_list();
        let mut report = Reload::default();
        for s in &skipped {
            let name = s.path.file_stem().and_then(|n| n.to_str()).unwrap_or_default();
            let previous = old.key_of(name);
            let mut kept = "";
            if let Some(key) = previous {
                if let Some(holder) = fresh.identity(&key).map(String::from) {
                    // Another file took this name's key while its own file is
                    // unreadable: a conflict, like two readable files.
                    fresh.remove(&holder);
                    let holder = self.clients_dir.join(format!("{holder}.key"));
                    let mut paths = vec![holder, s.path.clone()];
                    paths.sort();
                    conflicts.push(Conflict { key, paths });
                } else if fresh.insert(key, name.to_string()) {
                    kept = "; its previous key stays in use";
                }
            }
            log::warn!("allow-list: skipped {}: {}{kept}", s.path.display(), s.why);
            report.skipped.push(format!("{}: {}{kept}", s.path.display(), s.why));
        }
        for conflict in &conflicts {
            log::error!("allow-list: {conflict}");
            report.conflicts.push(conflict.to_string());
        }
        let files = conflicts.iter().map(|c| c.paths.len()).sum();
        self.conflicting_files.store(files, Ordering::SeqCst);
        let changes = self.replace(fresh);
        report.identities = changes.identities;
        report.added = changes.added;
        report.removed = changes.removed;
        report.rekeyed = changes.rekeyed;
        log::info!(
            "allow-list: {} identities ({} added, {} removed, {} with a new key, {} files refused for a shared key)",
            report.identities,
            report.added.len(),
            report.removed.len(),
            report.rekeyed.len(),
            files
        );
        Ok(report)
    }

    /// Swaps in `allow`, records what it revokes, and tells the components.
    pub fn replace(&self, allow: AllowList) -> Reload {
        let mut guard = self.allow.write().unwrap_or_else(|e| e.into_inner());
        let old = guard.clone();
        let names = |list: &AllowList, keep: &dyn Fn(&str) -> bool| -> Vec<String> {
            list.identities().into_iter().filter(|n| keep(n)).map(String::from).collect()
        };
        let changes = Reload {
            identities: allow.len(),
            added: names(&allow, &|n| !old.contains_identity(n)),
            removed: names(&old, &|n| !allow.contains_identity(n)),
            rekeyed: names(&old, &|n| allow.key_of(n).is_some_and(|k| old.key_of(n) != Some(k))),
            skipped: Vec::new(),
            conflicts: Vec::new(),
        };
        *guard = Arc::new(allow);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let revoked = changes.removed.iter().chain(&changes.rekeyed).cloned().collect();
        let mut revocations = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
        revocations.push_back((generation, revoked));
        if revocations.len() > REVOCATIONS_KEPT {
            revocations.pop_front();
        }
        changes
    }

    /// The identities revoked after generation `seen`: their connections
    /// must close.
    pub fn revoked_since(&self, seen: u64) -> Revoked {
        let revocations = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
        if revocations.front().is_some_and(|(oldest, _)| *oldest > seen + 1) {
            return Revoked::All;
        }
        let names = revocations.iter().filter(|(g, _)| *g > seen).flat_map(|(_, names)| names.clone());
        Revoked::Names(names.collect())
    }

    pub fn allow_list(&self) -> Arc<AllowList> {
        self.allow.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Bumped at every reload: components that cache grants re-read them.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// What `identity` may do now: nothing unless the allow-list still has it.
    pub fn grants(&self, identity: &str) -> Arc<Grants> {
        if self.allow_list().contains_identity(identity) {
            self.policy.grants(identity)
        } else {
            Grants::none()
        }
    }

    /// What `identity` may do by the identities table alone, key or no key:
    /// for an identity that authenticates elsewhere (the NATS bridge's
    /// `rpc_identity`, which NATS's own credentials admit).
    pub fn grants_by_policy(&self, identity: &str) -> Arc<Grants> {
        self.policy.grants(identity)
    }

    /// Files refused at the last reload because another file holds the same key.
    pub fn conflicting_files(&self) -> usize {
        self.conflicting_files.load(Ordering::SeqCst)
    }

    /// Why the last reload failed, if it did.
    pub fn last_reload_error(&self) -> Option<String> {
        self.last_reload_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds its metrics: identities allowed, denials per identity and kind.
    pub fn collect(&self, out: &mut crate::metrics::Families) {
        out.gauge(
            "security_identities",
            "Identities in the allow-list.",
            vec![],
            self.allow_list().len() as u64,
        );
        out.gauge(
            "security_allowlist_conflicts",
            "Allow-list files refused at the last reload because another file holds the same key (none of their names is allowed).",
            vec![],
            self.conflicting_files() as u64,
        );
        for failure in handshakes::Failure::ALL {
            out.counter(
                "handshake_failures",
                "Failed handshakes on the hub's CURVE sockets, by kind.",
                vec![("kind", failure.name().to_string())],
                self.handshakes.count(failure),
            );
        }
        for (identity, kind, n) in self.denials.snapshot() {
            let labels = vec![("identity", identity), ("kind", kind.name().to_string())];
            out.counter("denials", "Refusals, per identity and kind.", labels, n);
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

/// Who sent a message, as a hub component sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender<'a> {
    /// Security is off: everyone may do everything (the hub binds loopback only).
    Anyone,
    /// One of the hub's own in-process components.
    Hub,
    /// A peer admitted by the ZAP handler under this identity.
    Identity(&'a str),
    /// A remote peer with no identity while security is on: refused.
    Unauthenticated,
}

impl<'a> Sender<'a> {
    /// Classifies a message by its libzmq properties: `User-Id` (set by our
    /// ZAP handler) and whether it came over the network (`Peer-Address`:
    /// in-process messages have none).
    pub fn of(secure: bool, user_id: Option<&'a str>, remote: bool) -> Sender<'a> {
        match (secure, user_id, remote) {
            (false, _, _) => Sender::Anyone,
            (true, Some(id), _) if !id.is_empty() => Sender::Identity(id),
            (true, _, false) => Sender::Hub,
            (true, _, true) => Sender::Unauthenticated,
        }
    }

    /// The name denials are counted under.
    pub fn name(&self) -> &'a str {
        match self {
            Sender::Identity(id) => id,
            Sender::Anyone | Sender::Hub => "(hub)",
            Sender::Unauthenticated => denials::UNKNOWN,
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use transport::curve::generate;

    /// A security context whose allow-list names `identities` (with fresh keys),
    /// mapped to roles by `roles`.
    pub fn security(identities: &[&str], roles: &[(&str, &str)]) -> Security {
        let config = SecurityConfig {
            server_cert: PathBuf::new(),
            clients_dir: PathBuf::new(),
            identities: roles.iter().map(|(who, role)| (who.to_string(), vec![role.to_string()])).collect(),
            roles: BTreeMap::new(),
            log_interval_ms: 60_000,
            handshake_timeout_ms: default_handshake_timeout_ms(),
        };
        let allow = AllowList::new(identities.iter().map(|n| (generate().unwrap().public, n.to_string())));
        Security::new(generate().unwrap(), &config, allow).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_are_classified_by_identity_and_origin() {
        assert_eq!(Sender::of(false, None, true), Sender::Anyone);
        assert_eq!(Sender::of(true, Some("pump-1"), true), Sender::Identity("pump-1"));
        assert_eq!(Sender::of(true, None, false), Sender::Hub);
        assert_eq!(Sender::of(true, None, true), Sender::Unauthenticated);
        assert_eq!(Sender::of(true, Some(""), true), Sender::Unauthenticated);
    }

    #[test]
    fn removed_identities_lose_their_grants() {
        let security = testing::security(&["pump-1"], &[("pump-*", "agent")]);
        assert!(security.grants("pump-1").may_call(b"org.plantd.Ingest", None));
        let generation = security.generation();
        security.replace(AllowList::default());
        assert!(security.generation() > generation);
        assert!(!security.grants("pump-1").may_call(b"org.plantd.Ingest", None));
        assert!(security.revoked_since(generation).contains("pump-1"));
    }

    #[test]
    fn a_new_key_revokes_the_old_keys_connections() {
        let security = testing::security(&["pump-1", "pump-2"], &[]);
        let start = security.generation();
        let allow = security.allow_list();
        let pump_2 = allow.key_of("pump-2").unwrap();
        let new_key = transport::curve::generate().unwrap().public;
        let changes =
            security.replace(AllowList::new([(new_key, "pump-1".into()), (pump_2, "pump-2".into())]));
        assert_eq!((changes.rekeyed, changes.removed), (vec!["pump-1".to_string()], vec![]));
        let revoked = security.revoked_since(start);
        assert!(revoked.contains("pump-1") && !revoked.contains("pump-2"));
        assert_eq!(security.revoked_since(security.generation()), Revoked::Names(HashSet::new()));
        for _ in 0..REVOCATIONS_KEPT + 1 {
            security.replace(security.allow_list().as_ref().clone());
        }
        assert_eq!(security.revoked_since(start), Revoked::All, "too long ago to tell");
    }

    #[test]
    fn an_unreadable_file_keeps_the_previous_key() {
        let dir = tempfile::tempdir().unwrap();
        let (_, server_cert) = transport::curve::write_new_pair(dir.path(), "hub", "test").unwrap();
        let clients = dir.path().join("clients");
        let (public, _) = transport::curve::write_new_pair(&clients, "pump-1", "test").unwrap();
        std::fs::remove_file(clients.join("pump-1.key_secret")).unwrap();
        let config = SecurityConfig {
            server_cert,
            clients_dir: clients.clone(),
            identities: BTreeMap::new(),
            roles: BTreeMap::new(),
            log_interval_ms: 1000,
            handshake_timeout_ms: default_handshake_timeout_ms(),
        };
        let security = Security::load(&config).unwrap();
        std::fs::write(&public, "half-written").unwrap();
        let report = security.reload().unwrap();
        assert!(report.removed.is_empty() && report.skipped[0].contains("previous key"), "{report:?}");
        assert!(security.allow_list().contains_identity("pump-1"));
        std::fs::remove_file(&public).unwrap();
        assert_eq!(security.reload().unwrap().removed, ["pump-1"]);
    }

    fn conflicts_gauge(security: &Security) -> u64 {
        let mut out = crate::metrics::Families::default();
        security.collect(&mut out);
        out.to_json()["plantd_security_allowlist_conflicts"].as_u64().unwrap()
    }

    #[test]
    fn a_key_copied_under_another_name_locks_both_names_out() {
        let dir = tempfile::tempdir().unwrap();
        let (_, server_cert) = transport::curve::write_new_pair(dir.path(), "hub", "test").unwrap();
        let clients = dir.path().join("clients");
        let (pump_2, _) = transport::curve::write_new_pair(&clients, "pump-2", "test").unwrap();
        transport::curve::write_new_pair(&clients, "pump-3", "test").unwrap();
        let config = SecurityConfig {
            server_cert,
            clients_dir: clients.clone(),
            identities: BTreeMap::new(),
            roles: BTreeMap::new(),
            log_interval_ms: 1000,
            handshake_timeout_ms: default_handshake_timeout_ms(),
        };
        let security = Security::load(&config).unwrap();
        let start = security.generation();
        let key = security.allow_list().key_of("pump-2").unwrap();

        // "ops-0.key" sorts first: "first file wins" made pump-2's key an operator.
        let ops_0 = clients.join("ops-0.key");
        std::fs::copy(&pump_2, &ops_0).unwrap();
        let report = security.reload().unwrap();
        assert_eq!((report.added, report.removed), (vec![], vec!["pump-2".to_string()]));
        let [conflict] = &report.conflicts[..] else { panic!("{:?}", report.conflicts) };
        assert!(conflict.contains("ops-0.key") && conflict.contains("pump-2.key"), "{conflict}");
        let allow = security.allow_list();
        assert_eq!((allow.identity(&key), allow.identities()), (None, vec!["pump-3"]));
        assert!(security.revoked_since(start).contains("pump-2"), "its open connections close");
        assert_eq!(conflicts_gauge(&security), 2);

        // The same while pump-2's own file is unreadable: its previous key is not kept.
        std::fs::remove_file(&ops_0).unwrap();
        security.reload().unwrap();
        assert!(security.allow_list().contains_identity("pump-2"));
        let text = std::fs::read(&pump_2).unwrap();
        std::fs::write(&pump_2, "half-written").unwrap();
        std::fs::write(&ops_0, &text).unwrap();
        let report = security.reload().unwrap();
        assert_eq!(report.removed, ["pump-2"], "{report:?}");
        assert_eq!(report.conflicts.len(), 1, "{report:?}");
        assert_eq!(security.allow_list().identity(&key), None);

        std::fs::remove_file(&ops_0).unwrap();
        std::fs::write(&pump_2, &text).unwrap();
        assert_eq!(security.reload().unwrap().added, ["pump-2"]);
        assert_eq!(conflicts_gauge(&security), 0);
    }
}
