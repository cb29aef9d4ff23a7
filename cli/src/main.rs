//! `baton`: the command line of Baton — daemons (`coordinator`, `agent`),
//! client commands (`run`, `exec`, `agents`, `validate`) and `demo`.
//!
//! Errors print as `error[CODE]: message` on stderr; exit codes are listed in
//! [`error`] and in `docs/errors.md`. Results go through [`output`]'s
//! `outln!`, never `println!` (which panics on a closed pipe).

#![deny(clippy::print_stdout)]

mod bundle;
mod client;
mod cmd;
mod config;
mod contexts;
mod env_lookup;
mod error;
mod local_cluster;
mod metrics_http;
mod output;
mod private_dir;
mod proc_cpu;
mod process_metrics;
mod telemetry;

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::error::CliError;

/// Baton runs parent packages on a coordinator and spreads their child
/// packages over agents on other machines.
#[derive(Debug, Parser)]
#[command(name = "baton", version, propagate_version = true)]
#[command(
    after_help = "Start here:\n  baton demo                      run the example fan-out on local agents\n  baton coordinator               serve a coordinator\n  baton agent --coordinator URL   join a machine to the fleet\n  baton run FILE --wait           run a parent package\n\nLogs go to stderr; set BATON_LOG (e.g. debug, or baton_coordinator=debug)."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(flatten)]
    connection: RootConnection,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options of every command, before or after the subcommand.
#[derive(Debug, clap::Args)]
#[allow(dead_code)] // read from the ArgMatches by `config::parse`
struct GlobalOpts {
    /// Read options from this TOML file (keys are long flag names:
    /// `data-dir = "/var/lib/baton"`, `label = ["pool=etl"]`). Layers:
    /// defaults < context < file < BATON_* environment < flags.
    #[arg(
        long = "config",
        value_name = "FILE",
        global = true,
        help_heading = "Configuration"
    )]
    config: Option<PathBuf>,
    /// Print the effective settings of the command, with the source of each
    /// (secrets shown as `<set>`), and exit without running it.
    #[arg(long = "print-config", global = true, help_heading = "Configuration")]
    print_config: bool,
    /// How log lines are written to stderr: `text` (one line each, colour only at
    /// a terminal) or `json` (one JSON object per line: timestamp, level, fields,
    /// and the span a line belongs to, for a log collector).
    #[arg(
        long = "log-format",
        value_name = "FORMAT",
        env = "BATON_LOG_FORMAT",
        global = true,
        default_value = "text",
        help_heading = "Configuration"
    )]
    log_format: LogFormat,
    /// Export traces over OTLP/gRPC to this collector (e.g.
    /// `http://localhost:4317`): the coordinator, agents and client commands
    /// each as their own service. Unset: no spans are recorded at all.
    #[arg(
        long = "otlp-endpoint",
        value_name = "URL",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        global = true,
        help_heading = "Configuration"
    )]
    otlp_endpoint: Option<String>,
}

/// The `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Connection options written before the subcommand (`baton --coordinator URL
/// exec list`): they go to the client command, as if written after it.
#[derive(Debug, clap::Args)]
#[allow(dead_code)] // moved to the subcommand by `config::parse`
#[command(next_help_heading = "Connection (client commands; also accepted after the subcommand)")]
struct RootConnection {
    /// Coordinator URL.
    #[arg(long = "coordinator", value_name = "URL")]
    coordinator: Option<String>,
    /// Directory with the client identity (ca.pem, tls.pem, tls.key).
    #[arg(long = "tls-dir", value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// API token instead of a client certificate (prefer --token-file or BATON_TOKEN).
    #[arg(long = "token", value_name = "TOKEN")]
    token: Option<String>,
    /// File holding an API token.
    #[arg(long = "token-file", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Use this context instead of the current one (`baton context list`).
    #[arg(long = "context", value_name = "NAME")]
    context: Option<String>,
}

