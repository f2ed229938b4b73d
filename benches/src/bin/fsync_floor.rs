//! The durable-write floor of ingest: for each file of a folder (read into
//! memory first), write it to a staging file in OUT, fsync it, rename it
//! into place, and (second figure) also fsync the destination folder, as
//! `vigie serve` does before it answers Success. Nothing else: no network,
//! no parsing, no index. On the same disk as the ingest benchmark, this is
//! what a receiver that keeps its promise cannot go below.
//!
//! Usage: fsync_floor FILES_DIR OUT_DIR ROUNDS
//! Prints one JSON object.

use std::fs::File;
use std::io::Write;
use std::time::Instant;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let files_dir = args.get(1).context("FILES_DIR")?;
    let out = std::path::PathBuf::from(args.get(2).context("OUT_DIR")?);
    let rounds: usize = args.get(3).context("ROUNDS")?.parse()?;
    let mut contents = Vec::new();
    for entry in std::fs::read_dir(files_dir)? {
        contents.push(std::fs::read(entry?.path())?);
    }
    anyhow::ensure!(!contents.is_empty(), "no files in {files_dir}");
    let mut figures = Vec::new();
    for folder_fsync in [false, true] {
        let mut best = f64::INFINITY;
        for round in 0..rounds {
            let dir = out.join(format!("{folder_fsync}-{round}"));
            std::fs::create_dir_all(&dir)?;
            File::open(&dir)?.sync_all()?;
            let started = Instant::now();
            for (i, bytes) in contents.iter().enumerate() {
                let staged = dir.join(format!("{i}.part"));
                let mut file = File::create(&staged)?;
                file.write_all(bytes)?;
                file.sync_data()?;
                drop(file);
                std::fs::rename(&staged, dir.join(format!("{i}.dcm")))?;
                if folder_fsync {
                    File::open(&dir)?.sync_all()?;
                }
            }
            best = best.min(started.elapsed().as_secs_f64());
            std::fs::remove_dir_all(&dir)?;
        }
        figures.push(best / contents.len() as f64 * 1000.0);
    }
    let bytes: usize = contents.iter().map(Vec::len).sum();
    println!(
        "{}",
        serde_json::json!({
            "files": contents.len(),
            "mean_file_bytes": bytes / contents.len(),
            "rounds": rounds,
            "write_fsync_rename_ms_per_file": figures[0],
            "write_fsync_rename_fsync_folder_ms_per_file": figures[1],
            "floor_files_per_s": 1000.0 / figures[0],
        })
    );
    Ok(())
}
