//! Forward and backward of every op against its plain-candle reference.

use agm_kernels::{grad_scale, grad_scale_ref};
use candle_core::{DType, Device, Result, Tensor, Var, D};

fn inputs(dtype: DType) -> Result<(Var, Tensor)> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::arange(0f32, 12.0, &dev)?.affine(0.37, -1.3)?.reshape((3, 4))?.to_dtype(dtype)?)?;
    let w = Tensor::arange(0f32, 12.0, &dev)?.affine(-0.11, 0.5)?.reshape((3, 4))?.to_dtype(dtype)?;
    Ok((x, w))
}

#[test]
fn forward_is_bit_identical_to_input_even_when_strided() -> Result<()> {
    let (x, _) = inputs(DType::F32)?;
    let xt = x.as_tensor().t()?;
    for s in [0.0, 0.3, 0.5, 2.0] {
        let y = grad_scale(&xt, s)?;
        assert_eq!(y.to_vec2::<f32>()?, xt.to_vec2::<f32>()?);
    }
    Ok(())
}

#[test]
fn backward_is_exactly_scaled_including_zero() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let (x, w) = inputs(dtype)?;
        // A loss that sends a non-trivial gradient through the op.
        let plain = (x.as_tensor() * &w)?.sqr()?.sum_all()?.backward()?;
        let g_plain = plain.get(&x).unwrap().to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        for s in [0.0, 0.5, 2.0] {
            let y = grad_scale(x.as_tensor(), s)?;
            let grads = (&y * &w)?.sqr()?.sum_all()?.backward()?;
            let g = grads.get(&x).expect("a real gradient, also at s = 0");
            let g = g.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            for (a, b) in g.iter().zip(&g_plain) {
                // Scaling by 0, 0.5 and 2 is exact in binary floating point.
                assert_eq!(*a, b * s, "dtype {dtype:?}, s = {s}");
            }
        }
    }
    Ok(())
}

#[test]
fn matches_reference_forward_and_backward() -> Result<()> {
    let (x, w) = inputs(DType::F64)?;
    for s in [0.5, 2.0, 0.3] {
        let a = grad_scale(x.as_tensor(), s)?;
        let b = grad_scale_ref(x.as_tensor(), s)?;
        assert_eq!(a.to_vec2::<f64>()?, b.to_vec2::<f64>()?);
        let ga = (&a * &w)?.sum(D::Minus1)?.sqr()?.sum_all()?.backward()?;
        let gb = (&b * &w)?.sum(D::Minus1)?.sqr()?.sum_all()?.backward()?;
        let diff = (ga.get(&x).unwrap() - gb.get(&x).unwrap())?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff <= 1e-12, "s = {s}: max |Δ| = {diff}");
    }
    Ok(())
}

#[test]
fn reference_prunes_at_zero_but_op_does_not() -> Result<()> {
    let (x, w) = inputs(DType::F64)?;
    let g_ref = (grad_scale_ref(x.as_tensor(), 0.0)? * &w)?.sum_all()?.backward()?;
    assert!(g_ref.get(&x).is_none(), "the plain-op reference loses the path at s = 0");
    let g_op = (grad_scale(x.as_tensor(), 0.0)? * &w)?.sum_all()?.backward()?;
    let g = g_op.get(&x).expect("zeros, not None");
    assert_eq!(g.abs()?.max_all()?.to_scalar::<f64>()?, 0.0);
    Ok(())
}

#[test]
fn rejects_non_finite_scales() {
    let (x, _) = inputs(DType::F32).unwrap();
    let err = grad_scale(x.as_tensor(), f64::NAN).unwrap_err().to_string();
    assert!(err.contains("finite"), "{err}");
}

