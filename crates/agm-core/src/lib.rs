//! The vocabulary shared by every agm crate.
//!
//! A multimodal model sees `M` modalities (audio, visual, text, ...), indexed `0..M` in the order
//! of [`ModalitySet`]. A forward pass keeps a [`Subset`] of them; the others are fed as zeros of
//! their input shape, exactly as the AGM reference pads a muted modality.
//!
//! ```
//! use agm_core::{ModalitySet, Subset};
//! let set = ModalitySet::new(["audio", "visual"]);
//! let full = Subset::full(set.len());
//! assert_eq!(full.len(), 2);
//! assert_eq!(set.letters(Subset::single(1)), "v");
//! ```

#![warn(missing_docs)]

mod batch;
pub mod by_name;
mod modality;
mod model;
mod params;
pub mod serde_f64;
pub mod serde_none;
pub mod suggest;

// The tensor crate of every signature here, at the version agm builds with.
pub use batch::{BatchSource, MultimodalBatch};
pub use candle_core;
pub use modality::{ModalitySet, Subset};
pub use model::{FastShapley, ForwardOpts, ModelOutput, MultimodalModel, ShapleyMode};
pub use params::{NamedVar, ParamGroups};

/// FNV-1a of a variable's name: the stable hash every seeded variable mixes into its seed, so a
/// name's random stream never changes between builds (agm-fusion's models and the methods' own
/// heads draw the same way).
pub fn stable_name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
