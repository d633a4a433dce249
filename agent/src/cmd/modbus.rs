//! `agent modbus read`: registers or bits straight from a device, printed
//! raw and, with `--as`, decoded in every word order, so an engineer with a
//! device manual finds the right `type` and `order` in a minute.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use boards::modbus::codec::{every_order, Number};
use boards::modbus::config::{DataType, LinkConfig, Parity, Table, Transport};
use boards::modbus::wire::{self, Reply, Request, WireError};
use serde_json::json;

use super::CmdResult;

/// Talk to Modbus devices directly, for field diagnostics.
#[derive(FromArgs)]
#[argh(subcommand, name = "modbus")]
pub struct ModbusArgs {
    #[argh(subcommand)]
    command: ModbusCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum ModbusCommand {
    Read(ReadArgs),
}

/// Read COUNT registers (or bits) from TABLE (coil, discrete, holding,
/// input) at the 0-based ADDRESS, through a configured link (--link) or
/// straight to a device (--tcp, --rtu), and print them raw and, with --as,
/// as a type in each of the four word orders.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "read",
    example = "agent modbus read --tcp 10.0.0.20:502 --unit 1 holding 100 2 --as f32",
    example = "agent modbus read --rtu /dev/ttyUSB0 --baud 9600 --parity even --unit 3 input 0 10",
    example = "agent modbus read --config /etc/plantd/agent.toml --link plc1 --unit 1 holding 100 4 --as u64",
    error_code(1, "the device could not be reached or the arguments are wrong"),
    error_code(2, "the device answered with a Modbus exception (its name is printed)"),
    error_code(3, "no answer within the timeout")
)]
pub struct ReadArgs {
    /// a [[modbus]] link of the config file, by name
    #[argh(option)]
    link: Option<String>,
    /// the agent's TOML config file (for --link; default /etc/plantd/agent.toml)
    #[argh(option)]
    config: Option<PathBuf>,
    /// a Modbus TCP device or gateway: host:port
    #[argh(option)]
    tcp: Option<String>,
    /// a serial port for Modbus RTU, e.g. /dev/ttyUSB0
    #[argh(option)]
    rtu: Option<String>,
    /// RTU speed (default 19200)
    #[argh(option)]
    baud: Option<u32>,
    /// RTU parity: none, even or odd (default none)
    #[argh(option)]
    parity: Option<String>,
    /// how long to wait for the answer, in ms (default: the link's, else 1000)
    #[argh(option)]
    timeout_ms: Option<u64>,
    /// the unit (slave) id (default 1)
    #[argh(option, default = "1")]
    unit: u8,
    /// also decode as this type in every word order: u16, i16, u32, i32, f32, u64, i64, f64
    #[argh(option, long = "as")]
    as_type: Option<String>,
    /// print JSON
    #[argh(switch)]
    json: bool,
    /// coil, discrete, holding or input
    #[argh(positional)]
    table: String,
    /// the 0-based protocol address
    #[argh(positional)]
    address: u16,
    /// how many registers or bits (default 1)
    #[argh(positional, default = "1")]
    count: u16,
}

fn link(args: &ReadArgs) -> Result<LinkConfig, Box<dyn std::error::Error>> {
    let mut link = match (&args.link, &args.tcp, &args.rtu) {
        (Some(name), None, None) => {
            let path = args.config.clone().unwrap_or_else(|| "/etc/plantd/agent.toml".into());
            let config = agent::config::Config::load(&path)?;
            let known: Vec<&str> = config.modbus.iter().map(|l| l.name.as_str()).collect();
            config.modbus.iter().find(|l| &l.name == name).cloned().ok_or_else(|| {
                format!("{} has no [[modbus]] link named {name:?} (links: {known:?})", path.display())
            })?
        }
        (None, Some(address), None) => {
            let mut link = LinkConfig::new("cli", Transport::Tcp);
            link.address = Some(address.clone());
            link
        }
        (None, None, Some(device)) => {
            let mut link = LinkConfig::new("cli", Transport::Rtu);
            link.device = Some(device.clone());
            link
        }
        _ => {
            return Err(
                "name the device one way: --link NAME (with --config), --tcp HOST:PORT or --rtu DEVICE"
                    .into(),
            )
        }
    };
    if let Some(baud) = args.baud {
        link.baud = baud;
    }
    if let Some(parity) = &args.parity {
        link.parity = match parity.as_str() {
            "none" | "n" | "N" => Parity::None,
            "even" | "e" | "E" => Parity::Even,
            "odd" | "o" | "O" => Parity::Odd,
            other => return Err(format!("--parity {other:?}: use none, even or odd").into()),
        };
    }
    if let Some(ms) = args.timeout_ms {
        link.timeout_ms = ms;
    }
    // A diagnostic tries once: no backoff to wait out.
    link.backoff_min_ms = 1;
    link.validate().map_err(|(field, problem)| format!("{field}: {problem}"))?;
    Ok(link)
}

