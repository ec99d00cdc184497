//! Storing compact JSON once: the key order jsonb forgets, so its text can be turned back into
//! the exact bytes we were given.
//!
//! jsonb prints objects with `": "` and `", "` and its keys sorted (shorter first, then
//! bytewise), so serde's compact output (what the typed layer sends) never survives it as text.
//! Keeping an exact copy beside the document doubles a row; instead, when a payload is exactly
//! serde's compact rendering of itself, we keep only the permutation of each object's keys and
//! rebuild the bytes on receive: parse jsonb's text, put the keys back in order, render
//! compact. serde does all parsing and printing; this module only records and restores order.
//! Anything where that is not provably exact (duplicate keys, `-0.0`, numbers serde would
//! print differently) keeps the exact copy instead.

use std::borrow::Cow;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::key_order_flat::{flat_key_order, rebuild_flat, scan_flat, Member, FLAT_MAX};

/// A JSON document that keeps object keys in document order. Strings borrow from the input
/// when they have no escapes (receive rebuilds one per message: allocations count).
#[derive(Debug)]
enum Node<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

/// A string that borrows when it can (serde's own `Cow<str>` always copies).
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Node<'de>, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node<'de>, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node<'de>, E> {
                Ok(Node::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node<'de>, E> {
                Ok(Node::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node<'de>, E> {
                serde_json::Number::from_f64(v)
                    .map(Node::Number)
                    .ok_or_else(|| E::custom("non-finite number"))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Node<'de>, E> {
                Ok(Node::String(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node<'de>, E> {
                Ok(Node::String(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Node<'de>, E> {
                Ok(Node::String(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((k, v)) = map.next_entry::<Text<'de>, Node<'de>>()? {
                    entries.push((k.0, v));
                }
                Ok(Node::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Node<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Number(n) => n.serialize(s),
            Node::String(v) => s.serialize_str(v),
            Node::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// jsonb's key order: shorter keys first, then bytewise.
fn jsonb_order(entries: &[(Cow<'_, str>, Node<'_>)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| {
        let (ka, kb) = (entries[a].0.as_bytes(), entries[b].0.as_bytes());
        ka.len().cmp(&kb.len()).then_with(|| ka.cmp(kb))
    });
    order
}

/// Walks objects in document order (pre-order), recording for each where its keys sit in
/// jsonb's order. `None` when the document cannot be rebuilt exactly.
fn record(node: &Node<'_>, perms: &mut Vec<Vec<u32>>) -> Option<()> {
    match node {
        Node::Number(n) => {
            // jsonb's numeric has no negative zero.
            if n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative()) {
                return None;
            }
        }
        Node::Array(items) => {
            for item in items {
                record(item, perms)?;
            }
        }
        Node::Object(entries) => {
            let order = jsonb_order(entries);
            // Duplicate keys: jsonb keeps only the last.
            if order.windows(2).any(|w| entries[w[0]].0 == entries[w[1]].0) {
                return None;
            }
            // perm[i] = position in jsonb's order of the document's i-th key.
            let mut perm = vec![0u32; entries.len()];
            for (sorted_pos, &doc_pos) in order.iter().enumerate() {
                perm[doc_pos] = sorted_pos as u32;
            }
            perms.push(perm);
            for (_, v) in entries {
                record(v, perms)?;
            }
        }
        Node::Null | Node::Bool(_) | Node::String(_) => {}
    }
    Some(())
}

/// For a JSON payload: the key permutations that rebuild it from jsonb's text, as JSON text
/// (`"[]"` when every object is already in jsonb's order), or `None` when the payload is not
/// serde's compact rendering of itself or could not be rebuilt exactly.
pub(super) fn compact_key_order(payload: &str) -> Option<String> {
    let mut members = [Member::default(); FLAT_MAX];
    match scan_flat(payload, ":", ",", &mut members) {
        Some(n) => flat_key_order(&members[..n]),
        None => general_key_order(payload),
    }
}

fn general_key_order(payload: &str) -> Option<String> {
    let node: Node = serde_json::from_str(payload).ok()?;
    let rendered = serde_json::to_string(&node).ok()?;
    if rendered != payload {
        return None;
    }
    let mut perms = Vec::new();
    record(&node, &mut perms)?;
    let identity = perms
        .iter()
        .all(|p| p.iter().enumerate().all(|(i, &j)| i as u32 == j));
    if identity {
        return Some("[]".to_owned());
    }
    serde_json::to_string(&perms).ok()
}

fn restore(node: &mut Node<'_>, perms: &mut std::slice::Iter<'_, Vec<u32>>) -> Result<(), String> {
    match node {
        Node::Array(items) => {
            for item in items {
                restore(item, perms)?;
            }
        }
        Node::Object(entries) => {
            if let Some(perm) = perms.next() {
                if perm.len() != entries.len() {
                    return Err("key order does not match the document".into());
                }
                let mut taken: Vec<Option<(Cow<'_, str>, Node<'_>)>> =
                    std::mem::take(entries).into_iter().map(Some).collect();
                for &j in perm {
                    let entry = taken
                        .get_mut(j as usize)
                        .and_then(Option::take)
                        .ok_or("key order is not a permutation")?;
                    entries.push(entry);
                }
            }
            for (_, v) in entries.iter_mut() {
                restore(v, perms)?;
            }
        }
        Node::Null | Node::Bool(_) | Node::Number(_) | Node::String(_) => {}
    }
    Ok(())
}

/// Rebuilds the exact payload from jsonb's text and the recorded key order.
pub(super) fn rebuild_compact(
    jsonb_text: &str,
    key_order: Option<&str>,
) -> Result<Vec<u8>, String> {
    if let Some(bytes) = rebuild_flat(jsonb_text, key_order) {
        return Ok(bytes);
    }
    rebuild_general(jsonb_text, key_order)
}

fn rebuild_general(jsonb_text: &str, key_order: Option<&str>) -> Result<Vec<u8>, String> {
    let mut node: Node = serde_json::from_str(jsonb_text).map_err(|e| e.to_string())?;
    if let Some(order) = key_order {
        let perms: Vec<Vec<u32>> = serde_json::from_str(order).map_err(|e| e.to_string())?;
        if !perms.is_empty() {
            restore(&mut node, &mut perms.iter())?;
        }
    }
    serde_json::to_vec(&node).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What jsonb prints for `text`, for the cases below (keys sorted, ", " and ": ").
    fn jsonb_text(node: &Node<'_>) -> String {
        match node {
            Node::Object(entries) => {
                let order = jsonb_order(entries);
                let parts: Vec<String> = order
                    .iter()
                    .map(|&i| {
                        format!(
                            "{}: {}",
                            serde_json::to_string(&entries[i].0).unwrap(),
                            jsonb_text(&entries[i].1)
                        )
                    })
                    .collect();
                format!("{{{}}}", parts.join(", "))
            }
            Node::Array(items) => {
                let parts: Vec<String> = items.iter().map(jsonb_text).collect();
                format!("[{}]", parts.join(", "))
            }
            other => serde_json::to_string(other).unwrap(),
        }
    }

    #[test]
    fn compact_documents_rebuild_exactly_from_jsonb_order() {
        for payload in [
            r#"{"task_uuid":"a","step_uuid":"b","correlation_id":"c"}"#,
            r#"{"b":{"zz":1,"a":[{"y":2,"x":3},{}]},"a":null,"ccc":[true,false,1.5,-2]}"#,
            r#"{"a":1,"b":2}"#,
            r#"[1,"two",{"k":"v"}]"#,
            r#""just a string""#,
            r#"{"é":"ü","e":"\n\"\\"}"#,
            "42",
        ] {
            let order = compact_key_order(payload).unwrap_or_else(|| panic!("{payload}"));
            let node: Node = serde_json::from_str(payload).unwrap();
            let stored = jsonb_text(&node);
            let rebuilt = rebuild_compact(&stored, Some(&order)).unwrap();
            assert_eq!(
                String::from_utf8(rebuilt).unwrap(),
                payload,
                "via {stored} and {order}"
            );
        }
    }

    /// Every payload through both paths: same key order, same rebuilt bytes.
    fn assert_paths_agree(payload: &str) {
        let general = general_key_order(payload);
        assert_eq!(compact_key_order(payload), general, "{payload}");
        if let Some(order) = general {
            let node: Node = serde_json::from_str(payload).unwrap();
            let stored = jsonb_text(&node);
            let general = rebuild_general(&stored, Some(&order)).unwrap();
            assert_eq!(general, payload.as_bytes(), "via {stored} and {order}");
            assert_eq!(rebuild_compact(&stored, Some(&order)).unwrap(), general);
        }
    }

    #[test]
    fn the_flat_fast_path_agrees_with_the_general_path() {
        let many: String = format!(
            "{{{}}}",
            (0..40)
                .map(|i| format!("\"k{}\":{i}", 40 - i))
                .collect::<Vec<_>>()
                .join(",")
        );
        for payload in [
            r#"{"task_uuid":"a","step_uuid":"b","correlation_id":"c"}"#,
            r#"{}"#,
            r#"{"a":1,"b":-2,"c":0,"d":true,"e":false,"f":null,"g":"x"}"#,
            r#"{"zz":"é","z":"ü","é":"","":"empty key"}"#,
            r#"{"bb":1,"ab":2,"b":3,"a":4}"#,
            r#"{"n":123456789012345678}"#,
            // Each of these must leave the fast path and still agree.
            r#"{"n":1234567890123456789}"#,
            r#"{"n":-0}"#,
            r#"{"n":01}"#,
            r#"{"n":1.5}"#,
            r#"{"n":1e3}"#,
            r#"{"s":"a\"b"}"#,
            r#"{"s":"line\nbreak"}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a": 1}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a":[1]}"#,
            r#"{"a":1} "#,
            r#"{"a":1}x"#,
            r#"{"a":tru}"#,
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            r#"["a"]"#,
            &many,
        ] {
            assert_paths_agree(payload);
        }
        let mut members = [Member::default(); FLAT_MAX];
        assert!(
            scan_flat(&many, ":", ",", &mut members).is_none(),
            "over FLAT_MAX"
        );
    }

    #[test]
    fn generated_flat_objects_agree_on_both_paths() {
        // A small deterministic generator: keys and values drawn from pieces that exercise
        // sorting (lengths, bytes), scalars of every kind and strings the fast path declines.
        let keys = [
            "a",
            "b",
            "ab",
            "ba",
            "zz",
            "é",
            "task_uuid",
            "step_uuid",
            "x1",
            "",
        ];
        let values = [
            "1",
            "-7",
            "0",
            "true",
            "false",
            "null",
            r#""v""#,
            r#""é""#,
            r#""""#,
            "999999999999999999",
            "1.0",
            r#""q\"""#,
            "-0",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        for _ in 0..3000 {
            let n = next(7);
            let members: Vec<String> = (0..n)
                .map(|_| {
                    format!(
                        "\"{}\":{}",
                        keys[next(keys.len())],
                        values[next(values.len())]
                    )
                })
                .collect();
            assert_paths_agree(&format!("{{{}}}", members.join(",")));
        }
    }

    #[test]
    fn anything_not_provably_exact_keeps_a_copy() {
        for payload in [
            r#"{"a": 1}"#,               // not compact
            r#"{"a":1,"a":2}"#,          // duplicate keys
            r#"{"x":-0.0}"#,             // negative zero
            r#"[1.50]"#,                 // serde prints 1.5
            r#"[1e3]"#,                  // serde prints 1000.0
            r#"[18446744073709551616]"#, // beyond u64
            r#""\u00e9""#,               // serde prints the character
        ] {
            assert!(compact_key_order(payload).is_none(), "{payload}");
        }
    }

    #[test]
    fn a_corrupt_key_order_is_an_error_not_a_panic() {
        assert!(rebuild_compact(r#"{"a": 1, "b": 2}"#, Some("[[0,0]]")).is_err());
        assert!(rebuild_compact(r#"{"a": 1, "b": 2}"#, Some("[[0]]")).is_err());
        assert!(rebuild_compact(r#"{"a": 1, "b": 2}"#, Some("[[5,1]]")).is_err());
        assert!(rebuild_compact(r#"{"a": 1}"#, Some("nonsense")).is_err());
    }
}
