//! A synthetic Meltano fleet: telemetry in exactly the shape of the real captures (capture envelopes of
//! tp2 POST bodies, the same contexts and versions, batching and base64), with project lifecycles, so
//! that tests, the demo and the benchmark see months of realistic North Star numbers, not zeros.
//!
//! Output is a pure function of the arguments: the same seed gives byte-identical files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use chrono::{DateTime, NaiveDate};
use flate2::Compression;
use flate2::write::GzEncoder;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const DAY_MS: i64 = 86_400_000;

/// Arguments of `tap-kpis generate`.
#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Number of projects in the fleet.
    #[arg(long, default_value_t = 200)]
    pub projects: usize,
    /// Number of days of telemetry.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Seed of the random generator: the same seed gives the same files.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory the files are written to (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// First day of the telemetry (UTC).
    #[arg(long, default_value = "2025-01-01")]
    pub start: NaiveDate,
    /// Write plain `.ndjson` files instead of gzip.
    #[arg(long)]
    pub no_gzip: bool,
    /// An outage, `FIRST_DAY:DAYS:FRACTION` (day index from start): that fraction of the projects sends
    /// nothing on those days.
    #[arg(long, value_parser = parse_outage)]
    pub outage: Option<Outage>,
    /// Projects start (run `meltano init`) within the first this many days; default: over all days.
    #[arg(long)]
    pub ramp_days: Option<u32>,
    /// `mixed`: every lifecycle (default); `steady`: only steady schedulers, a fleet whose usage is flat once
    /// onboarded (for watching health metrics).
    #[arg(long, value_enum, default_value = "mixed")]
    pub profile: Profile,
    /// Scales how often projects are active after onboarding (1.0: the default mix; 0.05: a large,
    /// sparse fleet where most projects send a few dozen events a year).
    #[arg(long, default_value_t = 1.0)]
    pub activity: f64,
}

/// The mix of project lifecycles.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Mixed,
    Steady,
}

/// Days on which part of the fleet is silent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outage {
    pub first_day: u32,
    pub days: u32,
    pub fraction: f64,
}

fn parse_outage(text: &str) -> Result<Outage, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad = || format!("expected FIRST_DAY:DAYS:FRACTION, got {text:?}");
    if parts.len() != 3 {
        return Err(bad());
    }
    Ok(Outage {
        first_day: parts[0].parse().map_err(|_| bad())?,
        days: parts[1].parse().map_err(|_| bad())?,
        fraction: parts[2].parse().map_err(|_| bad())?,
    })
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateSummary {
    pub files: usize,
    pub requests: u64,
    pub events: u64,
    pub executions: u64,
    pub projects: usize,
    pub bytes: u64,
}

/// Errors writing the fleet.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GenerateError + '_ {
    move |source| GenerateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a project behaves over its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Steady,
    Heavy,
    Churner,
    Reactivator,
    CiOnly,
    RandomId,
    Ephemeral,
    Tourist,
}

struct Project {
    id: String,
    client: String,
    kind: Kind,
    source: &'static str,
    start_day: u32,
    /// Last active day (exclusive) for churners; pause for reactivators.
    stop_day: u32,
    pause: (u32, u32),
    environments: Vec<&'static str>,
    pipelines: Vec<Vec<&'static str>>,
    runs_per_day: f64,
    active_day_share: f64,
    fail_rate: f64,
    env_context: String,
    opt_out_day: Option<u32>,
}

const EXTRACTORS: [&str; 8] = [
    "tap-github",
    "tap-postgres",
    "tap-salesforce",
    "tap-hubspot",
    "tap-stripe",
    "tap-csv",
    "tap-mysql",
    "tap-smoke-test",
];
const LOADERS: [&str; 5] = [
    "target-snowflake",
    "target-postgres",
    "target-bigquery",
    "target-jsonl",
    "target-duckdb",
];
const UTILITIES: [&str; 4] = ["dbt-postgres", "dbt-snowflake", "airflow", "sqlfluff"];
const ENVIRONMENTS: [&str; 3] = ["dev", "staging", "prod"];

