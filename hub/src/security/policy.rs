//! Roles and what they grant, compiled per identity.
//!
//! An identity is a certificate's file stem in `clients_dir`. The config maps
//! identities (exact names, or prefixes ending in `*`) to roles; an identity
//! has the union of its roles' grants, and nothing else: deny by default.
//! In a role, `{id}` stands for the identity's own name, and a pattern ending
//! in `*` matches any name with that prefix.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// What a role grants. Every list is empty (nothing granted) unless set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Role {
    /// Service names it may register as a worker (READY).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub provide: Vec<String>,
    /// Service names it may send requests to (`mmi.*` included).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub call: Vec<String>,
    /// Commands it may send to agents' services (`org.plantd.Agent.*`):
    /// status, read, write, ack, config, state-get, state-set.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agent_ops: Vec<String>,
    /// Bus name (or "*") → topic prefixes it may publish.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub publish: BTreeMap<String, Vec<String>>,
    /// Bus name (or "*") → topic prefixes it may subscribe to (a subscription
    /// must be at least as narrow as one of them).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub subscribe: BTreeMap<String, Vec<String>>,
    /// Buses (or "*") whose capture endpoint it may connect to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capture: Vec<String>,
    /// State scopes it may read (get, list-keys).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub state_read: Vec<String>,
    /// State scopes it may change (set, delete, create-scope, delete-scope).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub state_write: Vec<String>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The roles every hub knows; a `[security.roles.NAME]` of the same name replaces one.
pub fn builtin_roles() -> BTreeMap<String, Role> {
    let everything = || BTreeMap::from([("*".to_string(), strings(&[""]))]);
    let agent = Role {
        provide: strings(&["org.plantd.Agent.{id}"]),
        call: strings(&[
            "org.plantd.Ingest",
            "org.plantd.Ingest.Ordered",
            "org.plantd.State",
            "org.plantd.Fleet",
            "mmi.service",
        ]),
        publish: BTreeMap::from([("metric".into(), strings(&["org.plantd.Metric.{id}."]))]),
        state_read: strings(&["{id}"]),
        state_write: strings(&["{id}"]),
        ..Role::default()
    };
    let viewer = Role {
        call: strings(&[
            "mmi.*",
            "org.plantd.State",
            "org.plantd.Hub",
            "org.plantd.Agent.*",
            "org.plantd.Consumer",
        ]),
        agent_ops: strings(&["status", "read", "state-get"]),
        subscribe: everything(),
        state_read: strings(&["*"]),
        ..Role::default()
    };
    let operator = Role {
        call: strings(&["*"]),
        agent_ops: strings(&["status", "read", "write", "ack", "config", "state-get", "state-set"]),
        publish: BTreeMap::from([("event".into(), strings(&[""]))]),
        subscribe: everything(),
        capture: strings(&["*"]),
        state_read: strings(&["*"]),
        state_write: strings(&["*"]),
        ..Role::default()
    };
    BTreeMap::from([("agent".into(), agent), ("viewer".into(), viewer), ("operator".into(), operator)])
}

/// A name pattern with `{id}` already replaced: exact, or a prefix (`foo*`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    /// Exact or prefix is the pattern's, decided before `{id}` is replaced:
    /// an identity cannot turn an exact grant into a prefix (nor can it hold
    /// a '*': see `proto::identity`).
    fn new(pattern: &str, id: &str) -> Pattern {
        match pattern.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.replace("{id}", id)),
            None => Pattern::Exact(pattern.replace("{id}", id)),
        }
    }

    fn matches(&self, name: &[u8]) -> bool {
        match self {
            Pattern::Exact(exact) => name == exact.as_bytes(),
            Pattern::Prefix(prefix) => name.starts_with(prefix.as_bytes()),
        }
    }
}

fn any(patterns: &[Pattern], name: &[u8]) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

/// Topic prefixes per bus name ("*" for any bus).
#[derive(Clone, Debug, Default)]
struct Topics(HashMap<String, Vec<Vec<u8>>>);

