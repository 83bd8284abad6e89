//! Modulation methods behind one small trait, [`Modulator`].
//!
//! The trainer (agm-train) runs every step in the same order and calls the modulator's hooks
//! in between:
//!
//! 1. `forward_plan` decides which passes run: the full pass in training mode, plus, for
//!    Shapley-based methods, every masked pass in evaluation mode *with* gradients.
//! 2. `objective` turns the passes into the loss to differentiate (AGM computes its coefficients
//!    from the current batch here and scales the current batch's backward).
//! 3. `backward` differentiates it (a method needing one backward per loss overrides this).
//! 4. `after_backward` edits per-modality gradients before clipping and the optimizer step.
//! 5. `on_epoch_end` may save or restore a snapshot or stop training.
//!
//! Only `name` is required; every other hook has a default that does what plain joint training
//! does.
//!
//! ```
//! use agm_modulation::{Agm, AgmConfig, Modulator};
//! let agm = Agm::new(AgmConfig::paper_avmnist(), 2).unwrap();
//! assert_eq!(agm.name(), "agm");
//! assert_eq!(agm.scales(), &[1.0, 1.0]);
//! ```

#![warn(missing_docs)]

mod agm;
mod concat_head;
mod dgl;
mod error;
mod gblend;
mod greedy;
mod inforeg;
mod joint;
mod lfm;
pub mod method;
mod mla;
mod mmpareto;
mod modulator;
mod mses;
mod mslr;
mod ogm;
mod ogm_ge;
mod opm;
mod pmr;
mod reconboost;
pub mod registry;
mod relearn;
pub mod shapley;
mod shared;
mod stack;
mod uni_heads;

// The crates of `Modulator::state` (JSON) and `MethodSettings` (TOML tables), at agm's versions.
pub use agm::{Agm, AgmConfig, AgmStepStats};
pub use concat_head::UniModal;
pub use dgl::{unimodal_logits as dgl_unimodal_logits, Dgl, DglConfig, DglStepStats};
pub use error::MethodError;
pub use gblend::{
    encoder_feature_dims, gblend_weights, GBlend, GBlendConfig, GBlendEstimate, GBlendEstimator, GBlendMeasure,
    GBLEND_O_FLOOR,
};
pub use greedy::{conditional_speeds as greedy_conditional_speeds, Greedy, GreedyConfig, GreedyState};
pub use inforeg::{
    head_split_outputs as inforeg_head_split_outputs, regulation_coefficients as inforeg_coefficients,
    window_statistic as inforeg_window_statistic, InfoReg, InfoRegConfig, InfoRegUnimodal, WindowTrace,
};
pub use joint::{Joint, JointConfig};
pub use lfm::{
    lfm_alignment, lfm_fitted_weights, lfm_learned_update, lfm_rows, Lfm, LfmConfig, LfmPassMode, LfmState,
    LfmWeighting, LFM_FITTED_ALIGN, LFM_FITTED_CLS, LFM_FITTED_LAST_EPOCH,
};
pub use method::{BuildCx, Method, MethodSettings};
pub use mla::{
    fuse_logits as mla_fuse_logits, projector_alpha as mla_projector_alpha, projector_update as mla_projector_update,
    Mla, MlaConfig, MlaFusion,
};
pub use mmpareto::{
    min_norm_2, pareto_combine, MmPareto, MmParetoConfig, MmParetoStats, ParetoEncoderStats, ParetoRescale,
};
pub use modulator::{
    ClipCondition, ClipRule, EpochAction, EpochCx, ForwardPlan, Modulator, Objective, StepCx, StepForward, TrainStartCx,
};
pub use mses::{snapshot_tag as mses_snapshot_tag, FirstEpochPolicy, Mses, MsesConfig, MsesEpoch, MsesSchedule};
pub use mslr::{Mslr, MslrConfig, MslrSchedule};
pub use ogm::{ogm_journal_coefficients, Ogm, OgmConfig, OgmParams, OgmStats};
pub use ogm_ge::{
    noise_std as ogm_noise_std, ogm_coefficients, score_sum as ogm_score_sum, OgmCoefficients, OgmGe, OgmGeConfig,
    OgmMode, OgmStepStats, NOISE_STD_EPS as OGM_NOISE_STD_EPS,
};
pub use opm::{opm_drop_probabilities, opm_uniform, Opm, OpmConfig, OpmStats};
pub use pmr::{prototype_logits, Pmr, PmrConfig, PmrStepStats, Prototypes};
pub use reconboost::{reconcilement_weights, ReconBoost, ReconBoostConfig, ReconBoostPhase, ReconBoostStep, StagePlan};
pub use registry::MethodEntry;
pub use relearn::{relearn_strength, Relearn, RelearnConfig, RelearnDiagnosis};
pub use stack::{check_composable, Hooks, Stack, StackMember};
pub use {serde_json, toml};
