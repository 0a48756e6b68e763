//! Rule boundaries of kpis.md §3–§6, each on a minimal hand-built input.

use chrono::NaiveDate;
use serde_json::{Value, json};

use super::Model;
use super::calendar::{DAY_MS, day_number, fmt_day};

/// The streams under test, collected into vectors.
mod active {
    use super::super::{Model, active};
    use serde_json::Value;
    pub fn daily_active_projects(m: &Model) -> Vec<Value> {
        active::daily_active_projects(m).collect()
    }
    pub fn active_projects_daily(m: &Model) -> Vec<Value> {
        active::active_projects_daily(m).collect()
    }
    pub fn monthly_kpis(m: &Model) -> Vec<Value> {
        active::monthly_kpis(m).collect()
    }
}

mod facts {
    use super::super::{Model, facts};
    use serde_json::Value;
    pub fn projects(m: &Model) -> Vec<Value> {
        facts::projects(m).collect()
    }
    pub fn pipelines(m: &Model) -> Vec<Value> {
        facts::pipelines(m).collect()
    }
    pub fn pipeline_runs(m: &Model) -> Vec<Value> {
        facts::pipeline_runs(m).collect()
    }
}

mod usage {
    use super::super::{Model, usage};
    use serde_json::Value;
    pub use usage::segments;
    pub fn cohort_retention(m: &Model) -> Vec<Value> {
        usage::cohort_retention(m).collect()
    }
}
use crate::normalize::{CommandLine, Execution, Facts, PIPELINE_COMMANDS, Profile, plugins};
use std::sync::Arc;

/// Day number of 2024-01-01 (a Monday).
fn d0() -> i64 {
    day_number(NaiveDate::from_ymd_opt(2024, 1, 1).unwrap())
}

struct X(Execution);

impl X {
    fn new(project: &str, id: &str, day: i64, command: &str, n_plugins: usize) -> X {
        let plugins = (0..n_plugins)
            .map(|i| {
                plugins::plugin_from_dict(
                    json!({"category": "extractors", "name_hash": format!("h{i}")})
                        .as_object()
                        .unwrap(),
                )
            })
            .collect();
        let start = (d0() + day) * DAY_MS + 3_600_000;
        X(Execution {
            execution_id: id.into(),
            profile: Arc::new(Profile {
                project_id: project.into(),
                project_id_source: Some("explicit".into()),
                is_ci: Some(false),
                ..Profile::default()
            }),
            command_line: Arc::new(CommandLine {
                command: Some(command.into()),
                cli_command: Some(command.into()),
                ..CommandLine::default()
            }),
            started_ms: start,
            finished_ms: start + 1000,
            exit_code: Some(0),
            event_count: 1,
            plugins,
            pipeline_id: None,
            ip_hashes: Default::default(),
            weight: 1,
            presence_months: Box::default(),
        })
    }
    fn exit(mut self, code: Option<i64>) -> X {
        self.0.exit_code = code;
        self
    }
    fn source(mut self, s: &str) -> X {
        self.0.project_id_source = Some(s.into());
        self
    }
    fn ip(mut self, ip: &str) -> X {
        std::sync::Arc::make_mut(&mut self.0.ip_hashes).insert(ip.into());
        self
    }
    fn build(mut self) -> Execution {
        let x = &mut self.0;
        if x.command_line
            .command
            .as_deref()
            .is_some_and(|c| PIPELINE_COMMANDS.contains(&c))
            && !x.plugins.is_empty()
        {
            x.pipeline_id = Some(
                plugins::pipeline_id(&x.plugins, x.environment_hash.as_deref(), &x.project_id)
                    .into(),
            );
        }
        self.0
    }
}

/// A project that starts on day 0 (init) and runs a pipeline on each of `days`.
fn project_runs(project: &str, days: &[i64]) -> Vec<Execution> {
    let mut v = vec![X::new(project, &format!("{project}-init"), 0, "init", 0).build()];
    for d in days {
        v.push(X::new(project, &format!("{project}-{d}"), *d, "run", 2).build());
    }
    v
}

