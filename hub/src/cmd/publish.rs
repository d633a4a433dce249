use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;
use proto::bus::Framing;

use super::{bus_endpoint, BusSide, CmdResult, Connection};

/// Publish one message on a bus. Waits (up to --wait) until a subscriber to
/// the topic is known, because a message nobody has subscribed to is dropped.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "publish",
    example = "hub publish --name event org.plantd.Test.events '{{\"hello\":1}}'",
    example = "hub publish --bus tcp://127.0.0.1:13000 --one-frame org.plantd.Metric.x '{{\"v\":2}}'",
    note = "Connects as --broker, --cert, --server-cert, --timeout and --context say (before or after the command), else PLANTD_* or the current context: see `hub context --help`."
)]
pub struct PublishArgs {
    /// bus frontend (publisher) endpoint
    #[argh(option)]
    bus: Option<String>,
    /// bus by name, from the config or the defaults (default metric)
    #[argh(option)]
    name: Option<String>,
    /// config file to look --name up in
    #[argh(option)]
    config: Option<PathBuf>,
    /// send plantd's layout: one frame, the topic immediately followed by the payload
    #[argh(switch)]
    one_frame: bool,
    /// milliseconds to wait for a subscriber (default 1000)
    #[argh(option, default = "1000")]
    wait: u64,
    /// topic
    #[argh(positional)]
    topic: String,
    /// payload (JSON by convention)
    #[argh(positional)]
    payload: String,
}

pub fn run(args: PublishArgs, connection: &Connection) -> CmdResult {
    let endpoint = bus_endpoint(args.bus, args.name, args.config.as_ref(), BusSide::Frontend)?;
    let framing = if args.one_frame { Framing::OneFrame } else { Framing::TwoFrame };
    let ctx = zmq::Context::new();
    let heard = transport::bus::publish_once(
        &ctx,
        connection.endpoint(&endpoint)?,
        framing,
        args.topic.as_bytes(),
        args.payload.as_bytes(),
        Duration::from_millis(args.wait),
    )?;
    if !heard {
        eprintln!(
            "hub: no subscriber to '{}' was seen within {} ms; the bus may have dropped it",
            args.topic, args.wait
        );
    }
    Ok(ExitCode::SUCCESS)
}
