//! Where every option of a `baton` command comes from, in one place.
//!
//! Layers, lowest first: the built-in default < the current CLI context (client
//! commands only, see [`crate::contexts`]) < the `--config FILE` (TOML) <
//! `BATON_*` environment variables < flags. The layering is generic over the
//! clap command tree: a file key is the long flag name (`data-dir = "/var/lib/baton"`,
//! `label = ["pool=etl"]`, `insecure = true`), and a file or context value becomes
//! the default of its argument before the final parse, so clap itself puts the
//! environment and the command line above it and validates it like any other
//! value. Each command validates its own settings after layering, as before.
//!
//! Connection flags written before the subcommand (`baton --coordinator X exec
//! list`) are moved to the command they belong to, where they count as flags.
//!
//! `--print-config` shows the effective settings with the source of each
//! (never a secret value: an argument whose environment value clap hides is
//! printed as `<set>`, a package parameter `-p NAME=<set>`, as it may be a
//! sensitive one), as TOML that can be used as a config file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::contexts;
use crate::error::CliError;

/// The id of the global `--config FILE` argument.
pub const CONFIG_ARG: &str = "config";
/// The id of the global `--print-config` flag.
pub const PRINT_CONFIG_ARG: &str = "print_config";
/// The id of the `--context NAME` argument of client commands.
pub const CONTEXT_ARG: &str = "context";
/// The commands whose `--config` file is theirs alone (a key they do not take
/// is an error); every other command may share its file with others.
pub const DAEMONS: [&str; 2] = ["coordinator", "agent"];
/// What a secret value is shown as.
pub const SECRET_SHOWN_AS: &str = "<set>";

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default (or nothing: the option is unset).
    Default,
    /// The named CLI context.
    Context(String),
    /// A `--config` file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// The command line.
    Flag,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::Context(name) => write!(f, "context {name}"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(var) => write!(f, "env {var}"),
            Source::Flag => write!(f, "flag"),
        }
    }
}

/// One option of the command that runs, as it will be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The long flag name, which is also the config file key.
    pub key: String,
    /// Its values (`None`: unset).
    pub values: Option<Vec<String>>,
    /// A flag (`true`/`false`), printed without quotes.
    pub is_flag: bool,
    /// Takes several values (a repeatable flag): printed as a list.
    pub is_list: bool,
    /// Never printed.
    pub secret: bool,
    pub source: Source,
}

/// Why parsing stopped.
#[derive(Debug)]
pub enum ParseError {
    /// Clap's own outcome (usage error, `--help`, `--version`): `exit()` it.
    Clap(clap::Error),
    /// A bad config file or context.
    Cli(CliError),
}

impl From<CliError> for ParseError {
    fn from(e: CliError) -> Self {
        ParseError::Cli(e)
    }
}

/// The outcome of [`parse`].
#[derive(Debug)]
pub struct Parsed {
    pub matches: ArgMatches,
    /// Subcommand names from the root to the command that runs.
    pub path: Vec<String>,
    /// Every option of that command, with its source.
    pub settings: Vec<Setting>,
    /// `--print-config` was given: show `settings` instead of running.
    pub print_config: bool,
}

pub use crate::env_lookup::EnvLookup;

/// Makes every command that prints a result take `-o` as well as `--output`,
/// and hides what must not be shown; applied to the whole tree so that a new
/// command gets it without asking.
pub fn decorate(cmd: Command) -> Command {
    cmd.mut_args(|a| {
        if a.get_long() == Some("output") {
            a.short('o')
        } else {
            a
        }
    })
    .mut_subcommands(decorate)
}

