//! Named, role-tagged, seeded model variables.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use agm_core::{NamedVar, ParamGroups};
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which group a variable belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRole {
    /// Trainable, owned by the encoder of modality `i`.
    Modality(usize),
    /// Trainable, shared by every modality (fusion, head).
    Shared,
    /// Saved but never optimised (BatchNorm running statistics).
    Buffer,
}

/// How a variable starts.
#[derive(Clone, Copy, Debug)]
pub enum ParamInit {
    /// Every element equal to the value.
    Const(f64),
    /// Uniform in `[-bound, bound]`: PyTorch's default for Linear and Conv weights and biases,
    /// with `bound = 1/sqrt(fan_in)`.
    Uniform {
        /// Half-width of the interval.
        bound: f64,
    },
    /// Normal with mean `mean` and standard deviation `std` (Box-Muller over the seeded stream).
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
}

struct Entry {
    var: Var,
    role: ParamRole,
}

/// The variables of one model, by name. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct ParamStore {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
    head_weight: Arc<Mutex<Option<String>>>,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder at the root of this store.
    pub fn builder(&self, seed: u64, dtype: DType, device: &Device) -> ParamBuilder {
        ParamBuilder {
            store: self.clone(),
            prefix: String::new(),
            role: ParamRole::Shared,
            seed,
            dtype,
            device: device.clone(),
        }
    }

    /// Marks the variable whose gradient the reference's conditional clipping inspects.
    pub fn set_head_weight(&self, name: &str) {
        *self.head_weight.lock().expect("param store lock") = Some(name.to_string());
    }

    /// The variable with the full name `name`, if any (a handle on the model's storage).
    pub fn get(&self, name: &str) -> Option<Var> {
        self.entries.lock().expect("param store lock").get(name).map(|e| e.var.clone())
    }

    /// Every variable's name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.lock().expect("param store lock").keys().cloned().collect()
    }

    /// The variables grouped by role, each group sorted by name.
    pub fn groups(&self, num_modalities: usize) -> ParamGroups {
        let entries = self.entries.lock().expect("param store lock");
        let mut groups = ParamGroups {
            per_modality: vec![Vec::new(); num_modalities],
            head_weight: self.head_weight.lock().expect("param store lock").clone(),
            ..ParamGroups::default()
        };
        for (name, e) in entries.iter() {
            let nv = NamedVar { name: name.clone(), var: e.var.clone() };
            match e.role {
                ParamRole::Modality(i) => match groups.per_modality.get_mut(i) {
                    Some(group) => group.push(nv),
                    // A model's own mistake, not the data's: no caller can recover.
                    None => panic!(
                        "variable `{name}` has role Modality({i}), but the model groups {num_modalities} modalities \
                         (0 to {}): give it the index of its modality's encoder",
                        num_modalities.saturating_sub(1)
                    ),
                },
                ParamRole::Shared => groups.shared.push(nv),
                ParamRole::Buffer => groups.buffers.push(nv),
            }
        }
        groups
    }

    /// Overwrites variables from named tensors (a checkpoint or golden initial values). Every
    /// variable of the store must be present with the same shape; extra names are an error too.
    /// Everything is checked (and converted to the variables' dtype and device) before the first
    /// variable is written, so an error leaves the model as it was.
    pub fn load(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let entries = self.entries.lock().expect("param store lock");
        let mut converted = Vec::with_capacity(entries.len());
        for (name, e) in entries.iter() {
            let t = tensors
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor `{name}` for the model")))?;
            if t.dims() != e.var.dims() {
                candle_core::bail!("tensor `{name}` has shape {:?} but the model expects {:?}", t.dims(), e.var.dims());
            }
            converted.push((&e.var, t.to_dtype(e.var.dtype())?.to_device(e.var.device())?));
        }
        if let Some(extra) = tensors.keys().find(|k| !entries.contains_key(*k)) {
            candle_core::bail!("tensor `{extra}` does not belong to the model");
        }
        for (var, t) in converted {
            var.set(&t)?;
        }
        Ok(())
    }

    /// Every variable by name (for checkpoints).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let entries = self.entries.lock().expect("param store lock");
        entries.iter().map(|(n, e)| (n.clone(), e.var.as_tensor().clone())).collect()
    }
}

/// Creates variables under a name prefix with a role; cheap to clone.
#[derive(Clone)]
pub struct ParamBuilder {
    store: ParamStore,
    prefix: String,
    role: ParamRole,
    seed: u64,
    dtype: DType,
    device: Device,
}

impl ParamBuilder {
    /// Pushes a name component (`pp("audio_encoder")`, then `"audio_encoder.1.weight"`).
    pub fn pp(&self, name: impl AsRef<str>) -> Self {
        let name = name.as_ref();
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Self { prefix, ..self.clone() }
    }

