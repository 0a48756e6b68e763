//! The collector: what Meltano sends comes out as capture files the tap reads exactly like the original
//! captures; limits, rejects, rotation and torn-tail recovery; a load test; a crash test with SIGKILL.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tap_kpis::collector::{self, CollectArgs, Fsync};

use common::{shared, sync, sync_paths, temp_dir};

fn args(out: &Path) -> CollectArgs {
    CollectArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        out: out.to_path_buf(),
        fsync: Fsync::Batch,
        rotate_bytes: 64 << 20,
        rotate_secs: 3600,
        gzip_closed: false,
        max_body_bytes: 1 << 20,
        request_timeout_secs: 30,
        max_concurrency: 256,
    }
}

/// One HTTP/1.1 request on a (kept-alive) connection; returns the status code.
fn request(stream: &mut BufReader<TcpStream>, method: &str, path: &str, body: &[u8]) -> u16 {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: python-requests/2.34.2\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut message = head.into_bytes();
    message.extend_from_slice(body);
    stream.get_mut().write_all(&message).unwrap();
    let mut status = String::new();
    stream.read_line(&mut status).unwrap();
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut rest = vec![0; len];
    stream.read_exact(&mut rest).unwrap();
    code
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    BufReader::new(s)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Replay a capture file (POST bodies and GET queries) against a collector.
fn replay(addr: SocketAddr, captures: &Path) {
    let mut conn = connect(addr);
    for line in std::fs::read_to_string(captures).unwrap().lines() {
        let cap: Value = serde_json::from_str(line).unwrap();
        let code = if cap["method"] == "GET" {
            let q: Vec<String> = cap["query"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v.as_str().unwrap())))
                .collect();
            request(&mut conn, "GET", &format!("/i?{}", q.join("&")), b"")
        } else {
            request(
                &mut conn,
                "POST",
                "/com.snowplowanalytics.snowplow/tp2",
                cap["body"].to_string().as_bytes(),
            )
        };
        assert_eq!(code, 200);
    }
}

fn executions(out: &common::Output) -> Vec<Value> {
    out.records("cli_executions").to_vec()
}

