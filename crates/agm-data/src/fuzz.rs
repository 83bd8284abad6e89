//! Fuzz targets for every file parser of the loaders, and the mutations applied to valid inputs.
//!
//! Shared by the property test (`tests/fuzz.rs`, a bounded number of cases) and
//! `cargo xtask fuzz --minutes N` (as long as asked), so both drive the same parsers with the same
//! mutations. Not a stable API.

use std::path::Path;

use rand::{Rng, RngCore};

use crate::error::Result;
use crate::loaders::{array, audio, cremad, frames, h5, pickle};

/// A parser under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `.npy` arrays (AV-MNIST, CREMA-D spectrograms).
    Npy,
    /// Pickles (UR-Funny, MOSEI).
    Pickle,
    /// HDF5 datasets (AVE).
    H5,
    /// WAV clips, through resampling and the STFT (CREMA-D).
    Wav,
    /// Jpeg frames, through resize and normalisation (CREMA-D).
    Jpeg,
    /// Split csv files (CREMA-D).
    Csv,
}

impl Target {
    pub const ALL: [Target; 6] = [Target::Npy, Target::Pickle, Target::H5, Target::Wav, Target::Jpeg, Target::Csv];

    pub fn name(self) -> &'static str {
        match self {
            Target::Npy => "npy",
            Target::Pickle => "pickle",
            Target::H5 => "h5",
            Target::Wav => "wav",
            Target::Jpeg => "jpg",
            Target::Csv => "csv",
        }
    }

    /// Valid inputs the mutations start from.
    pub fn seeds(self) -> Vec<Vec<u8>> {
        match self {
            Target::Npy => {
                let f: Vec<u8> = (0..12).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
                let i: Vec<u8> = (0..6i64).flat_map(|i| i.to_le_bytes()).collect();
                vec![
                    array::npy_bytes("<f4", &[3, 4], &f),
                    array::npy_bytes("|u1", &[2, 3, 2], &[7; 12]),
                    array::npy_bytes("<i8", &[6], &i),
                    array::npy_bytes("<f8", &[2, 3], &[0; 48]),
                ]
            }
            Target::Pickle => vec![
                include_bytes!("../tests/fixtures/urfunny/humor_p4.pkl").to_vec(),
                include_bytes!("../tests/fixtures/urfunny/humor_p2_np1.pkl").to_vec(),
                include_bytes!("../tests/fixtures/mosei/token_to_ix.pkl").to_vec(),
                include_bytes!("../tests/fixtures/mosei/train_sentiment.p").to_vec(),
                include_bytes!("../tests/fixtures/mosei/valid_mels.p").to_vec(),
            ],
            Target::H5 => vec![
                include_bytes!("../tests/fixtures/ave/train_order.h5").to_vec(),
                include_bytes!("../tests/fixtures/ave/right_labels.h5").to_vec(),
                include_bytes!("../tests/fixtures/ave/visual_feature.h5").to_vec(),
            ],
            Target::Wav => vec![wav(8_000, 1, 16, 400), wav(16_000, 2, 16, 300), wav(44_100, 1, 8, 500)],
            Target::Jpeg => vec![jpeg(24, 16), jpeg(9, 31)],
            Target::Csv => vec![
                "\u{feff}1001_DFA_NEU_XX,NEU\r\n1002_DFA_HAP_XX,HAP\r\n\r\n1003_IEO_ANG_HI,ANG\r\n".into(),
                b"1004_DFA_SAD_XX, SAD\n1005_DFA_FEA_XX,FEA\n".to_vec(),
            ],
        }
    }

    /// Parses `bytes` as this target's format, as the loaders do (all the way to the tensors
    /// they build, so sizes taken from headers are exercised).
    pub fn run(self, bytes: &[u8]) -> Result<()> {
        let path = Path::new("fuzz-input");
        match self {
            Target::Npy => {
                let a = array::parse_npy_array(bytes, path)?;
                let _ = a.to_f32();
            }
            Target::Pickle => {
                let v = pickle::parse_pickle(bytes, path)?;
                walk_arrays(&v);
            }
            Target::H5 => {
                for name in ["order", "avadataset"] {
                    if let Ok(ds) = h5::H5Dataset::from_bytes(bytes.to_vec(), path, name) {
                        ds.all_f32()?;
                        if ds.shape().first().is_some_and(|&r| r > 0) {
                            ds.rows_f32(0, 1)?;
                        }
                    }
                }
            }
            Target::Wav => {
                let (x, rate) = audio::parse_wav(bytes, path)?;
                let x = audio::resample(&x, rate, audio::SAMPLE_RATE);
                let _ = audio::log_stft(&audio::tile_and_clip(&x), audio::N_FFT, audio::HOP);
            }
            Target::Jpeg => {
                frames::decode_frame(bytes, path, 16)?;
            }
            Target::Csv => {
                cremad::parse_split_csv(bytes, path)?;
            }
        }
        Ok(())
    }
}

fn walk_arrays(v: &pickle::Py) {
    match v {
        pickle::Py::Array(a) => {
            let _ = a.to_f32();
        }
        pickle::Py::List(items) | pickle::Py::Tuple(items) => items.iter().for_each(walk_arrays),
        pickle::Py::Dict(items) => items.iter().for_each(|(k, v)| {
            walk_arrays(k);
            walk_arrays(v);
        }),
        _ => {}
    }
}

