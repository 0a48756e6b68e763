//! Plugins of an execution: their key (a digest of the normalised plugin dict), their category, and
//! the well-known names recognised from their hashes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use md5::{Digest, Md5};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::Sha256;

/// What identifies a plugin; shared by every execution that uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginInfo {
    /// MD5 hex of the canonical JSON of the normalised plugin dict.
    pub key: String,
    /// The normalised plugin dict, keys sorted.
    pub dict: BTreeMap<String, Value>,
    /// `singer`, `dbt`, a known parent name, a parent name hash, or `unknown`.
    pub plugin_category: String,
    pub is_test: bool,
}

/// A plugin as used by an execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    pub info: Arc<PluginInfo>,
    /// Earliest block-event time at which the plugin appeared.
    pub first_seen_ms: Option<i64>,
}

impl Plugin {
    /// The plugin key.
    pub fn key(&self) -> &str {
        &self.info.key
    }
    /// The plugin category.
    pub fn plugin_category(&self) -> &str {
        &self.info.plugin_category
    }
    /// Whether the plugin is a test plugin (parent tap-smoke-test).
    pub fn is_test(&self) -> bool {
        self.info.is_test
    }
    /// A string field of the dict.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.info.dict.get(key).and_then(Value::as_str)
    }
}

/// Interns plugins across a run: most executions use the same few plugins.
#[derive(Debug, Default)]
pub struct PluginTable {
    /// By the dict's text as sent: the same Meltano sends byte-identical dicts, so this is the usual hit.
    by_raw: super::FastMap<String, u32>,
    /// By canonical text of the normalised dict: the same plugin sent in another layout.
    by_text: HashMap<String, u32>,
    infos: Vec<Arc<PluginInfo>>,
}

impl PluginTable {
    /// Id of a raw plugin dict (JSON object text), interning it when new.
    pub fn intern(&mut self, raw: &RawValue) -> u32 {
        if let Some(id) = self.by_raw.get(raw.get()) {
            return *id;
        }
        let map: Map<String, Value> = serde_json::from_str(raw.get()).unwrap_or_default();
        let id = self.intern_dict(&map);
        self.by_raw.insert(raw.get().to_string(), id);
        id
    }

    /// Id of a plugin dict, interning it when new.
    fn intern_dict(&mut self, raw: &Map<String, Value>) -> u32 {
        let dict = normalised_dict(raw);
        let text = canonical_json(&dict);
        if let Some(id) = self.by_text.get(&text) {
            return *id;
        }
        let info = info_from(dict, &text);
        self.infos.push(Arc::new(info));
        let id = (self.infos.len() - 1) as u32;
        self.by_text.insert(text, id);
        id
    }
    /// The plugin of an id.
    pub fn get(&self, id: u32) -> &Arc<PluginInfo> {
        &self.infos[id as usize]
    }
}

/// MD5 hex digest.
pub fn md5_hex(text: &str) -> String {
    hex::encode(Md5::digest(text.as_bytes()))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Known plugin names by their sha256 hash.
fn known_names() -> &'static HashMap<String, &'static str> {
    static NAMES: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        include_str!("known_plugin_names.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|name| (sha256_hex(name), name))
            .collect()
    })
}

/// Normalise `command`: null, "" and [] become null; a list becomes its items joined by spaces.
fn normalise_command(v: &Value) -> Value {
    match v {
        Value::String(s) if s.is_empty() => Value::Null,
        Value::Array(items) if items.is_empty() => Value::Null,
        Value::Array(items) => Value::String(
            items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
        other => other.clone(),
    }
}

fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            let mut out = Map::new();
            for (k, v) in sorted {
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Canonical JSON text: keys sorted at every level, no spaces.
fn canonical_json(dict: &BTreeMap<String, Value>) -> String {
    let mut text = String::from("{");
    for (i, (k, v)) in dict.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&Value::String(k.clone()).to_string());
        text.push(':');
        text.push_str(&canonical_value_text(v));
    }
    text.push('}');
    text
}

fn canonical_value_text(v: &Value) -> String {
    match canonical(v) {
        Value::Object(m) => {
            let dict: BTreeMap<String, Value> = m.into_iter().collect();
            canonical_json(&dict)
        }
        other => other.to_string(),
    }
}

fn resolve(hash: Option<&str>) -> Option<&'static str> {
    hash.and_then(|h| known_names().get(h).copied())
}

fn normalised_dict(raw: &Map<String, Value>) -> BTreeMap<String, Value> {
    let mut dict: BTreeMap<String, Value> =
        raw.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(cmd) = dict.get_mut("command") {
        *cmd = normalise_command(cmd);
    }
    dict
}

/// Build a plugin from a raw plugin dict (first_seen unset).
pub fn plugin_from_dict(raw: &Map<String, Value>) -> Plugin {
    let dict = normalised_dict(raw);
    let text = canonical_json(&dict);
    Plugin {
        info: Arc::new(info_from(dict, &text)),
        first_seen_ms: None,
    }
}

/// The plugin of an already normalised dict (as kept in the incremental state).
pub fn info_from_normalised(dict: BTreeMap<String, Value>) -> Arc<PluginInfo> {
    let text = canonical_json(&dict);
    Arc::new(info_from(dict, &text))
}

