//! The transform stage's rules, by config: filter, convert units, rename.
//! Messages are JSON objects (a sample as the bus carries it: `agent`,
//! `channel`, `value`, `unit`, ...). Applied in that order, so filters and
//! conversions name the fields as they arrive, whatever the renames.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `[pipeline.transform]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// A message passes only if it matches every one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<Match>,
    /// A message that matches any of these is dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<Match>,
    /// Unit conversions of `value` (the first that applies wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub convert: Vec<Convert>,
    /// Top-level fields renamed: old name → new name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
}

/// `field` is one of `any` (as text; `"t*"` matches by prefix).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub field: String,
    pub any: Vec<String>,
}

/// Converts `value` from unit `from` to `to` in messages whose `unit` is
/// `from` (and whose channel matches `channel`, when set). Known pairs need
/// no factors; any other pair gives `scale` (and `offset`): to = from × scale + offset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Convert {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<f64>,
}

/// Conversions known by unit names: (from, to, scale, offset).
const KNOWN: &[(&str, &str, f64, f64)] = &[
    ("degC", "degF", 1.8, 32.0),
    ("degF", "degC", 1.0 / 1.8, -32.0 / 1.8),
    ("degC", "K", 1.0, 273.15),
    ("K", "degC", 1.0, -273.15),
    ("bar", "kPa", 100.0, 0.0),
    ("kPa", "bar", 0.01, 0.0),
    ("bar", "psi", 14.503_773_8, 0.0),
    ("psi", "bar", 0.068_947_572_9, 0.0),
    ("kPa", "psi", 0.145_037_738, 0.0),
    ("psi", "kPa", 6.894_757_29, 0.0),
    ("m", "ft", 3.280_839_9, 0.0),
    ("ft", "m", 0.3048, 0.0),
    ("L/min", "m3/h", 0.06, 0.0),
    ("m3/h", "L/min", 1.0 / 0.06, 0.0),
];

impl Convert {
    /// (scale, offset), from the config or the known pairs.
    fn factors(&self) -> Option<(f64, f64)> {
        match self.scale {
            Some(scale) => Some((scale, self.offset.unwrap_or(0.0))),
            None => KNOWN.iter().find(|k| k.0 == self.from && k.1 == self.to).map(|k| (k.2, k.3)),
        }
    }
}

/// Why a message could not be transformed (the handler error: retried, then dead-lettered).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TransformError {
    #[error("not a JSON object: {0}")]
    NotAnObject(String),
    #[error("cannot convert {from} to {to}: value {value} is not a number")]
    NotANumber { from: String, to: String, value: String },
}

fn matches(pattern: &str, text: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => text.starts_with(prefix),
        None => pattern == text,
    }
}

fn text_of(v: &Value) -> std::borrow::Cow<'_, str> {
    match v {
        Value::String(s) => s.as_str().into(),
        other => other.to_string().into(),
    }
}

impl Match {
    fn hits(&self, object: &serde_json::Map<String, Value>) -> bool {
        object.get(&self.field).is_some_and(|v| self.any.iter().any(|p| matches(p, &text_of(v))))
    }
}