/// Parses `argv` against `base` (already [`decorate`]d) with every layer applied.
pub fn parse(base: Command, argv: Vec<OsString>, env: EnvLookup<'_>) -> Result<Parsed, ParseError> {
    // 1. Flags and environment only, to learn the command, `--config` and
    //    `--context`.
    let first = base
        .clone()
        .try_get_matches_from(&argv)
        .map_err(ParseError::Clap)?;
    let path = subcommand_path(&first);
    let argv = hoist_root_flags(&base, &first, &path, argv)?;
    let first = base
        .clone()
        .try_get_matches_from(&argv)
        .map_err(ParseError::Clap)?;
    let leaf_cmd = find_leaf(&base, &path);
    let leaf_m = leaf_matches(&first, &path);

    // 2. The lower layers, lowest first; a later one replaces an earlier one.
    let mut layered: BTreeMap<String, (Vec<String>, Source)> = BTreeMap::new();
    if leaf_cmd.get_arguments().any(|a| a.get_id() == CONTEXT_ARG) {
        for (key, value, source) in context_layer(leaf_m, env)? {
            layered.insert(key, (vec![value], source));
        }
    }
    if let Some(file) = first.get_one::<PathBuf>(CONFIG_ARG) {
        let text = std::fs::read_to_string(file).map_err(|e| {
            CliError::invalid(
                "CONFIG_FILE_UNREADABLE",
                format!("cannot read the config file {}: {e}", file.display()),
            )
        })?;
        let strict = matches!(path.as_slice(), [c] if DAEMONS.contains(&c.as_str()));
        for (key, values) in file_layer(&base, leaf_cmd, file, &text, strict)? {
            layered.insert(key, (values, Source::File(file.clone())));
        }
    }
    // Only where the command has the argument and neither a flag nor the
    // environment set it.
    layered.retain(|key, _| {
        id_of(leaf_cmd, key).is_some_and(|id| {
            !matches!(
                leaf_m.value_source(&id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
    });

    // 3. The final parse, with the layered values as defaults.
    let matches = if layered.is_empty() {
        first
    } else {
        let with_defaults = with_leaf(base.clone(), &path, &|cmd: Command| {
            layered.iter().fold(cmd, |cmd, (key, (values, _))| {
                let Some(id) = id_of(&cmd, key) else {
                    return cmd;
                };
                cmd.mut_arg(id, |a| {
                    a.default_values(values.iter().map(|v| leak(v.clone())))
                })
            })
        });
        with_defaults.try_get_matches_from(&argv).map_err(|e| {
            let sources: Vec<String> = layered
                .values()
                .map(|(_, s)| s.to_string())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            CliError::invalid(
                "CONFIG_BAD_VALUE",
                format!(
                    "a value from {} is not valid: {}",
                    sources.join(", "),
                    // Clap's first paragraph; its "try --help" does not apply.
                    e.render()
                        .to_string()
                        .split("\n\n")
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .trim_start_matches("error: ")
                ),
            )
        })?
    };
    let leaf_m = leaf_matches(&matches, &path);
    let settings = settings_of(leaf_cmd, leaf_m, &layered);
    let print_config = matches.get_flag(PRINT_CONFIG_ARG);
    Ok(Parsed {
        matches,
        path,
        settings,
        print_config,
    })
}

/// Clap keeps default values for the life of the command; the process parses
/// once, so a few config strings live until it exits.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn subcommand_path(m: &ArgMatches) -> Vec<String> {
    let mut path = Vec::new();
    let mut cur = m;
    while let Some((name, sub)) = cur.subcommand() {
        path.push(name.to_owned());
        cur = sub;
    }
    path
}

fn find_leaf<'c>(root: &'c Command, path: &[String]) -> &'c Command {
    path.iter().fold(root, |cmd, name| {
        cmd.find_subcommand(name)
            .expect("clap matched this subcommand")
    })
}

fn leaf_matches<'m>(m: &'m ArgMatches, path: &[String]) -> &'m ArgMatches {
    path.iter().fold(m, |m, name| {
        m.subcommand_matches(name)
            .expect("clap matched this subcommand")
    })
}

fn with_leaf(cmd: Command, path: &[String], f: &dyn Fn(Command) -> Command) -> Command {
    match path.split_first() {
        None => f(cmd),
        Some((name, rest)) => cmd.mut_subcommand(name, |sub| with_leaf(sub, rest, f)),
    }
}

/// The id of the argument whose long flag is `key`.
fn id_of(cmd: &Command, key: &str) -> Option<String> {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(key))
        .map(|a| a.get_id().to_string())
}

/// Arguments a config file may set: named ones, not help/version/config.
fn configurable(a: &Arg) -> bool {
    let id = a.get_id().as_str();
    a.get_long().is_some()
        && !a.is_positional()
        && !matches!(id, "help" | "version" | CONFIG_ARG | PRINT_CONFIG_ARG)
        && !matches!(a.get_action(), ArgAction::Help | ArgAction::Version)
}