impl Topics {
    fn add(&mut self, grants: &BTreeMap<String, Vec<String>>, id: &str) {
        for (bus, prefixes) in grants {
            let list = self.0.entry(bus.clone()).or_default();
            list.extend(prefixes.iter().map(|p| p.replace("{id}", id).into_bytes()));
        }
    }

    /// Whether `topic` (or a subscription prefix) starts with a granted prefix on `bus`.
    fn covers(&self, bus: &str, topic: &[u8]) -> bool {
        [bus, "*"].iter().filter_map(|b| self.0.get(*b)).flatten().any(|p| topic.starts_with(p))
    }

    fn any_on(&self, bus: &str) -> bool {
        [bus, "*"].iter().any(|b| self.0.get(*b).is_some_and(|p| !p.is_empty()))
    }
}

/// What one identity may do: its roles' grants, compiled.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    provide: Vec<Pattern>,
    /// Each role's callable services with that role's agent commands: a
    /// command is granted on the services of the role that grants it only.
    call: Vec<(Pattern, Arc<[String]>)>,
    publish: Topics,
    subscribe: Topics,
    capture: Vec<Pattern>,
    state_read: Vec<Pattern>,
    state_write: Vec<Pattern>,
}

/// Services of the agents: calls to them are checked per command.
pub const AGENT_SERVICE_PREFIX: &str = "org.plantd.Agent.";

impl Grants {
    /// Nothing at all: an identity no longer (or never) allowed.
    pub fn none() -> Arc<Grants> {
        Arc::new(Grants::default())
    }

    fn add(&mut self, role: &Role, id: &str) {
        let compile = |list: &[String]| list.iter().map(|p| Pattern::new(p, id)).collect::<Vec<_>>();
        self.provide.extend(compile(&role.provide));
        let ops: Arc<[String]> = role.agent_ops.clone().into();
        self.call.extend(compile(&role.call).into_iter().map(|p| (p, ops.clone())));
        self.publish.add(&role.publish, id);
        self.subscribe.add(&role.subscribe, id);
        self.capture.extend(compile(&role.capture));
        self.state_read.extend(compile(&role.state_read));
        self.state_write.extend(compile(&role.state_write));
    }

    pub fn may_provide(&self, service: &[u8]) -> bool {
        any(&self.provide, service)
    }

    /// May call `service`; for an agent's service, with `command` (the first body frame).
    pub fn may_call(&self, service: &[u8], command: Option<&[u8]>) -> bool {
        let agent = service.starts_with(AGENT_SERVICE_PREFIX.as_bytes());
        self.call
            .iter()
            .filter(|(pattern, _)| pattern.matches(service))
            .any(|(_, ops)| !agent || command.is_some_and(|c| ops.iter().any(|op| op.as_bytes() == c)))
    }

    pub fn may_publish(&self, bus: &str, topic: &[u8]) -> bool {
        self.publish.covers(bus, topic)
    }

    pub fn may_subscribe(&self, bus: &str, prefix: &[u8]) -> bool {
        self.subscribe.covers(bus, prefix)
    }

    pub fn may_capture(&self, bus: &str) -> bool {
        any(&self.capture, bus.as_bytes())
    }

    pub fn may_read_state(&self, scope: &str) -> bool {
        any(&self.state_read, scope.as_bytes()) || self.may_write_state(scope)
    }

    pub fn may_write_state(&self, scope: &str) -> bool {
        any(&self.state_write, scope.as_bytes())
    }

    /// Whether connecting to a socket of this kind could do it any good: the
    /// ZAP handler refuses connections that could do nothing.
    pub fn may_connect(&self, socket: SocketRole<'_>) -> bool {
        match socket {
            SocketRole::Broker => !self.call.is_empty() || !self.provide.is_empty(),
            SocketRole::BusFrontend(bus) => self.publish.any_on(bus),
            SocketRole::BusBackend(bus) => self.subscribe.any_on(bus),
            SocketRole::Capture(bus) => self.may_capture(bus),
        }
    }
}

