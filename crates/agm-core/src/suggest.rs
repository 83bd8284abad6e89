//! "Did you mean" for a name that is not known: the closest allowed name, when it is close.
//!
//! ```
//! use agm_core::suggest::did_you_mean;
//! assert_eq!(did_you_mean("avmnst", ["avmnist", "cremad"]), " (did you mean `avmnist`?)");
//! assert_eq!(did_you_mean("xyz", ["avmnist", "cremad"]), "");
//! ```

/// ` (did you mean `name`?)` for the allowed name closest to `value` (Jaro-Winkler similarity of
/// at least 0.8, as clap suggests flags), else an empty string.
pub fn did_you_mean<'a>(value: &str, allowed: impl IntoIterator<Item = &'a str>) -> String {
    closest(value, allowed).map_or_else(String::new, |name| format!(" (did you mean `{name}`?)"))
}

/// The allowed name closest to `value` (ignoring case), if it is close.
pub fn closest<'a>(value: &str, allowed: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let value = value.to_ascii_lowercase();
    allowed
        .into_iter()
        .map(|name| (strsim::jaro_winkler(&value, &name.to_ascii_lowercase()), name))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_name_only_when_it_is_close() {
        let methods = ["agm", "joint", "ogm-ge", "mslr", "mses"];
        assert_eq!(did_you_mean("agn", methods), " (did you mean `agm`?)");
        assert_eq!(did_you_mean("OGM_GE", methods), " (did you mean `ogm-ge`?)");
        assert_eq!(did_you_mean("jiont", methods), " (did you mean `joint`?)");
        assert_eq!(did_you_mean("transformer", methods), "");
        assert_eq!(did_you_mean("agm", []), "");
    }
}
