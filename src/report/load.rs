//! Loading the KPI tables a report is drawn from: the tap's own Singer output, a DuckDB file written by
//! the embedded default target, or a PostgreSQL schema written by target-postgres. Every loader yields
//! the same thing, rows as JSON objects by stream, so the page cannot depend on where the rows were.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

use super::{REPORT_STREAMS, ReportError, Tables};

/// Rows of a Singer message stream, upserted by each stream's key properties (later rows win), so that
/// the output of several runs concatenated reads like the tables a target would hold.
pub fn from_singer(reader: impl BufRead, name: &str) -> Result<Tables, ReportError> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut rows: BTreeMap<String, BTreeMap<String, Map<String, Value>>> = BTreeMap::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| ReportError::Read(format!("{name}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = serde_json::from_str(&line).map_err(|e| {
            ReportError::Read(format!("{name}:{}: not a Singer message: {e}", index + 1))
        })?;
        let stream = message["stream"].as_str().unwrap_or_default().to_string();
        if !REPORT_STREAMS.contains(&stream.as_str()) {
            continue;
        }
        match message["type"].as_str() {
            Some("SCHEMA") => {
                let key = message["key_properties"]
                    .as_array()
                    .map(|k| {
                        k.iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                keys.insert(stream, key);
            }
            Some("RECORD") => {
                let Some(record) = message["record"].as_object() else {
                    return Err(ReportError::Read(format!(
                        "{name}:{}: RECORD without a record object",
                        index + 1
                    )));
                };
                let key: Vec<&Value> = keys
                    .get(&stream)
                    .map(|k| k.iter().map(|p| &record[p.as_str()]).collect())
                    .unwrap_or_default();
                let key = serde_json::to_string(&key).unwrap_or_default();
                rows.entry(stream).or_default().insert(key, record.clone());
            }
            _ => {}
        }
    }
    Ok(Tables {
        source: format!("Singer output {name}"),
        rows: rows
            .into_iter()
            .map(|(s, r)| (s, r.into_values().collect()))
            .collect(),
    })
}

/// Rows from a DuckDB file, read with the DuckDB command-line client (read-only) so that the file
/// written by target-duckdb is never locked or changed.
pub fn from_duckdb(path: &Path, schema: &str, cli: &Path) -> Result<Tables, ReportError> {
    if !path.is_file() {
        return Err(ReportError::Read(format!(
            "{}: no such DuckDB file",
            path.display()
        )));
    }
    let listing =
        format!("select table_name from information_schema.tables where table_schema = '{schema}'");
    let present: BTreeSet<String> = duckdb_json(cli, path, &listing)?
        .iter()
        .filter_map(|r| r["table_name"].as_str().map(String::from))
        .collect();
    let mut rows = BTreeMap::new();
    for stream in REPORT_STREAMS.iter().filter(|s| present.contains(**s)) {
        let sql = format!("select * from \"{schema}\".\"{stream}\"");
        let table = duckdb_json(cli, path, &sql)?;
        rows.insert(
            stream.to_string(),
            table
                .into_iter()
                .filter_map(|v| v.as_object().cloned())
                .collect(),
        );
    }
    Ok(Tables {
        source: format!("DuckDB {} (schema {schema})", path.display()),
        rows,
    })
}

fn duckdb_json(cli: &Path, path: &Path, sql: &str) -> Result<Vec<Value>, ReportError> {
    let out = Command::new(cli)
        .arg("-readonly")
        .arg("-json")
        .arg(path)
        .arg("-c")
        .arg(sql)
        .output()
        .map_err(|e| {
            ReportError::Read(format!(
                "cannot run the DuckDB client {} ({e}); install it (pip install duckdb-cli) or pass --duckdb-cli",
                cli.display()
            ))
        })?;
    if !out.status.success() {
        return Err(ReportError::Read(format!(
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text).map_err(|e| {
        ReportError::Read(format!("{}: unexpected DuckDB output: {e}", path.display()))
    })
}

/// The default DuckDB client: the one beside a project virtualenv, else `duckdb` on PATH.
pub fn default_duckdb_cli() -> PathBuf {
    let local = Path::new(".venv/bin/duckdb");
    if local.is_file() {
        local.to_path_buf()
    } else {
        PathBuf::from("duckdb")
    }
}

/// Rows from a PostgreSQL schema. The password comes from the connection string or `PGPASSWORD` and
/// never appears in messages: errors name the host, database and user only.
pub fn from_postgres(conninfo: &str, schema: &str) -> Result<Tables, ReportError> {
    let mut config: postgres::Config = conninfo
        .parse()
        .map_err(|e| ReportError::Read(format!("bad PostgreSQL connection string: {e}")))?;
    if config.get_password().is_none()
        && let Ok(password) = std::env::var("PGPASSWORD")
    {
        config.password(password);
    }
    if config.get_user().is_none() {
        config.user(&std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()));
    }
    let target = format!(
        "PostgreSQL {:?} database {} user {}",
        config
            .get_hosts()
            .iter()
            .map(|h| match h {
                postgres::config::Host::Tcp(h) => h.clone(),
                postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect::<Vec<_>>(),
        config.get_dbname().unwrap_or("-"),
        config.get_user().unwrap_or("-"),
    );
    let mut client = config
        .connect(postgres::NoTls)
        .map_err(|e| ReportError::Read(format!("{target}: {e}")))?;
    let present: BTreeSet<String> = client
        .query(
            "select table_name::text from information_schema.tables where table_schema = $1",
            &[&schema],
        )
        .map_err(|e| ReportError::Read(format!("{target}: {e}")))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut rows = BTreeMap::new();
    for stream in REPORT_STREAMS.iter().filter(|s| present.contains(**s)) {
        let sql = format!("select row_to_json(t)::text from \"{schema}\".\"{stream}\" t");
        let table = client
            .query(sql.as_str(), &[])
            .map_err(|e| ReportError::Read(format!("{target}: {stream}: {e}")))?;
        let mut out = Vec::with_capacity(table.len());
        for row in table {
            let text: String = row.get(0);
            if let Ok(Value::Object(m)) = serde_json::from_str(&text) {
                out.push(m);
            }
        }
        rows.insert(stream.to_string(), out);
    }
    Ok(Tables {
        source: format!("{target} (schema {schema})"),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singer_rows_are_upserted_by_key() {
        let text = concat!(
            r#"{"type":"SCHEMA","stream":"monthly_kpis","schema":{},"key_properties":["month"]}"#,
            "\n",
            r#"{"type":"RECORD","stream":"monthly_kpis","record":{"month":"2024-01-01","pipeline_runs":1}}"#,
            "\n",
            r#"{"type":"RECORD","stream":"monthly_kpis","record":{"month":"2024-01-01","pipeline_runs":5}}"#,
            "\n",
            r#"{"type":"RECORD","stream":"cli_executions","record":{"execution_id":"x"}}"#,
            "\n",
            r#"{"type":"STATE","value":{}}"#,
            "\n"
        );
        let t = from_singer(text.as_bytes(), "test").unwrap();
        assert_eq!(t.rows.len(), 1);
        assert_eq!(t.rows["monthly_kpis"].len(), 1);
        assert_eq!(t.rows["monthly_kpis"][0]["pipeline_runs"], 5);
    }

    #[test]
    fn a_broken_line_is_named() {
        let e = from_singer("{}\nnot json\n".as_bytes(), "out.jsonl").unwrap_err();
        assert!(e.to_string().contains("out.jsonl:2"), "{e}");
    }
}
