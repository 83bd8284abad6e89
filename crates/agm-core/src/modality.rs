//! Modalities and subsets of them.

use std::fmt;

/// The ordered modalities of a model or dataset. The order is the concatenation order of fused
/// features and the order of every per-modality vector in agm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModalitySet {
    names: Vec<String>,
}

impl ModalitySet {
    /// The modalities called `names`, in that order. Panics unless there are 1 to
    /// [`Subset::MAX_MODALITIES`] names, all different (logs and metrics key values by name).
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        assert!(!names.is_empty() && names.len() <= Subset::MAX_MODALITIES, "1 to 16 modalities");
        if let Some((i, name)) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)) {
            panic!(
                "modality `{name}` is named twice (positions {} and {i})",
                names.iter().position(|n| n == name).unwrap()
            );
        }
        Self { names }
    }

    /// Number of modalities, `M`.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: [`Self::new`] refuses an empty set.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names, in modality order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The name of modality `index`. Panics if `index` is not below [`Self::len`].
    pub fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    /// The index of the modality called exactly `name` (case-sensitive), if any.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// First letters of the kept modalities, in set order (`"av"`, `"t"`, `"none"` for the empty
    /// subset): the naming the golden fixtures use for passes.
    pub fn letters(&self, subset: Subset) -> String {
        if subset.is_empty() {
            return "none".to_string();
        }
        subset.iter().map(|i| self.names[i].chars().next().unwrap_or('?')).collect()
    }
}

/// A set of modality indices, stored as a bit mask (at most 16 modalities).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Subset(u16);

impl Subset {
    /// The most modalities a subset (and so a [`ModalitySet`]) can hold: the bits of a `u16`.
    pub const MAX_MODALITIES: usize = 16;

    /// The subset that keeps no modality.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Every modality of `0..m`. Panics if `m` exceeds [`Self::MAX_MODALITIES`].
    pub fn full(m: usize) -> Self {
        assert!(m <= Self::MAX_MODALITIES);
        Self(((1u32 << m) - 1) as u16)
    }

    /// Only modality `index`. Panics unless `index` is below [`Self::MAX_MODALITIES`].
    pub fn single(index: usize) -> Self {
        Self(Self::bit(index))
    }

    /// The mask of modality `index`; checked in release builds too, where a shift would wrap.
    fn bit(index: usize) -> u16 {
        assert!(index < Self::MAX_MODALITIES, "modality index {index} is not below {}", Self::MAX_MODALITIES);
        1 << index
    }

    /// The subset whose set bit `i` keeps modality `i`.
    pub fn from_bits(bits: u16) -> Self {
        Self(bits)
    }

    /// The bit mask: bit `i` is set when modality `i` is kept.
    pub fn bits(self) -> u16 {
        self.0
    }

    /// Whether modality `index` is kept.
    pub fn contains(self, index: usize) -> bool {
        index < Self::MAX_MODALITIES && self.0 & (1 << index) != 0
    }

    /// This subset with modality `index` kept as well. Panics unless `index` is below
    /// [`Self::MAX_MODALITIES`].
    pub fn with(self, index: usize) -> Self {
        Self(self.0 | Self::bit(index))
    }

    /// This subset with modality `index` left out. Panics unless `index` is below
    /// [`Self::MAX_MODALITIES`].
    pub fn without(self, index: usize) -> Self {
        Self(self.0 & !Self::bit(index))
    }

    /// Number of kept modalities.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether no modality is kept.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Indices of the kept modalities, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..Self::MAX_MODALITIES).filter(move |&i| self.contains(i))
    }

    /// Every subset of `0..m`, the empty one first and the full one last. Panics if `m` exceeds
    /// [`Self::MAX_MODALITIES`].
    pub fn all(m: usize) -> impl Iterator<Item = Subset> {
        assert!(m <= Self::MAX_MODALITIES);
        (0..(1u32 << m)).map(|b| Subset(b as u16))
    }
}

impl fmt::Debug for Subset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subset{:?}", self.iter().collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "modality `audio` is named twice (positions 0 and 2)")]
    fn a_modality_named_twice_is_refused() {
        ModalitySet::new(["audio", "visual", "audio"]);
    }

    #[test]
    fn subsets_enumerate_in_bit_order() {
        let all: Vec<_> = Subset::all(2).collect();
        assert_eq!(all, vec![Subset::empty(), Subset::single(0), Subset::single(1), Subset::full(2)]);
        assert_eq!(Subset::full(3).without(1).iter().collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn an_index_past_the_mask_is_refused_not_wrapped() {
        assert!(!Subset::full(16).contains(16));
        assert_eq!(Subset::single(15).bits(), 1 << 15);
        for bad in [|| Subset::single(16), || Subset::empty().with(17), || Subset::full(2).without(16)] {
            let message = std::panic::catch_unwind(bad).unwrap_err();
            assert!(message.downcast_ref::<String>().unwrap().contains("is not below 16"));
        }
    }

    #[test]
    fn letters_follow_set_order() {
        let set = ModalitySet::new(["audio", "visual", "text"]);
        assert_eq!(set.letters(Subset::full(3)), "avt");
        assert_eq!(set.letters(Subset::full(3).without(0)), "vt");
        assert_eq!(set.letters(Subset::empty()), "none");
    }
}