/// An incremental run's scope: `projects` touched, rows re-emitted from `from`.
fn scope_touching(projects: &[&str], from: i64, previous_as_of: i64) -> super::ProjectScope {
    super::ProjectScope {
        touched: projects.iter().map(|p| p.to_string()).collect(),
        rewritten: Default::default(),
        from,
        previous_as_of,
        completed: None,
        exact_from: None,
    }
}

fn facts_of(xs: Vec<Execution>) -> Facts {
    Facts::from_executions(xs)
}

fn day_row(rows: &[Value], day: i64) -> Value {
    let date = fmt_day(d0() + day);
    rows.iter()
        .find(|r| r["date"] == date)
        .cloned()
        .unwrap_or(Value::Null)
}

fn active_days(facts: &Facts, as_of: i64) -> Vec<i64> {
    let model = Model::new(facts, Some(d0() + as_of));
    active::daily_active_projects(&model)
        .iter()
        .map(|r| {
            day_number(NaiveDate::parse_from_str(r["date"].as_str().unwrap(), "%Y-%m-%d").unwrap())
                - d0()
        })
        .collect()
}

#[test]
fn age_six_days_does_not_qualify_seven_does() {
    assert!(active_days(&facts_of(project_runs("p", &[6])), 60).is_empty());
    let days = active_days(&facts_of(project_runs("p", &[7])), 60);
    assert_eq!(days.first(), Some(&7));
}

#[test]
fn window_includes_d_minus_28_and_excludes_d_minus_29() {
    let f = facts_of(project_runs("p", &[10]));
    let rows = active::active_projects_daily(&Model::new(&f, Some(d0() + 60)));
    assert_eq!(day_row(&rows, 9)["active_projects"], 0);
    assert_eq!(day_row(&rows, 10)["active_projects"], 1);
    assert_eq!(
        day_row(&rows, 38)["active_projects"],
        1,
        "D-28 is in the window"
    );
    assert_eq!(day_row(&rows, 39)["active_projects"], 0, "D-29 is out");
}

#[test]
fn churn_day_is_last_qualifying_day_plus_28() {
    let f = facts_of(project_runs("p", &[10, 12]));
    let model = Model::new(&f, Some(d0() + 80));
    let rows = active::daily_active_projects(&model);
    let churn: Vec<&Value> = rows.iter().filter(|r| r["is_churn_day"] == true).collect();
    assert_eq!(churn.len(), 1);
    assert_eq!(churn[0]["date"], fmt_day(d0() + 40));
    assert_eq!(
        day_row(&active::active_projects_daily(&model), 40)["churned"],
        1
    );
}

#[test]
fn reactivation_after_one_inactive_day() {
    // [10, 38] then a qualifying day on 40: day 39 is inactive, 40 is a reactivation
    let f = facts_of(project_runs("p", &[10, 40]));
    let model = Model::new(&f, Some(d0() + 90));
    let rows = active::daily_active_projects(&model);
    assert!(!rows.iter().any(|r| r["date"] == fmt_day(d0() + 39)));
    let r40 = rows
        .iter()
        .find(|r| r["date"] == fmt_day(d0() + 40))
        .unwrap();
    assert_eq!(r40["is_reactivated"], true);
    assert_eq!(r40["is_added"], false);
    let r10 = rows
        .iter()
        .find(|r| r["date"] == fmt_day(d0() + 10))
        .unwrap();
    assert_eq!(r10["is_added"], true);
    // touching windows (next qualifying day = end + 1) are one stretch: no reactivation
    let g = facts_of(project_runs("p", &[10, 39]));
    let rows = active::daily_active_projects(&Model::new(&g, Some(d0() + 90)));
    assert_eq!(
        rows.iter().filter(|r| r["is_reactivated"] == true).count(),
        0
    );
    let daily = active::active_projects_daily(&Model::new(&f, Some(d0() + 90)));
    assert_eq!(day_row(&daily, 40)["reactivated"], 1);
    assert_eq!(day_row(&daily, 10)["added"], 1);
}

