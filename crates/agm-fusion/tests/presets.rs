//! Every model preset: the reference's parameter count, forward shapes, and one joint step that
//! gives every parameter a non-zero gradient (AVE's and MOSEI's own nets are checked the same
//! way in `dataset_nets.rs`).

use agm_core::{ForwardOpts, MultimodalModel};
use agm_fusion::{build_preset, preset_names, preset_spec, InputScale, PresetOptions};
use candle_core::{DType, Device, Tensor};

fn trainable_count(model: &dyn MultimodalModel) -> usize {
    model.param_groups().trainable().iter().map(|v| v.var.elem_count()).sum()
}

/// Seeded inputs of the preset's shapes (token ids in 1..vocab).
fn inputs(name: &str, opts: &PresetOptions, batch: usize) -> (Vec<Tensor>, Tensor) {
    let spec = preset_spec(name, opts).unwrap();
    let dev = Device::Cpu;
    let xs = spec
        .inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let mut shape = vec![batch];
            shape.extend(&input.shape);
            let n: usize = shape.iter().product();
            let v: Vec<f32> = match input.vocab {
                Some(vocab) => (0..n).map(|k| (1 + (k * 7 + i) % (vocab - 1)) as f32).collect(),
                None => (0..n).map(|k| ((k * 37 + i * 11) % 101) as f32 / 50.0 - 1.0).collect(),
            };
            Tensor::from_vec(v, shape, &dev).unwrap()
        })
        .collect();
    let labels: Vec<u32> = (0..batch * spec.segments).map(|k| (k % spec.classes) as u32).collect();
    (xs, Tensor::from_vec(labels, batch * spec.segments, &dev).unwrap())
}

#[test]
fn the_paper_presets_have_the_reference_parameter_counts() {
    let expected = [
        ("avmnist-late", 22_350_730),
        ("avmnist-late-sum", 22_350_740),
        ("avmnist-early", 30_753_674),
        ("cremad-late", 22_352_902),
        ("cremad-late-sum", 22_352_908),
        ("cremad-early", 30_755_846),
        ("urfunny-late", 132_917_762),
        ("urfunny-late-sum", 132_917_766),
        ("urfunny-early", 146_563_586),
        ("ave-psp", 1_667_251),
        ("mosei-mat", 41_252_596),
    ];
    let opts = PresetOptions::small();
    for (name, count) in expected {
        assert_eq!(preset_spec(name, &opts).unwrap().reference_params, Some(count), "{name}");
        let model = build_preset(name, &opts, 0, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(trainable_count(model.as_ref()), count, "{name}");
    }
}

#[test]
fn every_preset_builds_and_runs_forward_at_the_small_scale() {
    let opts = PresetOptions::small();
    let names = preset_names();
    // 4 families × 6 fusions, 9 uni-modal presets, ave-psp and mosei-mat.
    assert_eq!(names.len(), 35);
    for name in &names {
        // The transformer families are large; their forward is covered by the gradient test.
        if name.starts_with("urfunny") && name != "urfunny-late" && name != "urfunny-uni-text" {
            continue;
        }
        let spec = preset_spec(name, &opts).unwrap();
        let model = build_preset(name, &opts, 0, DType::F32, &Device::Cpu).unwrap();
        let (xs, _) = inputs(name, &opts, 2);
        let m = spec.inputs.len();
        assert_eq!(model.modalities().len(), m, "{name}");
        for (i, input) in spec.inputs.iter().enumerate() {
            assert_eq!(model.modalities().name(i), input.modality, "{name}");
        }
        let out = model.forward(&xs, &ForwardOpts::eval(m)).unwrap();
        assert_eq!(out.logits.dims(), &[2 * spec.segments, spec.classes], "{name}");
        assert_eq!(out.encoder_features.len(), m, "{name}");
        // The fusion alone over the pass's own features is the pass's fusion.
        match model.fuse(&out.encoder_features, false, 0).unwrap() {
            Some(logits) => {
                let diff = (logits - &out.logits).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name}");
            }
            None => assert!(name == "ave-psp" || name == "mosei-mat", "{name} has no fusion of its own"),
        }
    }
    let reference = PresetOptions { scale: InputScale::Reference, ..PresetOptions::default() };
    let cremad = preset_spec("cremad-late", &reference).unwrap();
    assert_eq!(cremad.inputs[0].shape, [1, 257, 188]);
    assert_eq!(cremad.inputs[1].shape, [3, 1, 224, 224]);
    let err = build_preset("avmnist-latest", &opts, 0, DType::F32, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("unknown model preset `avmnist-latest`") && err.contains("avmnist-late-sum"), "{err}");
    // A uni-modal preset is one modality's encoder and a linear head.
    let uni = preset_spec("cremad-uni-visual", &opts).unwrap();
    assert_eq!(uni.inputs.iter().map(|i| i.modality.as_str()).collect::<Vec<_>>(), ["visual"]);
    assert!(preset_spec("avmnist-uni-text", &opts).is_err(), "AV-MNIST has no text");
}

#[test]
fn one_joint_step_gives_every_parameter_of_the_paper_presets_a_gradient() {
    let opts = PresetOptions::small();
    for name in [
        "avmnist-late",
        "avmnist-late-sum",
        "avmnist-early",
        "cremad-late",
        "cremad-early",
        "urfunny-late",
        "urfunny-early",
        "av-digits-film",
        "av-digits-gated",
        "av-digits-crossmodal",
    ] {
        let model = build_preset(name, &opts, 0, DType::F32, &Device::Cpu).unwrap();
        let (xs, labels) = inputs(name, &opts, 2);
        let m = xs.len();
        let out = model.forward(&xs, &ForwardOpts::train(m, 3)).unwrap();
        let loss = candle_nn::loss::cross_entropy(&out.logits, &labels).unwrap();
        let grads = loss.backward().unwrap();
        for v in model.param_groups().trainable() {
            let g = grads.get(v.var.as_tensor()).unwrap_or_else(|| panic!("{name}: {} has no gradient", v.name));
            let max = g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // The last layer norm's bias shifts each encoder feature by a constant, which the
            // training-mode batch norm at the MaxOut input subtracts again: its gradient is zero
            // by construction (in PyTorch too).
            let cancelled = name.ends_with("-early") && v.name.ends_with("layers.7.norm2.bias");
            if cancelled {
                assert!(max < 1e-6, "{name}: {} should cancel, has gradient max {max}", v.name);
            } else {
                assert!(max > 0.0 && max.is_finite(), "{name}: {} has gradient max {max}", v.name);
            }
        }
    }
}

#[test]
fn cremad_presets_take_the_reference_weight_init_for_linear_layers() {
    let model = build_preset("cremad-early", &PresetOptions::small(), 0, DType::F32, &Device::Cpu).unwrap();
    let groups = model.param_groups();
    let head = groups.find("head.fc.weight").unwrap().var.as_tensor().clone();
    let bias = groups.find("head.fc.bias").unwrap().var.as_tensor().clone();
    assert_eq!(bias.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    let maxout = groups.find("mm_encoder.maxout1.fc.weight").unwrap().var.as_tensor().clone();
    for (w, fan_in, fan_out) in [(head, 1024.0, 6.0), (maxout, 1024.0, 4096.0)] {
        let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        let want = 2.0 / (fan_in + fan_out);
        assert!((var / want - 1.0).abs() < 0.1, "Xavier-normal variance {var} vs {want}");
    }
}
