//! The three input forms carry the same executions: real captures rewritten as Snowplow enriched TSV
//! and enriched JSON give the same records as the tracker payloads they came from.

mod common;

use std::io::Write;
use std::path::Path;

use base64::Engine;
use chrono::DateTime;
use serde_json::{Map, Value, json};

use common::{shared, sync, sync_paths, temp_dir};

const COLUMNS: usize = 131;

fn b64json(text: &str) -> Value {
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(text)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn tstamp(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}

/// Enriched columns (name -> value) of every event of a tp2 capture file.
fn enriched_rows(captures: &Path) -> Vec<Map<String, Value>> {
    let mut rows = Vec::new();
    for line in std::fs::read_to_string(captures).unwrap().lines() {
        let cap: Value = serde_json::from_str(line).unwrap();
        let received = DateTime::parse_from_rfc3339(cap["received_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let events: Vec<Value> = match cap["body"]["data"].as_array() {
            Some(evs) => evs.clone(),
            None => vec![cap["query"].clone()],
        };
        for ev in events {
            let s = |k: &str| ev[k].as_str().map(str::to_string);
            let ms = |k: &str| s(k).map(|v| tstamp(v.parse().unwrap()));
            let mut row = Map::new();
            let is_ue = s("e").as_deref() == Some("ue");
            row.insert("app_id".into(), json!(s("aid")));
            row.insert("platform".into(), json!(s("p")));
            row.insert("collector_tstamp".into(), json!(tstamp(received)));
            row.insert("dvce_created_tstamp".into(), json!(ms("dtm")));
            row.insert("dvce_sent_tstamp".into(), json!(ms("stm")));
            row.insert(
                "event".into(),
                json!(if is_ue { "unstruct" } else { "struct" }),
            );
            row.insert("event_id".into(), json!(s("eid")));
            row.insert(
                "contexts".into(),
                s("cx").map(|c| b64json(&c)).unwrap_or(Value::Null),
            );
            row.insert(
                "unstruct_event".into(),
                s("ue_px").map(|c| b64json(&c)).unwrap_or(Value::Null),
            );
            row.insert("se_category".into(), json!(s("se_ca")));
            row.insert("se_action".into(), json!(s("se_ac")));
            row.insert("se_label".into(), json!(s("se_la")));
            rows.push(row);
        }
    }
    rows
}

/// The Analytics SDK column order.
const ORDER: &str = "app_id platform etl_tstamp collector_tstamp dvce_created_tstamp event event_id txn_id name_tracker v_tracker v_collector v_etl user_id user_ipaddress user_fingerprint domain_userid domain_sessionidx network_userid geo_country geo_region geo_city geo_zipcode geo_latitude geo_longitude geo_region_name ip_isp ip_organization ip_domain ip_netspeed page_url page_title page_referrer page_urlscheme page_urlhost page_urlport page_urlpath page_urlquery page_urlfragment refr_urlscheme refr_urlhost refr_urlport refr_urlpath refr_urlquery refr_urlfragment refr_medium refr_source refr_term mkt_medium mkt_source mkt_term mkt_content mkt_campaign contexts se_category se_action se_label se_property se_value unstruct_event tr_orderid tr_affiliation tr_total tr_tax tr_shipping tr_city tr_state tr_country ti_orderid ti_sku ti_name ti_category ti_price ti_quantity pp_xoffset_min pp_xoffset_max pp_yoffset_min pp_yoffset_max useragent br_name br_family br_version br_type br_renderengine br_lang br_features_pdf br_features_flash br_features_java br_features_director br_features_quicktime br_features_realplayer br_features_windowsmedia br_features_gears br_features_silverlight br_cookies br_colordepth br_viewwidth br_viewheight os_name os_family os_manufacturer os_timezone dvce_type dvce_ismobile dvce_screenwidth dvce_screenheight doc_charset doc_width doc_height tr_currency tr_total_base tr_tax_base tr_shipping_base ti_currency ti_price_base base_currency geo_timezone mkt_clickid mkt_network etl_tags dvce_sent_tstamp refr_domain_userid refr_device_tstamp derived_contexts domain_sessionid derived_tstamp event_vendor event_name event_format event_version event_fingerprint true_tstamp";

fn tsv_line(row: &Map<String, Value>) -> String {
    let cols: Vec<&str> = ORDER.split(' ').collect();
    assert_eq!(cols.len(), COLUMNS);
    cols.iter()
        .map(|c| match row.get(*c) {
            Some(Value::String(s)) => s.clone(),
            Some(v @ Value::Object(_)) => v.to_string(),
            _ => String::new(),
        })
        .collect::<Vec<_>>()
        .join("\t")
}

fn write_gz(path: &Path, text: &str) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(text.as_bytes()).unwrap();
    std::fs::write(path, gz.finish().unwrap()).unwrap();
}

fn streams_without_errors(out: &common::Output) -> Vec<(String, Vec<Value>)> {
    out.records
        .iter()
        .filter(|(k, _)| *k != "telemetry_errors")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn tp2_tsv_and_json_give_identical_records() {
    let dir = temp_dir("forms");
    for file in [
        "meltano-real/captures.ndjson",
        "meltano-old/meltano-2.1.0.ndjson",
        "meltano-old/meltano-2.20.0.ndjson",
    ] {
        let src = shared(&format!("data/{file}"));
        let rows = enriched_rows(&src);
        let tsv: String = rows.iter().map(|r| tsv_line(r) + "\n").collect();
        let tsv_path = dir.join("events.tsv");
        std::fs::write(&tsv_path, &tsv).unwrap();
        let gz_path = dir.join("events.tsv.gz");
        write_gz(&gz_path, &tsv);
        // JSON form: contexts as objects on even rows, as strings on odd rows
        let json_text: String = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut r = r.clone();
                if i % 2 == 1 {
                    for k in ["contexts", "unstruct_event"] {
                        if let Some(v @ Value::Object(_)) = r.get(k).cloned() {
                            r.insert(k.into(), Value::String(v.to_string()));
                        }
                    }
                }
                serde_json::to_string(&r).unwrap() + "\n"
            })
            .collect();
        let json_path = dir.join("events.json");
        std::fs::write(&json_path, json_text).unwrap();

        let tp2 = streams_without_errors(&sync_paths(std::slice::from_ref(&src)));
        for path in [&tsv_path, &gz_path, &json_path] {
            let out = sync_paths(std::slice::from_ref(path));
            let errors: Vec<_> = out
                .records("telemetry_errors")
                .iter()
                .filter(|e| e["reason"] != "unattributed_state_change")
                .collect();
            assert!(errors.is_empty(), "{file} {}: {errors:?}", path.display());
            assert_eq!(
                streams_without_errors(&out),
                tp2,
                "{file} via {}",
                path.display()
            );
        }
        // an explicit format overrides detection
        let explicit = sync(
            json!({"sources": [{"path": tsv_path.display().to_string(), "format": "enriched_tsv"}]}),
        );
        assert_eq!(streams_without_errors(&explicit), tp2);
        let wrong =
            sync(json!({"sources": [{"path": tsv_path.display().to_string(), "format": "tp2"}]}));
        assert!(wrong.records("cli_executions").is_empty());
        assert!(!wrong.records("telemetry_errors").is_empty());
    }
}

