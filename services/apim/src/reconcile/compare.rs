//! Comparing what the config sets with what API Manager serves, and merging
//! the config into API Manager's objects.
//!
//! API Manager fills in defaults (`isDefault`, `_id_`, `apiId`, policies it
//! resolved, ...) and echoes some values in other types (`"true"` for
//! `true`). So the comparison is "does the actual value *cover* the desired
//! one":
//! - objects: every key the config sets is covered by the actual value of
//!   that key (absent counts as `null`); keys API Manager adds are ignored —
//!   except `tags`, a map the config gives whole, whose key sets must be
//!   equal;
//! - arrays: same length, each desired element covered by a distinct actual
//!   element (order-insensitive, as API Manager may reorder profiles);
//! - scalars: equal, where `"true"`/`true`, `"1"`/`1` and `""`/`null` count
//!   as equal;
//! - policy references: a plain policy name (`"requestPolicy": "Validate"`,
//!   as apim-cli configs give them) equals API Manager's key
//!   `<key type='FilterCircuit'><id field='name' value='Validate'/></key>`
//!   (the last `value` of the key, XML-unescaped — apim-cli's
//!   `PolicyDeserializer` reads names the same way).
//!
//! Merging (for `PUT`) follows the same shape: objects are merged key by key
//! into the actual object (API Manager's extra keys survive), arrays and
//! scalars are replaced. So after a write the actual value covers the
//! desired one, and the next comparison finds no change.

use serde_json::{Map, Value};

/// Whether `actual` covers `desired` (see the module docs).
pub fn covers(actual: &Value, desired: &Value) -> bool {
    covers_at(actual, desired, None)
}

/// Whether the actual value of top-level field `field` covers the desired
/// one (`tags` compare whole).
pub fn field_covers(field: &str, actual: &Value, desired: &Value) -> bool {
    if field == "tags" {
        tags_equal(actual, desired)
    } else {
        covers_at(actual, desired, Some(field))
    }
}

fn covers_at(actual: &Value, desired: &Value, key: Option<&str>) -> bool {
    match (actual, desired) {
        (_, Value::Object(d)) => {
            let empty = Map::new();
            let a = match actual {
                Value::Object(a) => a,
                Value::Null => &empty,
                _ => return false,
            };
            d.iter().all(|(k, dv)| {
                let av = a.get(k).unwrap_or(&Value::Null);
                covers_at(av, dv, Some(k))
            })
        }
        (Value::Array(a), Value::Array(d)) => arrays_cover(a, d),
        (Value::Null, Value::Array(d)) => d.is_empty(),
        (_, Value::Array(_)) => false,
        (a, d) => scalar_eq(a, d, key),
    }
}

fn arrays_cover(actual: &[Value], desired: &[Value]) -> bool {
    if actual.len() != desired.len() {
        return false;
    }
    // In order first (the common case), then any order.
    if actual.iter().zip(desired).all(|(a, d)| covers(a, d)) {
        return true;
    }
    let mut used = vec![false; actual.len()];
    desired.iter().all(|d| {
        match actual
            .iter()
            .enumerate()
            .find(|(i, a)| !used[*i] && covers(a, d))
        {
            Some((i, _)) => {
                used[i] = true;
                true
            }
            None => false,
        }
    })
}

fn scalar_eq(actual: &Value, desired: &Value, key: Option<&str>) -> bool {
    if actual == desired {
        return true;
    }
    match (actual, desired) {
        (Value::Null, Value::String(s)) | (Value::String(s), Value::Null) => s.is_empty(),
        (Value::String(a), Value::String(d)) => {
            key.is_some_and(is_policy_key) && policy_name(a) == policy_name(d)
        }
        (Value::String(s), Value::Bool(b)) | (Value::Bool(b), Value::String(s)) => {
            s.eq_ignore_ascii_case(if *b { "true" } else { "false" })
        }
        (Value::String(s), Value::Number(n)) | (Value::Number(n), Value::String(s)) => {
            match (s.trim().parse::<f64>(), n.as_f64()) {
                (Ok(a), Some(b)) => a == b,
                _ => false,
            }
        }
        (Value::Number(a), Value::Number(d)) => a.as_f64() == d.as_f64(),
        _ => false,
    }
}

