//! Singer catalogs: the one `--discover` prints, and the selection a user's `--catalog` makes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::streams::{STREAMS, StreamDef};

/// Errors reading a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog is not a JSON object with a `streams` array")]
    NotACatalog,
}

/// The catalog of every stream, with Singer metadata.
pub fn discover() -> Value {
    let streams: Vec<Value> = STREAMS.iter().map(stream_entry).collect();
    json!({ "streams": streams })
}

fn stream_entry(def: &StreamDef) -> Value {
    let schema = def.schema_value();
    let mut metadata = vec![json!({
        "breadcrumb": [],
        "metadata": {
            "inclusion": "available",
            "selected-by-default": true,
            "table-key-properties": def.key_properties,
            "valid-replication-keys": [],
            "forced-replication-method": "FULL_TABLE",
        }
    })];
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for name in props.keys() {
            let inclusion = if def.key_properties.contains(&name.as_str()) {
                "automatic"
            } else {
                "available"
            };
            metadata.push(json!({
                "breadcrumb": ["properties", name],
                "metadata": {"inclusion": inclusion, "selected-by-default": true}
            }));
        }
    }
    json!({
        "tap_stream_id": def.name,
        "stream": def.name,
        "schema": schema,
        "key_properties": def.key_properties,
        "replication_method": "FULL_TABLE",
        "metadata": metadata,
    })
}

/// What a catalog selects of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Selected properties in schema order.
    pub properties: Vec<String>,
    pub key_properties: Vec<String>,
}

/// The selection of every stream: from the catalog, or every stream and field when there is none.
#[derive(Debug, Clone)]
pub struct Selections(BTreeMap<String, Selection>);

impl Selections {
    /// Select everything (a sync without `--catalog`).
    pub fn all() -> Self {
        Selections(
            STREAMS
                .iter()
                .map(|s| (s.name.to_string(), full_selection(s)))
                .collect(),
        )
    }

    /// Read the selection from a Singer catalog (as Meltano writes it).
    pub fn from_catalog(catalog: &Value) -> Result<Self, CatalogError> {
        let entries = catalog
            .get("streams")
            .and_then(Value::as_array)
            .ok_or(CatalogError::NotACatalog)?;
        let mut out = BTreeMap::new();
        for entry in entries {
            let name = entry
                .get("tap_stream_id")
                .or_else(|| entry.get("stream"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let Some(def) = crate::streams::find(name) else {
                continue;
            };
            let md = metadata_by_breadcrumb(entry);
            let stream_md = md.get(&Vec::<String>::new());
            if !is_selected(stream_md, false) {
                continue;
            }
            let key_properties = stream_md
                .and_then(|m| m.get("table-key-properties"))
                .and_then(Value::as_array)
                .map(|keys| {
                    keys.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_else(|| {
                    def.key_properties
                        .iter()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                });
            let properties = full_selection(def)
                .properties
                .into_iter()
                .filter(|p| {
                    key_properties.contains(p)
                        || is_selected(md.get(&vec!["properties".to_string(), p.clone()]), true)
                })
                .collect();
            out.insert(
                def.name.to_string(),
                Selection {
                    properties,
                    key_properties,
                },
            );
        }
        Ok(Selections(out))
    }

    /// The selection of a stream, `None` when it is not selected.
    pub fn get(&self, stream: &str) -> Option<&Selection> {
        self.0.get(stream)
    }
}

fn full_selection(def: &StreamDef) -> Selection {
    let schema = def.schema_value();
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    Selection {
        properties,
        key_properties: def.key_properties.iter().map(|k| k.to_string()).collect(),
    }
}

fn metadata_by_breadcrumb(entry: &Value) -> BTreeMap<Vec<String>, &Value> {
    let mut out = BTreeMap::new();
    for item in entry
        .get("metadata")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(crumb) = item.get("breadcrumb").and_then(Value::as_array) else {
            continue;
        };
        let crumb: Vec<String> = crumb
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        if let Some(md) = item.get("metadata") {
            out.insert(crumb, md);
        }
    }
    out
}

/// Singer selection rule: explicit `selected`, else `automatic`, else `selected-by-default`, else `default`.
fn is_selected(md: Option<&&Value>, default: bool) -> bool {
    let Some(md) = md else { return default };
    if let Some(sel) = md.get("selected").and_then(Value::as_bool) {
        return sel || md.get("inclusion").and_then(Value::as_str) == Some("automatic");
    }
    if md.get("inclusion").and_then(Value::as_str) == Some("automatic") {
        return true;
    }
    md.get("selected-by-default")
        .and_then(Value::as_bool)
        .unwrap_or(default)
}

/// Number of properties of a stream's schema.
pub fn property_count(def: &StreamDef) -> usize {
    full_selection(def).properties.len()
}

/// Keep only the selected properties of a record or schema's `properties`.
pub fn project_record(record: &Value, selection: &Selection) -> Value {
    let Some(obj) = record.as_object() else {
        return record.clone();
    };
    let mut out = serde_json::Map::new();
    for p in &selection.properties {
        if let Some(v) = obj.get(p) {
            out.insert(p.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// The schema of a stream restricted to the selection.
pub fn selected_schema(def: &StreamDef, selection: &Selection) -> Value {
    let mut schema = def.schema_value();
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.retain(|k, _| selection.properties.contains(k));
    }
    if let Some(req) = schema.get_mut("required").and_then(Value::as_array_mut) {
        req.retain(|k| {
            k.as_str()
                .is_some_and(|k| selection.properties.iter().any(|p| p == k))
        });
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_selects_everything() {
        let sel = Selections::from_catalog(&discover()).unwrap();
        let all = Selections::all();
        for s in STREAMS {
            assert_eq!(sel.get(s.name), all.get(s.name), "{}", s.name);
        }
    }

    #[test]
    fn deselection_drops_streams_and_fields_but_keeps_keys() {
        let mut cat = discover();
        for entry in cat["streams"].as_array_mut().unwrap() {
            let name = entry["stream"].as_str().unwrap().to_string();
            for md in entry["metadata"].as_array_mut().unwrap() {
                let crumb = md["breadcrumb"].clone();
                if crumb == json!([]) {
                    md["metadata"]["selected"] = json!(name == "projects");
                } else {
                    // deselect every field, including the key
                    md["metadata"]["selected"] =
                        json!(crumb == json!(["properties", "executions"]));
                }
            }
        }
        let sel = Selections::from_catalog(&cat).unwrap();
        assert!(sel.get("cli_executions").is_none());
        let p = sel.get("projects").unwrap();
        assert_eq!(
            p.properties,
            vec!["executions".to_string(), "project_id".to_string()]
        );
        let rec = json!({"project_id": "a", "executions": 3, "is_ci_only": false});
        assert_eq!(
            project_record(&rec, p),
            json!({"project_id": "a", "executions": 3})
        );
        let schema = selected_schema(crate::streams::find("projects").unwrap(), p);
        assert_eq!(schema["properties"].as_object().unwrap().len(), 2);
    }
}