#[test]
fn derived_tstamp_wins_and_raw_ips_are_never_emitted() {
    let dir = temp_dir("derived");
    let rows = enriched_rows(&shared("data/meltano-real/captures.ndjson"));
    let mut shifted = Vec::new();
    for mut r in rows.clone() {
        // every event derived one hour after its device time
        let created = r["dvce_created_tstamp"].as_str().unwrap().to_string();
        let t = chrono::NaiveDateTime::parse_from_str(&created, "%Y-%m-%d %H:%M:%S%.3f")
            .unwrap()
            .and_utc()
            .timestamp_millis();
        r.insert("derived_tstamp".into(), json!(tstamp(t + 3_600_000)));
        r.insert("user_ipaddress".into(), json!("192.0.2.7"));
        shifted.push(r);
    }
    let path = dir.join("derived.tsv");
    std::fs::write(
        &path,
        shifted
            .iter()
            .map(|r| tsv_line(r) + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let base = sync_paths(&[shared("data/meltano-real/captures.ndjson")]);
    let out = sync_paths(&[path]);
    let start = |o: &common::Output| {
        let mut v: Vec<i64> = o
            .records("cli_executions")
            .iter()
            .map(|r| {
                DateTime::parse_from_rfc3339(r["started_at"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis()
            })
            .collect();
        v.sort();
        v
    };
    let shifted_starts: Vec<i64> = start(&base).iter().map(|t| t + 3_600_000).collect();
    assert_eq!(start(&out), shifted_starts);
    let projects = out.records("projects");
    assert!(projects.iter().all(|p| p["ip_hash_count"] == 1));
    let text: String = out.lines.iter().map(|l| l.to_string()).collect();
    assert!(!text.contains("192.0.2.7"), "raw IPs are never emitted");
}
