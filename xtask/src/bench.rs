//! `cargo xtask bench`: one AGM step against one joint step on the default model, timed in one
//! run (interleaved, so machine load affects both alike), reported as a ratio.

use std::process::ExitCode;
use std::time::Instant;

use agm_core::MultimodalModel;
use agm_modulation::{Agm, AgmConfig, Joint, Modulator};
use agm_train::optim::{Optimizer, OptimizerConfig, ParamGroup, SgdConfig};
use agm_train::{train_step, RunConfig, StepParts};
use candle_core::Device;

use crate::cli::BenchArgs;

struct Arm {
    name: &'static str,
    model: agm_fusion::LateConcatModel,
    modulator: Box<dyn Modulator>,
    optimizer: Box<dyn Optimizer + Send>,
    times: Vec<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let device = Device::Cpu;
    let cfg = RunConfig::av_digits();
    let data = cfg.load_data()?;
    let train = data.split(agm_data::av_digits::Split::Train);
    let indices: Vec<usize> = (0..args.batch_size.min(train.len())).collect();
    let batch = train.batch(&indices, &device)?;
    let mut arms = Vec::new();
    for name in ["joint", "agm"] {
        let model = cfg.build_model(&device)?;
        let modulator: Box<dyn Modulator> = match name {
            "agm" => Box::new(Agm::new(AgmConfig::av_digits(), 2).map_err(anyhow::Error::msg)?),
            _ => Box::new(Joint::new()),
        };
        let optimizer = OptimizerConfig::Sgd(SgdConfig::agm_reference(0.01))
            .build(vec![ParamGroup::new(model.param_groups().trainable())])?;
        arms.push(Arm { name, model, modulator, optimizer, times: Vec::new() });
    }
    for i in 0..(args.steps + 3) {
        for arm in arms.iter_mut() {
            let trainable = arm.model.param_groups().trainable();
            let mut parts = StepParts {
                model: &arm.model,
                modulator: arm.modulator.as_mut(),
                optimizer: arm.optimizer.as_mut(),
                trainable: &trainable,
            };
            let started = Instant::now();
            train_step(&mut parts, &batch, i + 1, 1, i as u64, &mut agm_train::step::NoObserver)?;
            if i >= 3 {
                arm.times.push(started.elapsed().as_secs_f64());
            }
        }
    }
    let joint = median(&mut arms[0].times);
    let agm = median(&mut arms[1].times);
    println!("default AV-Digits model, batch {}, {} timed steps each, CPU, median", args.batch_size, args.steps);
    println!("| method | step (ms) | ratio to joint |");
    println!("|---|---|---|");
    for (arm, t) in arms.iter().zip([joint, agm]) {
        println!("| {} | {:.3} | {:.2}x |", arm.name, 1e3 * t, t / joint);
    }
    Ok(ExitCode::SUCCESS)
}
