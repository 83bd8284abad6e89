//! Per-modality values keyed by modality name in files (`{"audio": 0.9, "visual": 1.1}`), so a
//! reader never has to know the model's modality order.
//!
//! In memory the values stay vectors in model order; [`Keyed`] is their form in a file. Arrays
//! written by earlier versions are read too.
//!
//! ```
//! use agm_core::by_name::{value_names, Keyed};
//! let modalities = ["audio".to_string(), "visual".to_string()];
//! let keyed = Keyed::new(&value_names(&modalities, 2), &[0.5, 1.5]);
//! assert_eq!(serde_json::to_string(&keyed).unwrap(), r#"{"audio":0.5,"visual":1.5}"#);
//! assert_eq!(keyed.values(&modalities).unwrap(), vec![0.5, 1.5]);
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::serde_f64::F64;

/// Names for `len` per-modality values: the modalities; one more value is `fused` (a method
/// that also weighs the fused output); any other count is numbered `value 1`, `value 2`, ….
pub fn value_names(modalities: &[String], len: usize) -> Vec<String> {
    if len == modalities.len() {
        modalities.to_vec()
    } else if len == modalities.len() + 1 {
        modalities.iter().cloned().chain(std::iter::once("fused".to_string())).collect()
    } else {
        (1..=len).map(|k| format!("value {k}")).collect()
    }
}

/// Values keyed by name; non-finite values as `"NaN"`, `"inf"`, `"-inf"` (see [`crate::serde_f64`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Keyed {
    /// Written by this version: one entry per name.
    ByName(BTreeMap<String, F64>),
    /// Written by earlier versions: values in model order.
    InOrder(Vec<F64>),
}

impl Keyed {
    /// `values[k]` under `names[k]`.
    pub fn new(names: &[String], values: &[f64]) -> Self {
        Self::ByName(names.iter().cloned().zip(values.iter().map(|&v| F64(v))).collect())
    }

    /// The values in the order of [`value_names`]`(modalities, n)`, `n` the number of entries.
    pub fn values(&self, modalities: &[String]) -> Result<Vec<f64>, String> {
        match self {
            Self::InOrder(v) => Ok(v.iter().map(|x| x.0).collect()),
            Self::ByName(map) => value_names(modalities, map.len())
                .iter()
                .map(|name| {
                    map.get(name).map(|x| x.0).ok_or_else(|| {
                        let found: Vec<&String> = map.keys().collect();
                        format!("no value for `{name}` (the modalities are {modalities:?}; found {found:?})")
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_round_trip_in_model_order_whatever_the_key_order() {
        let m = names(&["visual", "audio", "text"]);
        let keyed = Keyed::new(&m, &[1.0, f64::INFINITY, -2.0]);
        let json = serde_json::to_string(&keyed).unwrap();
        assert_eq!(json, r#"{"audio":"inf","text":-2.0,"visual":1.0}"#);
        let back: Keyed = serde_json::from_str(&json).unwrap();
        assert_eq!(back.values(&m).unwrap(), vec![1.0, f64::INFINITY, -2.0]);
        // One more value than modalities: the fused output's.
        let gblend = Keyed::new(&value_names(&m, 4), &[0.1, 0.2, 0.3, 0.4]);
        assert!(serde_json::to_string(&gblend).unwrap().contains(r#""fused":0.4"#));
        assert_eq!(gblend.values(&m).unwrap(), vec![0.1, 0.2, 0.3, 0.4]);
    }

    #[test]
    fn arrays_of_earlier_versions_are_read_and_missing_names_are_errors() {
        let old: Keyed = serde_json::from_str("[0.5, 1.5]").unwrap();
        assert_eq!(old.values(&names(&["a", "b"])).unwrap(), vec![0.5, 1.5]);
        let wrong: Keyed = serde_json::from_str(r#"{"audio": 1, "video": 2}"#).unwrap();
        let err = wrong.values(&names(&["audio", "visual"])).unwrap_err();
        assert!(err.contains("`visual`") && err.contains("video"), "{err}");
    }
}
