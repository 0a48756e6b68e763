//! Helpers shared by the integration tests: run a sync in process and collect its Singer messages.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde_json::{Value, json};
use tap_kpis::catalog::Selections;
use tap_kpis::config;
use tap_kpis::generate::{GenerateArgs, Profile, generate};
use tap_kpis::streams::STREAMS;

/// Path of a file under `../shared` (the shared material beside the project).
pub fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared")
        .join(rel)
}

/// Messages of one sync, by type.
#[derive(Debug, Default)]
pub struct Output {
    pub schemas: BTreeMap<String, Value>,
    pub records: BTreeMap<String, Vec<Value>>,
    pub states: Vec<Value>,
    pub lines: Vec<Value>,
}

impl Output {
    pub fn records(&self, stream: &str) -> &[Value] {
        self.records.get(stream).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Parse Singer stdout.
pub fn parse(stdout: &[u8]) -> Output {
    let mut out = Output::default();
    for line in String::from_utf8_lossy(stdout).lines() {
        let msg: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        match msg["type"].as_str() {
            Some("SCHEMA") => {
                out.schemas
                    .insert(msg["stream"].as_str().unwrap().to_string(), msg.clone());
            }
            Some("RECORD") => out
                .records
                .entry(msg["stream"].as_str().unwrap().to_string())
                .or_default()
                .push(msg["record"].clone()),
            Some("STATE") => out.states.push(msg["value"].clone()),
            other => panic!("unexpected message type {other:?}: {line}"),
        }
        out.lines.push(msg);
    }
    out
}

/// Run a sync in process over `config` (a JSON object of settings).
pub fn sync(config: Value) -> Output {
    let raw = config.as_object().unwrap().clone();
    let cfg = config::validate(&raw).expect("valid config");
    let mut buf = Vec::new();
    tap_kpis::sync::run(&cfg, &Selections::all(), None, &mut buf).expect("sync succeeds");
    parse(&buf)
}

/// Run a sync over the given source paths.
pub fn sync_paths(paths: &[PathBuf]) -> Output {
    let sources: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    sync(json!({ "sources": sources }))
}

/// The tap binary set to run with `config` and, when given, `state` (both written into `dir`; the
/// state pretty-printed, as a user might keep it).
pub fn tap_command(dir: &Path, config: &Value, state: Option<&Value>) -> std::process::Command {
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tap-kpis"));
    cmd.arg("--config").arg(&cfg);
    if let Some(s) = state {
        let p = dir.join("state.json");
        std::fs::write(&p, serde_json::to_string_pretty(s).unwrap()).unwrap();
        cmd.arg("--state").arg(p);
    }
    cmd
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tap-kpis-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Rows by stream, upserted by key as a target does.
pub type Tables = BTreeMap<String, BTreeMap<String, Value>>;

pub fn upsert(tables: &mut Tables, out: &Output) {
    for def in STREAMS {
        for r in out.records(def.name) {
            let key: Vec<&Value> = def.key_properties.iter().map(|k| &r[*k]).collect();
            tables
                .entry(def.name.to_string())
                .or_default()
                .insert(serde_json::to_string(&key).unwrap(), r.clone());
        }
    }
}

/// The KPI streams (the quarantine lists what each run saw, so it differs by design).
pub fn kpi_tables(mut t: Tables) -> Tables {
    t.remove("telemetry_errors");
    t
}

pub fn assert_same(full: &Tables, incremental: &Tables) {
    for (stream, rows) in full {
        let got = incremental.get(stream).cloned().unwrap_or_default();
        for (key, row) in rows {
            match got.get(key) {
                None => panic!("{stream} {key}: missing after incremental runs"),
                Some(g) if g != row => {
                    panic!("{stream} {key}:\n incremental {g}\n full        {row}")
                }
                _ => {}
            }
        }
        for key in got.keys() {
            assert!(
                rows.contains_key(key),
                "{stream} {key}: extra row after incremental runs"
            );
        }
    }
}

/// The lines of each day file of a generated fleet.
pub fn fleet(dir: &Path, projects: usize, days: u32, seed: u64) -> Vec<(String, Vec<String>)> {
    fleet_at(dir, projects, days, seed, 1.0)
}

/// [`fleet`] with the generator's activity (below 1, projects go quiet and some come back).
pub fn fleet_at(
    dir: &Path,
    projects: usize,
    days: u32,
    seed: u64,
    activity: f64,
) -> Vec<(String, Vec<String>)> {
    generate(&GenerateArgs {
        projects,
        days,
        seed,
        out: dir.to_path_buf(),
        start: NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
        no_gzip: true,
        outage: None,
        ramp_days: Some(5),
        profile: Profile::Mixed,
        activity,
    })
    .unwrap();
    let mut files: Vec<(String, Vec<String>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            (
                path.file_name().unwrap().to_string_lossy().to_string(),
                text.lines().map(str::to_string).collect(),
            )
        })
        .collect();
    files.sort();
    files
}
