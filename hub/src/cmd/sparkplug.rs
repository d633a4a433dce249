use argh::FromArgs;
use proto::hub::Command;
use serde_json::Value;

use super::{backlog, show_hub_answer, text, CmdResult, Connection};

/// The Sparkplug B edge node ([sparkplug] in the hub's config).
#[derive(FromArgs)]
#[argh(subcommand, name = "sparkplug")]
pub struct SparkplugArgs {
    #[argh(subcommand)]
    command: SparkplugCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum SparkplugCommand {
    Status(StatusArgs),
}

/// Show the edge node: its MQTT connection, bdSeq and seq, the devices
/// (agents) born, the backlog of durable samples waiting for the broker and
/// its bounds, DCMD writes made and refused, and the last error.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "status",
    example = "hub sparkplug status",
    example = "hub sparkplug status --json | jq .backlog",
    note = "A backlog that grows while `connected` or `host online` is false is the journal holding samples for the MQTT broker; at its bounds ingest answers Retry and agents keep buffering.",
    error_code(3, "the hub did not answer within the timeout"),
    note = "Connects as --broker, --cert, --server-cert, --timeout and --context say (before or after the command), else PLANTD_* or the current context: see `hub context --help`."
)]
pub struct StatusArgs {
    /// print the JSON the hub sent instead of a summary
    #[argh(switch)]
    json: bool,
}

pub fn run(args: SparkplugArgs, connection: &Connection) -> CmdResult {
    let SparkplugCommand::Status(a) = args.command;
    show_hub_answer(Command::Sparkplug, connection, a.json, summary)
}

/// `key: value` lines an operator reads at a glance.
fn summary(s: &Value) -> String {
    let backlog = backlog(&s["backlog"], "-");
    let c = &s["commands"];
    let rows = [
        ("edge node", format!("{}/{}", text(&s["group_id"]), text(&s["edge_node_id"]))),
        (
            "broker",
            format!(
                "{} ({})",
                text(&s["broker"]),
                if s["connected"] == true { "connected" } else { "not connected" }
            ),
        ),
        (
            "primary host",
            format!(
                "{} ({})",
                text(&s["primary_host_id"]),
                if s["host_online"] == true { "online" } else { "offline" }
            ),
        ),
        ("bdSeq", text(&s["bd_seq"])),
        ("seq", text(&s["seq"])),
        ("devices born", text(&s["devices_born"])),
        ("published", format!("{} DDATA, {} acknowledged", text(&s["published"]), text(&s["acked"]))),
        ("backlog", backlog),
        (
            "commands",
            format!(
                "{} written, {} refused, {} failed",
                text(&c["written"]),
                text(&c["refused"]),
                text(&c["failed"])
            ),
        ),
        ("last error", text(&s["last_error"])),
    ];
    rows.iter().map(|(k, v)| format!("{k:<13} {v}\n")).collect()
}
