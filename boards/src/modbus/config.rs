//! What the agent's config says about Modbus: one `[[modbus]]` table per
//! link, and the `driver = { kind = "modbus", ... }` of each channel that
//! reads a point through one. Validation names the field and the fix.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One Modbus link: a TCP connection to a device or gateway, or a serial
/// port with every unit of its RS-485 bus behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// What channels refer to (`link = "plc1"`).
    pub name: String,
    pub transport: Transport,
    /// TCP: `host:port` (port 502 if left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// RTU: the serial port (`/dev/ttyUSB0`, `/dev/ttyAMA0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default)]
    pub parity: Parity,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// RTU: put the port in the kernel's RS-485 mode (the driver toggles RTS
    /// around each frame). Ports that have no such mode (USB adapters that
    /// switch direction themselves, a pty) are used as they are.
    #[serde(default = "yes")]
    pub rs485: bool,
    /// How long a unit may take to answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// RTU: a pause between one answer and the next request, for slow devices.
    #[serde(default)]
    pub pause_ms: u64,
    /// Most registers one read may ask for (the protocol allows 125).
    #[serde(default = "default_max_registers")]
    pub max_registers: u16,
    /// Unused registers a merged read may read over to save a round trip.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Reads that arrive within this window are planned together, so
    /// channels sampled at the same moment cost one request per block.
    #[serde(default = "default_gather_ms")]
    pub gather_ms: u64,
    /// Timeouts in a row after which a unit is skipped ...
    #[serde(default = "default_degrade_after")]
    pub degrade_after: u32,
    /// ... and probed again this often, so one dead unit does not make its
    /// neighbours on the bus wait.
    #[serde(default = "default_probe_ms")]
    pub probe_ms: u64,
    /// TCP reconnects: exponential backoff with jitter between these.
    #[serde(default = "default_backoff_min_ms")]
    pub backoff_min_ms: u64,
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Rtu,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

