//! The one reader of the option maps that stdlib functions take (`verify(code, #{...})`,
//! `benchmark(model, problems, #{...})`, ...).
//!
//! [`Options::new`] refuses a key the function does not know, listing the ones it does; each typed
//! getter refuses a value of the wrong type, naming the key, the value and the type it wants. Nothing
//! is coerced: `n: 2.5` is an error, not 2, and `k: "5"` is an error, not dropped. The one widening is
//! an integer where a float is wanted (`temperature: 1`), and a whole float where a count is
//! wanted (`epochs: 3.0`, [`Options::whole_at_least`]): neither loses anything.

use rhai::{Array, Dynamic, Map};

/// Why an option map was refused. Each variant's text is the message the user sees, naming the
/// function, the key and the value; the fields let a caller (or a test) tell the cases apart.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptionError {
    #[error("{function}: unknown option{} {}; valid options: {}", plural(unknown), ticked(unknown), valid.join(", "))]
    UnknownKeys {
        function: String,
        unknown: Vec<String>,
        valid: Vec<String>,
    },
    /// A value of the wrong type or outside what the key takes; `wanted` says what it takes.
    #[error("{function}: option `{key}` must be {wanted}, not {shown}")]
    Wrong {
        function: String,
        key: String,
        wanted: String,
        shown: String,
    },
    #[error("{function}: option `{key}` must be at least {min}, not {value}")]
    TooSmall {
        function: String,
        key: String,
        min: i64,
        value: i64,
    },
    /// An element of an array option of the wrong type.
    #[error("{function}: option `{key}` must hold {wanted}, not {shown}")]
    WrongElement {
        function: String,
        key: String,
        wanted: String,
        shown: String,
    },
    #[error("{function}: {key}[{index}] is empty; a stop string must have at least one character")]
    EmptyStopString {
        function: String,
        key: String,
        index: usize,
    },
    #[error("{function}: unknown key `{entry}` in `{key}`; valid keys: {}", valid.join(", "))]
    UnknownEntry {
        function: String,
        key: String,
        entry: String,
        valid: Vec<String>,
    },
    #[error("{function}: `{key}.{entry}` must be a number, not {shown}")]
    EntryNotANumber {
        function: String,
        key: String,
        entry: String,
        shown: String,
    },
    /// A function's own rule about its options (`df.verify: pass #{code: ...}`), in its words.
    #[error("{function}: {rule}")]
    Rule { function: String, rule: String },
}

fn plural(items: &[String]) -> &'static str {
    if items.len() == 1 {
        ""
    } else {
        "s"
    }
}

fn ticked(items: &[String]) -> String {
    items
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Callers that still report errors as text take an option error's message unchanged.
impl From<OptionError> for String {
    fn from(e: OptionError) -> String {
        e.to_string()
    }
}

/// `impl From<$error> for Box<rhai::EvalAltResult>`: a crate's error reaches a script as a runtime
/// error whose text is the error's message, the message users saw when errors were strings. Each
/// capability's `api.rs` says this once for its enum.
#[macro_export]
macro_rules! script_error {
    ($error:ty) => {
        impl From<$error> for Box<rhai::EvalAltResult> {
            fn from(e: $error) -> Self {
                e.to_string().into()
            }
        }
    };
}

script_error!(OptionError);

/// A function's option map, checked against the keys it accepts.
pub struct Options<'a> {
    function: &'static str,
    map: &'a Map,
}

/// How a value shows in an error: strings quoted, with the Rhai type name.
fn shown(value: &Dynamic) -> String {
    let text = if value.is_string() {
        format!("{:?}", value.to_string())
    } else {
        value.to_string()
    };
    let text: String = text.chars().take(60).collect();
    format!(
        "{text} ({})",
        value.type_name().rsplit("::").next().unwrap_or("?")
    )
}

