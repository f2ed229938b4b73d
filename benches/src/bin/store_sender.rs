//! A C-STORE sender that never waits on the receiver's delayed
//! acknowledgements: Vigie's own storage SCU (`send_files`, TCP_NODELAY),
//! the files of a folder split over PARALLEL associations opened at once.
//! With it, the ingest benchmark measures the receiver rather than
//! `storescu`'s own cost per instance.
//!
//! Usage: store_sender HOST PORT CALLED_AE PARALLEL FILES_DIR
//! Prints the wall time in nanoseconds (from the first file read to the
//! last response); exits non-zero unless every file was acknowledged with
//! Success or Warning.

use std::time::Instant;

use anyhow::Context;
use vigie_dicom_io::net::scu::{RemoteAe, ScuOptions, send_files};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let host = args.get(1).context("HOST")?.clone();
    let port: u16 = args.get(2).context("PORT")?.parse()?;
    let called = args.get(3).context("CALLED_AE")?.clone();
    let parallel: usize = args.get(4).context("PARALLEL")?.parse()?;
    let dir = args.get(5).context("FILES_DIR")?;
    anyhow::ensure!(parallel >= 1, "PARALLEL must be at least 1");
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no files in {dir}");
    let shares: Vec<Vec<_>> = (0..parallel)
        .map(|p| files.iter().skip(p).step_by(parallel).cloned().collect())
        .collect();
    let remote = RemoteAe {
        ae_title: called,
        host,
        port,
        tls: None,
    };
    let mut options = ScuOptions::new("BENCH-SCU");
    options.timeout = std::time::Duration::from_secs(600);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let outcomes = runtime.block_on(async {
        let mut tasks = Vec::new();
        for share in shares {
            let (remote, options) = (remote.clone(), options.clone());
            tasks.push(tokio::spawn(async move {
                send_files(&remote, &options, &share).await
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await??);
        }
        anyhow::Ok(all)
    })?;
    let elapsed = started.elapsed();
    let refused: Vec<_> = outcomes.iter().filter(|o| !o.delivered()).collect();
    anyhow::ensure!(
        refused.is_empty() && outcomes.len() == files.len(),
        "{} of {} files not acknowledged: {refused:?}",
        files.len() - outcomes.len() + refused.len(),
        files.len()
    );
    println!("{}", elapsed.as_nanos());
    Ok(())
}
