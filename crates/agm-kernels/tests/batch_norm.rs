//! The fused batch norm against its plain-op reference and central finite differences (f64).

use agm_kernels::{batch_norm, batch_norm_ref};
use candle_core::{DType, Device, Result, Tensor, Var};

fn seq(n: usize, a: f64, b: f64) -> Vec<f64> {
    (0..n).map(|i| ((i as f64 * a + b).sin() * 1.7) + 0.1 * i as f64 / n as f64).collect()
}

fn tensor(shape: &[usize], a: f64, b: f64) -> Result<Tensor> {
    Tensor::from_vec(seq(shape.iter().product(), a, b), shape, &Device::Cpu)
}

fn max_rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let s = b.abs()?.max_all()?.to_scalar::<f64>()?.max(1e-12);
    Ok(d / s)
}

/// Σ y·r for a fixed random-looking r, so every output element matters.
fn loss(y: &Tensor) -> Result<Tensor> {
    let r = tensor(y.dims(), 0.77, 0.3)?;
    (y * r)?.sum_all()
}

fn cases() -> Result<Vec<(Vec<usize>, bool)>> {
    Ok(vec![(vec![5, 3], true), (vec![5, 3], false), (vec![2, 3, 4, 5], true), (vec![2, 3, 4, 5], false)])
}

#[test]
fn forward_gradients_and_statistics_match_the_reference() -> Result<()> {
    for (shape, train) in cases()? {
        let c = shape[1];
        let x = Var::from_tensor(&tensor(&shape, 0.37, 0.1)?)?;
        let w = Var::from_tensor(&tensor(&[c], 1.3, 0.5)?)?;
        let b = Var::from_tensor(&tensor(&[c], 0.9, 0.2)?)?;
        let rm = tensor(&[c], 0.5, 0.0)?;
        let rv = tensor(&[c], 0.4, 0.0)?.abs()?.affine(1.0, 0.5)?;
        let running = (!train).then_some((&rm, &rv));
        let (y, stats) = batch_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), running, 1e-5)?;
        let (y_ref, stats_ref) = batch_norm_ref(x.as_tensor(), w.as_tensor(), b.as_tensor(), running, 1e-5)?;
        assert!(max_rel(&y, &y_ref)? < 1e-12, "{shape:?} train={train}: forward");
        assert_eq!(stats.is_some(), train);
        if let (Some(s), Some(r)) = (stats, stats_ref) {
            assert_eq!(s.count, r.count);
            for (a, b) in s.mean.iter().zip(&r.mean).chain(s.var.iter().zip(&r.var)) {
                assert!((a - b).abs() < 1e-12, "{shape:?}: statistics {a} vs {b}");
            }
        }
        let g = loss(&y)?.backward()?;
        let g_ref = loss(&y_ref)?.backward()?;
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let (a, r) = (g.get(v).expect("gradient"), g_ref.get(v).expect("reference gradient"));
            assert!(max_rel(a, r)? < 1e-12, "{shape:?} train={train}: gradient of {name}");
        }
    }
    Ok(())
}

#[test]
fn gradients_match_central_finite_differences() -> Result<()> {
    for (shape, train) in cases()? {
        let c = shape[1];
        let x0 = tensor(&shape, 0.37, 0.1)?;
        let w0 = tensor(&[c], 1.3, 0.5)?;
        let b0 = tensor(&[c], 0.9, 0.2)?;
        let rm = tensor(&[c], 0.5, 0.0)?;
        let rv = tensor(&[c], 0.4, 0.0)?.abs()?.affine(1.0, 0.5)?;
        let running = (!train).then_some((&rm, &rv));
        let f = |x: &Tensor, w: &Tensor, b: &Tensor| -> Result<f64> {
            loss(&batch_norm(x, w, b, running, 1e-5)?.0)?.to_scalar::<f64>()
        };
        let (x, w, b) = (Var::from_tensor(&x0)?, Var::from_tensor(&w0)?, Var::from_tensor(&b0)?);
        let g = loss(&batch_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), running, 1e-5)?.0)?.backward()?;
        let h = 1e-6;
        for which in 0..3 {
            let base = [&x0, &w0, &b0][which];
            let analytic = g.get([&x, &w, &b][which]).expect("gradient").flatten_all()?.to_vec1::<f64>()?;
            let values = base.flatten_all()?.to_vec1::<f64>()?;
            let mut fd = Vec::with_capacity(values.len());
            for i in 0..values.len() {
                let at = |delta: f64| -> Result<f64> {
                    let mut v = values.clone();
                    v[i] += delta;
                    let t = Tensor::from_vec(v, base.dims(), &Device::Cpu)?;
                    match which {
                        0 => f(&t, &w0, &b0),
                        1 => f(&x0, &t, &b0),
                        _ => f(&x0, &w0, &t),
                    }
                };
                fd.push((at(h)? - at(-h)?) / (2.0 * h));
            }
            let scale = fd.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
            let err = analytic.iter().zip(&fd).fold(0.0f64, |m, (a, n)| m.max((a - n).abs())) / scale;
            assert!(err <= 1e-6, "{shape:?} train={train}: input {which} relative error {err}");
        }
    }
    Ok(())
}