impl<'a> Options<'a> {
    /// Checks that every key of `map` is one of `valid`; an unknown key is an error that lists them.
    pub fn new(
        function: &'static str,
        map: &'a Map,
        valid: &[&str],
    ) -> Result<Options<'a>, OptionError> {
        let mut unknown: Vec<String> = map
            .keys()
            .map(|k| k.to_string())
            .filter(|k| !valid.contains(&k.as_str()))
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            // Callers build `valid` from shared lists (train_dpo's are train_lora's and its own),
            // which may name a key twice; the user sees each once.
            let mut listed: Vec<String> = valid.iter().map(|k| k.to_string()).collect();
            listed.sort();
            listed.dedup();
            return Err(OptionError::UnknownKeys {
                function: function.to_string(),
                unknown,
                valid: listed,
            });
        }
        Ok(Options { function, map })
    }

    /// The raw value, if the key is present and not `()`.
    pub fn get(&self, key: &str) -> Option<&'a Dynamic> {
        self.map.get(key).filter(|v| !v.is_unit())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn wrong(&self, key: &str, value: &Dynamic, wanted: &str) -> OptionError {
        OptionError::Wrong {
            function: self.function.to_string(),
            key: key.to_string(),
            wanted: wanted.to_string(),
            shown: shown(value),
        }
    }

    /// A function's own rule about its options, as an error naming the function.
    pub fn rule(&self, rule: impl Into<String>) -> OptionError {
        OptionError::Rule {
            function: self.function.to_string(),
            rule: rule.into(),
        }
    }

    /// The function these options are for, as errors name it.
    pub fn function(&self) -> &'static str {
        self.function
    }

    /// A string option.
    pub fn string(&self, key: &str) -> Result<Option<String>, OptionError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.is_string() => Ok(Some(v.to_string())),
            Some(v) => Err(self.wrong(key, v, "a string")),
        }
    }

    /// An integer option (a float is refused, never truncated).
    pub fn int(&self, key: &str) -> Result<Option<i64>, OptionError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_int()
                .map(Some)
                .map_err(|_| self.wrong(key, v, "an integer")),
        }
    }

    /// An integer option that must be at least `min`.
    pub fn int_at_least(&self, key: &str, min: i64) -> Result<Option<i64>, OptionError> {
        match self.int(key)? {
            Some(i) if i < min => Err(OptionError::TooSmall {
                function: self.function.to_string(),
                key: key.to_string(),
                min,
                value: i,
            }),
            other => Ok(other),
        }
    }

    /// A count of at least `min`: an integer, or a float with no fraction (`epochs: 3.0`, as configs
    /// copied from Python often write counts), which loses nothing; `2.5` is refused, never truncated.
    pub fn whole_at_least(&self, key: &str, min: u64) -> Result<Option<u64>, OptionError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let x = v
            .as_int()
            .map(|i| i as f64)
            .or_else(|_| v.as_float())
            .map_err(|_| self.wrong(key, v, &format!("a whole number ≥ {min}")))?;
        if x.fract() != 0.0 || x < min as f64 || !x.is_finite() {
            return Err(self.wrong(key, v, &format!("a whole number ≥ {min}")));
        }
        Ok(Some(x as u64))
    }

    /// A number option: a float, or an integer (widened, nothing lost).
    pub fn float(&self, key: &str) -> Result<Option<f64>, OptionError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_float()
                .or_else(|_| v.as_int().map(|i| i as f64))
                .map(Some)
                .map_err(|_| self.wrong(key, v, "a number")),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, OptionError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .map_err(|_| self.wrong(key, v, "true or false")),
        }
    }

    /// A value of a stdlib type (`executor: slurm(#{...})`); `wanted` says what to pass in the error.
    pub fn custom<T: Clone + Send + Sync + 'static>(
        &self,
        key: &str,
        wanted: &str,
    ) -> Result<Option<T>, OptionError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .read_lock::<T>()
                .map(|t| Some(t.clone()))
                .ok_or_else(|| self.wrong(key, v, wanted)),
        }
    }

    /// A map option.
    pub fn map(&self, key: &str) -> Result<Option<Map>, OptionError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .read_lock::<Map>()
                .map(|m| Some(m.clone()))
                .ok_or_else(|| self.wrong(key, v, "a map like #{...}")),
        }
    }

    /// An array option.
    pub fn array(&self, key: &str) -> Result<Option<Array>, OptionError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .read_lock::<Array>()
                .map(|a| Some(a.clone()))
                .ok_or_else(|| self.wrong(key, v, "an array like [...]")),
        }
    }

    /// Stop strings (`stop`): one string or an array of them, none empty; None when absent.
    pub fn stop_strings(&self, key: &str) -> Result<Option<Vec<String>>, OptionError> {
        let stop = match self.get(key) {
            None => return Ok(None),
            Some(v) if v.is_string() => vec![v.to_string()],
            Some(_) => self.strings(key)?.unwrap_or_default(),
        };
        if let Some(i) = stop.iter().position(String::is_empty) {
            return Err(OptionError::EmptyStopString {
                function: self.function.to_string(),
                key: key.to_string(),
                index: i,
            });
        }
        Ok(Some(stop))
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>, OptionError> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| {
                if v.is_string() {
                    Ok(v.to_string())
                } else {
                    Err(OptionError::WrongElement {
                        function: self.function.to_string(),
                        key: key.to_string(),
                        wanted: "strings".to_string(),
                        shown: shown(v),
                    })
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// One integer or an array of integers (`k: 5` or `k: [1, 5]`).
    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>, OptionError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        if let Ok(i) = v.as_int() {
            return Ok(Some(vec![i]));
        }
        let items = v
            .read_lock::<Array>()
            .map(|a| a.clone())
            .ok_or_else(|| self.wrong(key, v, "an integer or an array of integers"))?;
        items
            .iter()
            .map(|x| {
                x.as_int().map_err(|_| OptionError::WrongElement {
                    function: self.function.to_string(),
                    key: key.to_string(),
                    wanted: "integers".to_string(),
                    shown: shown(x),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The name of a map's numeric entries, for options like `weights: #{functional: 0.5}`: each key
    /// must be one of `valid` and each value a number.
    pub fn numbers(&self, key: &str, valid: &[&str]) -> Result<Vec<(String, f64)>, OptionError> {
        let Some(m) = self.map(key)? else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for (name, value) in m.iter() {
            if !valid.contains(&name.as_str()) {
                return Err(OptionError::UnknownEntry {
                    function: self.function.to_string(),
                    key: key.to_string(),
                    entry: name.to_string(),
                    valid: valid.iter().map(|k| k.to_string()).collect(),
                });
            }
            let x = value
                .as_float()
                .or_else(|_| value.as_int().map(|i| i as f64))
                .map_err(|_| OptionError::EntryNotANumber {
                    function: self.function.to_string(),
                    key: key.to_string(),
                    entry: name.to_string(),
                    shown: shown(value),
                })?;
            out.push((name.to_string(), x));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, Dynamic)]) -> Map {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), v.clone()))
            .collect()
    }

    /// Callers can tell the cases apart without reading the message.
    #[test]
    fn each_refusal_is_its_own_variant() {
        let m = map(&[
            ("n", Dynamic::from(0_i64)),
            ("stop", Dynamic::from_array(vec!["".into()])),
        ]);
        let o = Options::new("f", &m, &["n", "stop"]).unwrap();
        assert!(matches!(
            o.int_at_least("n", 1),
            Err(OptionError::TooSmall {
                min: 1,
                value: 0,
                ..
            })
        ));
        assert!(matches!(
            o.stop_strings("stop"),
            Err(OptionError::EmptyStopString { index: 0, .. })
        ));
        assert!(matches!(o.string("n"), Err(OptionError::Wrong { .. })));
        assert!(matches!(
            Options::new("f", &m, &["n"]).err().unwrap(),
            OptionError::UnknownKeys { unknown, .. } if unknown == ["stop"]
        ));
        assert_eq!(
            o.rule("pass #{x: 1}").to_string(),
            "f: pass #{x: 1}",
            "a function's own rule reads like the others"
        );
    }

    #[test]
    fn an_unknown_key_lists_the_valid_ones() {
        let m = map(&[("sead", Dynamic::from(1_i64))]);
        let err = Options::new("bench", &m, &["seed", "k"])
            .err()
            .unwrap()
            .to_string();
        assert_eq!(err, "bench: unknown option `sead`; valid options: k, seed");
    }

    #[test]
    fn a_key_named_twice_in_the_valid_list_is_listed_once() {
        let m = map(&[("lora_dropout", Dynamic::from(0.1_f64))]);
        let err = Options::new("train_lora", &m, &["r", "dropout", "r"])
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "train_lora: unknown option `lora_dropout`; valid options: dropout, r"
        );
    }

    #[test]
    fn a_float_is_not_an_integer() {
        let m = map(&[("n", Dynamic::from(2.5_f64))]);
        let o = Options::new("complete_many", &m, &["n"]).unwrap();
        assert_eq!(
            o.int("n").unwrap_err().to_string(),
            "complete_many: option `n` must be an integer, not 2.5 (f64)"
        );
    }

    #[test]
    fn a_count_takes_a_whole_float_but_never_truncates_one() {
        let m = map(&[
            ("epochs", Dynamic::from(3.0_f64)),
            ("batch_size", Dynamic::from(2.5_f64)),
            ("seed", Dynamic::from(-1_i64)),
            ("steps", Dynamic::from("4")),
        ]);
        let o = Options::new(
            "train_lora",
            &m,
            &["epochs", "batch_size", "seed", "steps", "r"],
        )
        .unwrap();
        assert_eq!(o.whole_at_least("epochs", 1).unwrap(), Some(3));
        assert_eq!(o.whole_at_least("r", 1).unwrap(), None);
        assert_eq!(
            o.whole_at_least("batch_size", 1).unwrap_err().to_string(),
            "train_lora: option `batch_size` must be a whole number ≥ 1, not 2.5 (f64)"
        );
        assert_eq!(
            o.whole_at_least("seed", 0).unwrap_err().to_string(),
            "train_lora: option `seed` must be a whole number ≥ 0, not -1 (i64)"
        );
        assert_eq!(
            o.whole_at_least("steps", 1).unwrap_err().to_string(),
            "train_lora: option `steps` must be a whole number ≥ 1, not \"4\" (string)"
        );
    }

    #[test]
    fn a_string_is_not_an_integer_list() {
        let m = map(&[("k", Dynamic::from("5"))]);
        let o = Options::new("benchmark", &m, &["k"]).unwrap();
        assert_eq!(
            o.ints("k").unwrap_err().to_string(),
            "benchmark: option `k` must be an integer or an array of integers, not \"5\" (string)"
        );
        let m = map(&[(
            "k",
            Dynamic::from(vec![Dynamic::from(1_i64), Dynamic::from(1.5_f64)]),
        )]);
        let o = Options::new("benchmark", &m, &["k"]).unwrap();
        assert!(o
            .ints("k")
            .unwrap_err()
            .to_string()
            .contains("must hold integers, not 1.5"));
    }

    #[test]
    fn an_integer_widens_to_a_float_and_unit_means_absent() {
        let m = map(&[("t", Dynamic::from(1_i64)), ("u", Dynamic::UNIT)]);
        let o = Options::new("llm", &m, &["t", "u"]).unwrap();
        assert_eq!(o.float("t").unwrap(), Some(1.0));
        assert_eq!(o.string("u").unwrap(), None);
    }
}
