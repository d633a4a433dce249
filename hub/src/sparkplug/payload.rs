//! The Sparkplug B payload (Eclipse Tahu's `sparkplug_b.proto`), written
//! out as prost derives: no protoc, no copied `.proto` file. Only what an
//! edge node sends and reads is here: metrics with scalar values and
//! property sets; datasets, templates and extensions are left out (a
//! message that holds one still decodes; the unknown fields are skipped).

use prost::Message;

/// `Payload`: one message on a Sparkplug topic.
#[derive(Clone, PartialEq, Message)]
pub struct Payload {
    /// Milliseconds since the Unix epoch.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0-255, per edge node session; absent in NDEATH.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric`.
#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// A [`DataType`] number.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

/// `Payload.Metric.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    #[prost(uint32, tag = "10")]
    Int(u32),
    #[prost(uint64, tag = "11")]
    Long(u64),
    #[prost(float, tag = "12")]
    Float(f32),
    #[prost(double, tag = "13")]
    Double(f64),
    #[prost(bool, tag = "14")]
    Boolean(bool),
    #[prost(string, tag = "15")]
    String(String),
    #[prost(bytes = "vec", tag = "16")]
    Bytes(Vec<u8>),
}

/// `Payload.PropertySet`: keys and values, pairwise.
#[derive(Clone, PartialEq, Message)]
pub struct PropertySet {
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

/// `Payload.PropertyValue` (nested property sets left out).
#[derive(Clone, PartialEq, Message)]
pub struct PropertyValue {
    #[prost(uint32, optional, tag = "1")]
    pub r#type: Option<u32>,
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    #[prost(oneof = "PropertyKind", tags = "3, 4, 5, 6, 7, 8")]
    pub value: Option<PropertyKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropertyKind {
    #[prost(uint32, tag = "3")]
    Int(u32),
    #[prost(uint64, tag = "4")]
    Long(u64),
    #[prost(float, tag = "5")]
    Float(f32),
    #[prost(double, tag = "6")]
    Double(f64),
    #[prost(bool, tag = "7")]
    Boolean(bool),
    #[prost(string, tag = "8")]
    String(String),
}

/// Sparkplug B's data types (the numbers on the wire).
#[allow(non_upper_case_globals)]
pub mod datatype {
    pub const Int8: u32 = 1;
    pub const Int16: u32 = 2;
    pub const Int32: u32 = 3;
    pub const Int64: u32 = 4;
    pub const UInt8: u32 = 5;
    pub const UInt16: u32 = 6;
    pub const UInt32: u32 = 7;
    pub const UInt64: u32 = 8;
    pub const Float: u32 = 9;
    pub const Double: u32 = 10;
    pub const Boolean: u32 = 11;
    pub const String: u32 = 12;
    pub const DateTime: u32 = 13;
    pub const Text: u32 = 14;
}

impl Metric {
    /// A metric with a name (BIRTH, and DATA without aliases).
    pub fn named(name: &str, datatype: u32, value: Option<MetricValue>) -> Metric {
        Metric {
            name: Some(name.to_string()),
            alias: None,
            timestamp: None,
            datatype: Some(datatype),
            is_historical: None,
            is_transient: None,
            is_null: value.is_none().then_some(true),
            properties: None,
            value,
        }
    }
}

impl PropertySet {
    /// String properties (a metric's unit: `engUnit`).
    pub fn strings(pairs: &[(&str, &str)]) -> PropertySet {
        PropertySet {
            keys: pairs.iter().map(|(k, _)| k.to_string()).collect(),
            values: pairs
                .iter()
                .map(|(_, v)| PropertyValue {
                    r#type: Some(datatype::String),
                    is_null: None,
                    value: Some(PropertyKind::String(v.to_string())),
                })
                .collect(),
        }
    }
}

impl Payload {
    pub fn encode_vec(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    pub fn decode_slice(bytes: &[u8]) -> Result<Payload, prost::DecodeError> {
        Payload::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_birth_round_trips() {
        let mut m = Metric::named("tank", datatype::Double, Some(MetricValue::Double(81.5)));
        m.alias = Some(3);
        m.properties = Some(PropertySet::strings(&[("engUnit", "degC")]));
        let p = Payload {
            timestamp: Some(1_700_000_000_000),
            metrics: vec![m, Metric::named("bdSeq", datatype::Int64, Some(MetricValue::Long(7)))],
            seq: Some(0),
            uuid: None,
            body: None,
        };
        assert_eq!(Payload::decode_slice(&p.encode_vec()).unwrap(), p);
    }

    #[test]
    fn field_numbers_are_the_spec_s() {
        // seq = 3 (varint 5): 0x18 0x05; a metric's double value is field 13 (fixed64): 0x69.
        let p = Payload { seq: Some(5), ..Payload::default() };
        assert_eq!(p.encode_vec(), [0x18, 0x05]);
        let m = Metric { value: Some(MetricValue::Double(1.0)), ..Metric::default() };
        assert_eq!(m.encode_to_vec()[0], 0x69);
        let m = Metric { alias: Some(1), ..Metric::default() };
        assert_eq!(m.encode_to_vec(), [0x10, 0x01]);
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Payload::decode_slice(&bytes);
        }

        #[test]
        fn metrics_round_trip(name in "[a-z_]{1,12}", alias in any::<u64>(), v in any::<f64>(), ts in any::<u64>()) {
            let mut m = Metric::named(&name, datatype::Double, Some(MetricValue::Double(v)));
            m.alias = Some(alias);
            m.timestamp = Some(ts);
            let p = Payload { metrics: vec![m], seq: Some(1), ..Payload::default() };
            let back = Payload::decode_slice(&p.encode_vec()).unwrap();
            prop_assert_eq!(back.metrics[0].alias, Some(alias));
            prop_assert_eq!(back.metrics[0].timestamp, Some(ts));
            match &back.metrics[0].value {
                Some(MetricValue::Double(d)) => prop_assert!(d.to_bits() == v.to_bits()),
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
