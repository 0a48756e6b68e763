//! Incremental runs equal a full refresh: a generated fleet's telemetry is delivered in pieces (new
//! files, lines appended to files, a line cut in the middle and finished in the next delivery, events
//! arriving a delivery late, copies of events in a later delivery); the tap runs after each delivery
//! with the previous run's state, each run's records are upserted by key, and the result equals one
//! run over everything.

mod common;

use common::{Tables, assert_same, fleet, kpi_tables, upsert};
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tap_kpis::catalog::Selections;
use tap_kpis::config;
use tap_kpis::state::StateText;
use tap_kpis::sync::SyncReport;

fn run(config: &Value, state: Option<&Value>) -> (common::Output, Value) {
    let (out, last, _) = run_counting(config, state);
    (out, last)
}

/// A run, with its report.
fn run_counting(config: &Value, state: Option<&Value>) -> (common::Output, Value, SyncReport) {
    let cfg = config::validate(config.as_object().unwrap()).unwrap();
    let mut buf = Vec::new();
    let text = state.map(StateText::from_value);
    let fields = text
        .as_ref()
        .map(|t| t.fields().expect("the state is JSON"));
    let report =
        tap_kpis::sync::run(&cfg, &Selections::all(), fields, &mut buf).expect("sync succeeds");
    let out = common::parse(&buf);
    let last = out.states.last().cloned().expect("a STATE message");
    (out, last, report)
}

/// What the incremental runs of [`check_pieces`] did with the state's dormant projects.
#[derive(Debug, Default)]
struct DormantUse {
    /// Runs that left dormant projects packed, and the projects unpacked over all runs.
    runs_leaving_packed: usize,
    unpacked: usize,
    /// Runs that unpacked dormant projects and still wrote the history back as it was read (their
    /// rows go to `history_returned`).
    history_carried_while_unpacking: usize,
    /// Runs that carried the settled part of the ledger as it was read.
    settled_carried: usize,
}

/// How a fleet is delivered: cut days between deliveries, and the share of lines arriving one
/// delivery late, copied into the next delivery, and of deliveries ending inside a line.
struct Pieces<'a> {
    cuts: &'a [u32],
    late_event_days: u32,
    late: f64,
    copies: f64,
    torn: f64,
    /// The generator's activity (1: the usual fleet).
    activity: f64,
}

/// Deliver a generated fleet in pieces and compare incremental runs with one full run.
/// Returns the last state and the number of executions of the full run.
fn check_pieces(
    case: &str,
    seed: u64,
    projects: usize,
    days: u32,
    pieces: Pieces,
) -> (Value, usize, DormantUse) {
    let Pieces {
        cuts,
        late_event_days,
        late,
        copies,
        torn,
        activity,
    } = pieces;
    let root = common::temp_dir(&format!("incremental-{case}"));
    let files = common::fleet_at(&root.join("fleet"), projects, days, seed, activity);
    let deliveries = cuts.len() + 1;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // portions[file][delivery] = text appended to the file in that delivery
    let mut portions: Vec<Vec<String>> = vec![vec![String::new(); deliveries]; files.len()];
    for (f, (_, lines)) in files.iter().enumerate() {
        let day = f as u32;
        let base = cuts.iter().filter(|c| **c <= day).count();
        for line in lines {
            let mut d = base;
            if d + 1 < deliveries && rng.random::<f64>() < late {
                d += 1;
            }
            portions[f][d].push_str(line);
            portions[f][d].push('\n');
            if d + 1 < deliveries && rng.random::<f64>() < copies {
                portions[f][d + 1].push_str(line);
                portions[f][d + 1].push('\n');
            }
        }
    }
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let config =
        json!({"sources": [src.display().to_string()], "late_event_days": late_event_days});
    let mut tables = Tables::new();
    let mut state: Option<Value> = None;
    let (mut lines_read, mut torn_lines) = (0u64, 0u64);
    let mut dormant = DormantUse::default();
    for k in 0..deliveries {
        for (f, (name, _)) in files.iter().enumerate() {
            let mut content: String = portions[f][..=k].concat();
            if content.is_empty() {
                continue;
            }
            if k + 1 < deliveries && rng.random::<f64>() < torn {
                // the delivery ends inside a line; the next one finishes it
                let added = portions[f][k].len();
                if added > 2 {
                    let keep = content.len() - added + rng.random_range(1..added - 1);
                    let mut cut = keep;
                    while !content.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    content.truncate(cut);
                    torn_lines += u64::from(!content.ends_with('\n'));
                }
            }
            std::fs::write(src.join(name), content).unwrap();
        }
        let (out, next, report) = run_counting(&config, state.as_ref());
        let lines = report.lines;
        dormant.runs_leaving_packed += usize::from(report.dormant_left_packed > 0);
        dormant.unpacked += report.dormant_unpacked;
        if let Some(before) = &state {
            // summarised history is final: while the cut stays put the dormant projects' part is
            // carried as it was (a project unpacked from it has its rows written beside the
            // history), and a run that unpacked none carries the history as it was too
            let (was, now) = (&before["tap_kpis"], &next["tap_kpis"]);
            if was["cut_day"] == now["cut_day"] && now["ledger_settled"].is_string() {
                // executions too old for late events stay as they were read
                dormant.settled_carried +=
                    usize::from(was["ledger_settled"] == now["ledger_settled"]);
            }
            if was["cut_day"] == now["cut_day"] && was["dormant_cut"] == was["cut_day"] {
                if report.dormant_unpacked > 0 && was["history"] == now["history"] {
                    dormant.history_carried_while_unpacking += 1;
                    assert!(
                        now["history_returned"].is_string(),
                        "history carried while a project returned, yet no history_returned"
                    );
                }
                assert_eq!(
                    was["dormant"], now["dormant"],
                    "dormant history before the cut changed"
                );
                if was["executions"] == now["executions"] {
                    assert_eq!(
                        was["history"], now["history"],
                        "history before the cut changed"
                    );
                }
            }
        }
        lines_read += lines;
        upsert(&mut tables, &out);
        state = Some(next);
    }
    // each line is read once, but for a torn line read again when finished
    let total: u64 = portions
        .iter()
        .flatten()
        .map(|p| p.lines().count() as u64)
        .sum();
    assert_eq!(
        lines_read,
        total + torn_lines,
        "lines read over the incremental runs"
    );
    // one full run over the same final files
    let (full_out, _) = run(&config, None);
    let mut full = Tables::new();
    upsert(&mut full, &full_out);
    let executions = full_out.records("cli_executions").len();
    assert_same(&kpi_tables(full), &kpi_tables(tables));
    let _ = std::fs::remove_dir_all(&root);
    (state.unwrap_or_default(), executions, dormant)
}

