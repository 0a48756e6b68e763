//! HTTP sources against a local server on 127.0.0.1 that fails, stalls, truncates and serves ranges:
//! the data read equals the file.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::json;

use common::{shared, sync, sync_paths};

struct Server {
    base: String,
    hits: Arc<Mutex<HashMap<String, u32>>>,
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
    send: usize,
    stall: bool,
) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body[..send.min(body.len())]);
    let _ = stream.flush();
    if stall {
        thread::sleep(Duration::from_secs(3));
    }
}

fn serve(data: Vec<u8>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let h = hits.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let data = data.clone();
            let hits = h.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut headers = HashMap::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let n = {
                    let mut m = hits.lock().unwrap();
                    let c = m.entry(path.clone()).or_default();
                    *c += 1;
                    *c
                };
                let from: usize = headers
                    .get("range")
                    .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
                    .unwrap_or(0);
                let full = |s: &mut TcpStream, send: usize, stall: bool| {
                    let len = data.len();
                    respond(
                        s,
                        "200 OK",
                        &[("Content-Length".into(), len.to_string())],
                        &data,
                        send,
                        stall,
                    )
                };
                let ranged = |s: &mut TcpStream| {
                    let len = data.len();
                    let hdr = vec![
                        ("Content-Length".into(), (len - from).to_string()),
                        (
                            "Content-Range".into(),
                            format!("bytes {from}-{}/{len}", len - 1),
                        ),
                    ];
                    respond(s, "206 Partial Content", &hdr, &data[from..], len, false)
                };
                let half = data.len() / 2;
                match path.as_str() {
                    "/ok" => full(&mut stream, usize::MAX, false),
                    "/fail-then-ok" if n <= 2 => respond(
                        &mut stream,
                        "503 Service Unavailable",
                        &[("Content-Length".into(), "0".into())],
                        b"",
                        0,
                        false,
                    ),
                    "/fail-then-ok" => full(&mut stream, usize::MAX, false),
                    "/truncate" | "/stall" | "/no-range" if n == 1 => {
                        full(&mut stream, half, path == "/stall")
                    }
                    "/truncate" | "/stall" if from > 0 => ranged(&mut stream),
                    "/truncate" | "/stall" | "/no-range" => full(&mut stream, usize::MAX, false),
                    "/auth"
                        if headers.get("authorization").map(String::as_str)
                            == Some("Bearer s3cret") =>
                    {
                        full(&mut stream, usize::MAX, false)
                    }
                    "/auth" => respond(
                        &mut stream,
                        "401 Unauthorized",
                        &[("Content-Length".into(), "0".into())],
                        b"",
                        0,
                        false,
                    ),
                    _ => respond(
                        &mut stream,
                        "404 Not Found",
                        &[("Content-Length".into(), "0".into())],
                        b"",
                        0,
                        false,
                    ),
                }
            });
        }
    });
    Server { base, hits }
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn http_reads_equal_the_file_through_failures_stalls_truncation_and_ranges() {
    let file = shared("data/meltano-real/captures.ndjson");
    let expected = sync_paths(std::slice::from_ref(&file)).records;
    let server = serve(gz(&std::fs::read(&file).unwrap()));
    for path in ["/ok", "/fail-then-ok", "/truncate", "/stall", "/no-range"] {
        let url = format!("{}{path}", server.base);
        let out = sync(json!({"sources": [url], "http_timeout_seconds": 1, "http_retries": 4}));
        let mut got = out.records.clone();
        let errors = got.remove("telemetry_errors");
        assert!(errors.is_none_or(|e| e.is_empty()), "{path}");
        let mut want = expected.clone();
        want.remove("telemetry_errors");
        assert_eq!(got, want, "{path}");
    }
    let hits = server.hits.lock().unwrap().clone();
    assert_eq!(hits["/fail-then-ok"], 3);
    assert_eq!(hits["/truncate"], 2, "resumed once with a range");
    assert_eq!(
        hits["/no-range"], 3,
        "range ignored: read again from the start"
    );
}

#[test]
fn http_errors_name_the_url_and_never_the_token() {
    let server = serve(b"{}".to_vec());
    let dir = common::temp_dir("http-err");
    let run = |cfg: serde_json::Value| {
        let p = dir.join("c.json");
        std::fs::write(&p, cfg.to_string()).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_tap-kpis"))
            .arg("--config")
            .arg(&p)
            .output()
            .unwrap()
    };
    let missing = format!("{}/missing.ndjson", server.base);
    let out = run(json!({"sources": [missing.clone()], "http_retries": 0}));
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(&missing) && err.contains("404"), "{err}");
    let auth = format!("{}/auth", server.base);
    let denied = run(json!({"sources": [auth.clone()], "http_bearer_token": "wrong"}));
    assert!(!denied.status.success());
    let err = String::from_utf8(denied.stderr).unwrap();
    assert!(err.contains("401") && !err.contains("wrong"), "{err}");
    let ok = run(json!({"sources": [auth], "http_bearer_token": "s3cret"}));
    assert!(ok.status.success());
    assert!(!String::from_utf8(ok.stderr).unwrap().contains("s3cret"));
}

