//! Optimizers, schedules and clipping against values worked out by hand from PyTorch's formulas.

use std::collections::HashMap;

use agm_core::NamedVar;
use agm_train::optim::{
    clip_grad_norm, conditional_clip, Adam, AdamConfig, AdamW, CosineLr, GradStore, LrSchedule, Optimizer,
    OptimizerConfig, ParamGroup, ScheduleConfig, Sgd, SgdConfig, StepLr,
};
use candle_core::{DType, Device, Tensor, Var};

const TOL: f64 = 1e-12;

fn var(values: &[f64]) -> Var {
    Var::new(values, &Device::Cpu).unwrap()
}

fn named(name: &str, v: &Var) -> NamedVar {
    NamedVar { name: name.to_string(), var: v.clone() }
}

fn group(params: &[(&str, &Var)]) -> ParamGroup {
    ParamGroup::new(params.iter().map(|(n, v)| named(n, v)).collect())
}

fn grads(pairs: &[(&Var, &[f64])]) -> GradStore {
    let mut store = GradStore::default();
    for (v, g) in pairs {
        store.insert(v.as_tensor(), Tensor::new(*g, &Device::Cpu).unwrap());
    }
    store
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOL, "{what}[{i}]: got {g}, want {w}, diff {}", (g - w).abs());
    }
}