/// Which hub socket a peer connects to, as named in its ZAP domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketRole<'a> {
    Broker,
    BusFrontend(&'a str),
    BusBackend(&'a str),
    Capture(&'a str),
}

impl SocketRole<'_> {
    /// The ZAP domain a server socket announces.
    pub fn domain(&self) -> String {
        match self {
            SocketRole::Broker => "plantd.broker".into(),
            SocketRole::BusFrontend(bus) => format!("plantd.bus.frontend.{bus}"),
            SocketRole::BusBackend(bus) => format!("plantd.bus.backend.{bus}"),
            SocketRole::Capture(bus) => format!("plantd.bus.capture.{bus}"),
        }
    }

    pub fn from_domain(domain: &str) -> Option<SocketRole<'_>> {
        if domain == "plantd.broker" {
            return Some(SocketRole::Broker);
        }
        let rest = domain.strip_prefix("plantd.bus.")?;
        let (kind, bus) = rest.split_once('.')?;
        match kind {
            "frontend" => Some(SocketRole::BusFrontend(bus)),
            "backend" => Some(SocketRole::BusBackend(bus)),
            "capture" => Some(SocketRole::Capture(bus)),
            _ => None,
        }
    }
}

/// The identities → roles mapping and the roles, from the config.
pub struct Policy {
    identities: Vec<(Pattern, Vec<String>)>,
    roles: BTreeMap<String, Role>,
    cache: Mutex<HashMap<String, Arc<Grants>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("security.identities.\"{identity}\" names the role '{role}', which is neither built in (agent, viewer, operator) nor under [security.roles]")]
pub struct UnknownRole {
    pub identity: String,
    pub role: String,
}

impl Policy {
    pub fn new(
        identities: &BTreeMap<String, Vec<String>>,
        roles: &BTreeMap<String, Role>,
    ) -> Result<Policy, UnknownRole> {
        let mut all = builtin_roles();
        all.extend(roles.iter().map(|(name, role)| (name.clone(), role.clone())));
        for (identity, names) in identities {
            if let Some(role) = names.iter().find(|r| !all.contains_key(*r)) {
                return Err(UnknownRole { identity: identity.clone(), role: role.clone() });
            }
        }
        let identities =
            identities.iter().map(|(pattern, roles)| (Pattern::new(pattern, ""), roles.clone())).collect();
        Ok(Policy { identities, roles: all, cache: Mutex::default() })
    }

