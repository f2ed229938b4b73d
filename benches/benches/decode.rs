//! Pixel data decoding per transfer syntax, CPU.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vigie_dicom_io::{DicomFile, PixelOptions, VoiSelection};

fn decode_cpu(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_cpu");
    let mut cases: Vec<(String, std::path::PathBuf)> = vigie_benches::demo_files()
        .into_iter()
        .take(1)
        .map(|p| ("demo_mr_explicit_le_512".to_string(), p))
        .collect();
    if let Some(dir) = vigie_benches::pydicom_test_files() {
        for (name, file) in [
            ("ct_explicit_le", "CT_small.dcm"),
            ("mr_rle", "MR_small_RLE.dcm"),
            ("mr_jpeg_ls", "MR_small_jpeg_ls_lossless.dcm"),
            ("mr_j2k_lossless", "MR_small_jp2klossless.dcm"),
            ("rgb_jpeg_baseline", "SC_rgb_jpeg_dcmtk.dcm"),
            ("mr_deflate", "image_dfl.dcm"),
        ] {
            cases.push((name.to_string(), dir.join(file)));
        }
    }
    assert!(!cases.is_empty(), "run scripts/setup.sh first");
    for (name, path) in cases {
        let file = DicomFile::open(&path).expect("opens");
        let pixels = file.decode_stored().expect("decodes");
        group.throughput(Throughput::Elements(
            (pixels.frames * pixels.rows * pixels.columns) as u64,
        ));
        let options = PixelOptions::with_voi(VoiSelection::FromFile);
        group.bench_function(name, |b| b.iter(|| file.decode(&options).expect("decodes")));
    }
    group.finish();
}

criterion_group!(benches, decode_cpu);
criterion_main!(benches);