#[test]
fn added_on_the_first_is_not_active_at_start_reactivated_on_the_first_is() {
    // 2024-02-01 is day 31.
    let added = facts_of(project_runs("a", &[31, 45])); // active [31, 73]: through Feb 29
    let m = Model::new(&added, Some(d0() + 120));
    let feb = active::daily_active_projects(&m)
        .into_iter()
        .find(|r| r["date"] == "2024-02-01")
        .unwrap();
    assert_eq!(feb["is_added"], true);
    assert_eq!(feb["is_active_month_start"], false);
    assert_eq!(feb["eom_added"], true);
    // Reactivated on Feb 1: active [-20, 8], inactive from day 9, qualifying again on day 31.
    let re = facts_of(vec![
        X::new("r", "r0", -40, "init", 0).build(),
        X::new("r", "r1", -20, "run", 2).build(), // active [-20, 8]
        X::new("r", "r2", 31, "run", 2).build(),  // reactivated on day 31 = 2024-02-01
    ]);
    let m = Model::new(&re, Some(d0() + 120));
    let feb = active::daily_active_projects(&m)
        .into_iter()
        .find(|r| r["date"] == "2024-02-01")
        .unwrap();
    assert_eq!(feb["is_reactivated"], true);
    assert_eq!(feb["is_active_month_start"], true);
    assert_eq!(
        feb["eom_active_unchanged"], false,
        "churns on 2024-02-29 (day 59)"
    );
    assert_eq!(feb["eom_churned"], true);
}

#[test]
fn month_flags_only_for_complete_months() {
    let f = facts_of(project_runs("p", &[10, 40, 45]));
    // as_of 2024-02-15: January complete, February not
    let m = Model::new(&f, Some(d0() + 45));
    let rows = active::daily_active_projects(&m);
    let jan = rows.iter().find(|r| r["date"] == "2024-01-20").unwrap();
    let feb = rows.iter().find(|r| r["date"] == "2024-02-10").unwrap();
    assert_eq!(
        jan["is_active_month_end"], true,
        "active [10, 73] over Jan 31"
    );
    assert!(feb["is_active_month_end"].is_null());
    let months = active::monthly_kpis(&m);
    assert_eq!(months.len(), 2);
    assert_eq!(months[0]["is_complete"], true);
    assert!(months[1]["monthly_active_projects"].is_null());
    assert_eq!(months[1]["active_projects_any_day"], 1);
    // no rows after as_of
    assert!(
        rows.iter()
            .all(|r| r["date"].as_str().unwrap() <= "2024-02-15")
    );
}

#[test]
fn random_source_never_qualifies_persisted_random_does() {
    let runs = |ips: &[&str]| {
        let mut v = vec![X::new("p", "i", 0, "init", 0).source("random").build()];
        for (i, d) in [10i64, 20].iter().enumerate() {
            v.push(
                X::new("p", &format!("r{d}"), *d, "run", 1)
                    .source("random")
                    .ip(ips[i % ips.len()])
                    .build(),
            );
        }
        facts_of(v)
    };
    let one_ip = runs(&["a"]);
    assert_eq!(one_ip.projects[0].source, "random");
    assert!(active_days(&one_ip, 60).is_empty());
    let two_ips = runs(&["a", "b"]);
    assert_eq!(two_ips.projects[0].source, "persisted_random");
    assert_eq!(active_days(&two_ips, 60).first(), Some(&10));
    // lifespan of exactly 7 days does not persist
    let short = facts_of(vec![
        X::new("p", "a", 0, "run", 1)
            .source("random")
            .ip("a")
            .build(),
        X::new("p", "b", 7, "run", 1)
            .source("random")
            .ip("b")
            .build(),
    ]);
    assert_eq!(short.projects[0].source, "random");
}

#[test]
fn ui_counts_only_in_the_rolling_variants() {
    let f = facts_of(vec![
        X::new("p", "i", 0, "init", 0).build(),
        X::new("p", "u1", 20, "ui", 1).build(),
        X::new("p", "u2", 20, "ui", 1).build(),
    ]);
    let m = Model::new(&f, Some(d0() + 60));
    let rows = active::active_projects_daily(&m);
    assert_eq!(day_row(&rows, 20)["exec_greater_1"], 1);
    assert_eq!(day_row(&rows, 48)["exec_greater_1"], 1);
    assert_eq!(day_row(&rows, 49)["exec_greater_1"], 0);
    assert_eq!(day_row(&rows, 20)["exec_executions"], 0);
    assert_eq!(day_row(&rows, 20)["active_projects"], 0);
    let p = &facts::projects(&m)[0];
    assert_eq!(p["exec_executions"], 0);
}

