//! Preprocessing (resample, replicate, scale, layout) of the reference
//! model's input, CPU.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vigie_inference::manifest::{
    DType, Filter, Layout, Normalize, Preprocess, Resize, TensorSpec, Voi,
};
use vigie_inference::preprocess::{Image, Preprocessor};

fn preprocess_cpu(c: &mut Criterion) {
    let mut group = c.benchmark_group("preprocess_cpu");
    for filter in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos3] {
        let spec = Preprocess {
            modality_lut: true,
            voi: Voi::File,
            clip: None,
            resize: Some(Resize {
                width: 240,
                height: 240,
                filter,
            }),
            normalize: Normalize::default(),
        };
        let input = TensorSpec {
            name: "input".into(),
            dtype: DType::Float32,
            shape: vec![-1, 240, 240, 3],
            layout: Layout::Nhwc,
        };
        let mut pre = Preprocessor::new(&spec, &input).expect("valid");
        let data: Vec<f32> = (0..512 * 512).map(|i| (i % 251) as f32 / 250.0).collect();
        let image = Image {
            rows: 512,
            columns: 512,
            channels: 1,
            data: &data,
        };
        let mut out = vec![0f32; pre.tensor_len()];
        group.throughput(Throughput::Elements(512 * 512));
        group.bench_function(format!("512_to_240_{filter:?}").to_lowercase(), |b| {
            b.iter(|| pre.run_into(&image, &mut out).expect("runs"))
        });
    }
    group.finish();
}

criterion_group!(benches, preprocess_cpu);
criterion_main!(benches);
