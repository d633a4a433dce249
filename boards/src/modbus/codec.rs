//! Registers to values and back: data type, word and byte order, a bit of a
//! register, scale and offset. Pure functions, no I/O.

use proto::sample::Value;

use super::config::{DataType, Order, PointSpec};

/// What a table read returns for one point: its registers or its bit.
#[derive(Clone, Debug, PartialEq)]
pub enum Raw {
    Registers(Vec<u16>),
    Bit(bool),
}

/// The bytes of `registers` most significant first, undoing `order`.
fn bytes(registers: &[u16], order: Order) -> Vec<u8> {
    let mut out = Vec::with_capacity(registers.len() * 2);
    let mut push = |r: &u16| {
        let [hi, lo] = r.to_be_bytes();
        if order.bytes_swapped() {
            out.extend([lo, hi]);
        } else {
            out.extend([hi, lo]);
        }
    };
    if order.words_swapped() {
        registers.iter().rev().for_each(&mut push);
    } else {
        registers.iter().for_each(&mut push);
    }
    out
}

/// The registers holding `bytes` (most significant first) laid out in `order`.
fn registers(bytes: &[u8], order: Order) -> Vec<u16> {
    let mut regs: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            if order.bytes_swapped() {
                u16::from_be_bytes([c[1], c[0]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        })
        .collect();
    if order.words_swapped() {
        regs.reverse();
    }
    regs
}

/// A number read from registers, before scale and offset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    Int(i128),
    Float(f64),
}

