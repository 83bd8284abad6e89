//! Optional settings that survive TOML: `None` is written as the string `"none"`.
//!
//! TOML has no null, so a plain `Option` field that is `None` is left out of a written table,
//! and reading the table back fills it from the struct's serde default: a preset's "no clipping"
//! would come back as the default's clipping. With this helper the key is always written, a
//! config file can say `clip = "none"`, and JSON's `null` (files written before) reads as `None`.
//!
//! ```
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Settings {
//!     #[serde(with = "agm_core::serde_none")]
//!     floor: Option<f64>,
//! }
//! let none = Settings { floor: None };
//! let text = toml::to_string(&none).unwrap();
//! assert_eq!(text.trim(), r#"floor = "none""#);
//! assert_eq!(toml::from_str::<Settings>(&text).unwrap(), none);
//! assert_eq!(toml::from_str::<Settings>("floor = 1e-8").unwrap(), Settings { floor: Some(1e-8) });
//! ```

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{
    BoolDeserializer, F64Deserializer, I64Deserializer, MapAccessDeserializer, SeqAccessDeserializer, StrDeserializer,
    U64Deserializer,
};
use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::ser::{Serialize, Serializer};

/// The word that stands for `None`.
pub const NONE: &str = "none";

/// `#[serde(with = "agm_core::serde_none")]` on an `Option<T>`: writes `Some(v)` as `v` and
/// `None` as the string [`NONE`].
pub fn serialize<T: Serialize, S: Serializer>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => v.serialize(serializer),
        None => serializer.serialize_str(NONE),
    }
}

/// `#[serde(with = "agm_core::serde_none")]` on an `Option<T>`: reads [`NONE`], null and unit as
/// `None`, anything else as `Some` of a `T`. A scalar that `T` refuses gives `T`'s error with
/// `(or "none")` appended. An `Option<String>` holding `"none"` therefore reads back as `None`.
pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    deserializer.deserialize_any(OptionVisitor(PhantomData))
}

/// `"none"` and null are `None`; anything else is handed to `T` as it came.
struct OptionVisitor<T>(PhantomData<T>);

impl<T> OptionVisitor<T> {
    fn some<'de, E: de::Error, D: Deserializer<'de, Error = E>>(d: D) -> Result<Option<T>, E>
    where
        T: Deserialize<'de>,
    {
        // Some formats end their message with a newline.
        T::deserialize(d).map(Some).map_err(|e| E::custom(format!("{} (or \"{NONE}\")", e.to_string().trim_end())))
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for OptionVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a value or \"{NONE}\"")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if v == NONE {
            return Ok(None);
        }
        Self::some(StrDeserializer::<E>::new(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Self::some(BoolDeserializer::<E>::new(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Self::some(I64Deserializer::<E>::new(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Self::some(U64Deserializer::<E>::new(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Self::some(F64Deserializer::<E>::new(v))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Some)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        T::deserialize(SeqAccessDeserializer::new(seq)).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        threshold: f64,
        max_norm: f64,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    #[serde(deny_unknown_fields, default = "Settings::preset")]
    struct Settings {
        #[serde(with = "super")]
        floor: Option<f64>,
        #[serde(with = "super")]
        end: Option<usize>,
        #[serde(with = "super")]
        clip: Option<Rule>,
    }

    impl Settings {
        fn preset() -> Self {
            Self { floor: Some(1e-8), end: Some(3), clip: Some(Rule { threshold: 1.0, max_norm: 1.0 }) }
        }
    }

    #[test]
    fn none_survives_toml_and_json_where_the_default_is_some() {
        let none = Settings { floor: None, end: None, clip: None };
        let some = Settings { floor: Some(0.25), end: Some(7), clip: Some(Rule { threshold: 5.0, max_norm: 2.5 }) };
        for s in [none, some] {
            let text = toml::to_string(&s).unwrap();
            assert_eq!(toml::from_str::<Settings>(&text).unwrap(), s, "{text}");
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<Settings>(&json).unwrap(), s, "{json}");
        }
        // JSON written before: null.
        let old: Settings = serde_json::from_str(r#"{"floor":null,"end":null,"clip":null}"#).unwrap();
        assert_eq!(old, Settings { floor: None, end: None, clip: None });
        // Left out: the default, as for any field.
        assert_eq!(toml::from_str::<Settings>("").unwrap(), Settings::preset());
        // Integers where floats are expected, NaN kept.
        let s: Settings = toml::from_str("floor = 1\nend = 4").unwrap();
        assert_eq!((s.floor, s.end), (Some(1.0), Some(4)));
        assert!(toml::from_str::<Settings>("floor = nan").unwrap().floor.unwrap().is_nan());
        assert_eq!(toml::from_str::<Settings>("floor = inf").unwrap().floor, Some(f64::INFINITY));
    }

    #[test]
    fn a_bad_value_names_what_is_expected() {
        let e = toml::from_str::<Settings>("floor = \"off\"").unwrap_err().to_string();
        assert!(e.contains("floor") && e.contains("expected f64 (or \"none\")"), "{e}");
        let e = toml::from_str::<Settings>("end = -1").unwrap_err().to_string();
        assert!(e.contains("end") && e.contains("\"none\""), "{e}");
        let e = toml::from_str::<Settings>("[clip]\nthreshold = 1.0\nmax_nrm = 1.0").unwrap_err().to_string();
        assert!(e.contains("max_nrm"), "{e}");
        let e = toml::from_str::<Settings>("clip = true").unwrap_err().to_string();
        assert!(e.contains("clip") && e.contains("\"none\""), "{e}");
    }
}