/// A resource whose content and ETag can be replaced, answering `If-None-Match` with 304.
struct Feed {
    url: String,
    content: Arc<Mutex<(Vec<u8>, String)>>,
    /// (requests, conditional requests, 304 answers)
    counts: Arc<Mutex<(u32, u32, u32)>>,
}

fn serve_feed(body: Vec<u8>, etag: &str) -> Feed {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/feed.ndjson", listener.local_addr().unwrap());
    let content = Arc::new(Mutex::new((body, etag.to_string())));
    let counts: Arc<Mutex<(u32, u32, u32)>> = Arc::default();
    let (c, n) = (content.clone(), counts.clone());
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut if_none_match = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.trim().eq_ignore_ascii_case("if-none-match")
                {
                    if_none_match = Some(v.trim().to_string());
                }
            }
            let (body, etag) = c.lock().unwrap().clone();
            let mut counts = n.lock().unwrap();
            counts.0 += 1;
            counts.1 += u32::from(if_none_match.is_some());
            if if_none_match.as_deref() == Some(etag.as_str()) {
                counts.2 += 1;
                let hdr = [("ETag".to_string(), etag)];
                respond(&mut stream, "304 Not Modified", &hdr, b"", 0, false);
            } else {
                let hdr = [
                    ("Content-Length".to_string(), body.len().to_string()),
                    ("ETag".to_string(), etag),
                ];
                respond(&mut stream, "200 OK", &hdr, &body, usize::MAX, false);
            }
        }
    });
    Feed {
        url,
        content,
        counts,
    }
}

#[test]
fn http_sources_are_requested_conditionally_and_resume_where_they_stopped() {
    let text = std::fs::read_to_string(shared("data/meltano-real/captures.ndjson")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let half = lines.len() / 2;
    let first: String = lines[..half].iter().map(|l| format!("{l}\n")).collect();
    let all: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let feed = serve_feed(first.into_bytes(), "\"v1\"");
    let dir = common::temp_dir("http-conditional");
    let config = json!({"sources": [feed.url.clone()]});
    // a successful run of `config`: its messages and its stderr
    let run_with = |config: &serde_json::Value, state: Option<&serde_json::Value>| {
        let out = common::tap_command(&dir, config, state).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (common::parse(&out.stdout), stderr)
    };
    let run = |state: Option<&serde_json::Value>| run_with(&config, state).0;
    let mut tables = common::Tables::new();
    let one = run(None);
    common::upsert(&mut tables, &one);
    let state = one.states.last().unwrap().clone();
    assert_eq!(state["tap_kpis"]["inputs"][0]["http"]["etag"], "\"v1\"");

    // unchanged: the server answers 304, nothing is downloaded or emitted, the state stands
    let two = run(Some(&state));
    assert!(two.records.is_empty(), "{:?}", two.records.keys());
    assert_eq!(two.states, vec![state.clone()]);
    assert_eq!(*feed.counts.lock().unwrap(), (2, 1, 1));

    // appended: downloaded again, read from the bookmark on
    *feed.content.lock().unwrap() = (all.clone().into_bytes(), "\"v2\"".to_string());
    let three = run(Some(&state));
    assert_eq!(*feed.counts.lock().unwrap(), (3, 2, 1));
    let state = three.states.last().unwrap().clone();
    assert_eq!(state["tap_kpis"]["inputs"][0]["http"]["etag"], "\"v2\"");
    common::upsert(&mut tables, &three);

    // the same resource under a new URL (a signed link made anew): the download begins with what
    // the old URL's bookmark read, so it takes that bookmark over and nothing is read again
    let signed = format!("{}?signature=2", feed.url);
    let (four, stderr) = run_with(&json!({"sources": [signed.clone()]}), Some(&state));
    let read_again: Vec<_> = four
        .records("telemetry_errors")
        .iter()
        .filter(|r| r["reason"] == "late_event" || r["reason"] == "duplicate_event")
        .collect();
    assert!(read_again.is_empty(), "{read_again:?}");
    assert!(four.records("cli_executions").is_empty());
    assert_eq!(
        four.states.last().unwrap()["tap_kpis"]["inputs"][0]["name"],
        signed
    );
    assert!(stderr.contains("read before as"));
    let whole = common::temp_dir("http-conditional-whole").join("all.ndjson");
    std::fs::write(&whole, &all).unwrap();
    let mut full = common::Tables::new();
    common::upsert(&mut full, &sync_paths(&[whole]));
    common::assert_same(&common::kpi_tables(full), &common::kpi_tables(tables));
}
