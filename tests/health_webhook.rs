//! Alarms reach a webhook on 127.0.0.1 exactly once each, through a failing first attempt; a second
//! run with the state of the first sends nothing; a webhook that never answers does not fail the sync.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{Value, json};

use common::{parse, shared, temp_dir};

/// Requests a webhook received: (status answered, body).
type Seen = Arc<Mutex<Vec<(u16, Value)>>>;

/// A webhook server answering 500 to the first `fail_first` requests, then 200; it records bodies.
fn webhook(fail_first: usize) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let s = seen.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            let mut auth = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if lower.starts_with("authorization:") {
                    auth = line.trim().to_string();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let mut seen = s.lock().unwrap();
            let status = if seen.len() < fail_first { 500 } else { 200 };
            let mut v: Value = serde_json::from_slice(&body).unwrap();
            v["_auth"] = json!(auth);
            seen.push((status, v));
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (url, seen)
}

fn run(dir: &Path, config: &Value, state: Option<&Value>) -> (bool, common::Output, String) {
    let out = common::tap_command(dir, config, state).output().unwrap();
    (
        out.status.success(),
        parse(&out.stdout),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn config(url: &str) -> Value {
    json!({
        "sources": [shared("data/meltano-real/captures.ndjson").display().to_string()],
        "health_metrics": [
            {"name": "busy day", "kpi": "active_projects_daily.executions", "method": "fixed", "max": 1},
            {"name": "many runs", "kpi": "active_projects_daily.pipeline_runs", "method": "fixed", "max": 1},
            {"name": "quiet", "kpi": "active_projects_daily.exec_executions", "method": "fixed", "max": 100},
        ],
        "alert_webhook_url": url,
        "alert_webhook_token": "t0ken",
    })
}

#[test]
fn one_post_per_alarm_and_none_on_the_next_run() {
    let dir = temp_dir("webhook");
    let (url, seen) = webhook(1);
    let (ok, out, stderr) = run(&dir, &config(&url), None);
    assert!(ok, "{stderr}");
    assert!(
        !stderr.contains(&url) && !stderr.contains("t0ken"),
        "secrets never logged: {stderr}"
    );
    assert_eq!(stderr.matches("health alarm:").count(), 2, "{stderr}");
    let health = out.records("kpi_health");
    assert_eq!(health.len(), 3);
    assert_eq!(health.iter().filter(|r| r["status"] == "high").count(), 2);
    let posts = seen.lock().unwrap().clone();
    assert_eq!(
        posts.len(),
        3,
        "one failed attempt, then one POST per alarm"
    );
    let delivered: Vec<&Value> = posts
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(delivered.len(), 2);
    let mut rules: Vec<&str> = delivered
        .iter()
        .map(|b| b["rule"].as_str().unwrap())
        .collect();
    rules.sort();
    assert_eq!(rules, ["busy day", "many runs"]);
    for b in &delivered {
        for key in ["text", "kpi", "period", "value", "low", "high", "status"] {
            assert!(b.get(key).is_some(), "{key} in {b}");
        }
        assert_eq!(b["status"], "high");
        assert_eq!(b["_auth"], "authorization: Bearer t0ken");
    }
    let state = out.states.last().unwrap().clone();
    assert_eq!(
        state["tap_kpis"]["alarms_sent"].as_array().unwrap().len(),
        2
    );

    // the same input again: nothing to emit, nothing sent
    let (ok, again, _) = run(&dir, &config(&url), Some(&state));
    assert!(ok);
    assert_eq!(seen.lock().unwrap().len(), 3, "nothing sent again");
    assert!(again.records("kpi_health").is_empty());

    // the same telemetry read afresh with the state (its alarms are evaluated again): nothing sent
    let copy = dir.join("captures.ndjson");
    std::fs::copy(shared("data/meltano-real/captures.ndjson"), &copy).unwrap();
    let mut cfg = config(&url);
    cfg["sources"] = json!([copy.display().to_string()]);
    let (ok, again, stderr) = run(&dir, &cfg, Some(&state));
    assert!(ok, "{stderr}");
    assert_eq!(seen.lock().unwrap().len(), 3, "nothing sent again");
    let high = again
        .records("kpi_health")
        .iter()
        .filter(|r| r["status"] == "high")
        .count();
    assert_eq!(high, 2, "the alarms are still recorded");
}

#[test]
fn a_dead_webhook_never_fails_the_sync_nor_loses_the_record() {
    let dir = temp_dir("deadhook");
    let (url, seen) = webhook(usize::MAX);
    let (ok, out, stderr) = run(&dir, &config(&url), None);
    assert!(ok, "{stderr}");
    assert_eq!(out.records("kpi_health").len(), 3);
    assert!(seen.lock().unwrap().len() >= 2);
    let state = out.states.last().unwrap();
    assert!(
        state["tap_kpis"]["alarms_sent"]
            .as_array()
            .unwrap()
            .is_empty(),
        "posted again next run"
    );

    let mut strict = config(&url);
    strict["fail_on_alarm"] = json!(true);
    let (ok, out, stderr) = run(&dir, &strict, None);
    assert!(!ok);
    assert!(
        stderr.contains("fail_on_alarm: 2 health alarm(s)"),
        "{stderr}"
    );
    assert_eq!(
        out.lines.last().unwrap()["type"],
        "STATE",
        "records and state written before failing"
    );
}