/// The command tree as it is parsed: every command that prints a result
/// takes `-o` (see [`config::decorate`]).
fn command() -> clap::Command {
    config::decorate(Cli::command())
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the example fan-out on an embedded coordinator and local agents.
    Demo(cmd::demo::DemoArgs),
    /// Measure Baton on this machine: local coordinator and agents run a workload.
    Bench(cmd::bench::BenchArgs),
    /// Run a coordinator (catalog, executions, placement, dispatch).
    Coordinator(cmd::daemons::CoordinatorArgs),
    /// Run an agent that executes child jobs on this machine.
    Agent(cmd::daemons::AgentArgs),
    /// Start an execution of a parent package file, or of a catalog package.
    Run(cmd::run::RunArgs),
    /// Inspect executions.
    #[command(subcommand)]
    Exec(cmd::exec::ExecCmd),
    /// The catalog's packages: deploy versions, list, show, move, remove.
    #[command(subcommand)]
    Package(cmd::package::PackageCmd),
    /// The catalog's folders: create, list, rename, remove.
    #[command(subcommand)]
    Folder(cmd::folder::FolderCmd),
    /// Inspect the fleet.
    #[command(subcommand)]
    Agents(cmd::agents::AgentsCmd),
    /// Check package files without running them.
    Validate(cmd::validate::ValidateArgs),
    /// Manage the private CA and certificates.
    #[command(subcommand)]
    Certs(cmd::certs::CertsCmd),
    /// Enrolment tokens for agents, API tokens for principals.
    #[command(subcommand)]
    Token(cmd::token::TokenCmd),
    /// Named connection settings (coordinator, identity), like kubectl's contexts.
    #[command(subcommand)]
    Context(cmd::context::ContextCmd),
    /// Permissions of principals on folders.
    #[command(subcommand)]
    Role(cmd::roles::RoleCmd),
    /// Who the coordinator takes you for, and what you may do.
    Whoami(cmd::roles::WhoAmIArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  baton completions bash > /etc/bash_completion.d/baton\n  baton completions zsh > \"${fpath[1]}/_baton\"\n  baton completions fish > ~/.config/fish/completions/baton.fish"
    )]
    Completions { shell: clap_complete::Shell },
    /// Internal: the process watchdog `baton agent` starts (reads the agent's
    /// records on stdin; at end of file, kills the job process groups left).
    #[command(hide = true)]
    AgentWatchdog,
}

async fn dispatch(cmd: Cmd) -> Result<u8, CliError> {
    match cmd {
        Cmd::Demo(a) => cmd::demo::run(a).await,
        Cmd::Bench(a) => cmd::bench::run(a).await,
        Cmd::Coordinator(a) => cmd::daemons::coordinator(a).await.map(|()| 0),
        Cmd::Agent(a) => cmd::daemons::agent(a).await.map(|()| 0),
        Cmd::Run(a) => cmd::run::run(a).await,
        Cmd::Exec(c) => cmd::exec::run(c).await,
        Cmd::Agents(c) => cmd::agents::run(c).await,
        Cmd::Validate(a) => cmd::validate::run(a),
        Cmd::Certs(c) => cmd::certs::run(c).await,
        Cmd::Token(c) => cmd::token::run(c).await,
        Cmd::Package(c) => cmd::package::run(c).await,
        Cmd::Folder(c) => cmd::folder::run(c).await,
        Cmd::Context(c) => cmd::context::run(c),
        Cmd::Role(c) => cmd::roles::run(c).await,
        Cmd::Whoami(a) => cmd::roles::whoami(a).await,
        // Handled in `main`, before the runtime's threads start.
        Cmd::AgentWatchdog => Ok(baton_agent::watchdog::main()),
        Cmd::Completions { shell } => {
            use std::io::Write;
            // Into a buffer first: clap_complete panics on a write error, and a
            // closed pipe (`| head`) is not one worth a panic.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command(), "baton", &mut script);
            match std::io::stdout().lock().write_all(&script) {
                Ok(()) => Ok(0),
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
                Err(e) => Err(CliError::other("IO_FAILED", e.to_string())),
            }
        }
    }
}

