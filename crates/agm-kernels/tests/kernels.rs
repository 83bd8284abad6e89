//! The CPU kernels (conv2d, pooling, layer norm, softmax, cross-entropy) against their
//! plain-candle references, forward and backward, and against central finite differences in f64.

use agm_kernels::{
    avg_pool2d, avg_pool2d_ref, conv2d, conv2d_ref, cross_entropy_per_sample, cross_entropy_per_sample_ref, layer_norm,
    layer_norm_ref, max_pool2d, max_pool2d_ref, softmax_last_dim, softmax_ref, Conv2dSpec, Pool2dSpec,
};
use candle_core::{DType, Device, Result, Shape, Tensor, Var};

/// An op under test: the differentiable inputs in, one output tensor out.
type Op<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

/// Deterministic uniform values in [−1, 1) (splitmix64), so the tests need no RNG crate.
fn uniform(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

fn random(shape: impl Into<Shape>, seed: u64, dtype: DType) -> Result<Tensor> {
    let shape = shape.into();
    Tensor::from_vec(uniform(shape.elem_count(), seed), shape, &Device::Cpu)?.to_dtype(dtype)
}

/// Distinct values 0.01 apart in a seeded order: no ties, and no near-ties a finite-difference
/// step could flip.
fn tie_free(shape: impl Into<Shape>, seed: u64, dtype: DType) -> Result<Tensor> {
    let shape = shape.into();
    let keys = uniform(shape.elem_count(), seed);
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
    let mut values = vec![0.0; keys.len()];
    for (rank, &i) in order.iter().enumerate() {
        values[i] = rank as f64 * 0.01 - 1.0;
    }
    Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(dtype)
}

fn flat(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// `max |a − b| / max(1, max |b|)`.
fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (flat(a)?, flat(b)?);
    let diff = a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    let scale = b.iter().fold(1.0f64, |m, y| m.max(y.abs()));
    Ok(diff / scale)
}

fn tolerance(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        1e-12
    } else {
        1e-5
    }
}

/// Output of `f` and the gradients of `Σ f(inputs) · proj` for every input. The inputs enter the
/// op through an `affine` node, so the op sits on an intermediate node of the graph (where a
/// backward that returned no gradient would make candle panic).
fn forward_backward(f: Op, inputs: &[Tensor], proj: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
    let vars = inputs.iter().map(Var::from_tensor).collect::<Result<Vec<_>>>()?;
    let xs = vars.iter().map(|v| v.as_tensor().affine(1.0, 0.0)).collect::<Result<Vec<_>>>()?;
    let out = f(&xs)?;
    let grads = (&out * proj)?.sum_all()?.backward()?;
    let gs = vars.iter().map(|v| grads.get(v).expect("every input gets a gradient").clone()).collect();
    Ok((out, gs))
}

/// Asserts that `ours` and `reference` agree forward and in every input gradient.
fn assert_matches_reference(ours: Op, reference: Op, inputs: &[Tensor], case: &str) -> Result<()> {
    let dtype = inputs[0].dtype();
    let proj = random(reference(inputs)?.shape(), 99, dtype)?;
    let (out_ref, g_ref) = forward_backward(reference, inputs, &proj)?;
    let (out, g) = forward_backward(ours, inputs, &proj)?;
    assert_eq!(out.dims(), out_ref.dims(), "{case}: output shape");
    let tol = tolerance(dtype);
    let d = rel_diff(&out, &out_ref)?;
    assert!(d <= tol, "{case} {dtype:?}: forward differs by {d:e}");
    for (i, (a, b)) in g.iter().zip(&g_ref).enumerate() {
        assert_eq!(a.dims(), b.dims(), "{case}: gradient {i} shape");
        let d = rel_diff(a, b)?;
        assert!(d <= tol, "{case} {dtype:?}: gradient of input {i} differs by {d:e}");
    }
    Ok(())
}