impl Rules {
    /// Checks what serde cannot: (field, problem).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for m in self.keep.iter().chain(&self.drop) {
            if m.field.is_empty() || m.any.is_empty() {
                return Err((
                    "pipeline.transform.keep/drop",
                    "each needs a field and at least one value".into(),
                ));
            }
        }
        for c in &self.convert {
            if c.factors().is_none() {
                let known: Vec<String> = KNOWN.iter().map(|k| format!("{}→{}", k.0, k.1)).collect();
                return Err((
                    "pipeline.transform.convert",
                    format!(
                        "{} to {} is not a known conversion ({}): give scale (and offset)",
                        c.from,
                        c.to,
                        known.join(", ")
                    ),
                ));
            }
            if c.scale.is_some_and(|s| !s.is_finite()) || c.offset.is_some_and(|o| !o.is_finite()) {
                return Err(("pipeline.transform.convert", "scale and offset must be finite numbers".into()));
            }
        }
        if self.rename.iter().any(|(from, to)| from.is_empty() || to.is_empty()) {
            return Err(("pipeline.transform.rename", "field names must not be empty".into()));
        }
        Ok(())
    }

    /// Whether the rules change nothing (the stage is then left out).
    pub fn is_empty(&self) -> bool {
        self == &Rules::default()
    }

    /// Applies the rules to one JSON message: `Ok(None)` when filtered out.
    pub fn apply(&self, message: &[u8]) -> Result<Option<Vec<u8>>, TransformError> {
        let mut value: Value =
            serde_json::from_slice(message).map_err(|e| TransformError::NotAnObject(e.to_string()))?;
        let Value::Object(object) = &mut value else {
            return Err(TransformError::NotAnObject(format!("a {}", kind_of(&value))));
        };
        if !self.keep.iter().all(|m| m.hits(object)) || self.drop.iter().any(|m| m.hits(object)) {
            return Ok(None);
        }
        let channel = object.get("channel").map(|c| text_of(c).into_owned()).unwrap_or_default();
        let unit = object.get("unit").map(|u| text_of(u).into_owned()).unwrap_or_default();
        let applies =
            |c: &&Convert| c.from == unit && c.channel.as_ref().is_none_or(|p| matches(p, &channel));
        if let Some(c) = self.convert.iter().find(applies) {
            let (scale, offset) = c.factors().unwrap_or((1.0, 0.0));
            let old = object.get("value").cloned().unwrap_or(Value::Null);
            let Some(number) = old.as_f64() else {
                return Err(TransformError::NotANumber {
                    from: c.from.clone(),
                    to: c.to.clone(),
                    value: old.to_string(),
                });
            };
            let converted =
                serde_json::Number::from_f64(number * scale + offset).map_or(Value::Null, Value::Number);
            object.insert("value".into(), converted);
            object.insert("unit".into(), Value::String(c.to.clone()));
        }
        for (from, to) in &self.rename {
            if let Some(v) = object.remove(from) {
                object.insert(to.clone(), v);
            }
        }
        Ok(Some(serde_json::to_vec(&value).expect("a JSON value serialises")))
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(toml_like: Value) -> Rules {
        serde_json::from_value(toml_like).unwrap()
    }

    fn apply(r: &Rules, v: Value) -> Result<Option<Value>, TransformError> {
        r.apply(v.to_string().as_bytes()).map(|o| o.map(|b| serde_json::from_slice(&b).unwrap()))
    }

    #[test]
    fn filters_converts_and_renames() {
        let r = rules(json!({
            "keep": [{"field": "channel", "any": ["temp*", "pressure"]}],
            "drop": [{"field": "quality", "any": ["bad"]}],
            "convert": [{"from": "degC", "to": "degF"}, {"channel": "pressure", "from": "kPa", "to": "x", "scale": 2.0, "offset": 1.0}],
            "rename": {"value": "v"}
        }));
        r.validate().unwrap();
        let s = |ch: &str, v: Value, unit: &str, q: &str| json!({"channel": ch, "value": v, "unit": unit, "quality": q});
        assert_eq!(
            apply(&r, s("temp1", json!(100), "degC", "good")).unwrap(),
            Some(json!({"channel": "temp1", "v": 212.0, "unit": "degF", "quality": "good"}))
        );
        assert_eq!(apply(&r, s("pressure", json!(3), "kPa", "good")).unwrap().unwrap()["v"], json!(7.0));
        assert_eq!(apply(&r, s("flow", json!(3), "kPa", "good")).unwrap(), None, "not kept");
        assert_eq!(apply(&r, s("temp1", json!(3), "degC", "bad")).unwrap(), None, "dropped");
        assert_eq!(
            apply(&r, s("temp2", json!(3), "K", "good")).unwrap().unwrap()["unit"],
            "K",
            "no conversion applies"
        );
    }

    #[test]
    fn what_cannot_be_transformed_is_an_error() {
        let r = rules(json!({"convert": [{"from": "degC", "to": "K"}]}));
        assert!(matches!(
            apply(&r, json!({"value": "hot", "unit": "degC"})),
            Err(TransformError::NotANumber { .. })
        ));
        assert!(matches!(r.apply(b"not json"), Err(TransformError::NotAnObject(_))));
        assert!(matches!(r.apply(b"[1]"), Err(TransformError::NotAnObject(_))));
    }

    proptest::proptest! {
        /// Whatever arrives (network or file), the transform answers: a result or an error.
        #[test]
        fn any_input_is_transformed_or_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), n in proptest::prelude::any::<f64>()) {
            let r = rules(json!({"keep": [{"field": "channel", "any": ["t*"]}], "convert": [{"from": "degC", "to": "degF"}], "rename": {"value": "v"}}));
            let _ = r.apply(&bytes);
            let sample = json!({"channel": "t", "unit": "degC", "value": n}).to_string();
            let _ = r.apply(sample.as_bytes());
        }
    }

    #[test]
    fn unknown_conversions_need_factors() {
        let r = rules(json!({"convert": [{"from": "furlong", "to": "m"}]}));
        assert_eq!(r.validate().unwrap_err().0, "pipeline.transform.convert");
        assert!(Rules::default().is_empty());
    }
}