fn state_map(opt: &dyn Optimizer) -> HashMap<String, Tensor> {
    opt.state().unwrap().into_iter().collect()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

// Shared SGD case: p0 = [1, -2, 3], g1 = [0.5, 0.25, -1], g2 = [1, -0.5, 0], lr = 0.1.
const P0: [f64; 3] = [1.0, -2.0, 3.0];
const G1: [f64; 3] = [0.5, 0.25, -1.0];
const G2: [f64; 3] = [1.0, -0.5, 0.0];

fn sgd_two_steps(config: SgdConfig) -> (Vec<f64>, Vec<f64>) {
    let w = var(&P0);
    let mut opt = Sgd::new(vec![group(&[("w", &w)])], config).unwrap();
    opt.step(&grads(&[(&w, &G1)])).unwrap();
    let p1 = values(w.as_tensor());
    opt.step(&grads(&[(&w, &G2)])).unwrap();
    (p1, values(w.as_tensor()))
}

#[test]
fn sgd_plain() {
    let (p1, p2) = sgd_two_steps(SgdConfig::new(0.1));
    // p1 = p0 - 0.1*g1 = [1 - 0.05, -2 - 0.025, 3 + 0.1]
    assert_close(&p1, &[0.95, -2.025, 3.1], "p1");
    // p2 = p1 - 0.1*g2 = [0.95 - 0.1, -2.025 + 0.05, 3.1 - 0]
    assert_close(&p2, &[0.85, -1.975, 3.1], "p2");
}

#[test]
fn sgd_weight_decay() {
    let cfg = SgdConfig { weight_decay: 0.01, ..SgdConfig::new(0.1) };
    let (p1, _) = sgd_two_steps(cfg);
    // d = g1 + 0.01*p0 = [0.5 + 0.01, 0.25 - 0.02, -1 + 0.03] = [0.51, 0.23, -0.97]
    // p1 = p0 - 0.1*d = [1 - 0.051, -2 - 0.023, 3 + 0.097]
    assert_close(&p1, &[0.949, -2.023, 3.097], "p1");
}

#[test]
fn sgd_momentum_first_buffer_is_d() {
    let cfg = SgdConfig { momentum: 0.9, ..SgdConfig::new(0.1) };
    let (p1, p2) = sgd_two_steps(cfg);
    // Step 1: buf = g1 (no 0.9 factor, no dampening); p1 = p0 - 0.1*g1.
    assert_close(&p1, &[0.95, -2.025, 3.1], "p1");
    // Step 2: buf = 0.9*g1 + g2 = [0.45 + 1, 0.225 - 0.5, -0.9 + 0] = [1.45, -0.275, -0.9]
    // p2 = p1 - 0.1*buf = [0.95 - 0.145, -2.025 + 0.0275, 3.1 + 0.09]
    assert_close(&p2, &[0.805, -1.9975, 3.19], "p2");
}

#[test]
fn sgd_dampening() {
    let cfg = SgdConfig { momentum: 0.9, dampening: 0.5, ..SgdConfig::new(0.1) };
    let (p1, p2) = sgd_two_steps(cfg);
    // Step 1: buf = g1, undamped on the first step.
    assert_close(&p1, &[0.95, -2.025, 3.1], "p1");
    // Step 2: buf = 0.9*g1 + (1 - 0.5)*g2 = [0.45 + 0.5, 0.225 - 0.25, -0.9 + 0] = [0.95, -0.025, -0.9]
    // p2 = p1 - 0.1*buf = [0.95 - 0.095, -2.025 + 0.0025, 3.1 + 0.09]
    assert_close(&p2, &[0.855, -2.0225, 3.19], "p2");
}

#[test]
fn sgd_nesterov() {
    let cfg = SgdConfig { momentum: 0.9, nesterov: true, ..SgdConfig::new(0.1) };
    let (p1, p2) = sgd_two_steps(cfg);
    // Step 1: buf = g1; d = g1 + 0.9*buf = 1.9*g1 = [0.95, 0.475, -1.9]
    // p1 = p0 - 0.1*d = [1 - 0.095, -2 - 0.0475, 3 + 0.19]
    assert_close(&p1, &[0.905, -2.0475, 3.19], "p1");
    // Step 2: buf = 0.9*g1 + g2 = [1.45, -0.275, -0.9]
    // d = g2 + 0.9*buf = [1 + 1.305, -0.5 - 0.2475, 0 - 0.81] = [2.305, -0.7475, -0.81]
    // p2 = p1 - 0.1*d = [0.905 - 0.2305, -2.0475 + 0.07475, 3.19 + 0.081]
    assert_close(&p2, &[0.6745, -1.97275, 3.271], "p2");
}

#[test]
fn sgd_agm_reference_preset() {
    let cfg = SgdConfig::agm_reference(0.1);
    assert_eq!((cfg.momentum, cfg.weight_decay, cfg.dampening, cfg.nesterov), (0.9, 1e-4, 0.0, false));
    let w = var(&[1.0, -2.0]);
    let mut opt = Sgd::new(vec![group(&[("w", &w)])], cfg).unwrap();
    opt.step(&grads(&[(&w, &[0.5, 0.25])])).unwrap();
    // d1 = g1 + 1e-4*p0 = [0.5 + 0.0001, 0.25 - 0.0002] = [0.5001, 0.2498]; buf = d1
    // p1 = p0 - 0.1*d1 = [1 - 0.05001, -2 - 0.02498]
    assert_close(&values(w.as_tensor()), &[0.94999, -2.02498], "p1");
    opt.step(&grads(&[(&w, &[1.0, -0.5])])).unwrap();
    // d2 = g2 + 1e-4*p1 = [1 + 0.000094999, -0.5 - 0.000202498] = [1.000094999, -0.500202498]
    // buf = 0.9*d1 + d2 = [0.45009 + 1.000094999, 0.22482 - 0.500202498] = [1.450184999, -0.275382498]
    // p2 = p1 - 0.1*buf = [0.94999 - 0.1450184999, -2.02498 + 0.0275382498]
    assert_close(&values(w.as_tensor()), &[0.8049715001, -1.9974417502], "p2");
}

#[test]
fn param_without_grad_is_untouched_and_stateless() {
    let a = var(&[1.0, -2.0]);
    let b = var(&[3.0, 4.0]);
    let mut sgd = Sgd::new(vec![group(&[("a", &a), ("b", &b)])], SgdConfig::agm_reference(0.1)).unwrap();
    for _ in 0..2 {
        sgd.step(&grads(&[(&a, &[0.5, 0.25])])).unwrap();
    }
    // No weight decay, no momentum: b keeps its exact bits.
    assert_eq!(values(b.as_tensor()), vec![3.0, 4.0]);
    let st = state_map(&sgd);
    assert!(st.contains_key("a/momentum_buffer"));
    assert!(!st.contains_key("b/momentum_buffer"));
    assert_eq!(scalar(&st["a/step"]), 2.0);
    assert_eq!(scalar(&st["b/step"]), 0.0);

    let c = var(&[3.0, 4.0]);
    let d = var(&[1.0, 1.0]);
    let cfg = AdamConfig { weight_decay: 0.1, ..AdamConfig::new(0.1) };
    let mut adamw = AdamW::new(vec![group(&[("c", &c), ("d", &d)])], cfg).unwrap();
    adamw.step(&grads(&[(&d, &[1.0, -1.0])])).unwrap();
    // Decoupled decay is part of the update, so it too skips a parameter without a gradient.
    assert_eq!(values(c.as_tensor()), vec![3.0, 4.0]);
    let st = state_map(&adamw);
    assert!(!st.contains_key("c/exp_avg") && !st.contains_key("c/exp_avg_sq"));
    assert_eq!(scalar(&st["c/step"]), 0.0);
}

#[test]
fn lr_mult_groups() {
    let a = var(&[1.0]);
    let b = var(&[2.0]);
    let groups = vec![group(&[("a", &a)]), group(&[("b", &b)]).with_lr_mult(0.1)];
    let mut opt = Sgd::new(groups, SgdConfig::new(0.5)).unwrap();
    opt.step(&grads(&[(&a, &[0.5]), (&b, &[1.0])])).unwrap();
    // a: 1 - 0.5*0.5 = 0.75; b: lr = 0.5*0.1 = 0.05, 2 - 0.05*1 = 1.95
    assert_close(&values(a.as_tensor()), &[0.75], "a1");
    assert_close(&values(b.as_tensor()), &[1.95], "b1");
    opt.set_learning_rate(0.2);
    assert_eq!(opt.learning_rate(), 0.2);
    opt.step(&grads(&[(&a, &[0.5]), (&b, &[1.0])])).unwrap();
    // a: 0.75 - 0.2*0.5 = 0.65; b: lr = 0.2*0.1 = 0.02, 1.95 - 0.02 = 1.93
    assert_close(&values(a.as_tensor()), &[0.65], "a2");
    assert_close(&values(b.as_tensor()), &[1.93], "b2");

    // AdamW's decoupled decay uses the group's effective lr too: eps = 0 makes the first update
    // lr*sign(g). lr = 0.1*0.5 = 0.05, wd = 0.2: p = 2*(1 - 0.05*0.2) - 0.05 = 1.98 - 0.05 = 1.93
    let c = var(&[2.0]);
    let cfg = AdamConfig { eps: 0.0, weight_decay: 0.2, ..AdamConfig::new(0.1) };
    let mut adamw = AdamW::new(vec![group(&[("c", &c)]).with_lr_mult(0.5)], cfg).unwrap();
    adamw.step(&grads(&[(&c, &[3.0])])).unwrap();
    assert_close(&values(c.as_tensor()), &[1.93], "c1");
}

// Shared Adam case: p0 = [1, -2], g1 = [0.5, -0.25], g2 = [-1, 0.5], lr = 0.1, betas (0.9, 0.999).
// Bias corrections: step 1: 1 - 0.9 = 0.1, 1 - 0.999 = 0.001;
//                   step 2: 1 - 0.81 = 0.19, 1 - 0.998001 = 0.001999.
const AP0: [f64; 2] = [1.0, -2.0];
const AG1: [f64; 2] = [0.5, -0.25];
const AG2: [f64; 2] = [-1.0, 0.5];

fn adam_two_steps(opt_of: impl Fn(Vec<ParamGroup>) -> Box<dyn Optimizer>) -> (Vec<f64>, Vec<f64>) {
    let w = var(&AP0);
    let mut opt = opt_of(vec![group(&[("w", &w)])]);
    opt.step(&grads(&[(&w, &AG1)])).unwrap();
    let p1 = values(w.as_tensor());
    opt.step(&grads(&[(&w, &AG2)])).unwrap();
    (p1, values(w.as_tensor()))
}

/// `p - lr * m_hat / (sqrt(v_hat) + eps)` elementwise, for the hand-derived moments.
fn adam_update(p: &[f64], m_hat: &[f64], v_hat: &[f64], lr: f64, eps: f64) -> Vec<f64> {
    (0..p.len()).map(|i| p[i] - lr * m_hat[i] / (v_hat[i].sqrt() + eps)).collect()
}

#[test]
fn adam_no_weight_decay() {
    let (p1, p2) = adam_two_steps(|g| Box::new(Adam::new(g, AdamConfig::new(0.1)).unwrap()));
    // Step 1: m = 0.1*g1 = [0.05, -0.025]; v = 0.001*g1^2 = [0.00025, 0.0000625]
    // m_hat = m/0.1 = g1; v_hat = v/0.001 = g1^2, sqrt = [0.5, 0.25]
    // p1 = [1 - 0.1*0.5/(0.5 + 1e-8), -2 + 0.1*0.25/(0.25 + 1e-8)]
    assert_close(&p1, &[1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 + 0.1 * 0.25 / (0.25 + 1e-8)], "p1");
    // Step 2: m = 0.9*[0.05, -0.025] + 0.1*[-1, 0.5] = [0.045 - 0.1, -0.0225 + 0.05] = [-0.055, 0.0275]
    // v = 0.999*[0.00025, 0.0000625] + 0.001*[1, 0.25] = [0.00024975 + 0.001, 0.0000624375 + 0.00025]
    //   = [0.00124975, 0.0003124375]
    let m_hat = [-0.055 / 0.19, 0.0275 / 0.19];
    let v_hat = [0.00124975 / 0.001999, 0.0003124375 / 0.001999];
    assert_close(&p2, &adam_update(&p1, &m_hat, &v_hat, 0.1, 1e-8), "p2");
}

#[test]
fn adam_l2_weight_decay() {
    let cfg = AdamConfig { eps: 0.0, weight_decay: 0.1, ..AdamConfig::new(0.1) };
    let (p1, p2) = adam_two_steps(|g| Box::new(Adam::new(g, cfg).unwrap()));
    // Step 1: g' = g1 + 0.1*p0 = [0.5 + 0.1, -0.25 - 0.2] = [0.6, -0.45]
    // m = 0.1*g' = [0.06, -0.045]; v = 0.001*g'^2 = [0.00036, 0.0002025]
    // m_hat / sqrt(v_hat) = g'/|g'| = [1, -1] with eps = 0, so p1 = p0 - 0.1*[1, -1]
    assert_close(&p1, &[0.9, -1.9], "p1");
    // Step 2: g' = g2 + 0.1*p1 = [-1 + 0.09, 0.5 - 0.19] = [-0.91, 0.31]
    // m = 0.9*[0.06, -0.045] + 0.1*[-0.91, 0.31] = [0.054 - 0.091, -0.0405 + 0.031] = [-0.037, -0.0095]
    // v = 0.999*[0.00036, 0.0002025] + 0.001*[0.8281, 0.0961]
    //   = [0.00035964 + 0.0008281, 0.0002022975 + 0.0000961] = [0.00118774, 0.0002983975]
    let m_hat = [-0.037 / 0.19, -0.0095 / 0.19];
    let v_hat = [0.00118774 / 0.001999, 0.0002983975 / 0.001999];
    assert_close(&p2, &adam_update(&[0.9, -1.9], &m_hat, &v_hat, 0.1, 0.0), "p2");
}

#[test]
fn adamw_decoupled_weight_decay() {
    let cfg = AdamConfig { eps: 0.0, weight_decay: 0.1, ..AdamConfig::new(0.1) };
    let (p1, p2) = adam_two_steps(|g| Box::new(AdamW::new(g, cfg).unwrap()));
    // Step 1: decay p0*(1 - 0.1*0.1) = [0.99, -1.98]; the moments see g1 only, so with eps = 0
    // the update is 0.1*sign(g1) = [0.1, -0.1]: p1 = [0.99 - 0.1, -1.98 + 0.1]
    assert_close(&p1, &[0.89, -1.88], "p1");
    // Step 2: decay p1*0.99 = [0.8811, -1.8612]; moments as in adam_no_weight_decay:
    // m = [-0.055, 0.0275], v = [0.00124975, 0.0003124375]
    let m_hat = [-0.055 / 0.19, 0.0275 / 0.19];
    let v_hat = [0.00124975 / 0.001999, 0.0003124375 / 0.001999];
    assert_close(&p2, &adam_update(&[0.8811, -1.8612], &m_hat, &v_hat, 0.1, 0.0), "p2");
}

#[test]
fn adam_step_count_is_per_parameter() {
    let a = var(&[1.0]);
    let b = var(&[1.0]);
    let cfg = AdamConfig { eps: 0.0, ..AdamConfig::new(0.1) };
    let mut opt = Adam::new(vec![group(&[("a", &a), ("b", &b)])], cfg).unwrap();
    opt.step(&grads(&[(&a, &[1.0])])).unwrap();
    opt.step(&grads(&[(&a, &[1.0]), (&b, &[-2.0])])).unwrap();
    // b's first step has t = 1: m_hat = g, v_hat = g^2, update 0.1*sign(-2): b = 1 + 0.1.
    // Had it used t = 2 it would be m_hat = 0.1*(-2)/0.19, v_hat = 0.001*4/0.001999, not 1.1.
    assert_close(&values(b.as_tensor()), &[1.1], "b");
    let st = state_map(&opt);
    assert_eq!(scalar(&st["a/step"]), 2.0);
    assert_eq!(scalar(&st["b/step"]), 1.0);
}

#[test]
fn f32_parameters_stay_f32() {
    let w = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
    let mut opt = Sgd::new(vec![group(&[("w", &w)])], SgdConfig::agm_reference(0.1)).unwrap();
    let mut store = GradStore::default();
    store.insert(w.as_tensor(), Tensor::new(&[0.5f32, 0.25, -1.0], &Device::Cpu).unwrap());
    opt.step(&store).unwrap();
    assert_eq!(w.dtype(), DType::F32);
    let st = state_map(&opt);
    assert_eq!(st["w/momentum_buffer"].dtype(), DType::F32);
    // d = g + 1e-4*p = [0.5001, 0.2498, -0.9997]; p = p - 0.1*d, to f32 precision.
    let want = [1.0 - 0.05001, -2.0 - 0.02498, 3.0 + 0.09997];
    for (g, w) in values(w.as_tensor()).iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{g} vs {w}");
    }
}