/// `agm_kernels::backward` gives the store `loss.backward()` gives: for parameters used by
/// several agm ops, by agm ops and candle ops together, and for a computed (non-variable) weight.
#[test]
fn backward_matches_candle_backward() -> Result<()> {
    use agm_kernels::{batch_norm, conv2d, layer_norm, linear, Conv2dSpec};
    let dev = Device::Cpu;
    let var = |shape: &[usize], seed: f64| -> Result<Var> {
        let n: usize = shape.iter().product();
        let t = Tensor::arange(0f64, n as f64, &dev)?.affine(0.7, seed)?.sin()?.reshape(shape)?;
        Var::from_tensor(&t)
    };
    let x = var(&[2, 2, 5, 5], 0.1)?.as_tensor().detach();
    let conv_w = var(&[2, 2, 3, 3], 0.2)?;
    let (bn_w, bn_b) = (var(&[2], 0.3)?, var(&[2], 0.4)?);
    let lin_v = var(&[3, 50], 0.5)?;
    let lin_b = var(&[3], 0.6)?;
    let (ln_g, ln_b) = (var(&[3], 0.7)?, var(&[3], 0.8)?);
    let spec = Conv2dSpec::new(1, 1);
    // The kernel twice (shared weights), the second time on the first output.
    let h = conv2d(&x, conv_w.as_tensor(), spec)?;
    let h = conv2d(&h.tanh()?, conv_w.as_tensor(), spec)?;
    let (h, _) = batch_norm(&h, bn_w.as_tensor(), bn_b.as_tensor(), None, 1e-5)?;
    // A computed weight: its gradient must go on to `lin_v` through candle.
    let lin_w = lin_v.as_tensor().affine(2.0, 0.0)?;
    let h = linear(&h.flatten_from(1)?, &lin_w, Some(lin_b.as_tensor()))?;
    let h = layer_norm(&h, ln_g.as_tensor(), ln_b.as_tensor(), 1e-5)?;
    // The kernel also in a candle op.
    let loss = (h.sqr()?.sum_all()? + conv_w.as_tensor().sqr()?.sum_all()?)?;
    let ours = agm_kernels::backward(&loss)?;
    let candle = loss.backward()?;
    for v in [&conv_w, &bn_w, &bn_b, &lin_v, &lin_b, &ln_g, &ln_b] {
        let (a, b) = (ours.get(v).expect("ours has every gradient"), candle.get(v).expect("candle has every gradient"));
        assert_eq!(a.dims(), b.dims());
        let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
        let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
        assert!(diff <= 1e-12 * scale.max(1.0), "gradient differs by {diff}");
    }
    Ok(())
}

/// A weight used twice gets its two gradients added in place; over many parallel chunks the sum
/// is candle's, bit for bit.
#[test]
fn a_shared_weight_sums_its_gradients_as_candle_does() -> Result<()> {
    use agm_kernels::linear;
    let dev = Device::Cpu;
    let w = Var::from_tensor(&Tensor::arange(0f32, 120_000.0, &dev)?.affine(1e-4, 0.2)?.sin()?.reshape((300, 400))?)?;
    let x = Tensor::arange(0f32, 2_000.0, &dev)?.affine(0.01, 0.3)?.cos()?.reshape((5, 400))?;
    let h = linear(&x, w.as_tensor(), None)?.tanh()?;
    let y = linear(&x.affine(0.5, 0.1)?, w.as_tensor(), None)?;
    let loss = (h.sqr()?.sum_all()? + y.sum_all()?)?;
    let (ours, candle) = (agm_kernels::backward(&loss)?, loss.backward()?);
    let values = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    assert_eq!(values(ours.get(&w).expect("a gradient"))?, values(candle.get(&w).expect("a gradient"))?);
    Ok(())
}