fn sha(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn uuid(rng: &mut ChaCha8Rng) -> String {
    uuid::Builder::from_random_bytes(rng.random::<[u8; 16]>())
        .into_uuid()
        .to_string()
}

/// Serialise like Python's `json.dumps` (", " and ": " separators), as Meltano does.
fn py(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push('{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                py(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// `{"schema": <uri>, "data": <data>}` in Python form, schema first.
fn selfdesc(uri: &str, data: &str) -> String {
    format!("{{\"schema\": \"{uri}\", \"data\": {data}}}")
}

fn py_text(v: &Value) -> String {
    let mut s = String::new();
    py(v, &mut s);
    s
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(text.as_bytes())
}

fn iso(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string())
        .unwrap_or_default()
}

fn plugin_dict(name: &str, category: &str, command: Value) -> Value {
    json!({
        "category": category,
        "name_hash": sha(name),
        "namespace_hash": sha(&name.replace('-', "_")),
        "executable_hash": sha(name),
        "variant_name_hash": sha("meltanolabs"),
        "pip_url_hash": sha(&format!("{name}==1.0")),
        "parent_name_hash": sha(name),
        "command": command,
    })
}

fn category_of(name: &str) -> &'static str {
    if name.starts_with("tap-") {
        "extractors"
    } else if name.starts_with("target-") {
        "loaders"
    } else if name.starts_with("dbt") {
        "transformers"
    } else {
        "utilities"
    }
}

fn new_project(rng: &mut ChaCha8Rng, days: u32, profile: Profile, activity: f64) -> Project {
    let roll = rng.random_range(0..1000);
    let kind = if profile == Profile::Steady {
        Kind::Steady
    } else {
        match roll {
            0..200 => Kind::Steady,
            200..205 => Kind::Heavy,
            205..355 => Kind::Churner,
            355..455 => Kind::Reactivator,
            455..505 => Kind::CiOnly,
            505..555 => Kind::RandomId,
            555..595 => Kind::Ephemeral,
            _ => Kind::Tourist,
        }
    };
    let source = match kind {
        Kind::RandomId | Kind::Ephemeral => "random",
        _ if rng.random_bool(0.3) => "derived",
        _ => "explicit",
    };
    let start_day = rng.random_range(0..days);
    let n_envs = rng.random_range(1..=3usize);
    let environments = ENVIRONMENTS[..n_envs].to_vec();
    let n_pipes = rng.random_range(1..=3usize);
    let pipelines = (0..n_pipes)
        .map(|_| {
            let mut p = vec![
                EXTRACTORS[rng.random_range(0..EXTRACTORS.len())],
                LOADERS[rng.random_range(0..LOADERS.len())],
            ];
            if rng.random_bool(0.3) {
                p.push(UTILITIES[rng.random_range(0..2)]);
            }
            p
        })
        .collect();
    let (runs_per_day, active_day_share) = match kind {
        Kind::Heavy => (rng.random_range(70.0..110.0), 0.95),
        Kind::Steady | Kind::CiOnly | Kind::RandomId => {
            (rng.random_range(0.3..1.5), rng.random_range(0.4..0.95))
        }
        Kind::Churner | Kind::Reactivator => {
            (rng.random_range(0.3..1.5), rng.random_range(0.3..0.8))
        }
        Kind::Ephemeral => (0.5, 0.2),
        Kind::Tourist => (1.0, 0.3),
    };
    let stop_day = start_day + rng.random_range(14..70);
    let pause_start = start_day + rng.random_range(20..60);
    let pause = (pause_start, pause_start + rng.random_range(14..56));
    let (meltano_version, python_version) = match rng.random_range(0..10) {
        0 => ("3.5.4", "3.10.12"),
        1..3 => ("4.2.2", "3.12.4"),
        _ => ("4.4.1", "3.11.7"),
    };
    let is_ci = kind == Kind::CiOnly;
    let machine = rng.random_range(2..16u32);
    let env = json!({
        "context_uuid": uuid(rng), "parent_context_uuid": null, "meltano_version": meltano_version,
        "is_dev_build": false, "is_ci_environment": is_ci, "notable_flag_env_vars": if is_ci { json!({"CI": true}) } else { json!({}) },
        "notable_hashed_env_vars": {}, "python_version": python_version, "python_implementation": "CPython",
        "system_name": "Linux", "system_release": "6.8.0-45-generic", "system_version": "#45-Ubuntu SMP PREEMPT_DYNAMIC",
        "machine": "x86_64", "windows_edition": null, "freedesktop_id": "ubuntu", "freedesktop_id_like": "debian",
        "freedesktop_version_id": "24.04", "num_cpu_cores": machine, "num_cpu_cores_available": machine,
        "process_hierarchy": [
            {"process_name_hash": sha("meltano"), "process_creation_timestamp": "2025-01-01T00:00:00+00:00"},
            {"process_name_hash": sha("bash"), "process_creation_timestamp": "2025-01-01T00:00:00+00:00"},
            {"process_name_hash": sha("sshd"), "process_creation_timestamp": "2025-01-01T00:00:00+00:00"}
        ],
    });
    Project {
        id: uuid(rng),
        client: uuid(rng),
        kind,
        source,
        start_day,
        stop_day,
        pause,
        environments,
        pipelines,
        runs_per_day,
        active_day_share: (active_day_share * activity).clamp(0.0, 1.0),
        fail_rate: rng.random_range(0.0..0.12),
        env_context: selfdesc(
            "iglu:com.meltano/environment_context/jsonschema/1-3-0",
            &py_text(&env),
        ),
        opt_out_day: rng
            .random_bool(0.05)
            .then(|| start_day + rng.random_range(10..120)),
    }
}

/// An onboarding step: command, sub-command, environment, plugins.
type Step = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Vec<&'static str>,
);