/// `tags` must name the same tags with the same values.
fn tags_equal(actual: &Value, desired: &Value) -> bool {
    match (actual, desired) {
        (Value::Object(a), Value::Object(d)) => {
            a.len() == d.len()
                && d.iter()
                    .all(|(k, dv)| a.get(k).is_some_and(|av| covers(av, dv)))
        }
        (Value::Null, Value::Object(d)) => d.is_empty(),
        (a, d) => covers(a, d),
    }
}

/// Keys whose values are policy references.
pub fn is_policy_key(key: &str) -> bool {
    matches!(
        key,
        "requestPolicy" | "responsePolicy" | "routePolicy" | "faultHandlerPolicy"
    )
}

/// The policy a value names: the last `value='...'` of an API Manager key,
/// XML-unescaped, or the value itself when it is a plain name.
pub fn policy_name(s: &str) -> String {
    let trimmed = s.trim();
    if !trimmed.starts_with("<key") {
        return trimmed.to_owned();
    }
    let name = trimmed
        .rmatch_indices("value='")
        .next()
        .and_then(|(i, m)| {
            let rest = &trimmed[i + m.len()..];
            rest.find('\'').map(|end| &rest[..end])
        })
        .or_else(|| {
            trimmed
                .rmatch_indices("value=\"")
                .next()
                .and_then(|(i, m)| {
                    let rest = &trimmed[i + m.len()..];
                    rest.find('"').map(|end| &rest[..end])
                })
        });
    match name {
        Some(n) => xml_unescape(n),
        None => trimmed.to_owned(),
    }
}

