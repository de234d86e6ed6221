//! Turning cell outputs into bytes and back, and the content hash the cache keys on.
//!
//! Plain values become JSON; DataFrames become Parquet files referenced from the JSON as
//! `{"$rtlab": "frame", "hash": ...}`, so a map holding frames persists too. Closures, function pointers
//! and other native handles cannot be persisted: [`encode`] says why, and the cells reading them rerun.

use crate::data::Frame;
use rhai::{Array, Dynamic, Map};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A value ready to write: its JSON, and the frames it refers to by content hash.
pub struct Encoded {
    pub json: Value,
    pub frames: BTreeMap<String, Frame>,
}

impl Encoded {
    /// The value's content hash: the JSON with frames replaced by their own content hashes.
    pub fn content_hash(&self) -> String {
        blake3::hash(self.json.to_string().as_bytes())
            .to_hex()
            .to_string()
    }
}

/// Why a value cannot be persisted, in words for the runner's note.
#[derive(Debug, Clone)]
pub struct NotPersistable(pub String);

pub fn encode(value: &Dynamic) -> Result<Encoded, NotPersistable> {
    let mut frames = BTreeMap::new();
    let json = to_json(value, &mut frames)?;
    Ok(Encoded { json, frames })
}

fn to_json(value: &Dynamic, frames: &mut BTreeMap<String, Frame>) -> Result<Value, NotPersistable> {
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(json!(i));
    }
    if let Ok(f) = value.as_float() {
        // JSON has no NaN or infinities, and serde_json would write 1.0 back as an int-looking 1.0: tag floats.
        return Ok(json!({"$rtlab": "float", "v": f.to_string()}));
    }
    if let Ok(c) = value.as_char() {
        return Ok(json!({"$rtlab": "char", "v": c.to_string()}));
    }
    if value.is_string() {
        return Ok(Value::String(
            value.clone().into_string().unwrap_or_default(),
        ));
    }
    if value.is_array() {
        let arr = value
            .read_lock::<Array>()
            .ok_or_else(|| NotPersistable("an array that is locked".into()))?;
        return Ok(Value::Array(
            arr.iter()
                .map(|v| to_json(v, frames))
                .collect::<Result<_, _>>()?,
        ));
    }
    if value.is_map() {
        let map = value
            .read_lock::<Map>()
            .ok_or_else(|| NotPersistable("a map that is locked".into()))?;
        let mut obj = serde_json::Map::new();
        for (k, v) in map.iter() {
            obj.insert(k.to_string(), to_json(v, frames)?);
        }
        // Keep user keys that start with `$rtlab` from being mistaken for tags.
        if obj.contains_key("$rtlab") {
            return Ok(json!({"$rtlab": "map", "v": Value::Object(obj)}));
        }
        return Ok(Value::Object(obj));
    }
    if let Some(frame) = value.read_lock::<Frame>() {
        let hash = frame
            .content_hash()
            .map_err(|e| NotPersistable(format!("a DataFrame that cannot be serialized ({e})")))?
            .to_hex()
            .to_string();
        frames.insert(hash.clone(), frame.clone());
        return Ok(json!({"$rtlab": "frame", "hash": hash}));
    }
    if let Some(plot) = value.read_lock::<crate::plot::Plot>() {
        let kind = if plot.kind == crate::plot::Kind::Bar {
            "bar"
        } else {
            "line"
        };
        let values: Vec<Value> = plot.values.iter().map(|v| json!(v.to_string())).collect();
        return Ok(
            json!({"$rtlab": "plot", "kind": kind, "title": plot.title, "labels": plot.labels, "values": values}),
        );
    }
    if let Some(model) = value.read_lock::<crate::llm::Model>() {
        // A model is its configuration (the key stays in the environment); usage counters restart.
        let opts = to_json(&Dynamic::from_map(model.to_options()), frames)?;
        return Ok(json!({"$rtlab": "model", "options": opts}));
    }
    if let Some(local) = value.read_lock::<crate::train::Local>() {
        // A local model is what it was loaded from, with the files' stamps so that a cell reading it
        // reruns when the model or the adapter changes on disk; restoring loads it again.
        let s = &local.0.source;
        let stamp = crate::runtime_fns::file_stamp;
        // A GGUF is one file; a Hugging Face directory is its config and weight files.
        let model_stamps: Vec<String> = if s.path.is_dir() {
            let mut files = vec![s.path.join("config.json")];
            files.extend(crate::train::config::weight_files(&s.path).unwrap_or_default());
            files.iter().map(|f| stamp(f)).collect()
        } else {
            vec![stamp(&s.path)]
        };
        let adapter_stamp = s
            .adapter
            .as_ref()
            .map(|a| stamp(&a.join("adapter_model.safetensors")));
        return Ok(json!({
            "$rtlab": "local_model",
            "path": s.path.display().to_string(),
            "adapter": s.adapter.as_ref().map(|a| a.display().to_string()),
            "template": s.template,
            "dequantize": s.dequantize,
            "stamps": [model_stamps, adapter_stamp],
        }));
    }
    if let Some(slurm) = value.read_lock::<crate::slurm::SlurmOptions>() {
        // An executor is its options: the same map rebuilds it.
        let opts = to_json(&Dynamic::from_map(slurm.to_map()), frames)?;
        return Ok(json!({"$rtlab": "slurm", "options": opts}));
    }
    if value.is_fnptr() {
        return Err(NotPersistable("a closure or function pointer".into()));
    }
    let type_name = value.type_name();
    let short = type_name.rsplit("::").next().unwrap_or(type_name);
    Err(NotPersistable(format!(
        "a `{short}` (a live object, not data)"
    )))
}