/// One CLI invocation to write.
struct Invocation<'a> {
    project: &'a Project,
    project_id: String,
    command: &'static str,
    sub_command: Option<&'static str>,
    environment: Option<&'static str>,
    plugins: Vec<&'static str>,
    start_ms: i64,
    runtime_ms: i64,
    exit_code: i64,
}

struct Writer {
    rng: ChaCha8Rng,
    summary: GenerateSummary,
    /// Requests pending per received day: (received ms, line).
    pending: std::collections::BTreeMap<u32, Vec<(i64, String)>>,
    start_ms: i64,
    days: u32,
}

impl Writer {
    fn contexts(&mut self, inv: &Invocation, exec_id: &str, plugins: Option<&str>) -> String {
        let p = inv.project;
        let project = json!({
            "context_uuid": exec_id, "project_uuid": inv.project_id, "project_uuid_source": p.source,
            "client_uuid": p.client, "send_anonymous_usage_stats": true, "send_anonymous_usage_stats_source": "default",
            "environment_name_hash": inv.environment.map(sha),
        });
        let mut parts = vec![
            p.env_context.clone(),
            selfdesc(
                "iglu:com.meltano/project_context/jsonschema/1-1-0",
                &py_text(&project),
            ),
            selfdesc(
                "iglu:com.meltano/cli_context/jsonschema/1-1-0",
                &py_text(
                    &json!({"command": "cli", "parent_command_hint": null, "options": {"log_level": null, "environment": inv.environment.map(|e| sha(&format!("'{e}'")))}}),
                ),
            ),
            selfdesc(
                "iglu:com.meltano/cli_context/jsonschema/1-1-0",
                &py_text(
                    &json!({"command": inv.command, "parent_command_hint": "cli", "options": {}}),
                ),
            ),
        ];
        if let Some(sub) = inv.sub_command {
            parts.push(selfdesc(
                "iglu:com.meltano/cli_context/jsonschema/1-1-0",
                &py_text(
                    &json!({"command": sub, "parent_command_hint": inv.command, "options": {}}),
                ),
            ));
        }
        if let Some(pl) = plugins {
            parts.push(pl.to_string());
        }
        let exception = if inv.exit_code != 0 {
            json!({"type": sha("RunnerError"), "str_hash": sha("failed"), "repr_hash": sha("RunnerError('failed')"), "traceback": null, "cause": null, "context": null})
        } else {
            Value::Null
        };
        let exc_id = uuid(&mut self.rng);
        parts.push(selfdesc(
            "iglu:com.meltano/exception_context/jsonschema/1-0-0",
            &py_text(&json!({"context_uuid": exc_id, "exception": exception})),
        ));
        selfdesc(
            "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1",
            &format!("[{}]", parts.join(", ")),
        )
    }

