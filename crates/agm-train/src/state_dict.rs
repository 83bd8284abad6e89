//! Weights from files: PyTorch state dicts (the official AGM code's `.pth.tar` checkpoints
//! included), safetensors state dicts and agm's own checkpoints, and the strict loader that sets a
//! model's variables from them.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use agm_core::MultimodalModel;
use candle_core::{Device, Tensor, Var};

use crate::error::{Result, TrainError};

/// The formats [`read_state_dict`] accepts, for error messages.
pub const ACCEPTED_FORMATS: &str = "PyTorch zip files (.pth, .pth.tar, .pt, .bin) and safetensors (.safetensors)";

/// Module-wrapper prefixes stripped from keys: the official code's `GradMod` keeps the model as
/// `net`, and `nn.DataParallel` keeps its module as `module`.
const WRAPPER_PREFIXES: [&str; 2] = ["module.", "net."];

/// Keys of a method's own variables in agm checkpoints; a model never owns them.
const METHOD_PREFIX: &str = "method.";

/// How many names each list of a [`KeyMismatch`] message shows.
const SHOWN: usize = 20;

fn is_pytorch(name: &str) -> bool {
    [".pth", ".pth.tar", ".pt", ".bin"].iter().any(|ext| name.ends_with(ext))
}

/// Reads the tensors of a weights file onto the CPU, by key.
///
/// PyTorch files take the top-level `state_dict` entry when there is one (the official
/// checkpoints' `{'epoch', 'state_dict', 'best_acc', 'optimizer'}`), else the top-level dict.
/// Safetensors files holding agm checkpoint keys (`model/<name>`) give their model tensors;
/// other safetensors files are taken as a plain state dict.
pub fn read_state_dict(path: &Path) -> Result<HashMap<String, Tensor>> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let unreadable = |why: String| TrainError::checkpoint(path, format!("{why}; accepted: {ACCEPTED_FORMATS}"));
    if !path.is_file() {
        return Err(unreadable("not found or not a file".into()));
    }
    let tensors = if name.ends_with(".safetensors") {
        // The name says safetensors, so the format is right and the content is not.
        let damaged = |why: String| {
            TrainError::checkpoint(
                path,
                format!("a damaged or cut-short safetensors file ({why}); restore it from a copy, or save it again"),
            )
        };
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        // agm's own files (run checkpoints, best weights) carry a checksum; others have none.
        crate::checkpoint::verify_checksum(&bytes).map_err(damaged)?;
        let all = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| damaged(crate::error::candle_message(&e)))?;
        if all.keys().any(|k| k.starts_with("model/")) {
            all.into_iter().filter_map(|(k, v)| k.strip_prefix("model/").map(|k| (k.to_string(), v))).collect()
        } else {
            all
        }
    } else if is_pytorch(&name) {
        // candle's reader skips such tensors, so they would surface as missing keys.
        let skipped = unreadable_pytorch_tensors(path);
        if !skipped.is_empty() {
            let shown: Vec<String> = skipped.iter().take(SHOWN).map(|(key, why)| format!("`{key}` ({why})")).collect();
            return Err(TrainError::checkpoint(
                path,
                format!(
                    "{} tensor(s) of a type agm cannot read: {}{}; agm reads float64, float32, float16, bfloat16, \
                     uint8 and int64 tensors: convert the others in PyTorch (`.long()` for integer and boolean \
                     tensors, `.float()` for the rest) and save again",
                    skipped.len(),
                    shown.join(", "),
                    if skipped.len() > SHOWN { ", …" } else { "" }
                ),
            ));
        }
        read_pytorch(path).map_err(|e| {
            let legacy = if is_legacy_pytorch(path) {
                "; it is in PyTorch's legacy format (`_use_new_zipfile_serialization=False`): save it again with \
                 `torch.save(torch.load(f), f)` in Python"
            } else {
                ""
            };
            unreadable(format!("not a readable PyTorch zip file ({e}){legacy}"))
        })?
    } else {
        return Err(unreadable("the file name has no known extension".into()));
    };
    if tensors.is_empty() {
        return Err(unreadable("the file holds no tensors".into()));
    }
    Ok(tensors)
}

