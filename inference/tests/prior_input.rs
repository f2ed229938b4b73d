//! A model with a prior input (`[priors]`), on both backends: the prior
//! tensor reaches the model's second input with every image of a batch,
//! "missing" fills it as the manifest says, and nothing set is refused.
//! Uses the TEST FIXTURE `models/fixture-prior-change` (mean absolute
//! difference of the two images), built by scripts/setup.sh.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use vigie_inference::backend::{BackendOptions, Device};
use vigie_inference::manifest::BackendKind;
use vigie_inference::{Image, Model, ModelPackage, PriorInput};

fn model(kind: BackendKind) -> Model {
    model_in(&vigie_test_support::model_dir("fixture-prior-change"), kind)
}

fn model_in(dir: &std::path::Path, kind: BackendKind) -> Model {
    let package = ModelPackage::load(dir).expect("fixture package");
    Model::load_with_backend(
        package,
        kind,
        &BackendOptions::new(
            Device::Cpu,
            1,
            Some(vigie_test_support::onnxruntime_library()),
        ),
    )
    .expect("loads")
}

/// 64x64, the left `columns` columns bright (values after the VOI step,
/// which the DICOM decoding applies).
fn bars(columns: usize) -> Vec<f32> {
    (0..64 * 64)
        .map(|i| if i % 64 < columns { 1.0 } else { 0.0 })
        .collect()
}

fn image(data: &[f32]) -> Image<'_> {
    Image {
        rows: 64,
        columns: 64,
        channels: 1,
        data,
    }
}

/// P(changed) as the fixture defines it: sigmoid(40 (mean|a - b| - 0.1)).
fn expected(mean_abs_difference: f32) -> f32 {
    1.0 / (1.0 + (-(40.0 * (mean_abs_difference - 0.1))).exp())
}

fn decision(result: &vigie_inference::ModelResult) -> &str {
    match &result.finding {
        vigie_inference::postprocess::Finding::Classification(c) => &c.decision,
        other => panic!("not a classification: {other:?}"),
    }
}

#[test]
fn the_prior_reaches_the_second_input_on_both_backends() {
    for kind in [BackendKind::Onnx, BackendKind::Candle] {
        let mut model = model(kind);
        assert!(model.takes_prior());
        let (half, quarter) = (bars(32), bars(16));
        // Nothing set: refused, never run on half its input.
        let err = model.run(&[image(&half)]).expect_err("no prior set");
        assert!(err.to_string().contains("prior"), "{err}");
        // The prior: a quarter bright, against a half and a quarter.
        let prior = model.preprocess(&image(&quarter)).unwrap();
        model
            .set_priors(Some(vec![PriorInput::Tensor(prior)]))
            .unwrap();
        let results = model.run(&[image(&half), image(&quarter)]).unwrap();
        let p = |i: usize| results[i].raw_output[1];
        assert!((p(0) - expected(0.25)).abs() < 1e-4, "{kind:?}: {}", p(0));
        assert!((p(1) - expected(0.0)).abs() < 1e-4, "{kind:?}: {}", p(1));
        assert_eq!(decision(&results[0]), "changed");
        assert_eq!(decision(&results[1]), "stable");
        // Missing: zeros (the manifest's default), so the whole half counts.
        model.set_priors(Some(vec![PriorInput::Missing])).unwrap();
        let results = model.run(&[image(&half)]).unwrap();
        assert!((results[0].raw_output[1] - expected(0.5)).abs() < 1e-4);
        // A tensor of the wrong size is refused.
        assert!(
            model
                .set_priors(Some(vec![PriorInput::Tensor(vec![0.0; 10])]))
                .is_err()
        );
        // As many priors as inputs, no more.
        let tensor = model.preprocess(&image(&quarter)).unwrap();
        assert!(
            model
                .set_priors(Some(vec![
                    PriorInput::Tensor(tensor.clone()),
                    PriorInput::Tensor(tensor)
                ]))
                .is_err()
        );
        // Unset again: refused again.
        model.set_priors(None).unwrap();
        assert!(model.run(&[image(&half)]).is_err());
    }
}

/// The fixture's variant with two prior inputs (built here by its
/// `make_model.py`): each prior reaches its own input, in order.
#[test]
fn two_priors_reach_their_two_inputs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    vigie_test_support::prior_fixture_variant(dir.path(), 2, &[]);
    for kind in [BackendKind::Onnx, BackendKind::Candle] {
        let mut model = model_in(dir.path(), kind);
        let (half, quarter, none) = (bars(32), bars(16), bars(0));
        let tensor = |m: &mut Model, data: &[f32]| m.preprocess(&image(data)).unwrap();
        let (q, z) = (tensor(&mut model, &quarter), tensor(&mut model, &none));
        // The variant weighs prior k 2^(k-1) / 3: against the quarter
        // (0.25) first and nothing (0.5) second, 0.25 / 3 + 0.5 * 2 / 3.
        model
            .set_priors(Some(vec![
                PriorInput::Tensor(q.clone()),
                PriorInput::Tensor(z),
            ]))
            .unwrap();
        let p = model.run(&[image(&half)]).unwrap()[0].raw_output[1];
        assert!(
            (p - expected(0.25 / 3.0 + 1.0 / 3.0)).abs() < 1e-4,
            "{kind:?}: {p}"
        );
        // The quarter twice: 0.25 (so the second input is not the first's).
        model
            .set_priors(Some(vec![
                PriorInput::Tensor(q.clone()),
                PriorInput::Tensor(q.clone()),
            ]))
            .unwrap();
        let p = model.run(&[image(&half)]).unwrap()[0].raw_output[1];
        assert!((p - expected(0.25)).abs() < 1e-4, "{kind:?}: {p}");
        // The first missing: zeros (0.5) first, the quarter (0.25) second:
        // not the same as the other way round above.
        model
            .set_priors(Some(vec![PriorInput::Missing, PriorInput::Tensor(q)]))
            .unwrap();
        let p = model.run(&[image(&half)]).unwrap()[0].raw_output[1];
        assert!(
            (p - expected(0.5 / 3.0 + 0.5 / 3.0)).abs() < 1e-4,
            "{kind:?}: {p}"
        );
        // One prior for two inputs: refused.
        assert!(model.set_priors(Some(vec![PriorInput::Missing])).is_err());
    }
}
