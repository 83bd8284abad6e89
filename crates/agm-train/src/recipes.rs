//! Recipes: one TOML file per paper experiment in `configs/`, embedded so the library and every
//! command share them (`cargo xtask recipes`, `--recipe <name>`).
//!
//! A recipe holds only what differs from its dataset's reference settings
//! ([`crate::RunConfig::for_dataset`]); its first line is a one-line summary and the comments
//! after it name the source of every value. Adding a recipe: one file in `configs/` and one line
//! in [`RECIPES`].

use crate::error::{Result, TrainError};

/// A named experiment.
#[derive(Clone, Copy, Debug)]
pub struct Recipe {
    /// The name `--recipe` takes, the file name in `configs/` without `.toml`.
    pub name: &'static str,
    /// The TOML text, comments included.
    pub text: &'static str,
}

macro_rules! recipe {
    ($name:literal) => {
        Recipe { name: $name, text: include_str!(concat!("../../../configs/", $name, ".toml")) }
    };
}

/// Every recipe, by dataset.
pub const RECIPES: &[Recipe] = &[
    recipe!("avmnist-joint-late"),
    recipe!("avmnist-agm-late"),
    recipe!("avmnist-mslr-late"),
    recipe!("avmnist-mses-late"),
    recipe!("avmnist-joint-early"),
    recipe!("avmnist-agm-early"),
    recipe!("avmnist-ogm-ge-early"),
    recipe!("avmnist-uni-audio"),
    recipe!("avmnist-uni-visual"),
    recipe!("cremad-joint-late"),
    recipe!("cremad-agm-late"),
    recipe!("cremad-ogm-ge-late"),
    recipe!("cremad-mslr-late"),
    recipe!("cremad-mses-late"),
    recipe!("cremad-joint-early"),
    recipe!("cremad-agm-early"),
    recipe!("cremad-uni-audio"),
    recipe!("cremad-uni-visual"),
    recipe!("urfunny-joint-late"),
    recipe!("urfunny-agm-late"),
    recipe!("urfunny-mslr-late"),
    recipe!("urfunny-mses-late"),
    recipe!("urfunny-joint-early"),
    recipe!("urfunny-agm-early"),
    recipe!("urfunny-uni-audio"),
    recipe!("urfunny-uni-visual"),
    recipe!("urfunny-uni-text"),
    recipe!("ave-joint"),
    recipe!("ave-agm"),
    recipe!("mosei-joint"),
    recipe!("mosei-agm"),
];

impl Recipe {
    /// The first comment line, without its `#`.
    pub fn summary(&self) -> &'static str {
        self.text.lines().next().and_then(|l| l.strip_prefix('#')).map(str::trim).unwrap_or("")
    }

    /// The recipe's keys.
    pub fn table(&self) -> Result<toml::Table> {
        toml::from_str(self.text).map_err(|e| TrainError::Config(format!("recipe `{}`: {}", self.name, e.message())))
    }

    /// The dataset the recipe is for.
    pub fn dataset(&self) -> Result<String> {
        match self.table()?.get("dataset") {
            Some(toml::Value::String(d)) => Ok(d.clone()),
            _ => Err(TrainError::Config(format!("recipe `{}` names no dataset", self.name))),
        }
    }
}

/// The recipe called `name`; an unknown name lists the known ones.
pub fn find(name: &str) -> Result<&'static Recipe> {
    RECIPES.iter().find(|r| r.name == name).ok_or_else(|| {
        TrainError::Config(format!(
            "recipe `{name}` is not known{}; known recipes (`cargo xtask recipes`): {}",
            agm_core::suggest::did_you_mean(name, RECIPES.iter().map(|r| r.name)),
            RECIPES.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// The recipes of `dataset`, in registry order.
pub fn for_dataset(dataset: &str) -> Vec<&'static Recipe> {
    RECIPES.iter().filter(|r| r.dataset().is_ok_and(|d| d == dataset)).collect()
}
