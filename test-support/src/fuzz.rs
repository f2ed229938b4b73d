//! A seeded mutation fuzzer that runs on the stable toolchain, in `cargo
//! test` (cargo-fuzz needs nightly, which this project cannot install).
//!
//! Each target is a function of bytes that must never panic, whatever the
//! bytes. [`run`] feeds it mutants of real seed inputs — bit flips,
//! interesting bytes, 16- and 32-bit values at boundaries (lengths of
//! 0xFFFFFFFF, 0xFFFFFFF0, 0), truncations, duplicated and removed chunks,
//! spliced seeds — from a deterministic generator, so a failure names the
//! seed and iteration that reproduce it. A panic fails the run and the
//! input is written under `target/fuzz-crashes/<target>/` to become a
//! committed regression case.
//!
//! The number of iterations per target is the caller's default, or
//! `VIGIE_FUZZ_ITERATIONS` (a longer campaign: `scripts/fuzz.sh`);
//! `VIGIE_FUZZ_SEED` changes the generator's seed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

/// xorshift64*: small, fast, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (never zero inside).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

const INTERESTING_U32: [u32; 9] = [
    0,
    1,
    0x7F,
    0x80,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0xFFFF_FFF0,
    0xFFFF_FFFF,
];

/// One mutant of `input` (and, for splicing, `other`).
pub fn mutate(input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = out.len();
        match rng.below(9) {
            0 if len > 0 => {
                let at = rng.below(len);
                out[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                out[at] = [0u8, 0xFF, 0x7F, 0x80, 0xFE, 0x01][rng.below(6)];
            }
            2 if len >= 4 => {
                let at = rng.below(len - 3);
                let v = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
                let bytes = if rng.below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                out[at..at + 4].copy_from_slice(&bytes);
            }
            3 if len >= 2 => {
                let at = rng.below(len - 1);
                let v = [0u16, 0xFFFF, 0x7FFF, 0x8000, 1][rng.below(5)];
                out[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
            4 if len > 0 => out.truncate(rng.below(len)),
            5 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(512));
                let chunk = out[at..at + n].to_vec();
                let to = rng.below(out.len());
                out.splice(to..to, chunk);
            }
            6 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(512));
                out.drain(at..at + n);
            }
            7 if !other.is_empty() && len > 0 => {
                let cut = rng.below(len);
                let from = rng.below(other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            _ => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let noise: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(at..at, noise);
            }
        }
    }
    out
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Target name.
    pub target: String,
    /// Inputs run (seeds included).
    pub executions: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Time budget per target: `VIGIE_FUZZ_SECONDS`, else `default_seconds`.
pub fn budget(default_seconds: u64) -> Duration {
    Duration::from_secs(
        std::env::var("VIGIE_FUZZ_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_seconds),
    )
}

/// Iterations to run: `VIGIE_FUZZ_ITERATIONS`, else `default`.
pub fn iterations(default: u64) -> u64 {
    std::env::var("VIGIE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run `target` on every seed, then on `iterations` mutants, and panic
/// with the reproduction (target, seed, iteration, saved input) at the
/// first input that makes it panic. Each input may also be cut short by
/// `deadline` per run, a budget the caller sets so CI stays bounded.
pub fn run(
    name: &str,
    seeds: &[Vec<u8>],
    iterations: u64,
    budget: Duration,
    target: impl Fn(&[u8]),
) -> Summary {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let base = std::env::var("VIGIE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_u64);
    quiet_panics_on_fuzz_threads();
    let started = Instant::now();
    let mut executions = 0;
    let mut check = |input: &[u8], what: &str| {
        executions += 1;
        if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
            let dir = crate::repo_root().join("target/fuzz-crashes").join(name);
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{what}.bin"));
            let _ = std::fs::write(&file, input);
            let report = format!(
                "fuzz target {name} panicked on {what} (VIGIE_FUZZ_SEED={base}); input saved to {}",
                file.display()
            );
            // The panic hook is quiet on fuzzing threads: say it here.
            eprintln!("{report}");
            panic!("{report}");
        }
    };
    for (i, seed) in seeds.iter().enumerate() {
        check(seed, &format!("seed-{i}"));
    }
    let mut rng = Rng::new(
        base ^ name
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b)),
    );
    for i in 0..iterations {
        if started.elapsed() > budget {
            break;
        }
        let a = &seeds[rng.below(seeds.len())];
        let b = &seeds[rng.below(seeds.len())];
        let input = mutate(a, b, &mut rng);
        check(&input, &format!("iteration-{i}"));
    }
    let summary = Summary {
        target: name.to_string(),
        executions,
        elapsed: started.elapsed(),
    };
    eprintln!(
        "fuzz {}: {} executions in {:.1} s",
        summary.target,
        summary.executions,
        summary.elapsed.as_secs_f64()
    );
    summary
}

/// Panics caught inside the code under test (decoders are wrapped in
/// `catch_unwind`) would print one report each: silence them on the
/// fuzzing test threads (named `fuzz_…`), and only there.
fn quiet_panics_on_fuzz_threads() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let fuzzing = std::thread::current().name().is_some_and(|n| {
                n.rsplit("::")
                    .next()
                    .is_some_and(|n| n.starts_with("fuzz_"))
            });
            if !fuzzing {
                default(info);
            }
        }));
    });
}