fn main() -> ExitCode {
    // One crypto provider (ring) for every TLS connection of the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = |k: &str| std::env::var_os(k);
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let deprecated_format = argv
        .iter()
        .any(|a| a == "--format" || a.to_string_lossy().starts_with("--format="));
    let parsed = match config::parse(command(), argv, &env) {
        Ok(p) => p,
        Err(config::ParseError::Clap(e)) => e.exit(),
        Err(config::ParseError::Cli(e)) => {
            eprintln!("error[{}]: {}", e.code, e.message);
            return ExitCode::from(e.exit);
        }
    };
    if deprecated_format && parsed.path == ["exec", "rows"] {
        eprintln!("warning: `--format` is deprecated: write `-o` / `--output`");
    }
    if parsed.print_config {
        crate::output::out!("{}", config::render(&parsed.path, &parsed.settings));
        return ExitCode::SUCCESS;
    }
    client::set_settings_from_context(
        parsed.settings.iter().any(|s| {
            s.key != config::CONTEXT_ARG && matches!(s.source, config::Source::Context(_))
        }),
    );
    let cli = match Cli::from_arg_matches(&parsed.matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let daemon = matches!(
        cli.cmd,
        Cmd::Coordinator(_) | Cmd::Agent(_) | Cmd::AgentWatchdog
    );
    let default_filter = if daemon { "info" } else { "warn" };
    let format = match cli.global.log_format {
        LogFormat::Text => telemetry::LogFormat::Text,
        LogFormat::Json => telemetry::LogFormat::Json,
    };
    if let Cmd::AgentWatchdog = cli.cmd {
        // Single-threaded (no runtime, no exporter): the signals it blocks
        // must be blocked in every thread.
        let _ = telemetry::init(default_filter, format, None, "baton-agent");
        if let Err(e) = cmd::daemons::refuse_renamed(&parsed.path, &parsed.settings, &env) {
            eprintln!("error[{}]: {}", e.code, e.message);
            return ExitCode::from(e.exit);
        }
        return ExitCode::from(baton_agent::watchdog::main());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error[RUNTIME]: cannot start the async runtime: {e}");
            return ExitCode::from(error::EXIT_OTHER);
        }
    };
    let service = match cli.cmd {
        Cmd::Coordinator(_) => "baton-coordinator",
        Cmd::Agent(_) => "baton-agent",
        _ => "baton-cli",
    };
    // The exporter's connection lives on the runtime: made inside it.
    let telemetry = {
        let _rt = runtime.enter();
        telemetry::init(
            default_filter,
            format,
            cli.global.otlp_endpoint.as_deref(),
            service,
        )
    };
    let telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error[INVALID_OTLP_ENDPOINT]: {e}");
            return ExitCode::from(error::EXIT_INVALID);
        }
    };
    // After tracing: an old name that is set but overridden is warned about.
    if let Err(e) = cmd::daemons::refuse_renamed(&parsed.path, &parsed.settings, &env) {
        eprintln!("error[{}]: {}", e.code, e.message);
        return ExitCode::from(e.exit);
    }
    let result = runtime.block_on(dispatch(cli.cmd));
    if telemetry.exporting() {
        // The buffered spans go out before the process does; the provider's
        // shutdown blocks, so off the runtime's worker threads.
        let _ = runtime.block_on(runtime.spawn_blocking(move || telemetry.shutdown()));
    }
    if let Some(e) = output::stdout_error() {
        // A full disk or a broken file: the results are not all there.
        eprintln!("error[IO_FAILED]: cannot write the output: {e}");
        return ExitCode::from(error::EXIT_OTHER);
    }
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error[{}]: {}", e.code, e.message);
            ExitCode::from(e.exit)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        super::command().debug_assert();
    }

    /// One output flag everywhere: every command with `--output` takes `-o`.
    #[test]
    fn every_output_flag_has_the_short_o() {
        fn walk(cmd: &clap::Command, path: &str, found: &mut usize) {
            for a in cmd
                .get_arguments()
                .filter(|a| a.get_long() == Some("output"))
            {
                assert_eq!(a.get_short(), Some('o'), "`{path}` --output has no -o");
                *found += 1;
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), found);
            }
        }
        let mut found = 0;
        walk(&super::command(), "baton", &mut found);
        assert!(found > 30, "only {found} commands take --output");
    }

    #[test]
    fn completions_cover_every_command() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut super::command(),
            "baton",
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        for cmd in [
            "run",
            "exec",
            "agents",
            "token",
            "role",
            "whoami",
            "certs",
            "completions",
        ] {
            assert!(text.contains(cmd), "no completion for {cmd}");
        }
    }
}
