//! Datasets for agm: the embedded AV-Digits set, its fixed splits, and seeded batching.
//!
//! [`av_digits::load`] decodes the embedded AV-Digits asset (3,000 paired spoken / handwritten
//! digits) into one [`SplitTensors`] per split; [`epoch_order`] and [`batches`] give a
//! reproducible sample order, and [`SplitTensors::batch`] gathers an
//! [`agm_core::MultimodalBatch`].
//!
//! ```
//! use agm_data::av_digits::{self, AvDigitsConfig, Split};
//! use agm_data::{batches, epoch_order};
//!
//! let data = av_digits::load(&AvDigitsConfig::default_preset())?;
//! let train = data.split(Split::Train);
//! let order = epoch_order(train.len(), 42, 0, true);
//! let first = batches(train.len(), 64)[0].clone();
//! let batch = train.batch(&order[first], &candle_core::Device::Cpu)?;
//! assert_eq!(batch.inputs[0].dims(), &[64, 1, 13, 32]); // audio
//! assert_eq!(batch.inputs[1].dims(), &[64, 1, 28, 28]); // visual
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod augment;
pub mod av_digits;
mod dataset;
mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod hub;
pub mod limits;
pub mod loaders;
mod npy;
pub mod synthetic;

pub use dataset::{batches, epoch_order, Dataset, Sample, SplitTensors};
pub use error::{DataError, Result, PIP_COMMAND};
pub use loaders::prefetch::Prefetcher;
pub use loaders::{load, DatasetId, LoadOptions, LoadedDataset, SegmentLabels, WordVectors};
