//! The registry of rich values: how each capability's Rhai types (a DataFrame, a plot, a model, an
//! executor) show as text and HTML, and how they persist as JSON. The display code, the report and the
//! notebook cache ask the registry, so none of them switches on stdlib types.
//!
//! Each capability crate lists its types in a pure `rich_types()`; the program that assembles the
//! stdlib (`rtlab::engine::rich_types`) puts them in one [`Registry`] and [`install`]s it once, before
//! it builds an engine or prints a value. Nothing is registered as a side effect of building a
//! package, so every engine, the CLI and the kernel show a value the same way whatever was built
//! first. The installed registry is process-wide because a type's behaviour is a fact about the type;
//! it never changes once installed.

use rhai::Dynamic;
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// Encodes a nested plain value (the options map of a model, say) the way the cache encodes any value.
pub type EncodeNested<'a> = &'a mut dyn FnMut(&Dynamic) -> Result<Value, String>;
/// Decodes a nested value written by [`EncodeNested`].
pub type DecodeNested<'a> = &'a mut dyn FnMut(&Value) -> Result<Dynamic, String>;

/// A persisted value's fields (beside `"$rtlab": tag`).
pub type Fields = Map<String, Value>;

/// How one of rtlab's Rhai types persists in a cell's cache entry.
#[derive(Clone, Copy)]
pub struct Persist {
    /// The value's fields; the cache adds `"$rtlab": tag`.
    pub save: fn(&Dynamic, EncodeNested) -> Result<Fields, String>,
    /// The value again from those fields. An error makes the cell rerun, with the message as the note.
    pub load: fn(&Fields, DecodeNested) -> Result<Dynamic, String>,
}

/// One of rtlab's Rhai types, as the display code, the report and the cache see it.
#[derive(Clone, Copy)]
pub struct RichType {
    /// The name in persisted JSON (`{"$rtlab": tag, ...}`); unique across the stdlib.
    pub tag: &'static str,
    /// Whether a value is of this type.
    pub is: fn(&Dynamic) -> bool,
    /// Its text at the REPL and as a cell's result. Nested in a map or array, its first line is shown.
    pub text: fn(&Dynamic) -> String,
    /// Its HTML in `rtlab report`; `None` shows the text in a `<pre>`.
    pub html: Option<fn(&Dynamic) -> String>,
    /// How it persists; `None` for live objects the cache cannot keep (the cells reading it rerun).
    pub persist: Option<Persist>,
}

/// A set of rich types, one per tag.
/// Two rich types under one persisted tag: a programming error, named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("two rich types are tagged {0:?}")]
pub struct DuplicateTag(pub String);

#[derive(Clone, Default)]
pub struct Registry {
    types: Vec<RichType>,
}

impl Registry {
    /// The types, checked: two types under one tag are a programming error, named.
    pub fn new(types: Vec<RichType>) -> Result<Registry, DuplicateTag> {
        let mut tags: Vec<&str> = types.iter().map(|t| t.tag).collect();
        tags.sort_unstable();
        if let Some(w) = tags.windows(2).find(|w| w[0] == w[1]) {
            return Err(DuplicateTag(w[0].to_string()));
        }
        Ok(Registry { types })
    }

    /// The type a value is of, if it is one of these.
    pub fn type_of(&self, value: &Dynamic) -> Option<RichType> {
        if !(value.is_variant() || value.is_shared()) {
            return None;
        }
        self.types.iter().find(|t| (t.is)(value)).copied()
    }

    /// The type under a persisted tag.
    pub fn tagged(&self, tag: &str) -> Option<RichType> {
        self.types.iter().find(|t| t.tag == tag).copied()
    }
}

static INSTALLED: OnceLock<Registry> = OnceLock::new();

/// Makes `registry` the process's; the first install wins and later ones are ignored (every caller
/// installs the same list: `rtlab::engine::rich_types`). Before any install, no value is rich.
pub fn install(registry: impl FnOnce() -> Registry) {
    INSTALLED.get_or_init(registry);
}

/// The installed type a value is of, if it is one of rtlab's own.
pub fn rich_type_of(value: &Dynamic) -> Option<RichType> {
    INSTALLED.get()?.type_of(value)
}

/// The installed type under a persisted tag.
pub fn rich_type_tagged(tag: &str) -> Option<RichType> {
    INSTALLED.get()?.tagged(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Meters(f64);

    fn meters(tag: &'static str, text: fn(&Dynamic) -> String) -> RichType {
        RichType {
            tag,
            is: |v| v.is::<Meters>(),
            text,
            html: None,
            persist: None,
        }
    }

    #[test]
    fn a_type_is_found_by_value_and_by_tag_and_plain_values_are_not_rich() {
        let registry = Registry::new(vec![meters("test_meters", |v| {
            format!("{} m", v.clone_cast::<Meters>().0)
        })])
        .unwrap();
        let value = Dynamic::from(Meters(2.5));
        assert_eq!((registry.type_of(&value).unwrap().text)(&value), "2.5 m");
        assert!(registry.tagged("test_meters").is_some());
        assert!(registry.type_of(&Dynamic::from(1_i64)).is_none());
        assert!(registry.tagged("no_such_tag").is_none());
    }

    #[test]
    fn two_types_under_one_tag_are_refused() {
        let err = Registry::new(vec![
            meters("test_feet", |_| "first".into()),
            meters("test_feet", |_| "second".into()),
        ])
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "two rich types are tagged \"test_feet\"");
    }
}