/// Whether the file starts as PyTorch's pre-1.6 format does: a pickled protocol-2 long, the
/// format's magic number 0x1950a86a20f9469cfc6c.
fn is_legacy_pytorch(path: &Path) -> bool {
    const MAGIC: [u8; 14] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    let mut head = [0u8; 14];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head)).is_ok() && head == MAGIC
}

/// The tensors of a PyTorch zip file (its `state_dict` entry where it has one) whose storage
/// type candle cannot read, with candle's reason; empty where the file cannot be parsed (the
/// reader reports that).
fn unreadable_pytorch_tensors(path: &Path) -> Vec<(String, String)> {
    use candle_core::pickle::{Object, Stack};
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    let Ok(mut zip) = zip::ZipArchive::new(std::io::BufReader::new(file)) else { return Vec::new() };
    let pickles: Vec<String> = zip.file_names().filter(|n| n.ends_with("data.pkl")).map(String::from).collect();
    let mut skipped = Vec::new();
    for pickle in pickles {
        let Ok(entry) = zip.by_name(&pickle) else { continue };
        let mut stack = Stack::empty();
        if stack.read_loop(&mut std::io::BufReader::new(entry)).is_err() {
            continue;
        }
        let Ok(Object::Dict(mut entries)) = stack.finalize() else { continue };
        let state_dict = Object::Unicode("state_dict".into());
        if let Some(at) = entries.iter().position(|(k, _)| *k == state_dict) {
            match entries.swap_remove(at).1 {
                Object::Dict(inner) => entries = inner,
                _ => continue,
            }
        }
        let dir = Path::new(pickle.trim_end_matches(".pkl"));
        for (key, value) in entries {
            let name = match &key {
                Object::Unicode(name) => name.clone(),
                _ => continue,
            };
            if let Err(e) = value.into_tensor_info(key, dir) {
                skipped.push((name, crate::error::candle_message(&e)));
            }
        }
    }
    skipped
}

fn read_pytorch(path: &Path) -> candle_core::Result<HashMap<String, Tensor>> {
    use candle_core::pickle::read_all_with_key;
    // candle's reader errors when the key is absent, so a file without `state_dict` is read again
    // from its top level; the first error stays the one reported when that finds no tensors.
    match read_all_with_key(path, Some("state_dict")) {
        Ok(all) => Ok(all.into_iter().collect()),
        Err(first) => match read_all_with_key(path, None)? {
            all if all.is_empty() => Err(first),
            all => Ok(all.into_iter().collect()),
        },
    }
}

/// Why a state dict does not fit a model: names it lacks, names the model does not have, and
/// tensors of the wrong shape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyMismatch {
    /// Model variables the state dict lacks.
    pub missing: Vec<String>,
    /// State dict keys no model variable takes (after stripping wrapper prefixes).
    pub unexpected: Vec<String>,
    /// `name: file [..], model [..]` for each shape mismatch.
    pub shapes: Vec<String>,
}

impl KeyMismatch {
    /// True when the state dict fits: nothing missing, unexpected or misshapen.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shapes.is_empty()
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, what: &str, names: &[String]) -> fmt::Result {
    write!(f, "{} {what}: ", names.len())?;
    let shown: Vec<String> = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect();
    write!(f, "{}", shown.join(", "))?;
    if names.len() > SHOWN {
        write!(f, " and {} more", names.len() - SHOWN)?;
    }
    Ok(())
}

impl fmt::Display for KeyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (what, names) in
            [("missing", &self.missing), ("unexpected", &self.unexpected), ("with a wrong shape", &self.shapes)]
        {
            if names.is_empty() {
                continue;
            }
            if !first {
                write!(f, "; ")?;
            }
            first = false;
            write_list(f, what, names)?;
        }
        Ok(())
    }
}

