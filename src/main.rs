//! The `playrelay` binary: parse the command line, load the config, call the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use playrelay::telemetry::{init_logging, LogFormat};
use playrelay::{config, RelayOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "playrelay",
    version,
    about = "Relay normalized player events to analytics vendors"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format on stderr.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// The routing file.
    #[arg(long, short, default_value = "routes.toml")]
    config: PathBuf,
    /// Do not reload when the routing file changes (SIGHUP still reloads).
    #[arg(long)]
    no_watch: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Run(RunArgs),
    /// Check a routing file; prints every error with file, line and field.
    Validate {
        /// The routing file to check.
        file: PathBuf,
    },
    /// Print the exact requests a destination would send for events read from stdin
    /// (NDJSON or a JSON array); secrets are shown as ***.
    Translate {
        #[arg(long, short, default_value = "routes.toml")]
        config: PathBuf,
        #[arg(long, short)]
        destination: String,
        /// The send time (RFC 3339) instead of now: GA4 refuses events over 72 h old.
        #[arg(long)]
        sent_at: Option<String>,
    },
    /// Run a routing file's test cases: which destinations get each event, and values the
    /// vendor bodies must hold. Exit status 1 on any failure.
    Test {
        #[arg(long, short, default_value = "routes.toml")]
        config: PathBuf,
        /// The cases file (TOML; see README).
        cases: PathBuf,
    },
    /// Send a destination's dead letters again through its normal delivery stack.
    Replay {
        /// The routing file that defines the destination.
        #[arg(long, short, default_value = "routes.toml")]
        config: PathBuf,
        /// The destination to send to.
        #[arg(long, short)]
        destination: String,
        /// A dead-letter file (`dead_letter_dir/<destination>.ndjson`).
        dead_letter_file: PathBuf,
    },
    /// Print the JSON Schema (2020-12) of `player-event/1`, generated from the relay's
    /// types (the repo carries it as schema/player-event-1.schema.json).
    Schema,
}

// Events are allocated on one thread and freed on another; glibc malloc spent a fifth
// of the relay's CPU on that (docs/performance.md, "Allocator").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Validate { file }) => return validate(&file),
        Some(Command::Translate {
            config,
            destination,
            sent_at,
        }) => translate(&config, &destination, sent_at.as_deref()),
        Some(Command::Test { config, cases }) => return test_cases(&config, &cases),
        Some(Command::Replay {
            config,
            destination,
            dead_letter_file,
        }) => replay(&config, &destination, &dead_letter_file),
        Some(Command::Schema) => {
            print!("{}", playrelay::event::player_event_schema_json());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("playrelay: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(file: &std::path::Path) -> ExitCode {
    match config::load_file(file) {
        Ok(config) => {
            println!(
                "{}: ok ({} destinations, {} routes)",
                file.display(),
                config.destinations.len(),
                config.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            eprintln!("{}: {} error(s)", file.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}

fn test_cases(config: &Path, cases: &Path) -> ExitCode {
    let config = match config::load_file(config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    match playrelay::cases::run_file(&config, cases) {
        Ok(report) => {
            if let Err(error) = write_stdout(&report.text) {
                eprintln!("playrelay: cannot write the report: {error}");
                return ExitCode::FAILURE;
            }
            if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("playrelay: {error}");
            ExitCode::FAILURE
        }
    }
}

fn translate(config: &Path, destination: &str, sent_at: Option<&str>) -> anyhow::Result<()> {
    let config = config::load_file(config).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let sent_at = match sent_at {
        Some(text) => {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("--sent-at {text:?} is not an RFC 3339 time"))?
        }
        None => playrelay::system_clock()(),
    };
    let mut input = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut input).context("cannot read stdin")?;
    let output = playrelay::preview::preview(&config, destination, &input, sent_at)?;
    write_stdout(&output).context("cannot write to stdout")
}

/// Writes to stdout; a reader that went away (`playrelay translate … | head`) ends the
/// output quietly, as Unix tools do, instead of `print!`'s panic.
fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn replay(config: &Path, destination: &str, file: &Path) -> anyhow::Result<()> {
    let config = config::load_file(config).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let runtime = runtime()?;
    let report = runtime.block_on(playrelay::replay::replay(
        &config,
        destination,
        file,
        playrelay::system_clock(),
    ))?;
    println!(
        "replayed {} records to {destination}: {} delivered, {} failed again, {} dropped by the destination's rules",
        report.records, report.delivered, report.dead_lettered, report.dropped
    );
    if report.dead_lettered > 0 {
        println!("failed again: {}", report.failed_again_file.display());
    }
    for invalid in &report.invalid {
        println!("not replayed: {invalid}");
    }
    if report.delivered as usize == report.records {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of {} records were not delivered",
            report.records - report.delivered as usize,
            report.records
        )
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = config::load_file(&args.config).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        // Registered before start: a SIGHUP must never find the default action (exit).
        let hangups = hangup_signals();
        let running = playrelay::start(config, listener, RelayOptions::default()).await?;
        let reloader = running.reloader();
        let _watcher = if args.no_watch {
            None
        } else {
            let watcher = playrelay::reload::watch_file(
                &args.config,
                reloader.clone(),
                std::time::Duration::from_millis(500),
            )
            .with_context(|| format!("cannot watch {}", args.config.display()))?;
            tracing::info!(file = %args.config.display(), "watching the config file for changes");
            Some(watcher)
        };
        reload_on_sighup(hangups, reloader, args.config.clone());
        shutdown_signal().await;
        let report = running.shutdown().await;
        if !report.drained {
            tracing::warn!("some queued events were not delivered before the drain timeout");
        }
        Ok(())
    })
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

fn hangup_signals() -> Hangups {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: reload by file change only");
                None
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// Reloads the routing file on every SIGHUP.
fn reload_on_sighup(hangups: Hangups, reloader: playrelay::reload::Reloader, path: PathBuf) {
    #[cfg(unix)]
    if let Some(mut hangups) = hangups {
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!(file = %path.display(), "SIGHUP: reloading");
                reloader.reload_file(&path).await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (hangups, reloader, path);
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
