// The run file: one HDF5 file per run, laid out as in contract.md ("Run file (HDF5)").
// Users script against this layout with h5py, so every string is a variable-length
// UTF-8 string and every name is one HDF5 link name (no '/').
#pragma once

#include <mutex>
#include <string>

#include "core/run_record.h"

namespace sqlab {

// Writes `record` to `path` atomically: the data goes to `path + ".tmp"`, is flushed and
// closed, then renamed onto `path`. So a file at `path` is always complete; a crash
// leaves at most a .tmp file. Throws sqlab::Error naming the path on failure (and
// removes the tmp file).
// The root attributes sqlab_version, git_sha and created are always written fresh;
// entries of that name in record.attributes (as read_run_file returns them) are ignored.
void write_run_file(const std::string& path, const RunRecord& record);

// Reads a run file back (all groups, including rotations as float64 tensors). Root
// attributes other than run_id, label, method, seed, status and error (so also
// sqlab_version, git_sha, created) land in `attributes`. Throws sqlab::Error naming the file.
RunRecord read_run_file(const std::string& path);

// Reads only the root attributes, /config, /metrics, /sites/*/metrics and /timing
// (fast path for summaries and --resume).
RunRecord read_run_summary(const std::string& path);

// True when `path` opens as HDF5 and its root attribute status == "complete". Never throws.
bool run_file_complete(const std::string& path);

// Debian's libhdf5 is the serial build, which is not thread-safe: every HDF5 call in
// the process (the recorder, HDF5 data sources) must hold this lock.
std::mutex& hdf5_mutex();

}  // namespace sqlab