fn is_flag(a: &Arg) -> bool {
    matches!(a.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// Root options given on the command line (`baton --coordinator X exec list`)
/// are inserted right after the subcommand, where they count as its flags; a
/// flag given there too wins. An option the command does not take is an error.
fn hoist_root_flags(
    base: &Command,
    first: &ArgMatches,
    path: &[String],
    mut argv: Vec<OsString>,
) -> Result<Vec<OsString>, ParseError> {
    if path.is_empty() {
        return Ok(argv);
    }
    let leaf_cmd = find_leaf(base, path);
    let leaf_m = leaf_matches(first, path);
    let mut insert = Vec::new();
    for arg in base.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.is_global_set()
            || !configurable(arg)
            || first.value_source(id) != Some(ValueSource::CommandLine)
        {
            continue;
        }
        let long = arg.get_long().unwrap_or(id);
        let Some(leaf_id) = id_of(leaf_cmd, long) else {
            return Err(CliError::invalid(
                "USAGE",
                format!("--{long} is not an option of `baton {}`", path.join(" ")),
            )
            .into());
        };
        if leaf_m.value_source(&leaf_id) == Some(ValueSource::CommandLine) {
            continue;
        }
        for v in first.get_raw(id).into_iter().flatten() {
            let mut token = OsString::from(format!("--{long}="));
            token.push(v);
            insert.push(token);
        }
    }
    if insert.is_empty() {
        return Ok(argv);
    }
    let at = leaf_token_index(base, &argv, path).ok_or_else(|| {
        CliError::invalid("USAGE", "cannot find the subcommand on the command line")
    })?;
    argv.splice(at + 1..at + 1, insert);
    Ok(argv)
}

/// Where the last subcommand name of `path` is in `argv`.
fn leaf_token_index(root: &Command, argv: &[OsString], path: &[String]) -> Option<usize> {
    let mut cmd = root.clone();
    cmd.build();
    let mut cmd = &cmd;
    let mut depth = 0;
    let mut i = 1;
    while i < argv.len() {
        let tok = argv[i].to_string_lossy();
        if tok == "--" {
            return None;
        }
        let takes_value = |a: &Arg| a.get_action().takes_values();
        if let Some(long) = tok.strip_prefix("--") {
            if !long.contains('=')
                && cmd
                    .get_arguments()
                    .find(|a| a.get_long() == Some(long))
                    .is_some_and(takes_value)
            {
                i += 1;
            }
        } else if let Some(short) = tok.strip_prefix('-').filter(|s| !s.is_empty()) {
            let c = short.chars().next()?;
            if short.len() == 1
                && cmd
                    .get_arguments()
                    .find(|a| a.get_short() == Some(c))
                    .is_some_and(takes_value)
            {
                i += 1;
            }
        } else if let Some(sub) = cmd.find_subcommand(tok.as_ref()) {
            if sub.get_name() != path.get(depth)? {
                return None;
            }
            depth += 1;
            if depth == path.len() {
                return Some(i);
            }
            cmd = sub;
        }
        i += 1;
    }
    None
}

/// The connection values of the context in use: the one named by `--context`
/// / `BATON_CONTEXT`, else the current one, if any.
fn context_layer(
    leaf_m: &ArgMatches,
    env: EnvLookup<'_>,
) -> Result<Vec<(String, String, Source)>, CliError> {
    let named = leaf_m.get_one::<String>(CONTEXT_ARG).cloned();
    let file = match contexts::store_path(env) {
        Ok(f) => f,
        // Nowhere to keep contexts: none is current, and naming one is an error.
        Err(_) if named.is_none() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let store = contexts::Store::load(&file)?;
    let Some(name) = named.or_else(|| store.current.clone()) else {
        return Ok(Vec::new());
    };
    let ctx = store.get(&name, &file)?;
    let source = Source::Context(name.clone());
    let mut out: Vec<_> = ctx
        .values()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v, source.clone()))
        .collect();
    out.push((CONTEXT_ARG.to_owned(), name, source));
    Ok(out)
}

