#include "core/runner.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <sys/resource.h>

#include <filesystem>
#include <functional>
#include <set>
#include <type_traits>

#include "core/config.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/quant_config.h"
#include "core/record_fit_log.h"
#include "core/recorder.h"
#include "core/system.h"
#include "core/torch_compat.h"
#include "quant/site_eval.h"

namespace sqlab {
namespace fs = std::filesystem;
namespace {


std::string emit_yaml(const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  return std::string(out.c_str()) + "\n";
}

RecordOptions parse_record(ConfigReader reader) {
  RecordOptions r;
  r.histograms = reader.get<bool>("histograms", r.histograms);
  r.traces = reader.get<bool>("traces", r.traces);
  r.rotations = reader.get<bool>("rotations", r.rotations);
  r.histogram_bins = reader.get<int>("histogram_bins", r.histogram_bins);
  if (r.histogram_bins < 1) reader.fail("histogram_bins", "must be positive");
  r.eval_tokens = reader.get<int64_t>("eval_tokens", r.eval_tokens);
  if (r.eval_tokens < 0) reader.fail("eval_tokens", "must be >= 0 (0: all tokens)");
  reader.finish();
  return r;
}

// Run-level metrics from per-site ones: maxima stay maxima, times add up, the rest
// is the mean over sites.
std::map<std::string, double> aggregate_sites(const std::map<std::string, std::map<std::string, double>>& sites) {
  std::map<std::string, std::vector<double>> values;
  for (const auto& [site, metrics] : sites)
    for (const auto& [name, value] : metrics) values[name].push_back(value);
  std::map<std::string, double> result;
  for (const auto& [name, list] : values) {
    const bool is_max = name.find("absmax") != std::string::npos;
    const bool is_sum = name.find("seconds") != std::string::npos;
    double acc = is_max ? list.front() : 0.0;
    for (double v : list) acc = is_max ? std::max(acc, v) : acc + v;
    result[name] = (is_max || is_sum) ? acc : acc / list.size();
  }
  return result;
}

// The site with X and W on `device` (data.device).
Site on_device(const Site& site, const std::string& device) {
  Site moved = site;
  moved.X = site.X.to(at::Device(device));
  moved.W = site.W.to(at::Device(device));
  return moved;
}

// Adds the seconds `body` takes to timing[stage] and returns what it returns.
template <typename Body>
auto timed(std::map<std::string, double>& timing, const char* stage, Body&& body) {
  const double start = now_seconds();
  if constexpr (std::is_void_v<decltype(body())>) {
    body();
    timing[stage] += now_seconds() - start;
  } else {
    auto result = body();
    timing[stage] += now_seconds() - start;
    return result;
  }
}

void evaluate_one_site(const PreparedRun& p, const Site& loaded, bool prefixed, RunRecord& record,
                       RunWarnings& warnings) {
  auto& timing = record.timing;
  timed(timing, "check", [&] { check_site(loaded); });
  // build and evaluate on data.device
  const Site site = p.device == "cpu" ? loaded : timed(timing, "load", [&] { return on_device(loaded, p.device); });
  const std::string prefix = prefixed ? site.name + "." : "";
  auto& metrics = record.site_metrics[site.name];
  RecordFitLog log(record, metrics, prefixed ? site.name : "", prefix, p.record.traces, warnings);
  const double start = now_seconds();
  RotationPtr rotation = p.method->fit(FitContext{site, p.quant, static_cast<uint64_t>(p.spec->seed), log});
  wait_for_device(at::Device(p.device));
  const double build = now_seconds() - start;
  timing["build"] += build;
  if (!rotation || rotation->size() != site.X.size(1))
    throw Error(fmt::format("method {} returned a rotation of the wrong size for site {}", p.spec->method, site.name));
  throw_if_interrupted();
  EvalOptions options;
  options.histogram_bins = p.record.histograms ? p.record.histogram_bins : 0;
  options.outlier_token_threshold = p.outlier_token_threshold;
  Site evaluated = site;  // record.eval_tokens: the output error on the first tokens only
  if (p.record.eval_tokens > 0 && p.record.eval_tokens < site.X.size(0))
    evaluated.X = site.X.narrow(0, 0, p.record.eval_tokens);
  const SiteEvaluation eval = evaluate_site(evaluated, *rotation, p.quant, options);
  timing["apply"] += eval.rotate_seconds;
  timing["fuse"] += eval.fuse_seconds;
  timing["quantize"] += eval.weight_quant_seconds;
  timing["metrics"] += eval.metrics_seconds;
  timing["histograms"] += eval.histogram_seconds;
  timed(timing, "record", [&] {
    record.site_channels[site.name]["absmax_before"] = eval.channel_absmax_before;
    record.site_channels[site.name]["absmax_after"] = eval.channel_absmax_after;
    for (const auto& [name, value] : eval.metrics) metrics[name] = value;
    metrics["build_seconds"] = build;
    metrics["apply_seconds"] = eval.apply_seconds;
    if (p.record.histograms) {
      record.histograms[prefix + "act_before"] = eval.act_before;
      record.histograms[prefix + "act_after"] = eval.act_after;
    }
    if (p.record.rotations) record.rotations[site.name] = rotation->factors();
  });
}

// Site i of `count` (a streaming dataset makes it on demand); adds per-stage seconds to timing.
using SiteAt = std::function<Site(int64_t index, std::map<std::string, double>& timing)>;

// /timing's stages are disjoint: load (what a streaming dataset does not attribute to its own
// stages, statistics and generate), check, build, apply (X R), fuse (W R), quantize (Q(W R)),
// metrics, histograms, record; `unattributed` is what none of them measured and `total` the
// sum of all. /metrics/quantization_pass_seconds is the paper's Table 5 quantity (build + fuse
// + quantize); /metrics/evaluation_seconds the measuring around it (apply, metrics, histograms).
void finish_site_timing(RunRecord& record, double total) {
  finish_timing(record, total);
  auto& timing = record.timing;
  auto stage = [&](const char* name) { return timing.count(name) ? timing.at(name) : 0.0; };
  record.metrics["quantization_pass_seconds"] = stage("build") + stage("fuse") + stage("quantize");
  record.metrics["evaluation_seconds"] = stage("apply") + stage("metrics") + stage("histograms");
}

// `preload_seconds`: loading done before (a dataset read whole), counted in load and total.
RunRecord execute_run(const PreparedRun& p, int64_t count, const SiteAt& site_at, double preload_seconds) {
  const double start = now_seconds();
  double load_seconds = preload_seconds;
  RunRecord record = new_run_record(*p.spec);
  RunWarnings warnings(p.spec->run_id);
  std::map<std::string, double> load_timing;  // a streaming dataset's stages
  for (int64_t i = 0; i < count; ++i) {
    throw_if_interrupted();
    const double load_start = now_seconds();
    const Site site = site_at(i, load_timing);  // dropped after its evaluation
    load_seconds += now_seconds() - load_start;
    evaluate_one_site(p, site, count > 1, record, warnings);
  }
  timed(record.timing, "record", [&] {
    record.metrics = aggregate_sites(record.site_metrics);
    if (count == 1) record.site_metrics.clear();  // /metrics already holds them
    if (p.dataset->site_count() >= 0) record.metrics["peak_rss_mib"] = peak_rss_mib();
    for (const auto& [key, value] : device_attributes(p.device)) record.attributes[key] = value;
    warnings.store(record);
  });
  double dataset_stages = 0.0;
  for (const auto& [stage, seconds] : load_timing) {
    record.timing[stage] += seconds;
    dataset_stages += seconds;
  }
  record.timing["load"] += std::max(0.0, load_seconds - dataset_stages);
  finish_site_timing(record, now_seconds() - start + preload_seconds);
  return record;
}

SummaryRow row_of(const RunSpec& run) {
  SummaryRow row;
  row.run_id = run.run_id;
  row.label = run.label;
  row.method = run.method;
  row.seed = run.seed;
  row.point = run.point;
  return row;
}

void write_summaries(const Experiment& ex, const fs::path& out, const std::vector<SummaryRow>& rows) {
  write_file_atomic((out / "summary.csv").string(), summary_csv(rows, ex.swept_keys));
  write_file_atomic((out / "summary.json").string(), summary_json(ex.name, rows, ex.swept_keys).dump(2) + "\n");
}

void prepare_directory(const Experiment& ex, const fs::path& out) {
  std::error_code ec;
  fs::create_directories(out / "runs", ec);
  if (ec) throw config_error(fmt::format("{}: cannot create results directory: {}", out.string(), ec.message()));
  // Leftovers of runs that were killed mid-write: never complete, never read.
  for (const auto& entry : fs::directory_iterator(out / "runs"))
    if (entry.path().extension() == ".tmp") fs::remove(entry.path(), ec);
  write_file_atomic((out / "config.yaml").string(), emit_yaml(ex.resolved));
}

void select_shard(std::vector<PreparedRun>& runs, int64_t index, int64_t count) {
  std::vector<PreparedRun> mine;
  for (size_t i = 0; i < runs.size(); ++i)
    if (static_cast<int64_t>(i) % count == index) mine.push_back(std::move(runs[i]));
  runs = std::move(mine);
}


}  // namespace

void prepare_results_directory(const Experiment& ex, const std::string& out_dir) {
  prepare_directory(ex, fs::path(out_dir));
}

RunRecord new_run_record(const RunSpec& spec) {
  RunRecord record;
  record.run_id = spec.run_id;
  record.label = spec.label;
  record.method = spec.method;
  record.seed = spec.seed;
  record.config_yaml = emit_yaml(spec.config);
  return record;
}

void finish_timing(RunRecord& record, double total_seconds) {
  double attributed = 0.0;
  for (const auto& [stage, seconds] : record.timing)
    if (stage != "total" && stage != "unattributed") attributed += seconds;
  record.timing["unattributed"] = std::max(0.0, total_seconds - attributed);
  record.timing["total"] = total_seconds;
}

RunCheck prepare_check(const Registries& registries) {
  return [&registries](const Experiment& ex, const RunSpec& run) { prepare_run(ex, run, registries); };
}

std::vector<PreparedRun> prepare_all(const Experiment& ex, const Registries& registries) {
  std::vector<PreparedRun> prepared;
  std::set<std::string> validated;  // data blocks, whatever the seed
  for (const RunSpec& run : ex.runs) {
    prepared.push_back(prepare_run(ex, run, registries));
    const PreparedRun& p = prepared.back();
    if (p.model) {  // model-level: files and widths checked once per model/eval/calib block
      const std::string key = "model:" + yaml_to_flow(run.config["model"]) + yaml_to_flow(run.config["eval"]) +
                              yaml_to_flow(run.config["calib"]) + "#" + yaml_to_flow(run.config["method"]);
      if (validated.insert(key).second) registries.model_runs->validate(*p.model, *p.method);
      continue;
    }
    if (validated.insert(yaml_to_flow(run.config["data"])).second) p.dataset->validate();
    for (int64_t n : p.dataset->site_widths()) p.method->check_width(n);
  }
  return prepared;
}

namespace {

// A model-level run (core/model_run.h): the backend reads model, eval, calib and quant.
void prepare_model_level(PreparedRun& p, const Experiment& ex, const RunSpec& run, const Registries& registries) {
  if (!registries.model_runs)
    throw config_error(fmt::format("{}: model: model-level runs are not available in this program", ex.file));
  if (run.config["data"] && !run.config["data"].IsNull())
    ConfigReader(run.config["data"], ex.file, "data", run.sources)
        .fail("source", "an experiment with `model:` evaluates the model; remove `data:` (use "
                        "`data: {source: model}` without `model:` for site-level runs on its activations)");
  p.model = registries.model_runs->prepare(ex, run, p.quant);
  p.data_key = "model";
}

// A site-level run: its dataset (`data:`) and quantizer (`quant:`).
void prepare_site_level(PreparedRun& p, const Experiment& ex, const RunSpec& run, const Registries& registries) {
  ConfigReader data(run.config["data"], ex.file, "data", run.sources);
  p.data_source = data.require<std::string>("source");
  p.outlier_token_threshold = data.get<double>("outlier_token_threshold", p.outlier_token_threshold);
  if (!(p.outlier_token_threshold > 0)) data.fail("outlier_token_threshold", "must be positive");
  p.device = parse_device(data, "device");
  if (!registries.datasets.contains(p.data_source))
    data.fail("source", registries.datasets.unknown_message(p.data_source));
  p.dataset = registries.datasets.create(p.data_source, data);
  p.data_key = yaml_to_flow(run.config["data"]) + fmt::format("#seed={}", run.seed);
  ConfigReader quant(run.config["quant"], ex.file, "quant", run.sources);
  p.quant = parse_quant_config(quant);
}

}  // namespace

PreparedRun prepare_run(const Experiment& ex, const RunSpec& run, const Registries& registries) {
  PreparedRun p;
  p.spec = &run;
  if (run.config["model"] && !run.config["model"].IsNull())
    prepare_model_level(p, ex, run, registries);
  else
    prepare_site_level(p, ex, run, registries);

  ConfigReader method(run.config["method"], ex.file, "methods." + run.label, run.sources);
  method.raw("label");
  method.raw("method");
  if (!registries.methods.contains(run.method))
    method.fail("method", registries.methods.unknown_message(run.method));
  p.method = registries.methods.create(run.method, method);
  p.record = parse_record(ConfigReader(run.config["record"], ex.file, "record", run.sources));
  return p;
}

namespace {

// The sites of the last site-level run, reused while the next run's data (and seed) is
// the same; a streaming dataset makes each site on demand instead.
struct SiteCache {
  std::vector<Site> sites;
  std::string key;
};

RunRecord execute_site_level(const PreparedRun& p, SiteCache& cache) {
  const uint64_t seed = static_cast<uint64_t>(p.spec->seed);
  const int64_t streamed = p.dataset->site_count();
  double load_seconds = 0.0;
  if (streamed < 0 && p.data_key != cache.key) {
    cache.key.clear();
    const double start = now_seconds();
    cache.sites = p.dataset->load(seed);
    load_seconds = now_seconds() - start;
    cache.key = p.data_key;
  }
  const SiteAt site_at = [&](int64_t index, std::map<std::string, double>& timing) {
    return streamed >= 0 ? p.dataset->load_site(seed, index, timing) : cache.sites[static_cast<size_t>(index)];
  };
  const int64_t count = streamed >= 0 ? streamed : static_cast<int64_t>(cache.sites.size());
  return execute_run(p, count, site_at, load_seconds);
}

}  // namespace

RunnerResult run_experiment(const Experiment& ex, const Registries& registries, const RunnerOptions& options) {
  std::vector<PreparedRun> prepared = prepare_all(ex, registries);
  select_shard(prepared, options.shard_index, options.shard_count);
  select_shard(prepared, options.worker_index, options.worker_count);
  const fs::path out(options.out_dir);
  if (options.worker_count == 1) prepare_directory(ex, out);  // a --jobs worker's parent did it
  const fs::path summaries = options.summary_dir.empty() ? out : fs::path(options.summary_dir);
  for (PreparedRun& p : prepared) p.results_dir = out.string();

  RunnerResult result;
  Progress progress(prepared.size(), options.progress);
  SiteCache cache;
  for (size_t i = 0; i < prepared.size(); ++i) {
    const PreparedRun& p = prepared[i];
    if (interrupted()) break;
    const std::string path = (out / "runs" / (p.spec->run_id + ".h5")).string();
    SummaryRow row = row_of(*p.spec);
    if (options.resume && run_file_complete(path)) {
      row.metrics = read_run_summary(path).metrics;
      row.status = "complete";
      result.rows.push_back(row);
      continue;
    }
    progress.update(i, p.spec->run_id);
    try {
      const RunRecord record = p.model ? registries.model_runs->execute(p) : execute_site_level(p, cache);
      write_run_file(path, record);
      row.metrics = record.metrics;
      row.status = "complete";
    } catch (const std::exception& e) {
      if (interrupted()) break;
      row.status = "failed";
      row.error = e.what();
      result.exit_code = 1;
      progress.finish();
      fmt::print(stderr, "error: run {} failed: {}\n", p.spec->run_id, e.what());
    }
    result.rows.push_back(row);
    write_summaries(ex, summaries, result.rows);
    if (options.fail_fast && row.status == "failed") {
      fmt::print(stderr, "sqlab: --fail-fast: stopping after the first failed run ({} of {} not run)\n",
                 prepared.size() - i - 1, prepared.size());
      break;
    }
  }
  progress.finish();
  write_summaries(ex, summaries, result.rows);
  if (interrupted()) result.exit_code = 128 + interrupt_signal();
  return result;
}

std::string parse_device(ConfigReader& data, const std::string& key) {
  const std::string text = data.get<std::string>(key, "cpu");
  try {
    const at::Device device(text);
    if (device.is_cpu()) return text;
    if (device.is_cuda()) {
      if (!at::hasCUDA())
        data.fail(key, fmt::format("'{}' requested, but this sqlab's LibTorch has no CUDA (Debian's libtorch is "
                                   "CPU-only): build with `make build-cuda` (README \"LibTorch 2.x and CUDA builds\")",
                                   text));
      return text;
    }
  } catch (const c10::Error&) {
  }
  data.fail(key, fmt::format("expected cpu, cuda or cuda:N, got '{}'", text));
}

}  // namespace sqlab
