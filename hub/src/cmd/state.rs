use std::io::IsTerminal;
use std::process::ExitCode;

use argh::FromArgs;
use proto::mdp::Dialect;
use proto::state::{Op, Request};
use serde_json::{json, Value};
use transport::{Client, ClientError, ClientOptions};

use super::{no_reply, CmdResult, Connection};

/// Read and change state in the hub's state service (org.plantd.State).
/// Prints the service's JSON reply (pretty on a terminal).
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "state",
    example = "hub state --scope plant set mode auto",
    example = "hub state --scope plant get mode",
    example = "hub state --scope plant set limits --json '{{\"max\": 80}}'",
    example = "hub state list-scopes",
    note = "A scope is what plantd calls a service. Values are strings unless --json is given.",
    note = "list-keys and list-scopes ask for every page of a long list and print it as one reply.",
    error_code(1, "the service answered with an error"),
    error_code(3, "no reply within the timeout"),
    note = "Connects as --broker, --cert, --server-cert, --timeout and --context say (before or after the command), else PLANTD_* or the current context: see `hub context --help`."
)]
pub struct StateArgs {
    /// the scope to work in
    #[argh(option)]
    scope: Option<String>,
    #[argh(subcommand)]
    op: StateOp,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum StateOp {
    Get(Get),
    Set(Set),
    Delete(Delete),
    ListKeys(ListKeys),
    ListScopes(ListScopes),
    CreateScope(CreateScope),
    DeleteScope(DeleteScope),
    Health(Health),
}

/// read a key
#[derive(FromArgs)]
#[argh(subcommand, name = "get")]
struct Get {
    #[argh(positional)]
    key: String,
}

/// write a key (creates the scope if needed)
#[derive(FromArgs)]
#[argh(subcommand, name = "set")]
struct Set {
    /// send VALUE as a JSON value instead of a string
    #[argh(switch)]
    json: bool,
    #[argh(positional)]
    key: String,
    #[argh(positional)]
    value: String,
}

/// delete a key
#[derive(FromArgs)]
#[argh(subcommand, name = "delete")]
struct Delete {
    #[argh(positional)]
    key: String,
}

/// list the keys of the scope
#[derive(FromArgs)]
#[argh(subcommand, name = "list-keys")]
struct ListKeys {}

/// list every scope
#[derive(FromArgs)]
#[argh(subcommand, name = "list-scopes")]
struct ListScopes {}

/// create the scope
#[derive(FromArgs)]
#[argh(subcommand, name = "create-scope")]
struct CreateScope {}

/// delete the scope and its keys
#[derive(FromArgs)]
#[argh(subcommand, name = "delete-scope")]
struct DeleteScope {}

/// the service's health and durability counters
#[derive(FromArgs)]
#[argh(subcommand, name = "health")]
struct Health {}

pub fn run(args: StateArgs, connection: &Connection) -> CmdResult {
    let scope = || args.scope.clone().ok_or("this operation needs --scope SCOPE (plantd's \"service\")");
    let (op, request) = match &args.op {
        StateOp::Get(g) => (Op::Get, Request::key(&scope()?, &g.key)),
        StateOp::Set(s) => {
            let value = if s.json {
                serde_json::from_str::<Value>(&s.value)
                    .map_err(|e| format!("--json value is not JSON: {e}"))?
            } else {
                json!(s.value)
            };
            (Op::Set, Request::set(&scope()?, &s.key, value))
        }
        StateOp::Delete(d) => (Op::Delete, Request::key(&scope()?, &d.key)),
        StateOp::ListKeys(_) => (Op::ListKeys, Request::scope(&scope()?)),
        StateOp::ListScopes(_) => (Op::ListScopes, Request::default()),
        StateOp::CreateScope(_) => (Op::CreateScope, Request::scope(&scope()?)),
        StateOp::DeleteScope(_) => (Op::DeleteScope, Request::scope(&scope()?)),
        StateOp::Health(_) => (Op::Health, Request::default()),
    };
    let ctx = zmq::Context::new();
    let options = ClientOptions { dialect: Dialect::Rfc7, timeout: connection.timeout(2500), retries: 0 };
    let mut client = Client::new(&ctx, connection.broker_endpoint()?, options);
    let mut ask = |request: &Request| -> Result<Option<Value>, Box<dyn std::error::Error>> {
        let [op, request] = request.frames(op);
        let reply = match client.request(proto::state::SERVICE, &[&op, &request]) {
            Ok(reply) => reply,
            Err(e @ ClientError::Timeout { .. }) => {
                no_reply(&e, connection);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let text = reply.first().map(|f| String::from_utf8_lossy(f).into_owned()).unwrap_or_default();
        let value = serde_json::from_str(&text)
            .map_err(|e| format!("the state service sent invalid JSON ({e}): {text}"))?;
        Ok(Some(value))
    };
    let names = match op {
        Op::ListKeys => Some("keys"),
        Op::ListScopes => Some("scopes"),
        _ => None,
    };
    let answer = match names {
        Some(field) => all_pages(&mut ask, request, field)?,
        None => ask(&request)?,
    };
    let Some(value) = answer else { return Ok(ExitCode::from(3)) };
    if std::io::stdout().is_terminal() {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{value}");
    }
    Ok(if proto::state::succeeded(&value) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Pages a list holds at most: a hub answers at least one name a page, and
/// holds at most 10 000 keys a scope and 10 000 scopes by default.
const MAX_PAGES: usize = 100_000;

/// Asks for every page of a `list-keys` or `list-scopes` list (the names
/// under `field`) and puts them in one reply of plantd's shape. A failed
/// page's reply is the answer; `None` when one timed out.
fn all_pages(
    ask: &mut impl FnMut(&Request) -> Result<Option<Value>, Box<dyn std::error::Error>>,
    request: Request,
    field: &str,
) -> Result<Option<Value>, Box<dyn std::error::Error>> {
    let Some(mut whole) = ask(&request)? else { return Ok(None) };
    let mut next = proto::state::next_page(&whole).map(String::from);
    for _ in 0..MAX_PAGES {
        let Some(after) = next.take() else {
            // The whole list: plantd's shape, as if it had come in one reply.
            if let Some(data) = whole.get_mut("data").and_then(Value::as_object_mut) {
                data.remove("truncated");
                data.remove("next");
                let count = data.get(field).and_then(Value::as_array).map_or(0, Vec::len);
                data.insert("count".into(), json!(count));
            }
            return Ok(Some(whole));
        };
        let Some(page) = ask(&request.clone().page(Some(after.clone())))? else { return Ok(None) };
        if !proto::state::succeeded(&page) {
            return Ok(Some(page));
        }
        next = proto::state::next_page(&page).map(String::from);
        if next.as_deref() == Some(after.as_str()) {
            return Err(format!("the state service sent the page after '{after}' again: stopping").into());
        }
        let names = page["data"][field].as_array().cloned().unwrap_or_default();
        if let Some(list) = whole["data"][field].as_array_mut() {
            list.extend(names);
        }
    }
    Err(format!("the list is longer than {MAX_PAGES} pages: stopping").into())
}
