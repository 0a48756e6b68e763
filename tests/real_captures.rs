//! The tap over real Meltano telemetry: the executions it finds equal the ground truth written down
//! when the telemetry was captured, and every record it emits validates against its stream schema.

mod common;

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use common::{shared, sync_paths};

/// (project prefix, command, plugin count, exit code, environment hash, event count) of one execution.
type Row = (
    String,
    Option<String>,
    u64,
    Option<i64>,
    Option<String>,
    u64,
);

/// The ground-truth table of `../shared/data/meltano-real/README.md`.
fn ground_truth() -> Vec<Row> {
    let text = std::fs::read_to_string(shared("data/meltano-real/README.md")).unwrap();
    let mut rows = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 10 || cells[1].parse::<u32>().is_err() {
            continue;
        }
        let project = cells[3]
            .split('(')
            .nth(1)
            .unwrap()
            .trim_end_matches(')')
            .to_string();
        let command = (cells[5] != "(none)").then(|| cells[5].to_string());
        let plugins = cells[6].split_whitespace().next().unwrap().parse().unwrap();
        let exit = cells[7].parse().ok();
        let env = (cells[8] != "none").then(|| hex::encode(Sha256::digest(cells[8].as_bytes())));
        let events = cells[9].split_whitespace().count() as u64;
        rows.push((project, command, plugins, exit, env, events));
    }
    rows
}

fn observed(records: &[Value]) -> Vec<Row> {
    records
        .iter()
        .map(|r| {
            (
                r["project_id"].as_str().unwrap()[..8].to_string(),
                r["command"].as_str().map(str::to_string),
                r["plugin_count"].as_u64().unwrap(),
                r["exit_code"].as_i64(),
                r["environment_hash"].as_str().map(str::to_string),
                r["event_count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn executions_equal_the_ground_truth_table() {
    let out = sync_paths(&[shared("data/meltano-real/captures.ndjson")]);
    let mut expected = ground_truth();
    assert_eq!(expected.len(), 26, "README table parsed");
    let mut got = observed(out.records("cli_executions"));
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert_eq!(out.records("projects").len(), 2);
    let runs = out.records("pipeline_runs");
    assert_eq!(runs.len(), 6);
    assert!(runs.iter().all(|r| r["is_success"] == true));
    assert_eq!(out.records("pipelines").len(), 4);
    let failed = out
        .records("cli_executions")
        .iter()
        .filter(|r| r["is_success"] == false)
        .count();
    assert_eq!(failed, 3);
    assert!(out.records("telemetry_errors").is_empty());
    // every event is on one day and no project is 7 days old: the North Star is 0
    let days = out.records("active_projects_daily");
    assert_eq!(days.len(), 1);
    assert_eq!(days[0]["active_projects"], 0);
    assert!(out.records("daily_active_projects").is_empty());
}

/// Ground truth of `../shared/data/meltano-old/README.md`: version -> (executions, projects, runs, failed runs).
fn old_ground_truth() -> BTreeMap<String, [u64; 4]> {
    let text = std::fs::read_to_string(shared("data/meltano-old/README.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() == 7 && cells[1].starts_with("2.") {
            let n: Vec<u64> = cells[2..6].iter().map(|c| c.parse().unwrap()).collect();
            out.insert(cells[1].to_string(), [n[0], n[1], n[2], n[3]]);
        }
    }
    out
}

#[test]
fn old_meltano_versions_equal_their_ground_truth() {
    let truth = old_ground_truth();
    assert_eq!(truth.len(), 2);
    for (version, [executions, projects, runs, failed]) in truth {
        let out = sync_paths(&[shared(&format!(
            "data/meltano-old/meltano-{version}.ndjson"
        ))]);
        assert_eq!(
            out.records("cli_executions").len() as u64,
            executions,
            "{version}"
        );
        assert_eq!(out.records("projects").len() as u64, projects, "{version}");
        let r = out.records("pipeline_runs");
        assert_eq!(r.len() as u64, runs, "{version}");
        assert_eq!(
            r.iter().filter(|r| r["is_success"] == false).count() as u64,
            failed,
            "{version}"
        );
        // the raw command line of structured events is never emitted
        let text: String = out.lines.iter().map(|l| l.to_string()).collect();
        assert!(!text.contains("se_ac"), "{version}");
    }
}

#[test]
fn every_record_validates_against_its_stream_schema() {
    let out = sync_paths(&[
        shared("data/meltano-real/captures.ndjson"),
        shared("data/meltano-old/meltano-2.1.0.ndjson"),
        shared("data/meltano-old/meltano-2.20.0.ndjson"),
    ]);
    let mut checked = 0;
    for (stream, schema_msg) in &out.schemas {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema_msg["schema"])
            .unwrap_or_else(|e| panic!("{stream}: {e}"));
        for r in out.records(stream) {
            if let Some(err) = validator.iter_errors(r).next() {
                panic!("{stream}: {err} in {r}");
            }
            checked += 1;
        }
    }
    assert!(checked > 60, "{checked}");
    // the message order Singer requires: SCHEMA before RECORDs of a stream, STATE last
    let mut seen = std::collections::BTreeSet::new();
    for msg in &out.lines {
        match msg["type"].as_str().unwrap() {
            "SCHEMA" => {
                seen.insert(msg["stream"].as_str().unwrap().to_string());
            }
            "RECORD" => {
                assert!(seen.contains(msg["stream"].as_str().unwrap()));
                assert!(msg["time_extracted"].is_string());
            }
            _ => {}
        }
    }
    assert_eq!(out.lines.last().unwrap()["type"], "STATE");
}