pub fn run(args: ModbusArgs) -> CmdResult {
    let ModbusCommand::Read(args) = args.command;
    let table = Table::parse(&args.table)
        .ok_or_else(|| format!("{:?} is not a table: use coil, discrete, holding or input", args.table))?;
    let limit = if table.is_bits() { 2000 } else { 125 };
    if args.count == 0 || args.count > limit {
        return Err(format!("COUNT must be from 1 to {limit} for a {} read", table.name()).into());
    }
    let data_type = match &args.as_type {
        Some(t) => Some(
            DataType::parse(t)
                .filter(|t| *t != DataType::Bool)
                .ok_or_else(|| format!("--as {t:?}: use u16, i16, u32, i32, f32, u64, i64 or f64"))?,
        ),
        None => None,
    };
    let link = link(&args)?;
    let mut wire = wire::open(&link);
    let request = Request::Read { table, address: args.address, count: args.count };
    let reply = match wire.transact(args.unit, &request) {
        Ok(reply) => reply,
        Err(e @ WireError::Exception { .. }) => {
            eprintln!("agent: unit {} answered {e}", args.unit);
            return Ok(ExitCode::from(2));
        }
        Err(e @ WireError::Timeout(_)) => {
            eprintln!("agent: unit {}: {e} (check the unit id, the wiring, baud and parity)", args.unit);
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(e.to_string().into()),
    };
    match reply {
        Reply::Bits(bits) => print_bits(&args, &bits),
        Reply::Registers(regs) => print_registers(&args, &regs, data_type),
        Reply::Written => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// A float as a person compares it with a manual: plain when it is of a
/// plausible size, in exponent form when it is a wrong order's noise.
fn readable(f: f64) -> String {
    if f == 0.0 || (1e-4..1e12).contains(&f.abs()) {
        format!("{f}")
    } else {
        format!("{f:e}")
    }
}

fn print_bits(args: &ReadArgs, bits: &[bool]) {
    if args.json {
        println!(
            "{}",
            json!({"unit": args.unit, "table": args.table, "address": args.address, "bits": bits})
        );
        return;
    }
    for (i, b) in bits.iter().enumerate() {
        println!("{:>5}  {}", usize::from(args.address) + i, u8::from(*b));
    }
}

fn number_json(n: Number) -> serde_json::Value {
    match n {
        Number::Int(i) => i64::try_from(i).map(|i| json!(i)).unwrap_or_else(|_| json!(i.to_string())),
        Number::Float(f) => json!(f),
    }
}

fn print_registers(args: &ReadArgs, regs: &[u16], data_type: Option<DataType>) {
    // Each group of a type's width, from the first register on.
    let decoded: Vec<(usize, Vec<(boards::modbus::Order, Number)>)> = data_type
        .map(|t| {
            let width = usize::from(t.registers());
            (0..regs.len() / width).map(|g| (g * width, every_order(&regs[g * width..], t))).collect()
        })
        .unwrap_or_default();
    if args.json {
        let values: Vec<_> = decoded
            .iter()
            .map(|(offset, orders)| {
                let mut o = serde_json::Map::new();
                o.insert("address".into(), json!(usize::from(args.address) + offset));
                for (order, n) in orders {
                    o.insert(format!("{order:?}"), number_json(*n));
                }
                serde_json::Value::Object(o)
            })
            .collect();
        println!(
            "{}",
            json!({"unit": args.unit, "table": args.table, "address": args.address, "registers": regs,
                   "as": data_type.map(|_| json!({"type": args.as_type, "values": values}))})
        );
        return;
    }
    println!("address    hex   unsigned  signed");
    for (i, r) in regs.iter().enumerate() {
        println!("{:>7}  {r:#06x}  {r:>8}  {:>6}", usize::from(args.address) + i, *r as i16);
    }
    for (offset, orders) in &decoded {
        let line: Vec<String> = orders
            .iter()
            .map(|(order, n)| match n {
                Number::Int(i) => format!("{order:?} {i}"),
                Number::Float(f) => format!("{order:?} {}", readable(*f)),
            })
            .collect();
        println!(
            "{} at {}: {}",
            args.as_type.as_deref().unwrap_or_default(),
            usize::from(args.address) + offset,
            line.join("  ")
        );
    }
}