fn wav(rate: u32, channels: u16, bits: u16, frames: usize) -> Vec<u8> {
    let spec =
        hound::WavSpec { channels, sample_rate: rate, bits_per_sample: bits, sample_format: hound::SampleFormat::Int };
    let mut cur = std::io::Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut cur, spec).expect("in-memory wav");
    for i in 0..frames * channels as usize {
        let v = ((i as f32 * 0.05).sin() * 100.0) as i32;
        if bits == 8 {
            w.write_sample(v as i8).expect("in-memory wav");
        } else {
            w.write_sample(v as i16).expect("in-memory wav");
        }
    }
    w.finalize().expect("in-memory wav");
    cur.into_inner()
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 9) as u8, (y * 7) as u8, 128]));
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80).encode_image(&img).expect("in-memory jpeg");
    out
}

/// One change to an input. Positions are taken modulo the input's length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Keep the first `keep % (len + 1)` bytes.
    Truncate {
        keep: u32,
    },
    FlipBit {
        pos: u32,
        bit: u8,
    },
    SetByte {
        pos: u32,
        value: u8,
    },
    /// Overwrite `width` (1, 2, 4 or 8) little-endian bytes with `value`: a size field made huge,
    /// zero or negative.
    WriteInt {
        pos: u32,
        width: u8,
        value: u64,
    },
    /// Replace the `nth` run of ASCII digits (a shape in a `.npy` header, a number in a pickle or
    /// csv) with `value`.
    ReplaceNumber {
        nth: u32,
        value: u64,
    },
    /// Insert a copy of `len` bytes from `from` at `at` (repeats structure, e.g. pickle opcodes).
    Duplicate {
        from: u32,
        len: u16,
        at: u32,
    },
    Delete {
        pos: u32,
        len: u16,
    },
}

/// Sizes that break naive arithmetic.
pub const INTERESTING: [u64; 12] =
    [0, 1, 2, 0x7f, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 1 << 32, 1 << 61, i64::MAX as u64, u64::MAX];

/// `input` with `mutations` applied in order.
pub fn apply(input: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = input.to_vec();
    for m in mutations {
        let n = b.len();
        let at = |p: u32| if n == 0 { 0 } else { p as usize % n };
        match *m {
            Mutation::Truncate { keep } => b.truncate(keep as usize % (n + 1)),
            Mutation::FlipBit { pos, bit } if n > 0 => b[at(pos)] ^= 1 << (bit % 8),
            Mutation::SetByte { pos, value } if n > 0 => b[at(pos)] = value,
            Mutation::WriteInt { pos, width, value } if n > 0 => {
                let w = [1usize, 2, 4, 8][width as usize % 4];
                let p = at(pos);
                let bytes = value.to_le_bytes();
                let end = (p + w).min(n);
                b[p..end].copy_from_slice(&bytes[..end - p]);
            }
            Mutation::ReplaceNumber { nth, value } => {
                let runs = digit_runs(&b);
                if !runs.is_empty() {
                    let (s, e) = runs[nth as usize % runs.len()];
                    b.splice(s..e, value.to_string().into_bytes());
                }
            }
            Mutation::Duplicate { from, len, at: to } if n > 0 => {
                let s = at(from);
                let e = (s + len as usize).min(n);
                let chunk = b[s..e].to_vec();
                let t = at(to);
                b.splice(t..t, chunk);
            }
            Mutation::Delete { pos, len } if n > 0 => {
                let s = at(pos);
                let e = (s + len as usize).min(n);
                b.drain(s..e);
            }
            _ => {}
        }
        // Keep inputs small so every case stays fast.
        b.truncate(1 << 20);
    }
    b
}

fn digit_runs(b: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((s, i));
        } else {
            i += 1;
        }
    }
    runs
}

/// A random mutation (what `cargo xtask fuzz` draws; the property test has its own strategy).
pub fn random_mutation(rng: &mut impl RngCore) -> Mutation {
    let pos = rng.next_u32();
    match rng.random_range(0..7) {
        0 => Mutation::Truncate { keep: pos },
        1 => Mutation::FlipBit { pos, bit: rng.random() },
        2 => Mutation::SetByte { pos, value: rng.random() },
        3 => Mutation::WriteInt {
            pos,
            width: rng.random(),
            value: if rng.random_bool(0.7) {
                INTERESTING[rng.random_range(0..INTERESTING.len())]
            } else {
                rng.random()
            },
        },
        4 => Mutation::ReplaceNumber { nth: pos, value: INTERESTING[rng.random_range(0..INTERESTING.len())] },
        5 => Mutation::Duplicate { from: pos, len: rng.random_range(1..64), at: rng.next_u32() },
        _ => Mutation::Delete { pos, len: rng.random_range(1..32) },
    }
}

/// The generator `cargo xtask fuzz` draws cases from.
pub fn seeded_rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand::SeedableRng::seed_from_u64(seed)
}

/// A random case: a seed index and one to four mutations.
pub fn random_case(rng: &mut impl RngCore, seeds: usize) -> (usize, Vec<Mutation>) {
    let k = rng.random_range(1..=4);
    (rng.random_range(0..seeds.max(1)), (0..k).map(|_| random_mutation(rng)).collect())
}