#[test]
fn bad_inputs_are_errors() -> Result<()> {
    let x = tensor(&[2, 3, 4], 0.1, 0.0)?;
    let w = tensor(&[2], 0.1, 0.0)?;
    let err = batch_norm(&x, &w, &w, None, 1e-5).unwrap_err().to_string();
    assert!(err.contains("one value per channel"), "{err}");
    let w3 = tensor(&[3], 0.1, 0.0)?;
    let err = batch_norm(&x.to_dtype(DType::U32)?, &w3, &w3, None, 1e-5).unwrap_err().to_string();
    assert!(err.contains("f32 and f64"), "{err}");
    let err = batch_norm(&x, &w3, &w3, Some((&w3, &w)), 1e-5).unwrap_err().to_string();
    assert!(err.contains("running var") && err.contains("one value per channel"), "{err}");
    Ok(())
}

/// One value per channel has no variance: training mode refuses it as PyTorch does, on a 1×1
/// feature map of one sample or on one sample without spatial dimensions; evaluation mode and
/// one sample with a larger map train.
#[test]
fn training_mode_refuses_one_value_per_channel() -> Result<()> {
    use agm_kernels::batch_norm_train;
    let w3 = tensor(&[3], 0.1, 1.0)?;
    let (rm, rv) = (tensor(&[3], 0.0, 0.0)?, tensor(&[3], 0.0, 1.0)?);
    for shape in [&[1usize, 3, 1, 1][..], &[1, 3]] {
        let x = tensor(shape, 0.3, 0.1)?;
        let err = batch_norm(&x, &w3, &w3, None, 1e-5).unwrap_err().to_string();
        assert!(err.contains("1 value per channel") && err.contains("batch size"), "{err}");
        let err = batch_norm_train(&x, &w3, &w3, (&rm, &rv), 0.1, 0, 1e-5, true).unwrap_err().to_string();
        assert!(err.contains("Expected more than 1 value per channel when training"), "{err}");
        batch_norm(&x, &w3, &w3, Some((&rm, &rv)), 1e-5)?;
    }
    // One training row and the fast Shapley pass's evaluation row: one value per channel.
    let two = tensor(&[2, 3], 0.3, 0.1)?;
    assert!(batch_norm_train(&two, &w3, &w3, (&rm, &rv), 0.1, 1, 1e-5, false).is_err());
    batch_norm_train(&two, &w3, &w3, (&rm, &rv), 0.1, 0, 1e-5, false)?;
    batch_norm(&tensor(&[1, 3, 2, 1], 0.3, 0.1)?, &w3, &w3, None, 1e-5)?;
    Ok(())
}