/// Asserts that every input gradient of `f` (f64) matches central differences of
/// `Σ f(inputs) · proj` with step `h`: `max |g − fd| / max(max |fd|, 1e-12) ≤ 1e-6`.
fn assert_finite_differences(f: Op, inputs: &[Tensor], h: f64, case: &str) -> Result<()> {
    let out = f(inputs)?;
    let proj = random(out.shape(), 7, DType::F64)?;
    let (_, grads) = forward_backward(f, inputs, &proj)?;
    let loss = |xs: &[Tensor]| -> Result<f64> { (f(xs)? * &proj)?.sum_all()?.to_scalar::<f64>() };
    for (i, grad) in grads.iter().enumerate() {
        let base = flat(&inputs[i])?;
        let mut fd = vec![0.0; base.len()];
        for (j, fd) in fd.iter_mut().enumerate() {
            let at = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += delta;
                let mut xs = inputs.to_vec();
                xs[i] = Tensor::from_vec(v, inputs[i].shape(), &Device::Cpu)?;
                loss(&xs)
            };
            *fd = (at(h)? - at(-h)?) / (2.0 * h);
        }
        let g = flat(grad)?;
        let err = g.iter().zip(&fd).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        let scale = fd.iter().fold(0.0f64, |m, b| m.max(b.abs())).max(1e-12);
        assert!(err / scale <= 1e-6, "{case}: input {i} gradient vs finite differences: rel. error {:e}", err / scale);
    }
    Ok(())
}

