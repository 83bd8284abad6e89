//! Layers and variables: PyTorch semantics, seeded and order-independent initialisation.

use agm_core::{ForwardOpts, MultimodalModel, Subset};
use agm_fusion::{dropout, BatchNorm, FusionModel, LateConcatConfig, ParamInit, ParamRole, ParamStore};
use candle_core::{DType, Device, Tensor};

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

#[test]
fn initialisation_is_seeded_and_independent_of_construction_order() {
    let dev = Device::Cpu;
    let a = ParamStore::new();
    let pa = a.builder(7, DType::F64, &dev);
    let x1 = pa.pp("x").param(10, "weight", ParamInit::Uniform { bound: 0.5 }).unwrap();
    let y1 = pa.pp("y").param(10, "weight", ParamInit::Uniform { bound: 0.5 }).unwrap();
    let b = ParamStore::new();
    let pb = b.builder(7, DType::F64, &dev);
    let y2 = pb.pp("y").param(10, "weight", ParamInit::Uniform { bound: 0.5 }).unwrap();
    let x2 = pb.pp("x").param(10, "weight", ParamInit::Uniform { bound: 0.5 }).unwrap();
    assert_eq!(values(x1.as_tensor()), values(x2.as_tensor()));
    assert_eq!(values(y1.as_tensor()), values(y2.as_tensor()));
    assert_ne!(values(x1.as_tensor()), values(y1.as_tensor()), "names draw different streams");
    let c = ParamStore::new();
    let x3 = c.builder(8, DType::F64, &dev).pp("x").param(10, "weight", ParamInit::Uniform { bound: 0.5 }).unwrap();
    assert_ne!(values(x1.as_tensor()), values(x3.as_tensor()), "seeds draw different streams");
    assert!(values(x1.as_tensor()).iter().all(|v| v.abs() <= 0.5));
    assert!(pa.pp("x").param(3, "weight", ParamInit::Const(0.0)).unwrap_err().to_string().contains("twice"));
}

#[test]
fn linear_layers_use_pytorch_default_bounds_and_groups_follow_roles() {
    let model = FusionModel::late_concat(&LateConcatConfig::av_digits(), 0, DType::F32, &Device::Cpu).unwrap();
    let groups = model.param_groups();
    assert_eq!(groups.per_modality.len(), 2);
    assert!(groups.per_modality[0].iter().all(|v| v.name.starts_with("audio_encoder.")));
    assert!(groups.per_modality[1].iter().all(|v| v.name.starts_with("visual_encoder.")));
    assert_eq!(groups.shared.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["head.fc.bias", "head.fc.weight"]);
    assert_eq!(groups.head_weight.as_deref(), Some("head.fc.weight"));
    let w = groups.find("visual_encoder.1.weight").unwrap();
    let bound = 1.0 / (784f64).sqrt();
    let v = values(w.var.as_tensor());
    assert!(v.iter().all(|x| x.abs() <= bound + 1e-7));
    assert!(v.iter().any(|x| x.abs() > 0.9 * bound), "values spread over the whole range");
}

#[test]
fn batch_norm_matches_pytorch_train_and_eval_semantics() {
    let dev = Device::Cpu;
    let store = ParamStore::new();
    let bn = BatchNorm::new(&store.builder(0, DType::F64, &dev).with_role(ParamRole::Shared), 2, 1e-5).unwrap();
    // Column 0: 1, 2, 3 (mean 2, biased var 2/3, unbiased var 1); column 1: constant 5.
    let x = Tensor::new(&[[1.0f64, 5.0], [2.0, 5.0], [3.0, 5.0]], &dev).unwrap();
    let y = bn.forward_t(&x, true).unwrap().to_vec2::<f64>().unwrap();
    let s = (2.0f64 / 3.0 + 1e-5).sqrt();
    assert!((y[0][0] - (-1.0 / s)).abs() < 1e-12 && (y[2][0] - 1.0 / s).abs() < 1e-12);
    assert!(y.iter().all(|r| r[1].abs() < 1e-12));
    let g = store.groups(0);
    let get = |n: &str| values(g.find(n).unwrap().var.as_tensor());
    // running = 0.9·running + 0.1·batch, with the unbiased variance.
    assert_eq!(get("running_mean"), vec![0.2, 0.5]);
    assert!((get("running_var")[0] - (0.9 + 0.1 * 1.0)).abs() < 1e-15);
    assert!((get("running_var")[1] - 0.9).abs() < 1e-15);
    assert_eq!(get("num_batches_tracked"), vec![1.0]);
    // Evaluation reads the running statistics and changes nothing.
    let e = bn.forward_t(&x, false).unwrap().to_vec2::<f64>().unwrap();
    assert!((e[0][0] - (1.0 - 0.2) / (1.0f64 + 1e-5).sqrt()).abs() < 1e-12);
    assert_eq!(get("num_batches_tracked"), vec![1.0]);
}

#[test]
fn dropout_is_seeded_scaled_and_off_in_evaluation() {
    let x = Tensor::ones((4, 50), DType::F32, &Device::Cpu).unwrap();
    let a = values(&dropout(&x, 0.5, true, 9).unwrap());
    let b = values(&dropout(&x, 0.5, true, 9).unwrap());
    let c = values(&dropout(&x, 0.5, true, 10).unwrap());
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
    let kept = a.iter().filter(|&&v| v > 0.0).count();
    assert!((60..140).contains(&kept), "about half kept, got {kept}");
    assert_eq!(values(&dropout(&x, 0.5, false, 9).unwrap()), values(&x));
    assert!(dropout(&x, 1.0, true, 0).is_err());
}

#[test]
fn an_absent_modality_is_fed_as_zeros() {
    let dev = Device::Cpu;
    let model = FusionModel::late_concat(&LateConcatConfig::av_digits(), 1, DType::F32, &dev).unwrap();
    let audio = Tensor::ones((2, 1, 13, 32), DType::F32, &dev).unwrap();
    let image = Tensor::ones((2, 1, 28, 28), DType::F32, &dev).unwrap();
    let only_audio = ForwardOpts::eval(2).with_present(Subset::single(0));
    let masked = model.forward(&[audio.clone(), image.clone()], &only_audio).unwrap();
    let zeros = model.forward(&[audio, image.zeros_like().unwrap()], &ForwardOpts::eval(2)).unwrap();
    assert_eq!(values(&masked.logits), values(&zeros.logits));
    assert_eq!(masked.fused_feature.dims(), &[2, 256]);
}
