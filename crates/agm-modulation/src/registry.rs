//! Every method by name, and stacks of them: what `--method` accepts.
//!
//! A method spec is one name (`agm`) or several joined with `+` (`agm+ogm-ge`), composed hook by
//! hook in the order written ([`crate::Stack`]). [`parse`] checks a spec without a model (names,
//! duplicates, and whether the hooks compose); [`build`] builds it for a model, checking what
//! depends on the model (the number of modalities, which parameters a method can reach).
//!
//! ```
//! use agm_modulation::registry::{self, MethodConfigs};
//! let specs = registry::parse("agm+ogm-ge").unwrap();
//! assert_eq!(specs.iter().map(|s| s.name).collect::<Vec<_>>(), ["agm", "ogm-ge"]);
//! let err = registry::parse("agm+magic").unwrap_err().to_string();
//! assert!(err.contains("magic") && err.contains("ogm-ge"));
//! MethodConfigs::av_digits().validate().unwrap();
//! ```
//!
//! Adding a method: one entry in [`METHODS`], one arm in [`lookup`] (in the marked place), and,
//! when it has settings, a field in [`MethodConfigs`] checked in [`MethodConfigs::validate`].

use crate::MethodError;
use agm_core::MultimodalModel;

use crate::stack::{check_composable, Hooks, Stack, StackMember};
use crate::{
    Agm, AgmConfig, GBlend, GBlendConfig, Joint, JointConfig, MmPareto, MmParetoConfig, Modulator, Mses, MsesConfig,
    Mslr, MslrConfig, OgmGe, OgmGeConfig, Pmr, PmrConfig,
};

/// Methods `--method` accepts, alone or joined with `+`.
pub const METHODS: &[&str] = &["joint", "agm", "ogm-ge", "mslr", "mses", "gblend", "pmr", "mmpareto"];

/// Joins the members of a stack.
pub const STACK_SEPARATOR: char = '+';

/// The settings of every method, as the run configuration holds them.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodConfigs {
    /// The run's seed; methods that draw random numbers mix it into their own seed.
    pub seed: u64,
    pub joint: JointConfig,
    pub agm: AgmConfig,
    pub ogm_ge: OgmGeConfig,
    pub mslr: MslrConfig,
    pub mses: MsesConfig,
    pub gblend: GBlendConfig,
    pub pmr: PmrConfig,
    pub mmpareto: MmParetoConfig,
    /// Flattened size of each encoder's output, for methods that add their own heads
    /// (G-Blending, MMPareto); the driver measures it with [`crate::encoder_feature_dims`].
    pub feature_dims: Option<Vec<usize>>,
}

impl MethodConfigs {
    /// Every method's AV-Digits preset.
    pub fn av_digits() -> Self {
        Self {
            seed: 0,
            joint: JointConfig::plain(),
            agm: AgmConfig::av_digits(),
            ogm_ge: OgmGeConfig::av_digits(),
            mslr: MslrConfig::av_digits(),
            mses: MsesConfig::av_digits(),
            gblend: GBlendConfig::av_digits(),
            pmr: PmrConfig::av_digits(),
            mmpareto: MmParetoConfig::av_digits(),
            feature_dims: None,
        }
    }

    /// Checks every method's settings, used or not (a bad value in a config file is an error
    /// even when another method runs); the error names the field and the allowed values.
    pub fn validate(&self) -> Result<(), MethodError> {
        self.joint.validate()?;
        self.agm.validate()?;
        self.ogm_ge.validate()?;
        self.mslr.validate()?;
        self.mses.validate()?;
        self.gblend.validate()?;
        self.pmr.validate()?;
        self.mmpareto.validate()?;
        Ok(())
    }
}

/// How to build one method.
type BuildFn = fn(&MethodConfigs, &dyn MultimodalModel) -> Result<Box<dyn Modulator>, MethodError>;

/// One method of the registry.
#[derive(Clone, Copy)]
pub struct MethodSpec {
    pub name: &'static str,
    /// The hooks only one member of a stack can own.
    pub hooks: Hooks,
    pub build: BuildFn,
}

impl std::fmt::Debug for MethodSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodSpec").field("name", &self.name).field("hooks", &self.hooks).finish()
    }
}

fn modalities(model: &dyn MultimodalModel) -> usize {
    model.modalities().len()
}

fn build_joint(c: &MethodConfigs, _: &dyn MultimodalModel) -> Result<Box<dyn Modulator>, MethodError> {
    Ok(Box::new(Joint::with_clip(c.joint.clip)))
}

fn build_agm(c: &MethodConfigs, model: &dyn MultimodalModel) -> Result<Box<dyn Modulator>, MethodError> {
    Ok(Box::new(Agm::new(c.agm.clone(), modalities(model))?))
}

fn build_ogm_ge(c: &MethodConfigs, model: &dyn MultimodalModel) -> Result<Box<dyn Modulator>, MethodError> {
    let ogm = OgmGe::new(c.ogm_ge.clone(), modalities(model))?.with_run_seed(c.seed);
    let selected = ogm.selected(model);
    if let Some(x) = selected.iter().position(Vec::is_empty) {
        let why = match c.ogm_ge.mode {
            crate::OgmMode::Reference => "ogm_ge.mode = reference edits only 4-D (conv) weights and it has none; \
                                          use mode = paper to modulate the whole encoder"
                .to_string(),
            crate::OgmMode::Paper => "it has no trainable parameters".to_string(),
        };
        return Err(format!(
            "ogm-ge would not modulate modality `{}` of this model: {why}",
            model.modalities().name(x)
        )
        .into());
    }
    Ok(Box::new(ogm))
}

