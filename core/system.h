// Process-level concerns: threads, Ctrl-C, atomic file writes, the clock.
#pragma once

#include <map>
#include <string>

namespace sqlab {

// Uses every core (LibTorch starts with one here) unless SQLAB_THREADS says otherwise.
void configure_threads();

// SIGINT/SIGTERM set a flag that long loops poll; a second signal kills at once.
void install_interrupt_handlers();
bool interrupted();
// The first signal that arrived (SIGINT or SIGTERM), 0 when none: a stopped sweep
// exits with 128 + it (130 for Ctrl-C, 143 for SIGTERM, e.g. a SLURM time limit).
int interrupt_signal();
// Throws sqlab::Error("interrupted") when a signal arrived.
void throw_if_interrupted();

// Writes `text` to `path` through a temporary file and a rename, so readers never
// see a half-written file.
void write_file_atomic(const std::string& path, const std::string& text);

// The kernels OpenBLAS chose ("SkylakeX", "Prescott", ...), or "" when the BLAS is not OpenBLAS.
std::string openblas_core_name();

// Seconds on a monotonic clock.
double now_seconds();

// Peak resident memory of this process so far, MiB (getrusage's ru_maxrss).
double peak_rss_mib();

// True when stderr is a terminal (progress display).
bool stderr_is_terminal();

// What a run on `device` ("cpu", "cuda", "cuda:N") records about where it ran: always
// `device` and `libtorch_version`; on CUDA `device_name`, `device_capability`,
// `cuda_driver` and `cuda_runtime` (versions as "13.0").
std::map<std::string, std::string> device_attributes(const std::string& device);

}  // namespace sqlab
