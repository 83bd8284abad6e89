//! The agm-kernels ops against their plain-candle `*_ref` references: forward plus backward on
//! fixed ResNet-sized inputs, timed with the two arms interleaved.

use std::time::Instant;

use agm_kernels::{Conv2dSpec, Pool2dSpec};
use candle_core::{Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

/// Median wall time of one forward + backward of our kernel and of its reference.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelRatio {
    pub name: String,
    pub ours_ms: f64,
    pub reference_ms: f64,
}

impl KernelRatio {
    /// How many times faster ours is (reference time / our time).
    pub fn speedup(&self) -> f64 {
        self.reference_ms / self.ours_ms
    }
}

enum Kind {
    Conv { x: Var, w: Var, spec: Conv2dSpec },
    MaxPool { x: Var, spec: Pool2dSpec },
    LayerNorm { x: Var, gamma: Var, beta: Var },
    BatchNorm { x: Var, weight: Var, bias: Var },
    BatchNormRelu { x: Var, weight: Var, bias: Var },
    AddRelu { a: Var, b: Var },
    Linear { x: Var, w: Var, b: Var },
    Softmax { x: Var },
    CrossEntropy { logits: Var, labels: Tensor },
    GaussianNoise { x: Var },
}

/// One kernel on fixed inputs; every input is a `Var`, so every input gradient is computed.
pub struct KernelCase {
    /// Short name, usable as a criterion group suffix.
    pub name: &'static str,
    kind: Kind,
    device: Device,
}

fn seeded(shape: &[usize], seed: u64, device: &Device) -> Result<Var> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Var::from_tensor(&Tensor::from_vec(values, shape, device)?)
}

impl KernelCase {
    /// One forward + backward through our kernel (`reference == false`) or its `*_ref`.
    pub fn run(&self, reference: bool) -> Result<()> {
        let out = match &self.kind {
            Kind::Conv { x, w, spec } => {
                let f = if reference { agm_kernels::conv2d_ref } else { agm_kernels::conv2d };
                f(x.as_tensor(), w.as_tensor(), *spec)?
            }
            Kind::MaxPool { x, spec } => {
                let f = if reference { agm_kernels::max_pool2d_ref } else { agm_kernels::max_pool2d };
                f(x.as_tensor(), *spec)?
            }
            Kind::LayerNorm { x, gamma, beta } => {
                let f = if reference { agm_kernels::layer_norm_ref } else { agm_kernels::layer_norm };
                f(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5)?
            }
            Kind::BatchNorm { x, weight, bias } => {
                let f = if reference { agm_kernels::batch_norm_ref } else { agm_kernels::batch_norm };
                // Training mode: batch statistics, gradients to all three.
                f(x.as_tensor(), weight.as_tensor(), bias.as_tensor(), None, 1e-5)?.0
            }
            Kind::BatchNormRelu { x, weight, bias } => {
                let (x, w, b) = (x.as_tensor(), weight.as_tensor(), bias.as_tensor());
                if reference {
                    agm_kernels::batch_norm_ref(x, w, b, None, 1e-5)?.0.relu()?
                } else {
                    agm_kernels::batch_norm_relu(x, w, b, None, 1e-5)?.0
                }
            }
            Kind::AddRelu { a, b } => {
                let f = if reference { agm_kernels::add_relu_ref } else { agm_kernels::add_relu };
                f(a.as_tensor(), b.as_tensor())?
            }
            Kind::Linear { x, w, b } => {
                let f = if reference { agm_kernels::linear_ref } else { agm_kernels::linear };
                f(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))?
            }
            Kind::Softmax { x } => {
                let f = if reference { agm_kernels::softmax_ref } else { agm_kernels::softmax_last_dim };
                // Squared, so that the gradient reaching the softmax is not constant along a row.
                f(x.as_tensor())?.sqr()?
            }
            Kind::CrossEntropy { logits, labels } => {
                let f = if reference {
                    agm_kernels::cross_entropy_per_sample_ref
                } else {
                    agm_kernels::cross_entropy_per_sample
                };
                f(logits.as_tensor(), labels)?
            }
            Kind::GaussianNoise { x } => {
                let f = if reference { agm_kernels::add_gaussian_noise_ref } else { agm_kernels::add_gaussian_noise };
                // OGM-GE's use: a gradient plus noise of its own spread.
                f(x.as_tensor(), 1.0, 0.5, 7)?
            }
        };
        let grads = out.sum_all()?.backward()?;
        // Wait for the device so wall time covers the work (a no-op on the CPU).
        drop(grads);
        self.device.synchronize()
    }
}