#[test]
fn gradients_from_backward_drive_the_update() {
    let w = var(&[1.0, -2.0]);
    let mut opt = Sgd::new(vec![group(&[("w", &w)])], SgdConfig::agm_reference(0.1)).unwrap();
    for _ in 0..2 {
        // loss = sum(w^2), so g = 2w.
        let g = w.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        opt.step(&g).unwrap();
    }
    // Step 1: d = 2*p0 + 1e-4*p0 = 2.0001*p0; p1 = p0*(1 - 0.20001) = 0.79999*p0
    // Step 2: d2 = 2.0001*p1; buf = 0.9*2.0001*p0 + 2.0001*p1 = 2.0001*(0.9 + 0.79999)*p0
    //   = 2.0001*1.69999*p0 = 3.400149999*p0; p2 = 0.79999*p0 - 0.3400149999*p0 = 0.4599750001*p0
    assert_close(&values(w.as_tensor()), &[0.4599750001, -0.9199500002], "p2");
}

#[test]
fn step_lr_values() {
    let s = StepLr::new(3, 0.1).unwrap();
    // 0.1 * 0.1^floor(e/3)
    let want = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001];
    for (e, w) in want.iter().enumerate() {
        let got = s.lr_at_epoch(0.1, e);
        assert!((got - w).abs() <= 1e-15, "epoch {e}: {got} vs {w}");
    }
}

