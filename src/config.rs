//! Settings: read from one or more `--config` files (later files win), validated against the JSON
//! Schema that `--about` prints, then typed.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The settings JSON Schema (also printed by `--about` as `settings`).
pub const SETTINGS_SCHEMA: &str = include_str!("config.schema.json");

/// Errors reading or validating settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not a JSON object: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("invalid config: {key}: {message}")]
    Invalid { key: String, message: String },
}

/// Input format of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    #[default]
    Auto,
    Tp2,
    EnrichedTsv,
    EnrichedJson,
}

/// One configured source: a path, directory, glob or URL.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SourceSpec {
    Path(String),
    Detailed {
        path: String,
        #[serde(default)]
        format: SourceFormat,
    },
}

impl SourceSpec {
    /// The path, glob or URL.
    pub fn path(&self) -> &str {
        match self {
            SourceSpec::Path(p) | SourceSpec::Detailed { path: p, .. } => p,
        }
    }
    /// The configured format.
    pub fn format(&self) -> SourceFormat {
        match self {
            SourceSpec::Path(_) => SourceFormat::Auto,
            SourceSpec::Detailed { format, .. } => *format,
        }
    }
}

/// A sensitive setting: its value never appears in debug output or logs.
#[derive(Clone, Deserialize)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Typed settings.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub sources: Vec<SourceSpec>,
    #[serde(default)]
    pub as_of: Option<NaiveDate>,
    #[serde(default)]
    pub strict: bool,
    #[serde(default)]
    pub http_bearer_token: Option<Secret>,
    #[serde(default = "default_http_timeout")]
    pub http_timeout_seconds: u64,
    #[serde(default = "default_http_retries")]
    pub http_retries: u32,
    #[serde(default)]
    pub health_metrics: Option<Vec<crate::health::Rule>>,
    #[serde(default)]
    pub alert_webhook_url: Option<Secret>,
    #[serde(default)]
    pub alert_webhook_token: Option<Secret>,
    #[serde(default = "default_alert_max_age_days")]
    pub alert_max_age_days: i64,
    #[serde(default)]
    pub fail_on_alarm: bool,
    #[serde(default = "default_late_event_days")]
    pub late_event_days: i64,
}

fn default_alert_max_age_days() -> i64 {
    7
}

fn default_late_event_days() -> i64 {
    7
}

fn default_http_timeout() -> u64 {
    60
}

fn default_http_retries() -> u32 {
    5
}

impl Config {
    /// The health rules: configured, else the defaults.
    pub fn health_rules(&self) -> Vec<crate::health::Rule> {
        self.health_metrics
            .clone()
            .unwrap_or_else(crate::health::default_rules)
    }

    /// The alert webhook, when configured.
    pub fn webhook(&self) -> Option<crate::health::webhook::Webhook> {
        self.alert_webhook_url
            .as_ref()
            .map(|url| crate::health::webhook::Webhook {
                url: url.0.clone(),
                token: self.alert_webhook_token.as_ref().map(|t| t.0.clone()),
                timeout: std::time::Duration::from_secs(10),
                retries: 3,
                backoff: std::time::Duration::from_millis(200),
            })
    }

    /// How http(s) sources are fetched.
    pub fn http_options(&self) -> crate::source::HttpOptions {
        crate::source::HttpOptions {
            bearer_token: self.http_bearer_token.as_ref().map(|s| s.0.clone()),
            timeout: std::time::Duration::from_secs(self.http_timeout_seconds),
            retries: self.http_retries,
            ..Default::default()
        }
    }
}

/// Merge config files, later keys winning.
pub fn read_files(paths: &[PathBuf]) -> Result<Map<String, Value>, ConfigError> {
    let mut merged = Map::new();
    for path in paths {
        merged.extend(read_one(path)?);
    }
    Ok(merged)
}

fn read_one(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ConfigError::Parse {
            path: path.to_path_buf(),
            detail: format!("found {}", crate::decode::selfdesc::type_name(&other)),
        }),
        Err(e) => Err(ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// Validate merged settings against the schema and type them.
pub fn validate(raw: &Map<String, Value>) -> Result<Config, ConfigError> {
    let schema: Value =
        serde_json::from_str(SETTINGS_SCHEMA).map_err(|e| ConfigError::Invalid {
            key: "<schema>".into(),
            message: e.to_string(),
        })?;
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|e| ConfigError::Invalid {
            key: "<schema>".into(),
            message: e.to_string(),
        })?;
    let instance = Value::Object(raw.clone());
    if let Some(err) = validator.iter_errors(&instance).next() {
        let path = err.instance_path().to_string();
        let key = if path.is_empty() {
            missing_key(&err.to_string()).unwrap_or_else(|| "<root>".to_string())
        } else {
            path.trim_start_matches('/').replace('/', ".")
        };
        return Err(ConfigError::Invalid {
            key,
            message: err.to_string(),
        });
    }
    serde_json::from_value(instance).map_err(|e| ConfigError::Invalid {
        key: "<root>".into(),
        message: e.to_string(),
    })
}

fn missing_key(message: &str) -> Option<String> {
    // jsonschema reports a missing required property as `"name" is a required property`.
    let rest = message.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Result<Config, ConfigError> {
        validate(v.as_object().unwrap())
    }

    #[test]
    fn good_config_is_typed() {
        let c = check(json!({"sources": ["a", {"path": "b", "format": "tp2"}], "as_of": "2024-02-29", "unknown": 1})).unwrap();
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.sources[1].format(), SourceFormat::Tp2);
        assert_eq!(c.as_of, NaiveDate::from_ymd_opt(2024, 2, 29));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases = [
            (json!({}), "sources"),
            (json!({"sources": "x"}), "sources"),
            (json!({"sources": []}), "sources"),
            (json!({"sources": ["a"], "as_of": "yesterday"}), "as_of"),
            (json!({"sources": ["a"], "strict": "yes"}), "strict"),
            (
                json!({"sources": [{"path": "a", "format": "xml"}]}),
                "sources.0",
            ),
        ];
        for (cfg, key) in cases {
            match check(cfg.clone()) {
                Err(ConfigError::Invalid { key: k, .. }) => {
                    assert!(k.starts_with(key), "{cfg}: {k}")
                }
                other => panic!("{cfg}: {other:?}"),
            }
        }
    }

    #[test]
    fn later_files_win() {
        let dir = std::env::temp_dir().join(format!("tap-kpis-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.json"), dir.join("b.json"));
        std::fs::write(&a, r#"{"sources": ["x"], "strict": true}"#).unwrap();
        std::fs::write(&b, r#"{"sources": ["y"]}"#).unwrap();
        let merged = read_files(&[a, b]).unwrap();
        assert_eq!(merged["sources"], json!(["y"]));
        assert_eq!(merged["strict"], json!(true));
        let missing = read_files(&[dir.join("nope.json")]).unwrap_err();
        assert!(missing.to_string().contains("nope.json"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
