//! What the audit trail adds per stored instance and per inference: the
//! durable append of a record, alone and from eight threads at once (SQLite
//! WAL, fsync, on this disk: the temp
//! folder is on the same file system as the data directory here), the
//! SHA-256 of a received 512 KiB file, the SHA-256 of a decoded 512×512
//! image. The audit log is created in the system temp folder; run on the
//! appliance's disk for figures that match production.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha2::Digest;
use vigie_audit::{Audit, AuditConfig, AuditEvent, EventKind};

fn instance_details() -> serde_json::Value {
    serde_json::json!({
        "calling_ae_title": "PACS",
        "peer": "10.0.0.20:40512",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4",
        "series_instance_uid": "2.25.121209127939362701588420600491768164797",
        "transfer_syntax": "1.2.840.10008.1.2.1",
        "modality": "MR",
        "file_sha256": "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
        "bytes": 524_288,
        "path": "/var/lib/vigie/studies/2.25.1/2.25.2/2.25.3.dcm",
        "patient_id": { "hmac_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" },
    })
}

fn inference_details() -> serde_json::Value {
    serde_json::json!({
        "job_id": 17, "attempt": 1, "rule": "default",
        "input": {
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4",
            "series_instance_uid": "2.25.121209127939362701588420600491768164797",
            "transfer_syntax": "1.2.840.10008.1.2.1",
            "file_sha256": "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
            "pixels_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "frames": 1
        },
        "model_sha256": "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
        "execution": { "backend": "onnxruntime", "provider": "CPUExecutionProvider", "device": "cpu", "intra_threads": 2, "runtime_version": "1.31.1" },
        "preprocessing": { "modality_lut": true, "voi": { "kind": "file" }, "resize": { "width": 240, "height": 240, "filter": "bicubic" } },
        "decode_ms": 0.57, "decision": "glioma",
        "frames": [{
            "frame": 0,
            "raw_output": [0.998, 0.001, 0.0005, 0.0005],
            "finding": { "kind": "classification", "labels": ["glioma", "meningioma", "notumor", "pituitary"], "probabilities": [0.998, 0.001, 0.0005, 0.0005], "decision": "glioma", "rule": "argmax", "threshold": null },
            "preprocess": { "source": [512, 512, 1], "target": [240, 240, 3] },
            "timings_ms": { "preprocess_ms": 1.0, "inference_ms": 161.0, "postprocess_ms": 0.01 }
        }]
    })
}

fn audit_overhead(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(dir.path(), "bench", &AuditConfig::default()).unwrap();
    let mut group = c.benchmark_group("audit");
    let stored = AuditEvent::new(EventKind::InstanceStored, "ok", instance_details())
        .instance(Some("2.25.1"), Some("2.25.3"));
    group.bench_function("append_instance_stored", |b| {
        b.iter(|| audit.record(stored.clone()).unwrap())
    });
    // Eight associations storing at once: each record is durable when its
    // caller returns; callers that wait behind a commit share the next one.
    group.throughput(Throughput::Elements(1));
    group.bench_function("append_instance_stored_8_threads", |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(8);
            let started = std::time::Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..8 {
                    scope.spawn(|| {
                        for _ in 0..per_thread {
                            audit.record(stored.clone()).unwrap();
                        }
                    });
                }
            });
            started
                .elapsed()
                .mul_f64(iters as f64 / (per_thread * 8) as f64)
        })
    });
    let inference = AuditEvent::new(EventKind::Inference, "ok", inference_details())
        .instance(Some("2.25.1"), Some("2.25.3"))
        .model("brain-tumour-vgg16", "0.1.1");
    let result = AuditEvent::new(
        EventKind::ResultCreated,
        "ok",
        serde_json::json!({
            "job_id": 17, "kind": "sr",
            "series_instance_uid": "2.25.100505814949020815972186599664131878794",
            "source_sop_instance_uid": "2.25.3", "frame": 0,
            "path": "/var/lib/vigie/results/2.25.1/2.25.4/2.25.5.dcm",
            "file_sha256": "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
        }),
    )
    .instance(Some("2.25.1"), Some("2.25.5"))
    .model("brain-tumour-vgg16", "0.1.1");
    let per_inference = [inference, result];
    group.bench_function("append_inference_and_result", |b| {
        b.iter(|| audit.record_all(&per_inference).unwrap())
    });
    let file = vec![0x5Au8; 512 * 1024];
    group.throughput(Throughput::Bytes(file.len() as u64));
    group.bench_function("sha256_received_file_512KiB", |b| {
        b.iter(|| sha2::Sha256::digest(&file))
    });
    let pixels: Vec<f32> = (0..512 * 512).map(|i| (i % 4096) as f32 / 4095.0).collect();
    group.throughput(Throughput::Bytes((pixels.len() * 4) as u64));
    group.bench_function("sha256_decoded_pixels_512x512_f32", |b| {
        b.iter(|| vigie_analysis::hash_samples(&pixels))
    });
    group.finish();
}

criterion_group!(benches, audit_overhead);
criterion_main!(benches);
