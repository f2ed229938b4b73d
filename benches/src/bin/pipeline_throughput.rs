//! Vigie's full pipeline (open, decode, VOI, preprocess, ONNX Runtime,
//! postprocess) on the demo studies, against the same model's bare
//! `session.run` on the same tensors, in one process and interleaved.
//! Also writes the tensors for the Python onnxruntime baseline.
//!
//! The pipeline figure is the hot loop of `vigie serve`
//! (`vigie_analysis::analyse_stream`: DECODE_THREADS threads opening, decoding
//! and preprocessing ahead of the model, MAX_BATCH instances per model run); "sequential" is the same work
//! one instance after the other on one thread; "session only" is
//! `session.run` on ready tensors. Latency: time between consecutive
//! results of the hot loop.
//!
//! Usage: pipeline_throughput ROUNDS THREADS TENSORS_OUT [MAX_BATCH [DECODE_THREADS]]
//! Prints one JSON object. Environment: `VIGIE_BENCH_DEVICE` (`cpu`, the
//! default, or `cuda:N`), `VIGIE_BENCH_MODEL` (package folder, default the
//! reference model), `VIGIE_BENCH_ORT` (the ONNX Runtime library, default
//! the CPU one fetched by `scripts/setup.sh`), `VIGIE_BENCH_CONV_SEARCH`
//! (the CUDA provider's cuDNN algorithm search: `exhaustive`, the default,
//! `heuristic` or `default`).

use std::time::Instant;

use anyhow::Context;
use vigie_inference::backend::{BackendOptions, ConvAlgoSearch, Device};
use vigie_inference::{Image, Model, ModelPackage};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).context("ROUNDS")?.parse()?;
    let threads: usize = args.get(2).context("THREADS")?.parse()?;
    let tensors_out = args.get(3).context("TENSORS_OUT")?;
    let max_batch: usize = args.get(4).map_or(Ok(1), |b| b.parse())?;
    let decode_threads: usize = args.get(5).map_or(Ok(1), |b| b.parse())?;
    let root = vigie_benches::repo_root();
    let files = vigie_benches::demo_files();
    anyhow::ensure!(!files.is_empty(), "run scripts/setup.sh first");
    let env_path = |name: &str, default: &str| {
        std::env::var_os(name).map_or_else(|| root.join(default), std::path::PathBuf::from)
    };
    let lib = env_path(
        "VIGIE_BENCH_ORT",
        ".cache/vigie/onnxruntime/libonnxruntime.so.1.31.1",
    );
    let device = match std::env::var("VIGIE_BENCH_DEVICE").as_deref() {
        Err(_) | Ok("cpu") => Device::Cpu,
        Ok(other) => {
            let id = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .context("VIGIE_BENCH_DEVICE is `cpu` or `cuda:N`")?;
            Device::Cuda { device_id: id }
        }
    };
    let package = ModelPackage::load(env_path("VIGIE_BENCH_MODEL", "models/brain-tumour-vgg16"))?;
    let search = match std::env::var("VIGIE_BENCH_CONV_SEARCH").as_deref() {
        Err(_) | Ok("exhaustive") => ConvAlgoSearch::Exhaustive,
        Ok("heuristic") => ConvAlgoSearch::Heuristic,
        Ok("default") => ConvAlgoSearch::Default,
        Ok(other) => {
            anyhow::bail!("VIGIE_BENCH_CONV_SEARCH {other:?}: exhaustive, heuristic or default")
        }
    };
    let options = BackendOptions::new(device, threads, Some(lib)).with_conv_algo_search(search);
    let mut model = Model::load(package, &options)?;
    let provider = model.execution().provider.clone();
    // Tensors for the bare-runtime measurements, made by the same pipeline.
    let pre = model.package().manifest().preprocess.clone();
    let mut tensors = Vec::new();
    for f in &files {
        let file = vigie_dicom_io::DicomFile::open(f)?;
        let px = file.decode(&vigie_analysis::pixel_options(&pre))?;
        tensors.push(model.preprocess(&Image {
            rows: px.rows,
            columns: px.columns,
            channels: px.samples_per_pixel,
            data: &px.data,
        })?);
    }
    let bytes: Vec<u8> = tensors
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(tensors_out, bytes)?;
    // Warm-up.
    for f in &files {
        vigie_analysis::analyse_path(&mut model, f)?;
    }
    let hot_loop = vigie_analysis::HotLoop {
        batching: vigie_analysis::Batching {
            max_batch,
            max_delay: std::time::Duration::from_millis(20),
        },
        decode_threads,
        decode_cpus: Vec::new(),
    };
    let (mut pipeline_s, mut sequential_s, mut session_s) = (0.0, 0.0, 0.0);
    let mut latencies = Vec::new();
    for _ in 0..rounds {
        // The hot loop of `vigie serve`: decode and preprocess ahead.
        let t = Instant::now();
        let mut last = Instant::now();
        vigie_analysis::analyse_stream(&mut model, &files, &hot_loop, |_, outcome| {
            outcome?;
            latencies.push(last.elapsed().as_secs_f64() * 1000.0);
            last = Instant::now();
            Ok::<(), anyhow::Error>(())
        })?;
        pipeline_s += t.elapsed().as_secs_f64();
        // The same, one instance after the other on one thread.
        let t = Instant::now();
        for f in &files {
            vigie_analysis::analyse_path(&mut model, f)?;
        }
        sequential_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for tensor in &tensors {
            model.run_tensor(tensor)?;
        }
        session_s += t.elapsed().as_secs_f64();
    }
    latencies.sort_by(f64::total_cmp);
    let n = (rounds * files.len()) as f64;
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{}",
        serde_json::json!({
            "images": n,
            "threads": threads,
            "provider": provider,
            "max_batch": max_batch,
            "decode_threads": decode_threads,
            "pipeline_images_per_s": n / pipeline_s,
            "sequential_images_per_s": n / sequential_s,
            "session_only_images_per_s": n / session_s,
            "pipeline_p50_ms": pct(0.5),
            "pipeline_p95_ms": pct(0.95),
        })
    );
    Ok(())
}