/// A top-level filter circuit's key, as API Manager writes it.
pub fn simple_policy_key(name: &str) -> String {
    format!(
        "<key type='FilterCircuit'><id field='name' value='{}'/></key>",
        xml_escape(name)
    )
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// Sets top-level field `field` of object `target` to `desired`, merged into
/// the current value when both are objects (`tags` are replaced whole).
pub fn merge_field(target: &mut Map<String, Value>, field: &str, desired: &Value) {
    match target.get_mut(field) {
        Some(current) if field != "tags" && current.is_object() && desired.is_object() => {
            merge(current, desired)
        }
        _ => {
            target.insert(field.to_owned(), desired.clone());
        }
    }
}

/// Merges `desired` into `target`: objects key by key, everything else
/// replaced.
pub fn merge(target: &mut Value, desired: &Value) {
    match (target, desired) {
        (Value::Object(t), Value::Object(d)) => {
            for (k, dv) in d {
                match t.get_mut(k) {
                    Some(tv) if tv.is_object() && dv.is_object() => merge(tv, dv),
                    _ => {
                        t.insert(k.clone(), dv.clone());
                    }
                }
            }
        }
        (t, d) => *t = d.clone(),
    }
}

/// Whether two specifications are the same document: equal as parsed JSON
/// or YAML (formatting and key order do not matter), else byte-equal after
/// trimming (WSDL).
pub fn same_specification(desired: &[u8], actual: &[u8]) -> bool {
    match (parse_document(desired), parse_document(actual)) {
        (Some(d), Some(a)) => d == a,
        _ => trim_bytes(desired) == trim_bytes(actual),
    }
}

fn parse_document(bytes: &[u8]) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return Some(v);
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('<') {
        return None;
    }
    match serde_saphyr::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

fn trim_bytes(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extra_keys_and_type_echoes_are_covered() {
        let actual = json!({
            "securityProfiles": [{"name": "_default", "isDefault": true, "devices": [
                {"name": "API Key", "type": "apiKey", "order": 1,
                 "properties": {"apiKeyFieldName": "KeyId", "takeFrom": "HEADER", "removeCredentialsOnSuccess": "true"}}
            ]}],
            "summary": null,
        });
        let desired = json!({
            "securityProfiles": [{"name": "_default", "isDefault": "true", "devices": [
                {"name": "API Key", "type": "apiKey", "order": "1",
                 "properties": {"apiKeyFieldName": "KeyId", "takeFrom": "HEADER", "removeCredentialsOnSuccess": true}}
            ]}],
            "summary": "",
        });
        assert!(covers(&actual, &desired));
        let changed = json!({"securityProfiles": [{"name": "_default", "devices": []}]});
        assert!(!covers(&actual, &changed));
    }

    #[test]
    fn arrays_compare_in_any_order_but_not_length() {
        assert!(covers(&json!([1, 2, 3]), &json!([3, 1, 2])));
        assert!(!covers(&json!([1, 2, 3]), &json!([1, 2])));
        assert!(covers(&Value::Null, &json!([])));
    }

    #[test]
    fn tags_compare_whole() {
        let actual = json!({"a": ["1"], "b": ["2"]});
        assert!(field_covers(
            "tags",
            &actual,
            &json!({"a": ["1"], "b": ["2"]})
        ));
        assert!(!field_covers("tags", &actual, &json!({"a": ["1"]})));
        assert!(field_covers("tags", &json!({}), &json!({})));
        assert!(field_covers("tags", &Value::Null, &json!({})));
        // Other maps compare by the keys the config sets.
        assert!(field_covers(
            "customProperties",
            &actual,
            &json!({"a": ["1"]})
        ));
    }

    #[test]
    fn policy_names_match_keys() {
        let key = "<key type='CircuitContainer'><id field='name' value='API Keys'/><key type='FilterCircuit'><id field='name' value='Validate Size &amp; Token'/></key></key>";
        assert_eq!(policy_name(key), "Validate Size & Token");
        let actual = json!({"_default": {"requestPolicy": key}});
        let desired = json!({"_default": {"requestPolicy": "Validate Size & Token"}});
        assert!(field_covers("outboundProfiles", &actual, &desired));
        let other = json!({"_default": {"requestPolicy": "Other"}});
        assert!(!field_covers("outboundProfiles", &actual, &other));
        assert_eq!(policy_name(&simple_policy_key("A & B")), "A & B");
    }

    #[test]
    fn merge_keeps_api_manager_keys_and_replaces_arrays() {
        let proxy = json!({"serviceProfiles": {"_default": {"apiId": "b1", "basePath": "https://old"}},
                           "tags": {"x": ["1"]}, "corsProfiles": [{"name": "a"}, {"name": "b"}]});
        let Value::Object(mut proxy) = proxy else {
            unreachable!()
        };
        let sp = json!({"_default": {"basePath": "https://new"}});
        merge_field(&mut proxy, "serviceProfiles", &sp);
        merge_field(&mut proxy, "tags", &json!({"y": ["2"]}));
        merge_field(&mut proxy, "corsProfiles", &json!([{"name": "c"}]));
        assert_eq!(proxy["serviceProfiles"]["_default"]["apiId"], "b1");
        assert_eq!(
            proxy["serviceProfiles"]["_default"]["basePath"],
            "https://new"
        );
        assert_eq!(proxy["tags"], json!({"y": ["2"]}));
        assert_eq!(proxy["corsProfiles"], json!([{"name": "c"}]));
    }

    #[test]
    fn specifications_compare_as_documents() {
        assert!(same_specification(
            b"{\"a\": 1, \"b\": [1]}",
            b"{\"b\":[1],\"a\":1}\n"
        ));
        assert!(same_specification(
            b"a: 1\nb: [1]\n",
            b"{\"a\": 1, \"b\": [1]}"
        ));
        assert!(!same_specification(b"{\"a\": 1}", b"{\"a\": 2}"));
        assert!(same_specification(b"<definitions/>\n", b"  <definitions/>"));
    }
}