/// (input shape, kernel shape, stride, padding, what the case covers)
type ConvCase = ([usize; 4], [usize; 4], usize, usize, &'static str);

const CONV_CASES: [ConvCase; 6] = [
    ([2, 3, 9, 8], [4, 3, 3, 3], 2, 1, "3×3 s2 p1 on 9×8 (remainders 0 and 1)"),
    ([2, 2, 11, 10], [3, 2, 7, 7], 2, 3, "7×7 s2 p3 stem on 11×10 (remainders 0 and 1)"),
    ([2, 3, 6, 5], [4, 3, 3, 3], 1, 1, "3×3 s1 p1"),
    ([2, 4, 7, 6], [5, 4, 1, 1], 2, 0, "1×1 s2 downsample on 7×6"),
    ([2, 3, 5, 4], [2, 3, 1, 1], 1, 0, "1×1 s1 (no im2col)"),
    ([1, 2, 7, 6], [3, 2, 3, 2], 3, 1, "3×2 kernel, s3 p1"),
];

fn conv_op(stride: usize, padding: usize) -> impl Fn(&[Tensor]) -> Result<Tensor> {
    move |xs| conv2d(&xs[0], &xs[1], Conv2dSpec::new(stride, padding))
}

fn conv_ref_op(stride: usize, padding: usize) -> impl Fn(&[Tensor]) -> Result<Tensor> {
    move |xs| conv2d_ref(&xs[0], &xs[1], Conv2dSpec::new(stride, padding))
}

#[test]
fn conv2d_matches_reference() -> Result<()> {
    for (i, (xs, ws, s, p, case)) in CONV_CASES.into_iter().enumerate() {
        for dtype in [DType::F32, DType::F64] {
            let inputs = [random(&xs, 10 + i as u64, dtype)?, random(&ws, 20 + i as u64, dtype)?];
            assert_matches_reference(&conv_op(s, p), &conv_ref_op(s, p), &inputs, case)?;
        }
    }
    Ok(())
}

#[test]
fn conv2d_gradients_match_finite_differences() -> Result<()> {
    for (i, (xs, ws, s, p, case)) in CONV_CASES.into_iter().enumerate() {
        let inputs = [random(&xs, 30 + i as u64, DType::F64)?, random(&ws, 40 + i as u64, DType::F64)?];
        assert_finite_differences(&conv_op(s, p), &inputs, 1e-5, case)?;
    }
    Ok(())
}

#[test]
fn conv2d_handles_strided_input() -> Result<()> {
    let x = random((2, 3, 8, 9), 1, DType::F64)?.transpose(2, 3)?;
    let w = random((4, 3, 3, 3), 2, DType::F64)?;
    let spec = Conv2dSpec::new(2, 1);
    let d = rel_diff(&conv2d(&x, &w, spec)?, &conv2d_ref(&x, &w, spec)?)?;
    assert!(d <= 1e-12, "transposed input: {d:e}");
    Ok(())
}

#[test]
fn conv2d_runs_the_stem_on_a_257x188_spectrogram() -> Result<()> {
    let spec = Conv2dSpec::new(2, 3);
    let x = Var::from_tensor(&random((1, 1, 257, 188), 3, DType::F32)?)?;
    let w = Var::from_tensor(&random((8, 1, 7, 7), 4, DType::F32)?)?;
    let y = conv2d(x.as_tensor(), w.as_tensor(), spec)?;
    assert_eq!(y.dims(), [1, 8, 129, 94]);
    let proj = random(y.shape(), 5, DType::F32)?;
    let grads = (&y * &proj)?.sum_all()?.backward()?;
    let y_ref = conv2d_ref(x.as_tensor(), w.as_tensor(), spec)?;
    let grads_ref = (&y_ref * &proj)?.sum_all()?.backward()?;
    assert!(rel_diff(&y, &y_ref)? <= 1e-5);
    for v in [&x, &w] {
        let d = rel_diff(grads.get(v).unwrap(), grads_ref.get(v).unwrap())?;
        assert!(d <= 1e-5, "gradient differs by {d:e}");
    }
    Ok(())
}

#[test]
fn conv2d_computes_no_input_gradient_for_untracked_input() -> Result<()> {
    let x = random((2, 1, 13, 12), 6, DType::F32)?;
    let w = Var::from_tensor(&random((4, 1, 7, 7), 7, DType::F32)?)?;
    let y = conv2d(&x, w.as_tensor(), Conv2dSpec::new(2, 3))?;
    let grads = y.sqr()?.sum_all()?.backward()?;
    assert!(grads.get(&x).is_none(), "a raw image gets no gradient");
    assert!(grads.get(&w).is_some());
    Ok(())
}

#[test]
fn conv2d_rejects_bad_shapes_and_dtypes() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &dev)?;
    let w = Tensor::zeros((4, 3, 3, 3), DType::F32, &dev)?;
    let spec = Conv2dSpec::new(1, 1);
    let err = |r: Result<Tensor>| r.expect_err("an error, not a tensor").to_string();
    assert!(err(conv2d(&x, &Tensor::zeros((4, 2, 3, 3), DType::F32, &dev)?, spec)).contains("channels"));
    // Empty batches and images are not errors, just empty outputs.
    assert_eq!(conv2d(&x.narrow(0, 0, 0)?, &w, spec)?.dims(), [0, 4, 8, 8]);
    assert_eq!(conv2d(&x.narrow(2, 0, 1)?, &w, spec)?.dims(), [1, 4, 1, 8]);
    let tiny = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev)?;
    assert!(err(conv2d(&tiny, &w, Conv2dSpec::new(1, 0))).contains("smaller"));
    err(conv2d(&Tensor::zeros((3, 8, 8), DType::F32, &dev)?, &w, spec));
    err(conv2d(&x, &Tensor::zeros((4, 3, 3), DType::F32, &dev)?, spec));
    assert!(err(conv2d(&x, &w, Conv2dSpec::new(0, 1))).contains("stride"));
    assert!(err(conv2d(&x.to_dtype(DType::BF16)?, &w.to_dtype(DType::BF16)?, spec)).contains("f32 and f64"));
    assert!(err(conv2d(&x, &w.to_dtype(DType::F64)?, spec)).contains("dtypes differ"));
    Ok(())
}

