//! Turning cell outputs into bytes and back, and the content hash the cache keys on.
//!
//! Plain values become JSON; DataFrames become Parquet files referenced from the JSON as
//! `{"$rtlab": "frame", "hash": ...}`, so a map holding frames persists too. Closures, function pointers
//! and other native handles cannot be persisted: [`encode`] says why, and the cells reading them rerun.

use rhai::{Array, Dynamic, Map};
use rtlab_data::Frame;
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
    if let Some(rich) = rtlab_core::values::rich_type_of(value) {
        let persist = rich.persist.ok_or_else(|| live_object(value))?;
        let mut nested = |v: &Dynamic| to_json(v, frames).map_err(|e| e.0);
        let mut fields = (persist.save)(value, &mut nested).map_err(NotPersistable)?;
        let mut tagged = serde_json::Map::new();
        tagged.insert("$rtlab".into(), rich.tag.into());
        tagged.append(&mut fields);
        return Ok(Value::Object(tagged));
    }
    if value.is_fnptr() {
        return Err(NotPersistable("a closure or function pointer".into()));
    }
    Err(live_object(value))
}

/// Why a native handle (a registered type that does not persist, or one nobody registered) cannot be
/// cached.
fn live_object(value: &Dynamic) -> NotPersistable {
    let type_name = value.type_name();
    let short = type_name.rsplit("::").next().unwrap_or(type_name);
    NotPersistable(format!("a `{short}` (a live object, not data)"))
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
            Some("map") => decode(obj.get("v").ok_or("map without a value")?, load_frame)?,
            Some(tag) => {
                let rich = rtlab_core::values::rich_type_tagged(tag)
                    .and_then(|rich| rich.persist)
                    .ok_or_else(|| format!("unknown tag {tag:?}"))?;
                let mut nested = |v: &Value| decode(v, load_frame);
                (rich.load)(obj, &mut nested)?
            }
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
        crate::engine::install_rich_types();
        let enc = encode(&v).expect("persistable");
        decode(&enc.json, &mut |_| Err("no frames".into())).expect("decodes")
    }

    #[test]
    fn a_local_model_is_cached_as_what_it_was_loaded_from_and_its_files_stamps() {
        crate::engine::install_rich_types();
        let dir = tempfile::tempdir().unwrap();
        let spec = rtlab_model::tiny::TinySpec::default();
        rtlab_model::tiny::create(dir.path(), &spec).unwrap();
        let model =
            rtlab_model::load_local(dir.path(), None, Some("{prompt}".into()), true).unwrap();
        let value = Dynamic::from(rtlab_train::Local(model));
        let enc = encode(&value).expect("persistable");
        let back = decode(&enc.json, &mut |_| Err("no frames".into())).unwrap();
        let back = back.cast::<rtlab_train::Local>();
        assert_eq!(back.0.source, value.cast::<rtlab_train::Local>().0.source);
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
        let slurm = rtlab_slurm::SlurmOptions::from_spec(
            "partition=cpu,tasks=8,mem=2G,max_running=2,extra=--qos=high",
            std::path::Path::new("/"),
        )
        .unwrap();
        let back = round_trip(Dynamic::from(slurm.clone()));
        assert_eq!(back.cast::<rtlab_slurm::SlurmOptions>(), slurm);
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
