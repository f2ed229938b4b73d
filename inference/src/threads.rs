//! How many threads the hot loop uses and, when asked, which logical CPUs
//! they run on.
//!
//! The hot loop has one model thread per worker (the caller of the
//! runtime, which is also ONNX Runtime's first intra-op thread), the
//! runtime's other intra-op threads, and the decode threads that open,
//! decode and preprocess instances ahead of the model. ONNX Runtime's
//! intra-op threads spin while they wait for work: on a machine with many
//! cores, a decode thread that shares a core with them is slowed down, and
//! so is the model. [`ThreadPlan::derive`] therefore leaves the decode
//! threads cores of their own once the machine has more than
//! [`SHARED_BELOW`] cores, and, with pinning, keeps the two groups apart.

use crate::device::Device;

/// Up to this many CPUs, the model's intra-op threads use them all and the
/// decode threads share them (decoding is a small part of the work per
/// image on CPU; reserving one of two cores for it would halve the
/// model's).
pub const SHARED_BELOW: usize = 4;

/// The logical CPUs this process may use, in increasing order: its
/// affinity mask (so a cgroup cpuset, `taskset` or systemd `CPUAffinity=`
/// is respected), cut to the CPU quota when there is one (a container
/// started with `--cpus=2` on a 64-core host may run on any of the 64 but
/// only gets the time of 2: [`std::thread::available_parallelism`] reads
/// that quota). Falls back to `0..available_parallelism` where the mask
/// cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    let quota = std::thread::available_parallelism().map_or(1, |n| n.get());
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => ids.into_iter().map(|c| c.id).take(quota).collect(),
        _ => (0..quota).collect(),
    }
}

/// Pin the calling thread to logical CPU `cpu`; false if the system refused
/// (the thread then runs where the scheduler puts it).
pub fn pin_current_thread(cpu: usize) -> bool {
    let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    if !pinned {
        tracing::warn!(cpu, "could not pin thread to CPU");
    }
    pinned
}

/// Thread counts and placement for one model worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadPlan {
    /// ONNX Runtime intra-op threads (the model thread included).
    pub intra_threads: usize,
    /// Decode-and-preprocess threads.
    pub decode_threads: usize,
    /// With pinning: the CPUs of the model thread and the runtime's
    /// intra-op threads, in that order (as many as `intra_threads`). Empty:
    /// not pinned.
    pub model_cpus: Vec<usize>,
    /// With pinning: the CPUs of the decode threads. Empty: not pinned.
    pub decode_cpus: Vec<usize>,
}

impl ThreadPlan {
    /// The plan for one worker on `cpus` (the allowed logical CPUs, see
    /// [`allowed_cpus`]): `intra_threads` and `decode_threads` as
    /// configured, 0 meaning "derive from the machine":
    ///
    /// - decode threads: 1 on CPU (decoding a slice takes a few
    ///   milliseconds, the model tens to hundreds); on a GPU, which runs the
    ///   model in about a millisecond, a quarter of the CPUs, 1 to 8.
    /// - intra-op threads: all CPUs up to [`SHARED_BELOW`]; beyond, all but
    ///   those left to the decode threads.
    ///
    /// With `pin`, the model thread and intra-op threads take the first
    /// CPUs and the decode threads the last ones; where there are fewer
    /// CPUs than threads, the groups overlap (pinning then only keeps
    /// threads from migrating).
    pub fn derive(
        cpus: &[usize],
        device: Device,
        intra_threads: usize,
        decode_threads: usize,
        pin: bool,
    ) -> Self {
        let n = cpus.len().max(1);
        let decode_threads = match (decode_threads, device) {
            (0, Device::Cpu) => 1,
            (0, Device::Cuda { .. }) => (n / 4).clamp(1, 8),
            (d, _) => d,
        };
        let intra_threads = match intra_threads {
            0 if n <= SHARED_BELOW => n,
            0 => n.saturating_sub(decode_threads).max(1),
            i => i,
        };
        let (model_cpus, decode_cpus) = if pin && !cpus.is_empty() {
            let model = (0..intra_threads).map(|i| cpus[i % cpus.len()]).collect();
            let decode = (0..decode_threads)
                .map(|i| cpus[(cpus.len() - 1 - i % cpus.len()) % cpus.len()])
                .collect();
            (model, decode)
        } else {
            (Vec::new(), Vec::new())
        };
        Self {
            intra_threads,
            decode_threads,
            model_cpus,
            decode_cpus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_machines_share_their_cores_and_large_ones_leave_decoding_its_own() {
        let two = ThreadPlan::derive(&[0, 1], Device::Cpu, 0, 0, false);
        assert_eq!((two.intra_threads, two.decode_threads), (2, 1));
        assert!(two.model_cpus.is_empty() && two.decode_cpus.is_empty());
        let sixteen: Vec<usize> = (0..16).collect();
        let cpu = ThreadPlan::derive(&sixteen, Device::Cpu, 0, 0, false);
        assert_eq!((cpu.intra_threads, cpu.decode_threads), (15, 1));
        let gpu = ThreadPlan::derive(&sixteen, Device::Cuda { device_id: 0 }, 0, 0, false);
        assert_eq!((gpu.intra_threads, gpu.decode_threads), (12, 4));
        let set = ThreadPlan::derive(&sixteen, Device::Cpu, 6, 3, false);
        assert_eq!((set.intra_threads, set.decode_threads), (6, 3));
    }

    #[test]
    fn pinning_keeps_model_and_decode_threads_apart_on_the_allowed_cpus() {
        // A cpuset that is not 0..n: ids are taken from it, not counted.
        let cpus = [2, 3, 5, 7, 8, 9];
        let plan = ThreadPlan::derive(&cpus, Device::Cpu, 0, 1, true);
        assert_eq!(plan.model_cpus, vec![2, 3, 5, 7, 8]);
        assert_eq!(plan.decode_cpus, vec![9]);
        // ORT counts processors from 1 and pins all but the caller.
        assert_eq!(
            crate::backend::onnx::intra_op_affinities(&plan.model_cpus).as_deref(),
            Some("4;6;8;9")
        );
        let two = ThreadPlan::derive(&[0, 1], Device::Cpu, 0, 0, true);
        assert_eq!(two.model_cpus, vec![0, 1]);
        assert_eq!(two.decode_cpus, vec![1]);
        let unpinned = ThreadPlan::derive(&cpus, Device::Cpu, 0, 0, false);
        assert_eq!(
            crate::backend::onnx::intra_op_affinities(&unpinned.model_cpus),
            None
        );
    }

    #[test]
    fn the_allowed_cpus_are_those_the_process_may_run_on() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
        // Never more than the CPU time the process gets (cgroup quota).
        let quota = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(cpus.len() <= quota);
        // Pinning to an allowed CPU works, and the thread then sees only it.
        let first = cpus[0];
        let seen = std::thread::spawn(move || {
            let pinned = pin_current_thread(first);
            (pinned, allowed_cpus())
        })
        .join()
        .map_err(|_| "thread panicked");
        assert_eq!(seen, Ok((true, vec![first])));
    }
}
