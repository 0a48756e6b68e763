//! The command line as Meltano and users call it: discovery, about, catalog selection, config errors.

mod common;

use std::process::Command;

use serde_json::{Value, json};

use common::{parse, shared, temp_dir};

fn tap() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tap-kpis"))
}

fn write_json(dir: &std::path::Path, name: &str, v: &Value) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p
}

fn real_config(dir: &std::path::Path) -> std::path::PathBuf {
    let src = shared("data/meltano-real/captures.ndjson");
    write_json(
        dir,
        "config.json",
        &json!({"sources": [src.display().to_string()]}),
    )
}

#[test]
fn every_stream_schema_is_a_valid_json_schema() {
    let out = tap().arg("--discover").output().unwrap();
    assert!(out.status.success());
    let catalog: Value = serde_json::from_slice(&out.stdout).unwrap();
    let streams = catalog["streams"].as_array().unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"))
        .unwrap()
        .count();
    assert_eq!(streams.len(), files, "one schema file per stream");
    for s in streams {
        let schema = &s["schema"];
        assert!(jsonschema::meta::is_valid(schema), "{}", s["stream"]);
        jsonschema::validator_for(schema).unwrap();
        let md = &s["metadata"].as_array().unwrap()[0]["metadata"];
        assert_eq!(md["table-key-properties"], s["key_properties"]);
        assert_eq!(md["forced-replication-method"], "FULL_TABLE");
        for key in s["key_properties"].as_array().unwrap() {
            let crumb = json!(["properties", key]);
            let entry = s["metadata"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["breadcrumb"] == crumb)
                .unwrap();
            assert_eq!(entry["metadata"]["inclusion"], "automatic");
        }
    }
}

#[test]
fn about_prints_the_settings_schema_the_config_is_validated_against() {
    let out = tap()
        .args(["--about", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let about: Value = serde_json::from_slice(&out.stdout).unwrap();
    let schema: Value = serde_json::from_str(tap_kpis::config::SETTINGS_SCHEMA).unwrap();
    assert_eq!(about["settings"], schema);
    assert_eq!(
        about["capabilities"],
        json!(["catalog", "discover", "state", "about"])
    );
    let md = tap()
        .args(["--about", "--format", "markdown"])
        .output()
        .unwrap();
    let text = String::from_utf8(md.stdout).unwrap();
    assert!(text.contains("| sources | True |"), "{text}");
    let version = tap().arg("--version").output().unwrap();
    assert!(
        String::from_utf8(version.stdout)
            .unwrap()
            .contains(env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_config_exits_non_zero_naming_the_key() {
    let dir = temp_dir("badcfg");
    let cases = [
        (json!({"sources": ["x"], "as_of": "tomorrow"}), "as_of"),
        (json!({"sources": 3}), "sources"),
        (json!({"strict": true}), "sources"),
        (json!({"sources": ["x"], "strict": "no"}), "strict"),
    ];
    for (cfg, key) in cases {
        let path = write_json(&dir, "c.json", &cfg);
        let out = tap().arg("--config").arg(&path).output().unwrap();
        assert!(!out.status.success(), "{cfg}");
        assert!(out.stdout.is_empty(), "nothing on stdout for {cfg}");
        let err = String::from_utf8(out.stderr).unwrap();
        let line = err
            .lines()
            .find(|l| l.starts_with("tap-kpis: error:"))
            .unwrap_or_else(|| panic!("{err}"));
        assert!(line.contains(&format!("invalid config: {key}")), "{line}");
    }
    let missing = tap()
        .args(["--config", "/nonexistent/config.json"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8(missing.stderr)
            .unwrap()
            .contains("/nonexistent/config.json")
    );
    let no_source = write_json(
        &dir,
        "n.json",
        &json!({"sources": [dir.join("missing.ndjson").display().to_string()]}),
    );
    let out = tap().arg("--config").arg(&no_source).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("missing.ndjson")
    );
}

#[test]
fn catalog_selection_is_honoured() {
    let dir = temp_dir("catalog");
    let config = real_config(&dir);
    let mut catalog: Value =
        serde_json::from_slice(&tap().arg("--discover").output().unwrap().stdout).unwrap();
    for entry in catalog["streams"].as_array_mut().unwrap() {
        let keep = entry["stream"] == "cli_executions";
        for md in entry["metadata"].as_array_mut().unwrap() {
            if md["breadcrumb"] == json!([]) {
                md["metadata"]["selected"] = json!(keep);
            } else if md["breadcrumb"] == json!(["properties", "plugins"])
                || md["breadcrumb"] == json!(["properties", "execution_id"])
            {
                md["metadata"]["selected"] = json!(false);
            } else {
                md["metadata"]["selected"] = json!(true);
            }
        }
    }
    let cat_path = write_json(&dir, "catalog.json", &catalog);
    for flag in ["--catalog", "--properties"] {
        let out = tap()
            .arg("--config")
            .arg(&config)
            .arg(flag)
            .arg(&cat_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let msgs = parse(&out.stdout);
        assert_eq!(msgs.schemas.keys().collect::<Vec<_>>(), ["cli_executions"]);
        let schema = &msgs.schemas["cli_executions"]["schema"]["properties"];
        assert!(schema.get("plugins").is_none());
        assert!(
            schema.get("execution_id").is_some(),
            "key properties are automatic"
        );
        let recs = msgs.records("cli_executions");
        assert_eq!(recs.len(), 26);
        assert!(
            recs.iter()
                .all(|r| r.get("plugins").is_none() && r.get("execution_id").is_some())
        );
        assert_eq!(msgs.lines.last().unwrap()["type"], "STATE");
    }
}

#[test]
fn state_file_is_accepted_pretty_printed_and_runs_are_deterministic() {
    let dir = temp_dir("state");
    let config = real_config(&dir);
    let state = write_json(
        &dir,
        "state.json",
        &json!({"bookmarks": {}, "tap_kpis": {"version": 1}}),
    );
    let run = || {
        let out = tap()
            .arg("--config")
            .arg(&config)
            .arg("--state")
            .arg(&state)
            .output()
            .unwrap();
        assert!(out.status.success());
        // byte-identical apart from time_extracted
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines()
            .map(|l| match l.find(r#","time_extracted":""#) {
                Some(i) => l[..i].to_string(),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
    };
    let first = run();
    assert!(first.len() > 30);
    assert_eq!(first, run());
}

#[test]
fn a_run_with_nothing_new_hands_back_the_state_it_was_given_compact_or_pretty() {
    let dir = temp_dir("state-unchanged");
    let config = real_config(&dir);
    let first = tap().arg("--config").arg(&config).output().unwrap();
    assert!(first.status.success());
    let text = String::from_utf8(first.stdout).unwrap();
    let state_line = text
        .lines()
        .rev()
        .find(|l| l.starts_with(r#"{"type":"STATE""#))
        .expect("a STATE line");
    let state: Value = serde_json::from_str::<Value>(state_line).unwrap()["value"].clone();
    for (name, written) in [
        ("compact.json", serde_json::to_string(&state).unwrap()),
        ("pretty.json", serde_json::to_string_pretty(&state).unwrap()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &written).unwrap();
        let out = tap()
            .arg("--config")
            .arg(&config)
            .arg("--state")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: only the STATE, on one line");
        let message: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(message["type"], "STATE");
        assert_eq!(message["value"], state, "{name}");
    }
}