/// (input shape, kernel, stride, padding)
const POOL_CASES: [([usize; 4], usize, usize, usize); 7] = [
    ([2, 3, 9, 9], 3, 2, 1),
    ([2, 3, 8, 10], 3, 2, 1),
    ([2, 2, 7, 6], 2, 2, 0),
    ([1, 2, 6, 7], 3, 1, 1),
    ([1, 2, 9, 8], 3, 3, 0),
    ([1, 1, 11, 9], 5, 3, 2),
    ([2, 1, 3, 4], 2, 1, 1),
];

type PoolFn = fn(&Tensor, Pool2dSpec) -> Result<Tensor>;

fn pool_op(f: PoolFn, spec: Pool2dSpec) -> impl Fn(&[Tensor]) -> Result<Tensor> {
    move |xs| f(&xs[0], spec)
}

#[test]
fn max_pool2d_matches_reference_on_tie_free_inputs() -> Result<()> {
    for (i, (shape, k, s, p)) in POOL_CASES.into_iter().enumerate() {
        let spec = Pool2dSpec::new(k, s, p);
        for dtype in [DType::F32, DType::F64] {
            let x = tie_free(&shape, 50 + i as u64, dtype)?;
            let case = format!("max pool {spec:?} on {shape:?}");
            assert_matches_reference(&pool_op(max_pool2d, spec), &pool_op(max_pool2d_ref, spec), &[x], &case)?;
        }
    }
    Ok(())
}

#[test]
fn max_pool2d_gradients_match_finite_differences() -> Result<()> {
    for (i, (shape, k, s, p)) in POOL_CASES.into_iter().enumerate() {
        let spec = Pool2dSpec::new(k, s, p);
        let x = tie_free(&shape, 60 + i as u64, DType::F64)?;
        assert_finite_differences(&pool_op(max_pool2d, spec), &[x], 1e-6, &format!("max pool {spec:?} on {shape:?}"))?;
    }
    Ok(())
}

#[test]
fn max_pool2d_gives_ties_to_the_first_element_in_row_major_order() -> Result<()> {
    let (h, w) = (6, 5);
    let spec = Pool2dSpec::new(3, 2, 1);
    let x = Var::from_tensor(&Tensor::ones((1, 1, h, w), DType::F32, &Device::Cpu)?)?;
    let y = max_pool2d(x.as_tensor(), spec)?;
    let g = y.sum_all()?.backward()?.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
    // PyTorch's rule: every window's gradient goes to its top-left element inside the input.
    let mut expected = vec![0.0f32; h * w];
    for oy in 0..spec.out_len(h) {
        for ox in 0..spec.out_len(w) {
            let (y0, x0) = ((oy * 2).saturating_sub(1), (ox * 2).saturating_sub(1));
            expected[y0 * w + x0] += 1.0;
        }
    }
    assert_eq!(g, expected);
    Ok(())
}

/// PyTorch's CPU max pool, written out: per window, the scan `v > best || isnan(v)` in row-major
/// order from −∞ at the window's first element. Returns the outputs and, for a loss
/// `Σ out · proj`, the input gradient.
fn brute_force_max_pool(x: &[f64], dims: [usize; 4], spec: Pool2dSpec, proj: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let [b, c, h, w] = dims;
    let (oh, ow, (k, s, p)) = (spec.out_len(h), spec.out_len(w), (spec.kernel, spec.stride, spec.padding));
    let (mut out, mut grad) = (Vec::new(), vec![0.0; x.len()]);
    for plane in 0..b * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (y0, x0) = ((oy * s).saturating_sub(p), (ox * s).saturating_sub(p));
                let (y1, x1) = ((oy * s + k - p).min(h), (ox * s + k - p).min(w));
                let (mut best, mut at) = (f64::NEG_INFINITY, plane * h * w + y0 * w + x0);
                for y in y0..y1 {
                    for xx in x0..x1 {
                        let i = plane * h * w + y * w + xx;
                        if x[i] > best || x[i].is_nan() {
                            (best, at) = (x[i], i);
                        }
                    }
                }
                grad[at] += proj[out.len()];
                out.push(best);
            }
        }
    }
    (out, grad)
}

