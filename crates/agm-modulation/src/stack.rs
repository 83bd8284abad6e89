//! Several modulators composed hook by hook, in the order written (`--method agm+ogm-ge`).
//!
//! | hook | composition |
//! |---|---|
//! | `attach` | every member's variables, in order (names must not collide) |
//! | `forward_plan` | the Shapley passes when any member needs them (they never change a member that reads only the full pass) |
//! | `objective` | the single member that defines one, otherwise the default cross-entropy |
//! | `backward` | the single member that defines one, which must then also own the objective if any member does; otherwise `agm_kernels::backward(loss)` |
//! | `after_backward` | every member's, in order |
//! | `clip_rule` | the members' rule; members that clip must agree on it |
//! | `on_train_start` | every member's, in order |
//! | `on_epoch_start` | every member's, in order |
//! | `on_epoch_end` | every member's actions, concatenated in order |
//! | `coefficients` | the last member that has coefficients |
//! | `coefficients_by_method` | every member that has coefficients, by name, when two or more have them |
//! | `predict` | the first member that predicts, otherwise the model's fused logits |
//! | `state` / `load_state` / `on_restored` | a JSON array with one entry per member |
//!
//! The trait cannot tell whether a member overrides `objective` or `backward`, so each member
//! comes with its [`Hooks`], declared by the registry. A stack that cannot be composed is
//! rejected by [`Stack::new`] with the reason.

use crate::MethodError;
use agm_core::{MultimodalModel, NamedVar};
use candle_core::backprop::GradStore;
use candle_core::Result;

use crate::{ClipRule, EpochAction, EpochCx, ForwardPlan, Modulator, Objective, StepCx, TrainStartCx};

/// The hooks a method overrides that only one member of a stack can own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// The method defines the loss to differentiate (AGM's hooked loss, added uni-modal losses).
    pub objective: bool,
    /// The method differentiates its objective itself (one backward per loss).
    pub backward: bool,
}

impl Hooks {
    /// Only gradient edits and epoch-level hooks: composes with anything.
    pub const EDITS: Hooks = Hooks { objective: false, backward: false };
    /// Defines the objective.
    pub const OBJECTIVE: Hooks = Hooks { objective: true, backward: false };
    /// Defines the objective and its own backward.
    pub const OBJECTIVE_AND_BACKWARD: Hooks = Hooks { objective: true, backward: true };
}

/// One member of a stack.
pub struct StackMember {
    /// The method's name as written (`agm`, `ogm-ge`).
    pub name: String,
    /// The method itself.
    pub modulator: Box<dyn Modulator>,
    /// The hooks it owns (its `Method::HOOKS`); a stack runs only declared owners' `objective`
    /// and `backward`.
    pub hooks: Hooks,
}

impl StackMember {
    /// A member named `name`.
    pub fn new(name: impl Into<String>, modulator: Box<dyn Modulator>, hooks: Hooks) -> Self {
        Self { name: name.into(), modulator, hooks }
    }
}

/// Checks that methods with these names and hooks can be stacked in this order; the error says
/// why not.
pub fn check_composable(members: &[(&str, Hooks)]) -> std::result::Result<(), MethodError> {
    if members.is_empty() {
        return Err("a stack needs at least one method".into());
    }
    for (i, (a, _)) in members.iter().enumerate() {
        if members[..i].iter().any(|(b, _)| b == a) {
            return Err(format!("`{a}` appears twice in the stack; each method can be stacked once").into());
        }
    }
    let owners: Vec<&str> = members.iter().filter(|(_, h)| h.objective).map(|(n, _)| *n).collect();
    if owners.len() > 1 {
        return Err(format!(
            "`{}` and `{}` both define the training objective (the loss to differentiate); a stack can have only one \
             method that defines it, the others may only edit gradients or act at epoch ends",
            owners[0], owners[1]
        )
        .into());
    }
    let backward: Vec<&str> = members.iter().filter(|(_, h)| h.backward).map(|(n, _)| *n).collect();
    if backward.len() > 1 {
        return Err(format!(
            "`{}` and `{}` both run their own backward passes; a stack can have only one",
            backward[0], backward[1]
        )
        .into());
    }
    if let (Some(b), Some(o)) = (backward.first(), owners.first()) {
        if b != o {
            return Err(format!(
                "`{b}` runs its own backward passes over its own losses and cannot differentiate the objective of `{o}`"
            )
            .into());
        }
    }
    Ok(())
}