fn default_baud() -> u32 {
    19200
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn yes() -> bool {
    true
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_max_registers() -> u16 {
    125
}
fn default_max_gap() -> u16 {
    10
}
fn default_gather_ms() -> u64 {
    5
}
fn default_degrade_after() -> u32 {
    3
}
fn default_probe_ms() -> u64 {
    10_000
}
fn default_backoff_min_ms() -> u64 {
    100
}
fn default_backoff_max_ms() -> u64 {
    30_000
}

impl LinkConfig {
    /// A link with every default: what `agent modbus read --tcp`/`--rtu` uses.
    pub fn new(name: &str, transport: Transport) -> Self {
        LinkConfig {
            name: name.into(),
            transport,
            address: None,
            device: None,
            baud: default_baud(),
            parity: Parity::None,
            data_bits: default_data_bits(),
            stop_bits: default_stop_bits(),
            rs485: true,
            timeout_ms: default_timeout_ms(),
            pause_ms: 0,
            max_registers: default_max_registers(),
            max_gap: default_max_gap(),
            gather_ms: default_gather_ms(),
            degrade_after: default_degrade_after(),
            probe_ms: default_probe_ms(),
            backoff_min_ms: default_backoff_min_ms(),
            backoff_max_ms: default_backoff_max_ms(),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The TCP address with the default port added when left out.
    pub fn tcp_address(&self) -> String {
        let address = self.address.clone().unwrap_or_default();
        if address.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
            address
        } else {
            format!("{address}:502")
        }
    }

    /// Bits on the wire per character: start, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits) + u32::from(self.parity != Parity::None) + u32::from(self.stop_bits)
    }

    /// Checks what serde cannot: `(field, problem)` of the first problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self.transport {
            Transport::Tcp if self.address.as_deref().is_none_or(str::is_empty) => {
                return Err(("address", "a tcp link needs `address = \"host:502\"`".into()))
            }
            Transport::Rtu if self.device.as_deref().is_none_or(str::is_empty) => {
                return Err((
                    "device",
                    "an rtu link needs `device = \"/dev/ttyUSB0\"` (its serial port)".into(),
                ))
            }
            _ => {}
        }
        if !(300..=4_000_000).contains(&self.baud) {
            return Err(("baud", format!("{} is not a serial speed (300 to 4000000)", self.baud)));
        }
        if !(7..=8).contains(&self.data_bits) {
            return Err(("data_bits", "must be 7 or 8".into()));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(("stop_bits", "must be 1 or 2".into()));
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            return Err(("timeout_ms", "must be from 1 to 60000".into()));
        }
        if !(1..=125).contains(&self.max_registers) {
            return Err(("max_registers", "must be from 1 to 125 (the protocol's limit per read)".into()));
        }
        if self.gather_ms > 1000 {
            return Err(("gather_ms", "must be at most 1000".into()));
        }
        if self.degrade_after == 0 {
            return Err(("degrade_after", "must be at least 1".into()));
        }
        if self.probe_ms < self.timeout_ms {
            return Err(("probe_ms", "must be at least timeout_ms".into()));
        }
        if self.backoff_min_ms == 0 || self.backoff_max_ms < self.backoff_min_ms {
            return Err((
                "backoff_max_ms",
                "must be at least backoff_min_ms, which must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The four tables of a Modbus device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Coil,
    Discrete,
    Holding,
    Input,
}

impl Table {
    /// Coils and discrete inputs hold bits; the others 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    pub fn writable(self) -> bool {
        matches!(self, Table::Coil | Table::Holding)
    }

    pub fn name(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete",
            Table::Holding => "holding",
            Table::Input => "input",
        }
    }

    pub fn parse(s: &str) -> Option<Table> {
        match s {
            "coil" | "coils" => Some(Table::Coil),
            "discrete" | "discretes" => Some(Table::Discrete),
            "holding" | "holdings" => Some(Table::Holding),
            "input" | "inputs" => Some(Table::Input),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
}

impl DataType {
    /// Registers a value of this type spans.
    pub fn registers(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    pub fn parse(s: &str) -> Option<DataType> {
        serde::Deserialize::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s))
            .ok()
    }

    pub const ALL: [DataType; 9] = [
        DataType::Bool,
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::F32,
        DataType::U64,
        DataType::I64,
        DataType::F64,
    ];
}

/// How a multi-register value's bytes lie in its registers. The letters name
/// the bytes of a 32-bit value, most significant `A`; for 64-bit values the
/// same two choices generalise: whether the registers run least significant
/// first (`CDAB`, `DCBA`) and whether the two bytes inside each register are
/// swapped (`BADC`, `DCBA`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Order {
    /// Big-endian words and bytes: the protocol's own order.
    #[default]
    ABCD,
    /// Word swap: least significant register first (common in PLCs).
    CDAB,
    /// Byte swap inside each register.
    BADC,
    /// Both: fully little-endian.
    DCBA,
}

impl Order {
    pub const ALL: [Order; 4] = [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA];

    pub fn words_swapped(self) -> bool {
        matches!(self, Order::CDAB | Order::DCBA)
    }

    pub fn bytes_swapped(self) -> bool {
        matches!(self, Order::BADC | Order::DCBA)
    }
}

fn default_type() -> DataType {
    DataType::U16
}
fn one() -> f64 {
    1.0
}
fn unit_one() -> u8 {
    1
}

/// One point read through a link: `driver = { kind = "modbus", link =
/// "plc1", unit = 1, table = "holding", address = 100, type = "f32" }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointSpec {
    pub link: String,
    /// The unit (slave) id; 255 or 1 for most TCP devices.
    #[serde(default = "unit_one")]
    pub unit: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<Table>,
    /// The 0-based protocol address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<u16>,
    /// Or the 1-based reference manuals print: `40101` is holding address 100.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default = "default_type", rename = "type")]
    pub data_type: DataType,
    #[serde(default)]
    pub order: Order,
    /// Takes one bit (0 = least significant) of a register as a bool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bit: Option<u8>,
    /// Engineering value = raw × scale + offset.
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
}

/// Where a point lies, once `ref` or `table`/`address` are resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub table: Table,
    pub address: u16,
}

impl PointSpec {
    /// The table and 0-based address, from `table` and `address` or from `ref`.
    pub fn point(&self) -> Result<Point, String> {
        match (&self.reference, self.table, self.address) {
            (Some(r), table, None) => {
                let point = parse_reference(r)?;
                match table {
                    Some(t) if t != point.table => Err(format!(
                        "modbus: ref {r:?} is in the {} table, but table = {:?} says {}",
                        point.table.name(),
                        t.name(),
                        t.name()
                    )),
                    _ => Ok(point),
                }
            }
            (Some(_), _, Some(_)) => {
                Err("modbus: give `address` (0-based) or `ref` (1-based), not both".into())
            }
            (None, Some(table), Some(address)) => Ok(Point { table, address }),
            (None, None, _) => Err("modbus: `table` is missing (coil, discrete, holding or input)".into()),
            (None, Some(_), None) => {
                Err("modbus: `address` (0-based) or `ref` (e.g. \"40101\") is missing".into())
            }
        }
    }

