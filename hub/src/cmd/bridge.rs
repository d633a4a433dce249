use argh::FromArgs;
use proto::hub::Command;
use serde_json::Value;

use super::{backlog, show_hub_answer, text, CmdResult, Connection};

/// The NATS bridge ([bridge.nats] in the hub's config).
#[derive(FromArgs)]
#[argh(subcommand, name = "bridge")]
pub struct BridgeArgs {
    #[argh(subcommand)]
    command: BridgeCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum BridgeCommand {
    Status(StatusArgs),
}

/// Show the bridge: the NATS server it is connected to, the export cursor,
/// the backlog waiting for JetStream and its bounds, publishes acknowledged
/// and retried, best-effort and request counters, and the last error.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "status",
    example = "hub bridge status",
    example = "hub bridge status --json | jq .backlog",
    note = "A backlog that grows while `connected` is false is the journal holding samples for NATS; at its bounds ingest answers Retry and agents keep buffering.",
    error_code(3, "the hub did not answer within the timeout"),
    note = "Connects as --broker, --cert, --server-cert, --timeout and --context say (before or after the command), else PLANTD_* or the current context: see `hub context --help`."
)]
pub struct StatusArgs {
    /// print the JSON the hub sent instead of a summary
    #[argh(switch)]
    json: bool,
}

pub fn run(args: BridgeArgs, connection: &Connection) -> CmdResult {
    let BridgeCommand::Status(a) = args.command;
    show_hub_answer(Command::Bridge, connection, a.json, summary)
}

/// `key: value` lines an operator reads at a glance.
fn summary(s: &Value) -> String {
    let server = if s["connected"] == true { text(&s["server"]) } else { "not connected".to_string() };
    let backlog = backlog(&s["backlog"], "- (durable samples are not exported)");
    let rows = [
        ("site", text(&s["site"])),
        ("stream", text(&s["stream"])),
        ("server", server),
        ("cursor", text(&s["cursor"])),
        ("backlog", backlog),
        ("published", text(&s["published"])),
        ("acked", format!("{} ({} duplicates)", text(&s["acked"]), text(&s["duplicates"]))),
        ("retries", text(&s["retries"])),
        ("unexportable", text(&s["unexportable"])),
        (
            "live",
            format!("{} exported, {} dropped", text(&s["live"]["exported"]), text(&s["live"]["dropped"])),
        ),
        (
            "rpc",
            format!(
                "{} requests, {} denied, {} busy, {} timed out",
                text(&s["rpc"]["requests"]),
                text(&s["rpc"]["denied"]),
                text(&s["rpc"]["busy"]),
                text(&s["rpc"]["timeouts"])
            ),
        ),
        ("last error", text(&s["last_error"])),
    ];
    rows.iter().map(|(k, v)| format!("{:<14}{v}\n", format!("{k}:"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_when_it_is_not_connected() {
        let status = serde_json::json!({
            "site": "plant-a", "stream": "PLANTD", "connected": false, "server": null, "cursor": 41,
            "backlog": {"records": 9, "bytes": 900, "max_records": 100, "max_bytes": 10000},
            "published": 50, "acked": 41, "duplicates": 2, "retries": 3, "unexportable": 0,
            "live": {"exported": 5, "dropped": 1},
            "rpc": {"requests": 0, "denied": 0, "busy": 0, "timeouts": 0},
            "last_error": "disconnected from NATS"
        });
        let text = summary(&status);
        assert!(text.contains("server:       not connected\n"), "{text}");
        assert!(
            text.contains("backlog:      9 samples, 900 bytes (bounds 100 samples, 10000 bytes)\n"),
            "{text}"
        );
        assert!(text.contains("acked:        41 (2 duplicates)\n"), "{text}");
        assert!(text.contains("last error:   disconnected from NATS\n"), "{text}");
    }
}
