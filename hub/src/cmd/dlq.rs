use std::process::ExitCode;

use argh::FromArgs;
use proto::hub::DlqCommand;

use super::{ask_service, print_json, CmdResult, Connection};

/// The pipelines' dead letters: messages a stage gave up on after its
/// retries, kept with the error, the attempts and the stage.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "dlq",
    example = "hub dlq list",
    example = "hub dlq show 12",
    example = "hub dlq replay --all          # after fixing what made them fail",
    example = "hub dlq purge --older-than 7d",
    note = "Asks the hub's org.plantd.Hub.Dlq service: with security, an operator's certificate.",
    note = "A replayed letter re-enters its pipeline at the stage that gave up on it, and leaves the store once the pipeline has it; one that fails again becomes a new letter.",
    error_code(1, "the hub answered with an error (e.g. no such letter)"),
    error_code(3, "the hub did not answer within the timeout"),
    note = "Connects as --broker, --cert, --server-cert, --timeout and --context say (before or after the command), else PLANTD_* or the current context: see `hub context --help`."
)]
pub struct DlqArgs {
    /// list, show ID, replay ID|--all, or purge [--older-than D]
    #[argh(positional)]
    action: String,
    /// the letter's id (from `hub dlq list`), for show and replay
    #[argh(positional)]
    id: Option<u64>,
    /// replay every letter
    #[argh(switch)]
    all: bool,
    /// purge only letters older than this: seconds, or with a unit (90s, 15m, 2h, 7d)
    #[argh(option)]
    older_than: Option<String>,
}

pub fn run(args: DlqArgs, connection: &Connection) -> CmdResult {
    let command = match (args.action.as_str(), args.id, args.all, &args.older_than) {
        ("list", None, false, None) => DlqCommand::List,
        ("show", Some(id), false, None) => DlqCommand::Show(id),
        ("replay", Some(id), false, None) => DlqCommand::Replay(id),
        ("replay", None, true, None) => DlqCommand::ReplayAll,
        ("purge", None, false, Some(d)) => DlqCommand::Purge(Some(seconds(d)?)),
        ("purge", None, false, None) => DlqCommand::Purge(None),
        _ => {
            return Err(
                "use: hub dlq list | show ID | replay ID | replay --all | purge [--older-than D]".into()
            )
        }
    };
    let service = hub::service::DLQ_SERVICE;
    let Some(reply) = ask_service(service, &command.encode(), connection)? else {
        return Ok(ExitCode::from(3));
    };
    print_json(&reply)?;
    Ok(ExitCode::SUCCESS)
}

/// `90`, `90s`, `15m`, `2h`, `7d` as seconds.
fn seconds(text: &str) -> Result<u64, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("--older-than {text}: a number with s, m, h or d"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("--older-than {text}: the unit is s, m, h or d")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("--older-than {text}: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_have_units() {
        assert_eq!(seconds("90"), Ok(90));
        assert_eq!(seconds("15m"), Ok(900));
        assert_eq!(seconds("7d"), Ok(604_800));
        assert!(seconds("7w").is_err() && seconds("d").is_err());
    }
}