#[test]
fn captures_come_out_as_the_tap_reads_them() {
    let dir = temp_dir("collect-real");
    let c = collector::start(&args(&dir)).unwrap();
    let real = shared("data/meltano-real/captures.ndjson");
    let old = shared("data/meltano-old/meltano-2.1.0.ndjson");
    replay(c.addr(), &real);
    replay(c.addr(), &old);
    c.stop().unwrap();
    let collected = sync(json!({"sources": [dir.display().to_string()]}));
    let original = sync_paths(&[real, old]);
    assert_eq!(executions(&collected), executions(&original));
    assert_eq!(
        collected.records("pipeline_runs"),
        original.records("pipeline_runs")
    );
    let errors: Vec<&Value> = collected
        .records("telemetry_errors")
        .iter()
        .filter(|e| e["reason"] != "unattributed_state_change")
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn limits_rejects_and_health() {
    let dir = temp_dir("collect-limits");
    let mut a = args(&dir);
    a.max_body_bytes = 1000;
    let c = collector::start(&a).unwrap();
    let mut conn = connect(c.addr());
    assert_eq!(
        request(
            &mut conn,
            "POST",
            "/com.snowplowanalytics.snowplow/tp2",
            &[b' '; 2000]
        ),
        413
    );
    let mut conn = connect(c.addr());
    assert_eq!(
        request(
            &mut conn,
            "POST",
            "/com.snowplowanalytics.snowplow/tp2",
            b"{not json"
        ),
        400
    );
    assert_eq!(
        request(
            &mut conn,
            "POST",
            "/com.snowplowanalytics.snowplow/tp2",
            b"[1,2]"
        ),
        400
    );
    assert_eq!(
        request(
            &mut conn,
            "POST",
            "/com.snowplowanalytics.snowplow/tp2",
            b"{\"schema\": \"x\",\n \"data\": []}"
        ),
        200
    );
    assert_eq!(request(&mut conn, "GET", "/health", b""), 200);
    c.stop().unwrap();
    let rejects: String = std::fs::read_dir(dir.join(".rejects"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        rejects.contains("{not json") && rejects.contains("invalid JSON"),
        "{rejects}"
    );
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(files[0].path()).unwrap();
    assert_eq!(text.lines().count(), 1, "the pretty body became one line");
    let read = sync(json!({"sources": [dir.display().to_string()]}));
    let errors = read.records("telemetry_errors");
    assert!(
        !errors.is_empty(),
        "the accepted odd payload is quarantined by the tap"
    );
    assert!(
        errors
            .iter()
            .all(|e| !e["source"].as_str().unwrap().contains(".rejects")),
        "rejected requests are not read as telemetry: {errors:?}"
    );
}

#[test]
fn a_slow_body_times_out() {
    let dir = temp_dir("collect-slow");
    let mut a = args(&dir);
    a.request_timeout_secs = 1;
    let c = collector::start(&a).unwrap();
    let mut conn = connect(c.addr());
    let head = "POST /com.snowplowanalytics.snowplow/tp2 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"schema\"";
    conn.get_mut().write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut status = String::new();
    conn.read_line(&mut status).unwrap();
    assert!(status.contains(" 408 "), "{status}");
    assert!(started.elapsed() < Duration::from_secs(10));
    c.stop().unwrap();
}

#[test]
fn rotation_and_gzip_keep_every_event() {
    let dir = temp_dir("collect-rotate");
    let mut a = args(&dir);
    a.rotate_bytes = 20_000;
    a.gzip_closed = true;
    let c = collector::start(&a).unwrap();
    let real = shared("data/meltano-real/captures.ndjson");
    replay(c.addr(), &real);
    c.stop().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert!(names.len() > 5, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".ndjson.gz")), "{names:?}");
    let collected = sync(json!({"sources": [dir.display().to_string()]}));
    assert_eq!(executions(&collected), executions(&sync_paths(&[real])));
}

#[test]
fn a_torn_tail_is_cut_on_start() {
    let dir = temp_dir("collect-torn");
    let real = std::fs::read_to_string(shared("data/meltano-real/captures.ndjson")).unwrap();
    let lines: Vec<&str> = real.lines().collect();
    let mut content = format!("{}\n{}\n", lines[0], lines[1]);
    content.push_str(&lines[2][..lines[2].len() / 2]);
    std::fs::write(
        dir.join("telemetry-20260101T000000000000-000001.ndjson"),
        &content,
    )
    .unwrap();
    let c = collector::start(&args(&dir)).unwrap();
    c.stop().unwrap();
    let kept =
        std::fs::read_to_string(dir.join("telemetry-20260101T000000000000-000001.ndjson")).unwrap();
    assert_eq!(kept, format!("{}\n{}\n", lines[0], lines[1]));
    let torn: Vec<_> = std::fs::read_dir(dir.join(".rejects"))
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(torn.len(), 1);
    assert_eq!(
        std::fs::read(torn[0].path()).unwrap(),
        &lines[2].as_bytes()[..lines[2].len() / 2]
    );
}

fn payload(eid: &str) -> Vec<u8> {
    json!({"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
           "data": [{"e": "se", "eid": eid, "dtm": "1764039755000", "stm": "1764039756000",
                     "se_ca": "meltano elt", "se_la": "load-test"}]})
    .to_string()
    .into_bytes()
}