#[test]
fn evaluation_tail_rows_equal_separate_training_and_evaluation_calls() -> Result<()> {
    use agm_kernels::{batch_norm_relu, batch_norm_train};
    let (b, c) = (5, 3);
    let x = Var::from_tensor(&tensor(&[b, c, 4, 3], 0.37, 0.1)?)?;
    let w = Var::from_tensor(&tensor(&[c], 1.3, 0.5)?)?;
    let bias = Var::from_tensor(&tensor(&[c], 0.9, 0.2)?)?;
    let rm = tensor(&[c], 0.5, 0.0)?;
    let rv = tensor(&[c], 0.4, 0.0)?.abs()?.affine(1.0, 0.5)?;
    for (tail, relu) in [(0, false), (2, false), (2, true), (4, true)] {
        let (mixed, stored) =
            batch_norm_train(x.as_tensor(), w.as_tensor(), bias.as_tensor(), (&rm, &rv), 0.1, tail, 1e-5, relu)?;
        let op = if relu { batch_norm_relu } else { batch_norm };
        let (head, head_stats) =
            op(&x.as_tensor().narrow(0, 0, b - tail)?, w.as_tensor(), bias.as_tensor(), None, 1e-5)?;
        // The evaluation rows run after the training rows updated the running statistics.
        let values = |t: &Tensor| t.to_vec1::<f64>();
        let (um, uv) = agm_kernels::updated_running(&values(&rm)?, &values(&rv)?, head_stats.as_ref().unwrap(), 0.1);
        assert_eq!(values(&stored.mean()?)?, um, "tail {tail}: stored running mean");
        assert_eq!(values(&stored.var()?)?, uv, "tail {tail}: stored running variance");
        let separate = if tail == 0 {
            head
        } else {
            let (um, uv) = (Tensor::new(um, &Device::Cpu)?, Tensor::new(uv, &Device::Cpu)?);
            let rest =
                op(&x.as_tensor().narrow(0, b - tail, tail)?, w.as_tensor(), bias.as_tensor(), Some((&um, &uv)), 1e-5)?;
            Tensor::cat(&[head, rest.0], 0)?
        };
        assert!(max_rel(&mixed, &separate)? < 1e-12);
        let (g, g_ref) = (loss(&mixed)?.backward()?, loss(&separate)?.backward()?);
        for v in [&x, &w, &bias] {
            assert!(max_rel(g.get(v).unwrap(), g_ref.get(v).unwrap())? < 1e-10);
        }
    }
    let err =
        batch_norm_train(x.as_tensor(), w.as_tensor(), bias.as_tensor(), (&rm, &rv), 0.1, b, 1e-5, false).unwrap_err();
    assert!(err.to_string().contains("no training rows"), "{err}");
    let err = batch_norm_train(
        x.as_tensor(),
        w.as_tensor(),
        bias.as_tensor(),
        (&rm.to_dtype(DType::F32)?, &rv),
        0.1,
        0,
        1e-5,
        false,
    )
    .unwrap_err();
    assert!(err.to_string().contains("dtypes differ"), "{err}");
    Ok(())
}

/// The stored running statistics in f32 are what `running·(1 − m) + batch·m` computes with
/// candle's ops on f32 tensors, bit for bit (a model's buffers train as they always have).
#[test]
fn stored_running_statistics_round_as_candle_ops_on_f32() -> Result<()> {
    let (b, c) = (6, 4);
    let x = tensor(&[b, c, 3, 5], 0.61, 0.4)?.affine(3.0, 0.7)?.to_dtype(DType::F32)?;
    let (w, bias) = (tensor(&[c], 1.3, 0.5)?.to_dtype(DType::F32)?, tensor(&[c], 0.9, 0.2)?.to_dtype(DType::F32)?);
    let rm = tensor(&[c], 0.5, 0.0)?.to_dtype(DType::F32)?;
    let rv = tensor(&[c], 0.4, 0.0)?.abs()?.affine(1.0, 0.5)?.to_dtype(DType::F32)?;
    let m = 0.1;
    let (_, stored) = agm_kernels::batch_norm_train(&x, &w, &bias, (&rm, &rv), m, 0, 1e-5, false)?;
    let (_, stats) = batch_norm(&x, &w, &bias, None, 1e-5)?;
    let stats = stats.unwrap();
    let n = stats.count as f64;
    let unbiased: Vec<f64> = stats.var.iter().map(|v| v * n / (n - 1.0)).collect();
    let batch = |v: Vec<f64>| Tensor::new(v, &Device::Cpu)?.to_dtype(DType::F32);
    let by_ops = |r: &Tensor, v: Vec<f64>| ((r * (1.0 - m))? + (batch(v)? * m)?)?.to_vec1::<f32>();
    let (mean, var) = (by_ops(&rm, stats.mean.clone())?, by_ops(&rv, unbiased)?);
    assert_eq!(stored.mean()?.to_vec1::<f32>()?, mean);
    assert_eq!(stored.var()?.to_vec1::<f32>()?, var);
    // Stored in place into a layer's buffers, with its batch counted.
    let (rm, rv) = (Var::from_tensor(&rm)?, Var::from_tensor(&rv)?);
    let batches = Var::from_tensor(&Tensor::new(41f32, &Device::Cpu)?)?;
    stored.store(&rm, &rv, &batches)?;
    assert_eq!((rm.to_vec1::<f32>()?, rv.to_vec1::<f32>()?), (mean, var));
    assert_eq!(batches.to_scalar::<f32>()?, 42.0);
    Ok(())
}