    fn plugins_context(&mut self, names: &[&str], command: Value) -> String {
        let plugins: Vec<Value> = names
            .iter()
            .map(|n| plugin_dict(n, category_of(n), command.clone()))
            .collect();
        let data = json!({"context_uuid": uuid(&mut self.rng), "plugins": plugins});
        selfdesc(
            "iglu:com.meltano/plugins_context/jsonschema/1-0-0",
            &py_text(&data),
        )
    }

    fn event(&mut self, ue: &str, cx: &str, dtm: i64, sent_ms: i64, tz: &str) -> String {
        let stm = sent_ms / 1000 * 1000;
        let ev = format!(
            "{{\"e\": \"ue\", \"ue_px\": \"{}\", \"cx\": \"{}\", \"p\": \"pc\", \"lang\": \"en_US\", \"tz\": \"{tz}\", \"eid\": \"{}\", \"dtm\": \"{dtm}\", \"tv\": \"py-1.1.0\", \"tna\": \"meltano-core\", \"aid\": \"meltano\", \"stm\": \"{stm}\"}}",
            b64(&selfdesc(
                "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
                ue
            )),
            b64(cx),
            uuid(&mut self.rng),
        );
        self.summary.events += 1;
        ev
    }

    fn post(&mut self, events: Vec<String>, received_ms: i64) {
        let body = format!(
            "{{\"schema\": \"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4\", \"data\": [{}]}}",
            events.join(", ")
        );
        let line = format!(
            "{{\"received_at\": \"{}\", \"method\": \"POST\", \"path\": \"/com.snowplowanalytics.snowplow/tp2\", \"query\": {{}}, \"headers\": {{\"User-Agent\": \"python-requests/2.32.3\", \"Content-Type\": \"application/json; charset=utf-8\", \"Content-Length\": \"{}\"}}, \"body\": {body}}}",
            iso(received_ms),
            body.len()
        );
        // a few requests arrive late (collector or network backlog), a few are sent twice
        let mut received = received_ms;
        if self.rng.random_bool(0.02) {
            received += self.rng.random_range(3_600_000..3 * DAY_MS);
        }
        self.queue(received, line.clone());
        if self.rng.random_bool(0.01) {
            let again = received + self.rng.random_range(60_000..DAY_MS);
            self.queue(again, line);
        }
        self.summary.requests += 1;
    }

    fn queue(&mut self, received_ms: i64, line: String) {
        let day = ((received_ms - self.start_ms).div_euclid(DAY_MS))
            .clamp(0, i64::from(self.days) - 1) as u32;
        self.pending
            .entry(day)
            .or_default()
            .push((received_ms, line));
    }