#[test]
fn max_pool2d_follows_pytorch_on_ties_nan_and_infinities() -> Result<()> {
    let palette = [f64::NEG_INFINITY, -1.0, 0.0, 1.0, f64::NAN];
    for (i, (shape, k, s, p)) in POOL_CASES.into_iter().enumerate() {
        let spec = Pool2dSpec::new(k, s, p);
        for dtype in [DType::F32, DType::F64] {
            // Mostly ties; a NaN in about one element of 20.
            let keys = uniform(shape.iter().product(), 160 + i as u64);
            let values: Vec<f64> = keys
                .iter()
                .map(|u| if *u > 0.9 { f64::NAN } else { palette[((u + 1.0) * 2.0) as usize % 4] })
                .collect();
            let x = Var::from_tensor(&Tensor::from_vec(values.clone(), &shape, &Device::Cpu)?.to_dtype(dtype)?)?;
            let y = max_pool2d(x.as_tensor(), spec)?;
            let proj = random(y.shape(), 161, dtype)?;
            let g = (&y * &proj)?.sum_all()?.backward()?;
            let (want_y, want_g) = brute_force_max_pool(&values, shape, spec, &flat(&proj)?);
            let same = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
            let case = format!("{spec:?} on {shape:?}, {dtype:?}");
            assert!(flat(&y)?.iter().zip(&want_y).all(|(a, b)| same(*a, *b)), "{case}: forward");
            let got_g = flat(g.get(&x).unwrap())?;
            let err = got_g.iter().zip(&want_g).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-6, "{case}: gradient off by {err:e}");
        }
    }
    Ok(())
}

#[test]
fn max_pool2d_backward_survives_an_input_changed_after_the_forward_pass() -> Result<()> {
    let x = Var::from_tensor(&tie_free((1, 2, 7, 6), 170, DType::F64)?)?;
    let y = max_pool2d(x.as_tensor(), Pool2dSpec::new(3, 2, 1))?;
    x.set(&tie_free((1, 2, 7, 6), 171, DType::F64)?)?;
    let g = y.sum_all()?.backward()?;
    // Each output's gradient still lands on exactly one element of its window.
    let total = g.get(&x).unwrap().sum_all()?.to_scalar::<f64>()?;
    assert_eq!(total, y.elem_count() as f64);
    Ok(())
}

#[test]
fn max_pool2d_padding_never_wins() -> Result<()> {
    let x = Tensor::full(-5.0f32, (1, 1, 4, 4), &Device::Cpu)?;
    let y = max_pool2d(&x, Pool2dSpec::new(3, 2, 1))?;
    assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![-5.0; 4]);
    Ok(())
}

#[test]
fn avg_pool2d_matches_reference() -> Result<()> {
    for (i, (shape, k, s, p)) in POOL_CASES.into_iter().enumerate() {
        let spec = Pool2dSpec::new(k, s, p);
        for dtype in [DType::F32, DType::F64] {
            let x = random(&shape, 70 + i as u64, dtype)?;
            let case = format!("avg pool {spec:?} on {shape:?}");
            assert_matches_reference(&pool_op(avg_pool2d, spec), &pool_op(avg_pool2d_ref, spec), &[x], &case)?;
        }
    }
    Ok(())
}

#[test]
fn avg_pool2d_gradients_match_finite_differences() -> Result<()> {
    for (i, (shape, k, s, p)) in POOL_CASES.into_iter().enumerate() {
        let spec = Pool2dSpec::new(k, s, p);
        let x = random(&shape, 80 + i as u64, DType::F64)?;
        assert_finite_differences(&pool_op(avg_pool2d, spec), &[x], 1e-5, &format!("avg pool {spec:?} on {shape:?}"))?;
    }
    Ok(())
}

