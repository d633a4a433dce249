//! `hub consumers` (manage durable consumers) and `hub tap --durable` (read one).

use std::io::Write;
use std::process::ExitCode;

use argh::FromArgs;
use proto::consumer::{self, Fetched, Policy, Request, ResetTo, Sample, Spec};
use serde_json::{json, Value};
use transport::{Client, ClientError, ClientOptions, Shutdown};

use super::{no_reply, print_json, CmdResult, Connection};

/// Durable consumers: named cursors on the hub's journal of durable samples,
/// that move only when their reader acknowledges. Every sample ingest
/// accepted reaches them, in per-agent order, through hub restarts.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "consumers",
    example = "hub consumers list",
    example = "hub consumers show historian",
    example = "hub consumers create trend --prefix org.plantd.Metric.pump-1.",
    example = "hub consumers reset historian --to end      # skip what waits",
    example = "hub consumers rm trend",
    example = "hub consumers create archive --policy block --admin   # holds ingest back when behind",
    note = "Read one with `hub tap --durable NAME`, or from any MDP client (README: Durable consumers).",
    note = "Asks org.plantd.Consumer; --admin asks org.plantd.Consumer.Admin (an operator's certificate), which may manage any consumer and make block ones.",
    error_code(1, "the hub answered with an error (e.g. no such consumer, not yours)"),
    error_code(3, "the hub did not answer within the timeout"),
    note = "Connects as --broker, --cert, --server-cert, --timeout and --context say (before or after the command), else PLANTD_* or the current context: see `hub context --help`."
)]
pub struct ConsumersArgs {
    /// list, show NAME, create NAME, rm NAME, or reset NAME --to start|end
    #[argh(positional)]
    action: String,
    /// the consumer's name
    #[argh(positional)]
    name: Option<String>,
    /// create: a topic prefix it reads (repeat; none: every durable sample)
    #[argh(option)]
    prefix: Vec<String>,
    /// create: block (hold ingest back at its bounds) or drop-oldest (skip ahead)
    #[argh(option)]
    policy: Option<String>,
    /// create: most samples it may have waiting
    #[argh(option)]
    max_records: Option<u64>,
    /// create: most bytes it may have waiting
    #[argh(option)]
    max_bytes: Option<u64>,
    /// reset: start (the oldest sample the journal holds) or end (past the newest)
    #[argh(option)]
    to: Option<String>,
    /// ask org.plantd.Consumer.Admin (operators): any consumer, block ones too
    #[argh(switch)]
    admin: bool,
}