/// Modulators composed hook by hook (see the module docs).
pub struct Stack {
    members: Vec<Box<dyn Modulator>>,
    names: Vec<String>,
    hooks: Vec<Hooks>,
    /// Whether the first step checked that the members declaring no objective have none.
    objectives_checked: bool,
    objective: Option<usize>,
    backward: Option<usize>,
    clip: Option<ClipRule>,
}

impl Stack {
    /// A member whose `Method::HOOKS` declares no objective but whose `objective` returns
    /// another loss than cross-entropy would be skipped without a word (the trait cannot tell
    /// an override): refused at the first step, once, by the loss's value.
    fn check_undeclared_objectives(&mut self, cx: &StepCx<'_>, plain: &Objective) -> Result<()> {
        let plain_loss = plain.loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        for (i, member) in self.members.iter_mut().enumerate() {
            if self.hooks[i].objective {
                continue;
            }
            let loss = member.objective(cx)?.loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if loss.to_bits() != plain_loss.to_bits() {
                candle_core::bail!(
                    "`{}` returns an objective of its own (loss {loss}, cross-entropy {plain_loss}) but its \
                     `Method::HOOKS` does not declare one, so the stack would skip it: declare `Hooks::OBJECTIVE`",
                    self.names[i]
                );
            }
        }
        Ok(())
    }

    /// Composes `members` in order, or says why they cannot be composed.
    pub fn new(members: Vec<StackMember>) -> std::result::Result<Self, MethodError> {
        let decl: Vec<(&str, Hooks)> = members.iter().map(|m| (m.name.as_str(), m.hooks)).collect();
        check_composable(&decl)?;
        let mut clip: Option<(String, ClipRule)> = None;
        for m in &members {
            if let Some(rule) = m.modulator.clip_rule() {
                match &clip {
                    Some((other, r)) if *r != rule => {
                        return Err(format!(
                            "`{other}` clips with {r:?} and `{}` with {rule:?}; a stack applies one clipping, so \
                             give both the same clip settings or remove one",
                            m.name
                        )
                        .into());
                    }
                    Some(_) => {}
                    None => clip = Some((m.name.clone(), rule)),
                }
            }
        }
        let objective = members.iter().position(|m| m.hooks.objective);
        let backward = members.iter().position(|m| m.hooks.backward);
        let names = members.iter().map(|m| m.name.clone()).collect();
        let hooks = members.iter().map(|m| m.hooks).collect();
        Ok(Self {
            members: members.into_iter().map(|m| m.modulator).collect(),
            names,
            hooks,
            objectives_checked: false,
            objective,
            backward,
            clip: clip.map(|(_, r)| r),
        })
    }

    /// The stack as written: `agm+ogm-ge`.
    pub fn label(&self) -> String {
        self.names.join("+")
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the stack has no member; never true of a stack from [`Stack::new`], which refuses
    /// an empty list.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members, in order.
    pub fn members(&self) -> impl Iterator<Item = &dyn Modulator> {
        self.members.iter().map(|m| m.as_ref() as &dyn Modulator)
    }
}

impl Modulator for Stack {
    fn name(&self) -> &'static str {
        "stack"
    }

    fn attach(&mut self, model: &dyn MultimodalModel) -> Result<Vec<NamedVar>> {
        let mut all: Vec<NamedVar> = Vec::new();
        for (m, name) in self.members.iter_mut().zip(&self.names) {
            for v in m.attach(model)? {
                if all.iter().any(|w| w.name == v.name) {
                    candle_core::bail!(
                        "`{name}` adds a variable `{}` that another stacked method already added",
                        v.name
                    );
                }
                all.push(v);
            }
        }
        Ok(all)
    }