    /// The grants of `identity` (cached; identities are few, bounded by the allow-list).
    pub fn grants(&self, identity: &str) -> Arc<Grants> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(grants) = cache.get(identity) {
            return grants.clone();
        }
        let mut grants = Grants::default();
        for (pattern, roles) in &self.identities {
            if pattern.matches(identity.as_bytes()) {
                for role in roles {
                    grants.add(&self.roles[role], identity);
                }
            }
        }
        let grants = Arc::new(grants);
        cache.insert(identity.to_string(), grants.clone());
        grants
    }

    /// The roles `identity` has, for `hub keys list`.
    pub fn roles_of(&self, identity: &str) -> Vec<String> {
        let mut roles: Vec<String> = self
            .identities
            .iter()
            .filter(|(pattern, _)| pattern.matches(identity.as_bytes()))
            .flat_map(|(_, roles)| roles.iter().cloned())
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let identities = BTreeMap::from([
            ("pump-*".to_string(), vec!["agent".to_string()]),
            ("ops".to_string(), vec!["operator".to_string()]),
            ("grafana".to_string(), vec!["viewer".to_string()]),
            ("recipes".to_string(), vec!["recipes".to_string()]),
        ]);
        let recipes = Role {
            provide: vec!["org.plantd.Recipes".into()],
            publish: BTreeMap::from([("event".into(), vec!["org.plantd.Recipes.".into()])]),
            ..Role::default()
        };
        Policy::new(&identities, &BTreeMap::from([("recipes".to_string(), recipes)])).unwrap()
    }

    #[test]
    fn agents_act_only_as_themselves() {
        let p = policy();
        let pump = p.grants("pump-1");
        assert!(pump.may_provide(b"org.plantd.Agent.pump-1"));
        assert!(!pump.may_provide(b"org.plantd.Agent.pump-2"));
        assert!(!pump.may_provide(b"org.plantd.Ingest"));
        assert!(pump.may_call(b"org.plantd.Ingest", None));
        assert!(!pump.may_call(b"org.plantd.Agent.pump-2", Some(b"write")));
        assert!(pump.may_publish("metric", b"org.plantd.Metric.pump-1.temp"));
        assert!(!pump.may_publish("metric", b"org.plantd.Metric.pump-2.temp"));
        assert!(!pump.may_subscribe("state", b"org.plantd.State."));
        assert!(pump.may_write_state("pump-1") && !pump.may_write_state("pump-2"));
        assert!(pump.may_connect(SocketRole::BusFrontend("metric")));
        assert!(!pump.may_connect(SocketRole::BusBackend("metric")));
    }

    #[test]
    fn agent_commands_need_the_right_role() {
        let p = policy();
        let (viewer, operator) = (p.grants("grafana"), p.grants("ops"));
        for (command, viewer_may) in [("status", true), ("read", true), ("write", false), ("config", false)] {
            let command = Some(command.as_bytes());
            assert_eq!(viewer.may_call(b"org.plantd.Agent.pump-1", command), viewer_may);
            assert!(operator.may_call(b"org.plantd.Agent.pump-1", command));
        }
        assert!(!operator.may_call(b"org.plantd.Agent.pump-1", None), "no command, no call");
        assert!(viewer.may_subscribe("state", b"org.plantd.State.plant"));
        assert!(!viewer.may_capture("metric") && operator.may_capture("metric"));
    }

    #[test]
    fn unknown_identities_get_nothing() {
        let nobody = policy().grants("stranger");
        assert!(!nobody.may_call(b"mmi.service", None));
        assert!(!nobody.may_subscribe("metric", b""));
        for socket in [SocketRole::Broker, SocketRole::BusBackend("metric"), SocketRole::Capture("metric")] {
            assert!(!nobody.may_connect(socket));
        }
    }

    #[test]
    fn custom_roles_and_narrow_subscriptions() {
        let p = policy();
        let recipes = p.grants("recipes");
        assert!(recipes.may_provide(b"org.plantd.Recipes"));
        assert!(recipes.may_publish("event", b"org.plantd.Recipes.changed"));
        assert!(!recipes.may_publish("metric", b"org.plantd.Recipes.changed"));
        let identities = BTreeMap::from([("x".to_string(), vec!["nope".to_string()])]);
        assert!(Policy::new(&identities, &BTreeMap::new()).is_err());
    }

    #[test]
    fn agent_commands_are_granted_per_role() {
        // One role may write to pump-1, another only read every agent: the
        // pair may not write to pump-2.
        let fitter = Role {
            call: vec!["org.plantd.Agent.pump-1".into()],
            agent_ops: vec!["write".into()],
            ..Role::default()
        };
        let roles = BTreeMap::from([("fitter".to_string(), fitter)]);
        let identities =
            BTreeMap::from([("kim".to_string(), vec!["fitter".to_string(), "viewer".to_string()])]);
        let kim = Policy::new(&identities, &roles).unwrap().grants("kim");
        assert!(kim.may_call(b"org.plantd.Agent.pump-1", Some(b"write")));
        assert!(kim.may_call(b"org.plantd.Agent.pump-2", Some(b"read")));
        assert!(!kim.may_call(b"org.plantd.Agent.pump-2", Some(b"write")));
    }

    #[test]
    fn an_identity_cannot_widen_an_exact_grant() {
        // Identities with '*' are refused when the allow-list loads; even so,
        // "{id}" never turns an exact pattern into a prefix.
        let p = policy();
        let odd = p.grants("pump-*");
        assert!(odd.may_provide(b"org.plantd.Agent.pump-*"));
        assert!(!odd.may_provide(b"org.plantd.Agent.pump-1"));
    }

    #[test]
    fn domains_round_trip() {
        for role in [
            SocketRole::Broker,
            SocketRole::BusFrontend("metric"),
            SocketRole::BusBackend("a.b"),
            SocketRole::Capture("c"),
        ] {
            assert_eq!(SocketRole::from_domain(&role.domain()), Some(role));
        }
        assert_eq!(SocketRole::from_domain("other"), None);
    }
}
