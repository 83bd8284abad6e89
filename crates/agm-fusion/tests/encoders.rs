//! ResNet-18, Transformer and MaxOut encoders: reference parameter counts and names, shapes,
//! hand-computed forwards, finite-difference gradients and gradient coverage.

use agm_fusion::{
    Encoder, MaxOutMlp, ParamRole, ParamStore, ResNet18, ResNetConfig, ResNetInit, Transformer, TransformerConfig,
};
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// Deterministic, well-spread values in [-1, 1) (a SplitMix hash of the index and `salt`).
fn pattern_values(n: usize, salt: u64) -> Vec<f64> {
    (0..n as u64)
        .map(|i| {
            let mut z = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

fn pattern(dims: &[usize], salt: u64, dtype: DType) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec(pattern_values(n, salt), dims, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

/// A store and a builder whose trainable variables belong to modality 0.
fn builder(seed: u64, dtype: DType) -> (ParamStore, agm_fusion::ParamBuilder) {
    let store = ParamStore::new();
    let pb = store.builder(seed, dtype, &Device::Cpu).with_role(ParamRole::Modality(0));
    (store, pb)
}

fn trainable_count(store: &ParamStore) -> usize {
    let g = store.groups(1);
    g.per_modality.iter().flatten().chain(g.shared.iter()).map(|v| v.var.elem_count()).sum()
}

/// Every trainable variable has a gradient that is not all zero.
fn assert_every_param_has_gradient(store: &ParamStore, grads: &GradStore, what: &str) {
    let trainable = store.groups(1).trainable();
    assert!(!trainable.is_empty());
    for nv in trainable {
        let g = grads.get(nv.var.as_tensor()).unwrap_or_else(|| panic!("{what}: no gradient for `{}`", nv.name));
        assert!(values(g).iter().any(|v| *v != 0.0), "{what}: gradient of `{}` is all zero", nv.name);
    }
}

/// A scalar loss that weighs every feature differently (a plain sum would cancel through the
/// final batch norm's zero-mean output).
fn weighted_loss(feature: &Tensor, salt: u64) -> Tensor {
    let r = pattern(feature.dims(), salt, feature.dtype());
    (feature * r).unwrap().sum_all().unwrap()
}

/// torchvision's resnet18 state-dict names without avgpool and fc.
fn torchvision_names() -> Vec<String> {
    let bn = |p: &str| {
        ["bias", "num_batches_tracked", "running_mean", "running_var", "weight"].map(|f| format!("{p}.{f}")).to_vec()
    };
    let mut names = vec!["conv1.weight".to_string()];
    names.extend(bn("bn1"));
    for stage in 1..=4 {
        for block in 0..2 {
            let p = format!("layer{stage}.{block}");
            names.push(format!("{p}.conv1.weight"));
            names.push(format!("{p}.conv2.weight"));
            names.extend(bn(&format!("{p}.bn1")));
            names.extend(bn(&format!("{p}.bn2")));
            if stage > 1 && block == 0 {
                names.push(format!("{p}.downsample.0.weight"));
                names.extend(bn(&format!("{p}.downsample.1")));
            }
        }
    }
    names.sort();
    names
}

#[test]
fn resnet18_has_the_torchvision_parameter_counts_and_names() {
    for (channels, expected) in [(1, 11_170_240), (3, 11_176_512)] {
        let (store, pb) = builder(0, DType::F32);
        let net = ResNet18::new(&pb, &ResNetConfig::reference(channels)).unwrap();
        assert_eq!(trainable_count(&store), expected, "{channels} input channels");
        assert_eq!(store.names(), torchvision_names());
        assert_eq!(store.get("conv1.weight").unwrap().dims(), &[64, channels, 7, 7]);
        assert_eq!(store.get("layer2.0.downsample.0.weight").unwrap().dims(), &[128, 64, 1, 1]);
        assert_eq!(store.groups(1).buffers.len(), 20 * 3, "running stats and counters of 20 batch norms");
        assert_eq!(Encoder::out_dim(&net), 512);
        assert!(Encoder::mode_dependent(&net));
    }
    // Names live under the builder's prefix.
    let store = ParamStore::new();
    let pb = store.builder(0, DType::F32, &Device::Cpu).pp("net").pp("audio_net");
    ResNet18::new(&pb, &ResNetConfig::weight_init(1)).unwrap();
    assert!(store.get("net.audio_net.layer4.1.bn2.running_var").is_some());
}

#[test]
fn resnet18_initialisations_follow_the_reference_and_cremad_weight_init() {
    let stats = |v: &[f64]| {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt())
    };
    let (store, pb) = builder(5, DType::F64);
    ResNet18::new(&pb, &ResNetConfig::reference(3)).unwrap();
    // kaiming_normal(fan_out, relu): std √(2 / (64·7·7)) for the stem, √(2 / (512·9)) in layer4.
    for (name, fan_out) in [("conv1.weight", 64.0 * 49.0), ("layer4.1.conv2.weight", 512.0 * 9.0)] {
        let (mean, std) = stats(&values(store.get(name).unwrap().as_tensor()));
        let want = (2.0f64 / fan_out).sqrt();
        assert!(mean.abs() < 0.05 * want && (std / want - 1.0).abs() < 0.05, "{name}: mean {mean} std {std}");
    }
    // BN weight ~ N(1, 0.02), bias 0; running stats at their defaults.
    let w = values(store.get("layer3.0.bn1.weight").unwrap().as_tensor());
    let (mean, std) = stats(&w);
    assert!((mean - 1.0).abs() < 0.01 && (std / 0.02 - 1.0).abs() < 0.25, "BN weight mean {mean} std {std}");
    assert!(values(store.get("layer3.0.bn1.bias").unwrap().as_tensor()).iter().all(|v| *v == 0.0));
    assert!(values(store.get("layer3.0.bn1.running_var").unwrap().as_tensor()).iter().all(|v| *v == 1.0));

    let (store, pb) = builder(5, DType::F64);
    ResNet18::new(&pb, &ResNetConfig { in_channels: 1, init: ResNetInit::WeightInit }).unwrap();
    // kaiming_uniform(fan_out, relu): U(±√(6 / fan_out)).
    let bound = (6.0f64 / (256.0 * 9.0)).sqrt();
    let v = values(store.get("layer3.1.conv1.weight").unwrap().as_tensor());
    assert!(v.iter().all(|x| x.abs() <= bound) && v.iter().any(|x| x.abs() > 0.99 * bound));
    assert!(values(store.get("layer1.0.bn2.weight").unwrap().as_tensor()).iter().all(|v| *v == 1.0));
}

#[test]
fn resnet18_features_for_images_spectrograms_and_frame_sequences() {
    let (_store, pb) = builder(1, DType::F32);
    let mono = ResNet18::new(&pb.pp("mono"), &ResNetConfig::reference(1)).unwrap();
    let rgb = ResNet18::new(&pb.pp("rgb"), &ResNetConfig::weight_init(3)).unwrap();
    let digits = pattern(&[2, 1, 28, 28], 1, DType::F32);
    assert_eq!(mono.forward_t(&digits, true).unwrap().dims(), &[2, 512]);
    let spectrogram = pattern(&[1, 1, 112, 112], 2, DType::F32);
    assert_eq!(mono.feature_map(&spectrogram, false).unwrap().dims(), &[1, 512, 4, 4]);
    assert_eq!(Encoder::forward_t(&mono, &spectrogram, false, 0).unwrap().dims(), &[1, 512]);

    // [B, C, T, H, W]: in evaluation every frame is independent, so the feature is the mean of
    // the frames' features; this checks the frame/channel permutation.
    let video = pattern(&[2, 3, 2, 32, 32], 3, DType::F32);
    let feature = rgb.forward_t(&video, false).unwrap();
    assert_eq!(feature.dims(), &[2, 512]);
    let frame = |t: usize| rgb.forward_t(&video.narrow(2, t, 1).unwrap().squeeze(2).unwrap(), false).unwrap();
    let mean = ((frame(0) + frame(1)).unwrap() * 0.5).unwrap();
    let diff = values(&(feature - mean).unwrap()).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(diff < 1e-5, "video feature differs from the mean of frame features by {diff}");
    assert_eq!(rgb.forward_t(&video, true).unwrap().dims(), &[2, 512]);
    assert!(mono.forward_t(&pattern(&[2, 28, 28], 4, DType::F32), false).is_err());
}

/// One CREMA-D-shaped training step in f64: analytic gradients against central differences.
#[test]
fn resnet18_spectrogram_gradients_match_finite_differences() {
    let (store, pb) = builder(11, DType::F64);
    let net = ResNet18::new(&pb, &ResNetConfig::weight_init(1)).unwrap();
    let x = pattern(&[1, 1, 257, 188], 21, DType::F64);
    // Train mode normalises with batch statistics; the running statistics it updates on every
    // forward never enter a train-mode output, so repeated forwards evaluate the same function.
    let loss = || weighted_loss(&net.forward_t(&x, true).unwrap(), 22);
    let l = loss();
    let grads = l.backward().unwrap();
    assert_every_param_has_gradient(&store, &grads, "ResNet18 257×188");

    // A step of h moves some ReLU and max-pool inputs across their kinks, an error of order h
    // that grows with the number of activations a weight reaches: the stem's weights move every
    // activation downstream, so they take a smaller step (rounding is still ~1e-8 relative there).
    let probes = [
        ("conv1.weight", 1e-7),
        ("bn1.weight", 1e-7),
        ("layer3.1.conv2.weight", 1e-5),
        ("layer4.0.downsample.0.weight", 1e-5),
    ];
    for (name, h) in probes {
        let var = store.get(name).unwrap();
        let g = values(grads.get(var.as_tensor()).unwrap());
        // The largest entry: its relative error is not dominated by rounding of a tiny value.
        let idx = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        let fd = central_difference(&var, idx, h, || loss().to_scalar::<f64>().unwrap());
        let rel = (fd - g[idx]).abs() / g[idx].abs().max(fd.abs());
        assert!(rel <= 1e-6, "{name}[{idx}]: analytic {} vs finite difference {fd} (relative {rel:e})", g[idx]);
    }
}

/// `(f(w + h) − f(w − h)) / 2h` for entry `idx` of `var`, restoring the variable afterwards.
fn central_difference(var: &Var, idx: usize, h: f64, f: impl Fn() -> f64) -> f64 {
    let orig = var.as_tensor().copy().unwrap();
    let base = values(&orig);
    let at = |delta: f64| {
        let mut v = base.clone();
        v[idx] += delta;
        var.set(&Tensor::from_vec(v, orig.shape(), orig.device()).unwrap()).unwrap();
        f()
    };
    let (plus, minus) = (at(h), at(-h));
    var.set(&orig).unwrap();
    (plus - minus) / (2.0 * h)
}

#[test]
fn resnet18_every_parameter_gets_a_gradient_for_images_and_videos() {
    let (store, pb) = builder(2, DType::F32);
    let net = ResNet18::new(&pb, &ResNetConfig::reference(1)).unwrap();
    let l = weighted_loss(&net.forward_t(&pattern(&[2, 1, 32, 32], 5, DType::F32), true).unwrap(), 6);
    assert_every_param_has_gradient(&store, &l.backward().unwrap(), "ResNet18 image");

    let (store, pb) = builder(3, DType::F32);
    let net = ResNet18::new(&pb, &ResNetConfig::weight_init(3)).unwrap();
    let l = weighted_loss(&net.forward_t(&pattern(&[2, 3, 2, 32, 32], 7, DType::F32), true).unwrap(), 8);
    assert_every_param_has_gradient(&store, &l.backward().unwrap(), "ResNet18 video");
}

#[test]
fn transformer_parameter_counts_match_the_reference() {
    for (features, expected) in [(81, 44_174_080), (371, 44_396_800), (300, 44_342_272)] {
        let (store, pb) = builder(0, DType::F32);
        let cfg = TransformerConfig::urfunny(features);
        assert_eq!((cfg.dim, cfg.heads, cfg.layers, cfg.ff_dim, cfg.dropout), (768, 4, 8, 2048, 0.1));
        let net = Transformer::new(&pb, &cfg).unwrap();
        assert_eq!(trainable_count(&store), expected, "{features} input features");
        assert!(store.groups(1).buffers.is_empty());
        assert_eq!(Encoder::out_dim(&net), 768);
        assert!(Encoder::mode_dependent(&net));
        assert_eq!(store.get("conv.weight").unwrap().dims(), &[768, features, 1]);
        assert_eq!(store.get("transformer.layers.7.self_attn.in_proj_weight").unwrap().dims(), &[2304, 768]);
        assert!(store.get("transformer.layers.8.norm1.weight").is_none());
    }
}

fn small_transformer(dropout: f64) -> TransformerConfig {
    TransformerConfig { in_features: 6, dim: 16, heads: 4, layers: 3, ff_dim: 32, dropout }
}

#[test]
fn transformer_layers_start_identical_but_are_separate_variables() {
    let (store, pb) = builder(4, DType::F32);
    Transformer::new(&pb, &small_transformer(0.1)).unwrap();
    let fields = [
        "self_attn.in_proj_weight",
        "self_attn.in_proj_bias",
        "self_attn.out_proj.weight",
        "self_attn.out_proj.bias",
        "linear1.weight",
        "linear1.bias",
        "linear2.weight",
        "linear2.bias",
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
    ];
    let get = |layer: usize, field: &str| store.get(&format!("transformer.layers.{layer}.{field}")).unwrap();
    for field in fields {
        for layer in 1..3 {
            assert_eq!(values(get(0, field).as_tensor()), values(get(layer, field).as_tensor()), "{field}");
        }
    }
    assert_eq!(store.names().len(), 1 + 3 * fields.len());
    // PyTorch's initialisation: zero attention biases, uniform weights within their bounds.
    assert!(values(get(0, "self_attn.in_proj_bias").as_tensor()).iter().all(|v| *v == 0.0));
    assert!(values(get(0, "self_attn.out_proj.bias").as_tensor()).iter().all(|v| *v == 0.0));
    let xavier = (6.0f64 / (16.0 + 48.0)).sqrt();
    assert!(values(get(0, "self_attn.in_proj_weight").as_tensor()).iter().all(|v| v.abs() <= xavier + 1e-7));
    let b1 = values(get(0, "linear1.bias").as_tensor());
    assert!(b1.iter().all(|v| v.abs() <= 0.25 + 1e-7) && b1.iter().any(|v| *v != 0.0));
    // Each layer owns its storage: changing one leaves the others alone.
    let w = get(1, "linear2.weight");
    w.set(&w.as_tensor().zeros_like().unwrap()).unwrap();
    assert!(values(get(0, "linear2.weight").as_tensor()).iter().any(|v| *v != 0.0));
    assert!(values(get(2, "linear2.weight").as_tensor()).iter().any(|v| *v != 0.0));
}

/// Sets every variable of `store` to distinct pattern values (norm and BN scales around 1,
/// variances positive) so a hand computation exercises every weight.
fn scramble(store: &ParamStore) {
    for (i, name) in store.names().iter().enumerate() {
        let var = store.get(name).unwrap();
        let p = pattern(var.dims(), 100 + i as u64, DType::F64);
        let p = if name.ends_with("norm1.weight") || name.ends_with("norm2.weight") || name.ends_with("running_var") {
            p.abs().unwrap().affine(0.5, 1.0).unwrap()
        } else if name.ends_with("num_batches_tracked") {
            p.zeros_like().unwrap()
        } else {
            (p * 0.5).unwrap()
        };
        var.set(&p.to_dtype(var.dtype()).unwrap()).unwrap();
    }
}

fn mat(store: &ParamStore, name: &str) -> Vec<Vec<f64>> {
    let t = store.get(name).unwrap().as_tensor().to_dtype(DType::F64).unwrap();
    let rows = t.dim(0).unwrap();
    t.reshape((rows, ())).unwrap().to_vec2().unwrap()
}

fn vec1(store: &ParamStore, name: &str) -> Vec<f64> {
    values(store.get(name).unwrap().as_tensor())
}

/// `x Wᵀ + b` row by row.
fn affine(x: &[Vec<f64>], w: &[Vec<f64>], b: Option<&[f64]>) -> Vec<Vec<f64>> {
    x.iter()
        .map(|row| {
            w.iter()
                .enumerate()
                .map(|(o, wr)| wr.iter().zip(row).map(|(a, c)| a * c).sum::<f64>() + b.map_or(0.0, |b| b[o]))
                .collect()
        })
        .collect()
}

fn layer_norm(x: &[Vec<f64>], g: &[f64], b: &[f64]) -> Vec<Vec<f64>> {
    x.iter()
        .map(|r| {
            let n = r.len() as f64;
            let mean = r.iter().sum::<f64>() / n;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            r.iter().enumerate().map(|(j, v)| (v - mean) / (var + 1e-5).sqrt() * g[j] + b[j]).collect()
        })
        .collect()
}

/// The reference's forward for one sample `[L, F]`, written out from PyTorch's definitions.
fn transformer_by_hand(store: &ParamStore, cfg: &TransformerConfig, x: &[Vec<f64>]) -> Vec<f64> {
    let (d, heads) = (cfg.dim, cfg.heads);
    let hd = d / heads;
    let mut h = affine(x, &mat(store, "conv.weight"), None);
    for layer in 0..cfg.layers {
        let p = |f: &str| format!("transformer.layers.{layer}.{f}");
        let in_bias = vec1(store, &p("self_attn.in_proj_bias"));
        let qkv = affine(&h, &mat(store, &p("self_attn.in_proj_weight")), Some(&in_bias));
        let l = h.len();
        let mut ctx = vec![vec![0.0; d]; l];
        for head in 0..heads {
            let col = |part: usize, i: usize, t: usize| qkv[i][part * d + head * hd + t];
            for (i, ctx_row) in ctx.iter_mut().enumerate() {
                let scores: Vec<f64> = (0..l)
                    .map(|j| (0..hd).map(|t| col(0, i, t) * col(1, j, t)).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for t in 0..hd {
                    ctx_row[head * hd + t] = (0..l).map(|j| e[j] / z * col(2, j, t)).sum();
                }
            }
        }
        let out_bias = vec1(store, &p("self_attn.out_proj.bias"));
        let sa = affine(&ctx, &mat(store, &p("self_attn.out_proj.weight")), Some(&out_bias));
        let res: Vec<Vec<f64>> =
            h.iter().zip(&sa).map(|(a, b)| a.iter().zip(b).map(|(u, v)| u + v).collect()).collect();
        let x1 = layer_norm(&res, &vec1(store, &p("norm1.weight")), &vec1(store, &p("norm1.bias")));
        let b1 = vec1(store, &p("linear1.bias"));
        let mut ff = affine(&x1, &mat(store, &p("linear1.weight")), Some(&b1));
        ff.iter_mut().flatten().for_each(|v| *v = v.max(0.0));
        let b2 = vec1(store, &p("linear2.bias"));
        let ff = affine(&ff, &mat(store, &p("linear2.weight")), Some(&b2));
        let res: Vec<Vec<f64>> =
            x1.iter().zip(&ff).map(|(a, b)| a.iter().zip(b).map(|(u, v)| u + v).collect()).collect();
        h = layer_norm(&res, &vec1(store, &p("norm2.weight")), &vec1(store, &p("norm2.bias")));
    }
    h[0].clone()
}

#[test]
fn transformer_matches_a_hand_computation_and_reads_the_first_step() {
    let cfg = small_transformer(0.1);
    let (store, pb) = builder(6, DType::F64);
    let net = Transformer::new(&pb, &cfg).unwrap();
    scramble(&store);
    let x = pattern(&[2, 4, 6], 9, DType::F64);
    let y = net.forward_t(&x, false, 0).unwrap();
    assert_eq!(y.dims(), &[2, 16]);
    let rows: Vec<Vec<Vec<f64>>> = x.to_vec3().unwrap();
    let got: Vec<Vec<f64>> = y.to_vec2().unwrap();
    for (b, sample) in rows.iter().enumerate() {
        let want = transformer_by_hand(&store, &cfg, sample);
        let diff = want.iter().zip(&got[b]).fold(0.0f64, |m, (a, c)| m.max((a - c).abs()));
        assert!(diff < 1e-10, "sample {b}: differs from the hand computation by {diff}");
    }
    // Without positions, the first step's output ignores the order of the other steps.
    let swapped =
        Tensor::cat(&[x.narrow(1, 0, 1).unwrap(), x.narrow(1, 3, 1).unwrap(), x.narrow(1, 1, 2).unwrap()], 1).unwrap();
    let diff =
        values(&(net.forward_t(&swapped, false, 0).unwrap() - &y).unwrap()).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(diff < 1e-12);
    // Dropout: seeded in training, off in evaluation.
    let t1 = values(&net.forward_t(&x, true, 3).unwrap());
    assert_eq!(t1, values(&net.forward_t(&x, true, 3).unwrap()));
    assert_ne!(t1, values(&net.forward_t(&x, true, 4).unwrap()));
    assert_ne!(t1, values(&y));
    assert_eq!(values(&net.forward_t(&x, false, 5).unwrap()), values(&y));
    assert!(net.forward_t(&pattern(&[2, 4, 5], 9, DType::F64), false, 0).is_err());
    let (_s, pb) = builder(6, DType::F64);
    assert!(!Encoder::mode_dependent(&Transformer::new(&pb, &small_transformer(0.0)).unwrap()));
}

#[test]
fn transformer_every_parameter_gets_a_gradient() {
    let (store, pb) = builder(7, DType::F32);
    let net = Transformer::new(&pb, &small_transformer(0.1)).unwrap();
    let y = Encoder::forward_t(&net, &pattern(&[2, 4, 6], 10, DType::F32), true, 11).unwrap();
    assert_eq!(y.dims(), &[2, 16]);
    assert_every_param_has_gradient(&store, &weighted_loss(&y, 12).backward().unwrap(), "Transformer");
}

#[test]
fn maxout_mlp_matches_the_reference_count_names_and_a_hand_computation() {
    let (store, pb) = builder(0, DType::F32);
    let mlp = MaxOutMlp::new(&pb, 1024, 2048, 1024).unwrap();
    assert_eq!(trainable_count(&store), 8_402_944);
    assert_eq!(mlp.out_dim(), 1024);
    for name in ["bn1.running_var", "maxout1.fc.weight", "module1.0.weight", "maxout2.fc.bias", "module2.0.bias"] {
        assert!(store.get(name).is_some(), "{name}");
    }
    assert_eq!(store.get("maxout1.fc.weight").unwrap().dims(), &[4096, 1024]);

    // Evaluation mode by hand: BN with running statistics, then max over consecutive pairs.
    let (store, pb) = builder(1, DType::F64);
    let mlp = MaxOutMlp::new(&pb, 6, 4, 3).unwrap();
    scramble(&store);
    let x = pattern(&[3, 6], 13, DType::F64);
    let bn = |h: Vec<Vec<f64>>, p: &str, eps: f64| -> Vec<Vec<f64>> {
        let (m, v) = (vec1(&store, &format!("{p}.running_mean")), vec1(&store, &format!("{p}.running_var")));
        let (w, b) = (vec1(&store, &format!("{p}.weight")), vec1(&store, &format!("{p}.bias")));
        h.iter()
            .map(|r| r.iter().enumerate().map(|(j, x)| (x - m[j]) / (v[j] + eps).sqrt() * w[j] + b[j]).collect())
            .collect()
    };
    let maxout = |h: Vec<Vec<f64>>, p: &str| -> Vec<Vec<f64>> {
        let y = affine(&h, &mat(&store, &format!("{p}.fc.weight")), Some(&vec1(&store, &format!("{p}.fc.bias"))));
        y.iter().map(|r| r.chunks(2).map(|c| c[0].max(c[1])).collect()).collect()
    };
    let h = bn(x.to_vec2().unwrap(), "bn1", 1e-4);
    let h = bn(maxout(h, "maxout1"), "module1.0", 1e-5);
    let want = bn(maxout(h, "maxout2"), "module2.0", 1e-5);
    let got: Vec<Vec<f64>> = mlp.forward_t(&x, false, 0).unwrap().to_vec2().unwrap();
    let diff = want.iter().flatten().zip(got.iter().flatten()).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-12, "MaxOut differs from the hand computation by {diff}");
}

#[test]
fn maxout_mlp_backward_reaches_every_parameter() {
    let (store, pb) = builder(8, DType::F32);
    let mlp = MaxOutMlp::new(&pb, 12, 16, 8).unwrap();
    assert!(Encoder::mode_dependent(&mlp));
    let y = Encoder::forward_t(&mlp, &pattern(&[4, 12], 14, DType::F32), true, 15).unwrap();
    assert_eq!(y.dims(), &[4, 8]);
    assert_every_param_has_gradient(&store, &weighted_loss(&y, 16).backward().unwrap(), "MaxOutMlp");
    // Dropout masks follow the seed.
    let x = pattern(&[4, 12], 17, DType::F32);
    let a = values(&mlp.forward_t(&x, true, 1).unwrap());
    assert_eq!(a, values(&mlp.forward_t(&x, true, 1).unwrap()));
    assert_ne!(a, values(&mlp.forward_t(&x, true, 2).unwrap()));
}

#[test]
fn transformer_zero_feature_of_one_step_equals_the_whole_zero_sequence() {
    use agm_fusion::Encoder as _;
    let cfg = TransformerConfig { in_features: 5, dim: 8, heads: 2, layers: 2, ff_dim: 16, dropout: 0.1 };
    let nets = twin_nets(3, |pb| Transformer::new(pb, &cfg));
    // Seven steps attend through softmax; the one step takes its value as its context.
    let full = nets[0].1.forward_t(&Tensor::zeros((1, 7, 5), DType::F64, &Device::Cpu).unwrap(), false, 0).unwrap();
    let one = nets[1].1.zero_feature(&[7, 5], DType::F64, &Device::Cpu).unwrap();
    assert_one_pass_equals_two((&nets[1].0, &one, &one), (&nets[0].0, &full, &full));
}

/// The transformer's zero step carried along with the batch's tokens (evaluation mode, no
/// dropout) against a training pass followed by the separate zero-step pass: features, zero
/// feature and every gradient agree (f64, dropout on).
#[test]
fn transformer_zero_step_rides_along_with_the_batch() {
    use agm_fusion::Encoder as _;
    let cfg = TransformerConfig { in_features: 5, dim: 8, heads: 2, layers: 2, ff_dim: 16, dropout: 0.1 };
    let nets = twin_nets(3, |pb| Transformer::new(pb, &cfg));
    let x = pattern(&[3, 4, 5], 11, DType::F64);
    let (f1, z1) = nets[0].1.forward_with_zero_feature(&x, true, 7).unwrap();
    let f2 = nets[1].1.forward_t(&x, true, 7).unwrap();
    let z2 = nets[1].1.zero_feature(&[4, 5], DType::F64, &Device::Cpu).unwrap();
    // Dropout is on: a different seed must change the features.
    assert_ne!(values(&f2), values(&nets[1].1.forward_t(&x, true, 8).unwrap()));
    assert_one_pass_equals_two((&nets[0].0, &f1, &z1), (&nets[1].0, &f2, &z2));
}

/// An encoder without mode-dependent layers carries the zero sample as one more row of the
/// batch (the trait's default): equal to the training pass plus the separate zero pass.
#[test]
fn mode_independent_encoder_zero_sample_rides_along_with_the_batch() {
    use agm_fusion::{EncoderLayer as L, SequentialEncoder};
    let layers = [L::Flatten, L::Linear { in_dim: 12, out_dim: 7 }, L::Relu, L::Linear { in_dim: 7, out_dim: 4 }];
    let nets = twin_nets(5, |pb| SequentialEncoder::new(pb, &layers));
    assert!(!nets[0].1.mode_dependent());
    let x = pattern(&[3, 3, 4], 13, DType::F64);
    let (f1, z1) = nets[0].1.forward_with_zero_feature(&x, true, 0).unwrap();
    let f2 = nets[1].1.forward_t(&x, true, 0).unwrap();
    let z2 = nets[1].1.zero_feature(&[3, 4], DType::F64, &Device::Cpu).unwrap();
    assert_eq!(z1.dims(), &[1, 4]);
    assert_one_pass_equals_two((&nets[0].0, &f1, &z1), (&nets[1].0, &f2, &z2));
}

/// Two copies of one f64 network built from the same seed, each with its store.
fn twin_nets<E>(
    seed: u64,
    build: impl Fn(&agm_fusion::ParamBuilder) -> candle_core::Result<E>,
) -> Vec<(ParamStore, E)> {
    (0..2)
        .map(|_| {
            let (store, pb) = builder(seed, DType::F64);
            (store, build(&pb).unwrap())
        })
        .collect()
}

/// `a` within 1e-10 of `b`, relative to `b`'s largest magnitude.
fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    let d = values(&(a - b).unwrap()).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let s = values(b).iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    assert!(d <= 1e-10 * s, "{what}: differs by {d} (scale {s})");
}

/// Features and zero feature from one pass (`one`) equal those of two passes (`two`), and so do
/// the gradients of every trainable variable under one loss of both.
fn assert_one_pass_equals_two(one: (&ParamStore, &Tensor, &Tensor), two: (&ParamStore, &Tensor, &Tensor)) {
    let ((s1, f1, z1), (s2, f2, z2)) = (one, two);
    assert_close(f1, f2, "features");
    assert_close(z1, z2, "zero feature");
    let loss = |f: &Tensor, z: &Tensor| (weighted_loss(f, 1) + weighted_loss(z, 2)).unwrap();
    let (g1, g2) = (loss(f1, z1).backward().unwrap(), loss(f2, z2).backward().unwrap());
    let (t1, t2) = (s1.groups(1).trainable(), s2.groups(1).trainable());
    assert!(!t1.is_empty());
    for (a, b) in t1.iter().zip(&t2) {
        assert_close(g1.get(a.var.as_tensor()).unwrap(), g2.get(b.var.as_tensor()).unwrap(), &a.name);
    }
}

/// The fast Shapley path's single pass (the zero sample carried along the batch) against a
/// training pass followed by the evaluation pass on one zero sample: features, zero features,
/// gradients and running statistics agree, for images and frame sequences (f64).
#[test]
fn resnet18_zero_sample_rides_along_with_the_batch() {
    for (dims, channels) in [(vec![3, 1, 20, 20], 1), (vec![2, 3, 2, 16, 16], 3)] {
        let nets = twin_nets(7, |pb| ResNet18::new(pb, &ResNetConfig::reference(channels)));
        let x = pattern(&dims, 9, DType::F64);
        let (f1, z1) = nets[0].1.forward_with_zero_feature(&x, true, 0).unwrap();
        let f2 = Encoder::forward_t(&nets[1].1, &x, true, 0).unwrap();
        let z2 = nets[1].1.zero_feature(&dims[1..], DType::F64, &Device::Cpu).unwrap();
        assert_one_pass_equals_two((&nets[0].0, &f1, &z1), (&nets[1].0, &f2, &z2));
        // Running statistics too.
        for ((name, a), (_, b)) in nets[0].0.tensors().iter().zip(nets[1].0.tensors().iter()) {
            assert_close(a, b, name);
        }
    }
}

/// The faithful Shapley path's passes of one encoder in one call against a training pass, then
/// an evaluation pass over the same samples and the zero sample: features, evaluation
/// features, zero feature, every gradient and the running statistics agree (f64). Covers the
/// ResNet's evaluation tail (images and frame sequences), the transformer's parts with dropout
/// on, and the trait's separate passes.
#[test]
fn training_then_evaluation_passes_ride_along_in_one_call() {
    fn check<E: Encoder>(nets: &[(ParamStore, E)], dims: &[usize], with_zero: bool) {
        let x = pattern(dims, 9, DType::F64);
        // The evaluation inputs differ from the training ones (a muted modality trains on zeros).
        let eval_x = pattern(dims, 10, DType::F64);
        let (f1, e1, z1) = nets[0].1.forward_train_then_eval(&x, 5, &eval_x, with_zero).unwrap();
        let f2 = nets[1].1.forward_t(&x, true, 5).unwrap();
        let e2 = nets[1].1.forward_t(&eval_x, false, 0).unwrap();
        let z2 = with_zero.then(|| nets[1].1.zero_feature(&dims[1..], DType::F64, &Device::Cpu).unwrap());
        assert_eq!(z1.is_some(), with_zero);
        assert_close(&e1, &e2, "evaluation features");
        // The zero feature (or, without one, the evaluation features again) takes the place of
        // the second output.
        let (z1, z2) = (z1.unwrap_or_else(|| e1.clone()), z2.unwrap_or_else(|| e2.clone()));
        let (o1, o2) = (
            (&e1 + z1.broadcast_as(e1.shape()).unwrap()).unwrap(),
            (&e2 + z2.broadcast_as(e2.shape()).unwrap()).unwrap(),
        );
        assert_one_pass_equals_two((&nets[0].0, &f1, &o1), (&nets[1].0, &f2, &o2));
        for ((name, a), (_, b)) in nets[0].0.tensors().iter().zip(nets[1].0.tensors().iter()) {
            assert_close(a, b, name);
        }
    }
    for with_zero in [true, false] {
        for (dims, channels) in [(vec![3, 1, 20, 20], 1), (vec![2, 3, 2, 16, 16], 3)] {
            check(&twin_nets(7, |pb| ResNet18::new(pb, &ResNetConfig::reference(channels))), &dims, with_zero);
        }
        let cfg = TransformerConfig { in_features: 5, dim: 8, heads: 2, layers: 2, ff_dim: 16, dropout: 0.1 };
        check(&twin_nets(3, |pb| Transformer::new(pb, &cfg)), &[3, 4, 5], with_zero);
        check(&twin_nets(4, |pb| MaxOutMlp::new(pb, 12, 16, 8)), &[4, 12], with_zero);
    }
}