#[test]
fn unique_pipe_greater_1_needs_two_pipelines_on_one_day() {
    let mut two = X::new("p", "b", 20, "run", 1).build();
    two.plugins[0] = plugins::plugin_from_dict(json!({"category": "loaders"}).as_object().unwrap());
    two.pipeline_id = Some(plugins::pipeline_id(&two.plugins, None, "p").into());
    let f = facts_of(vec![
        X::new("p", "a", 20, "run", 1).build(),
        two,
        X::new("p", "c", 21, "run", 1).build(),
        // one pipeline run twice in a day is not two pipelines
        X::new("p", "d", 60, "run", 1).build(),
        X::new("p", "e", 60, "run", 1).build(),
    ]);
    let rows = active::active_projects_daily(&Model::new(&f, Some(d0() + 70)));
    assert_eq!(day_row(&rows, 20)["unique_pipe_greater_1"], 1);
    assert_eq!(day_row(&rows, 20)["unique_pipelines"], 2);
    assert_eq!(day_row(&rows, 21)["unique_pipelines"], 1);
    assert_eq!(day_row(&rows, 48)["unique_pipe_greater_1"], 1);
    assert_eq!(day_row(&rows, 49)["unique_pipe_greater_1"], 0);
    assert_eq!(day_row(&rows, 60)["unique_pipelines"], 1);
    assert_eq!(day_row(&rows, 60)["unique_pipe_greater_1"], 0);
}

#[test]
fn missing_exit_code_is_a_failure() {
    let f = facts_of(vec![
        X::new("p", "a", 0, "run", 1).exit(None).build(),
        X::new("p", "b", 0, "run", 1).exit(Some(0)).build(),
    ]);
    let m = Model::new(&f, None);
    let runs = facts::pipeline_runs(&m);
    let a = runs.iter().find(|r| r["execution_id"] == "a").unwrap();
    assert_eq!(a["is_success"], false);
    assert!(a["exit_code"].is_null());
    let day = &active::active_projects_daily(&m)[0];
    assert_eq!(day["pipeline_success_rate"], 0.5);
    assert_eq!(facts::pipelines(&m)[0]["successful_runs"], 1);
}

#[test]
fn segments_count_runs_while_active_at_month_end() {
    // Active through the end of February (qualifying days 10 and 40 -> [10, 68]).
    let mut xs = project_runs("p", &[10, 40]);
    for i in 0..49 {
        xs.push(X::new("p", &format!("f{i}"), 45, "run", 2).build());
    }
    let f = facts_of(xs);
    let m = Model::new(&f, Some(d0() + 100));
    let seg = usage::segments(&m);
    let feb = seg
        .iter()
        .find(|s| fmt_day(super::calendar::month_first_day(s.month)) == "2024-02-01")
        .unwrap();
    assert_eq!((feb.pipeline_runs, feb.segment), (50, "MARLIN"));
    // after churn (day 68 = 2024-03-09) March has no active month end: NO_PIPELINES with runs
    let mut ys = project_runs("q", &[10]);
    ys.push(X::new("q", "late", 62, "run", 2).build()); // 2024-03-03: active [62, 90], churn day 90 = Mar 31
    let g = facts_of(ys);
    let m = Model::new(&g, Some(d0() + 120));
    let march = usage::segments(&m)
        .into_iter()
        .find(|s| fmt_day(super::calendar::month_first_day(s.month)) == "2024-03-01")
        .unwrap();
    assert_eq!(
        march.pipeline_runs_active_eom, 1,
        "plain presence: the churn day still counts"
    );
}

#[test]
fn cohort_retention_counts_any_execution() {
    let f = facts_of(vec![
        X::new("a", "a1", 0, "init", 0).build(),
        X::new("a", "a2", 40, "config", 0).build(),
        X::new("b", "b1", 5, "run", 1).build(),
        X::new("b", "b2", 6, "run", 1).build(),
    ]);
    let m = Model::new(&f, Some(d0() + 70));
    let rows = usage::cohort_retention(&m);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["active_projects"], 2);
    assert_eq!(rows[0]["active_projects_multi_exec"], 1);
    assert_eq!(rows[1]["active_projects"], 1);
    assert_eq!(rows[1]["retention"], 0.5);
    assert_eq!(rows[1]["retention_multi_exec"], 0.0);
    assert_eq!(rows[2]["retention"], 0.0);
}

