//! Crash safety of incremental runs: the tap binary is killed (SIGKILL) at random moments while it
//! reads a delivery; a target keeps the records it received and the last STATE it saw, and the next
//! run resumes from that state. After every delivery the upserted rows equal one full run.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Tables, assert_same, fleet, kpi_tables, upsert};
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

/// What a target keeps: rows upserted by key, and the last state it was sent.
#[derive(Default)]
struct Target {
    tables: Tables,
    state: Option<Value>,
}

impl Target {
    /// Take the complete lines of a (possibly cut) Singer stream.
    fn receive(&mut self, stdout: &[u8]) {
        let text = String::from_utf8_lossy(stdout);
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        let out = common::parse(complete.as_bytes());
        upsert(&mut self.tables, &out);
        if let Some(s) = out.states.last() {
            self.state = Some(s.clone());
        }
    }
}

/// Run the tap; kill it after `kill_after` if it is still running. Returns stdout and whether it
/// finished.
fn run_tap(
    dir: &Path,
    config: &Value,
    state: Option<&Value>,
    kill_after: Option<Duration>,
) -> (Vec<u8>, bool) {
    let mut child = common::tap_command(dir, config, state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let started = Instant::now();
    let finished = loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the tap failed");
            break true;
        }
        if kill_after.is_some_and(|k| started.elapsed() >= k) {
            child.kill().unwrap();
            child.wait().unwrap();
            break false;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    (reader.join().unwrap(), finished)
}

#[test]
fn killed_runs_resume_without_loss_or_double_counting() {
    let root = common::temp_dir("crash");
    let files = fleet(&root.join("fleet"), 60, 60, 21);
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let config = json!({"sources": [src.display().to_string()], "late_event_days": 400});
    let deliveries: [usize; 3] = [20, 40, 60];
    let write_upto = |days: usize| {
        for (name, lines) in files.iter().take(days) {
            std::fs::write(src.join(name), lines.join("\n") + "\n").unwrap();
        }
    };
    // how long a whole run takes, to spread the kill points over it
    write_upto(60);
    let started = Instant::now();
    let (full_out, finished) = run_tap(&root, &config, None, None);
    assert!(finished);
    let run_time = started.elapsed();
    let mut full = Tables::new();
    upsert(&mut full, &common::parse(&full_out));
    let full = kpi_tables(full);

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut kills = 0;
    // rounds until enough runs were killed (a run that finishes before its kill point is not one)
    let mut round = 0;
    while kills < 24 && round < 60 {
        round += 1;
        for f in std::fs::read_dir(&src).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        let mut target = Target::default();
        for (k, days) in deliveries.iter().enumerate() {
            write_upto(*days);
            // one or two kills during this delivery's run, then a run that finishes
            let attempts = 1 + usize::from(rng.random::<bool>());
            for _ in 0..attempts {
                let at = run_time.mul_f64(rng.random_range(0.0..0.6));
                let (out, finished) = run_tap(&root, &config, target.state.as_ref(), Some(at));
                target.receive(&out);
                kills += usize::from(!finished);
            }
            let (out, finished) = run_tap(&root, &config, target.state.as_ref(), None);
            assert!(finished);
            target.receive(&out);
            if k + 1 == deliveries.len() {
                assert_same(&full, &kpi_tables(std::mem::take(&mut target.tables)));
            }
        }
        eprintln!("round {round}: {kills} kills so far");
    }
    assert!(kills >= 20, "only {kills} runs were killed");
}