fn build_mslr(c: &MethodConfigs, model: &dyn MultimodalModel) -> Result<Box<dyn Modulator>, MethodError> {
    Ok(Box::new(Mslr::new(&c.mslr, modalities(model))?))
}

fn build_mses(c: &MethodConfigs, model: &dyn MultimodalModel) -> Result<Box<dyn Modulator>, MethodError> {
    Ok(Box::new(Mses::new(&c.mses, modalities(model))?))
}

fn feature_dims(c: &MethodConfigs, method: &str) -> Result<Vec<usize>, MethodError> {
    c.feature_dims.clone().ok_or_else(|| {
        format!("method = `{method}` adds uni-modal heads and needs the encoders' feature sizes (MethodConfigs.feature_dims)")
            .into()
    })
}

fn build_gblend(c: &MethodConfigs, model: &dyn MultimodalModel) -> Result<Box<dyn Modulator>, MethodError> {
    let g = GBlend::new(c.gblend.clone(), modalities(model))?.with_run_seed(c.seed);
    Ok(Box::new(g.with_feature_dims(feature_dims(c, "gblend")?)?))
}

fn build_pmr(c: &MethodConfigs, model: &dyn MultimodalModel) -> Result<Box<dyn Modulator>, MethodError> {
    Ok(Box::new(Pmr::new(c.pmr.clone(), modalities(model))?.with_run_seed(c.seed)))
}

fn build_mmpareto(c: &MethodConfigs, model: &dyn MultimodalModel) -> Result<Box<dyn Modulator>, MethodError> {
    let p = MmPareto::new(c.mmpareto.clone(), modalities(model))?.with_run_seed(c.seed);
    Ok(Box::new(p.with_feature_dims(feature_dims(c, "mmpareto")?)?))
}

/// The method called `name`, if there is one.
pub fn lookup(name: &str) -> Option<MethodSpec> {
    let spec = |name, hooks, build| Some(MethodSpec { name, hooks, build });
    match name {
        "joint" => spec("joint", Hooks::EDITS, build_joint),
        "agm" => spec("agm", Hooks::OBJECTIVE, build_agm),
        "ogm-ge" => spec("ogm-ge", Hooks::EDITS, build_ogm_ge),
        "mslr" => spec("mslr", Hooks::EDITS, build_mslr),
        "mses" => spec("mses", Hooks::EDITS, build_mses),
        "gblend" => spec("gblend", Hooks::OBJECTIVE, build_gblend),
        "pmr" => spec("pmr", Hooks::OBJECTIVE, build_pmr),
        "mmpareto" => spec("mmpareto", Hooks::OBJECTIVE_AND_BACKWARD, build_mmpareto),
        _ => None,
    }
}

fn allowed() -> String {
    format!("{}, or several joined with `+` (e.g. agm+ogm-ge)", METHODS.join(", "))
}

/// The methods of a spec, in order, once the names are known and the hooks compose.
pub fn parse(spec: &str) -> Result<Vec<MethodSpec>, MethodError> {
    let mut out = Vec::new();
    for part in spec.split(STACK_SEPARATOR) {
        let name = part.trim();
        if name.is_empty() {
            return Err(format!("method = `{spec}` has an empty name; allowed: {}", allowed()).into());
        }
        match lookup(name) {
            Some(s) => out.push(s),
            None => return Err(format!("method = `{name}` is not known; allowed: {}", allowed()).into()),
        }
    }
    let decl: Vec<(&str, Hooks)> = out.iter().map(|s| (s.name, s.hooks)).collect();
    check_composable(&decl).map_err(|e| format!("method = `{spec}` cannot be stacked: {e}"))?;
    Ok(out)
}

/// Builds a spec for `model`: the method itself for one name, a [`Stack`] for several.
pub fn build(
    spec: &str,
    configs: &MethodConfigs,
    model: &dyn MultimodalModel,
) -> Result<Box<dyn Modulator>, MethodError> {
    let specs = parse(spec)?;
    if let [one] = specs.as_slice() {
        return (one.build)(configs, model);
    }
    let mut members = Vec::with_capacity(specs.len());
    for s in &specs {
        members.push(StackMember::new(s.name, (s.build)(configs, model)?, s.hooks));
    }
    let stack = Stack::new(members).map_err(|e| format!("method = `{spec}` cannot be stacked: {e}"))?;
    Ok(Box::new(stack))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_method_resolves_and_nothing_else() {
        for name in METHODS {
            assert_eq!(lookup(name).map(|s| s.name), Some(*name));
        }
        assert!(lookup("AGM").is_none());
    }

    #[test]
    fn specs_are_checked_without_a_model() {
        assert_eq!(parse(" agm + mslr ").unwrap().len(), 2);
        for (spec, want) in
            [("", "empty name"), ("agm+", "empty name"), ("ogm", "`ogm` is not known"), ("agm+agm", "appears twice")]
        {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("method"), "{spec}: {err}");
        }
    }
}