#[test]
fn cosine_lr_values() {
    let s = CosineLr::new(4, 0.0).unwrap();
    // (1 + cos(pi*e/4))/2: e=0 -> 1; e=1 -> (1 + sqrt(2)/2)/2 = 0.8535533905932737;
    // e=2 -> 0.5; e=3 -> (1 - sqrt(2)/2)/2 = 0.1464466094067262; e=4 -> 0;
    // the closed form continues past t_max: e=6 -> cos(3pi/2) = 0 -> 0.5; e=8 -> 1.
    let want = [(0, 1.0), (1, 0.8535533905932737), (2, 0.5), (3, 0.1464466094067262), (4, 0.0), (6, 0.5), (8, 1.0)];
    for (e, w) in want {
        let got = s.lr_at_epoch(1.0, e);
        assert!((got - w).abs() <= TOL, "epoch {e}: {got} vs {w}");
    }
    // With eta_min = 0.1 and base 1.1: 0.1 + 1.0*(1 + cos(pi/2))/2 = 0.6 at e = 2.
    let s = CosineLr::new(4, 0.1).unwrap();
    assert!((s.lr_at_epoch(1.1, 2) - 0.6).abs() <= TOL);
    assert!((s.lr_at_epoch(1.1, 4) - 0.1).abs() <= TOL);
}