/// Dropout: the op's output and gradient equal the host-mask reference, strided input included;
/// the mask is the one recomputed in the backward, drops about `p` of the elements, and depends
/// on the seed. Dropout on leading rows gives those rows their own mask and leaves the rest.
#[test]
fn dropout_matches_its_reference_and_drops_about_p() -> Result<()> {
    use agm_kernels::{dropout, dropout_leading, dropout_leading_ref};
    let dev = Device::Cpu;
    let v = |t: &Tensor| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>();
    for dtype in [DType::F32, DType::F64] {
        // More elements than one parallel chunk, so chunk offsets enter the element index.
        let x = Tensor::arange(0f64, 60_000.0, &dev)?.affine(0.001, 0.5)?.reshape((200, 300))?.to_dtype(dtype)?;
        let x = Var::from_tensor(&x)?;
        let xt = x.as_tensor().t()?;
        let w = Tensor::arange(0f64, 60_000.0, &dev)?.cos()?.reshape((300, 200))?.to_dtype(dtype)?;
        for count in [60_000, 30_001, 0] {
            let (y, y_ref) = (dropout_leading(&xt, 0.3, 7, count)?, dropout_leading_ref(&xt, 0.3, 7, count)?);
            assert_eq!(v(&y)?, v(&y_ref)?);
            let (g, g_ref) = ((&y * &w)?.sum_all()?.backward()?, (&y_ref * &w)?.sum_all()?.backward()?);
            assert_eq!(v(g.get(&x).unwrap())?, v(g_ref.get(&x).unwrap())?);
        }

        let y = dropout(&xt, 0.3, 7)?;
        let g = (&y * &w)?.sum_all()?.backward()?;
        let kept: Vec<bool> = v(&y)?.iter().map(|&e| e != 0.0).collect();
        let dropped = kept.iter().filter(|&&k| !k).count() as f64 / kept.len() as f64;
        assert!((dropped - 0.3).abs() < 0.01, "dropped fraction {dropped}");
        let grad_kept: Vec<bool> = v(&g.get(&x).unwrap().t()?)?.iter().map(|&e| e != 0.0).collect();
        assert_eq!(kept, grad_kept, "the backward reuses the forward's mask");
        let other: Vec<bool> = v(&dropout(&xt, 0.3, 8)?)?.iter().map(|&e| e != 0.0).collect();
        assert_ne!(kept, other, "another seed gives another mask");

        let lead = v(&dropout_leading(&xt, 0.3, 7, 30_000)?)?;
        // The first 150 rows of `xt [300, 200]` are its first 30,000 elements.
        let alone = v(&dropout(&xt.narrow(0, 0, 150)?, 0.3, 7)?)?;
        assert!(lead[..30_000] == alone[..], "the leading rows get their own mask");
        assert!(lead[30_000..] == v(&xt)?[30_000..], "the other rows pass unchanged");
    }
    assert!(dropout(&Tensor::ones(3, DType::F32, &dev)?, 1.0, 0).is_err());
    Ok(())
}

/// Gaussian noise: the op equals its host reference bit for bit (odd lengths and strided input
/// included, more elements than one parallel chunk), its draws are standard normal, its gradient
/// is the scale, and another seed gives other draws.
#[test]
fn gaussian_noise_matches_its_reference_and_is_standard_normal() -> Result<()> {
    use agm_kernels::{add_gaussian_noise, add_gaussian_noise_ref};
    let dev = Device::Cpu;
    let v = |t: &Tensor| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>();
    for dtype in [DType::F32, DType::F64] {
        let x = Var::from_tensor(&Tensor::arange(0f64, 60_001.0, &dev)?.affine(1e-4, -3.0)?.to_dtype(dtype)?)?;
        for (scale, std, seed) in [(1.0, 0.5, 0), (0.3, 2.0, u64::MAX), (0.0, 1.0, 42)] {
            let (y, y_ref) = (add_gaussian_noise(&x, scale, std, seed)?, add_gaussian_noise_ref(&x, scale, std, seed)?);
            assert_eq!(v(&y)?, v(&y_ref)?, "{dtype:?} scale {scale} std {std} seed {seed}");
            let w = x.as_tensor().detach().cos()?;
            let g = (&y * &w)?.sum_all()?.backward()?;
            assert_eq!(v(g.get(&x).unwrap())?, v(&w.affine(scale, 0.0)?)?, "the gradient is the scale");
        }
        let xt = x.as_tensor().narrow(0, 0, 60_000)?.reshape((200, 300))?.t()?;
        assert_eq!(v(&add_gaussian_noise(&xt, 0.5, 1.0, 9)?)?, v(&add_gaussian_noise_ref(&xt, 0.5, 1.0, 9)?)?);

        let z = v(&add_gaussian_noise(&Tensor::zeros(1_000_001, dtype, &dev)?, 1.0, 1.0, 5)?)?;
        let n = z.len() as f64;
        let mean = z.iter().sum::<f64>() / n;
        let var = z.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n;
        let beyond_2 = z.iter().filter(|e| e.abs() > 2.0).count() as f64 / n;
        assert!(mean.abs() < 5e-3 && (var - 1.0).abs() < 5e-3, "mean {mean}, variance {var}");
        // P(|z| > 2) = 0.0455 for a standard normal.
        assert!((beyond_2 - 0.0455).abs() < 1e-3, "P(|z| > 2) = {beyond_2}");
        let lag1 = z.windows(2).map(|p| p[0] * p[1]).sum::<f64>() / n;
        assert!(lag1.abs() < 5e-3, "neighbouring draws correlate: {lag1}");
        let other = v(&add_gaussian_noise(&Tensor::zeros(1_000, dtype, &dev)?, 1.0, 1.0, 6)?)?;
        if dtype == DType::F32 {
            // Other dtypes take the reference: the f32 draws, rounded.
            let half = add_gaussian_noise(&Tensor::zeros(1_000, DType::BF16, &dev)?, 1.0, 1.0, 5)?;
            let want = Tensor::new(&z[..1_000], &dev)?.to_dtype(DType::F32)?.to_dtype(DType::BF16)?;
            assert_eq!(v(&half)?, v(&want)?);
        }
        assert!(other.iter().zip(&z).all(|(a, b)| a != b), "another seed gives other draws");
    }
    Ok(())
}