/// Decodes `registers` (exactly `data_type.registers()` of them) as `data_type` in `order`.
pub fn decode_number(registers: &[u16], data_type: DataType, order: Order) -> Number {
    let b = bytes(registers, order);
    let n = |k: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[8 - k..].copy_from_slice(&b[..k]);
        a
    };
    match data_type {
        DataType::Bool => Number::Int(i128::from(registers[0] != 0)),
        DataType::U16 => Number::Int(i128::from(u16::from_be_bytes([b[0], b[1]]))),
        DataType::I16 => Number::Int(i128::from(i16::from_be_bytes([b[0], b[1]]))),
        DataType::U32 => Number::Int(i128::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        DataType::I32 => Number::Int(i128::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        DataType::F32 => Number::Float(f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        DataType::U64 => Number::Int(i128::from(u64::from_be_bytes(n(8)))),
        DataType::I64 => Number::Int(i128::from(i64::from_be_bytes(n(8)))),
        DataType::F64 => Number::Float(f64::from_be_bytes(n(8))),
    }
}

/// The engineering value of a point's raw reading, or why it has none.
pub fn decode(spec: &PointSpec, raw: &Raw) -> Result<Value, String> {
    let registers = match raw {
        Raw::Bit(b) => return Ok(Value::Bool(*b)),
        Raw::Registers(r) => r,
    };
    if let Some(bit) = spec.bit {
        return Ok(Value::Bool(registers[0] >> bit & 1 == 1));
    }
    let number = decode_number(registers, spec.data_type, spec.order);
    let identity = spec.scale == 1.0 && spec.offset == 0.0;
    match number {
        Number::Int(i) if identity => match i64::try_from(i) {
            Ok(i) => Ok(Value::Integer(i)),
            Err(_) => Ok(Value::Number(i as f64)),
        },
        Number::Int(i) => Ok(Value::Number(i as f64 * spec.scale + spec.offset)),
        Number::Float(f) if f.is_finite() => Ok(Value::Number(f * spec.scale + spec.offset)),
        Number::Float(f) => Err(format!("the registers hold {f}, not a number a sample can carry")),
    }
}

/// The registers that hold `value` for a holding-register point, or why it
/// cannot be written (out of the type's range, a bit of a register).
pub fn encode_registers(spec: &PointSpec, value: &Value) -> Result<Vec<u16>, String> {
    if spec.bit.is_some() {
        return Err("a single bit of a register is not written: the device owns the other 15".into());
    }
    let number = match value {
        Value::Number(n) => *n,
        Value::Integer(i) => *i as f64,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Text(t) => t.trim().parse().map_err(|_| format!("{t:?} is not a number"))?,
    };
    let raw = (number - spec.offset) / spec.scale;
    if !raw.is_finite() {
        return Err(format!("{number} is not a finite number"));
    }
    let int = |min: f64, max: f64| -> Result<i128, String> {
        let r = raw.round();
        if r < min || r > max {
            Err(format!("{number} is {raw} raw, outside {:?}'s range {min}..={max}", spec.data_type))
        } else {
            Ok(r as i128)
        }
    };
    let be: Vec<u8> = match spec.data_type {
        DataType::Bool => vec![0, u8::from(raw != 0.0)],
        DataType::U16 => (int(0.0, 65535.0)? as u16).to_be_bytes().to_vec(),
        DataType::I16 => (int(-32768.0, 32767.0)? as i16).to_be_bytes().to_vec(),
        DataType::U32 => (int(0.0, 4294967295.0)? as u32).to_be_bytes().to_vec(),
        DataType::I32 => (int(-2147483648.0, 2147483647.0)? as i32).to_be_bytes().to_vec(),
        DataType::F32 => (raw as f32).to_be_bytes().to_vec(),
        DataType::U64 => (int(0.0, u64::MAX as f64)? as u64).to_be_bytes().to_vec(),
        DataType::I64 => (int(i64::MIN as f64, i64::MAX as f64)? as i64).to_be_bytes().to_vec(),
        DataType::F64 => raw.to_be_bytes().to_vec(),
    };
    Ok(registers(&be, spec.order))
}

/// A coil's new state: a bool, 0/1, or on/off words.
pub fn encode_bit(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Integer(0) => Ok(false),
        Value::Integer(1) => Ok(true),
        Value::Text(t) if ["on", "true", "1"].contains(&t.as_str()) => Ok(true),
        Value::Text(t) if ["off", "false", "0"].contains(&t.as_str()) => Ok(false),
        other => Err(format!("a coil takes true or false, not {other:?}")),
    }
}

/// The name of a Modbus exception code, as the protocol specification has it.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

/// Every word order's reading of `registers` as `data_type`, for
/// `agent modbus read`: the engineer picks the order that looks right.
pub fn every_order(registers: &[u16], data_type: DataType) -> Vec<(Order, Number)> {
    let width = usize::from(data_type.registers());
    if registers.len() < width {
        return Vec::new();
    }
    Order::ALL.iter().map(|&o| (o, decode_number(&registers[..width], data_type, o))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(data_type: DataType, order: Order) -> PointSpec {
        let mut s: PointSpec = toml::from_str("link = \"l\"\ntable = \"holding\"\naddress = 0").unwrap();
        s.data_type = data_type;
        s.order = order;
        s
    }

    #[test]
    fn the_four_orders_of_a_32_and_a_64_bit_value() {
        let layouts = [
            (Order::ABCD, [0x1122, 0x3344]),
            (Order::CDAB, [0x3344, 0x1122]),
            (Order::BADC, [0x2211, 0x4433]),
            (Order::DCBA, [0x4433, 0x2211]),
        ];
        for (order, regs) in layouts {
            assert_eq!(decode_number(&regs, DataType::U32, order), Number::Int(0x11223344), "{order:?}");
            assert_eq!(
                encode_registers(&spec(DataType::U32, order), &Value::Integer(0x11223344)).unwrap(),
                regs
            );
        }
        let layouts64 = [
            (Order::ABCD, [0x1122, 0x3344, 0x5566, 0x7788]),
            (Order::CDAB, [0x7788, 0x5566, 0x3344, 0x1122]),
            (Order::BADC, [0x2211, 0x4433, 0x6655, 0x8877]),
            (Order::DCBA, [0x8877, 0x6655, 0x4433, 0x2211]),
        ];
        for (order, regs) in layouts64 {
            assert_eq!(
                decode_number(&regs, DataType::U64, order),
                Number::Int(0x1122334455667788),
                "{order:?}"
            );
        }
    }

    #[test]
    fn types_scale_bits_and_non_numbers() {
        let f = spec(DataType::F32, Order::ABCD);
        assert_eq!(decode(&f, &Raw::Registers(vec![0x3FC0, 0])).unwrap(), Value::Number(1.5));
        assert!(decode(&f, &Raw::Registers(vec![0x7FC0, 0])).unwrap_err().contains("NaN"));
        let i = spec(DataType::I16, Order::ABCD);
        assert_eq!(decode(&i, &Raw::Registers(vec![0xFFFE])).unwrap(), Value::Integer(-2));
        let mut scaled = spec(DataType::U16, Order::ABCD);
        (scaled.scale, scaled.offset) = (0.1, -40.0);
        assert_eq!(decode(&scaled, &Raw::Registers(vec![650])).unwrap(), Value::Number(650.0 * 0.1 - 40.0));
        assert_eq!(encode_registers(&scaled, &Value::Number(25.0)).unwrap(), vec![650]);
        assert!(encode_registers(&scaled, &Value::Number(-50.0)).unwrap_err().contains("range"));
        let mut bit = spec(DataType::Bool, Order::ABCD);
        bit.bit = Some(3);
        assert_eq!(decode(&bit, &Raw::Registers(vec![0b1000])).unwrap(), Value::Bool(true));
        assert_eq!(decode(&bit, &Raw::Registers(vec![0b0111])).unwrap(), Value::Bool(false));
        assert!(encode_registers(&bit, &Value::Bool(true)).is_err());
        let big = spec(DataType::U64, Order::ABCD);
        assert_eq!(decode(&big, &Raw::Registers(vec![0xFFFF; 4])).unwrap(), Value::Number(u64::MAX as f64));
        assert_eq!(encode_bit(&Value::Text("on".into())), Ok(true));
        assert!(encode_bit(&Value::Number(0.5)).is_err());
        assert_eq!(exception_name(2), "illegal data address");
    }

    proptest! {
        /// Whatever is written in any order and type reads back as itself.
        #[test]
        fn encode_then_decode_is_the_identity(i in any::<i32>(), f in -1e30f64..1e30, order in 0..4usize) {
            let order = Order::ALL[order];
            let s = spec(DataType::I32, order);
            let regs = encode_registers(&s, &Value::Integer(i64::from(i))).unwrap();
            prop_assert_eq!(decode(&s, &Raw::Registers(regs)).unwrap(), Value::Integer(i64::from(i)));
            let s = spec(DataType::F64, order);
            let regs = encode_registers(&s, &Value::Number(f)).unwrap();
            prop_assert_eq!(decode(&s, &Raw::Registers(regs)).unwrap(), Value::Number(f));
        }
    }
}