/// The key a state-dict entry stands for among `names`: itself, or itself without the wrapper
/// prefixes the model's own names do not start with.
fn normalise<'a>(key: &'a str, names: &HashSet<&str>) -> &'a str {
    let mut key = key;
    while !names.contains(key) {
        let stripped = WRAPPER_PREFIXES.iter().find_map(|p| {
            let owned = names.iter().any(|n| n.starts_with(p));
            key.strip_prefix(p).filter(|_| !owned)
        });
        match stripped {
            Some(rest) => key = rest,
            None => break,
        }
    }
    key
}

/// Sets each named variable from `tensors`, all or nothing: keys are normalised (wrapper prefixes
/// stripped), dtypes converted (PyTorch's int64 `num_batches_tracked` included), and any missing
/// or unexpected key or wrong shape fails with every such name. Keys under `method.` are ignored
/// unless a variable is named so.
pub fn assign_strict(vars: &[(String, Var)], tensors: &HashMap<String, Tensor>) -> Result<()> {
    let names: HashSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    let mut by_name: HashMap<&str, &Tensor> = HashMap::new();
    let mut mismatch = KeyMismatch::default();
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    for key in keys {
        let name = normalise(key, &names);
        if !names.contains(name) {
            if !name.starts_with(METHOD_PREFIX) {
                mismatch.unexpected.push(key.clone());
            }
        } else if by_name.insert(name, &tensors[key]).is_some() {
            // Two keys for one variable (`x` and `net.x`): the second is one too many.
            mismatch.unexpected.push(key.clone());
        }
    }
    for (name, var) in vars {
        match by_name.get(name.as_str()) {
            None => mismatch.missing.push(name.clone()),
            Some(t) if t.dims() != var.dims() => {
                mismatch.shapes.push(format!("{name}: file {:?}, model {:?}", t.dims(), var.dims()))
            }
            Some(_) => {}
        }
    }
    if !mismatch.is_empty() {
        return Err(TrainError::Weights(mismatch));
    }
    for (name, var) in vars {
        let t = by_name[name.as_str()];
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

/// Sets every variable of `model` from `tensors` with [`assign_strict`].
pub fn load_weights(model: &dyn MultimodalModel, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let vars: Vec<(String, Var)> = model.param_groups().all_sorted().into_iter().map(|v| (v.name, v.var)).collect();
    assign_strict(&vars, tensors)
}

/// Reads a weights file with [`read_state_dict`] and loads it into `model` with
/// [`load_weights`]; errors name the file. Weights holding NaN or infinity are refused.
pub fn load_weights_file(model: &dyn MultimodalModel, path: &Path) -> Result<()> {
    let tensors = read_state_dict(path)?;
    let mut sorted: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    sorted.sort_by_key(|(k, _)| *k);
    if let Some(name) = crate::checkpoint::first_non_finite(sorted)? {
        return Err(TrainError::checkpoint(
            path,
            format!("tensor `{name}` holds NaN or infinity; pass finite weights"),
        ));
    }
    load_weights(model, &tensors).map_err(|e| match e {
        TrainError::Weights(m) => TrainError::checkpoint(
            path,
            format!("the weights do not fit the model ({m}); check --model and --dataset, or the file"),
        ),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    const PRESET: &str = "av-digits-early";

    fn model() -> Box<dyn MultimodalModel> {
        agm_fusion::build_preset(PRESET, &agm_fusion::PresetOptions::default(), 0, DType::F32, &Device::Cpu).unwrap()
    }

    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/official")
    }

    /// The model's variables as the official code would save them: `net.` keys, int64
    /// `num_batches_tracked`, values that differ from the model's own.
    fn official_state(model: &dyn MultimodalModel) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (j, v) in model.param_groups().all_sorted().into_iter().enumerate() {
            let t = if v.name.ends_with("num_batches_tracked") {
                Tensor::new(7 + j as i64, &Device::Cpu).unwrap()
            } else {
                (v.var.as_tensor().ones_like().unwrap() * (j as f64 + 0.5)).unwrap()
            };
            out.insert(format!("net.{}", v.name), t);
        }
        out
    }

    fn mismatch(err: TrainError) -> KeyMismatch {
        match err {
            TrainError::Weights(m) => m,
            other => panic!("expected a key mismatch, got {other}"),
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn net_prefixed_safetensors_state_dict_loads_every_variable() {
        let model = model();
        let state = official_state(model.as_ref());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("official.safetensors");
        candle_core::safetensors::save(&state, &path).unwrap();
        load_weights_file(model.as_ref(), &path).unwrap();
        for v in model.param_groups().all_sorted() {
            assert_eq!(values(v.var.as_tensor()), values(&state[&format!("net.{}", v.name)]), "{}", v.name);
        }
    }

    #[test]
    fn data_parallel_and_grad_mod_prefixes_are_both_stripped() {
        let model = model();
        let state: HashMap<String, Tensor> =
            official_state(model.as_ref()).into_iter().map(|(k, v)| (format!("module.{k}"), v)).collect();
        load_weights(model.as_ref(), &state).unwrap();
    }

    #[test]
    fn an_extra_key_is_named() {
        let model = model();
        let mut state = official_state(model.as_ref());
        state.insert("net.m_a_o.scale".into(), Tensor::new(1f32, &Device::Cpu).unwrap());
        let m = mismatch(load_weights(model.as_ref(), &state).unwrap_err());
        assert_eq!(m.unexpected, vec!["net.m_a_o.scale".to_string()]);
        assert!(m.missing.is_empty() && m.shapes.is_empty());
    }

    #[test]
    fn a_missing_key_is_named() {
        let model = model();
        let mut state = official_state(model.as_ref());
        state.remove("net.mm_encoder.bn1.running_var");
        let err = load_weights(model.as_ref(), &state).unwrap_err();
        assert!(err.to_string().contains("1 missing: `mm_encoder.bn1.running_var`"), "{err}");
        assert!(mismatch(err).unexpected.is_empty());
    }

    #[test]
    fn missing_and_unexpected_keys_come_in_one_message() {
        let model = model();
        let mut state = official_state(model.as_ref());
        let t = state.remove("net.head.fc.bias").unwrap();
        state.insert("net.head.fc.biass".into(), t);
        let err = load_weights(model.as_ref(), &state).unwrap_err().to_string();
        assert!(err.contains("1 missing: `head.fc.bias`"), "{err}");
        assert!(err.contains("1 unexpected: `net.head.fc.biass`"), "{err}");
    }

    #[test]
    fn a_wrong_shape_is_named_and_nothing_is_set() {
        let model = model();
        let before = values(model.param_groups().find("head.fc.bias").unwrap().var.as_tensor());
        let mut state = official_state(model.as_ref());
        state.insert("net.head.fc.weight".into(), Tensor::zeros((10, 64), DType::F32, &Device::Cpu).unwrap());
        let err = load_weights(model.as_ref(), &state).unwrap_err().to_string();
        assert!(err.contains("`head.fc.weight: file [10, 64], model [10, 128]`"), "{err}");
        assert_eq!(values(model.param_groups().find("head.fc.bias").unwrap().var.as_tensor()), before);
    }

    #[test]
    fn long_lists_are_capped() {
        let m = KeyMismatch { missing: (0..25).map(|i| format!("k{i}")).collect(), ..KeyMismatch::default() };
        let text = m.to_string();
        assert!(text.starts_with("25 missing: `k0`") && text.ends_with("`k19` and 5 more"), "{text}");
    }

    #[test]
    fn agm_checkpoints_give_their_model_tensors_and_ignore_method_ones() {
        let model = model();
        let state: HashMap<String, Tensor> =
            official_state(model.as_ref()).into_iter().map(|(k, v)| (k["net.".len()..].to_string(), v)).collect();
        let mut ck = crate::Checkpoint { model: state, ..crate::Checkpoint::default() };
        ck.model.insert("method.scale".into(), Tensor::new(2f32, &Device::Cpu).unwrap());
        ck.optimizer.insert("momentum.head.fc.bias".into(), Tensor::zeros(10, DType::F32, &Device::Cpu).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("best.safetensors");
        ck.save(&path).unwrap();
        let read = read_state_dict(&path).unwrap();
        assert!(read.contains_key("method.scale") && !read.keys().any(|k| k.starts_with("momentum")));
        load_weights_file(model.as_ref(), &path).unwrap();
    }

    #[test]
    fn unknown_or_unreadable_files_name_the_accepted_formats() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("weights.npz");
        std::fs::write(&odd, b"x").unwrap();
        let bad = dir.path().join("weights.pth");
        std::fs::write(&bad, b"not a zip").unwrap();
        for path in [odd, bad, dir.path().join("absent.pth.tar")] {
            let err = read_state_dict(&path).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()) && err.contains(ACCEPTED_FORMATS), "{err}");
        }
    }

    #[test]
    fn a_legacy_pytorch_file_is_named_as_such() {
        let tmp = tempfile::tempdir().unwrap();
        // The first bytes `torch.save(..., _use_new_zipfile_serialization=False)` writes.
        let path = tmp.path().join("legacy.pth");
        std::fs::write(
            &path,
            [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e],
        )
        .unwrap();
        let err = read_state_dict(&path).unwrap_err().to_string();
        assert!(err.contains("legacy.pth") && err.contains("legacy format") && err.contains("torch.save"), "{err}");
        std::fs::write(&path, b"not a checkpoint").unwrap();
        assert!(!read_state_dict(&path).unwrap_err().to_string().contains("legacy format"));
    }

    #[test]
    fn tensors_of_unreadable_types_are_named_not_reported_missing() {
        let path = fixtures().join("unreadable_dtypes.pth");
        let err = read_state_dict(&path).unwrap_err().to_string();
        assert!(err.contains("unreadable_dtypes.pth") && err.contains("2 tensor(s)"), "{err}");
        assert!(err.contains("`net.mask` (unsupported storage type BoolStorage)"), "{err}");
        assert!(err.contains("`net.count` (unsupported storage type IntStorage)"), "{err}");
        assert!(!err.contains("net.head.fc.bias") && err.contains(".long()"), "{err}");
    }

    #[test]
    fn a_bare_pytorch_state_dict_is_read_from_the_top_level() {
        let read = read_state_dict(&fixtures().join("plain_state_dict.pth")).unwrap();
        let keys: Vec<&String> = read.keys().collect();
        assert_eq!(keys, vec!["module.net.head.fc.bias"]);
        assert_eq!(values(&read["module.net.head.fc.bias"])[1], 0.25);
    }

    #[test]
    fn official_pytorch_checkpoint_loads() {
        let model = model();
        let path = fixtures().join(format!("{PRESET}.ckpt_full_epoch7.pth.tar"));
        let read = read_state_dict(&path).unwrap();
        assert_eq!(read["net.mm_encoder.bn1.num_batches_tracked"].dtype(), DType::I64);
        load_weights_file(model.as_ref(), &path).unwrap();
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join(format!("{PRESET}.expected.json"))).unwrap())
                .unwrap();
        let vars = model.param_groups().all_sorted();
        assert_eq!(vars.len(), expected.as_object().unwrap().len());
        for v in vars {
            let e = &expected[&v.name];
            let got = values(v.var.as_tensor());
            let dims: Vec<usize> = serde_json::from_value(e["shape"].clone()).unwrap();
            assert_eq!(v.var.dims(), dims.as_slice(), "{}", v.name);
            // The generator's values, recomputed: multiples of 1/1024, exact in f32.
            let index = e["index"].as_u64().unwrap() as usize;
            let want: Vec<f32> = if v.name.ends_with("num_batches_tracked") {
                vec![(1000 + index) as f32]
            } else {
                (0..got.len())
                    .map(|i| {
                        let raw = ((i * 37 + index * 101) % 2048) as f32;
                        if v.name.ends_with("running_var") {
                            (raw % 1024.0 + 1.0) / 1024.0
                        } else {
                            (raw - 1024.0) / 1024.0
                        }
                    })
                    .collect()
            };
            assert_eq!(got, want, "{}", v.name);
            let first: Vec<f32> = serde_json::from_value(e["first"].clone()).unwrap();
            assert_eq!(&got[..first.len()], first.as_slice(), "{}", v.name);
        }
    }
}
