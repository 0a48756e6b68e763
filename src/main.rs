//! The `tap-kpis` command line: Singer tap conventions (`--config`, `--state`, `--catalog`,
//! `--discover`, `--about`) and errors reported in one line on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

use tap_kpis::catalog::{self, Selections};
use tap_kpis::config::{self, SETTINGS_SCHEMA};
use tap_kpis::state::StateText;
use tap_kpis::streams::STREAMS;
use tap_kpis::sync;

/// mimalloc: the run allocates millions of small, short-lived values on two threads, where it is
/// markedly faster than the system allocator and returns memory more readily.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Capabilities declared to Meltano.
const CAPABILITIES: [&str; 4] = ["catalog", "discover", "state", "about"];

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AboutFormat {
    Json,
    Markdown,
    Text,
}

/// Commands besides the Singer tap itself.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write a synthetic Meltano fleet's telemetry (capture envelopes, gzip) into a directory.
    Generate(tap_kpis::generate::GenerateArgs),
    /// Receive a Meltano fleet's telemetry (Snowplow tp2 POSTs and GET /i) into capture files, durably.
    Collect(tap_kpis::collector::CollectArgs),
    /// Draw the KPI tables (DuckDB, PostgreSQL or the tap's Singer output) as one self-contained HTML page.
    Report(tap_kpis::report::ReportArgs),
}

/// Singer tap: Meltano CLI telemetry in, Meltano's product KPIs out.
#[derive(Debug, Parser)]
#[command(
    name = "tap-kpis",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Settings file (JSON); several may be given, later ones win.
    #[arg(long, value_name = "FILE")]
    config: Vec<PathBuf>,
    /// Singer state from a previous run.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Singer catalog selecting streams and fields (`--properties` is accepted too).
    #[arg(long, visible_alias = "properties", value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// Print the catalog of every stream and exit.
    #[arg(long)]
    discover: bool,
    /// Print what the tap is and its settings, and exit.
    #[arg(long)]
    about: bool,
    /// Format of `--about`.
    #[arg(long, value_enum, default_value = "text")]
    format: AboutFormat,
}

fn about(format: AboutFormat) -> Result<String> {
    let settings: Value = serde_json::from_str(SETTINGS_SCHEMA)?;
    let info = json!({
        "name": "tap-kpis",
        "description": "Meltano CLI telemetry (Snowplow) in, Meltano's product KPIs out.",
        "version": env!("CARGO_PKG_VERSION"),
        "sdk_version": null,
        "supported_python_versions": null,
        "capabilities": CAPABILITIES,
        "settings": settings,
        "streams": STREAMS.iter().map(|s| json!({"name": s.name, "key_properties": s.key_properties})).collect::<Vec<_>>(),
    });
    Ok(match format {
        AboutFormat::Json => serde_json::to_string_pretty(&info)?,
        AboutFormat::Markdown | AboutFormat::Text => about_markdown(&info),
    })
}

fn about_markdown(info: &Value) -> String {
    let mut md = format!(
        "# tap-kpis\n\n{}\n\nVersion: {}\n\n",
        info["description"].as_str().unwrap_or(""),
        info["version"].as_str().unwrap_or("")
    );
    md.push_str("## Capabilities\n\n");
    for c in CAPABILITIES {
        md.push_str(&format!("* `{c}`\n"));
    }
    md.push_str(
        "\n## Settings\n\n| Setting | Required | Default | Description |\n|:--|:--:|:--:|:--|\n",
    );
    let required: Vec<&str> = info["settings"]["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(props) = info["settings"]["properties"].as_object() {
        for (name, p) in props {
            let default = p.get("default").map(|d| d.to_string()).unwrap_or_default();
            md.push_str(&format!(
                "| {name} | {} | {default} | {} |\n",
                if required.contains(&name.as_str()) {
                    "True"
                } else {
                    "False"
                },
                p["description"].as_str().unwrap_or("").replace('|', "\\|")
            ));
        }
    }
    md.push_str("\n## Streams\n\n| Stream | Key properties | Description |\n|:--|:--|:--|\n");
    for s in STREAMS {
        let schema = s.schema_value();
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            s.name,
            s.key_properties.join(", "),
            schema["description"].as_str().unwrap_or("")
        ));
    }
    md
}

fn run(cli: Cli) -> Result<()> {
    if let Some(Command::Collect(args)) = &cli.command {
        tap_kpis::collector::run(args)?;
        return Ok(());
    }
    if let Some(Command::Report(args)) = &cli.command {
        let s = tap_kpis::report::run(args)?;
        eprintln!(
            "wrote {} ({:.0} kB): {} days, {} months, {} health alarm(s); open it in a browser",
            args.out.display(),
            s.bytes as f64 / 1e3,
            s.days,
            s.months,
            s.alarms
        );
        return Ok(());
    }
    if let Some(Command::Generate(args)) = &cli.command {
        let s = tap_kpis::generate::generate(args)?;
        eprintln!(
            "wrote {} files to {}: {} projects, {} executions, {} events, {} requests, {:.1} MB",
            s.files,
            args.out.display(),
            s.projects,
            s.executions,
            s.events,
            s.requests,
            s.bytes as f64 / 1e6
        );
        return Ok(());
    }
    if cli.about {
        println!("{}", about(cli.format)?);
        return Ok(());
    }
    if cli.discover {
        println!("{}", serde_json::to_string_pretty(&catalog::discover())?);
        return Ok(());
    }
    if cli.config.is_empty() {
        anyhow::bail!("a sync needs --config FILE (settings: sources, as_of, strict); see --about");
    }
    let raw = config::read_files(&cli.config)?;
    let config = config::validate(&raw)?;
    let selections = match &cli.catalog {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read catalog {}", path.display()))?;
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("catalog {} is not JSON", path.display()))?;
            Selections::from_catalog(&value)
                .with_context(|| format!("catalog {}", path.display()))?
        }
        None => Selections::all(),
    };
    let state_text = match &cli.state {
        Some(path) => {
            // most runs given a state are short: see `memory`
            tap_kpis::memory::keep_freed_memory();
            let text = StateText::read(path)
                .with_context(|| format!("cannot read state {}", path.display()))?;
            Some((path, text))
        }
        None => None,
    };
    let state = match &state_text {
        Some((path, text)) => {
            let reading = std::time::Instant::now();
            let fields = text
                .fields()
                .with_context(|| format!("state {} is not JSON", path.display()))?;
            tracing::debug!(
                "state read: {} bytes, parsed in {:.3}s",
                text.as_str().len(),
                reading.elapsed().as_secs_f64()
            );
            Some(fields)
        }
        None => None,
    };
    sync::run(&config, &selections, state, singer_output()?)?;
    Ok(())
}

/// Where Singer messages go: standard output as a plain file. The writer hands it large pieces (64
/// KiB of records, a state of many megabytes), and `Stdout`'s line buffering would search each piece
/// for its last line end.
#[cfg(unix)]
fn singer_output() -> std::io::Result<std::fs::File> {
    use std::os::fd::AsFd;
    Ok(std::fs::File::from(
        std::io::stdout().as_fd().try_clone_to_owned()?,
    ))
}

/// Where Singer messages go: standard output.
#[cfg(not(unix))]
fn singer_output() -> std::io::Result<std::io::StdoutLock<'static>> {
    Ok(std::io::stdout().lock())
}

fn main() -> ExitCode {
    tap_kpis::memory::avoid_huge_pages();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TAP_KPIS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        // what the run built is left for the system to take back as the process ends
        Ok(()) => tap_kpis::memory::exit_now(0),
        Err(e) => {
            eprintln!("tap-kpis: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
