//! Jpeg frames: decode, resize, ImageNet normalisation, and the reference's frame choice.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// ImageNet per-channel mean (RGB) that frames are normalised with, as torchvision's `Normalize`.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet per-channel standard deviation (RGB), as torchvision's `Normalize`.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Index picked by `np.random.seed(999); np.random.choice(n, 1, replace=False)` for a folder of
/// `n` frames: numpy's legacy `RandomState` (MT19937 seeded with `init_genrand(999)`, then
/// `permutation(n)[0]` by a Fisher–Yates shuffle with masked rejection draws). Checked against
/// numpy for n = 1..39.
pub fn reference_frame_index(n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let mut mt = Mt19937::new(999);
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let max = i as u64;
        let mut mask = max;
        for s in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> s;
        }
        let j = loop {
            let v = if max <= 0xffff_ffff {
                mt.next_u32() as u64 & mask
            } else {
                ((mt.next_u32() as u64) << 32 | mt.next_u32() as u64) & mask
            };
            if v <= max {
                break v as usize;
            }
        };
        perm.swap(i, j);
    }
    perm[0]
}

/// The Mersenne Twister MT19937 (32-bit), as numpy's legacy generator.
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32.wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.state[i] = v;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// The frame files of `dir` (extension `jpg` or `jpeg`, any case), sorted by name as
/// `sorted(os.listdir)` does.
pub fn list_frames(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|source| DataError::Io { path: dir.to_path_buf(), cause: source })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Decodes a jpeg, resizes it to `size × size` (bilinear with antialiasing, like PIL's
/// `Resize`), scales to [0, 1] and normalises with the ImageNet mean/std: `[3, size, size]`.
pub fn load_frame(path: &Path, size: u32) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(|source| super::io_err(path, source))?;
    decode_frame(&bytes, path, size)
}

/// Whether a jpeg's image data ends with the end-of-image marker (`FF D9`). The decoder fills
/// the rows of a file cut short without a word (PIL refuses it), so the marker is looked for
/// after the first start-of-scan segment: scan data never holds `FF D9` (an `FF` byte there is
/// followed by `00` or a restart marker). Headers that cannot be walked are left to the decoder.
fn reaches_end_of_image(bytes: &[u8]) -> bool {
    let mut at = 2; // after the start-of-image marker
    while at + 4 <= bytes.len() && bytes[at] == 0xFF {
        let marker = bytes[at + 1];
        if marker == 0xFF {
            at += 1; // fill byte
            continue;
        }
        let length = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        let after = at + 2 + length;
        if marker == 0xDA {
            return bytes.get(after..).is_some_and(|scan| scan.windows(2).any(|w| w == [0xFF, 0xD9]));
        }
        at = after;
    }
    true
}

/// [`load_frame`] on the bytes of a jpeg; `path` only labels errors. Sides above
/// [`crate::limits::MAX_FRAME_SIDE`] are refused before decoding, so a forged header cannot ask
/// for gigabytes.
pub fn decode_frame(bytes: &[u8], path: &Path, size: u32) -> Result<Vec<f32>> {
    let bad =
        |e: String| DataError::BadSource { path: path.to_path_buf(), reason: format!("not a readable jpeg: {e}") };
    if !reaches_end_of_image(bytes) {
        return Err(bad("the file is cut short (no end-of-image marker after its image data); copy it again".into()));
    }
    let side = crate::limits::MAX_FRAME_SIDE;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(4 * u64::from(side) * u64::from(side));
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Jpeg);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| match e {
            image::ImageError::Limits(_) => bad(format!("larger than {side} x {side} pixels or too much memory ({e})")),
            other => bad(other.to_string()),
        })?
        .to_rgb8();
    if img.width() == 0 || img.height() == 0 {
        return Err(bad("the image is empty".into()));
    }
    let img = if img.width() == size && img.height() == size {
        img
    } else {
        image::imageops::resize(&img, size, size, image::imageops::FilterType::Triangle)
    };
    let plane = (size * size) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::decode_frame;
    use std::path::Path;

    fn jpeg() -> Vec<u8> {
        // Large and busy enough that half the file lies in the scan data, past the headers.
        let img =
            image::RgbImage::from_fn(160, 120, |x, y| image::Rgb([((x * 7) ^ (y * 13)) as u8, (x * y) as u8, 128]));
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg).unwrap();
        bytes
    }

    #[test]
    fn a_jpeg_cut_short_is_refused_and_trailing_bytes_are_not() {
        let whole = jpeg();
        let path = Path::new("Image-01-FPS/1001_DFA_NEU_XX/00000.jpg");
        assert_eq!(decode_frame(&whole, path, 8).unwrap().len(), 3 * 64);
        for cut in [whole.len() / 2, whole.len() - 2] {
            let err = decode_frame(&whole[..cut], path, 8).unwrap_err().to_string();
            assert!(err.contains("00000.jpg") && err.contains("cut short"), "cut at {cut}: {err}");
        }
        // Some writers pad after the end-of-image marker; that is still a whole image.
        let padded = [whole.as_slice(), &[0u8; 3000]].concat();
        assert_eq!(decode_frame(&padded, path, 8).unwrap(), decode_frame(&whole, path, 8).unwrap());
    }
}
