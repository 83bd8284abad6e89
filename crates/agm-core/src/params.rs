//! Parameter groups: which variables belong to which modality.

use candle_core::Var;

/// A variable with its checkpoint name.
#[derive(Clone, Debug)]
pub struct NamedVar {
    /// The checkpoint key (`audio_encoder.0.weight`).
    pub name: String,
    /// The variable; a clone shares its storage, so setting it changes the model's.
    pub var: Var,
}

/// The model's variables by role. Names are the checkpoint keys; every list is sorted by name.
#[derive(Clone, Debug, Default)]
pub struct ParamGroups {
    /// Trainable variables of each modality's encoder, in modality order.
    pub per_modality: Vec<Vec<NamedVar>>,
    /// Trainable variables shared by all modalities (fusion, head).
    pub shared: Vec<NamedVar>,
    /// Non-trainable state saved in checkpoints (BatchNorm running statistics).
    pub buffers: Vec<NamedVar>,
    /// Name of the head weight whose gradient the reference's conditional clipping inspects.
    pub head_weight: Option<String>,
}

impl ParamGroups {
    /// Every trainable variable: the modalities' in order, then the shared ones.
    pub fn trainable(&self) -> Vec<NamedVar> {
        self.per_modality.iter().flatten().chain(self.shared.iter()).cloned().collect()
    }

    /// Every variable, trainable or not, sorted by name (checkpoint order).
    pub fn all_sorted(&self) -> Vec<NamedVar> {
        let mut all = self.trainable();
        all.extend(self.buffers.iter().cloned());
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The variable called `name` in any group (modalities, shared, buffers), if there is one.
    pub fn find(&self, name: &str) -> Option<&NamedVar> {
        self.per_modality.iter().flatten().chain(self.shared.iter()).chain(self.buffers.iter()).find(|v| v.name == name)
    }

    /// The modality whose encoder owns `name`, if any.
    pub fn modality_of(&self, name: &str) -> Option<usize> {
        self.per_modality.iter().position(|g| g.iter().any(|v| v.name == name))
    }
}