/// The values of a config file for the command `leaf`, checked against its
/// arguments. A key no command of `baton` takes is an error; so is a key
/// this command does not take when `strict` (the daemons' files, see
/// [`DAEMONS`], are theirs alone; one file may serve several other commands).
fn file_layer(
    root: &Command,
    leaf: &Command,
    file: &Path,
    text: &str,
    strict: bool,
) -> Result<Vec<(String, Vec<String>)>, CliError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        CliError::invalid(
            "CONFIG_FILE_INVALID",
            format!("{}: {}", file.display(), e.to_string().trim_end()),
        )
    })?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let at = || match line_of(text, key) {
            Some(n) => format!("{}:{n}", file.display()),
            None => file.display().to_string(),
        };
        let Some(arg) = leaf
            .get_arguments()
            .find(|a| configurable(a) && a.get_long() == Some(key.as_str()))
        else {
            if strict || !any_command_takes(root, key) {
                return Err(CliError::invalid(
                    "CONFIG_UNKNOWN_KEY",
                    format!(
                        "{}: unknown key `{key}`: `baton {}` has no option --{key}",
                        at(),
                        leaf.get_name()
                    ),
                ));
            }
            continue;
        };
        let bad =
            |what: &str| CliError::invalid("CONFIG_BAD_VALUE", format!("{}: `{key}` {what}", at()));
        let many = matches!(arg.get_action(), ArgAction::Append);
        let values = match value {
            toml::Value::Array(items) if many => items
                .iter()
                .map(|v| scalar(v).ok_or_else(|| bad("must be a list of strings or numbers")))
                .collect::<Result<Vec<_>, _>>()?,
            toml::Value::Array(_) => return Err(bad("takes one value, not a list")),
            toml::Value::Boolean(_) | toml::Value::String(_) if is_flag(arg) => {
                vec![scalar(value).unwrap_or_default()]
            }
            _ if is_flag(arg) => return Err(bad("is a flag: write true or false")),
            v => vec![scalar(v).ok_or_else(|| bad("must be a string, a number or a boolean"))?],
        };
        out.push((key.clone(), values));
    }
    Ok(out)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

fn any_command_takes(cmd: &Command, key: &str) -> bool {
    cmd.get_arguments()
        .any(|a| configurable(a) && a.get_long() == Some(key))
        || cmd.get_subcommands().any(|s| any_command_takes(s, key))
}

/// The 1-based line where `key` is set at the top of a TOML text, if found.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix(key)
                .or_else(|| l.strip_prefix(&format!("\"{key}\"")));
            rest.is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

fn settings_of(
    leaf: &Command,
    m: &ArgMatches,
    layered: &BTreeMap<String, (Vec<String>, Source)>,
) -> Vec<Setting> {
    leaf.get_arguments()
        .filter(|a| configurable(a))
        .map(|a| {
            let id = a.get_id().as_str();
            let key = a.get_long().unwrap_or(id).to_owned();
            let source = match m.value_source(id) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Env(
                    a.get_env()
                        .map(|e| e.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                _ => layered
                    .get(&key)
                    .map(|(_, s)| s.clone())
                    .unwrap_or(Source::Default),
            };
            let secret = a.is_hide_env_values_set();
            // Secrets never leave this function: a token is `<set>`, a
            // package parameter (it may be a sensitive one) `NAME=<set>`.
            let values = m.get_raw(id).map(|vs| {
                vs.map(|v| {
                    let v = v.to_string_lossy();
                    if secret {
                        SECRET_SHOWN_AS.to_owned()
                    } else if key == "param" {
                        let name = v.split_once('=').map_or(v.as_ref(), |(n, _)| n);
                        format!("{name}={SECRET_SHOWN_AS}")
                    } else {
                        v.into_owned()
                    }
                })
                .collect::<Vec<_>>()
            });
            Setting {
                key,
                values,
                is_flag: is_flag(a),
                is_list: matches!(a.get_action(), ArgAction::Append),
                secret,
                source,
            }
        })
        .collect()
}

/// The settings as TOML, one line each with its source after it: a valid
/// config file. Secret values are shown as `<set>`.
pub fn render(path: &[String], settings: &[Setting]) -> String {
    let mut out = format!(
        "# effective settings of `baton {}`: defaults < context < --config file < environment < flags\n",
        path.join(" ")
    );
    for s in settings {
        let quote = |v: &str| {
            if s.is_flag || v.parse::<i64>().is_ok() {
                v.to_owned()
            } else {
                toml::Value::String(v.to_owned()).to_string()
            }
        };
        let line = match &s.values {
            None => format!("# {} is not set", s.key),
            Some(_) if s.secret => format!("{} = \"{SECRET_SHOWN_AS}\"", s.key),
            Some(vs) if vs.len() == 1 && !s.is_list => format!("{} = {}", s.key, quote(&vs[0])),
            Some(vs) => format!(
                "{} = [{}]",
                s.key,
                vs.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ")
            ),
        };
        out += &format!("{line:<48}  # {}\n", s.source);
    }
    out
}

#[cfg(test)]
mod tests;