#[test]
fn schedule_config_serde_and_validation() {
    let c: ScheduleConfig = serde_json::from_str(r#"{"kind": "step", "step_size": 3, "gamma": 0.5}"#).unwrap();
    assert_eq!(c, ScheduleConfig::Step { step_size: 3, gamma: 0.5 });
    // 0.2 * 0.5^floor(7/3) = 0.2 * 0.25
    assert!((c.build().unwrap().lr_at_epoch(0.2, 7) - 0.05).abs() <= TOL);
    let c: ScheduleConfig = serde_json::from_str(r#"{"kind": "cosine", "t_max": 10}"#).unwrap();
    assert_eq!(c, ScheduleConfig::Cosine { t_max: 10, eta_min: 0.0 });
    let c: ScheduleConfig = serde_json::from_str(r#"{"kind": "constant"}"#).unwrap();
    assert_eq!(c.build().unwrap().lr_at_epoch(0.3, 100), 0.3);
    let back: ScheduleConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    assert!(
        serde_json::from_str::<ScheduleConfig>(r#"{"kind": "step", "step_size": 3, "gamma": 0.5, "x": 1}"#).is_err()
    );

    let err = |c: ScheduleConfig| c.build().err().expect("invalid config accepted").to_string();
    assert!(err(ScheduleConfig::Step { step_size: 0, gamma: 0.1 }).contains("schedule.step_size = 0: must be"));
    assert!(err(ScheduleConfig::Step { step_size: 2, gamma: 0.0 }).contains("gamma"));
    assert!(err(ScheduleConfig::Cosine { t_max: 0, eta_min: 0.0 }).contains("t_max"));
}

#[test]
fn optimizer_config_serde_builds_each_kind() {
    let c: OptimizerConfig =
        serde_json::from_str(r#"{"kind": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0001}"#).unwrap();
    assert_eq!(c, OptimizerConfig::Sgd(SgdConfig::agm_reference(0.1)));
    let c: OptimizerConfig = serde_json::from_str(r#"{"kind": "adamw", "lr": 0.001, "weight_decay": 0.01}"#).unwrap();
    assert_eq!(c, OptimizerConfig::AdamW(AdamConfig { weight_decay: 0.01, ..AdamConfig::new(0.001) }));
    assert!(serde_json::from_str::<OptimizerConfig>(r#"{"kind": "sgd", "lr": 0.1, "momentun": 0.9}"#).is_err());
    assert!(serde_json::from_str::<SgdConfig>(r#"{"lr": 0.1, "extra": 1}"#).is_err());
    let w = var(&[1.0]);
    for (c, name) in [
        (OptimizerConfig::Sgd(SgdConfig::new(0.1)), "sgd"),
        (OptimizerConfig::Adam(AdamConfig::new(0.1)), "adam"),
        (OptimizerConfig::AdamW(AdamConfig::new(0.1)), "adamw"),
    ] {
        assert_eq!(c.build(vec![group(&[("w", &w)])]).unwrap().name(), name);
    }
}

#[test]
fn clip_grad_norm_fires() {
    let a = var(&[0.0, 0.0]);
    let b = var(&[0.0]);
    let c = var(&[0.0]);
    let mut store = grads(&[(&a, &[3.0, 4.0]), (&b, &[12.0])]);
    let params = [named("a", &a), named("b", &b), named("c", &c)];
    let total = clip_grad_norm(&mut store, &params, 1.0).unwrap();
    // ||a|| = 5, ||b|| = 12, c has no gradient: total = sqrt(25 + 144) = 13
    assert_close(&[total], &[13.0], "total");
    // coef = 1/(13 + 1e-6) = 1/13.000001
    let k = 1.0 / 13.000001;
    assert_close(&values(store.get(a.as_tensor()).unwrap()), &[3.0 * k, 4.0 * k], "a");
    assert_close(&values(store.get(b.as_tensor()).unwrap()), &[12.0 * k], "b");
    assert!(store.get(c.as_tensor()).is_none());
}

#[test]
fn clip_grad_norm_below_max_leaves_grads() {
    let a = var(&[0.0, 0.0]);
    let b = var(&[0.0]);
    let mut store = grads(&[(&a, &[3.0, 4.0]), (&b, &[12.0])]);
    let params = [named("a", &a), named("b", &b)];
    // coef = 20/13.000001 > 1: nothing changes, bit for bit.
    let total = clip_grad_norm(&mut store, &params, 20.0).unwrap();
    assert_close(&[total], &[13.0], "total");
    assert_eq!(values(store.get(a.as_tensor()).unwrap()), vec![3.0, 4.0]);
    assert_eq!(values(store.get(b.as_tensor()).unwrap()), vec![12.0]);
    assert!(clip_grad_norm(&mut store, &params, -1.0).unwrap_err().to_string().contains("max_norm"));
}

#[test]
fn conditional_clip_fires_only_on_strict_crossing() {
    let head = var(&[0.0, 0.0]);
    let other = var(&[0.0]);
    let params = [named("head.weight", &head), named("other", &other)];
    let rule = agm_modulation::ClipRule::outside_band(1.0, 1.0);

    // Exactly +1 and -1 are not beyond the threshold: no clipping, grads untouched.
    let mut store = grads(&[(&head, &[1.0, -1.0]), (&other, &[10.0])]);
    let out = conditional_clip(&rule, &mut store, &params, &head).unwrap();
    assert!(!out.fired);
    assert_eq!((out.head_grad_max, out.head_grad_min), (1.0, -1.0));
    assert_eq!((out.total_norm, out.coef), (None, None));
    assert_eq!(values(store.get(other.as_tensor()).unwrap()), vec![10.0]);

    // max 1.5 > 1: fires. total = sqrt(1.5^2 + 0.5^2 + 2^2) = sqrt(2.25 + 0.25 + 4) = sqrt(6.5)
    let mut store = grads(&[(&head, &[1.5, -0.5]), (&other, &[2.0])]);
    let out = conditional_clip(&rule, &mut store, &params, &head).unwrap();
    assert!(out.fired);
    let total = 6.5f64.sqrt();
    let coef = 1.0 / (total + 1e-6);
    assert_close(&[out.total_norm.unwrap(), out.coef.unwrap()], &[total, coef], "fired max");
    assert_close(&values(store.get(head.as_tensor()).unwrap()), &[1.5 * coef, -0.5 * coef], "head");
    assert_close(&values(store.get(other.as_tensor()).unwrap()), &[2.0 * coef], "other");

    // min -1.25 < -1: fires. total = sqrt(0.25 + 1.5625 + 0.01) = sqrt(1.8225) = 1.35,
    // coef = 1/1.350001 < 1.
    let mut store = grads(&[(&head, &[0.5, -1.25]), (&other, &[0.1])]);
    let out = conditional_clip(&rule, &mut store, &params, &head).unwrap();
    assert!(out.fired);
    assert_eq!((out.head_grad_max, out.head_grad_min), (0.5, -1.25));
    assert_close(&[out.total_norm.unwrap(), out.coef.unwrap()], &[1.35, 1.0 / 1.350001], "fired min");

    // No gradient for the head weight: extremes of 0, nothing fires.
    let mut store = grads(&[(&other, &[10.0])]);
    let out = conditional_clip(&rule, &mut store, &params, &head).unwrap();
    assert!(!out.fired && (out.head_grad_max, out.head_grad_min) == (0.0, 0.0));
    assert_eq!(values(store.get(other.as_tensor()).unwrap()), vec![10.0]);
    // A bad threshold is named.
    let bad = agm_modulation::ClipRule::outside_band(f64::NAN, 1.0);
    assert!(conditional_clip(&bad, &mut store, &params, &head).unwrap_err().to_string().contains("threshold"));
}

fn round_trip<O: Optimizer>(make: impl Fn(Vec<ParamGroup>) -> O) {
    let gs: [[f64; 3]; 5] =
        [[0.5, -0.25, 1.0], [-1.0, 0.5, 0.125], [0.3, 0.7, -0.9], [0.01, -2.0, 0.6], [1.5, 0.2, -0.4]];
    // Reference: five uninterrupted steps. Parameter "frozen" never gets a gradient.
    let w = var(&P0);
    let frozen = var(&[7.0]);
    let mut reference = make(vec![group(&[("w", &w), ("frozen", &frozen)]).with_lr_mult(0.5)]);
    for g in &gs {
        reference.step(&grads(&[(&w, g)])).unwrap();
    }

    // Interrupted: two steps, then a fresh optimizer over fresh Vars restored from the state.
    let w1 = var(&P0);
    let frozen1 = var(&[7.0]);
    let mut first = make(vec![group(&[("w", &w1), ("frozen", &frozen1)]).with_lr_mult(0.5)]);
    for g in &gs[..2] {
        first.step(&grads(&[(&w1, g)])).unwrap();
    }
    let saved = state_map(&first);
    let w2 = Var::from_tensor(&w1.as_tensor().copy().unwrap()).unwrap();
    let frozen2 = var(&[7.0]);
    let mut second = make(vec![group(&[("w", &w2), ("frozen", &frozen2)]).with_lr_mult(0.5)]);
    second.load_state(&saved).unwrap();
    // Keep stepping the first one too: restoring must not alias its state.
    for g in &gs[2..] {
        second.step(&grads(&[(&w2, g)])).unwrap();
        first.step(&grads(&[(&w1, g)])).unwrap();
    }
    let want = values(w.as_tensor());
    assert_eq!(values(w2.as_tensor()), want, "{} restored", reference.name());
    assert_eq!(values(w1.as_tensor()), want, "{} original", reference.name());
    assert_eq!(values(frozen2.as_tensor()), vec![7.0]);
    let (a, b) = (state_map(&reference), state_map(&second));
    assert_eq!(a.keys().collect::<std::collections::BTreeSet<_>>(), b.keys().collect());
    for (k, t) in &a {
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            b[k].flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            "{k}"
        );
    }

    // A missing key is named; the optimizer keeps its state when loading fails.
    let mut broken = saved.clone();
    let victim = saved.keys().find(|k| k.starts_with("w/") && !k.ends_with("/step")).unwrap().clone();
    broken.remove(&victim);
    let err = second.load_state(&broken).unwrap_err().to_string();
    assert!(err.contains(&victim), "{err}");
    let mut no_step = saved.clone();
    no_step.remove("frozen/step");
    assert!(second.load_state(&no_step).unwrap_err().to_string().contains("frozen/step"));
    assert_eq!(state_map(&second).len(), a.len());
}

#[test]
fn state_round_trip_sgd() {
    round_trip(|g| Sgd::new(g, SgdConfig { nesterov: true, ..SgdConfig::agm_reference(0.1) }).unwrap());
}

#[test]
fn state_round_trip_adam() {
    round_trip(|g| Adam::new(g, AdamConfig { weight_decay: 0.01, ..AdamConfig::new(0.05) }).unwrap());
}

#[test]
fn state_round_trip_adamw() {
    round_trip(|g| AdamW::new(g, AdamConfig { weight_decay: 0.01, ..AdamConfig::new(0.05) }).unwrap());
}

#[test]
fn invalid_configs_name_the_field() {
    let w = var(&[1.0]);
    let sgd_err = |c: SgdConfig| Sgd::new(vec![group(&[("w", &w)])], c).expect_err("accepted").to_string();
    assert!(sgd_err(SgdConfig::new(-0.1)).contains("lr"));
    assert!(sgd_err(SgdConfig::new(f64::NAN)).contains("lr"));
    assert!(sgd_err(SgdConfig { momentum: -0.5, ..SgdConfig::new(0.1) }).contains("momentum"));
    // A momentum above 1 grows the step without bound; a dampening outside [0, 1] flips it.
    assert!(sgd_err(SgdConfig { momentum: 1.5, ..SgdConfig::new(0.1) })
        .contains("optimizer.momentum = 1.5: must be in [0, 1]"));
    for dampening in [-1.0, 2.0, f64::NAN] {
        let err = sgd_err(SgdConfig { momentum: 0.9, dampening, ..SgdConfig::new(0.1) });
        assert!(err.contains("optimizer.dampening") && err.contains("in [0, 1]"), "{err}");
    }
    Sgd::new(vec![group(&[("w", &w)])], SgdConfig { momentum: 1.0, dampening: 1.0, ..SgdConfig::new(0.1) }).unwrap();
    assert!(sgd_err(SgdConfig { weight_decay: -1.0, ..SgdConfig::new(0.1) }).contains("weight_decay"));
    assert!(sgd_err(SgdConfig { nesterov: true, ..SgdConfig::new(0.1) }).contains("nesterov"));
    let damped = SgdConfig { nesterov: true, momentum: 0.9, dampening: 0.1, ..SgdConfig::new(0.1) };
    assert!(sgd_err(damped).contains("nesterov"));

    let adam_err = |c: AdamConfig| Adam::new(vec![group(&[("w", &w)])], c).expect_err("accepted").to_string();
    assert!(adam_err(AdamConfig::new(-1.0)).contains("lr"));
    assert!(adam_err(AdamConfig { beta1: 1.0, ..AdamConfig::new(0.1) }).contains("beta1"));
    assert!(adam_err(AdamConfig { beta2: -0.1, ..AdamConfig::new(0.1) }).contains("beta2"));
    assert!(adam_err(AdamConfig { eps: -1e-8, ..AdamConfig::new(0.1) }).contains("eps"));

    // A negative rate set at run time is caught at the next step.
    let mut opt = Sgd::new(vec![group(&[("w", &w)])], SgdConfig::new(0.1)).unwrap();
    opt.set_learning_rate(-1.0);
    assert!(opt.step(&grads(&[(&w, &[1.0])])).unwrap_err().to_string().contains("lr"));

    // Groups: a negative multiplier, and one Var in two groups.
    let neg = vec![group(&[("w", &w)]).with_lr_mult(-1.0)];
    assert!(Sgd::new(neg, SgdConfig::new(0.1)).err().unwrap().to_string().contains("lr_mult"));
    let twice = vec![group(&[("w", &w)]), group(&[("w2", &w)])];
    assert!(Sgd::new(twice, SgdConfig::new(0.1)).is_err());
}