    fn invocation(&mut self, inv: Invocation) {
        let exec_id = uuid(&mut self.rng);
        let tz = "Europe/Berlin";
        let t0 = inv.start_ms;
        let t1 = t0 + inv.runtime_ms;
        let cli = |event: &str| {
            selfdesc(
                "iglu:com.meltano/cli_event/jsonschema/1-0-1",
                &format!("{{\"event\": \"{event}\"}}"),
            )
        };
        let exit = selfdesc(
            "iglu:com.meltano/exit_event/jsonschema/1-0-1",
            &format!(
                "{{\"exit_code\": {}, \"exit_timestamp\": \"{}\", \"process_duration_microseconds\": {}}}",
                inv.exit_code,
                iso(t1 + 5),
                (inv.runtime_ms + 900) * 1000
            ),
        );
        let failed = inv.exit_code != 0;
        let base = self.contexts(&inv, &exec_id, None);
        let mut events = Vec::new();
        let sent = t1 + 40;
        if inv.exit_code == 2 {
            events.push(self.event(&exit, &base, t1 + 5, sent, tz));
        } else {
            events.push(self.event(&cli("started"), &base, t0, sent, tz));
            match inv.command {
                "run" => {
                    let pl = self.plugins_context(&inv.plugins, json!([]));
                    let with = self.contexts(&inv, &exec_id, Some(&pl));
                    let block = |e: &str| {
                        selfdesc(
                            "iglu:com.meltano/block_event/jsonschema/1-0-0",
                            &format!("{{\"type\": \"ExtractLoadBlocks\", \"event\": \"{e}\"}}"),
                        )
                    };
                    events.push(self.event(&block("initialized"), &with, t0 + 30, sent, tz));
                    let end = if failed { "failed" } else { "completed" };
                    events.push(self.event(&block(end), &with, t1 - 10, sent, tz));
                }
                "elt" | "el" | "invoke" | "test" | "add" | "install" => {
                    let pl = self.plugins_context(&inv.plugins, Value::Null);
                    let with = self.contexts(&inv, &exec_id, Some(&pl));
                    events.push(self.event(&cli("inflight"), &with, t0 + 20, sent, tz));
                }
                _ => {}
            }
            if inv.command != "schedule" && inv.command != "init" {
                let end = if failed { "failed" } else { "completed" };
                let last = match inv.command {
                    "invoke" | "elt" | "el" | "test" | "add" | "install" => {
                        let pl = self.plugins_context(&inv.plugins, Value::Null);
                        self.contexts(&inv, &exec_id, Some(&pl))
                    }
                    _ => base.clone(),
                };
                events.push(self.event(&cli(end), &last, t1, sent, tz));
            }
            events.push(self.event(&exit, &base, t1 + 5, sent, tz));
        }
        self.summary.executions += 1;
        let received = sent + self.rng.random_range(5..200);
        self.post(events, received);
    }

    fn state_change(&mut self, p: &Project, at_ms: i64) {
        let ue = selfdesc(
            "iglu:com.meltano/telemetry_state_change_event/jsonschema/1-0-0",
            "{\"setting_name\": \"send_anonymous_usage_stats\", \"changed_from\": true, \"changed_to\": false}",
        );
        let project = json!({
            "context_uuid": uuid(&mut self.rng), "project_uuid": p.id, "project_uuid_source": p.source,
            "client_uuid": p.client, "send_anonymous_usage_stats": false, "send_anonymous_usage_stats_source": "env",
            "environment_name_hash": null,
        });
        let cx = selfdesc(
            "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1",
            &format!(
                "[{}, {}]",
                p.env_context,
                selfdesc(
                    "iglu:com.meltano/project_context/jsonschema/1-1-0",
                    &py_text(&project)
                )
            ),
        );
        let ev = self.event(&ue, &cx, at_ms, at_ms + 30, "UTC");
        self.post(vec![ev], at_ms + 60);
    }
}

fn is_active_day(p: &Project, day: u32, rng: &mut ChaCha8Rng) -> bool {
    if day < p.start_day {
        return false;
    }
    let ok = match p.kind {
        Kind::Churner | Kind::Heavy => day < p.stop_day,
        Kind::Reactivator => !(p.pause.0..p.pause.1).contains(&day),
        Kind::Tourist => day < p.start_day + 3,
        _ => true,
    };
    ok && rng.random_bool(p.active_day_share)
}

fn silent(outage: Option<Outage>, project_index: usize, projects: usize, day: u32) -> bool {
    outage.is_some_and(|o| {
        (o.first_day..o.first_day + o.days).contains(&day)
            && (project_index as f64) < o.fraction * projects as f64
    })
}

