//! One resolver for every command that builds a run: the dataset's reference settings, then a
//! recipe, then a config file, then flags. A later layer wins, and every setting that differs
//! from the embedded default remembers which layer set it (and which earlier layer it beat), so
//! a run header can say where each value came from.
//!
//! ```
//! use agm_train::resolve::RunRequest;
//! let request = RunRequest::default().recipe("avmnist-agm-late").set("--data", "data", "avmnist/");
//! let resolved = request.set("--lr", "optimizer.lr", 0.02).resolve().unwrap();
//! assert_eq!(resolved.config.method::<agm_modulation::Agm>().alpha, 2.5);
//! let lr = resolved.settings.iter().find(|s| s.key == "optimizer.lr").unwrap();
//! assert_eq!(lr.origin.to_string(), "flag --lr");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};
use crate::{recipes, RunConfig};

/// Where a setting came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// The dataset's reference settings ([`RunConfig::for_dataset`]).
    Dataset(String),
    /// An embedded recipe, by its name ([`crate::recipes`]).
    Recipe(String),
    /// A config file, by the path it was given as.
    File(PathBuf),
    /// A command-line flag, by its name (`--lr`).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Dataset(d) => write!(f, "{d} default"),
            Origin::Recipe(r) => write!(f, "recipe {r}"),
            Origin::File(p) => write!(f, "config file {}", p.display()),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A configuration error about a value a flag, a config file or a recipe gave, prefixed with where
/// it came from (`flag --method: method = `agn` is not known…`); the message's first word that
/// is a setting names it.
fn blamed(err: TrainError, origin_of: impl Fn(&str) -> Option<Origin>) -> TrainError {
    let TrainError::Config(message) = err else { return err };
    // The first word that is a setting with an origin names it (`epochs must be …`,
    // `optimizer.lr = …: must be …`).
    let origin = message.split([' ', ':', '=']).filter(|w| !w.is_empty()).find_map(&origin_of);
    match origin {
        Some(origin) if !matches!(origin, Origin::Dataset(_)) => TrainError::Config(format!("{origin}: {message}")),
        _ => TrainError::Config(message),
    }
}

/// One setting that differs from the embedded default.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// Dotted key as in `config.toml` (`optimizer.lr`).
    pub key: String,
    /// The value, as TOML.
    pub value: String,
    /// The layer that set the value in force.
    pub origin: Origin,
    /// Earlier layers that set this key to another value and lost.
    pub overrides: Vec<Origin>,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {} ({}", self.key, self.value, self.origin)?;
        if !self.overrides.is_empty() {
            let beaten: Vec<String> = self.overrides.iter().map(Origin::to_string).collect();
            write!(f, "; wins over {}", beaten.join(", "))?;
        }
        f.write_str(")")
    }
}

/// A configuration and where its settings came from.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The configuration after every layer, validated ([`RunConfig::validate`]).
    pub config: RunConfig,
    /// Settings that differ from [`RunConfig::av_digits`], in key order.
    pub settings: Vec<Setting>,
}

/// What a command asks for: a recipe, a config file, flags.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    recipe: Option<String>,
    config: Option<PathBuf>,
    /// `(flag, dotted key, value)`, applied in order.
    flags: Vec<(String, String, toml::Value)>,
}

impl RunRequest {
    /// The embedded recipe `name` (`configs/<name>.toml`), layered over the dataset's reference
    /// settings and under the config file and the flags; an unknown name fails in
    /// [`RunRequest::resolve`].
    pub fn recipe(mut self, name: impl Into<String>) -> Self {
        self.recipe = Some(name.into());
        self
    }

