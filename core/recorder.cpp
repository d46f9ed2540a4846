// HDF5 run files (contract.md, "Run file (HDF5)"). Written with the HDF5 C++ API;
// every H5::Exception becomes a sqlab::Error naming the file and the object path.
#include "core/recorder.h"

#include <ATen/ATen.h>
#include <H5Cpp.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <set>
#include <type_traits>
#include <vector>

#include "core/error.h"

#ifndef SQLAB_VERSION
#define SQLAB_VERSION "0.0.0"
#endif
#ifndef SQLAB_GIT_SHA
#define SQLAB_GIT_SHA "unknown"
#endif

namespace sqlab {
namespace {

namespace fs = std::filesystem;

// Root attributes that map to RunRecord fields, and those the writer always makes.
const std::vector<std::string> kFieldAttrs = {"run_id", "label",  "method",
                                              "seed",   "status", "error"};
const std::vector<std::string> kProvenanceAttrs = {"sqlab_version", "git_sha", "created"};
constexpr hsize_t kMaxChunk = 4096;

bool is_one_of(const std::string& name, const std::vector<std::string>& names) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string join(const std::string& parent, const std::string& name) {
  return parent == "/" ? "/" + name : parent + "/" + name;
}

[[noreturn]] void fail(const std::string& file, const std::string& object,
                       const std::string& message) {
  throw Error("run file '" + file + "': " + object + ": " + message);
}

// The innermost message of the last failed HDF5 call on this thread. It is captured
// when the call fails: by the time the C++ API's exception is caught, destructors
// have made other HDF5 calls, which clear the error stack.
thread_local std::string last_hdf5_cause;

herr_t keep_innermost(unsigned n, const H5E_error2_t* err, void*) {
  if (n == 0 && err->desc != nullptr) last_hdf5_cause = err->desc;
  return 0;
}

herr_t capture_error_stack(hid_t stack, void*) {
  last_hdf5_cause.clear();
  H5Ewalk2(stack, H5E_WALK_UPWARD, keep_innermost, nullptr);
  return 0;
}

// Instead of printing the error stack to stderr (HDF5's default, which
// H5::Exception::dontPrint() would turn off), keep its innermost message.
void silence_hdf5_errors() {
  H5::Exception::dontPrint();
  H5Eset_auto2(H5E_DEFAULT, capture_error_stack, nullptr);
  last_hdf5_cause.clear();
}

// "H5Fopen failed (truncated file: eof = ...)": the C++ API's message plus the cause.
std::string describe(const H5::Exception& e) {
  std::string message = e.getDetailMsg();
  return last_hdf5_cause.empty() ? message : message + " (" + last_hdf5_cause + ")";
}

// Runs `f`, turning an HDF5 exception into an Error naming `file` and `object`.
template <class F>
auto guarded(const std::string& file, const std::string& object, F&& f) -> decltype(f()) {
  last_hdf5_cause.clear();
  try {
    return f();
  } catch (const H5::Exception& e) {
    fail(file, object, describe(e));
  }
}

H5::StrType utf8_string_type() {
  H5::StrType type(H5::PredType::C_S1, H5T_VARIABLE);
  type.setCset(H5T_CSET_UTF8);
  return type;
}

H5::FileAccPropList file_access(bool strong_close) {
  H5::FileAccPropList fapl;
  // Lock, but do not fail on file systems without locks (NFS, some containers).
  H5Pset_file_locking(fapl.getId(), true, true);
  if (strong_close) fapl.setFcloseDegree(H5F_CLOSE_STRONG);
  return fapl;
}

std::string utc_now_iso8601() {
  std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

// ---------------------------------------------------------------- validation

void check_name(const std::string& file, const std::string& parent, const std::string& name) {
  if (name.empty() || name == "." || name.find('/') != std::string::npos)
    fail(file, join(parent, name),
         "invalid name '" + name + "' (names must be non-empty, not '.', and contain no '/')");
}

template <class Value>
void check_names(const std::string& file, const std::string& parent,
                 const std::map<std::string, Value>& values) {
  for (const auto& entry : values) check_name(file, parent, entry.first);
}

// Everything that can be wrong with the record is found before a file is created.
void validate(const std::string& file, const RunRecord& r) {
  if (r.status != "complete" && r.status != "failed")
    fail(file, "/", "status must be \"complete\" or \"failed\", not \"" + r.status + "\"");
  for (const auto& [key, value] : r.attributes) {
    if (key.empty()) fail(file, "/", "empty attribute name");
    if (is_one_of(key, kFieldAttrs))
      fail(file, "/", "attribute '" + key + "' is reserved (set the RunRecord field instead)");
  }
  check_names(file, "/metrics", r.metrics);
  check_names(file, "/timing", r.timing);
  for (const auto& [site, metrics] : r.site_metrics) {
    check_name(file, "/sites", site);
    check_names(file, "/sites/" + site + "/metrics", metrics);
  }
  for (const auto& [site, channels] : r.site_channels) {
    check_name(file, "/sites", site);
    check_names(file, "/sites/" + site + "/channels", channels);
  }
  for (const auto& [name, trace] : r.traces) {
    check_name(file, "/traces", name);
    if (trace.step.size() != trace.value.size())
      fail(file, "/traces/" + name, "step has " + std::to_string(trace.step.size()) +
                                        " entries but value has " +
                                        std::to_string(trace.value.size()));
  }
  for (const auto& [tag, hist] : r.histograms) {
    check_name(file, "/histograms", tag);
    if (!(hist.edges.empty() && hist.counts.empty()) &&
        hist.edges.size() != hist.counts.size() + 1)
      fail(file, "/histograms/" + tag, "need B+1 edges for B counts, got " +
                                           std::to_string(hist.edges.size()) + " edges and " +
                                           std::to_string(hist.counts.size()) + " counts");
  }
  for (const auto& [site, factors] : r.rotations) {
    check_name(file, "/rotations", site);
    for (const auto& [name, tensor] : factors) {
      check_name(file, "/rotations/" + site, name);
      if (!tensor.defined() || tensor.dim() != 2)
        fail(file, "/rotations/" + site + "/" + name, "rotation must be a defined 2-D tensor");
    }
  }
}

// ---------------------------------------------------------------- writing

class RunFileWriter {
 public:
  RunFileWriter(std::string file, const std::string& tmp)
      : file_(std::move(file)), file_h5_(guarded(file_, "create '" + tmp + "'", [&] {
          return H5::H5File(tmp, H5F_ACC_TRUNC, H5::FileCreatPropList::DEFAULT,
                            file_access(true));
        })) {}

  void write(const RunRecord& r) {
    H5::Group root = guarded(file_, "/", [&] { return file_h5_.openGroup("/"); });
    write_root_attributes(root, r);
    write_string_dataset(root, "/", "config", r.config_yaml);
    write_scalars(group(root, "/", "metrics"), "/metrics", r.metrics);
    write_sites(group(root, "/", "sites"), r);
    H5::Group traces = group(root, "/", "traces");
    for (const auto& [name, trace] : r.traces) {
      H5::Group g = group(traces, "/traces", name);
      write_vector(g, "/traces/" + name, "step", trace.step, true);
      write_vector(g, "/traces/" + name, "value", trace.value, true);
    }
    H5::Group histograms = group(root, "/", "histograms");
    for (const auto& [tag, hist] : r.histograms) {
      H5::Group g = group(histograms, "/histograms", tag);
      write_vector(g, "/histograms/" + tag, "edges", hist.edges, false);
      write_vector(g, "/histograms/" + tag, "counts", hist.counts, false);
    }
    if (!r.rotations.empty()) write_rotations(group(root, "/", "rotations"), r.rotations);
    write_scalars(group(root, "/", "timing"), "/timing", r.timing);
    guarded(file_, "flush", [&] { file_h5_.flush(H5F_SCOPE_GLOBAL); });
  }

  void close() {
    guarded(file_, "close", [&] { file_h5_.close(); });
  }

 private:
  H5::Group group(const H5::Group& parent, const std::string& parent_path,
                  const std::string& name) {
    return guarded(file_, join(parent_path, name), [&] { return parent.createGroup(name); });
  }

  void write_string_attr(H5::Group& root, const std::string& name, const std::string& value) {
    guarded(file_, "/ attribute " + name, [&] {
      H5::StrType type = utf8_string_type();
      root.createAttribute(name, type, H5::DataSpace(H5S_SCALAR)).write(type, value);
    });
  }

  void write_root_attributes(H5::Group& root, const RunRecord& r) {
    write_string_attr(root, "run_id", r.run_id);
    write_string_attr(root, "label", r.label);
    write_string_attr(root, "method", r.method);
    write_string_attr(root, "status", r.status);
    write_string_attr(root, "sqlab_version", SQLAB_VERSION);
    write_string_attr(root, "git_sha", SQLAB_GIT_SHA);
    write_string_attr(root, "created", utc_now_iso8601());
    guarded(file_, "/ attribute seed", [&] {
      root.createAttribute("seed", H5::PredType::STD_I64LE, H5::DataSpace(H5S_SCALAR))
          .write(H5::PredType::NATIVE_INT64, &r.seed);
    });
    if (r.status == "failed") write_string_attr(root, "error", r.error);
    for (const auto& [key, value] : r.attributes)
      if (!is_one_of(key, kProvenanceAttrs)) write_string_attr(root, key, value);
  }

  void write_string_dataset(H5::Group& parent, const std::string& parent_path,
                            const std::string& name, const std::string& text) {
    guarded(file_, join(parent_path, name), [&] {
      H5::StrType type = utf8_string_type();
      parent.createDataSet(name, type, H5::DataSpace(H5S_SCALAR)).write(text, type);
    });
  }

  void write_scalars(H5::Group parent, const std::string& parent_path,
                     const std::map<std::string, double>& values) {
    for (const auto& entry : values) {  // (C++17 lambdas cannot capture structured bindings; clang rejects it)
      const std::string& name = entry.first;
      const double& value = entry.second;
      guarded(file_, join(parent_path, name), [&] {
        parent.createDataSet(name, H5::PredType::IEEE_F64LE, H5::DataSpace(H5S_SCALAR))
            .write(&value, H5::PredType::NATIVE_DOUBLE);
      });
    }
  }

  template <class T>
  void write_vector(H5::Group& parent, const std::string& parent_path, const std::string& name,
                    const std::vector<T>& data, bool extensible) {
    const bool is_int = std::is_same<T, int64_t>::value;
    const H5::PredType& file_type = is_int ? H5::PredType::STD_I64LE : H5::PredType::IEEE_F64LE;
    const H5::PredType& mem_type = is_int ? H5::PredType::NATIVE_INT64 : H5::PredType::NATIVE_DOUBLE;
    guarded(file_, join(parent_path, name), [&] {
      hsize_t size = data.size();
      // H5MD-style series: unlimited first dimension so that a run could append.
      hsize_t max_size = extensible ? H5S_UNLIMITED : size;
      H5::DataSpace space(1, &size, &max_size);
      H5::DSetCreatPropList props;
      if (extensible) {
        hsize_t chunk = std::max<hsize_t>(1, std::min(size, kMaxChunk));
        props.setChunk(1, &chunk);
      }
      H5::DataSet ds = parent.createDataSet(name, file_type, space, props);
      if (size > 0) ds.write(data.data(), mem_type);
    });
  }

  void write_sites(H5::Group sites, const RunRecord& r) {
    std::set<std::string> names;
    for (const auto& item : r.site_metrics) names.insert(item.first);
    for (const auto& item : r.site_channels) names.insert(item.first);
    for (const std::string& site : names) {
      const std::string site_path = "/sites/" + site;
      H5::Group g = group(sites, "/sites", site);
      auto metrics = r.site_metrics.find(site);
      if (metrics != r.site_metrics.end())
        write_scalars(group(g, site_path, "metrics"), site_path + "/metrics", metrics->second);
      auto channels = r.site_channels.find(site);
      if (channels == r.site_channels.end()) continue;
      H5::Group c = group(g, site_path, "channels");
      for (const auto& [name, values] : channels->second)
        write_vector(c, site_path + "/channels", name, values, false);
    }
  }

  void write_rotations(H5::Group parent,
                       const std::map<std::string, std::map<std::string, at::Tensor>>& rotations) {
    for (const auto& [site, factors] : rotations) {
      H5::Group g = group(parent, "/rotations", site);
      for (const auto& factor : factors) {
        const std::string& name = factor.first;
        at::Tensor matrix = factor.second.detach().to(at::kCPU).to(at::kDouble).contiguous();
        guarded(file_, "/rotations/" + site + "/" + name, [&] {
          hsize_t dims[2] = {static_cast<hsize_t>(matrix.size(0)),
                             static_cast<hsize_t>(matrix.size(1))};
          H5::DataSet ds =
              g.createDataSet(name, H5::PredType::IEEE_F64LE, H5::DataSpace(2, dims));
          if (matrix.numel() > 0) ds.write(matrix.data_ptr<double>(), H5::PredType::NATIVE_DOUBLE);
        });
      }
    }
  }

  std::string file_;
  H5::H5File file_h5_;
};

// Makes the renamed file survive a power cut: its data reaches the disk before the rename.
void sync_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// ---------------------------------------------------------------- reading

class RunFileReader {
 public:
  explicit RunFileReader(const std::string& file) : file_(file), file_h5_(open(file)) {}

  RunRecord read(bool full) {
    RunRecord r;
    H5::Group root = guarded(file_, "/", [&] { return file_h5_.openGroup("/"); });
    read_root_attributes(root, r);
    if (root.nameExists("config")) r.config_yaml = read_string_dataset(root, "/config");
    r.metrics = read_scalars(root, "/metrics");
    for (const std::string& site : children(root, "/sites")) {
      std::string site_path = "/sites/" + site;
      if (root.nameExists(site_path + "/metrics"))
        r.site_metrics[site] = read_scalars(root, site_path + "/metrics");
    }
    r.timing = read_scalars(root, "/timing");
    if (!full) return r;
    for (const std::string& site : children(root, "/sites"))
      for (const std::string& name : children(root, "/sites/" + site + "/channels"))
        r.site_channels[site][name] = read_vector<double>(root, "/sites/" + site + "/channels/" + name);
    for (const std::string& name : children(root, "/traces")) {
      std::string path = "/traces/" + name;
      r.traces[name] = {read_vector<int64_t>(root, path + "/step"),
                        read_vector<double>(root, path + "/value")};
    }
    for (const std::string& tag : children(root, "/histograms")) {
      std::string path = "/histograms/" + tag;
      r.histograms[tag] = {read_vector<double>(root, path + "/edges"),
                           read_vector<double>(root, path + "/counts")};
    }
    for (const std::string& site : children(root, "/rotations"))
      for (const std::string& name : children(root, "/rotations/" + site))
        r.rotations[site][name] = read_matrix(root, "/rotations/" + site + "/" + name);
    return r;
  }

 private:
  static H5::H5File open(const std::string& file) {
    std::error_code ec;
    if (!fs::is_regular_file(file, ec)) fail(file, "/", "no such file");
    return guarded(file, "open", [&] {
      return H5::H5File(file, H5F_ACC_RDONLY, H5::FileCreatPropList::DEFAULT,
                        file_access(false));
    });
  }

  // Names inside the group at `path`; none when it is absent.
  std::vector<std::string> children(const H5::Group& root, const std::string& path) {
    return guarded(file_, path, [&] {
      std::vector<std::string> names;
      if (!root.nameExists(path)) return names;
      H5::Group g = root.openGroup(path);
      for (hsize_t i = 0; i < g.getNumObjs(); ++i) names.push_back(g.getObjnameByIdx(i));
      return names;
    });
  }

  void read_root_attributes(const H5::Group& root, RunRecord& r) {
    std::map<std::string, std::string> strings;
    bool has_seed = false;
    guarded(file_, "/ attributes", [&] {
      for (int i = 0, n = root.getNumAttrs(); i < n; ++i) {
        H5::Attribute attr = root.openAttribute(static_cast<unsigned>(i));
        std::string name = attr.getName();
        if (name == "seed") {
          attr.read(H5::PredType::NATIVE_INT64, &r.seed);
          has_seed = true;
        } else if (attr.getTypeClass() == H5T_STRING) {
          attr.read(attr.getStrType(), strings[name]);
        }  // non-string annotations added by other tools are not part of a RunRecord
      }
    });
    for (const char* required : {"run_id", "label", "method", "status"})
      if (strings.count(required) == 0) fail(file_, "/", std::string("missing attribute ") + required);
    if (!has_seed) fail(file_, "/", "missing attribute seed");
    r.run_id = strings["run_id"];
    r.label = strings["label"];
    r.method = strings["method"];
    r.status = strings["status"];
    r.error = strings["error"];
    for (auto& [name, value] : strings)
      if (!is_one_of(name, kFieldAttrs)) r.attributes[name] = value;
  }

  std::string read_string_dataset(const H5::Group& root, const std::string& path) {
    return guarded(file_, path, [&] {
      H5::DataSet ds = root.openDataSet(path);
      std::string text;
      ds.read(text, ds.getStrType());
      return text;
    });
  }

  std::map<std::string, double> read_scalars(const H5::Group& root, const std::string& path) {
    std::map<std::string, double> values;
    for (const std::string& name : children(root, path)) {
      std::string item = path + "/" + name;
      guarded(file_, item, [&] {
        H5::DataSet ds = root.openDataSet(item);
        if (ds.getSpace().getSimpleExtentNpoints() != 1) fail(file_, item, "not a scalar");
        ds.read(&values[name], H5::PredType::NATIVE_DOUBLE);
      });
    }
    return values;
  }

  template <class T>
  std::vector<T> read_vector(const H5::Group& root, const std::string& path) {
    return guarded(file_, path, [&] {
      H5::DataSet ds = root.openDataSet(path);
      H5::DataSpace space = ds.getSpace();
      if (space.getSimpleExtentNdims() != 1) fail(file_, path, "expected a 1-D dataset");
      std::vector<T> data(space.getSimpleExtentNpoints());
      const H5::PredType& type = std::is_same<T, int64_t>::value ? H5::PredType::NATIVE_INT64
                                                                  : H5::PredType::NATIVE_DOUBLE;
      if (!data.empty()) ds.read(data.data(), type);
      return data;
    });
  }

  at::Tensor read_matrix(const H5::Group& root, const std::string& path) {
    return guarded(file_, path, [&] {
      H5::DataSet ds = root.openDataSet(path);
      H5::DataSpace space = ds.getSpace();
      if (space.getSimpleExtentNdims() != 2) fail(file_, path, "expected a 2-D dataset");
      hsize_t dims[2];
      space.getSimpleExtentDims(dims);
      at::Tensor matrix = at::empty({static_cast<int64_t>(dims[0]), static_cast<int64_t>(dims[1])},
                                    at::kDouble);
      if (matrix.numel() > 0) ds.read(matrix.data_ptr<double>(), H5::PredType::NATIVE_DOUBLE);
      return matrix;
    });
  }

  std::string file_;
  H5::H5File file_h5_;
};

RunRecord read_impl(const std::string& path, bool full) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  silence_hdf5_errors();
  try {
    return RunFileReader(path).read(full);
  } catch (const H5::Exception& e) {  // closing objects can throw outside `guarded`
    fail(path, "/", describe(e));
  }
}

}  // namespace

std::mutex& hdf5_mutex() {
  static std::mutex mutex;
  return mutex;
}

void write_run_file(const std::string& path, const RunRecord& record) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  silence_hdf5_errors();
  validate(path, record);
  fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty() && !fs::is_directory(parent, ec))
    fail(path, "/", "cannot write: directory '" + parent.string() + "' does not exist");
  const std::string tmp = path + ".tmp";
  auto remove_tmp = [&] {
    if (fs::is_regular_file(tmp, ec)) fs::remove(tmp, ec);
  };
  try {
    RunFileWriter writer(path, tmp);
    writer.write(record);
    writer.close();
    sync_file(tmp);
    fs::rename(tmp, path, ec);
    if (ec) fail(path, "/", "cannot rename '" + tmp + "' onto it: " + ec.message());
  } catch (const Error&) {
    remove_tmp();
    throw;
  } catch (const H5::Exception& e) {
    remove_tmp();
    fail(path, "/", describe(e));
  } catch (const std::exception& e) {  // tensor conversion, allocation
    remove_tmp();
    fail(path, "/", e.what());
  }
}

RunRecord read_run_file(const std::string& path) { return read_impl(path, true); }

RunRecord read_run_summary(const std::string& path) { return read_impl(path, false); }

bool run_file_complete(const std::string& path) {
  try {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) return false;
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    silence_hdf5_errors();
    H5::H5File file(path, H5F_ACC_RDONLY, H5::FileCreatPropList::DEFAULT, file_access(false));
    H5::Group root = file.openGroup("/");
    if (!root.attrExists("status")) return false;
    H5::Attribute attr = root.openAttribute("status");
    if (attr.getTypeClass() != H5T_STRING) return false;
    std::string status;
    attr.read(attr.getStrType(), status);
    return status == "complete";
  } catch (...) {
    return false;
  }
}

}  // namespace sqlab
