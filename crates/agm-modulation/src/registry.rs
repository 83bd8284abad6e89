//! Every method by name, and stacks of them: what `--method` accepts.
//!
//! A method spec is one name (`agm`) or several joined with `+` (`agm+ogm-ge`), composed hook by
//! hook in the order written ([`crate::Stack`]). [`parse`] checks a spec without a model (names,
//! duplicates, and whether the hooks compose); [`build`] builds it for a model, checking what
//! depends on the model (the number of modalities, which parameters a method can reach).
//!
//! ```
//! use agm_modulation::registry;
//! use agm_modulation::MethodSettings;
//! let specs = registry::parse("agm+ogm-ge").unwrap();
//! assert_eq!(specs.iter().map(|s| s.name).collect::<Vec<_>>(), ["agm", "ogm-ge"]);
//! let err = registry::parse("agm+magic").unwrap_err().to_string();
//! assert!(err.contains("magic") && err.contains("ogm-ge"));
//! MethodSettings::av_digits().validate().unwrap();
//! ```
//!
//! Adding a method: its file (a [`Method`] impl) and one line in this module's `builtin` list;
//! from another crate (or a test), one call to [`register`].

use std::any::TypeId;
use std::sync::{LazyLock, PoisonError, RwLock};

use crate::method::{section_of, to_table, BuildCx, Method, MethodSettings};
use crate::stack::{check_composable, Hooks, Stack, StackMember};
use crate::{MethodError, Modulator};

/// The methods built into agm-modulation, in the order `--help` lists them; a new method adds
/// one line here.
fn builtin() -> Vec<MethodEntry> {
    vec![
        MethodEntry::of::<crate::Joint>(),
        MethodEntry::of::<crate::Agm>(),
        MethodEntry::of::<crate::OgmGe>(),
        MethodEntry::of::<crate::Mslr>(),
        MethodEntry::of::<crate::Mses>(),
        MethodEntry::of::<crate::GBlend>(),
        MethodEntry::of::<crate::Pmr>(),
        MethodEntry::of::<crate::MmPareto>(),
        MethodEntry::of::<crate::InfoReg>(),
        MethodEntry::of::<crate::Greedy>(),
        MethodEntry::of::<crate::Lfm>(),
        MethodEntry::of::<crate::Mla>(),
        MethodEntry::of::<crate::ReconBoost>(),
        MethodEntry::of::<crate::Dgl>(),
        MethodEntry::of::<crate::Opm>(),
        MethodEntry::of::<crate::Ogm>(),
        MethodEntry::of::<crate::Relearn>(),
    ]
}

/// Joins the members of a stack.
pub const STACK_SEPARATOR: char = '+';

/// Builds a method from its settings table for one model.
type BuildFn = fn(&toml::Table, &BuildCx<'_>) -> Result<Box<dyn Modulator>, MethodError>;

/// One method of the registry, its types erased: settings travel as TOML tables.
#[derive(Clone, Copy)]
pub struct MethodEntry {
    /// What `--method` accepts for it ([`Method::NAME`]).
    pub name: &'static str,
    /// The hooks only one member of a stack can own.
    pub hooks: Hooks,
    type_id: fn() -> TypeId,
    pub(crate) preset: fn(&str) -> toml::Table,
    /// The table read as the method's config (missing keys take its defaults) and written back
    /// complete; a bad key is `(dotted key inside the section, message)`.
    pub(crate) check: fn(toml::Table) -> Result<toml::Table, (String, String)>,
    pub(crate) validate: fn(&toml::Table) -> Result<(), MethodError>,
    build: BuildFn,
}

impl std::fmt::Debug for MethodEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodEntry").field("name", &self.name).field("hooks", &self.hooks).finish()
    }
}

fn typed<M: Method>(table: &toml::Table) -> Result<M::Config, MethodError> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| format!("[{}]: {}", M::section(), e.message()).into())
}

impl MethodEntry {
    /// The entry of method `M`.
    pub fn of<M: Method>() -> Self {
        Self {
            name: M::NAME,
            hooks: M::HOOKS,
            type_id: TypeId::of::<M>,
            preset: |dataset| to_table(&M::preset(dataset)),
            check: |table| {
                let config: M::Config = serde_path_to_error::deserialize(toml::Value::Table(table))
                    .map_err(|e| (e.path().to_string(), e.into_inner().message().to_string()))?;
                Ok(to_table(&config))
            },
            validate: |table| M::validate(&typed::<M>(table)?),
            build: |table, cx| {
                let config = typed::<M>(table)?;
                M::validate(&config)?;
                Ok(Box::new(M::build(&config, cx)?))
            },
        }
    }

    /// The `config.toml` section of the method's settings.
    pub fn section(&self) -> String {
        section_of(self.name)
    }

    /// Builds the method from its settings in `settings`.
    pub fn build(&self, settings: &MethodSettings, cx: &BuildCx<'_>) -> Result<Box<dyn Modulator>, MethodError> {
        let section = self.section();
        let preset;
        let table = match settings.section(&section) {
            Some(t) => t,
            None => {
                preset = (self.preset)("av-digits");
                &preset
            }
        };
        (self.build)(table, cx)
    }
}

static REGISTRY: LazyLock<RwLock<Vec<MethodEntry>>> = LazyLock::new(|| RwLock::new(builtin()));

/// Every method, built in or registered, in order.
pub fn entries() -> Vec<MethodEntry> {
    REGISTRY.read().unwrap_or_else(PoisonError::into_inner).clone()
}

/// The names `--method` accepts, alone or joined with `+`.
pub fn names() -> Vec<&'static str> {
    entries().iter().map(|e| e.name).collect()
}

