//! Damaged input never crashes a sync and never vanishes: for each kind of damage, the sync completes,
//! every good execution around the damage is emitted unchanged, and the damage is in the quarantine
//! stream (`telemetry_errors`) with its reason.

mod common;

use std::io::Write;
use std::path::PathBuf;

use base64::Engine;
use serde_json::{Value, json};

use common::{Output, shared, sync, temp_dir};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE;

fn real_lines() -> Vec<String> {
    std::fs::read_to_string(shared("data/meltano-real/captures.ndjson"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn decode(s: &str) -> Value {
    serde_json::from_slice(&B64.decode(s).unwrap()).unwrap()
}

fn encode(v: &Value) -> String {
    B64.encode(v.to_string())
}

/// A capture holding one fresh copy (new event id, new execution id) of the first event of line 8
/// (`meltano run`, started), which the damage functions then alter.
fn fresh_capture(tag: &str) -> Value {
    let lines = real_lines();
    let mut cap: Value = serde_json::from_str(&lines[7]).unwrap();
    let mut ev = cap["body"]["data"][0].clone();
    ev["eid"] = json!(format!("00000000-0000-4000-8000-{:0>12}", tag));
    let mut cx = decode(ev["cx"].as_str().unwrap());
    for c in cx["data"].as_array_mut().unwrap() {
        if c["schema"].as_str().unwrap().contains("project_context") {
            c["data"]["context_uuid"] = json!(format!("ffffffff-0000-4000-8000-{:0>12}", tag));
        }
    }
    ev["cx"] = json!(encode(&cx));
    cap["body"]["data"] = json!([ev]);
    cap
}

fn map_event(tag: &str, f: impl Fn(&mut Value)) -> Vec<u8> {
    let mut cap = fresh_capture(tag);
    f(&mut cap["body"]["data"][0]);
    cap.to_string().into_bytes()
}

fn map_cx(tag: &str, f: impl Fn(&mut Value)) -> Vec<u8> {
    map_event(tag, |ev| {
        let mut cx = decode(ev["cx"].as_str().unwrap());
        f(&mut cx);
        ev["cx"] = json!(encode(&cx));
    })
}

fn map_ue(tag: &str, f: impl Fn(&mut Value)) -> Vec<u8> {
    map_event(tag, |ev| {
        let mut ue = decode(ev["ue_px"].as_str().unwrap());
        f(&mut ue);
        ev["ue_px"] = json!(encode(&ue));
    })
}

fn exit_event(tag: &str, code: Value) -> Vec<u8> {
    map_ue(tag, |ue| {
        ue["data"] = json!({"schema": "iglu:com.meltano/exit_event/jsonschema/1-0-1",
            "data": {"exit_code": code, "exit_timestamp": "2026-11-25T03:02:40+00:00", "process_duration_microseconds": 1}});
    })
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Where the damage goes.
enum Damage {
    /// One line inserted in the middle of the real captures.
    Line(Vec<u8>),
    /// A separate file beside the real captures (name, content).
    File(&'static str, Vec<u8>),
}

struct Case {
    name: &'static str,
    damage: Damage,
    /// Expected quarantine reason (`None`: nothing to quarantine, the input is still fully read).
    reason: Option<&'static str>,
    /// Whether the damaged event is still used (a new execution appears).
    kept: bool,
}

fn cases() -> Vec<Case> {
    let lines = real_lines();
    let line7 = lines[7].as_bytes().to_vec();
    let good_gz = gz(fresh_capture("31").to_string().as_bytes());
    let mut truncated_gz = gz(lines.join("\n").as_bytes());
    truncated_gz.truncate(truncated_gz.len() / 2);
    let c = |name, damage, reason, kept| Case {
        name,
        damage,
        reason,
        kept,
    };
    use Damage::*;
    vec![
        c(
            "truncated line",
            Line(line7[..line7.len() / 2].to_vec()),
            Some("invalid_json"),
            false,
        ),
        c(
            "invalid json",
            Line(b"{\"received_at\": ".to_vec()),
            Some("invalid_json"),
            false,
        ),
        c(
            "invalid base64",
            Line(map_event("1", |e| e["ue_px"] = json!("@@not base64@@"))),
            Some("invalid_base64"),
            false,
        ),
        c(
            "base64 of non-json",
            Line(map_event("2", |e| e["cx"] = json!(B64.encode("hello")))),
            Some("invalid_event_json"),
            false,
        ),
        c(
            "wrong payload schema",
            Line({
                let mut cap = fresh_capture("3");
                cap["body"]["schema"] = json!("iglu:com.acme/payload/jsonschema/1-0-0");
                cap.to_string().into_bytes()
            }),
            Some("unknown_schema"),
            false,
        ),
        c(
            "unknown meltano event",
            Line(map_ue("4", |ue| {
                ue["data"]["schema"] = json!("iglu:com.meltano/dragon_event/jsonschema/1-0-0")
            })),
            Some("unknown_event"),
            false,
        ),
        c(
            "foreign vendor event",
            Line(map_ue("5", |ue| {
                ue["data"]["schema"] = json!("iglu:com.acme/cli_event/jsonschema/1-0-0")
            })),
            Some("unknown_schema"),
            false,
        ),
        c(
            "unsupported major version",
            Line(map_ue("6", |ue| {
                ue["data"]["schema"] = json!("iglu:com.meltano/cli_event/jsonschema/2-0-0")
            })),
            Some("unsupported_schema_version"),
            false,
        ),
        c(
            "missing project context",
            Line(map_cx("7", |cx| {
                cx["data"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|c| !c["schema"].as_str().unwrap().contains("project_context"))
            })),
            Some("missing_project_context"),
            false,
        ),
        c(
            "missing project id",
            Line(map_cx("8", |cx| {
                for c in cx["data"].as_array_mut().unwrap() {
                    if c["schema"].as_str().unwrap().contains("project_context") {
                        c["data"]["project_uuid"] = Value::Null;
                    }
                }
            })),
            Some("missing_project_id"),
            false,
        ),
        c(
            "dtm is a number",
            Line(map_event("9", |e| e["dtm"] = json!(1_764_039_755_000i64))),
            Some("invalid_field"),
            false,
        ),
        c(
            "dtm is not a number",
            Line(map_event("10", |e| e["dtm"] = json!("yesterday"))),
            Some("invalid_field"),
            false,
        ),
        c(
            "exit_code as string",
            Line(exit_event("11", json!("0"))),
            Some("invalid_exit_code"),
            true,
        ),
        c(
            "exit_code as float",
            Line(exit_event("12", json!(1.5))),
            Some("invalid_exit_code"),
            true,
        ),
        c(
            "future timestamp",
            Line(map_event("13", |e| e["dtm"] = json!("4102444800000"))),
            Some("future_timestamp"),
            false,
        ),
        c(
            "timestamp in 1970",
            Line(map_event("14", |e| {
                e["dtm"] = json!("1000");
                e["stm"] = json!("2000");
            })),
            Some("implausible_timestamp"),
            false,
        ),
        c(
            "duplicate event id",
            Line(line7.clone()),
            Some("duplicate_event"),
            false,
        ),
        c("empty file", File("empty.ndjson", Vec::new()), None, false),
        c(
            "not-gzip .gz",
            File(
                "plain.ndjson.gz",
                fresh_capture("30").to_string().into_bytes(),
            ),
            None,
            true,
        ),
        c(
            "gzip without .gz",
            File("packed.ndjson", good_gz),
            None,
            true,
        ),
        c(
            "truncated gzip",
            File("cut.ndjson.gz", truncated_gz),
            Some("truncated_input"),
            false,
        ),
        c(
            "binary garbage",
            Line(vec![0xff, 0xfe, 0x00, 0x9c, 0x13, 0x37]),
            Some("invalid_utf8"),
            false,
        ),
        c(
            "huge line",
            Line(vec![b'x'; 17 << 20]),
            Some("line_too_long"),
            false,
        ),
        c(
            "json array line",
            Line(b"[1, 2, 3]".to_vec()),
            Some("invalid_envelope"),
            false,
        ),
        c(
            "envelope without body or query",
            Line(br#"{"received_at": "2026-11-25T03:02:35+00:00", "method": "POST"}"#.to_vec()),
            Some("invalid_envelope"),
            false,
        ),
        c(
            "received_at malformed",
            Line({
                let mut cap = fresh_capture("15");
                cap["received_at"] = json!("last tuesday");
                cap.to_string().into_bytes()
            }),
            Some("invalid_envelope"),
            false,
        ),
        c(
            "payload data not an array",
            Line({
                let mut cap = fresh_capture("16");
                cap["body"]["data"] = json!({"e": "ue"});
                cap.to_string().into_bytes()
            }),
            Some("invalid_payload"),
            false,
        ),
        c(
            "event not an object",
            Line({
                let mut cap = fresh_capture("17");
                cap["body"]["data"] = json!(["just a string"]);
                cap.to_string().into_bytes()
            }),
            Some("invalid_event"),
            false,
        ),
        c(
            "page view event",
            Line(map_event("18", |e| e["e"] = json!("pv"))),
            Some("unsupported_event_type"),
            false,
        ),
        c(
            "ue without ue_px",
            Line(map_event("19", |e| {
                e.as_object_mut().unwrap().remove("ue_px");
            })),
            Some("invalid_event"),
            false,
        ),
        c(
            "no timestamp at all",
            Line({
                let mut cap = fresh_capture("20");
                cap.as_object_mut().unwrap().remove("received_at");
                let ev = &mut cap["body"]["data"][0];
                ev.as_object_mut().unwrap().remove("dtm");
                ev.as_object_mut().unwrap().remove("stm");
                cap.to_string().into_bytes()
            }),
            Some("missing_timestamp"),
            false,
        ),
        c(
            "contexts data not an array",
            Line(map_cx("21", |cx| cx["data"] = json!({"a": 1}))),
            Some("invalid_field"),
            false,
        ),
        c(
            "project_uuid is a number",
            Line(map_cx("22", |cx| {
                for c in cx["data"].as_array_mut().unwrap() {
                    if c["schema"].as_str().unwrap().contains("project_context") {
                        c["data"]["project_uuid"] = json!(5);
                    }
                }
            })),
            Some("invalid_field"),
            false,
        ),
        c(
            "plugins is not an array",
            Line(map_cx("23", |cx| {
                cx["data"].as_array_mut().unwrap().push(json!({"schema": "iglu:com.meltano/plugins_context/jsonschema/1-0-0", "data": {"context_uuid": "x", "plugins": "tap-x"}}));
            })),
            Some("invalid_field"),
            false,
        ),
        c(
            "state change without contexts",
            Line(map_event("24", |e| {
                e.as_object_mut().unwrap().remove("cx");
                e["ue_px"] = json!(encode(
                    &json!({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
                "data": {"schema": "iglu:com.meltano/telemetry_state_change_event/jsonschema/1-0-0",
                    "data": {"setting_name": "send_anonymous_usage_stats", "changed_from": true, "changed_to": false}}})
                ));
            })),
            Some("unattributed_state_change"),
            false,
        ),
        c(
            "CRLF line ending",
            Line({
                let mut l = line7.clone();
                l.extend_from_slice(b"\r");
                l
            }),
            Some("duplicate_event"),
            false,
        ),
        c("blank lines", Line(b"   \t ".to_vec()), None, false),
    ]
}

fn write_inputs(dir: &std::path::Path, case: &Case) -> Vec<PathBuf> {
    let lines = real_lines();
    let main = dir.join("captures.ndjson");
    let mut content: Vec<u8> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if i == lines.len() / 2
            && let Damage::Line(bad) = &case.damage
        {
            content.extend_from_slice(bad);
            content.push(b'\n');
        }
        content.extend_from_slice(l.as_bytes());
        content.push(b'\n');
    }
    std::fs::write(&main, content).unwrap();
    let mut paths = vec![main];
    if let Damage::File(name, bytes) = &case.damage {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        paths.push(p);
    }
    paths
}

fn run(paths: &[PathBuf]) -> Output {
    let sources: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    sync(json!({"sources": sources}))
}

#[test]
fn every_kind_of_damage_is_quarantined_and_good_events_survive() {
    let baseline = run(&[shared("data/meltano-real/captures.ndjson")]);
    let good = baseline.records("cli_executions");
    assert_eq!(good.len(), 26);
    let all = cases();
    assert!(all.iter().filter(|c| c.reason.is_some()).count() >= 25);
    for (i, case) in all.iter().enumerate() {
        let dir = temp_dir(&format!("bad-{i}"));
        let out = run(&write_inputs(&dir, case));
        let execs = out.records("cli_executions");
        for g in good {
            assert!(
                execs.contains(g),
                "{}: good execution {} changed or lost",
                case.name,
                g["execution_id"]
            );
        }
        let extra = execs.len() - good.len();
        assert_eq!(
            extra,
            usize::from(case.kept),
            "{}: executions {}",
            case.name,
            execs.len()
        );
        let errors = out.records("telemetry_errors");
        match case.reason {
            Some(reason) => {
                let hit = errors.iter().find(|e| e["reason"] == reason);
                let hit =
                    hit.unwrap_or_else(|| panic!("{}: no {reason} in {errors:#?}", case.name));
                assert!(
                    hit["source"]
                        .as_str()
                        .unwrap()
                        .contains(&*dir.display().to_string()),
                    "{}",
                    case.name
                );
                assert!(
                    hit["excerpt"].as_str().unwrap().len() <= 512,
                    "{}",
                    case.name
                );
                assert_eq!(hit["skipped"], !case.kept, "{}", case.name);
            }
            None => assert!(errors.is_empty(), "{}: {errors:#?}", case.name),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn strict_mode_fails_naming_the_first_bad_line_after_writing_everything() {
    let dir = temp_dir("strict");
    let case = &cases()[1];
    let paths = write_inputs(&dir, case);
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        json!({"sources": [paths[0].display().to_string()], "strict": true}).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tap-kpis"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let line = err
        .lines()
        .find(|l| l.starts_with("tap-kpis: error:"))
        .unwrap();
    assert!(line.contains("captures.ndjson:15: invalid_json"), "{line}");
    let msgs = common::parse(&out.stdout);
    assert_eq!(msgs.records("cli_executions").len(), 26);
    assert_eq!(msgs.records("telemetry_errors").len(), 1);
    assert_eq!(msgs.lines.last().unwrap()["type"], "STATE");
    // without strict the same input succeeds
    std::fs::write(
        &cfg,
        json!({"sources": [paths[0].display().to_string()]}).to_string(),
    )
    .unwrap();
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_tap-kpis"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(ok.status.success());
    // the count of each reason names where its first case is
    let err = String::from_utf8(ok.stderr).unwrap();
    let line = err
        .lines()
        .find(|l| l.contains("skipped or flagged input: invalid_json: 1"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("(first: "), "{line}");
    assert!(line.contains("captures.ndjson:15: "), "{line}");
}
