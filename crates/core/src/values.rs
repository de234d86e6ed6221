//! The registry of rich values: each capability registers how its own Rhai types (a DataFrame, a plot,
//! a model, an executor) show as text and HTML, and how they persist as JSON. The display code, the
//! report and the notebook cache ask the registry, so none of them switches on stdlib types.
//!
//! The registry is process-wide because a type's behaviour is a fact about the type, the same for every
//! engine; capabilities fill it when their packages are built, and registering a tag again replaces it.

use rhai::Dynamic;
use serde_json::{Map, Value};
use std::sync::RwLock;

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

static REGISTRY: RwLock<Vec<RichType>> = RwLock::new(Vec::new());

/// Adds a type, replacing one registered earlier under the same tag.
pub fn register(rich: RichType) {
    let mut types = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    types.retain(|t| t.tag != rich.tag);
    types.push(rich);
}

/// The registered type a value is of, if it is one of rtlab's own.
pub fn rich_type_of(value: &Dynamic) -> Option<RichType> {
    if !(value.is_variant() || value.is_shared()) {
        return None;
    }
    let types = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    types.iter().find(|t| (t.is)(value)).copied()
}

/// The type registered under a persisted tag.
pub fn rich_type_tagged(tag: &str) -> Option<RichType> {
    let types = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    types.iter().find(|t| t.tag == tag).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Meters(f64);

    // Tests run in parallel threads and share the registry: each uses its own type and tag.
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
    fn a_registered_type_is_found_by_value_and_by_tag_and_plain_values_are_not_rich() {
        register(meters("test_meters", |v| {
            format!("{} m", v.clone_cast::<Meters>().0)
        }));
        let value = Dynamic::from(Meters(2.5));
        assert_eq!((rich_type_of(&value).unwrap().text)(&value), "2.5 m");
        assert_eq!(crate::display_value(&value), "2.5 m");
        assert!(rich_type_tagged("test_meters").is_some());
        assert!(rich_type_of(&Dynamic::from(1_i64)).is_none());
        assert!(rich_type_tagged("no_such_tag").is_none());
    }

    #[test]
    fn registering_a_tag_again_replaces_it() {
        #[derive(Clone)]
        struct Feet;
        let feet = |text: fn(&Dynamic) -> String| RichType {
            tag: "test_feet",
            is: |v| v.is::<Feet>(),
            text,
            html: None,
            persist: None,
        };
        register(feet(|_| "first".into()));
        register(feet(|_| "second".into()));
        let value = Dynamic::from(Feet);
        assert_eq!((rich_type_of(&value).unwrap().text)(&value), "second");
        let types = REGISTRY.read().unwrap();
        assert_eq!(types.iter().filter(|t| t.tag == "test_feet").count(), 1);
    }
}