#[test]
fn pools_reject_bad_specs_and_shapes() -> Result<()> {
    let x = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu)?;
    for f in [max_pool2d as PoolFn, avg_pool2d] {
        assert!(f(&x, Pool2dSpec::new(0, 1, 0)).is_err());
        assert!(f(&x, Pool2dSpec::new(3, 0, 0)).is_err());
        assert!(f(&x, Pool2dSpec::new(3, 1, 2)).is_err(), "padding over half the kernel");
        assert!(f(&x, Pool2dSpec::new(5, 1, 0)).is_err(), "window larger than the input");
        assert!(f(&x.squeeze(0)?, Pool2dSpec::new(2, 2, 0)).is_err(), "rank 3");
        assert!(f(&x.narrow(2, 0, 0)?, Pool2dSpec::new(2, 2, 1)).is_err(), "no rows, only padding");
        let err = f(&x.to_dtype(DType::U8)?, Pool2dSpec::new(2, 2, 0)).unwrap_err().to_string();
        assert!(err.contains("f32 and f64"), "{err}");
    }
    Ok(())
}

fn layer_norm_op(xs: &[Tensor]) -> Result<Tensor> {
    layer_norm(&xs[0], &xs[1], &xs[2], 1e-5)
}

fn layer_norm_ref_op(xs: &[Tensor]) -> Result<Tensor> {
    layer_norm_ref(&xs[0], &xs[1], &xs[2], 1e-5)
}

#[test]
fn layer_norm_matches_reference() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        for (i, shape) in [vec![3, 4, 7], vec![5, 16], vec![2, 1]].into_iter().enumerate() {
            let d = *shape.last().unwrap();
            let seed = 100 + 3 * i as u64;
            let inputs =
                [random(shape.clone(), seed, dtype)?, random(d, seed + 1, dtype)?, random(d, seed + 2, dtype)?];
            assert_matches_reference(&layer_norm_op, &layer_norm_ref_op, &inputs, &format!("layer norm {shape:?}"))?;
        }
    }
    Ok(())
}

#[test]
fn layer_norm_gradients_match_finite_differences() -> Result<()> {
    let inputs = [random((3, 4, 7), 110, DType::F64)?, random(7, 111, DType::F64)?, random(7, 112, DType::F64)?];
    assert_finite_differences(&layer_norm_op, &inputs, 1e-5, "layer norm")
}

#[test]
fn layer_norm_handles_strided_input_and_rejects_bad_parameters() -> Result<()> {
    let x = random((6, 5), 120, DType::F64)?.t()?;
    let (g, b) = (random(6, 121, DType::F64)?, random(6, 122, DType::F64)?);
    let d = rel_diff(&layer_norm(&x, &g, &b, 1e-5)?, &layer_norm_ref(&x, &g, &b, 1e-5)?)?;
    assert!(d <= 1e-12, "{d:e}");
    assert!(layer_norm(&x, &random(5, 1, DType::F64)?, &b, 1e-5).is_err());
    assert!(layer_norm(&x, &g, &b, -1.0).is_err());
    assert!(layer_norm(&x.to_dtype(DType::F32)?, &g, &b, 1e-5).is_err(), "mixed dtypes");
    Ok(())
}