/// Write a fleet's telemetry into `args.out`.
pub fn generate(args: &GenerateArgs) -> Result<GenerateSummary, GenerateError> {
    std::fs::create_dir_all(&args.out).map_err(io_err(&args.out))?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let days = args.days.max(1);
    let ramp = args.ramp_days.unwrap_or(days).clamp(1, days);
    let projects: Vec<Project> = (0..args.projects)
        .map(|_| new_project(&mut rng, ramp, args.profile, args.activity))
        .collect();
    let start_ms = args
        .start
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp_millis());
    let mut w = Writer {
        rng: ChaCha8Rng::seed_from_u64(args.seed ^ 0x5eed),
        summary: GenerateSummary {
            projects: args.projects,
            ..Default::default()
        },
        pending: Default::default(),
        start_ms,
        days,
    };
    for day in 0..days {
        let day_ms = start_ms + i64::from(day) * DAY_MS;
        for (pi, p) in projects.iter().enumerate() {
            if silent(args.outage, pi, args.projects, day) {
                continue;
            }
            let mut rng =
                ChaCha8Rng::seed_from_u64(args.seed ^ ((pi as u64) << 20) ^ u64::from(day));
            let at =
                |rng: &mut ChaCha8Rng| day_ms + rng.random_range(6 * 3_600_000..22 * 3_600_000);
            let project_id = |rng: &mut ChaCha8Rng| {
                if p.kind == Kind::Ephemeral {
                    uuid(rng)
                } else {
                    p.id.clone()
                }
            };
            let mk = |rng: &mut ChaCha8Rng,
                      command,
                      sub_command,
                      environment,
                      plugins: Vec<&'static str>,
                      start_ms,
                      runtime_ms,
                      exit_code| Invocation {
                project: p,
                project_id: project_id(rng),
                command,
                sub_command,
                environment,
                plugins,
                start_ms,
                runtime_ms,
                exit_code,
            };
            if day == p.start_day {
                // onboarding: init, add the plugins, install, a discovery
                let mut t = at(&mut rng);
                let pipe = p.pipelines[0].clone();
                let steps: Vec<Step> = vec![
                    ("init", None, None, vec![]),
                    ("add", None, None, vec!["airflow", pipe[0]]),
                    ("add", None, None, vec!["airflow", pipe[1]]),
                    ("install", None, None, pipe.clone()),
                    ("config", Some("list"), None, vec![]),
                    ("invoke", None, Some(p.environments[0]), vec![pipe[0]]),
                ];
                for (cmd, sub, env, plugins) in steps {
                    let runtime = rng.random_range(800..20_000);
                    let inv = mk(&mut rng, cmd, sub, env, plugins, t, runtime, 0);
                    w.invocation(inv);
                    t += runtime + rng.random_range(5_000..600_000);
                }
                continue;
            }
            if p.opt_out_day == Some(day) {
                w.state_change(p, at(&mut rng));
            }
            if !is_active_day(p, day, &mut rng) {
                continue;
            }
            let weekday_factor = if (day + 2) % 7 >= 5 { 0.4 } else { 1.0 };
            let mean = p.runs_per_day * weekday_factor;
            let runs = (mean * rng.random_range(0.6..1.4))
                .round()
                .max(if rng.random_bool(0.8) { 1.0 } else { 0.0 }) as usize;
            for _ in 0..runs {
                let pipe = p.pipelines[rng.random_range(0..p.pipelines.len())].clone();
                let env = p.environments[rng.random_range(0..p.environments.len())];
                let command = match rng.random_range(0..10) {
                    0 => "elt",
                    1 => "el",
                    _ => "run",
                };
                let runtime = (rng.random_range(0.0f64..1.0).powi(3) * 4.0 * 3_600_000.0) as i64
                    + rng.random_range(2_000..9_000);
                let exit = if rng.random_bool(p.fail_rate) { 1 } else { 0 };
                let start = at(&mut rng);
                let inv = mk(
                    &mut rng,
                    command,
                    None,
                    Some(env),
                    pipe,
                    start,
                    runtime,
                    exit,
                );
                w.invocation(inv);
            }
            // other traffic
            let extras = usize::from(rng.random_bool(0.4)) + usize::from(rng.random_bool(0.1));
            for _ in 0..extras {
                let env = p.environments[0];
                let pipe = p.pipelines[0].clone();
                let (cmd, sub, environment, plugins, code) = match rng.random_range(0..12) {
                    0..3 => ("invoke", None, Some(env), vec![pipe[0]], 0),
                    3 => ("test", None, Some(env), vec![pipe[0]], 0),
                    4 => ("ui", None, Some(env), vec![], 0),
                    5 | 6 => ("config", Some("list"), None, vec![], 0),
                    7 => ("state", Some("list"), None, vec![], 0),
                    8 => ("schedule", Some("list"), None, vec![], 0),
                    9 => (
                        "add",
                        None,
                        None,
                        vec!["airflow", UTILITIES[rng.random_range(0..UTILITIES.len())]],
                        0,
                    ),
                    10 => ("run", None, Some(env), vec![], 1),
                    _ => ("config", None, None, vec![], 2),
                };
                let start = at(&mut rng);
                let runtime = rng.random_range(500..30_000);
                let inv = mk(
                    &mut rng,
                    cmd,
                    sub,
                    environment,
                    plugins,
                    start,
                    runtime,
                    code,
                );
                w.invocation(inv);
            }
        }
        // write every request received that day
        if let Some(mut lines) = w.pending.remove(&day) {
            lines.sort_by_key(|(t, _)| *t);
            let date = args.start + chrono::Days::new(u64::from(day));
            w.summary.bytes += write_file(&args.out, &date, !args.no_gzip, &lines)?;
            w.summary.files += 1;
        }
    }
    Ok(w.summary)
}

