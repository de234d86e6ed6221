//! Between JSON and Rhai values: the one conversion that model answers, persisted options, `parse_json`
//! and DataFrame rows all use.

use rhai::{Array, Dynamic};

/// A JSON value as a Rhai value: objects become maps, integers stay integers.
pub fn json_to_dynamic(value: serde_json::Value) -> Dynamic {
    match value {
        serde_json::Value::Null => Dynamic::UNIT,
        serde_json::Value::Bool(b) => b.into(),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => i.into(),
            None => n.as_f64().unwrap_or(f64::NAN).into(),
        },
        serde_json::Value::String(s) => s.into(),
        serde_json::Value::Array(items) => {
            Dynamic::from_array(items.into_iter().map(json_to_dynamic).collect())
        }
        serde_json::Value::Object(obj) => Dynamic::from_map(
            obj.into_iter()
                .map(|(k, v)| (k.into(), json_to_dynamic(v)))
                .collect(),
        ),
    }
}

/// A value that has no JSON form: a native handle (a closure, a model), named by its type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("a value of type `{type_name}` cannot go in a DataFrame")]
pub struct NotJson {
    pub type_name: String,
}

impl From<NotJson> for String {
    fn from(e: NotJson) -> String {
        e.to_string()
    }
}

/// A Rhai value as JSON; a native handle (a closure, a model) is an error naming its type.
pub fn dynamic_to_json(value: &Dynamic) -> Result<serde_json::Value, NotJson> {
    if value.is_unit() {
        return Ok(serde_json::Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(b.into());
    }
    if let Ok(i) = value.as_int() {
        return Ok(i.into());
    }
    if let Ok(f) = value.as_float() {
        return Ok(serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null));
    }
    if value.is_string() || value.is_char() {
        return Ok(value.to_string().into());
    }
    if let Some(arr) = value.read_lock::<Array>() {
        return arr
            .iter()
            .map(dynamic_to_json)
            .collect::<Result<Vec<_>, _>>()
            .map(serde_json::Value::Array);
    }
    if let Some(map) = value.read_lock::<rhai::Map>() {
        let mut obj = serde_json::Map::new();
        for (k, v) in map.iter() {
            obj.insert(k.to_string(), dynamic_to_json(v)?);
        }
        return Ok(serde_json::Value::Object(obj));
    }
    Err(NotJson {
        type_name: value.type_name().to_string(),
    })
}