    fn forward_plan(&self) -> ForwardPlan {
        if self.members.iter().any(|m| m.forward_plan() == ForwardPlan::Shapley) {
            ForwardPlan::Shapley
        } else {
            ForwardPlan::Full
        }
    }

    fn objective(&mut self, cx: &StepCx<'_>) -> Result<Objective> {
        let plain = || -> Result<Objective> {
            let output = cx.forward.full.logits.clone();
            let loss = candle_nn::loss::cross_entropy(&output, &cx.batch.labels)?;
            Ok(Objective { loss, output, mono: None })
        };
        if !self.objectives_checked {
            self.objectives_checked = true;
            self.check_undeclared_objectives(cx, &plain()?)?;
        }
        match self.objective {
            Some(i) => self.members[i].objective(cx),
            None => plain(),
        }
    }

    fn backward(&mut self, cx: &StepCx<'_>, objective: &Objective) -> Result<GradStore> {
        match self.backward {
            Some(i) => self.members[i].backward(cx, objective),
            None => agm_kernels::backward(&objective.loss),
        }
    }

    fn after_backward(&mut self, cx: &StepCx<'_>, grads: &mut GradStore) -> Result<()> {
        for m in &mut self.members {
            m.after_backward(cx, grads)?;
        }
        Ok(())
    }

    fn clip_rule(&self) -> Option<ClipRule> {
        self.clip
    }

    fn on_train_start(&mut self, cx: &TrainStartCx<'_>) -> Result<()> {
        for m in &mut self.members {
            m.on_train_start(cx)?;
        }
        Ok(())
    }

    fn on_epoch_start(&mut self, epoch: usize, steps: usize, first_step: usize) -> Result<()> {
        for m in &mut self.members {
            m.on_epoch_start(epoch, steps, first_step)?;
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, cx: &EpochCx<'_>) -> Result<Vec<EpochAction>> {
        let mut actions = Vec::new();
        for m in &mut self.members {
            actions.extend(m.on_epoch_end(cx)?);
        }
        Ok(actions)
    }

    fn coefficients(&self) -> Option<Vec<f64>> {
        self.members.iter().rev().find_map(|m| m.coefficients())
    }

    fn coefficients_by_method(&self) -> Vec<(String, Vec<f64>)> {
        let each: Vec<(String, Vec<f64>)> = self
            .names
            .iter()
            .zip(&self.members)
            .filter_map(|(name, m)| m.coefficients().map(|c| (name.clone(), c)))
            .collect();
        // One member's coefficients are `coefficients` already.
        if each.len() > 1 {
            each
        } else {
            Vec::new()
        }
    }

    fn predict(
        &self,
        model: &dyn MultimodalModel,
        pass: &agm_core::ModelOutput,
    ) -> Result<Option<candle_core::Tensor>> {
        for m in &self.members {
            if let Some(logits) = m.predict(model, pass)? {
                return Ok(Some(logits));
            }
        }
        Ok(None)
    }

    fn state(&self) -> serde_json::Value {
        serde_json::Value::Array(self.members.iter().map(|m| m.state()).collect())
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        self.each_member_state(state, |m, s| m.load_state(s))
    }

    fn on_restored(&mut self, tag: &str, state: &serde_json::Value) -> Result<()> {
        self.each_member_state(state, |m, s| m.on_restored(tag, s))
    }
}

impl Stack {
    /// Hands each member its entry of a stack's state (a JSON array, one entry per method).
    fn each_member_state(
        &mut self,
        state: &serde_json::Value,
        mut apply: impl FnMut(&mut Box<dyn Modulator>, &serde_json::Value) -> Result<()>,
    ) -> Result<()> {
        let Some(items) = state.as_array() else {
            candle_core::bail!("the state of stack `{}` must be a JSON array, one entry per method", self.label());
        };
        if items.len() != self.members.len() {
            candle_core::bail!(
                "the state holds {} methods but the stack `{}` has {}",
                items.len(),
                self.label(),
                self.members.len()
            );
        }
        for ((m, s), name) in self.members.iter_mut().zip(items).zip(&self.names) {
            apply(m, s).map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))?;
        }
        Ok(())
    }
}
