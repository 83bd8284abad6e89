//! The binary layout of the AV-Digits asset header.

use std::path::Path;

use super::{FORMAT_VERSION, MAGIC};
use crate::error::{DataError, Result};

pub(crate) const HEADER_LEN: usize = 8 + 4 + 8 + 6 * 4 + 4 * 4 + 64 + 64;

/// The header of an AV-Digits asset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetHeader {
    /// Asset format version ([`FORMAT_VERSION`](crate::av_digits::FORMAT_VERSION) for this build).
    pub version: u32,
    /// Seed of the pairing and split shuffles.
    pub seed: u64,
    /// Samples over all splits.
    pub num_samples: usize,
    /// Number of classes (10 digits).
    pub num_classes: usize,
    /// Image height in pixels.
    pub image_height: usize,
    /// Image width in pixels.
    pub image_width: usize,
    /// MFCC coefficients per frame.
    pub mfcc_coeffs: usize,
    /// MFCC frames stored per sample.
    pub frames: usize,
    /// Samples in train, dep, validation, test.
    pub split_counts: [usize; 4],
    /// sha256 (hex) of the wheel the images come from.
    pub image_source_sha256: String,
    /// sha256 (hex) of the wheel the MFCCs come from.
    pub audio_source_sha256: String,
}

impl AssetHeader {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.seed.to_le_bytes());
        for v in
            [self.num_samples, self.num_classes, self.image_height, self.image_width, self.mfcc_coeffs, self.frames]
                .into_iter()
                .chain(self.split_counts)
        {
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        for h in [&self.image_source_sha256, &self.audio_source_sha256] {
            assert_eq!(h.len(), 64, "sha256 hex is 64 characters");
            out.extend_from_slice(h.as_bytes());
        }
    }

    pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: String| DataError::BadAsset { path: path.to_path_buf(), reason };
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            let found = &bytes[..bytes.len().min(MAGIC.len())];
            return Err(bad(format!(
                "wrong magic bytes: expected {:?}, found {:?}",
                String::from_utf8_lossy(&MAGIC),
                String::from_utf8_lossy(found)
            )));
        }
        if bytes.len() < HEADER_LEN {
            return Err(bad(format!("truncated header: {} of {HEADER_LEN} bytes", bytes.len())));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version} is not supported (this build reads version {FORMAT_VERSION})"
            )));
        }
        let seed = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let f: Vec<usize> = (0..10).map(|i| u32_at(20 + 4 * i) as usize).collect();
        let hex = |o: usize| -> Result<String> {
            let s = std::str::from_utf8(&bytes[o..o + 64])
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| bad("source sha256 in the header is not hex".into()))?;
            Ok(s.to_string())
        };
        Ok(Self {
            version,
            seed,
            num_samples: f[0],
            num_classes: f[1],
            image_height: f[2],
            image_width: f[3],
            mfcc_coeffs: f[4],
            frames: f[5],
            split_counts: [f[6], f[7], f[8], f[9]],
            image_source_sha256: hex(60)?,
            audio_source_sha256: hex(124)?,
        })
    }

    /// Length in bytes of the body that follows the header.
    pub(crate) fn body_len(&self) -> Option<usize> {
        let n = self.num_samples;
        let image = n.checked_mul(self.image_height)?.checked_mul(self.image_width)?;
        let audio = n.checked_mul(self.mfcc_coeffs)?.checked_mul(self.frames)?.checked_mul(4)?;
        image.checked_add(audio)?.checked_add(n.checked_mul(2 + 3 * 2)?)
    }
}
