//! What makes a [`Modulator`] a method `--method` can name: the [`Method`] trait, and
//! [`MethodSettings`], every method's settings as `config.toml` holds them.
//!
//! A method is one file: its config type (serde, with named presets), its state, its hooks and
//! this trait's impl. The registry ([`crate::registry`]) then needs one line,
//! `MethodEntry::of::<MyMethod>()`, or one call to [`crate::registry::register`] from outside
//! the crate.
//!
//! ```
//! use agm_modulation::{Agm, Method, MethodSettings};
//! let mut settings = MethodSettings::for_dataset("avmnist");
//! assert_eq!(settings.get::<Agm>().alpha, 2.5);
//! let mut agm = settings.get::<Agm>();
//! agm.alpha = 1.0;
//! settings.set::<Agm>(&agm);
//! assert_eq!(settings.get::<Agm>().alpha, 1.0);
//! assert_eq!(Agm::section(), "agm");
//! ```

use std::collections::BTreeMap;
use std::fmt::Debug;

use agm_core::MultimodalModel;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Hooks, MethodError, Modulator};

/// What a method is built from, besides its settings.
#[derive(Clone, Copy)]
pub struct BuildCx<'a> {
    /// The model the method will train.
    pub model: &'a dyn MultimodalModel,
    /// The run's seed; methods that draw random numbers mix it into their own seed.
    pub seed: u64,
    /// Flattened size of each encoder's output, for methods that add their own heads; the
    /// driver measures it with [`crate::encoder_feature_dims`].
    pub feature_dims: Option<&'a [usize]>,
    /// Whether the run hands the method a held-out split at epoch ends (`None`: not known), so a
    /// method that needs one can refuse before training starts.
    pub holdout: Option<bool>,
}

impl<'a> BuildCx<'a> {
    /// The context of `model` under run seed `seed`, without feature sizes or a held-out split.
    pub fn new(model: &'a dyn MultimodalModel, seed: u64) -> Self {
        Self { model, seed, feature_dims: None, holdout: None }
    }

    /// Says whether the run has a held-out split.
    pub fn with_holdout(self, holdout: bool) -> Self {
        Self { holdout: Some(holdout), ..self }
    }

    /// Gives the encoders' feature sizes ([`crate::encoder_feature_dims`]).
    pub fn with_feature_dims(self, dims: &'a [usize]) -> Self {
        Self { feature_dims: Some(dims), ..self }
    }

    /// The number of modalities of the model.
    pub fn modalities(&self) -> usize {
        self.model.modalities().len()
    }

    /// The encoders' feature sizes, or an error saying that `method` needs them.
    pub fn feature_dims(&self, method: &str) -> Result<Vec<usize>, MethodError> {
        self.feature_dims.map(<[usize]>::to_vec).ok_or_else(|| {
            format!("method = `{method}` adds uni-modal heads and needs the encoders' feature sizes (BuildCx::with_feature_dims)")
                .into()
        })
    }
}

/// A method the registry can list, configure and build.
pub trait Method: Modulator + Sized + 'static {
    /// What `--method` accepts (kebab-case, e.g. `ogm-ge`).
    const NAME: &'static str;
    /// The hooks only one member of a stack can own; the registry's tests check that a method
    /// overriding `objective` or `backward` declares it.
    const HOOKS: Hooks;
    /// The settings, read from the `[<section>]` table of `config.toml`. Missing keys take the
    /// type's serde defaults; unknown keys must be an error (`deny_unknown_fields`).
    type Config: Clone + Debug + PartialEq + Serialize + DeserializeOwned + 'static;

    /// The settings for `dataset` (`av-digits`, `avmnist`, `cremad`, `urfunny`, `ave`, `mosei`,
    /// `synthetic`): the paper's or the official code's where they exist, else the defaults.
    fn preset(dataset: &str) -> Self::Config;

    /// Checks the settings without a model; the error names the field and the allowed values.
    fn validate(_config: &Self::Config) -> Result<(), MethodError> {
        Ok(())
    }

    /// The method for a model, checking what depends on it (the number of modalities, which
    /// parameters it can reach).
    fn build(config: &Self::Config, cx: &BuildCx<'_>) -> Result<Self, MethodError>;

    /// The `config.toml` table holding the settings: the name with `_` for `-`.
    fn section() -> String {
        section_of(Self::NAME)
    }
}

/// The `config.toml` section of method `name`.
pub fn section_of(name: &str) -> String {
    name.replace('-', "_")
}