fn write_file(
    dir: &Path,
    date: &NaiveDate,
    gzip: bool,
    lines: &[(i64, String)],
) -> Result<u64, GenerateError> {
    let name = format!(
        "telemetry-{}.ndjson{}",
        date.format("%Y-%m-%d"),
        if gzip { ".gz" } else { "" }
    );
    let path = dir.join(name);
    let file = File::create(&path).map_err(io_err(&path))?;
    let mut bytes = 0u64;
    let mut sink: Box<dyn Write> = if gzip {
        Box::new(GzEncoder::new(BufWriter::new(file), Compression::fast()))
    } else {
        Box::new(BufWriter::new(file))
    };
    for (_, line) in lines {
        sink.write_all(line.as_bytes()).map_err(io_err(&path))?;
        sink.write_all(b"\n").map_err(io_err(&path))?;
        bytes += line.len() as u64 + 1;
    }
    sink.flush().map_err(io_err(&path))?;
    drop(sink);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> GenerateArgs {
        GenerateArgs {
            projects: 30,
            days: 40,
            seed: 3,
            out: dir.to_path_buf(),
            start: NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
            no_gzip: true,
            outage: None,
            ramp_days: None,
            profile: Profile::Mixed,
            activity: 1.0,
        }
    }

    #[test]
    fn same_seed_same_bytes() {
        let base = std::env::temp_dir().join(format!("tap-kpis-gen-{}", std::process::id()));
        let (a, b) = (base.join("a"), base.join("b"));
        let sa = generate(&args(&a)).unwrap();
        let sb = generate(&args(&b)).unwrap();
        assert_eq!(sa, sb);
        assert!(sa.events > 100, "{sa:?}");
        for entry in std::fs::read_dir(&a).unwrap() {
            let name = entry.unwrap().file_name();
            assert_eq!(
                std::fs::read(a.join(&name)).unwrap(),
                std::fs::read(b.join(&name)).unwrap()
            );
        }
        let mut other = args(&base.join("c"));
        other.seed = 4;
        assert_ne!(generate(&other).unwrap(), sa);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn outage_parses() {
        assert_eq!(
            parse_outage("10:7:0.5").unwrap(),
            Outage {
                first_day: 10,
                days: 7,
                fraction: 0.5
            }
        );
        assert!(parse_outage("10:7").is_err());
    }
}