#[test]
fn new_projects_acquired_and_activated_differ() {
    let f = facts_of(project_runs("p", &[10]));
    let m = Model::new(&f, Some(d0() + 40));
    let rows = active::active_projects_daily(&m);
    assert_eq!(day_row(&rows, 0)["new_projects_acquired"], 1);
    assert_eq!(day_row(&rows, 0)["new_projects_activated"], 0);
    assert_eq!(day_row(&rows, 10)["new_projects_activated"], 1);
}

#[test]
fn daily_rows_as_text_are_the_rows_as_values_written() {
    let f = facts_of(vec![
        X::new("r", "r0", -40, "init", 0).build(),
        X::new("r", "r1", -20, "run", 2).build(),
        X::new("r", "r2", 31, "run", 2).build(),
        // an id that JSON must escape
        X::new("q\"\\é\u{1}", "q0", 0, "init", 0).build(),
        X::new("q\"\\é\u{1}", "q1", 10, "elt", 1).build(),
        // ids with one character to escape each
        X::new("b\\", "b0", 0, "init", 0).build(),
        X::new("b\\", "b1", 10, "elt", 1).build(),
        X::new("c\u{1f}", "c0", 0, "init", 0).build(),
        X::new("c\u{1f}", "c1", 10, "elt", 1).build(),
    ]);
    let mut m = Model::new(&f, Some(d0() + 50));
    let written = |m: &Model| -> (Vec<String>, Vec<String>) {
        let values = super::active::daily_active_projects(m)
            .map(|v| v.to_string())
            .collect();
        (
            values,
            super::active::daily_active_projects_json(m).collect(),
        )
    };
    let (values, text) = written(&m);
    assert!(values.len() > 40, "both projects have active days");
    assert_eq!(values, text);
    // within an incremental run's scope: the same rows both ways, fewer of them
    m.project_scope = Some(scope_touching(&["q\"\\é\u{1}"], d0() + 31, d0() + 45));
    let (scoped, scoped_text) = written(&m);
    assert!(!scoped.is_empty() && scoped.len() < values.len());
    assert_eq!(scoped, scoped_text);
}

#[test]
fn execution_rows_as_text_are_the_rows_as_values_written() {
    let mut odd = X::new("q\"\\é", "q1", 10, "elt", 3).exit(None).build();
    odd.plugins[1].first_seen_ms = Some((d0() + 10) * DAY_MS + 61_001);
    let f = facts_of(vec![
        X::new("r", "r0", -40, "init", 0).build(),
        X::new("r", "r1", -20, "run", 2).source("random").build(),
        odd,
    ]);
    let m = Model::new(&f, Some(d0() + 50));
    let values: Vec<String> = super::facts::cli_executions(&m)
        .map(|v| v.to_string())
        .collect();
    let text: Vec<String> = super::facts::cli_executions_json(&m).collect();
    assert_eq!(values.len(), 3);
    assert_eq!(values, text);
    let row: Value = serde_json::from_str(&text[2]).unwrap();
    assert_eq!(row["exit_code"], Value::Null);
    assert_eq!(row["plugin_count"], 3);
    assert_eq!(
        row["plugins"][1]["first_seen_at"],
        "2024-01-11T00:01:01.001Z"
    );
    assert_eq!(row["is_pipeline_run"], true);
    assert_eq!(row["project_id"], "q\"\\é");
}

