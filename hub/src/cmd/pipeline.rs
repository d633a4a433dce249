use argh::FromArgs;
use proto::hub::Command;
use serde_json::Value;

use super::{show_hub_answer, text, CmdResult, Connection};

/// The hub's pipelines ([[pipeline]] in its config).
#[derive(FromArgs)]
#[argh(subcommand, name = "pipeline")]
pub struct PipelineArgs {
    #[argh(subcommand)]
    command: PipelineCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum PipelineCommand {
    Status(StatusArgs),
}

/// Show each pipeline: what its source sent and got acknowledged, how often
/// it waited for credit (backpressure), its journal cursor and backlog, and
/// per stage the messages in, out, filtered, failed, retried, dead-lettered
/// and queued now (against the window, the bound).
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "status",
    example = "hub pipeline status",
    example = "hub pipeline status --json | jq '.pipelines[].stages'",
    note = "A queue at its window and a growing `waited` mean a slow stage downstream; dead letters are managed with `hub dlq`.",
    error_code(3, "the hub did not answer within the timeout"),
    note = "Connects as --broker, --cert, --server-cert, --timeout and --context say (before or after the command), else PLANTD_* or the current context: see `hub context --help`."
)]
pub struct StatusArgs {
    /// print the JSON the hub sent instead of a table
    #[argh(switch)]
    json: bool,
}

pub fn run(args: PipelineArgs, connection: &Connection) -> CmdResult {
    let PipelineCommand::Status(a) = args.command;
    show_hub_answer(Command::Pipeline, connection, a.json, summary)
}

/// Per pipeline: a source line, then a row per stage.
fn summary(status: &Value) -> String {
    let mut out = String::new();
    for p in status["pipelines"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let s = &p["source"];
        out += &format!(
            "{}: sent {}, acked {}, in flight {}, waited {}, replayed {}, cursor {}, journal backlog {}, dead letters {}\n",
            text(&p["name"]),
            text(&s["sent"]),
            text(&s["acked"]),
            text(&s["in_flight"]),
            text(&s["waited"]),
            text(&s["replayed"]),
            text(&s["cursor"]),
            text(&s["journal_backlog"]),
            text(&p["dead_letters"]),
        );
        let header = ["STAGE", "WORKERS", "IN", "OUT", "FILTERED", "FAILED", "RETRIED", "DEAD", "QUEUED"];
        out += &format!("  {}\n", header.map(|h| format!("{h:<10}")).concat().trim_end());
        for st in p["stages"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let queued = format!("{}/{}", text(&st["queued"]), text(&st["window"]));
            let cells = [
                text(&st["stage"]),
                text(&st["workers"]),
                text(&st["in"]),
                text(&st["out"]),
                text(&st["filtered"]),
                text(&st["failed"]),
                text(&st["retried"]),
                text(&st["dead_lettered"]),
                queued,
            ];
            out += &format!("  {}\n", cells.map(|c| format!("{c:<10}")).concat().trim_end());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_has_a_row_per_stage() {
        let status = serde_json::json!({"pipelines": [{
            "name": "archive", "dead_letters": 1,
            "source": {"sent": 10, "acked": 9, "in_flight": 1, "waited": 0, "replayed": 0, "cursor": 9, "journal_backlog": 1},
            "stages": [{"stage": "transform", "workers": 2, "in": 10, "out": 8, "filtered": 1, "failed": 3,
                        "retried": 2, "dead_lettered": 1, "queued": 0, "window": 64}]
        }]});
        let text = summary(&status);
        assert!(text.starts_with("archive: sent 10, acked 9"), "{text}");
        assert!(
            text.contains(
                "  transform 2         10        8         1         3         2         1         0/64\n"
            ),
            "{text}"
        );
    }
}
