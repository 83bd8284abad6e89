//! The progress bar and per-epoch lines of `cargo xtask train`.

use agm_train::{Callback, EpochSummary, Flow, StepSummary};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// A transient bar over the samples of one evaluation; draws nothing without a terminal.
pub struct EvalBar {
    label: String,
    bar: Option<ProgressBar>,
}

impl EvalBar {
    pub fn new(label: impl Into<String>) -> Self {
        Self { label: label.into(), bar: None }
    }

    pub fn update(&mut self, done: usize, total: usize) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} samples, elapsed {elapsed} eta {eta}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_message(self.label.clone());
            bar
        });
        bar.set_position(done as u64);
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Steps per second with three significant digits or so (`2371/s`, `45.2/s`, `0.83/s`), where
/// indicatif's `{per_sec}` prints four decimals (`2,370.6457/s`).
fn rate(per_sec: f64) -> String {
    let decimals = match per_sec {
        r if r >= 100.0 => 0,
        r if r >= 10.0 => 1,
        _ => 2,
    };
    format!("{per_sec:.decimals$}/s")
}

/// `1 seed`, `3 seeds`.
pub fn counted(n: u64, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// `v` with `decimals` decimals, or in scientific notation from 1e6 on: saturated AGM
/// coefficients and diverging losses reach 1e308 and stay one word long.
pub fn compact(v: f64, decimals: usize) -> String {
    if v.abs() >= 1e6 {
        format!("{v:.decimals$e}")
    } else {
        format!("{v:.decimals$}")
    }
}

/// Coefficients by modality name, `audio 0.98 visual 1.02` with `separator` " ", each value as
/// `format` writes it.
pub fn labelled(modalities: &[String], values: &[f64], separator: &str, format: impl Fn(f64) -> String) -> String {
    let names = agm_core::by_name::value_names(modalities, values.len());
    let cells: Vec<String> = names.iter().zip(values).map(|(n, &v)| format!("{n} {}", format(v))).collect();
    cells.join(separator)
}

/// A stack's coefficients, `agm audio 0.9 visual 1.1; ogm-ge audio 0.8 visual 1`.
pub fn by_method(
    modalities: &[String],
    coefficients: &std::collections::BTreeMap<String, Vec<f64>>,
    digits: usize,
) -> String {
    let each: Vec<String> = coefficients
        .iter()
        .map(|(method, c)| format!("{method} {}", labelled(modalities, c, " ", |v| compact(v, digits))))
        .collect();
    each.join("; ")
}

/// The data's notes (samples the loader dropped, inputs of another shape) on stderr, each once
/// per process: a study or reproduction loads the same data for every run.
pub fn print_data_notes(notes: &[String]) {
    static SHOWN: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut shown = SHOWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for note in notes {
        if shown.insert(note.clone()) {
            eprintln!("note: {note}");
        }
    }
}

pub struct Progress {
    modalities: Vec<String>,
    bar: Option<ProgressBar>,
    quiet: bool,
    stop_after_steps: Option<usize>,
}

impl Progress {
    pub fn new(modalities: Vec<String>, quiet: bool, stop_after_steps: Option<usize>) -> Self {
        Self { modalities, bar: None, quiet, stop_after_steps }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn line(&self, text: String) {
        match &self.bar {
            // Without a terminal the bar draws nothing, and its println prints nothing either.
            Some(bar) if !bar.is_hidden() => bar.println(text),
            _ => println!("{text}"),
        }
    }
}

impl Callback for Progress {
    fn on_step(&mut self, s: &StepSummary) -> Flow {
        if !self.quiet {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = ProgressBar::new(s.steps_in_epoch as u64);
                bar.set_style(
                    ProgressStyle::with_template(
                        "epoch {prefix:>3} [{bar:30}] {pos}/{len} {rate:.dim} elapsed {elapsed} eta {eta} {msg}",
                    )
                    .expect("static template")
                    .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&rate(s.per_sec()));
                    })
                    .progress_chars("=> "),
                );
                bar
            });
            bar.set_prefix(s.epoch.to_string());
            bar.set_position(s.step_in_epoch as u64);
            let coeff = s
                .coefficients
                .as_ref()
                .map(|c| format!(" coeff {}", labelled(&self.modalities, c, " ", |v| compact(v, 2))));
            if s.step_in_epoch == s.steps_in_epoch {
                // The epoch's evaluation runs next; say so instead of sitting silent.
                bar.set_message(format!("loss {:.4}; validation…", s.loss));
            } else {
                bar.set_message(format!("loss {:.4}{}", s.loss, coeff.unwrap_or_default()));
            }
        }
        match self.stop_after_steps {
            Some(n) if s.global_step >= n => Flow::Stop,
            _ => Flow::Continue,
        }
    }

    fn on_validation(&mut self, done: usize, total: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("validation {done}/{total} samples"));
        }
    }

    fn on_epoch_end(&mut self, e: &EpochSummary) -> Flow {
        let shap: Vec<String> = self
            .modalities
            .iter()
            .zip(&e.validation.modality_accuracy)
            .map(|(n, a)| format!("{n} {:.1}%", 100.0 * a))
            .collect();
        let coeff = if e.coefficients_by_method.is_empty() {
            e.coefficients
                .as_ref()
                .map(|c| format!("  coeff (epoch mean) {}", labelled(&self.modalities, c, " ", |v| compact(v, 3))))
        } else {
            Some(format!("  coeff (epoch mean) {}", by_method(&self.modalities, &e.coefficients_by_method, 3)))
        };
        self.line(format!(
            "epoch {:>3}  loss {:.4}  val acc {:.1}%  shapley {}{}  {:.1} ms/step",
            e.epoch,
            e.train_loss,
            100.0 * e.validation.accuracy,
            shap.join(" "),
            coeff.unwrap_or_default(),
            1e3 * e.mean_step_seconds
        ));
        for event in &e.events {
            self.line(format!("           {event}"));
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_values_print_in_scientific_notation() {
        assert_eq!(compact(0.4551, 3), "0.455");
        assert_eq!(compact(-123456.0, 2), "-123456.00");
        assert_eq!(compact(9.883e33, 4), "9.8830e33");
        assert_eq!(compact(f64::INFINITY, 3), "inf");
    }

    #[test]
    fn the_step_rate_is_rounded_to_a_few_digits() {
        assert_eq!(super::rate(2370.6457), "2371/s");
        assert_eq!(super::rate(45.239), "45.2/s");
        assert_eq!(super::rate(0.8333), "0.83/s");
    }
}