#[test]
fn project_rows_as_text_are_the_rows_as_values_written() {
    let mut xs = project_runs("p", &[1, 2, 9]);
    xs.push(X::new("p", "p-exec", 3, "invoke", 0).exit(Some(1)).build());
    xs.push(X::new("p", "p-other", 4, "elt", 3).exit(None).build());
    xs.extend(project_runs("q\"\\é", &[5]));
    xs.push(
        X::new("r", "r0", 6, "init", 0)
            .source("random")
            .ip("a")
            .build(),
    );
    let mut f = facts_of(xs);
    f.projects[0].opted_out_ms = Some((d0() + 20) * DAY_MS + 5);
    let m = Model::new(&f, Some(d0() + 50));
    let values: Vec<String> = super::facts::projects(&m).map(|v| v.to_string()).collect();
    let text: Vec<String> = super::facts::projects_json(&m).collect();
    assert_eq!(values.len(), 3);
    assert_eq!(values, text);
    let p: Value = serde_json::from_str(&text[0]).unwrap();
    assert_eq!(p["executions"], 6);
    // three runs, the invoke and the elt; init is not one
    assert_eq!(p["exec_executions"], 5);
    assert_eq!(p["exec_executions_successful"], 3);
    assert_eq!(p["pipeline_runs"], 4);
    assert_eq!(p["pipeline_runs_successful"], 3);
    // runs of two plugins on days 1, 2 and 9 share a pipeline; the run of three is another
    assert_eq!(p["unique_pipelines"], 2);
    assert_eq!(p["has_opted_out"], true);
    assert_eq!(p["opted_out_at"], "2024-01-21T00:00:00.005Z");
}

#[test]
fn a_project_takes_the_source_of_its_first_execution_that_is_not_init() {
    // enough executions that the projects are gathered in halves: the first source is in the
    // earlier half, a later one in the other
    let f = facts_of(vec![
        X::new("p", "p0", 0, "init", 0).source("random").build(),
        X::new("p", "p1", 1, "run", 1).source("explicit").build(),
        X::new("q", "q0", 2, "run", 1).source("random").build(),
        X::new("p", "p2", 3, "run", 1).source("env").ip("a").build(),
        X::new("q", "q1", 4, "run", 1).ip("b").build(),
    ]);
    let source = |id: &str| {
        let p = f.projects.iter().find(|p| p.project_id == id).unwrap();
        (p.source.as_str(), p.first_event_ms, p.last_event_ms)
    };
    let at = |day: i64| (d0() + day) * DAY_MS + 3_600_000;
    assert_eq!(source("p"), ("explicit", at(0), at(3)));
    assert_eq!(source("q"), ("random", at(2), at(4)));
    // each execution points at its own project
    for (x, &i) in f.executions.iter().zip(&f.project_of) {
        assert_eq!(f.projects[i as usize].project_id, *x.project_id);
    }
}

#[test]
fn every_month_with_an_execution_has_its_segment() {
    // p: January, February, April (nothing in March); q: one execution in February
    let mut xs = project_runs("p", &[10, 40, 45, 100]);
    xs.push(X::new("q", "q0", 35, "config", 0).build());
    let f = facts_of(xs);
    let m = Model::new(&f, Some(d0() + 120));
    let seen: Vec<(String, String, u64, u64)> = usage::segments(&m)
        .iter()
        .map(|s| {
            let month = fmt_day(super::calendar::month_first_day(s.month));
            (
                s.project_id.to_string(),
                month,
                s.executions,
                s.pipeline_runs,
            )
        })
        .collect();
    let expected = [
        ("p", "2024-01-01", 2, 1),
        ("p", "2024-02-01", 2, 2),
        ("p", "2024-04-01", 1, 1),
        ("q", "2024-02-01", 1, 0),
    ]
    .map(|(p, m, x, r)| (p.to_string(), m.to_string(), x, r));
    assert_eq!(seen, expected);
}

#[test]
fn segments_made_once_serve_both_streams_of_a_scoped_run() {
    // monthly_kpis reads from February; p was rewritten (kept from February), q's segments are
    // kept from April only
    let mut xs = project_runs("p", &[10, 40, 45, 100]);
    xs.extend(project_runs("q", &[12, 41, 70, 101, 102]));
    let f = facts_of(xs);
    let as_of = Some(d0() + 120);
    let full = Model::new(&f, as_of);
    let (february, april) = (d0() + 31, d0() + 91);
    let scope = super::ProjectScope {
        rewritten: ["p".to_string()].into_iter().collect(),
        exact_from: Some(february),
        ..scope_touching(&["p", "q"], april, d0() + 110)
    };
    let mut scoped = Model::new(&f, as_of);
    scoped.project_scope = Some(scope.clone());
    // the monthly rows of the months read, segment counts included, are the full run's
    let monthly = active::monthly_kpis(&scoped);
    let full_monthly: Vec<Value> = active::monthly_kpis(&full)
        .into_iter()
        .filter(|r| r["month"].as_str() >= Some("2024-02-01"))
        .collect();
    assert_eq!(monthly.len(), 3, "February to April");
    assert_eq!(monthly, full_monthly);
    // the project segments kept are the full run's, and only those
    let rows = |m: &Model| -> Vec<Value> { super::usage::project_monthly_segments(m).collect() };
    let kept: Vec<Value> = rows(&full)
        .into_iter()
        .filter(|r| {
            let month = r["month"]
                .as_str()
                .and_then(crate::kpi::calendar::parse_day);
            month.is_some_and(|m| scope.keeps_month(r["project_id"].as_str().unwrap_or(""), m))
        })
        .collect();
    assert_eq!(kept.len(), 3, "p's February and April, q's April: {kept:?}");
    assert_eq!(rows(&scoped), kept);
}