#[test]
fn softmax_matches_reference_and_finite_differences() -> Result<()> {
    let ours = |xs: &[Tensor]| softmax_last_dim(&xs[0]);
    let reference = |xs: &[Tensor]| softmax_ref(&xs[0]);
    for dtype in [DType::F32, DType::F64] {
        for (i, shape) in [vec![2, 3, 9], vec![4, 1], vec![7]].into_iter().enumerate() {
            let x = (random(shape.clone(), 130 + i as u64, dtype)? * 4.0)?;
            assert_matches_reference(&ours, &reference, &[x], &format!("softmax {shape:?}"))?;
        }
    }
    let x = (random((2, 3, 9), 140, DType::F64)? * 4.0)?;
    assert_finite_differences(&ours, &[x], 1e-5, "softmax")?;
    // Large logits: max-subtracted, so no overflow.
    let big = Tensor::new(&[[1000.0f32, 1001.0, 999.0]], &Device::Cpu)?;
    let d = rel_diff(&softmax_last_dim(&big)?, &softmax_ref(&big)?)?;
    assert!(d <= 1e-6, "{d:e}");
    Ok(())
}

#[test]
fn cross_entropy_matches_reference_and_finite_differences() -> Result<()> {
    let labels = Tensor::new(&[3u32, 0, 4, 4, 1, 2], &Device::Cpu)?;
    let ours = |xs: &[Tensor]| cross_entropy_per_sample(&xs[0], &labels);
    let reference = |xs: &[Tensor]| cross_entropy_per_sample_ref(&xs[0], &labels);
    for dtype in [DType::F32, DType::F64] {
        let logits = (random((6, 5), 150, dtype)? * 3.0)?;
        assert_matches_reference(&ours, &reference, &[logits], "cross entropy")?;
    }
    let logits = (random((6, 5), 151, DType::F64)? * 3.0)?;
    assert_finite_differences(&ours, &[logits], 1e-5, "cross entropy")?;
    // Value check on a case small enough to do by hand: −log(e² / (1 + e²)).
    let two = Tensor::new(&[[0.0f64, 2.0]], &Device::Cpu)?;
    let loss = cross_entropy_per_sample(&two, &Tensor::new(&[1u32], &Device::Cpu)?)?.to_vec1::<f64>()?;
    assert!((loss[0] - (1.0 + (-2.0f64).exp()).ln()).abs() < 1e-15);
    Ok(())
}

#[test]
fn cross_entropy_stays_accurate_for_extreme_logits_and_repeated_backward() -> Result<()> {
    let dev = Device::Cpu;
    // p[label] underflows in f32; the loss must still be ~10005, not inf.
    let logits = Var::new(&[[-1e4f32, 0.0, 5.0]], &dev)?;
    let loss = cross_entropy_per_sample(logits.as_tensor(), &Tensor::new(&[0u32], &dev)?)?;
    let want = 1e4 + (1.0 + 5.0f64.exp()).ln();
    assert!((loss.to_vec1::<f32>()?[0] as f64 - want).abs() / want < 1e-6);
    // The graph can be differentiated twice: the forward's softmax is kept, not consumed.
    let total = loss.sum_all()?;
    let (g1, g2) = (total.backward()?, total.backward()?);
    let (g1, g2) = (flat(g1.get(&logits).unwrap())?, flat(g2.get(&logits).unwrap())?);
    assert_eq!(g1, g2);
    assert!((g1[0] + 1.0).abs() < 1e-6 && (g1[1] + g1[2] - 1.0).abs() < 1e-6, "{g1:?}");
    Ok(())
}

#[test]
fn cross_entropy_rejects_bad_labels() -> Result<()> {
    let dev = Device::Cpu;
    let logits = Tensor::zeros((2, 3), DType::F32, &dev)?;
    for f in [cross_entropy_per_sample, cross_entropy_per_sample_ref] {
        let err = f(&logits, &Tensor::new(&[0u32, 3], &dev)?).unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
        assert!(f(&logits, &Tensor::new(&[0i64, 1], &dev)?).is_err(), "i64 labels");
        assert!(f(&logits, &Tensor::new(&[0u32], &dev)?).is_err(), "one label for two rows");
        assert!(f(&logits.unsqueeze(0)?, &Tensor::new(&[0u32, 1], &dev)?).is_err(), "rank-3 logits");
    }
    Ok(())
}
