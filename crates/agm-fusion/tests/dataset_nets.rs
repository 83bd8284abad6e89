//! The dataset networks of the reference (AVE's PSP net, MOSEI's MAT model) and their LSTM:
//! parameter counts, shapes, padding of absent modalities, gradients and the AVPS loss.

use std::sync::OnceLock;

use agm_core::{ForwardOpts, ModelOutput, MultimodalModel, NamedVar, Subset};
use agm_fusion::{AvePspNet, Lstm, MoseiMatConfig, MoseiMatNet, ParamStore};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    values(t).iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    values(a).iter().zip(values(b)).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// Seeded standard-normal values (candle's CPU generator cannot be seeded).
fn randn(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.random();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn param_count(vars: &[NamedVar]) -> usize {
    vars.iter().map(|v| v.var.elem_count()).sum()
}

fn names(vars: &[NamedVar]) -> Vec<&str> {
    vars.iter().map(|v| v.name.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// LSTM

/// PyTorch's documented LSTM cell, on scalars, for one direction (gate order i, f, g, o).
fn lstm_reference(
    x: &[Vec<f64>],
    w_ih: &[f64],
    w_hh: &[f64],
    b_ih: &[f64],
    b_hh: &[f64],
    h: usize,
    reverse: bool,
) -> Vec<Vec<f64>> {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let i_dim = x[0].len();
    let t_len = x.len();
    let (mut hs, mut cs) = (vec![0.0; h], vec![0.0; h]);
    let mut out = vec![vec![0.0; h]; t_len];
    for step in 0..t_len {
        let t = if reverse { t_len - 1 - step } else { step };
        let gate = |r: usize| -> f64 {
            let mut s = b_ih[r] + b_hh[r];
            for k in 0..i_dim {
                s += w_ih[r * i_dim + k] * x[t][k];
            }
            for k in 0..h {
                s += w_hh[r * h + k] * hs[k];
            }
            s
        };
        let mut new_h = vec![0.0; h];
        for j in 0..h {
            let (i, f, g, o) = (sig(gate(j)), sig(gate(h + j)), gate(2 * h + j).tanh(), sig(gate(3 * h + j)));
            cs[j] = f * cs[j] + i * g;
            new_h[j] = o * cs[j].tanh();
        }
        hs = new_h;
        out[t] = hs.clone();
    }
    out
}

#[test]
fn lstm_matches_the_pytorch_cell_equations_in_both_directions() {
    let (b, t, i, h) = (2, 4, 3, 2);
    let store = ParamStore::new();
    let lstm = Lstm::new(&store.builder(5, DType::F64, &Device::Cpu).pp("lstm"), i, h, true).unwrap();
    let mut names = store.names();
    names.sort();
    assert_eq!(
        names,
        [
            "lstm.bias_hh_l0",
            "lstm.bias_hh_l0_reverse",
            "lstm.bias_ih_l0",
            "lstm.bias_ih_l0_reverse",
            "lstm.weight_hh_l0",
            "lstm.weight_hh_l0_reverse",
            "lstm.weight_ih_l0",
            "lstm.weight_ih_l0_reverse"
        ]
    );
    let bound = 1.0 / (h as f64).sqrt();
    for n in &names {
        assert!(values(store.get(n).unwrap().as_tensor()).iter().all(|v| v.abs() <= bound), "{n} in U(±1/√H)");
    }
    assert_eq!(store.get("lstm.weight_ih_l0").unwrap().dims(), [4 * h, i]);
    assert_eq!(store.get("lstm.weight_hh_l0").unwrap().dims(), [4 * h, h]);
    let x = randn(&[b, t, i], 1, DType::F64);
    let y = lstm.forward(&x).unwrap();
    assert_eq!(y.dims(), [b, t, 2 * h]);
    let got = y.to_vec3::<f64>().unwrap();
    let xv = x.to_vec3::<f64>().unwrap();
    let p = |n: &str| values(store.get(&format!("lstm.{n}")).unwrap().as_tensor());
    for (bi, xs) in xv.iter().enumerate() {
        for (d, sfx) in ["", "_reverse"].iter().enumerate() {
            let want = lstm_reference(
                xs,
                &p(&format!("weight_ih_l0{sfx}")),
                &p(&format!("weight_hh_l0{sfx}")),
                &p(&format!("bias_ih_l0{sfx}")),
                &p(&format!("bias_hh_l0{sfx}")),
                h,
                d == 1,
            );
            for ti in 0..t {
                for j in 0..h {
                    assert!((got[bi][ti][d * h + j] - want[ti][j]).abs() < 1e-12, "b{bi} t{ti} dir{d} unit{j}");
                }
            }
        }
    }
}

#[test]
fn lstm_gradients_match_central_finite_differences() {
    let (b, t, i, h) = (2, 4, 3, 2);
    let store = ParamStore::new();
    let lstm = Lstm::new(&store.builder(11, DType::F64, &Device::Cpu), i, h, true).unwrap();
    let x = Var::from_tensor(&randn(&[b, t, i], 2, DType::F64)).unwrap();
    // A fixed random projection makes every output element matter with a different weight.
    let proj = randn(&[b, t, 2 * h], 3, DType::F64);
    let loss = |lstm: &Lstm| lstm.forward(x.as_tensor()).unwrap().mul(&proj).unwrap().sum_all().unwrap();
    let grads = loss(&lstm).backward().unwrap();
    let mut vars: Vec<(String, Var)> = store.names().into_iter().map(|n| (n.clone(), store.get(&n).unwrap())).collect();
    vars.push(("input".into(), x.clone()));
    let eps = 1e-6;
    for (name, var) in &vars {
        let analytic = values(grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} has a gradient")));
        let base = values(var.as_tensor());
        let mut numeric = vec![0.0; base.len()];
        for (k, g) in numeric.iter_mut().enumerate() {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[k] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                loss(&lstm).to_scalar::<f64>().unwrap()
            };
            *g = (at(eps) - at(-eps)) / (2.0 * eps);
        }
        var.set(&Tensor::from_vec(base, var.shape(), &Device::Cpu).unwrap()).unwrap();
        let scale = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = analytic.iter().zip(&numeric).fold(0.0f64, |m, (a, n)| m.max((a - n).abs())) / scale;
        assert!(scale > 0.0 && err <= 1e-6, "{name}: relative error {err:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// AVE

fn ave_inputs(b: usize, seed: u64) -> Vec<Tensor> {
    let audio = randn(&[b, 10, 128], seed, DType::F32);
    // VGG pool5 features are non-negative.
    let visual = randn(&[b, 10, 7, 7, 512], seed + 1, DType::F32).relu().unwrap();
    vec![audio, visual]
}

const AVE_UNUSED: [&str; 5] = ["linear_v.", "v_classify.", "a_classify.", "L3.", "L4."];

#[test]
fn ave_has_the_reference_parameters_names_and_groups() {
    let model = AvePspNet::new(0, DType::F32, &Device::Cpu).unwrap();
    let g = model.param_groups();
    let all = g.trainable();
    assert_eq!(param_count(&all), 1_667_251);
    assert!(g.buffers.is_empty());
    let used: Vec<NamedVar> =
        all.iter().filter(|v| !AVE_UNUSED.iter().any(|u| v.name.starts_with(u))).cloned().collect();
    assert_eq!(param_count(&used), 1_548_657);
    assert_eq!(g.head_weight.as_deref(), Some("L2.weight"));
    for n in [
        "fa.0.weight",
        "fa.1.weight",
        "attention.affine_audio.weight",
        "attention.affine_audio.bias",
        "attention.affine_g.weight",
        "lstm_a_v.lstm_audio.weight_ih_l0",
        "lstm_a_v.lstm_audio.bias_hh_l0_reverse",
        "psp.a_L1.weight",
        "psp.a_L2.weight",
        "psp.a_fc.weight",
        "a_classify.L1.weight",
        "a_classify.L2.weight",
    ] {
        assert_eq!(g.modality_of(n), Some(0), "{n} is audio");
    }
    for n in [
        "fv.0.weight",
        "fv.1.weight",
        "attention.affine_video.weight",
        "attention.affine_v.weight",
        "attention.affine_h.weight",
        "lstm_a_v.lstm_video.weight_hh_l0",
        "psp.v_L1.weight",
        "psp.v_L2.weight",
        "psp.v_fc.weight",
        "linear_v.weight",
        "linear_v.bias",
        "v_classify.L2.weight",
    ] {
        assert_eq!(g.modality_of(n), Some(1), "{n} is visual");
    }
    assert_eq!(
        names(&g.shared),
        [
            "L1.weight",
            "L2.weight",
            "L3.bias",
            "L3.weight",
            "L4.bias",
            "L4.weight",
            "psp.layer_norm.bias",
            "psp.layer_norm.weight"
        ]
    );
    assert_eq!(g.find("v_classify.L2.weight").unwrap().var.dims(), [28, 64], "Classify keeps 28 categories");
    // Xavier-uniform bounds where the reference applies it, PyTorch's default elsewhere.
    let within = |n: &str, bound: f64| {
        let v = values(g.find(n).unwrap().var.as_tensor());
        assert!(v.iter().all(|x| x.abs() <= bound * (1.0 + 1e-6)), "{n} within {bound}");
        assert!(v.iter().any(|x| x.abs() > 0.8 * bound), "{n} spreads over ±{bound}");
    };
    within("L2.weight", (6.0f64 / (64.0 + 29.0)).sqrt());
    within("attention.affine_h.weight", (6.0f64 / 50.0).sqrt());
    within("psp.v_fc.weight", (6.0f64 / 512.0).sqrt());
    within("attention.affine_video.bias", 1.0 / 512f64.sqrt());
    within("fa.0.weight", 1.0 / 128f64.sqrt());
    within("lstm_a_v.lstm_video.weight_ih_l0", 1.0 / 128f64.sqrt());
    within("L3.bias", 1.0 / 256f64.sqrt());
}

#[test]
fn ave_forward_shapes_dropout_and_absent_modalities() {
    let model = AvePspNet::new(1, DType::F32, &Device::Cpu).unwrap();
    let inputs = ave_inputs(2, 10);
    let out = model.forward(&inputs, &ForwardOpts::eval(2)).unwrap();
    assert_eq!(out.logits.dims(), [20, 29]);
    assert_eq!(out.fused_feature.dims(), [20, 256]);
    assert_eq!(out.encoder_features.len(), 2);
    assert!(out.encoder_features.iter().all(|f| f.dims() == [20, 256]));
    let att = out.aux.as_ref().unwrap();
    assert_eq!(att.dims(), [2, 10]);
    assert!(values(att).iter().all(|c| c.abs() <= 1.0 + 1e-5), "cosine similarities");

    // Evaluation is deterministic; training dropout follows the seed.
    let again = model.forward(&inputs, &ForwardOpts::eval(2)).unwrap();
    assert_eq!(max_diff(&out.logits, &again.logits), 0.0);
    let t1 = model.forward(&inputs, &ForwardOpts::train(2, 7)).unwrap();
    let t2 = model.forward(&inputs, &ForwardOpts::train(2, 7)).unwrap();
    let t3 = model.forward(&inputs, &ForwardOpts::train(2, 8)).unwrap();
    assert_eq!(max_diff(&t1.logits, &t2.logits), 0.0);
    assert!(max_diff(&t1.logits, &t3.logits) > 1e-6);
    assert!(max_diff(&t1.logits, &out.logits) > 1e-6);

    // An absent modality is exactly a zero input of its shape.
    for m in 0..2 {
        let kept = Subset::single(1 - m);
        let masked = model.forward(&inputs, &ForwardOpts::eval(2).with_present(kept)).unwrap();
        let mut zeroed = inputs.clone();
        zeroed[m] = zeroed[m].zeros_like().unwrap();
        let explicit = model.forward(&zeroed, &ForwardOpts::eval(2)).unwrap();
        assert_eq!(max_diff(&masked.logits, &explicit.logits), 0.0);
        assert_eq!(max_diff(masked.aux.as_ref().unwrap(), explicit.aux.as_ref().unwrap()), 0.0);
        assert!(max_diff(&masked.logits, &out.logits) > 1e-6, "muting modality {m} changes the output");
    }
}

#[test]
fn ave_avps_loss_matches_a_hand_computed_case() {
    let model = AvePspNet::new(0, DType::F64, &Device::Cpu).unwrap();
    // Clip 0: event class 3 on segments 2–4, so the target is 1/3 there. relu(att) sums to 2,
    // giving 0.25 on segments 2, 3, 4 and 9: squared errors 3·(1/12)² + 0.25² = 1/12.
    // Clip 1: background only, the target is 0.1 everywhere; relu(att) is all zero, so the
    // normalised similarity is 0 and the squared errors sum to 10·0.01 = 0.1.
    // 100 · mean over 20 segments = 5 · (1/12 + 0.1).
    let att = Tensor::new(&[[-0.5f64, 0.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5], [-1.0; 10]], &Device::Cpu).unwrap();
    let labels: Vec<u32> = [28, 28, 3, 3, 3, 28, 28, 28, 28, 28].into_iter().chain([28; 10]).collect();
    let target = AvePspNet::avps_target(&labels, 10);
    assert_eq!(&target[..5], &[0.0, 0.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]);
    assert!(target[10..].iter().all(|&t| t == 0.1));
    let dummy = Tensor::zeros((20, 29), DType::F64, &Device::Cpu).unwrap();
    let out = ModelOutput { aux: Some(att), ..ModelOutput::new(dummy.clone(), dummy, Vec::new()) };
    let want = 5.0 * (1.0 / 12.0 + 0.1);
    let as_u32 = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
    for labels in [as_u32.clone(), as_u32.to_dtype(DType::F32).unwrap(), as_u32.to_dtype(DType::I64).unwrap()] {
        let loss = model.aux_loss(&out, &labels).unwrap().unwrap().to_scalar::<f64>().unwrap();
        assert!((loss - want).abs() < 1e-7, "{loss} vs {want}");
    }
    // The smallest class present wins: a clip with classes 5 and 2 targets class 2.
    assert_eq!(AvePspNet::avps_target(&[5, 2, 2, 5], 4), vec![0.0, 0.5, 0.5, 0.0]);
    assert!(model.aux_loss(&out, &Tensor::zeros(19, DType::U32, &Device::Cpu).unwrap()).is_err());
}

#[test]
fn ave_joint_step_reaches_every_used_parameter_and_none_of_the_unused() {
    let model = AvePspNet::new(2, DType::F32, &Device::Cpu).unwrap();
    let inputs = ave_inputs(2, 20);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // Each clip: one event class on a run of segments, background elsewhere.
    let labels: Vec<u32> = (0..2)
        .flat_map(|_| {
            let class = rng.random_range(0..28u32);
            let start = rng.random_range(0..6usize);
            (0..10).map(move |s| if (start..start + 4).contains(&s) { class } else { 28 })
        })
        .collect();
    let labels = Tensor::new(labels.as_slice(), &Device::Cpu).unwrap();
    let out = model.forward(&inputs, &ForwardOpts::train(2, 9)).unwrap();
    let ce = candle_nn::loss::cross_entropy(&out.logits, &labels).unwrap();
    let aux = model.aux_loss(&out, &labels).unwrap().unwrap();
    let grads = (ce + aux).unwrap().backward().unwrap();
    for v in model.param_groups().trainable() {
        let g = grads.get(v.var.as_tensor());
        if AVE_UNUSED.iter().any(|u| v.name.starts_with(u)) {
            assert!(g.is_none_or(|g| max_abs(g) == 0.0), "{} is never used but got a gradient", v.name);
        } else {
            let g = g.unwrap_or_else(|| panic!("{} got no gradient", v.name));
            assert!(max_abs(g) > 0.0 && values(g).iter().all(|x| x.is_finite()), "{} has a zero gradient", v.name);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MOSEI

/// One paper-size model (41M parameters) shared by the MOSEI tests to keep the file fast.
fn mosei() -> &'static MoseiMatNet {
    static MODEL: OnceLock<MoseiMatNet> = OnceLock::new();
    MODEL.get_or_init(|| MoseiMatNet::new(&MoseiMatConfig::paper(50), 4, DType::F32, &Device::Cpu).unwrap())
}

/// Text ids `[B, 60]` with real tokens then padding (0), audio `[B, 60, 80]` with zero rows at
/// the end: sample b has `40 + 10·b` tokens and `30 + 20·b` frames.
fn mosei_inputs(b: usize, seed: u64) -> Vec<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..b)
        .flat_map(|s| (0..60).map(move |t| (s, t)))
        .map(|(s, t)| if t < 40 + 10 * s { rng.random_range(1..50) } else { 0 })
        .collect();
    let text = Tensor::from_vec(ids, (b, 60), &Device::Cpu).unwrap();
    let audio = randn(&[b, 60, 80], seed + 1, DType::F32);
    let keep: Vec<f32> = (0..b).flat_map(|s| (0..60).map(move |t| if t < 30 + 20 * s { 1.0 } else { 0.0 })).collect();
    let keep = Tensor::from_vec(keep, (b, 60, 1), &Device::Cpu).unwrap();
    vec![text, audio.broadcast_mul(&keep).unwrap()]
}

#[test]
fn mosei_has_the_reference_parameters_names_groups_and_shapes() {
    let model = mosei();
    let g = model.param_groups();
    assert_eq!(param_count(&g.trainable()), 41_237_596 + 300 * 50);
    assert_eq!(param_count(&g.trainable()), 41_252_596);
    assert_eq!(g.head_weight.as_deref(), Some("proj.weight"));
    assert_eq!(names(&g.shared), ["proj.bias", "proj.weight", "proj_norm.a_2", "proj_norm.b_2"]);
    let text = ["embedding.", "lstm_x.", "attflat_lang."];
    let text_block = [".sa1.", ".att_lang.", ".norm_l."];
    for v in &g.per_modality[0] {
        assert!(
            text.iter().any(|p| v.name.starts_with(p)) || text_block.iter().any(|p| v.name.contains(p)),
            "{} is not a text-stream variable",
            v.name
        );
    }
    for v in &g.per_modality[1] {
        assert!(
            ["adapter.", "attflat_img."].iter().any(|p| v.name.starts_with(p))
                || [".sa3.", ".att_audio.", ".norm_i."].iter().any(|p| v.name.contains(p)),
            "{} is not an audio-stream variable",
            v.name
        );
    }
    for n in [
        "embedding.weight",
        "lstm_x.weight_ih_l0",
        "lstm_x.bias_hh_l0",
        "enc_list.0.sa1.mhatt.linear_q.weight",
        "enc_list.0.sa1.ffn.mlp.fc.linear.weight",
        "enc_list.0.sa1.ffn.mlp.linear.bias",
        "enc_list.0.sa1.norm1.a_2",
        "enc_list.4.att_lang.mlp.linear.weight",
        "enc_list.4.norm_l.b_2",
        "attflat_lang.linear_merge.weight",
    ] {
        assert_eq!(g.modality_of(n), Some(0), "{n} is text");
    }
    for n in [
        "adapter.weight",
        "enc_list.5.sa3.mhatt2.linear_k.weight",
        "enc_list.5.sa3.norm3.a_2",
        "enc_list.0.att_audio.mlp.fc.linear.bias",
        "enc_list.0.norm_i.a_2",
        "attflat_img.mlp.linear.weight",
    ] {
        assert_eq!(g.modality_of(n), Some(1), "{n} is audio");
    }
    assert!(g.find("enc_list.5.att_lang.mlp.linear.weight").is_none(), "the last block has no AttFlat");
    assert_eq!(g.find("lstm_x.weight_hh_l0").unwrap().var.dims(), [2048, 512]);
    assert_eq!(g.find("enc_list.0.att_lang.mlp.linear.weight").unwrap().var.dims(), [60, 1024]);
    assert_eq!(g.find("attflat_img.linear_merge.weight").unwrap().var.dims(), [1024, 512]);
    assert!(g.find("lstm_x.weight_ih_l0_reverse").is_none(), "the text LSTM is one-directional");

    let inputs = mosei_inputs(2, 30);
    let out = model.forward(&inputs, &ForwardOpts::eval(2)).unwrap();
    assert_eq!(out.logits.dims(), [2, 2]);
    assert_eq!(out.fused_feature.dims(), [2, 1024]);
    assert_eq!(out.encoder_features.iter().map(|f| f.dims().to_vec()).collect::<Vec<_>>(), [[2, 1024], [2, 1024]]);
    assert!(out.aux.is_none());
    assert!(values(&out.logits).iter().all(|v| v.is_finite()));
    // Token ids may come as U32, I64 or F32.
    for dtype in [DType::I64, DType::F32] {
        let other = vec![inputs[0].to_dtype(dtype).unwrap(), inputs[1].clone()];
        let o = model.forward(&other, &ForwardOpts::eval(2)).unwrap();
        assert_eq!(max_diff(&o.logits, &out.logits), 0.0, "{dtype:?} ids");
    }
    // The AttFlat glimpses fix the length at 60.
    let short = vec![inputs[0].narrow(1, 0, 59).unwrap(), inputs[1].narrow(1, 0, 59).unwrap()];
    assert!(model.forward(&short, &ForwardOpts::eval(2)).is_err());
}

#[test]
fn mosei_absent_modalities_are_padded_but_keep_the_original_masks() {
    let model = mosei();
    let inputs = mosei_inputs(2, 40);
    let (text_mask, audio_mask) = MoseiMatNet::masks(&inputs[0], &inputs[1]).unwrap();
    let row_sums = |m: &Tensor| values(&m.to_dtype(DType::F32).unwrap().sum(1).unwrap());
    assert_eq!(row_sums(&text_mask), [20.0, 10.0]);
    assert_eq!(row_sums(&audio_mask), [30.0, 10.0]);

    // Text absent: token id 0 everywhere (an embedding row), masks of the real text.
    let no_text = model.forward(&inputs, &ForwardOpts::eval(2).with_present(Subset::single(1))).unwrap();
    let zero_ids = inputs[0].zeros_like().unwrap();
    let want = model.forward_masked(&zero_ids, &inputs[1], &text_mask, &audio_mask, false, 0).unwrap();
    assert_eq!(max_diff(&no_text.logits, &want.logits), 0.0);
    let (zero_text_mask, _) = MoseiMatNet::masks(&zero_ids, &inputs[1]).unwrap();
    let remasked = model.forward_masked(&zero_ids, &inputs[1], &zero_text_mask, &audio_mask, false, 0).unwrap();
    assert!(max_diff(&no_text.logits, &remasked.logits) > 1e-6, "the masks of the zeroed text would differ");

    // Audio absent: zero frames, masks of the real audio.
    let no_audio = model.forward(&inputs, &ForwardOpts::eval(2).with_present(Subset::single(0))).unwrap();
    let zero_audio = inputs[1].zeros_like().unwrap();
    let want = model.forward_masked(&inputs[0], &zero_audio, &text_mask, &audio_mask, false, 0).unwrap();
    assert_eq!(max_diff(&no_audio.logits, &want.logits), 0.0);
    let full = model.forward(&inputs, &ForwardOpts::eval(2)).unwrap();
    assert!(max_diff(&no_audio.logits, &full.logits) > 1e-6);

    // Audio frames of another width are refused with the shapes the model expects.
    let narrow = inputs[1].narrow(2, 0, 74).unwrap();
    let err = model.forward_masked(&inputs[0], &narrow, &text_mask, &audio_mask, false, 0).unwrap_err().to_string();
    assert!(err.contains("audio [B, 60, 80], got [2, 60] and [2, 60, 74]"), "{err}");
}

/// Biases whose gradient is zero in exact arithmetic, in PyTorch as here: a key bias adds the
/// same score to every key of a query, and an `AttFlat` glimpse bias the same logit to every
/// position, and a softmax over those positions ignores both.
fn softmax_invariant(name: &str) -> bool {
    name.ends_with("linear_k.bias")
        || (name.contains("att") && name.ends_with("mlp.linear.bias") && !name.contains("ffn"))
}

#[test]
fn mosei_joint_step_reaches_every_parameter() {
    let model = mosei();
    let inputs = mosei_inputs(2, 50);
    let labels = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    let out = model.forward(&inputs, &ForwardOpts::train(2, 3)).unwrap();
    let again = model.forward(&inputs, &ForwardOpts::eval(2)).unwrap();
    assert!(max_diff(&out.logits, &again.logits) > 1e-6, "dropout is active in training");
    assert!(model.aux_loss(&out, &labels).unwrap().is_none());
    let loss = candle_nn::loss::cross_entropy(&out.logits, &labels).unwrap();
    let grads = loss.backward().unwrap();
    let mut invariant = 0;
    for v in model.param_groups().trainable() {
        let g = grads.get(v.var.as_tensor()).unwrap_or_else(|| panic!("{} got no gradient", v.name));
        assert!(values(g).iter().all(|x| x.is_finite()), "{} has a non-finite gradient", v.name);
        if softmax_invariant(&v.name) {
            // Rounding noise only: far below the gradient of the matching weight.
            let w = grads.get(model.store().get(&v.name.replace(".bias", ".weight")).unwrap().as_tensor()).unwrap();
            assert!(max_abs(g) <= 1e-4 * max_abs(w), "{}: {:e} vs weight {:e}", v.name, max_abs(g), max_abs(w));
            invariant += 1;
        } else {
            assert!(max_abs(g) > 0.0, "{} has a zero gradient", v.name);
        }
    }
    // 6 blocks × 3 attentions (key biases) + 10 glimpse-60 AttFlats + 2 merging ones.
    assert_eq!(invariant, 6 * 3 + 10 + 2);
    // Padding positions look up id 0, so that row trains too.
    let emb = grads.get(model.store().get("embedding.weight").unwrap().as_tensor()).unwrap();
    let row0 = max_abs(&emb.get(0).unwrap());
    assert!(row0 > 0.0, "padding id 0 is looked up and trained, as in the reference");
}

#[test]
fn a_bidirectional_lstm_encodes_a_modality_with_each_direction_final_state() {
    use agm_fusion::Encoder as _;
    let store = agm_fusion::ParamStore::new();
    let lstm = agm_fusion::Lstm::new(&store.builder(1, DType::F64, &Device::Cpu), 3, 4, true).unwrap();
    let x = Tensor::arange(0f64, 2.0 * 5.0 * 3.0, &Device::Cpu).unwrap().affine(0.05, -0.5).unwrap();
    let x = x.reshape((2, 5, 3)).unwrap();
    let seq = lstm.forward(&x).unwrap();
    let feat = agm_fusion::Encoder::forward_t(&lstm, &x, true, 0).unwrap();
    assert_eq!(feat.dims(), &[2, 8]);
    let fwd_last = seq.narrow(1, 4, 1).unwrap().squeeze(1).unwrap().narrow(1, 0, 4).unwrap();
    let bwd_first = seq.narrow(1, 0, 1).unwrap().squeeze(1).unwrap().narrow(1, 4, 4).unwrap();
    let want = Tensor::cat(&[fwd_last, bwd_first], 1).unwrap();
    assert_eq!(feat.to_vec2::<f64>().unwrap(), want.to_vec2::<f64>().unwrap());
    assert!(!lstm.mode_dependent());
}

#[test]
fn an_lstm_refuses_a_sequence_of_length_zero() {
    let store = agm_fusion::ParamStore::new();
    let lstm = agm_fusion::Lstm::new(&store.builder(1, DType::F64, &Device::Cpu), 3, 4, true).unwrap();
    let empty = Tensor::zeros((2, 0, 3), DType::F64, &Device::Cpu).unwrap();
    let err = agm_fusion::Encoder::forward_t(&lstm, &empty, true, 0).unwrap_err().to_string();
    assert!(err.contains("at least one time step"), "{err}");
}