    /// The TOML config file at `path`, layered over the recipe and under the flags; it is read
    /// (and a missing or malformed file fails) in [`RunRequest::resolve`].
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }

    /// A flag's value for `key` (dotted, as in `config.toml`).
    pub fn set(mut self, flag: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        self.flags.push((flag.to_string(), key.to_string(), value.into()));
        self
    }

    /// [`RunRequest::set`] when the flag was given.
    pub fn set_opt<V: Into<toml::Value>>(self, flag: &str, key: &str, value: Option<V>) -> Self {
        match value {
            Some(v) => self.set(flag, key, v),
            None => self,
        }
    }

    /// Top-level `key` as a flag, the config file or the recipe gives it, in that order of
    /// precedence, with where it came from.
    fn lookup<'t>(
        &'t self,
        key: &str,
        recipe: Option<&'t (Origin, toml::Table)>,
        file: Option<&'t (Origin, toml::Table)>,
    ) -> Option<(Origin, &'t toml::Value)> {
        let flag = self.flags.iter().rev().find(|(_, k, _)| k == key).map(|(f, _, v)| (Origin::Flag(f.clone()), v));
        let in_layer =
            |layer: Option<&'t (Origin, toml::Table)>| layer.and_then(|(o, t)| Some((o.clone(), t.get(key)?)));
        flag.or_else(|| in_layer(file)).or_else(|| in_layer(recipe))
    }

    /// The value of top-level `key` a flag, the config file or the recipe names, in that order
    /// of precedence.
    fn named(
        &self,
        key: &str,
        recipe: Option<&(Origin, toml::Table)>,
        file: Option<&(Origin, toml::Table)>,
    ) -> Result<Option<String>> {
        match self.lookup(key, recipe, file) {
            None => Ok(None),
            Some((_, toml::Value::String(v))) => Ok(Some(v.clone())),
            Some((origin, other)) => Err(field_error(
                &origin,
                key,
                format!("invalid type: {} `{other}`, expected a string", other.type_str()),
            )),
        }
    }

    /// Builds the configuration layer by layer and checks it.
    pub fn resolve(&self) -> Result<Resolved> {
        let recipe = match &self.recipe {
            Some(name) => Some((Origin::Recipe(name.clone()), recipes::find(name)?.table()?)),
            None => None,
        };
        let file = match &self.config {
            Some(path) => Some((Origin::File(path.clone()), read_table(path)?)),
            None => None,
        };
        let dataset = self.named("dataset", recipe.as_ref(), file.as_ref())?.unwrap_or_else(|| "av-digits".into());
        let base = match self.named("model", recipe.as_ref(), file.as_ref())? {
            Some(model) if dataset == "synthetic" => RunConfig::for_synthetic(&model),
            _ => RunConfig::for_dataset(&dataset),
        }
        .map_err(|e| blamed(e, |key| Some(self.lookup(key, recipe.as_ref(), file.as_ref())?.0)))?;
        let embedded = to_table(&RunConfig::av_digits());
        let mut layers = vec![(Origin::Dataset(dataset.clone()), to_table(&base))];
        layers.extend(recipe);
        layers.extend(file);
        for (flag, key, value) in &self.flags {
            layers.push((Origin::Flag(flag.clone()), nested(key, value.clone())));
        }

        let mut current = embedded.clone();
        let mut origins: BTreeMap<String, (Origin, Vec<Origin>)> = BTreeMap::new();
        for (origin, layer) in layers {
            // A layer claims every key it names, changed or not; it beats an earlier layer only
            // where it changes that layer's value.
            let named = leaves(&layer);
            let mut next = current.clone();
            merge(&mut next, layer);
            check(&next, &origin)?;
            let before = leaves(&current);
            for key in named.keys() {
                let changed = before.get(key) != named.get(key);
                let beaten = match origins.remove(key) {
                    Some((prev, mut older)) if changed && !matches!(prev, Origin::Dataset(_)) => {
                        older.push(prev);
                        older
                    }
                    Some((_, older)) => older,
                    None => Vec::new(),
                };
                origins.insert(key.clone(), (origin.clone(), beaten));
            }
            current = next;
        }
        let mut config = check(&current, &Origin::Dataset(dataset))?;
        // One spelling per setting: ` agm` and `agm + ogm-ge` run, print and record as `agm` and
        // `agm+ogm-ge`.
        config.canonicalize();
        config.validate().map_err(|e| blamed(e, |key| origins.get(key).map(|(origin, _)| origin.clone())))?;
        current.insert("method".into(), config.method.clone().into());
        current.insert("data_preset".into(), config.data_preset.clone().into());
        let defaults = leaves(&embedded);
        // Settings of methods the run does not use do not change it.
        let unused: Vec<String> = config.unused_method_sections().into_iter().map(|s| format!("{s}.")).collect();
        let settings = leaves(&current)
            .into_iter()
            .filter(|(key, value)| defaults.get(key) != Some(value))
            .filter(|(key, _)| !unused.iter().any(|s| key.starts_with(s)))
            .filter_map(|(key, value)| {
                let (origin, overrides) = origins.get(&key)?.clone();
                Some(Setting { key, value: value.to_string(), origin, overrides })
            })
            .collect();
        Ok(Resolved { config, settings })
    }
}

fn read_table(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainError::ConfigFile { path: path.to_path_buf(), message: e.to_string() })?;
    toml::from_str(&text).map_err(|e| TrainError::ConfigFile { path: path.to_path_buf(), message: e.to_string() })
}

fn to_table(cfg: &RunConfig) -> toml::Table {
    toml::Table::try_from(cfg).expect("the config is plain data")
}

/// `a.b.c = v` as nested tables.
fn nested(key: &str, value: toml::Value) -> toml::Table {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut table = toml::Table::from_iter([(last.to_string(), value)]);
    while let Some(part) = parts.pop() {
        table = toml::Table::from_iter([(part.to_string(), toml::Value::Table(table))]);
    }
    table
}

/// Deep merge of `layer` into `base`. A table whose `kind` changes (the optimizer, the schedule)
/// is replaced whole, so no key of the old kind survives.
fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (key, value) in layer {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(l))
                if b.get("kind") == l.get("kind") || !l.contains_key("kind") =>
            {
                merge(b, l)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The dotted keys whose values differ between two settings maps ([`leaves`]), with each side's
/// value (`None` where a map lacks the key), in key order.
pub(crate) fn differences<'m, V: PartialEq>(
    ours: &'m BTreeMap<String, V>,
    theirs: &'m BTreeMap<String, V>,
) -> Vec<(&'m str, Option<&'m V>, Option<&'m V>)> {
    let keys: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    keys.into_iter()
        .filter(|k| ours.get(*k) != theirs.get(*k))
        .map(|k| (k.as_str(), ours.get(k), theirs.get(k)))
        .collect()
}