#[test]
fn files_arriving_day_by_day_equal_one_run() {
    check_pieces(
        "by-file",
        3,
        12,
        40,
        Pieces {
            cuts: &[10, 20, 30],
            late_event_days: 400,
            late: 0.0,
            copies: 0.0,
            torn: 0.0,
            activity: 1.0,
        },
    );
}

#[test]
fn torn_lines_late_events_and_copies_equal_one_run() {
    check_pieces(
        "messy",
        4,
        12,
        45,
        Pieces {
            cuts: &[15, 16, 30],
            late_event_days: 400,
            late: 0.1,
            copies: 0.05,
            torn: 0.5,
            activity: 1.0,
        },
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn random_splits_equal_one_run(
        seed in 0u64..1000,
        projects in 3usize..15,
        mut cuts in proptest::collection::vec(1u32..40, 1..4),
        late in 0.0f64..0.2,
        copies in 0.0f64..0.1,
        torn in 0.0f64..1.0,
    ) {
        cuts.sort_unstable();
        cuts.dedup();
        check_pieces(&format!("prop-{seed}"), seed, projects, 40, Pieces { cuts: &cuts, late_event_days: 400, late, copies, torn, activity: 1.0 });
    }
}

#[test]
fn a_long_history_summarised_in_the_state_equals_one_run() {
    // deliveries every 5 days over 5 months with a 12-day horizon: old executions are summarised
    let cuts: Vec<u32> = (1..30).map(|i| i * 5).collect();
    let (state, executions, _) = check_pieces(
        "summarised",
        6,
        14,
        150,
        Pieces {
            cuts: &cuts,
            late_event_days: 12,
            late: 0.1,
            copies: 0.03,
            torn: 0.3,
            activity: 1.0,
        },
    );
    let kept = state["tap_kpis"]["executions"].as_u64().unwrap() as usize;
    assert!(
        kept * 2 < executions,
        "the state keeps {kept} of {executions} executions"
    );
}

#[test]
fn dormant_projects_left_packed_or_unpacked_equal_one_run() {
    // a quiet fleet over most of a year, delivered weekly at the end: most projects have gone
    // quiet for months (dormant in the state), some come back and are unpacked
    let cuts: Vec<u32> = (0..8).map(|i| 250 + i * 7).collect();
    let (state, _, dormant) = check_pieces(
        "dormant",
        21,
        400,
        310,
        Pieces {
            cuts: &cuts,
            late_event_days: 7,
            // a line a delivery late (or the rest of a torn file) would be older than the
            // horizon for the first delivery
            late: 0.0,
            copies: 0.02,
            torn: 0.0,
            activity: 0.05,
        },
    );
    let tap = &state["tap_kpis"];
    assert!(
        tap["dormant_projects"].as_u64().unwrap_or(0) > 0,
        "no dormant project in the state"
    );
    assert!(dormant.runs_leaving_packed > 0, "{dormant:?}");
    assert!(dormant.unpacked > 0, "{dormant:?}");
    assert!(dormant.history_carried_while_unpacking > 0, "{dormant:?}");
    assert!(dormant.settled_carried > 0, "{dormant:?}");
}

#[test]
fn no_new_input_emits_only_state() {
    let root = common::temp_dir("incremental-idle");
    let files = fleet(&root.join("fleet"), 10, 30, 9);
    assert!(!files.is_empty());
    let config = json!({"sources": [root.join("fleet").display().to_string()]});
    let (first, state) = run(&config, None);
    assert!(!first.records.is_empty());
    let (second, next) = run(&config, Some(&state));
    assert!(
        second.records.is_empty(),
        "records: {:?}",
        second.records.keys()
    );
    assert!(second.schemas.is_empty());
    assert_eq!(next, state, "the state stands as it is");
}

#[test]
fn events_older_than_the_horizon_are_set_aside_as_late() {
    let root = common::temp_dir("incremental-horizon");
    let files = fleet(&root.join("fleet"), 8, 30, 5);
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let config = json!({"sources": [src.display().to_string()], "late_event_days": 3});
    // days 0..9 and 20..29 first; then the middle days arrive, more than 3 days late
    let early: Vec<&(String, Vec<String>)> = files
        .iter()
        .filter(|(n, _)| {
            !(n.as_str() >= "telemetry-2025-01-11" && n.as_str() < "telemetry-2025-01-21")
        })
        .collect();
    for (name, lines) in &early {
        std::fs::write(src.join(name), lines.join("\n") + "\n").unwrap();
    }
    let (_, state) = run(&config, None);
    let middle: Vec<&(String, Vec<String>)> = files
        .iter()
        .filter(|(n, _)| {
            n.as_str() >= "telemetry-2025-01-11" && n.as_str() < "telemetry-2025-01-21"
        })
        .collect();
    assert_eq!(middle.len(), 10);
    for (name, lines) in &middle {
        std::fs::write(src.join(name), lines.join("\n") + "\n").unwrap();
    }
    let (out, _) = run(&config, Some(&state));
    let late = out
        .records("telemetry_errors")
        .iter()
        .filter(|r| r["reason"] == "late_event")
        .count();
    assert!(late > 10, "late events quarantined: {late}");
    assert!(
        out.records("cli_executions").is_empty(),
        "nothing late is applied"
    );
}

#[test]
fn a_moved_source_directory_resumes_where_it_stopped() {
    let root = common::temp_dir("incremental-moved");
    let files = fleet(&root.join("fleet"), 10, 30, 13);
    let (before, last) = files.split_at(files.len() - 1);
    let (old, new) = (root.join("old"), root.join("new"));
    std::fs::create_dir_all(&old).unwrap();
    for (name, lines) in before {
        std::fs::write(old.join(name), lines.join("\n") + "\n").unwrap();
    }
    let config_at = |dir: &std::path::Path| json!({"sources": [dir.display().to_string()]});
    let (first, state) = run(&config_at(&old), None);
    // the directory is renamed and a new day's file arrives in it
    std::fs::rename(&old, &new).unwrap();
    let (name, lines) = &last[0];
    std::fs::write(new.join(name), lines.join("\n") + "\n").unwrap();
    let (second, next, report) = run_counting(&config_at(&new), Some(&state));
    assert_eq!(
        report.unchanged_inputs,
        before.len(),
        "moved files not read"
    );
    assert_eq!(report.lines, lines.len() as u64, "only the new file read");
    let set_aside: Vec<&Value> = second
        .records("telemetry_errors")
        .iter()
        .filter(|r| r["reason"] == "late_event" || r["reason"] == "duplicate_event")
        .collect();
    assert!(set_aside.is_empty(), "events read again: {set_aside:?}");
    let names: Vec<&str> = next["tap_kpis"]["inputs"]
        .as_array()
        .expect("bookmarks")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(names.len(), files.len());
    let new_prefix = new.display().to_string();
    assert!(
        names.iter().all(|n| n.starts_with(&new_prefix)),
        "{names:?}"
    );
    // the two runs upserted equal one run over the moved directory
    let mut tables = Tables::new();
    upsert(&mut tables, &first);
    upsert(&mut tables, &second);
    let (full_out, _) = run(&config_at(&new), None);
    let mut full = Tables::new();
    upsert(&mut full, &full_out);
    assert_same(&kpi_tables(full), &kpi_tables(tables));
    let _ = std::fs::remove_dir_all(&root);
}