/// Adds method `M` (from another crate, or a test) for every later lookup, parse and build in
/// this process. Registering the same type again does nothing; another method of the same name
/// or section is an error.
pub fn register<M: Method>() -> Result<(), MethodError> {
    let mut all = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    let entry = MethodEntry::of::<M>();
    match all.iter().find(|e| e.name == entry.name || e.section() == entry.section()) {
        Some(e) if (e.type_id)() == TypeId::of::<M>() => Ok(()),
        Some(e) => Err(format!("a method named `{}` is already registered", e.name).into()),
        None if M::NAME.is_empty() || M::NAME.contains(STACK_SEPARATOR) => {
            Err(format!("`{}` cannot name a method (empty, or holds `{STACK_SEPARATOR}`)", M::NAME).into())
        }
        None => {
            all.push(entry);
            Ok(())
        }
    }
}

/// The method called `name`, if there is one.
pub fn lookup(name: &str) -> Option<MethodEntry> {
    entries().into_iter().find(|e| e.name == name)
}

fn allowed() -> String {
    format!("{}, or several joined with `+` (e.g. agm+ogm-ge)", names().join(", "))
}

/// The methods of a spec, in order, once the names are known and the hooks compose.
pub fn parse(spec: &str) -> Result<Vec<MethodEntry>, MethodError> {
    let mut out = Vec::new();
    for part in spec.split(STACK_SEPARATOR) {
        let name = part.trim();
        if name.is_empty() {
            return Err(format!("method = `{spec}` has an empty name; allowed: {}", allowed()).into());
        }
        match lookup(name) {
            Some(s) => out.push(s),
            None => {
                let hint = agm_core::suggest::did_you_mean(name, names());
                return Err(format!("method = `{name}` is not known{hint}; allowed: {}", allowed()).into());
            }
        }
    }
    let decl: Vec<(&str, Hooks)> = out.iter().map(|s| (s.name, s.hooks)).collect();
    check_composable(&decl).map_err(|e| format!("method = `{spec}` cannot be stacked: {e}"))?;
    Ok(out)
}

/// A spec's one spelling: its methods' names joined by `+`, without spaces (`agm + ogm-ge` is
/// `agm+ogm-ge`); errors as [`parse`].
pub fn canonical(spec: &str) -> Result<String, MethodError> {
    Ok(parse(spec)?.iter().map(|e| e.name).collect::<Vec<_>>().join(&STACK_SEPARATOR.to_string()))
}

/// Builds a spec for a model: the method itself for one name, a [`Stack`] for several. In a
/// stack, the first method gets `cx.seed`, each later one the seed mixed with its position.
pub fn build(spec: &str, settings: &MethodSettings, cx: &BuildCx<'_>) -> Result<Box<dyn Modulator>, MethodError> {
    let entries = parse(spec)?;
    if let [one] = entries.as_slice() {
        return one.build(settings, cx);
    }
    let mut members = Vec::with_capacity(entries.len());
    for (position, e) in entries.iter().enumerate() {
        // The first method draws as it would alone; each later one from a seed of its own, so
        // that two methods deriving their streams alike (OGM's and OGM-GE's noise) differ.
        let seed = if position == 0 { cx.seed } else { crate::shared::mix_seed(cx.seed, position as u64) };
        members.push(StackMember::new(e.name, e.build(settings, &BuildCx { seed, ..*cx })?, e.hooks));
    }
    let stack = Stack::new(members).map_err(|e| format!("method = `{spec}` cannot be stacked: {e}"))?;
    Ok(Box::new(stack))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Agm;

    /// A preset written as a table and read back is the same preset: its `None`s (UR-Funny's
    /// "no probability floor", AVE's "no clipping") must not come back as the defaults' values.
    #[test]
    fn every_preset_reads_back_as_itself() {
        for entry in entries() {
            for dataset in ["av-digits", "avmnist", "cremad", "urfunny", "ave", "mosei", "synthetic"] {
                let table = (entry.preset)(dataset);
                assert_eq!((entry.check)(table.clone()).unwrap(), table, "{} on {dataset}", entry.name);
            }
        }
    }

    #[test]
    fn every_listed_method_resolves_and_nothing_else() {
        for name in names() {
            assert_eq!(lookup(name).map(|s| s.name), Some(name));
        }
        assert!(lookup("AGM").is_none());
    }

    #[test]
    fn specs_are_checked_without_a_model() {
        assert_eq!(parse(" agm + mslr ").unwrap().len(), 2);
        for (spec, want) in
            [("", "empty name"), ("agm+", "empty name"), ("ogmx", "`ogmx` is not known"), ("agm+agm", "appears twice")]
        {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("method"), "{spec}: {err}");
        }
    }

    #[test]
    fn a_section_keeps_its_defaults_and_names_a_bad_key() {
        let mut s = MethodSettings::av_digits();
        let partial: toml::Table = toml::from_str("alpha = 3.0").unwrap();
        s.set_section("agm", partial).unwrap();
        assert_eq!(s.get::<Agm>().alpha, 3.0);
        assert_eq!(s.get::<Agm>().prob_floor, crate::AgmConfig::av_digits().prob_floor);
        let bad: toml::Table = toml::from_str("alpha = \"big\"").unwrap();
        let (key, message) = s.set_section("agm", bad).unwrap_err();
        assert_eq!(key, "agm.alpha", "{message}");
        let (key, _) = s.set_section("agm", toml::from_str("alfa = 1.0").unwrap()).unwrap_err();
        assert!(key.starts_with("agm"), "{key}");
    }
}
