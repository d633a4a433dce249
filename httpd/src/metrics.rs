//! Metrics: one registry per process. Each component collects its families
//! (name, help, type, labelled values) from its own state at scrape time;
//! the registry renders them as Prometheus text for `/metrics`, through
//! `prometheus-client`'s encoder (which also escapes label values), and as
//! JSON (the hub's `mmi.metrics`). Nothing is written out by hand, and
//! nothing goes through the other format on the way.
//!
//! Names carry the `plantd_` prefix; a counter's name has no `_total` here
//! (the text encoder adds it; the JSON key has it too).

use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use serde_json::{json, Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Label names and values.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<(Labels, u64)>,
}

impl Family {
    /// The name as exposed: counters end in `_total`.
    pub fn exposed_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            Kind::Gauge => self.name.clone(),
        }
    }
}

/// What collectors add to. Samples of one name go to one family.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Families(pub Vec<Family>);

impl Families {
    pub fn counter(&mut self, name: &str, help: &'static str, labels: Labels, value: u64) {
        self.add(name, help, Kind::Counter, labels, value);
    }

    pub fn gauge(&mut self, name: &str, help: &'static str, labels: Labels, value: u64) {
        self.add(name, help, Kind::Gauge, labels, value);
    }

    fn add(&mut self, name: &str, help: &'static str, kind: Kind, labels: Labels, value: u64) {
        let name = format!("plantd_{name}");
        match self.0.iter_mut().find(|f| f.name == name) {
            Some(family) => family.samples.push((labels, value)),
            None => self.0.push(Family { name, help, kind, samples: vec![(labels, value)] }),
        }
    }

    pub fn extend(&mut self, other: &Families) {
        for family in &other.0 {
            for (labels, value) in &family.samples {
                let name = family.name.trim_start_matches("plantd_");
                self.add(name, family.help, family.kind, labels.clone(), *value);
            }
        }
    }

    /// `mmi.metrics`: `{"name": value}`, or for a labelled family
    /// `{"name": [{"label": "...", "value": n}, ...]}`.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        for family in &self.0 {
            let labelled = family.samples.iter().any(|(labels, _)| !labels.is_empty());
            let value = if labelled {
                let samples = family.samples.iter().map(|(labels, value)| {
                    let mut entry: Map<String, Value> =
                        labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                    entry.insert("value".into(), json!(value));
                    Value::Object(entry)
                });
                Value::Array(samples.collect())
            } else {
                json!(family.samples.first().map_or(0, |(_, v)| *v))
            };
            out.insert(family.exposed_name(), value);
        }
        Value::Object(out)
    }
}

/// A component's metrics, collected at scrape time.
pub trait Collect: Send + Sync {
    fn collect(&self, out: &mut Families);
}

impl<F: Fn(&mut Families) + Send + Sync> Collect for F {
    fn collect(&self, out: &mut Families) {
        self(out)
    }
}

/// Every component's collector, by part name.
#[derive(Default)]
pub struct Registry {
    parts: RwLock<Vec<(&'static str, Arc<dyn Collect>)>>,
}

impl Registry {
    pub fn register(&self, part: &'static str, collector: Arc<dyn Collect>) {
        self.parts.write().unwrap_or_else(|e| e.into_inner()).push((part, collector));
    }

    pub fn collect(&self) -> Families {
        let mut out = Families::default();
        for (_, part) in self.parts.read().unwrap_or_else(|e| e.into_inner()).iter() {
            part.collect(&mut out);
        }
        out
    }

    /// [`Registry::collect`] with `part`'s collector replaced by `fresh` (the
    /// broker answers `mmi.metrics` with its live counters, not its snapshot).
    pub fn collect_with(&self, part: &'static str, fresh: &Families) -> Families {
        let mut out = Families::default();
        for (name, collector) in self.parts.read().unwrap_or_else(|e| e.into_inner()).iter() {
            if *name == part {
                out.extend(fresh);
            } else {
                collector.collect(&mut out);
            }
        }
        out
    }

    /// Prometheus text format 0.0.4, for `/metrics`.
    pub fn prometheus(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Snapshot(self.collect())));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }
}

/// Families taken at one scrape, for prometheus-client's encoder.
#[derive(Debug)]
struct Snapshot(Families);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.0 .0 {
            let kind = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(&family.name, family.help, None, kind)?;
            for (labels, value) in &family.samples {
                let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let sample = metric.encode_family(&labels)?;
                Value64(family.kind, *value).encode(sample)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Value64(Kind, u64);

impl EncodeMetric for Value64 {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.0 {
            Kind::Counter => {
                encoder.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&self.1, None)
            }
            Kind::Gauge => encoder.encode_gauge(&self.1),
        }
    }

    fn metric_type(&self) -> MetricType {
        match self.0 {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_registry_two_renderings_and_escaped_labels() {
        let registry = Registry::default();
        registry.register(
            "demo",
            Arc::new(|out: &mut Families| {
                out.counter("demo_requests", "Requests seen.", vec![], 3);
                out.gauge("demo_queue", "Queued now.", vec![("service", "a\"b\\c\nd".into())], 2);
                out.gauge("demo_queue", "Queued now.", vec![("service", "plain".into())], 1);
            }),
        );
        let text = registry.prometheus();
        assert!(
            text.contains("# TYPE plantd_demo_requests_total counter\nplantd_demo_requests_total 3\n"),
            "{text}"
        );
        assert!(text.contains(r#"plantd_demo_queue{service="a\"b\\c\nd"} 2"#), "{text}");
        let json = registry.collect().to_json();
        assert_eq!(json["plantd_demo_requests_total"], 3);
        assert_eq!(json["plantd_demo_queue"][1], json!({"service": "plain", "value": 1}));
        let mut fresh = Families::default();
        fresh.counter("demo_requests", "Requests seen.", vec![], 9);
        assert_eq!(registry.collect_with("demo", &fresh).to_json()["plantd_demo_requests_total"], 9);
    }
}