/// The f64 reductions: `dot`, `gram` and `std_unbiased` against candle ops in f64 (strided and
/// multi-chunk inputs included), bit for bit the same on one thread as on several, and `gram`'s
/// entries the very `dot` values.
#[test]
fn reductions_match_f64_candle_ops_and_do_not_depend_on_the_thread_count() -> Result<()> {
    use agm_kernels::{dot, gram, std_unbiased, sum_squares};
    let dev = Device::Cpu;
    let f64_sum = |t: &Tensor| t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>();
    let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{what}: {a} vs {b}");
    for dtype in [DType::F32, DType::F64] {
        let n = 100_003;
        let a = Tensor::arange(0f64, n as f64, &dev)?.affine(1e-3, 0.0)?.sin()?.to_dtype(dtype)?;
        let b = Tensor::arange(0f64, n as f64, &dev)?.affine(7e-4, 2.0)?.cos()?.affine(0.5, 0.3)?.to_dtype(dtype)?;
        let c =
            Tensor::arange(0f64, 300.0 * 200.0, &dev)?.affine(1e-4, -1.0)?.reshape((300, 200))?.to_dtype(dtype)?.t()?;
        let (a64, b64) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
        close(dot(&a, &b)?, f64_sum(&(&a64 * &b64)?)?, "dot");
        close(sum_squares(&a)?, f64_sum(&a64.sqr()?)?, "sum_squares");
        let c64 = c.to_dtype(DType::F64)?;
        close(dot(&c, &c.contiguous()?)?, f64_sum(&c64.sqr()?)?, "dot of a strided tensor");
        let mean = a64.mean_all()?;
        let want_std = (f64_sum(&a64.broadcast_sub(&mean)?.sqr()?)? / (n - 1) as f64).sqrt();
        close(std_unbiased(&a)?, want_std, "std_unbiased");
        let third = (&a + &b)?;
        let g = gram(&[a.clone(), b.clone(), third.clone()])?;
        let ts = [&a, &b, &third];
        for p in 0..3 {
            for q in 0..3 {
                assert_eq!(g[p * 3 + q].to_bits(), dot(ts[p], ts[q])?.to_bits(), "gram ({p}, {q})");
            }
        }
        let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let alone = one_thread
            .install(|| -> Result<_> { Ok((dot(&a, &b)?, std_unbiased(&a)?, gram(&[a.clone(), b.clone()])?)) })?;
        assert_eq!(alone, (dot(&a, &b)?, std_unbiased(&a)?, gram(&[a.clone(), b.clone()])?));
    }
    assert!(dot(&Tensor::ones(3, DType::F32, &dev)?, &Tensor::ones(4, DType::F32, &dev)?).is_err());
    assert!(gram(&[Tensor::ones(3, DType::F32, &dev)?, Tensor::ones(3, DType::F64, &dev)?]).is_err());
    assert_eq!(std_unbiased(&Tensor::ones(1, DType::F32, &dev)?)?, 0.0);
    Ok(())
}
