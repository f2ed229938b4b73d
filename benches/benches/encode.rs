//! DIMSE command sets (every C-STORE goes through one decode and one
//! encode) and result objects (a TID 1500 SR per analysed image, built and
//! serialised), CPU.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vigie_analysis::results::ResultBuilder;
use vigie_dicom_io::DicomFile;
use vigie_dicom_io::dimse::Command;
use vigie_inference::backend::{BackendOptions, Device};
use vigie_inference::{Model, ModelPackage};

fn dimse(c: &mut Criterion) {
    let mut group = c.benchmark_group("dimse");
    let request = Command::store_request(
        7,
        "1.2.840.10008.5.1.4.1.1.4",
        "2.25.123456789012345678901234567890123456",
    );
    let bytes = request.encode();
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("c_store_rq_decode", |b| {
        b.iter(|| Command::decode(&bytes).expect("decodes"))
    });
    group.bench_function("c_store_rsp_encode", |b| {
        b.iter(|| request.response(0xA700, Some("out of resources")).encode())
    });
    group.finish();
}

fn sr(c: &mut Criterion) {
    let root = vigie_benches::repo_root();
    let files = vigie_benches::demo_files();
    assert!(!files.is_empty(), "run scripts/setup.sh first");
    let package = ModelPackage::load(root.join("models/brain-tumour-vgg16")).expect("package");
    let lib = root.join(".cache/vigie/onnxruntime/libonnxruntime.so.1.31.1");
    let mut model =
        Model::load(package, &BackendOptions::new(Device::Cpu, 2, Some(lib))).expect("model");
    let file = DicomFile::open(&files[0]).expect("opens");
    let analysis = vigie_analysis::analyse(&mut model, &file).expect("analysed");
    let manifest = model.package().manifest().clone();
    let mut builder = ResultBuilder::new("bench", "2.25", false).expect("builder");
    let mut group = c.benchmark_group("results");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sr_tid1500_build", |b| {
        b.iter(|| {
            builder
                .build(&file, 0, 1, &manifest, &analysis.results[0])
                .expect("built")
        })
    });
    group.bench_function("sr_tid1500_build_and_encode", |b| {
        b.iter(|| {
            let objects = builder
                .build(&file, 0, 1, &manifest, &analysis.results[0])
                .expect("built");
            let mut out = Vec::new();
            for o in objects {
                o.dataset
                    .write_dataset_with_ts(
                        &mut out,
                        &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN
                            .erased(),
                    )
                    .expect("encodes");
            }
            out
        })
    });
    group.finish();
}

criterion_group!(benches, dimse, sr);
criterion_main!(benches);