fn info_from(dict: BTreeMap<String, Value>, canonical_text: &str) -> PluginInfo {
    let key = md5_hex(canonical_text);
    let get = |k: &str| dict.get(k).and_then(Value::as_str);
    let parent_hash = get("parent_name_hash");
    let name_hash = get("name_hash");
    let parent_name = resolve(parent_hash);
    let name = resolve(name_hash);
    let plugin_category = match get("category") {
        Some("extractors" | "loaders" | "mappers") => "singer".to_string(),
        Some("transformers" | "utilities")
            if parent_name.is_some_and(|n| n.contains("dbt"))
                || name.is_some_and(|n| n.contains("dbt")) =>
        {
            "dbt".to_string()
        }
        _ => parent_name
            .or(name)
            .or(parent_hash)
            .or(name_hash)
            .unwrap_or("unknown")
            .to_string(),
    };
    let is_test = parent_name == Some("tap-smoke-test");
    PluginInfo {
        key,
        dict,
        plugin_category,
        is_test,
    }
}

/// Order plugins as in the pipeline id: first_seen ascending, never-seen last, ties by key descending.
pub fn pipeline_order(plugins: &mut [Plugin]) {
    plugins.sort_by(|a, b| {
        let seen = match (a.first_seen_ms, b.first_seen_ms) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        seen.then_with(|| b.key().cmp(a.key()))
    });
}

/// Pipeline id: MD5 hex of `<ordered keys joined by ','>-<environment hash or ''>-<project id>`.
pub fn pipeline_id(ordered: &[Plugin], environment_hash: Option<&str>, project_id: &str) -> String {
    let keys: Vec<&str> = ordered.iter().map(Plugin::key).collect();
    md5_hex(&format!(
        "{}-{}-{}",
        keys.join(","),
        environment_hash.unwrap_or(""),
        project_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dict(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn command_normalisation_makes_run_and_elt_plugins_equal() {
        let base = json!({"category": "extractors", "name_hash": "a", "command": null});
        let keys: Vec<String> = [json!(null), json!(""), json!([])]
            .into_iter()
            .map(|c| {
                let mut d = dict(base.clone());
                d.insert("command".into(), c);
                plugin_from_dict(&d).key().to_string()
            })
            .collect();
        assert!(keys.iter().all(|k| *k == keys[0]));
        let mut listed = dict(base.clone());
        listed.insert("command".into(), json!(["run", "--full"]));
        assert_eq!(
            plugin_from_dict(&listed).field("command"),
            Some("run --full")
        );
    }

    #[test]
    fn key_is_md5_of_sorted_compact_json() {
        let p = plugin_from_dict(&dict(json!({"name_hash": "n", "category": "loaders"})));
        assert_eq!(
            p.key(),
            md5_hex(r#"{"category":"loaders","name_hash":"n"}"#)
        );
        assert_eq!(plugin_from_dict(&Map::new()).key(), md5_hex("{}"));
    }

    #[test]
    fn categories() {
        let dbt = sha256_hex("dbt-postgres");
        let smoke = sha256_hex("tap-smoke-test");
        let c = |v: Value| plugin_from_dict(&dict(v));
        assert_eq!(
            c(json!({"category": "extractors"})).plugin_category(),
            "singer"
        );
        assert_eq!(
            c(json!({"category": "mappers"})).plugin_category(),
            "singer"
        );
        assert_eq!(
            c(json!({"category": "utilities", "name_hash": dbt})).plugin_category(),
            "dbt"
        );
        assert_eq!(
            c(json!({"category": "transformers", "parent_name_hash": dbt})).plugin_category(),
            "dbt"
        );
        assert_eq!(
            c(json!({"category": "utilities", "parent_name_hash": sha256_hex("airflow")}))
                .plugin_category(),
            "airflow"
        );
        assert_eq!(
            c(json!({"category": "utilities", "parent_name_hash": "ff"})).plugin_category(),
            "ff"
        );
        assert_eq!(c(json!({})).plugin_category(), "unknown");
        assert!(c(json!({"category": "extractors", "parent_name_hash": smoke})).is_test());
        assert!(!c(json!({"category": "extractors", "name_hash": smoke})).is_test());
    }

    #[test]
    fn pipeline_order_first_seen_then_key_descending() {
        let mk = |key: &str, seen: Option<i64>| Plugin {
            info: Arc::new(PluginInfo {
                key: key.into(),
                dict: BTreeMap::new(),
                plugin_category: "singer".into(),
                is_test: false,
            }),
            first_seen_ms: seen,
        };
        let mut v = vec![
            mk("a", None),
            mk("b", Some(5)),
            mk("c", Some(5)),
            mk("d", Some(1)),
            mk("e", None),
        ];
        pipeline_order(&mut v);
        let order: Vec<&str> = v.iter().map(Plugin::key).collect();
        assert_eq!(order, ["d", "c", "b", "e", "a"]);
        let id = pipeline_id(&v, None, "p");
        assert_eq!(id, md5_hex("d,c,b,e,a--p"));
        assert_ne!(id, pipeline_id(&v, Some("env"), "p"));
    }
}
