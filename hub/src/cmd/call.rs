use std::process::ExitCode;

use argh::FromArgs;
use proto::mdp::Dialect;
use transport::frames::display_frame;
use transport::{Client, ClientError, ClientOptions};

use super::{no_reply, CmdResult, Connection};

/// Send one request to a service and print the reply frames, one per line
/// (partial replies first, as they arrive).
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "call",
    example = "hub call echo hello world",
    example = "hub call mmi.service org.plantd.State    # 200 if it has a worker, 404 if not",
    example = "hub call --dialect rfc18 --timeout 500 --retries 0 echo ping",
    note = "Frames print as UTF-8 text, or as 0x-prefixed hex when binary.",
    note = "A request is resent on a fresh socket after each timeout (--retries): only retry services that are safe to repeat.",
    error_code(3, "no reply within the timeout, after every retry"),
    note = "Connects as --broker, --cert, --server-cert, --timeout and --context say (before or after the command), else PLANTD_* or the current context: see `hub context --help`."
)]
pub struct CallArgs {
    /// resends after a timeout (default 2)
    #[argh(option, default = "2")]
    retries: u32,
    /// protocol dialect: rfc7 (default), rfc18, majortomo or plantd
    #[argh(option, default = "Dialect::Rfc7")]
    dialect: Dialect,
    /// service name
    #[argh(positional)]
    service: String,
    /// request body, one frame per argument
    #[argh(positional, greedy)]
    frames: Vec<String>,
}

pub fn run(args: CallArgs, connection: &Connection) -> CmdResult {
    let ctx = zmq::Context::new();
    let options =
        ClientOptions { dialect: args.dialect, timeout: connection.timeout(2500), retries: args.retries };
    let mut client = Client::new(&ctx, connection.broker_endpoint()?, options);
    let body: Vec<&[u8]> = args.frames.iter().map(|f| f.as_bytes()).collect();
    let print = |frames: &[zmq::Message]| {
        for frame in frames {
            println!("{}", display_frame(frame));
        }
    };
    match client.request_streaming(&args.service, &body, |part| print(&part.body)) {
        Ok(reply) => {
            print(&reply);
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ ClientError::Timeout { .. }) => {
            no_reply(&e, connection);
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e.into()),
    }
}
