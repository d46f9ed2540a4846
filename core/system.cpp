#include "core/system.h"

#include <sys/resource.h>

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "core/error.h"
#include "core/torch_compat.h"

#ifdef SQLAB_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime_api.h>
#endif

namespace sqlab {
namespace {

std::atomic<int> g_signals{0};
std::atomic<int> g_first_signal{0};

void on_signal(int signal) {
  int none = 0;
  g_first_signal.compare_exchange_strong(none, signal);
  if (g_signals.fetch_add(1) > 0) {  // second Ctrl-C: stop now
    std::signal(signal, SIG_DFL);
    std::raise(signal);
  }
}

}  // namespace

void configure_threads() {
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  if (const char* env = std::getenv("SQLAB_THREADS")) threads = std::atoi(env);
  if (threads > 0) at::set_num_threads(threads);
}

void install_interrupt_handlers() {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
}

bool interrupted() { return g_signals.load() > 0; }

int interrupt_signal() { return g_first_signal.load(); }

void throw_if_interrupted() {
  if (interrupted()) throw Error("interrupted");
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) throw Error(fmt::format("{}: cannot write", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(fmt::format("{}: cannot rename into place", path));
  }
}

std::string openblas_core_name() {
  using CoreName = char* (*)();
  const auto corename = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  const char* name = corename ? corename() : nullptr;
  return name ? name : "";
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool stderr_is_terminal() { return isatty(STDERR_FILENO) == 1; }

double peak_rss_mib() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // KiB on Linux
}

#ifdef SQLAB_CUDA
namespace {
std::string cuda_version_text(int version) { return fmt::format("{}.{}", version / 1000, version % 1000 / 10); }
}  // namespace
#endif

std::map<std::string, std::string> device_attributes(const std::string& device) {
  std::map<std::string, std::string> out{{"device", device}, {"libtorch_version", libtorch_version()}};
#ifdef SQLAB_CUDA
  const at::Device d(device);
  if (d.is_cuda()) {
    const int index = d.has_index() ? d.index() : 0;
    const cudaDeviceProp* properties = at::cuda::getDeviceProperties(index);
    out["device_name"] = properties->name;
    out["device_capability"] = fmt::format("{}.{}", properties->major, properties->minor);
    int driver = 0, runtime = 0;
    if (cudaDriverGetVersion(&driver) == cudaSuccess) out["cuda_driver"] = cuda_version_text(driver);
    if (cudaRuntimeGetVersion(&runtime) == cudaSuccess) out["cuda_runtime"] = cuda_version_text(runtime);
  }
#endif
  return out;
}

}  // namespace sqlab
