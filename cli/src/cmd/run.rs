//! `baton run`: start an execution, and optionally wait for it.

use std::path::PathBuf;
use std::time::Instant;

use baton_proto as pb;
use tracing::Instrument;

use super::follow::{announce, exit_of, print_summary, wait};
use super::run_local::{LocalRun, run_local};
use crate::bundle;
use crate::client::CoordinatorOpt;
use crate::error::CliError;
use crate::output::{Format, errln, outln};

/// Start an execution of a parent package.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  baton run examples/fanout/parent.toml -p children=500 --wait\n  baton run nightly.toml -p date=2026-11-21 --follow --output json\n  baton run --package /etl/load -p children=10 --wait          # the latest version in the catalog\n  baton run --package /etl/load --version 3",
    disable_version_flag = true
)]
pub struct RunArgs {
    /// The parent package file; child packages are read relative to it.
    #[arg(required_unless_present = "package", conflicts_with = "package")]
    pub file: Option<PathBuf>,
    /// A catalog package to run instead of a file: FOLDER/NAME (`baton package list`).
    /// The execution belongs to its folder; starting needs `execute` there.
    #[arg(long, value_name = "FOLDER/NAME")]
    pub package: Option<String>,
    /// The version of --package to run (default: the latest).
    #[arg(long)]
    pub version: Option<u32>,
    /// Parameter override, repeatable: -p name=value.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Parameter overrides from a JSON object file: {"day": "2026-11-30", "shards": 8,
    /// "regions": ["eu", "us"]}; -p given on the command line wins over the file.
    #[arg(long = "params", value_name = "FILE.json")]
    pub params_file: Option<PathBuf>,
    /// Wait for the end; the exit code is the execution's result (0 succeeded, 1 not).
    /// The execution id comes first, at once: on stderr, or with --output json as a
    /// first line `{"event":"started","execution_id":…}` before the summary line.
    /// An interrupted wait is taken up again with `baton exec wait ID`.
    #[arg(long)]
    pub wait: bool,
    /// Like --wait, and print progress lines even when not on a terminal.
    #[arg(long)]
    pub follow: bool,
    #[arg(long, value_enum, default_value = "human")]
    pub output: Format,
    /// Catalog folder the execution of a file belongs to (default /); it must
    /// exist (`baton folder create`), and starting needs `execute` there.
    #[arg(long, conflicts_with = "package")]
    pub folder: Option<String>,
    /// How children are placed: least-loaded, round-robin or spread:LABEL
    /// (default: the coordinator's --placement).
    #[arg(long, value_name = "STRATEGY")]
    pub placement: Option<baton_coordinator::placement::Strategy>,
    /// Only agents with this label get children, repeatable (all must match): --require zone=eu.
    #[arg(long = "require", value_name = "KEY=VALUE")]
    pub require: Vec<String>,
    /// Only these agents get children: --pin etl-01,etl-02.
    #[arg(long, value_name = "AGENT[,AGENT]", value_delimiter = ',')]
    pub pin: Vec<String>,
    /// Slots each child occupies on its agent (a child that needs 4 CPUs: 4).
    #[arg(long, value_name = "N")]
    pub slots_per_child: Option<u32>,
    /// Most children of this execution dispatched or running at once.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Run on this machine without a coordinator: an embedded coordinator and
    /// one local agent in a temporary directory, for this run only (implies
    /// --wait). Debug a child package on its own: `baton run child.toml --local -p shard=3`.
    #[arg(long, conflicts_with_all = ["package", "folder", "pin"])]
    pub local: bool,
    /// With --local: slots of the local agent (default: the number of CPUs).
    #[arg(long, value_name = "N", requires = "local")]
    pub local_slots: Option<u32>,
    /// With --local: keep the temporary directory (store, agent logs and job
    /// directories) even when the run succeeds (it is kept when it fails).
    #[arg(long, requires = "local")]
    pub keep: bool,
    #[command(flatten)]
    pub coordinator: CoordinatorOpt,
}

pub async fn run(args: RunArgs) -> Result<u8, CliError> {
    if args.version.is_some() && args.package.is_none() {
        return Err(CliError::invalid(
            "USAGE",
            "--version picks a version of a catalog package: use it with --package FOLDER/NAME",
        ));
    }
    let mut params = match &args.params_file {
        Some(path) => bundle::params_file(path)?,
        None => Default::default(),
    };
    params.extend(bundle::params(&args.params)?);
    let require = baton_coordinator::placement::parse_require(&args.require)
        .map_err(|e| CliError::invalid("USAGE", e))?;
    let mut request = match (&args.file, &args.package) {
        (Some(file), _) => {
            let bundle = bundle::load(file)?;
            pb::StartExecutionRequest {
                bundle: Some(pb::PackageBundle {
                    root: bundle.root,
                    files: bundle.files.into_iter().collect(),
                }),
                parameters: params.into_iter().collect(),
                folder: args.folder.clone().unwrap_or_else(|| "/".into()),
                ..Default::default()
            }
        }
        (None, package) => pb::StartExecutionRequest {
            parameters: params.into_iter().collect(),
            package: package.clone().unwrap_or_default(),
            version: args.version.unwrap_or(0),
            ..Default::default()
        },
    };
    request.placement = args
        .placement
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    request.require = require.into_iter().collect();
    request.pin = args.pin.clone();
    request.slots_per_child = args.slots_per_child.unwrap_or(0);
    request.max_in_flight = args.max_in_flight.unwrap_or(0);
    if args.local {
        let local = LocalRun {
            slots: args.local_slots,
            output: args.output,
            follow: args.follow,
            keep: args.keep,
        };
        return run_local(&local, request).await;
    }
    let mut client = args.coordinator.connect().await?;
    let started = Instant::now();
    // With traces exported, the execution's trace starts under this span.
    let span = tracing::info_span!("baton.run");
    let mut call = tonic::Request::new(request);
    if let Some(tp) = span.in_scope(crate::telemetry::current_traceparent)
        && let Ok(value) = tp.parse()
    {
        call.metadata_mut().insert("traceparent", value);
    }
    let response = client
        .start_execution(call)
        .instrument(span)
        .await
        .map_err(|s| args.coordinator.status(s))?
        .into_inner();
    let id = response.execution_id;
    if !(args.wait || args.follow) {
        match args.output {
            Format::Json if response.package_version > 0 => outln!(
                "{}",
                serde_json::json!({
                    "execution_id": id,
                    "package": args.package,
                    "version": response.package_version,
                    "hash": response.package_hash,
                })
            ),
            Format::Json => outln!("{}", serde_json::json!({ "execution_id": id })),
            Format::Human => {
                outln!("{id}");
                if response.package_version > 0 {
                    errln!(
                        "started version {} of {}",
                        response.package_version,
                        args.package.as_deref().unwrap_or_default()
                    );
                }
                errln!(
                    "started; `baton exec watch {id}` follows it, `baton exec wait {id}` waits for its end"
                );
            }
        }
        return Ok(0);
    }
    // The id first, before any wait: an interrupted wait can be taken up
    // again with `baton exec wait ID` while the execution goes on.
    let version = (response.package_version > 0).then(|| {
        (
            args.package.clone().unwrap_or_default(),
            response.package_version,
            response.package_hash.clone(),
        )
    });
    announce(&id, args.output, version.as_ref());
    let summary = wait(&mut client, &args.coordinator, &id, args.follow).await?;
    let wall = started.elapsed().as_secs_f64();
    print_summary(&summary, Some(wall), args.output);
    Ok(exit_of(&summary))
}