pub fn run(args: ConsumersArgs, connection: &Connection) -> CmdResult {
    let name = || args.name.clone().ok_or("name the consumer: hub consumers ACTION NAME");
    let request = match args.action.as_str() {
        "list" => Request::List,
        "show" => Request::Show { name: name()? },
        "rm" | "delete" => Request::Delete { name: name()? },
        "reset" => {
            let to = match args.to.as_deref() {
                Some("start") => ResetTo::Start,
                Some("end") => ResetTo::End,
                _ => return Err("reset needs --to start or --to end".into()),
            };
            Request::Reset { name: name()?, to }
        }
        "create" => {
            let policy = match args.policy.as_deref() {
                None => None,
                Some("block") => Some(Policy::Block),
                Some("drop-oldest") => Some(Policy::DropOldest),
                Some(other) => return Err(format!("--policy {other}: block or drop-oldest").into()),
            };
            Request::Create(Spec {
                name: name()?,
                prefixes: args.prefix.clone(),
                policy,
                max_records: args.max_records,
                max_bytes: args.max_bytes,
            })
        }
        other => return Err(format!("unknown action '{other}': list, show, create, rm or reset").into()),
    };
    let service = if args.admin { consumer::ADMIN_SERVICE } else { consumer::SERVICE };
    let ctx = zmq::Context::new();
    let options = ClientOptions { timeout: connection.timeout(2500), retries: 1, ..Default::default() };
    let mut client = Client::new(&ctx, connection.broker_endpoint()?, options);
    let answer = match ask(&mut client, service, &request) {
        Ok((answer, _)) => answer,
        Err(e @ ClientError::Timeout { .. }) => {
            no_reply(&e, connection);
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(error) = answer.get("error").and_then(Value::as_str) {
        eprintln!("hub: {error}");
        return Ok(ExitCode::FAILURE);
    }
    print_json(&answer)?;
    Ok(ExitCode::SUCCESS)
}

/// One request to a consumer service: its answer, and the samples frame of a fetch.
fn ask(
    client: &mut Client,
    service: &str,
    request: &Request,
) -> Result<(Value, Option<Vec<u8>>), ClientError> {
    let frames = request.encode();
    let reply = client.request(service, &[&frames[0], &frames[1]])?;
    let answer = reply
        .first()
        .and_then(|f| serde_json::from_slice(f).ok())
        .unwrap_or_else(|| json!({"error": "an empty answer"}));
    Ok((answer, reply.get(1).map(|f| f.to_vec())))
}

/// What `hub tap --durable` needs.
pub struct DurableTap {
    pub name: String,
    pub prefixes: Vec<String>,
    pub json: bool,
    pub count: Option<u64>,
}

/// Reads durable consumer `tap.name` (made on the fly, `drop-oldest`, if it
/// does not exist), printing each sample as `hub tap` does; acknowledges a
/// batch only once it is written and stdout flushed. Killed and started
/// again, it resumes at its cursor: nothing is missed.
pub fn tap(tap: DurableTap, connection: &Connection, shutdown: &Shutdown) -> CmdResult {
    let ctx = zmq::Context::new();
    let options = ClientOptions { timeout: connection.timeout(5000), retries: 0, ..Default::default() };
    let mut client = Client::new(&ctx, connection.broker_endpoint()?, options);
    let service = consumer::SERVICE;
    let name = tap.name.clone();
    let (shown, _) = ask(&mut client, service, &Request::Show { name: name.clone() })?;
    if shown.get("error").is_some() {
        let spec = Spec { name: name.clone(), prefixes: tap.prefixes.clone(), ..Spec::default() };
        let (made, _) = ask(&mut client, service, &Request::Create(spec))?;
        if let Some(error) = made.get("error").and_then(Value::as_str) {
            return Err(format!("consumer '{name}': {error}").into());
        }
        log::info!("made durable consumer '{name}' (drop-oldest; hub consumers show {name})");
    }
    // What is printed and flushed, not yet acknowledged: it goes with the next fetch.
    let (mut after, mut printed, mut unacked) = (0u64, 0u64, None);
    let mut stdout = std::io::stdout().lock();
    while !shutdown.is_triggered() && tap.count.is_none_or(|n| printed < n) {
        let max = tap.count.map_or(1000, |n| (n - printed).min(1000)) as u32;
        let fetch = Request::Fetch { name: name.clone(), after, max, wait_ms: 500, ack: unacked };
        let (header, samples) = match ask(&mut client, service, &fetch) {
            Ok(reply) => reply,
            Err(ClientError::Timeout { .. }) => {
                log::warn!("no answer from the hub: trying again; used {}", connection.describe());
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(error) = header.get("error").and_then(Value::as_str) {
            return Err(format!("consumer '{name}': {error}").into());
        }
        let header: Fetched = serde_json::from_value(header)?;
        for sample in Sample::parse_all(samples.as_deref().unwrap_or_default())? {
            if tap.json {
                writeln!(stdout, "{}", json!({"topic": sample.topic, "payload": sample.sample}))?;
            } else {
                writeln!(stdout, "{} {}", sample.topic, sample.sample)?;
            }
            printed += 1;
        }
        // Written and flushed before the hub may forget them.
        stdout.flush()?;
        unacked = (header.next > after).then_some(header.next);
        after = header.next;
    }
    if let Some(pos) = unacked {
        let (acked, _) = ask(&mut client, service, &Request::Ack { name: name.clone(), pos })?;
        if let Some(error) = acked.get("error").and_then(Value::as_str) {
            return Err(format!("consumer '{name}': {error}").into());
        }
    }
    Ok(ExitCode::SUCCESS)
}
