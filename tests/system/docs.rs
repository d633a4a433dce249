//! The documentation: README.md is the front door and links every page in
//! docs/; every relative link points to a file that exists; the hub and
//! agent configs shown parse; the `hub` and `agent` commands shown exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use system_tests::*;

/// Tables only an agent's config has: a ```toml block with one of them is
/// checked as an agent config, any other as a hub config (or a part of one).
const AGENT_TABLES: [&str; 5] = ["[uplink]", "[outbox]", "[[channel]]", "[hub]", "[[modbus]]"];

/// Subcommands whose next word names a subcommand (or an action) of its own:
/// `hub keys add`, `agent store verify`, ...
const NESTED: [&str; 10] =
    ["bridge", "config", "consumers", "context", "dlq", "keys", "modbus", "pipeline", "state", "store"];

/// The hub's connection options that take a value and may come before the
/// command (`hub --context site-b agents`).
const WITH_VALUE: [&str; 5] = ["--broker", "--cert", "--server-cert", "--timeout", "--context"];

/// A fenced block: its info string, the line its opening fence is on
/// (1-based), and its lines.
struct Block {
    lang: String,
    line: usize,
    body: Vec<String>,
}

/// README.md, then every docs/*.md: each as its path (relative to the
/// workspace) and its text.
fn pages() -> Vec<(PathBuf, String)> {
    let root = workspace_root();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is readable")
        .map(|entry| entry.expect("an entry of docs/").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| Path::new("docs").join(path.file_name().expect("a page has a file name")))
        .collect();
    docs.sort();
    std::iter::once(PathBuf::from("README.md"))
        .chain(docs)
        .map(|page| {
            let text = std::fs::read_to_string(root.join(&page))
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", page.display()));
            (page, text)
        })
        .collect()
}

/// The fenced blocks of a Markdown text.
fn blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (open.is_some(), fence) {
            (false, Some(info)) => {
                open = Some(Block { lang: info.trim().to_string(), line: i + 1, body: Vec::new() })
            }
            (true, Some(_)) => blocks.extend(open.take()),
            (true, None) => open.as_mut().expect("a block is open").body.push(line.to_string()),
            (false, None) => {}
        }
    }
    blocks
}

/// The targets of the inline links (`](target)`) outside fenced blocks, with
/// their line numbers (1-based).
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut in_block = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let mut rest = if in_block { "" } else { line };
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            found.push((i + 1, rest[..end].to_string()));
            rest = &rest[end..];
        }
    }
    found
}

#[test]
fn every_page_is_linked_from_the_readme_and_every_link_resolves() {
    let root = workspace_root();
    let pages = pages();
    let mut problems = Vec::new();
    let mut from_readme = Vec::new();
    for (page, text) in &pages {
        let dir = page.parent().unwrap_or(Path::new(""));
        for (line, target) in links(text) {
            if ["http://", "https://", "mailto:", "#"].iter().any(|scheme| target.starts_with(scheme)) {
                continue;
            }
            let path = dir.join(target.split_once('#').map_or(target.as_str(), |(path, _)| path));
            if !root.join(&path).exists() {
                problems.push(format!("{}:{line}: ]({target}) points to no file", page.display()));
            }
            if page == Path::new("README.md") {
                from_readme.push(path);
            }
        }
    }
    for (page, _) in pages.iter().skip(1) {
        if !from_readme.contains(page) {
            problems.push(format!("{}: no link to it in README.md", page.display()));
        }
    }
    assert!(problems.is_empty(), "documentation links:\n{}", problems.join("\n"));
}

#[test]
fn the_configs_shown_parse() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut failures = Vec::new();
    let mut checked = 0;
    for (page, text) in pages() {
        for block in blocks(&text).into_iter().filter(|b| b.lang == "toml") {
            let agent = block
                .body
                .iter()
                .any(|l| l.split_whitespace().next().is_some_and(|table| AGENT_TABLES.contains(&table)));
            let file = dir.path().join(format!("block-{checked}.toml"));
            checked += 1;
            std::fs::write(&file, block.body.join("\n") + "\n").expect("write a block to a temporary file");
            // Files the configs name (keys, record paths) need not exist
            // here: exit 78 for those is fine, a syntax error or an
            // unknown key is not. Both binaries print a TOML error as
            // "NAME: config file PATH: MESSAGE".
            let (name, out) = if agent {
                (
                    "agent",
                    output(Command::new(bin("agent")).args(["check", "--config-only"]).arg(file.as_os_str())),
                )
            } else {
                ("hub", output(Command::new(bin("hub")).arg("check-config").arg(file.as_os_str())))
            };
            let stderr = String::from_utf8_lossy(&out.stderr);
            let syntax = stderr.contains(&format!("{name}: config file "))
                || ["TOML parse error", "unknown field", "invalid type"].iter().any(|s| stderr.contains(s));
            if syntax || !matches!(out.status.code(), Some(0 | 78)) {
                failures.push(format!(
                    "{}:{}: the ```toml block there, checked as a {name} config, fails ({}):\n{}",
                    page.display(),
                    block.line,
                    out.status,
                    stderr.trim()
                ));
            }
        }
    }
    assert!(checked > 0, "no ```toml block in README.md or docs/");
    assert!(failures.is_empty(), "configs that do not parse:\n{}", failures.join("\n\n"));
}

/// For a line that runs the hub or the agent: the binary and the words that
/// name its subcommand (`["hub", "keys", "add"]`). `None` for any other line,
/// and for lines with shell substitutions.
fn subcommand(line: &str) -> Option<Vec<String>> {
    let line = line.trim_start().trim_start_matches("$ ");
    if line.contains("$(") || line.contains('`') {
        return None;
    }
    let mut words = line.split_whitespace().take_while(|w| !w.starts_with('#'));
    let mut first = words.next()?;
    if first == "sudo" {
        first = words.next()?;
    }
    let binary = match first.rsplit('/').next()? {
        "hub" | "plantd-hub" => "hub",
        "agent" | "plantd-agent" => "agent",
        _ => return None,
    };
    let command = loop {
        let word = words.next()?;
        if !word.starts_with('-') {
            break word;
        }
        if WITH_VALUE.contains(&word) {
            words.next();
        }
    };
    let mut named = vec![binary.to_string(), command.to_string()];
    if NESTED.contains(&command) {
        named.extend(words.next().filter(|w| !w.starts_with('-')).map(str::to_string));
    }
    Some(named)
}

#[test]
fn the_commands_shown_exist() {
    let mut results: BTreeMap<Vec<String>, Option<String>> = BTreeMap::new();
    let mut failures = Vec::new();
    for (page, text) in pages() {
        for block in
            blocks(&text).into_iter().filter(|b| ["sh", "bash", "console"].contains(&b.lang.as_str()))
        {
            for (n, line) in block.body.iter().enumerate() {
                let Some(words) = subcommand(line) else { continue };
                let error = results.entry(words.clone()).or_insert_with(|| {
                    let (binary, args) = words.split_first().expect("a binary and its subcommand");
                    let out = output(Command::new(bin(binary)).args(args).arg("--help"));
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    (!out.status.success())
                        .then(|| format!("{} --help: {}: {}", words.join(" "), out.status, stderr.trim()))
                });
                if let Some(error) = error {
                    failures.push(format!(
                        "{}:{}: `{}`: {error}",
                        page.display(),
                        block.line + 1 + n,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(!results.is_empty(), "no hub or agent command in the ```sh blocks of README.md or docs/");
    assert!(failures.is_empty(), "commands that do not exist:\n{}", failures.join("\n"));
}