/// Event ids of every capture line in a directory (plain and gzip files).
fn collected_eids(dir: &Path) -> Vec<String> {
    let mut eids = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
        let p = e.path();
        if !p.is_file() {
            continue;
        }
        let mut text = String::new();
        if p.extension().is_some_and(|x| x == "gz") {
            flate2::read::MultiGzDecoder::new(std::fs::File::open(&p).unwrap())
                .read_to_string(&mut text)
                .unwrap();
        } else {
            text = std::fs::read_to_string(&p).unwrap();
        }
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            eids.push(v["body"]["data"][0]["eid"].as_str().unwrap().to_string());
        }
    }
    eids
}

/// Send `per_thread` requests from each of `threads` clients; returns the acknowledged event ids.
fn load(
    addr: SocketAddr,
    threads: usize,
    per_thread: usize,
    tag: &str,
    stop_on_error: bool,
) -> Vec<String> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for t in 0..threads {
            let acked = acked.clone();
            s.spawn(move || {
                let Ok(stream) = TcpStream::connect(addr) else {
                    return;
                };
                stream.set_nodelay(true).unwrap();
                let mut conn = BufReader::new(stream);
                let mut mine = Vec::new();
                for i in 0..per_thread {
                    let eid = format!("{tag}-{t}-{i}");
                    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        request(
                            &mut conn,
                            "POST",
                            "/com.snowplowanalytics.snowplow/tp2",
                            &payload(&eid),
                        )
                    }));
                    match ok {
                        Ok(200) => mine.push(eid),
                        _ if stop_on_error => break,
                        _ => panic!("request {eid} failed"),
                    }
                }
                acked.lock().unwrap().extend(mine);
            });
        }
    });
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

#[test]
fn load_every_acknowledged_event_is_written_once() {
    let dir = temp_dir("collect-load");
    let c = collector::start(&args(&dir)).unwrap();
    let started = Instant::now();
    let acked = load(c.addr(), 8, 50_000 / 8, "load", false);
    let secs = started.elapsed().as_secs_f64();
    c.stop().unwrap();
    assert_eq!(acked.len(), 50_000 / 8 * 8);
    println!(
        "acknowledged {} requests in {secs:.1}s: {:.0} acknowledged events/s",
        acked.len(),
        acked.len() as f64 / secs
    );
    assert!(secs < 120.0, "load test took {secs:.0}s");
    let written = collected_eids(&dir);
    let unique: HashSet<&String> = written.iter().collect();
    assert_eq!(unique.len(), written.len(), "no event written twice");
    let acked_set: HashSet<&String> = acked.iter().collect();
    assert!(
        acked_set.is_subset(&unique),
        "every acknowledged event is written"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_binary(dir: &Path, port: u16) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tap-kpis"))
        .args(["collect", "--listen", &format!("127.0.0.1:{port}"), "--out"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if TcpStream::connect(addr).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("collector did not start");
}

#[test]
fn crash_with_sigkill_loses_no_acknowledged_event() {
    let dir = temp_dir("collect-crash");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = spawn_binary(&dir, port);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    });
    let before = load(addr, 4, 100_000, "crash", true);
    killer.join().unwrap();
    assert!(
        !before.is_empty(),
        "requests were acknowledged before the kill"
    );
    let mut child = spawn_binary(&dir, port);
    let after = load(addr, 2, 500, "after", false);
    // graceful stop
    terminate(&mut child);
    let written = collected_eids(&dir);
    let counts: BTreeMap<&String, usize> = written.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e).or_default() += 1;
        m
    });
    for eid in before.iter().chain(&after) {
        assert_eq!(counts.get(eid), Some(&1), "{eid}");
    }
    let out = sync(json!({"sources": [dir.display().to_string()]}));
    let errors: Vec<&Value> = out.records("telemetry_errors").iter().collect();
    assert!(
        errors.is_empty(),
        "the tap reads the files without errors: {:?}",
        &errors[..errors.len().min(3)]
    );
    println!(
        "{} acknowledged before the kill, {} after the restart",
        before.len(),
        after.len()
    );
}

/// Stop a child with SIGTERM and wait for it.
fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful stop exits 0");
}