#[test]
fn an_incremental_run_looks_up_only_executions_from_the_earliest_touched() {
    let f = facts_of(project_runs("p", &[10, 20, 30]));
    let mut m = Model::new(&f, Some(d0() + 40));
    let scope: crate::normalize::FastSet<crate::normalize::ExecutionId> =
        ["p-10", "p-30"].into_iter().map(Into::into).collect();
    let ids = |m: &Model| -> Vec<String> {
        m.scoped_executions()
            .map(|x| x.execution_id.to_string())
            .collect()
    };
    m.limit_executions(&scope, None);
    assert_eq!(ids(&m), ["p-10", "p-30"]);
    m.limit_executions(&scope, Some((d0() + 30) * DAY_MS));
    assert_eq!(ids(&m), ["p-30"]);
}

#[test]
fn plugin_usage_is_in_month_then_category_order_whatever_the_order_seen() {
    let with_category = |mut x: Execution, category: &str| {
        x.plugins = vec![plugins::plugin_from_dict(
            json!({"category": "utilities", "name_hash": category})
                .as_object()
                .unwrap(),
        )]
        .into();
        x
    };
    let f = facts_of(vec![
        // (an unknown utility's category is its name)
        with_category(X::new("p", "p1", 1, "run", 0).build(), "zeta"),
        with_category(X::new("p", "p2", 2, "run", 0).build(), "mid"),
        with_category(X::new("q", "q1", 3, "run", 0).build(), "alpha"),
        with_category(X::new("q", "q2", 40, "run", 0).build(), "zeta"),
        with_category(X::new("p", "p3", 41, "run", 0).build(), "alpha"),
        with_category(X::new("q", "q3", 42, "run", 0).build(), "alpha"),
    ]);
    let m = Model::new(&f, Some(d0() + 50));
    let seen: Vec<(String, String, u64)> = super::usage::plugin_usage(&m)
        .map(|r| {
            (
                r["month"].as_str().unwrap_or("").to_string(),
                r["plugin_category"].as_str().unwrap_or("").to_string(),
                r["projects"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let expected = [
        ("2024-01-01", "alpha", 1),
        ("2024-01-01", "mid", 1),
        ("2024-01-01", "zeta", 1),
        ("2024-02-01", "alpha", 2),
        ("2024-02-01", "zeta", 1),
    ]
    .map(|(m, c, n)| (m.to_string(), c.to_string(), n));
    assert_eq!(seen, expected);
}

#[test]
fn an_incremental_run_writes_the_pipelines_of_touched_projects_only() {
    let mut xs = project_runs("p", &[10, 20]);
    xs.extend(project_runs("q", &[11, 21]));
    let f = facts_of(xs);
    let full = Model::new(&f, Some(d0() + 30));
    let mut scoped = Model::new(&f, Some(d0() + 30));
    scoped.project_scope = Some(scope_touching(&["p"], d0() + 31, d0() + 25));
    let of_p: Vec<Value> = facts::pipelines(&full)
        .into_iter()
        .filter(|r| r["project_id"] == "p")
        .collect();
    assert_eq!(of_p.len(), 1);
    assert_eq!(of_p[0]["runs"], 2);
    assert_eq!(facts::pipelines(&full).len(), 2);
    assert_eq!(facts::pipelines(&scoped), of_p);
}