    /// Registers (or bits) the point spans.
    pub fn width(&self, table: Table) -> u16 {
        if table.is_bits() || self.bit.is_some() {
            1
        } else {
            self.data_type.registers()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let Point { table, address } = self.point()?;
        if self.unit == 0 {
            return Err("modbus: unit 0 is the broadcast address, which never answers a read".into());
        }
        if table.is_bits() && self.data_type != DataType::Bool {
            return Err(format!("modbus: a {} holds one bit: use type = \"bool\"", table.name()));
        }
        if !table.is_bits() && self.data_type == DataType::Bool && self.bit.is_none() {
            return Err("modbus: type = \"bool\" on a register needs `bit` (0-15)".into());
        }
        if let Some(bit) = self.bit {
            if bit > 15 || table.is_bits() {
                return Err("modbus: `bit` is 0-15, of a holding or input register".into());
            }
        }
        if u32::from(address) + u32::from(self.width(table)) > 65536 {
            return Err(format!(
                "modbus: address {address} + {} registers runs past 65535",
                self.width(table)
            ));
        }
        if !self.scale.is_finite() || self.scale == 0.0 || !self.offset.is_finite() {
            return Err("modbus: `scale` must be finite and not 0, `offset` finite".into());
        }
        Ok(())
    }

    /// What `ref` became, for the log: `ref "40101" is holding address 100`.
    pub fn describe_reference(&self) -> Option<String> {
        let r = self.reference.as_ref()?;
        let p = self.point().ok()?;
        Some(format!("ref {r:?} is {} address {} (0-based)", p.table.name(), p.address))
    }
}

/// `40101` (5 digits) or `400101` (6 digits): the leading digit is the table
/// (0 coil, 1 discrete, 3 input, 4 holding), the rest the 1-based address.
pub fn parse_reference(r: &str) -> Result<Point, String> {
    let bad = || {
        format!(
            "modbus: ref {r:?} is not a Modbus reference: 5 or 6 digits, the first the table \
             (0 coil, 1 discrete input, 3 input register, 4 holding register), the rest the 1-based address"
        )
    };
    if !(5..=6).contains(&r.len()) || !r.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let table = match r.as_bytes()[0] {
        b'0' => Table::Coil,
        b'1' => Table::Discrete,
        b'3' => Table::Input,
        b'4' => Table::Holding,
        _ => return Err(bad()),
    };
    let one_based: u32 = r[1..].parse().map_err(|_| bad())?;
    if one_based == 0 || one_based > 65536 {
        return Err(bad());
    }
    Ok(Point { table, address: (one_based - 1) as u16 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_become_zero_based_addresses() {
        assert_eq!(parse_reference("40101").unwrap(), Point { table: Table::Holding, address: 100 });
        assert_eq!(parse_reference("400101").unwrap(), Point { table: Table::Holding, address: 100 });
        assert_eq!(parse_reference("00001").unwrap(), Point { table: Table::Coil, address: 0 });
        assert_eq!(parse_reference("30001").unwrap(), Point { table: Table::Input, address: 0 });
        assert_eq!(parse_reference("10010").unwrap(), Point { table: Table::Discrete, address: 9 });
        assert_eq!(parse_reference("465536").unwrap(), Point { table: Table::Holding, address: 65535 });
        for bad in ["40000", "4010", "20001", "4x101", "465537", ""] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn points_validate_against_their_table() {
        let spec = |extra: &str| -> PointSpec { toml::from_str(&format!("link = \"l\"\n{extra}")).unwrap() };
        assert!(spec("table = \"holding\"\naddress = 1\ntype = \"f32\"").validate().is_ok());
        assert!(spec("ref = \"40101\"\ntype = \"i32\"\norder = \"CDAB\"").validate().is_ok());
        let err = spec("table = \"coil\"\naddress = 1\ntype = \"u16\"").validate().unwrap_err();
        assert!(err.contains("bool"), "{err}");
        let err = spec("table = \"holding\"\naddress = 65535\ntype = \"f32\"").validate().unwrap_err();
        assert!(err.contains("65535"), "{err}");
        let err = spec("ref = \"30001\"\ntable = \"holding\"").validate().unwrap_err();
        assert!(err.contains("input table"), "{err}");
        assert!(spec("table = \"holding\"\naddress = 1\ntype = \"bool\"").validate().is_err());
        assert!(spec("table = \"holding\"\naddress = 1\ntype = \"bool\"\nbit = 3").validate().is_ok());
        assert!(spec("table = \"holding\"\naddress = 1\nunit = 0").validate().is_err());
        assert!(toml::from_str::<PointSpec>("link = \"l\"\ntable = \"holding\"\norder = \"ACBD\"").is_err());
    }

    #[test]
    fn links_need_their_transport_s_address() {
        let mut link = LinkConfig::new("plc1", Transport::Tcp);
        assert_eq!(link.validate().unwrap_err().0, "address");
        link.address = Some("10.0.0.20".into());
        assert_eq!(link.tcp_address(), "10.0.0.20:502");
        assert!(link.validate().is_ok());
        let mut rtu = LinkConfig::new("bus", Transport::Rtu);
        assert_eq!(rtu.validate().unwrap_err().0, "device");
        rtu.device = Some("/dev/ttyUSB0".into());
        rtu.parity = Parity::Even;
        assert_eq!(rtu.bits_per_char(), 11);
        rtu.max_registers = 126;
        assert_eq!(rtu.validate().unwrap_err().0, "max_registers");
        assert_eq!(DataType::parse("f64"), Some(DataType::F64));
        assert_eq!(DataType::parse("float"), None);
    }
}
