//! Wav reading, resampling and the log-magnitude STFT of the CREMA-D loader.

use std::path::Path;

use rustfft::num_complex::Complex;
use rustfft::FftPlanner;

use crate::error::{DataError, Result};

/// The reference's audio parameters (OGM-GE / AGM `CREMAD_loader.py`).
pub const SAMPLE_RATE: u32 = 22_050;
/// Samples of a clip after tiling and cutting: 3 s at [`SAMPLE_RATE`].
pub const CLIP_SAMPLES: usize = 66_150;
/// STFT window and FFT length, in samples.
pub const N_FFT: usize = 512;
/// STFT hop length, in samples.
pub const HOP: usize = 353;
/// Frequency bins `1 + N_FFT/2`.
pub const N_BINS: usize = N_FFT / 2 + 1;
/// Frames of a centred STFT of [`CLIP_SAMPLES`]: `1 + 66150 / 353`.
pub const N_FRAMES: usize = 1 + CLIP_SAMPLES / HOP;

/// Reads a wav file as mono `f32` in [-1, 1] (channels averaged, as librosa does) and its rate.
///
/// The sample rate must lie in [`crate::limits::WAV_RATES`] (1 kHz to 384 kHz): a rate of 0
/// or 1 would make resampling divide by zero or run for hours. The sample count the header
/// claims must fit in the file.
pub fn read_wav(path: &Path) -> Result<(Vec<f32>, u32)> {
    let bytes = std::fs::read(path).map_err(|e| super::io_err(path, e))?;
    parse_wav(&bytes, path)
}

/// [`read_wav`] on the bytes of a wav file; `path` only labels errors.
pub fn parse_wav(bytes: &[u8], path: &Path) -> Result<(Vec<f32>, u32)> {
    let bad = |reason: String| DataError::BadSource { path: path.to_path_buf(), reason };
    let mut reader = hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(|e| match e {
        hound::Error::IoError(source) => {
            bad(format!("not a readable wav file ({source}); copy or extract the clip again"))
        }
        other => bad(format!("not a readable wav file ({other}); copy or extract the clip again")),
    })?;
    let spec = reader.spec();
    let rates = crate::limits::WAV_RATES;
    if !rates.contains(&spec.sample_rate) {
        return Err(bad(format!(
            "sample rate {} Hz is outside {}..={} Hz; the header is corrupt, so convert the clip again \
             (e.g. `ffmpeg -i in.wav -ar 22050 out.wav`)",
            spec.sample_rate,
            rates.start(),
            rates.end()
        )));
    }
    if !(1..=32).contains(&spec.bits_per_sample) {
        return Err(bad(format!("{} bits per sample is not supported (1 to 32)", spec.bits_per_sample)));
    }
    // hound sizes its buffer from the header's count; it must fit in the file.
    let claimed = (reader.len() as u64).saturating_mul(u64::from(spec.bits_per_sample).div_ceil(8));
    if claimed > bytes.len() as u64 {
        return Err(bad(format!(
            "header claims {} samples ({claimed} bytes) but the file has {} bytes; the file is truncated, \
             so copy or extract the clip again",
            reader.len(),
            bytes.len()
        )));
    }
    let channels = spec.channels.max(1) as usize;
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<std::result::Result<_, _>>(),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader.samples::<i32>().map(|s| s.map(|v| v as f32 * scale)).collect::<std::result::Result<_, _>>()
        }
    }
    .map_err(|e| bad(format!("corrupt or truncated wav data: {e}; copy or extract the clip again")))?;
    let mono = interleaved.chunks(channels).map(|c| c.iter().sum::<f32>() / c.len() as f32).collect();
    Ok((mono, spec.sample_rate))
}

/// Band-limited resampling with a Hann-windowed sinc (16 zero crossings each side).
///
/// librosa uses soxr, so values differ slightly from the reference (bit parity is not
/// reachable); at equal rates the input is returned unchanged.
pub fn resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || x.is_empty() {
        return x.to_vec();
    }
    const HALF: isize = 16;
    let ratio = to as f64 / from as f64;
    let cutoff = ratio.min(1.0);
    let n_out = (x.len() as f64 * ratio).ceil() as usize;
    let width = HALF as f64 / cutoff;
    (0..n_out)
        .map(|n| {
            let t = n as f64 / ratio;
            let lo = (t - width).floor().max(0.0) as isize;
            let hi = ((t + width).ceil() as isize).min(x.len() as isize - 1);
            let mut acc = 0.0f64;
            for k in lo..=hi {
                let d = t - k as f64;
                let arg = d * cutoff;
                let sinc = if arg.abs() < 1e-12 {
                    1.0
                } else {
                    (std::f64::consts::PI * arg).sin() / (std::f64::consts::PI * arg)
                };
                let w = if d.abs() >= width { 0.0 } else { 0.5 + 0.5 * (std::f64::consts::PI * d / width).cos() };
                acc += x[k as usize] as f64 * sinc * w * cutoff;
            }
            acc as f32
        })
        .collect()
}

/// `np.tile(x, 3)[:66150]` then clip to [-1, 1] (an empty clip gives zeros).
pub fn tile_and_clip(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(CLIP_SAMPLES);
    if !x.is_empty() {
        for _ in 0..3 {
            out.extend_from_slice(x);
        }
    }
    out.truncate(CLIP_SAMPLES);
    out.resize(CLIP_SAMPLES, 0.0);
    out.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
    out
}

/// `log(|stft(x, n_fft, hop, window='hann', center=True, pad_mode='constant')| + 1e-7)` as a
/// frequency-major `[n_fft/2 + 1, 1 + len/hop]` buffer (librosa ≥ 0.10 zero-pads when centring).
pub fn log_stft(x: &[f32], n_fft: usize, hop: usize) -> (Vec<f32>, usize, usize) {
    let bins = n_fft / 2 + 1;
    let frames = 1 + x.len() / hop;
    let pad = n_fft / 2;
    let window: Vec<f64> =
        (0..n_fft).map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / n_fft as f64).cos()).collect();
    let fft = FftPlanner::<f64>::new().plan_fft_forward(n_fft);
    let mut out = vec![0f32; bins * frames];
    let mut buf = vec![Complex::new(0.0, 0.0); n_fft];
    for t in 0..frames {
        for (i, b) in buf.iter_mut().enumerate() {
            let j = (t * hop + i) as isize - pad as isize;
            let v = if j >= 0 && (j as usize) < x.len() { x[j as usize] as f64 } else { 0.0 };
            *b = Complex::new(v * window[i], 0.0);
        }
        fft.process(&mut buf);
        for f in 0..bins {
            out[f * frames + t] = (buf[f].norm() + 1e-7).ln() as f32;
        }
    }
    (out, bins, frames)
}

/// The reference's spectrogram of one wav file: `[257, 188]` log magnitudes.
pub fn cremad_spectrogram(path: &Path) -> Result<Vec<f32>> {
    let (x, rate) = read_wav(path)?;
    if x.is_empty() {
        return Err(DataError::BadSource { path: path.to_path_buf(), reason: "wav file holds no samples".into() });
    }
    let x = resample(&x, rate, SAMPLE_RATE);
    let (spec, _, _) = log_stft(&tile_and_clip(&x), N_FFT, HOP);
    Ok(spec)
}