/// The benchmarked cases, f32: ResNet18 shapes at batch 8 on 112×112 inputs, plus transformer-
/// and head-sized linear, norm, softmax and loss, and OGM-GE's noise on a ResNet18 weight.
pub fn kernel_cases(device: &Device) -> Result<Vec<KernelCase>> {
    let conv = |name, x: &[usize], w: &[usize], stride, padding, seed| -> Result<KernelCase> {
        let kind = Kind::Conv {
            x: seeded(x, seed, device)?,
            w: seeded(w, seed + 1, device)?,
            spec: Conv2dSpec::new(stride, padding),
        };
        Ok(KernelCase { name, kind, device: device.clone() })
    };
    let labels: Vec<u32> = (0..256u32).map(|i| i * 7 % 10).collect();
    Ok(vec![
        conv("conv2d_3x3_64to64_28x28_b8", &[8, 64, 28, 28], &[64, 64, 3, 3], 1, 1, 1)?,
        conv("conv2d_stem_7x7s2p3_1to64_112x112_b8", &[8, 1, 112, 112], &[64, 1, 7, 7], 2, 3, 3)?,
        conv("conv2d_3x3s2_64to128_28x28_b8", &[8, 64, 28, 28], &[128, 64, 3, 3], 2, 1, 5)?,
        conv("conv2d_3x3_512to512_4x4_b8", &[8, 512, 4, 4], &[512, 512, 3, 3], 1, 1, 13)?,
        KernelCase {
            name: "batch_norm_train_64x56x56_b8",
            kind: Kind::BatchNorm {
                x: seeded(&[8, 64, 56, 56], 14, device)?,
                weight: seeded(&[64], 15, device)?,
                bias: seeded(&[64], 16, device)?,
            },
            device: device.clone(),
        },
        KernelCase {
            name: "batch_norm_relu_train_64x28x28_b8",
            kind: Kind::BatchNormRelu {
                x: seeded(&[8, 64, 28, 28], 17, device)?,
                weight: seeded(&[64], 18, device)?,
                bias: seeded(&[64], 19, device)?,
            },
            device: device.clone(),
        },
        KernelCase {
            name: "add_relu_64x28x28_b8",
            kind: Kind::AddRelu { a: seeded(&[8, 64, 28, 28], 20, device)?, b: seeded(&[8, 64, 28, 28], 21, device)? },
            device: device.clone(),
        },
        KernelCase {
            name: "linear_160x768_to_3072",
            kind: Kind::Linear {
                x: seeded(&[160, 768], 22, device)?,
                w: seeded(&[3072, 768], 23, device)?,
                b: seeded(&[3072], 24, device)?,
            },
            device: device.clone(),
        },
        KernelCase {
            name: "max_pool2d_3x3s2p1_64x56x56_b8",
            kind: Kind::MaxPool { x: seeded(&[8, 64, 56, 56], 7, device)?, spec: Pool2dSpec::new(3, 2, 1) },
            device: device.clone(),
        },
        KernelCase {
            name: "layer_norm_512x256",
            kind: Kind::LayerNorm {
                x: seeded(&[512, 256], 8, device)?,
                gamma: seeded(&[256], 9, device)?,
                beta: seeded(&[256], 10, device)?,
            },
            device: device.clone(),
        },
        KernelCase {
            name: "softmax_8x4x64x64",
            kind: Kind::Softmax { x: seeded(&[8, 4, 64, 64], 11, device)? },
            device: device.clone(),
        },
        KernelCase {
            name: "cross_entropy_256x10",
            kind: Kind::CrossEntropy {
                logits: seeded(&[256, 10], 12, device)?,
                labels: Tensor::from_vec(labels, 256, device)?,
            },
            device: device.clone(),
        },
        KernelCase {
            name: "gaussian_noise_512x512x3x3",
            kind: Kind::GaussianNoise { x: seeded(&[512, 512, 3, 3], 25, device)? },
            device: device.clone(),
        },
    ])
}

/// Ours against the reference for every case of [`kernel_cases`]: the median of `reps` timed
/// forward + backward runs per arm, the arms alternating run by run so machine load hits both
/// alike (after one untimed warm-up run of each).
pub fn kernel_ratios(device: &Device, reps: usize) -> Result<Vec<KernelRatio>> {
    let reps = reps.max(1);
    let median = |mut t: Vec<f64>| {
        t.sort_by(|a, b| a.total_cmp(b));
        t[t.len() / 2]
    };
    let mut out = Vec::new();
    for case in kernel_cases(device)? {
        case.run(false)?;
        case.run(true)?;
        let (mut ours, mut reference) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
        for _ in 0..reps {
            for (is_ref, times) in [(false, &mut ours), (true, &mut reference)] {
                let started = Instant::now();
                case.run(is_ref)?;
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        out.push(KernelRatio { name: case.name.to_string(), ours_ms: median(ours), reference_ms: median(reference) });
    }
    Ok(out)
}
