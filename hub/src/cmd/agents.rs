use argh::FromArgs;
use proto::hub::Command;
use serde_json::Value;

use super::{ask_hub, show_hub_answer, CmdResult, Connection};

/// List the agents the hub has heard from: link state, when last seen, the
/// backlog and lag in their outboxes as they last reported, their boot
/// epoch, the durable samples the hub accepted from them and dropped as
/// repeats, the samples they lost (dropped from a full outbox or for a disk
/// short of its reserve, lost to failed writes: kept across their restarts),
/// its alarms in force (channel, level, and `!` while unacknowledged), the
/// fleet configuration it runs (`v7`; `v5->v7 rejected` when it drifts), and
/// what needs an operator now; under the table, any of the hub's own
/// stores failing or found damaged at start. Asks the hub's own service,
/// org.plantd.Hub.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "agents",
    example = "hub agents",
    example = "hub agents --json | jq '.[] | select(.link != \"up\")'",
    note = "An agent reports every 10 s even with nothing to send; one not heard from for 30 s is shown as silent.",
    note = "The list is the hub's memory since it started: a restarted hub shows each agent again at its next report.",
    error_code(3, "the hub did not answer within the timeout"),
    note = "Connects as --broker, --cert, --server-cert, --timeout and --context say (before or after the command), else PLANTD_* or the current context: see `hub context --help`."
)]
pub struct AgentsArgs {
    /// print the JSON the hub sent instead of a table
    #[argh(switch)]
    json: bool,
}

pub fn run(a: AgentsArgs, connection: &Connection) -> CmdResult {
    // Under the table, the hub's own stores if any is failing or was found
    // damaged: the agents' samples pass through them.
    let stores = if a.json { None } else { ask_hub(Command::Stores, connection).ok().flatten() };
    show_hub_answer(Command::Agents, connection, a.json, |agents| {
        let table = table(agents.as_array().map(Vec::as_slice).unwrap_or_default());
        table + &stores.as_ref().map(hub::storage::summary).unwrap_or_default()
    })
}

/// One line per agent, columns aligned; what needs an operator last.
fn table(agents: &[Value]) -> String {
    let header = [
        "AGENT",
        "LINK",
        "LAST SEEN",
        "BACKLOG",
        "LAG",
        "EPOCH",
        "ACCEPTED",
        "DUPLICATES",
        "DROPPED",
        "WRITE LOST",
        "ALARMS",
        "CONFIG",
        "WARNING",
    ];
    let seconds = |v: &Value| v.as_f64().map_or("-".to_string(), |s| format!("{s:.0}s"));
    let number = |v: &Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
    let warnings = |v: &Value| {
        let said: Vec<&str> = v.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if said.is_empty() {
            "-".to_string()
        } else {
            said.join("; ")
        }
    };
    // `tank hi!`: channel and level, `!` while no operator acknowledged it.
    let alarms = |v: &Value| {
        let said: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let unacknowledged = if a["acknowledged"] == false { "!" } else { "" };
                format!(
                    "{} {}{unacknowledged}",
                    a["channel"].as_str().unwrap_or("?"),
                    a["state"].as_str().unwrap_or("?")
                )
            })
            .collect();
        if said.is_empty() {
            "-".to_string()
        } else {
            said.join(", ")
        }
    };
    // `v7`, or `v5->v7 rejected` while it does not run its desired version.
    let config = |c: &Value| {
        if c.is_null() || c["desired"] == 0 {
            return "-".to_string();
        }
        match c["drift"] == true {
            false => format!("v{}", c["applied"]),
            true => format!("v{}->v{} {}", c["applied"], c["desired"], c["state"].as_str().unwrap_or("?")),
        }
    };
    let rows: Vec<[String; 13]> = agents
        .iter()
        .map(|a| {
            [
                a["agent"].as_str().unwrap_or("?").to_string(),
                a["link"].as_str().unwrap_or("?").to_string(),
                seconds(&a["last_seen_s"]),
                number(&a["backlog"]),
                seconds(&a["lag_s"]),
                number(&a["epoch"]),
                number(&a["accepted"]),
                number(&a["duplicates"]),
                number(&a["dropped"]),
                number(&a["store_errors"]),
                alarms(&a["alarms"]),
                config(&a["config"]),
                warnings(&a["warnings"]),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].len()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        out.push_str("(no agent has reported yet)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_and_says_what_is_unknown() {
        let agents = serde_json::json!([
            {"agent": "pump-1", "link": "up", "last_seen_s": 1.2, "backlog": 0, "lag_s": 0.0, "epoch": 7, "accepted": 12, "duplicates": 0,
             "dropped": 40, "store_errors": 3, "warnings": ["its disk is short"],
             "alarms": [{"channel": "tank", "state": "hi", "acknowledged": false}, {"channel": "flow", "state": "lolo", "acknowledged": true}],
             "config": {"desired": 7, "applied": 5, "state": "rejected", "drift": true}},
            {"agent": "pump-22", "link": "silent", "last_seen_s": 95.0, "backlog": null, "lag_s": null, "epoch": 9, "accepted": 3, "duplicates": 1}
        ]);
        let text = table(agents.as_array().unwrap());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "AGENT    LINK    LAST SEEN  BACKLOG  LAG  EPOCH  ACCEPTED  DUPLICATES  DROPPED  WRITE LOST  ALARMS               CONFIG           WARNING"
        );
        assert_eq!(
            lines[1],
            "pump-1   up      1s         0        0s   7      12        0           40       3           tank hi!, flow lolo  v5->v7 rejected  its disk is short"
        );
        assert_eq!(
            lines[2],
            "pump-22  silent  95s        -        -    9      3         1           -        -           -                    -                -"
        );
        assert!(table(&[]).contains("no agent has reported yet"));
    }
}
