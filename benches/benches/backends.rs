//! The reference model (VGG16, 240×240×3) on its two backends, CPU, on the
//! same tensor: ONNX Runtime and candle (the ONNX graph evaluated natively).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vigie_inference::backend::{BackendOptions, Device};
use vigie_inference::manifest::BackendKind;
use vigie_inference::{Image, Model, ModelPackage};

fn backends(c: &mut Criterion) {
    let root = vigie_benches::repo_root();
    let files = vigie_benches::demo_files();
    assert!(!files.is_empty(), "run scripts/setup.sh first");
    let lib = root.join(".cache/vigie/onnxruntime/libonnxruntime.so.1.31.1");
    let options = BackendOptions::new(Device::Cpu, 2, Some(lib));
    let load = |kind| {
        let package = ModelPackage::load(root.join("models/brain-tumour-vgg16")).expect("package");
        Model::load_with_backend(package, kind, &options).expect("model")
    };
    let mut onnx = load(BackendKind::Onnx);
    let file = vigie_dicom_io::DicomFile::open(&files[0]).expect("opens");
    let px = file
        .decode(&vigie_analysis::pixel_options(
            &onnx.package().manifest().preprocess,
        ))
        .expect("decodes");
    let tensor = onnx
        .preprocess(&Image {
            rows: px.rows,
            columns: px.columns,
            channels: px.samples_per_pixel,
            data: &px.data,
        })
        .expect("preprocessed");
    let mut group = c.benchmark_group("backends_cpu_2_threads");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    group.bench_function("vgg16_onnxruntime", |b| {
        b.iter(|| onnx.run_tensor(&tensor).expect("runs"))
    });
    drop(onnx);
    let mut candle = load(BackendKind::Candle);
    group.bench_function("vgg16_candle", |b| {
        b.iter(|| candle.run_tensor(&tensor).expect("runs"))
    });
    group.finish();
}

criterion_group!(benches, backends);
criterion_main!(benches);