/// Every method's settings, one TOML table per method (`[agm]`, `[ogm_ge]` …), always complete:
/// a method whose table is missing uses its AV-Digits preset. Read and written by section name;
/// typed with [`MethodSettings::get`] and [`MethodSettings::set`].
#[derive(Clone, Debug, PartialEq, Default)]
pub struct MethodSettings {
    sections: BTreeMap<String, toml::Table>,
}

impl MethodSettings {
    /// Every registered method's preset for `dataset` ([`Method::preset`]).
    pub fn for_dataset(dataset: &str) -> Self {
        let sections = crate::registry::entries().iter().map(|e| (e.section(), (e.preset)(dataset))).collect();
        Self { sections }
    }

    /// Every registered method's AV-Digits preset.
    pub fn av_digits() -> Self {
        Self::for_dataset("av-digits")
    }

    /// Method `M`'s settings.
    pub fn get<M: Method>(&self) -> M::Config {
        match self.sections.get(&M::section()) {
            Some(table) => {
                toml::Value::Table(table.clone()).try_into().expect("a stored section was checked when it was set")
            }
            None => M::preset("av-digits"),
        }
    }

    /// Replaces method `M`'s settings.
    pub fn set<M: Method>(&mut self, config: &M::Config) {
        self.sections.insert(M::section(), to_table(config));
    }

    /// The table of `section`, with every key filled in.
    pub fn section(&self, section: &str) -> Option<&toml::Table> {
        self.sections.get(section)
    }

    /// Every section, by name.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &toml::Table)> {
        self.sections.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Sets `section` from a table that may leave keys out (they take the method's serde
    /// defaults). An unknown key or a value of the wrong type is `(dotted key, message)`; an
    /// unknown section is an error too. The table is stored complete. Values of the right type
    /// are checked against the method's rules (`Method::validate`) by [`MethodSettings::validate`].
    pub fn set_section(&mut self, section: &str, table: toml::Table) -> Result<(), (String, String)> {
        let entry = crate::registry::entries()
            .into_iter()
            .find(|e| e.section() == section)
            .ok_or_else(|| (section.to_string(), format!("`{section}` is not a method's section")))?;
        let full = (entry.check)(table).map_err(|(key, message)| {
            let key = if key.is_empty() || key == "." { section.to_string() } else { format!("{section}.{key}") };
            (key, message)
        })?;
        self.sections.insert(section.to_string(), full);
        Ok(())
    }

    /// Checks every method's settings, used or not (a bad value in a config file is an error
    /// even when another method runs).
    pub fn validate(&self) -> Result<(), MethodError> {
        for entry in crate::registry::entries() {
            if let Some(table) = self.sections.get(&entry.section()) {
                (entry.validate)(table)?;
            }
        }
        Ok(())
    }

    /// Removes every method section from `table` and reads them over the AV-Digits presets.
    pub fn take_from(table: &mut toml::Table) -> Result<Self, (String, String)> {
        let mut settings = Self::av_digits();
        for entry in crate::registry::entries() {
            let section = entry.section();
            match table.remove(&section) {
                Some(toml::Value::Table(t)) => settings.set_section(&section, t)?,
                Some(other) => {
                    return Err((section, format!("invalid type: {}, expected a table", other.type_str())));
                }
                None => {}
            }
        }
        Ok(settings)
    }
}

/// Settings as a table; configs are plain data.
pub(crate) fn to_table<T: Serialize>(config: &T) -> toml::Table {
    toml::Table::try_from(config).expect("a method's settings are plain data")
}

impl Serialize for MethodSettings {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.sections.serialize(serializer)
    }
}

/// Reads sections by name over the AV-Digits presets; an unknown name is an error listing the
/// methods' sections. (Inside a flattened run config, the keys that reach this are exactly the
/// ones the run config does not know.)
impl<'de> Deserialize<'de> for MethodSettings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(deserializer)?;
        let settings = Self::take_from(&mut table)
            .map_err(|(key, message)| serde::de::Error::custom(format!("`{key}`: {message}")))?;
        if let Some(key) = table.keys().next() {
            let sections: Vec<String> = crate::registry::entries().iter().map(|e| e.section()).collect();
            return Err(serde::de::Error::custom(format!(
                "unknown field `{key}`, expected a run setting (`cargo xtask train --print-config` lists them all) or \
                 a method section ({})",
                sections.join(", ")
            )));
        }
        Ok(settings)
    }
}