/// Rebuilds a value; `load_frame` fetches a frame by its content hash.
pub fn decode(
    json: &Value,
    load_frame: &mut dyn FnMut(&str) -> Result<Frame, String>,
) -> Result<Dynamic, String> {
    Ok(match json {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from(*b),
        Value::Number(n) => Dynamic::from(
            n.as_i64()
                .ok_or_else(|| format!("integer out of range: {n}"))?,
        ),
        Value::String(s) => Dynamic::from(s.clone()),
        Value::Array(items) => {
            let arr: Array = items
                .iter()
                .map(|v| decode(v, load_frame))
                .collect::<Result<_, _>>()?;
            Dynamic::from_array(arr)
        }
        Value::Object(obj) => match obj.get("$rtlab").and_then(Value::as_str) {
            Some("float") => {
                let text = obj
                    .get("v")
                    .and_then(Value::as_str)
                    .ok_or("float without a value")?;
                Dynamic::from(
                    text.parse::<f64>()
                        .map_err(|e| format!("bad float {text:?}: {e}"))?,
                )
            }
            Some("char") => {
                let text = obj
                    .get("v")
                    .and_then(Value::as_str)
                    .ok_or("char without a value")?;
                Dynamic::from(text.chars().next().ok_or("empty char")?)
            }
            Some("frame") => {
                let hash = obj
                    .get("hash")
                    .and_then(Value::as_str)
                    .ok_or("frame without a hash")?;
                Dynamic::from(load_frame(hash)?)
            }
            Some("plot") => {
                let kind = if obj.get("kind").and_then(Value::as_str) == Some("bar") {
                    crate::plot::Kind::Bar
                } else {
                    crate::plot::Kind::Line
                };
                let title = obj
                    .get("title")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let labels = obj
                    .get("labels")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|v| v.as_str().unwrap_or_default().to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                let values = obj
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|v| v.as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN))
                            .collect()
                    })
                    .unwrap_or_default();
                Dynamic::from(crate::plot::Plot::new(kind, title, labels, values))
            }
            Some("model") => {
                let opts = decode(
                    obj.get("options").ok_or("model without options")?,
                    load_frame,
                )?;
                let map = opts
                    .try_cast::<rhai::Map>()
                    .ok_or("model options are not a map")?;
                Dynamic::from(crate::llm::Model::from_options(&map)?)
            }
            Some("local_model") => {
                let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
                let path = text("path").ok_or("local model without a path")?;
                let adapter = text("adapter").map(std::path::PathBuf::from);
                let model = crate::train::load_local(
                    std::path::Path::new(&path),
                    adapter.as_deref(),
                    text("template"),
                    obj.get("dequantize")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                )
                .map_err(|e| format!("cannot load the cached cell's model again: {e}"))?;
                Dynamic::from(crate::train::Local(model))
            }
            Some("slurm") => {
                let opts = decode(
                    obj.get("options").ok_or("slurm executor without options")?,
                    load_frame,
                )?;
                let map = opts
                    .try_cast::<rhai::Map>()
                    .ok_or("slurm executor options are not a map")?;
                Dynamic::from(crate::slurm::SlurmOptions::from_map(&map)?)
            }
            Some("map") => decode(obj.get("v").ok_or("map without a value")?, load_frame)?,
            Some(other) => return Err(format!("unknown tag {other:?}")),
            None => {
                let mut map = Map::new();
                for (k, v) in obj {
                    map.insert(k.as_str().into(), decode(v, load_frame)?);
                }
                Dynamic::from_map(map)
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: Dynamic) -> Dynamic {
        let enc = encode(&v).expect("persistable");
        decode(&enc.json, &mut |_| Err("no frames".into())).expect("decodes")
    }

    #[test]
    fn a_local_model_is_cached_as_what_it_was_loaded_from_and_its_files_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::train::tiny::TinySpec::default();
        crate::train::tiny::create(dir.path(), &spec).unwrap();
        let model =
            crate::train::load_local(dir.path(), None, Some("{prompt}".into()), true).unwrap();
        let value = Dynamic::from(crate::train::Local(model));
        let enc = encode(&value).expect("persistable");
        let back = decode(&enc.json, &mut |_| Err("no frames".into())).unwrap();
        let back = back.cast::<crate::train::Local>();
        assert_eq!(back.0.source, value.cast::<crate::train::Local>().0.source);
        // Rewriting the weights changes the stamp, so a cell that read the model runs again.
        let weights = dir.path().join("model.safetensors");
        let bytes = std::fs::read(&weights).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&weights, bytes).unwrap();
        let again = encode(&Dynamic::from(back)).unwrap();
        assert_ne!(again.json, enc.json);
    }

    #[test]
    fn a_slurm_executor_is_cached_as_its_options() {
        let mut map = Map::new();
        map.insert("partition".into(), "cpu".into());
        map.insert("tasks".into(), Dynamic::from(8_i64));
        map.insert("mem".into(), "2G".into());
        map.insert("max_running".into(), Dynamic::from(2_i64));
        map.insert(
            "extra".into(),
            Dynamic::from_array(vec!["--qos=high".into()]),
        );
        let slurm = crate::slurm::SlurmOptions::from_map(&map).unwrap();
        let back = round_trip(Dynamic::from(slurm.clone()));
        assert_eq!(back.cast::<crate::slurm::SlurmOptions>(), slurm);
    }

    #[test]
    fn plain_values_survive_a_round_trip_with_their_types() {
        let engine = rhai::Engine::new();
        let v: Dynamic = engine
            .eval(r#"#{a: 1, b: 1.0, c: "x", d: [true, (), 'c'], e: #{f: -2.5}}"#)
            .unwrap();
        let back = round_trip(v.clone());
        assert_eq!(format!("{v:?}"), format!("{back:?}"));
        assert!(
            back.read_lock::<Map>().unwrap()["b"].is_float(),
            "1.0 must stay a float"
        );
    }

    #[test]
    fn hashes_follow_content() {
        let a = encode(&Dynamic::from(vec![Dynamic::from(1_i64)]))
            .unwrap()
            .content_hash();
        let b = encode(&Dynamic::from(vec![Dynamic::from(1_i64)]))
            .unwrap()
            .content_hash();
        let c = encode(&Dynamic::from(vec![Dynamic::from(2_i64)]))
            .unwrap()
            .content_hash();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn closures_are_not_persistable_and_say_so() {
        let engine = rhai::Engine::new();
        let f: Dynamic = engine.eval("|x| x + 1").unwrap();
        let err = encode(&f).err().expect("a closure cannot persist");
        assert!(err.0.contains("closure"));
    }
}