    /// The same prefix with another role for the trainable variables created below it.
    pub fn with_role(&self, role: ParamRole) -> Self {
        Self { role, ..self.clone() }
    }

    /// The dtype of the variables it creates.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device of the variables it creates.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The store its variables go into.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// The full name of `name` under this builder's prefix: `<prefix>.<name>`, or `name` at the
    /// root.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// A trainable variable with the builder's role.
    pub fn param(&self, shape: impl Into<Shape>, name: &str, init: ParamInit) -> Result<Var> {
        self.create(shape.into(), name, init, self.role)
    }

    /// A saved, never optimised variable.
    pub fn buffer(&self, shape: impl Into<Shape>, name: &str, init: ParamInit) -> Result<Var> {
        self.create(shape.into(), name, init, ParamRole::Buffer)
    }

    /// The values `param(shape, name, init)` would start with, without creating a variable: for
    /// modules whose initialisation differs from the layer constructor's (a BatchNorm weight drawn
    /// around 1 in a ResNet).
    pub fn draw(&self, shape: impl Into<Shape>, name: &str, init: ParamInit) -> Result<Tensor> {
        self.values(shape.into(), &self.path(name), init)
    }

    /// A trainable variable with the builder's role that starts as a copy of `value` (converted
    /// to the builder's dtype and device): for modules that start as copies of another, as
    /// PyTorch's `nn.TransformerEncoder` deep-copies its layer. The copy owns its storage.
    pub fn param_from(&self, name: &str, value: &Tensor) -> Result<Var> {
        let t = value.detach().to_dtype(self.dtype)?.to_device(&self.device)?;
        // A detached tensor is never a variable, so `from_tensor` copies it.
        let var = Var::from_tensor(&t)?;
        self.register(self.path(name), var.clone(), self.role)?;
        Ok(var)
    }

    fn create(&self, shape: Shape, name: &str, init: ParamInit, role: ParamRole) -> Result<Var> {
        let path = self.path(name);
        if self.store.entries.lock().expect("param store lock").contains_key(&path) {
            candle_core::bail!("variable `{path}` created twice");
        }
        let var = Var::from_tensor(&self.values(shape, &path, init)?)?;
        self.register(path, var.clone(), role)?;
        Ok(var)
    }

    fn register(&self, path: String, var: Var, role: ParamRole) -> Result<()> {
        let mut entries = self.store.entries.lock().expect("param store lock");
        if entries.contains_key(&path) {
            candle_core::bail!("variable `{path}` created twice");
        }
        entries.insert(path, Entry { var, role });
        Ok(())
    }

    /// The seeded initial values of the variable at `path`.
    fn values(&self, shape: Shape, path: &str, init: ParamInit) -> Result<Tensor> {
        let n = shape.elem_count();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ agm_core::stable_name_hash(path));
        let values: Vec<f64> = match init {
            ParamInit::Const(c) => vec![c; n],
            ParamInit::Uniform { bound } => (0..n).map(|_| rng.random_range(-bound..=bound)).collect(),
            ParamInit::Normal { mean, std } => (0..n)
                .map(|_| {
                    // Box-Muller keeps the stream independent of rand_distr's algorithm choices.
                    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
                    let u2: f64 = rng.random();
                    mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
                })
                .collect(),
        };
        Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn values(store: &ParamStore) -> Vec<(String, Vec<f32>)> {
        store.tensors().into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap())).collect()
    }

    #[test]
    fn a_refused_load_leaves_every_variable_as_it_was() {
        let store = ParamStore::new();
        let pb = store.builder(0, DType::F32, &Device::Cpu);
        pb.param(3, "a", ParamInit::Const(1.0)).unwrap();
        pb.param(2, "b", ParamInit::Const(2.0)).unwrap();
        let before = values(&store);
        let t = |n: usize, v: f32| Tensor::full(v, n, &Device::Cpu).unwrap();
        let cases = [
            (HashMap::from([("a".to_string(), t(3, 9.0))]), "missing tensor `b`"),
            (HashMap::from([("a".to_string(), t(3, 9.0)), ("b".to_string(), t(4, 9.0))]), "tensor `b` has shape [4]"),
            (
                HashMap::from([
                    ("a".to_string(), t(3, 9.0)),
                    ("b".to_string(), t(2, 9.0)),
                    ("c".to_string(), t(1, 9.0)),
                ]),
                "tensor `c` does not belong",
            ),
        ];
        for (tensors, expect) in cases {
            let err = store.load(&tensors).unwrap_err().to_string();
            assert!(err.contains(expect), "{err}");
            assert_eq!(values(&store), before, "after: {err}");
        }
        store.load(&HashMap::from([("a".to_string(), t(3, 9.0)), ("b".to_string(), t(2, 8.0))])).unwrap();
        assert_eq!(values(&store), vec![("a".into(), vec![9.0; 3]), ("b".into(), vec![8.0; 2])]);
    }
}