/// Every leaf as `dotted.key → value`.
pub(crate) fn leaves(table: &toml::Table) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
        for (k, v) in table {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(t) => walk(&key, t, out),
                other => {
                    out.insert(key, other.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", table, &mut out);
    out
}

/// The table as a config; a bad key or type is an error naming the key, the layer that brought
/// it and, for a file, the line.
fn check(table: &toml::Table, origin: &Origin) -> Result<RunConfig> {
    config_of(table).map_err(|(key, message)| field_error(origin, &key, message))
}

/// The table as a config, or the error's dotted key (the leaf itself, also inside tagged tables
/// such as `[optimizer]`) and message.
pub(crate) fn config_of(table: &toml::Table) -> std::result::Result<RunConfig, (String, String)> {
    RunConfig::deserialize_table(table.clone()).map_err(|(key, message)| {
        // Inside tagged enums (`[optimizer]`) the path stops at the table: name the leaf whose
        // type differs from the default's.
        let key = mistyped_leaf(table, &key).unwrap_or(key);
        // There, an unknown field is reported at its table: name the field itself.
        let unknown = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next());
        let key = match unknown {
            Some(field) if !key.ends_with(field) && key != "." && !key.is_empty() => format!("{key}.{field}"),
            _ => key,
        };
        (key, message)
    })
}

/// An error in setting `key` (dotted; `.` or empty for the whole table), naming the layer that
/// brought it and, for a file, the line.
fn field_error(origin: &Origin, key: &str, message: String) -> TrainError {
    match origin {
        Origin::File(path) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            TrainError::ConfigFile { path: path.clone(), message: located(&text, key, message) }
        }
        other => TrainError::Config(format!("{other}: {}", located("", key, message))),
    }
}

/// `line N, `key`: message` for a bad setting of TOML `text` (the line where `text` sets it),
/// with plain type names and the closest allowed name suggested.
pub(crate) fn located(text: &str, key: &str, message: String) -> String {
    let message = with_suggestion(plain_types(&message));
    let at = if key == "." || key.is_empty() { String::new() } else { format!("`{key}`: ") };
    match key_line(text, key) {
        Some(n) => format!("line {n}, {at}{message}"),
        None => format!("{at}{message}"),
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" with the closest allowed name suggested
/// (top-level keys get theirs from [`RunConfig::deserialize_table`]).
fn with_suggestion(message: String) -> String {
    let Some((field, expected)) = message.strip_prefix("unknown field `").and_then(|m| m.split_once('`')) else {
        return message;
    };
    if message.contains("did you mean") {
        return message;
    }
    // The allowed names are every other piece between backticks.
    let allowed: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let alias = (field == "learning_rate" && allowed.contains(&"lr")).then_some("lr");
    match alias.or_else(|| agm_core::suggest::closest(field, allowed.iter().copied())) {
        Some(name) => format!("{message} (did you mean `{name}`?)"),
        None => message,
    }
}

/// serde's Rust type names in `message` as a user reads them.
fn plain_types(message: &str) -> String {
    let count = "expected a whole number (0 or more)";
    [
        ("expected usize", count),
        ("expected u64", count),
        ("expected u32", count),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
    ]
    .iter()
    .fold(message.to_string(), |m, (rust, plain)| m.replace(rust, plain))
}

/// The first key at or under `under` whose value has another type than the default config's.
fn mistyped_leaf(table: &toml::Table, under: &str) -> Option<String> {
    use toml::Value::{Float, Integer};
    let defaults = leaves(&to_table(&RunConfig::av_digits()));
    let same_type = |a: &toml::Value, b: &toml::Value| {
        matches!((a, b), (Integer(_) | Float(_), Integer(_) | Float(_)))
            || std::mem::discriminant(a) == std::mem::discriminant(b)
    };
    leaves(table)
        .into_iter()
        .filter(|(k, _)| k == under || k.starts_with(&format!("{under}.")))
        .find(|(k, v)| defaults.get(k).is_some_and(|d| !same_type(d, v)))
        .map(|(k, _)| k)
}

/// The line (from 1) of TOML text that sets dotted `key`, found by following `[table]` headers.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let mut table = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = header.trim().to_string();
            // A whole section in question (`[msess]`): its header.
            if table == key {
                return Some(i + 1);
            }
        } else if let Some((name, _)) = line.split_once('=') {
            let name = name.trim().trim_matches('"');
            let full = if table.is_empty() { name.to_string() } else { format!("{table}.{name}") };
            if full == key || key.starts_with(&format!("{full}.")) {
                return Some(i + 1);
            }
        }
    }
    None
}
