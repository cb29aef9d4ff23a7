//! `baton`: the command line of Baton — daemons (`coordinator`, `agent`),
//! client commands (`run`, `exec`, `agents`, `validate`) and `demo`.
//!
//! Errors print as `error[CODE]: message` on stderr; exit codes are listed in
//! [`error`] and in `docs/errors.md`.

mod bundle;
mod client;
mod cmd;
mod error;
mod local_cluster;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::CliError;

/// Baton runs parent packages on a coordinator and spreads their child
/// packages over agents on other machines.
#[derive(Debug, Parser)]
#[command(name = "baton", version, propagate_version = true)]
#[command(
    after_help = "Start here:\n  baton demo                      run the example fan-out on local agents\n  baton coordinator               serve a coordinator\n  baton agent --coordinator URL   join a machine to the fleet\n  baton run FILE --wait           run a parent package\n\nLogs go to stderr; set BATON_LOG (e.g. debug, or baton_coordinator=debug)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
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

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
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
        Cmd::Role(c) => cmd::roles::run(c).await,
        Cmd::Whoami(a) => cmd::roles::whoami(a).await,
        // Handled in `main`, before the runtime's threads start.
        Cmd::AgentWatchdog => Ok(baton_agent::watchdog::main()),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            // Into a buffer first: clap_complete panics on a write error, and a
            // closed pipe (`| head`) is not one worth a panic.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "baton", &mut script);
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
    let cli = Cli::parse();
    let daemon = matches!(
        cli.cmd,
        Cmd::Coordinator(_) | Cmd::Agent(_) | Cmd::AgentWatchdog
    );
    init_tracing(if daemon { "info" } else { "warn" });
    if let Cmd::AgentWatchdog = cli.cmd {
        // Single-threaded: the signals it blocks must be blocked in every thread.
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
    match runtime.block_on(dispatch(cli.cmd)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error[{}]: {}", e.code, e.message);
            ExitCode::from(e.exit)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn completions_cover_every_command() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut super::Cli::command(),
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
