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

mod agm;
mod joint;
mod modulator;
pub mod shapley;

pub use agm::{Agm, AgmConfig, AgmStepStats};
pub use joint::Joint;
pub use modulator::{
    ClipCondition, ClipRule, EpochAction, EpochCx, ForwardPlan, Modulator, Objective, StepCx, StepForward,
};
