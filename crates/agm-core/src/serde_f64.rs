//! f64 fields that survive JSON exactly, infinities and NaN included.
//!
//! JSON has no infinity or NaN, and serde_json writes them as `null`, which then fails to load.
//! These helpers write finite values as numbers (unchanged output for every file written
//! before) and the others as the strings `"NaN"`, `"inf"` and `"-inf"`; they read both. Exact
//! round trips of finite values also need serde_json's `float_roundtrip` feature, which the
//! workspace enables.
//!
//! ```
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Row {
//!     #[serde(with = "agm_core::serde_f64")]
//!     loss: f64,
//!     #[serde(with = "agm_core::serde_f64::seq")]
//!     scales: Vec<f64>,
//! }
//! let row = Row { loss: f64::INFINITY, scales: vec![0.1, f64::NEG_INFINITY] };
//! let json = serde_json::to_string(&row).unwrap();
//! assert_eq!(json, r#"{"loss":"inf","scales":[0.1,"-inf"]}"#);
//! assert_eq!(serde_json::from_str::<Row>(&json).unwrap(), row);
//! ```

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::ser::{Serialize, Serializer};

/// One f64 that serializes through this module's rules; the helpers below map containers to it.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Default)]
pub struct F64(pub f64);

impl Serialize for F64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let x = self.0;
        if x.is_finite() {
            s.serialize_f64(x)
        } else if x.is_nan() {
            s.serialize_str("NaN")
        } else if x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }
}

struct F64Visitor;

impl Visitor<'_> for F64Visitor {
    type Value = F64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or one of the strings \"NaN\", \"inf\", \"-inf\"")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<F64, E> {
        Ok(F64(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<F64, E> {
        Ok(F64(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<F64, E> {
        Ok(F64(v as f64))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<F64, E> {
        match v {
            "NaN" | "nan" => Ok(F64(f64::NAN)),
            "inf" | "+inf" | "Infinity" => Ok(F64(f64::INFINITY)),
            "-inf" | "-Infinity" => Ok(F64(f64::NEG_INFINITY)),
            other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
        }
    }
}

impl<'de> Deserialize<'de> for F64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<F64, D::Error> {
        d.deserialize_any(F64Visitor)
    }
}

/// `#[serde(with = "agm_core::serde_f64")]` on an `f64`.
pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    F64(*x).serialize(s)
}

/// `#[serde(with = "agm_core::serde_f64")]` on an `f64`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(F64::deserialize(d)?.0)
}

/// `#[serde(with = "agm_core::serde_f64::seq")]` on a `Vec<f64>`, `VecDeque<f64>`, ….
pub mod seq {
    use super::*;

    /// Writes a sequence, each value as [`F64`] does.
    pub fn serialize<S: Serializer, C>(v: &C, s: S) -> Result<S::Ok, S::Error>
    where
        for<'a> &'a C: IntoIterator<Item = &'a f64>,
    {
        s.collect_seq(v.into_iter().map(|&x| F64(x)))
    }

    /// Reads a sequence of values as [`F64`] does into any `FromIterator<f64>` collection.
    pub fn deserialize<'de, D: Deserializer<'de>, C: FromIterator<f64>>(d: D) -> Result<C, D::Error> {
        Ok(Vec::<F64>::deserialize(d)?.into_iter().map(|x| x.0).collect())
    }
}

/// `#[serde(with = "agm_core::serde_f64::named_seq")]` on a `BTreeMap<String, Vec<f64>>`.
pub mod named_seq {
    use super::*;
    use std::collections::BTreeMap;

    /// Writes a map of sequences, each value as [`F64`] does.
    pub fn serialize<S: Serializer>(v: &BTreeMap<String, Vec<f64>>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(v.iter().map(|(k, v)| (k, v.iter().map(|&x| F64(x)).collect::<Vec<_>>())))
    }

    /// Reads a map of sequences of values as [`F64`] does.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<f64>>, D::Error> {
        let map = BTreeMap::<String, Vec<F64>>::deserialize(d)?;
        Ok(map.into_iter().map(|(k, v)| (k, v.into_iter().map(|x| x.0).collect())).collect())
    }
}

/// `#[serde(with = "agm_core::serde_f64::option_seq")]` on an `Option<Vec<f64>>`.
pub mod option_seq {
    use super::*;

    /// Writes `None` as null, `Some` as a sequence of values as [`F64`] does.
    pub fn serialize<S: Serializer, C>(v: &Option<C>, s: S) -> Result<S::Ok, S::Error>
    where
        for<'a> &'a C: IntoIterator<Item = &'a f64>,
    {
        match v {
            Some(v) => s.serialize_some(&v.into_iter().map(|&x| F64(x)).collect::<Vec<_>>()),
            None => s.serialize_none(),
        }
    }

    /// Reads null as `None`, a sequence as `Some` of any `FromIterator<f64>` collection.
    pub fn deserialize<'de, D: Deserializer<'de>, C: FromIterator<f64>>(d: D) -> Result<Option<C>, D::Error> {
        Ok(Option::<Vec<F64>>::deserialize(d)?.map(|v| v.into_iter().map(|x| x.0).collect()))
    }
}

/// `#[serde(with = "agm_core::serde_f64::nested")]` on a `Vec<Vec<f64>>`, `Vec<VecDeque<f64>>`, ….
pub mod nested {
    use super::*;

    /// Writes a sequence of sequences, each value as [`F64`] does.
    pub fn serialize<S: Serializer, O, I>(v: &O, s: S) -> Result<S::Ok, S::Error>
    where
        for<'a> &'a O: IntoIterator<Item = &'a I>,
        for<'b> &'b I: IntoIterator<Item = &'b f64>,
    {
        s.collect_seq(v.into_iter().map(|inner| inner.into_iter().map(|&x| F64(x)).collect::<Vec<_>>()))
    }

    /// Reads a sequence of sequences, each value as [`F64`] does, into nested `FromIterator`
    /// collections.
    pub fn deserialize<'de, D, O, I>(d: D) -> Result<O, D::Error>
    where
        D: Deserializer<'de>,
        O: FromIterator<I>,
        I: FromIterator<f64>,
    {
        Ok(Vec::<Vec<F64>>::deserialize(d)?.into_iter().map(|v| v.into_iter().map(|x| x.0).collect()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_f64_round_trips_through_json() {
        let values = [
            0.0,
            -0.0,
            0.9933333333333333,
            0.1 + 0.2,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        for x in values {
            let json = serde_json::to_string(&F64(x)).unwrap();
            let back = serde_json::from_str::<F64>(&json).unwrap().0;
            assert!(back.to_bits() == x.to_bits() || (x.is_nan() && back.is_nan()), "{x:e} -> {json}");
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            let back = serde_json::from_value::<F64>(value).unwrap().0;
            assert!(back.to_bits() == x.to_bits() || (x.is_nan() && back.is_nan()), "{x:e} via Value");
        }
        let err = serde_json::from_str::<F64>("null").unwrap_err().to_string();
        assert!(err.contains("\"inf\""), "{err}");
    }
}
