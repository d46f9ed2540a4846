#include "model/model_runner.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <map>
#include <nlohmann/json.hpp>

#include "core/config.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/experiment.h"
#include "core/record_fit_log.h"
#include "core/run_record.h"
#include "core/runner.h"
#include "core/system.h"
#include "core/torch_compat.h"
#include "model/capture.h"
#include "model/checkpoint.h"
#include "model/gemm.h"
#include "model/gguf_checkpoint.h"
#include "model/model_cayley.h"
#include "model/loglikelihood.h"
#include "model/perplexity.h"
#include "model/quantized_model.h"
#include "model/tokenizer.h"
#include "model/weight_source.h"
#include "tasks/task.h"

namespace sqlab {
namespace {

struct ModelSource {
  std::string path, format = "auto", tokenizer, device = "cpu";
  // The evaluation forward's dtype (layerwise.h HiddenStream); calibration and fitting stay float32.
  at::ScalarType compute_dtype = at::kFloat;
};
struct EvalSettings {
  std::string text;
  int64_t seq_len = 0;  // 0: the model's context
  int64_t stride = 0;   // 0: seq_len (non-overlapping windows)
  int64_t max_tokens = 0;
  bool bos = true;
  int64_t batch = 8;
  TextSelection documents;  // a .jsonl text: which documents, joined how
  // Zero-shot tasks (tasks/task.h): spec names, the data folder, examples per task, shots.
  std::vector<std::string> tasks;
  std::string tasks_dir;
  int64_t limit = 0;  // 0: every example
  int64_t num_fewshot = 0;
  bool gemm_reference = false;  // time a plain GEMM of the model's shapes next to the evaluation
  double hidden_budget_gb = 4.0;  // per evaluation stream; beyond it hidden states go to a scratch file
};

// One task's spec and requests, built once per experiment.
struct PreparedTask {
  TaskSpec spec;
  TaskRequests requests;
};
struct CalibSettings {
  std::string text;  // empty: eval.text
  int64_t tokens = 2048;
  int64_t seq_len = 0;  // 0: eval.seq_len
  int64_t fit_tokens = 0;
};

struct Plan : ModelRunPlan {
  ModelSource model;
  EvalSettings eval;
  CalibSettings calib;
  ModelQuantConfig quant;
  std::string file;
  std::string method_path;
  YAML::Node method_node;
  std::shared_ptr<const SourceMap> sources;
};


// model.generate: {shape, dtype, seed, shard_gb}: a random checkpoint of a published shape
// (model/weight_source.h generated_shape) written once to model.path as a sharded Hugging
// Face directory, one layer at a time; an existing model.path is used as it is.
void generate_checkpoint(ConfigReader& m) {
  ConfigReader g = m.child("generate");
  const std::vector<std::string> names = generated_shape_names();
  const std::string shape = g.choice("shape", "", names);
  const std::string dtype = g.choice("dtype", "BF16", {"F32", "F16", "BF16"});
  const uint64_t seed = g.get<uint64_t>("seed", 0);
  const double shard_gb = g.get<double>("shard_gb", 2.0);
  if (!(shard_gb > 0)) g.fail("shard_gb", "must be positive");
  g.finish();
  if (shape.empty()) g.fail("shape", fmt::format("required: one of {}", fmt::join(names, ", ")));
  const std::string path = expand_path_variables(m.require<std::string>("path"));
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) return;
  fmt::print(stderr, "generating a random {} checkpoint ({}, seed {}) into {} (once)\n", shape, dtype, seed, path);
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  save_hf(*random_weights(*generated_shape(shape), seed), path, dtype, static_cast<int64_t>(shard_gb * (1ull << 30)));
}

// Floating-point operations of the evaluation forward through the decoder layers: every
// linear (2 x parameters per token) and the two attention products (QK^T and AV, T x T per
// head, computed whole).
double forward_flops(const LlamaConfig& c, int64_t rows, int64_t tokens_per_row) {
  const double T = static_cast<double>(tokens_per_row);
  const double linear = static_cast<double>(c.dim * (c.q_dim() + 2 * c.kv_dim()) + c.q_dim() * c.dim +
                                            3 * c.dim * c.hidden_dim);
  const double per_row = 2.0 * T * linear + 4.0 * T * T * static_cast<double>(c.q_dim());
  return per_row * static_cast<double>(rows) * static_cast<double>(c.n_layers);
}

// GFLOP/s of a plain float32 GEMM of the model's MLP shape (2048 tokens x dim times
// hidden_dim x dim), repeated for at least half a second: the machine's reference, measured
// in the same run because shared machines are noisy.
double reference_gemm_gflops(const LlamaConfig& c, at::Device device) {
  at::NoGradGuard no_grad;
  const at::Tensor x = at::randn({2048, c.dim}, at::TensorOptions().device(device));
  const at::Tensor w = at::randn({c.hidden_dim, c.dim}, at::TensorOptions().device(device));
  at::linear(x, w);  // warm-up
  int64_t calls = 0;
  const double start = now_seconds();
  double elapsed = 0.0;
  while (elapsed < 0.5) {
    at::linear(x, w).sum().item<float>();
    ++calls;
    elapsed = now_seconds() - start;
  }
  return 2.0 * 2048.0 * static_cast<double>(c.dim * c.hidden_dim) * static_cast<double>(calls) / elapsed / 1e9;
}

// Full-precision results cached in the results directory, RESULTS/cache/KIND/SHA256(key).json
// (the key inside, checked on reading): --resume and later runs in the same directory skip
// their forward pass. KIND: ppl_fp (the perplexity of a model and protocol), tasks_fp (a
// task's log-likelihoods). Doubles round-trip exactly.
std::string cache_path(const std::string& results_dir, const char* kind, const std::string& key) {
  return (std::filesystem::path(results_dir) / "cache" / kind / (sha256_hex(key) + ".json")).string();
}

// A file's modification time, for cache keys: a checkpoint or text rewritten in place is
// not the cached one.
int64_t modified_time(const std::string& path) {
  std::error_code ec;
  return static_cast<int64_t>(std::filesystem::last_write_time(path, ec).time_since_epoch().count());
}

std::optional<PerplexityResult> read_fp_cache(const std::string& results_dir, const std::string& key) {
  if (results_dir.empty()) return std::nullopt;
  std::ifstream in(cache_path(results_dir, "ppl_fp", key));
  if (!in) return std::nullopt;
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || j.value("key", "") != key) return std::nullopt;  // another protocol, or damaged
  try {
    PerplexityResult r;
    r.ppl = j.at("ppl").get<double>();
    r.nll_sum = j.at("nll_sum").get<double>();
    r.nll_mean = j.at("nll_mean").get<double>();
    r.tokens_scored = j.at("tokens_scored").get<int64_t>();
    r.windows = j.at("windows").get<int64_t>();
    r.seq_len = j.at("seq_len").get<int64_t>();
    r.stride = j.at("stride").get<int64_t>();
    return r;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

void write_fp_cache(const std::string& results_dir, const std::string& key, const PerplexityResult& r) {
  if (results_dir.empty()) return;
  const std::string path = cache_path(results_dir, "ppl_fp", key);
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  const nlohmann::json j = {{"key", key},         {"ppl", r.ppl},
                            {"nll_sum", r.nll_sum}, {"nll_mean", r.nll_mean},
                            {"tokens_scored", r.tokens_scored}, {"windows", r.windows},
                            {"seq_len", r.seq_len}, {"stride", r.stride}};
  write_file_atomic(path, j.dump(1) + "\n");
}

int64_t non_negative(ConfigReader& r, const std::string& key, int64_t fallback) {
  const int64_t v = r.get<int64_t>(key, fallback);
  if (v < 0) r.fail(key, "must be >= 0");
  return v;
}


class ModelBackend : public ModelRunBackend {
 public:
  std::shared_ptr<const ModelRunPlan> prepare(const Experiment& ex, const RunSpec& run,
                                              QuantConfig& quant) const override;
  void validate(const ModelRunPlan& plan, const RotationMethod& method) const override;
  RunRecord execute(const PreparedRun& run) const override;

 private:
  // The checkpoint opened for the layer-by-layer pipeline (headers checked, nothing read).
  WeightSourcePtr source(const Plan& plan) const;
  const Tokenizer* tokenizer(const Plan& plan) const;
  const std::vector<int64_t>& tokens(const Plan& plan, const std::string& text) const;
  std::string fp_key(const Plan& plan, const at::Tensor& eval_tokens, int64_t seq_len, int64_t stride) const;

  // Caches across the runs of one experiment (runs share models and texts).
  mutable std::map<std::string, WeightSourcePtr> sources_;
  mutable std::map<std::string, std::unique_ptr<Tokenizer>> tokenizers_;
  mutable std::map<std::string, std::vector<int64_t>> tokens_;
  mutable std::map<std::string, PerplexityResult> fp_;
  mutable std::map<std::string, PreparedTask> tasks_;             // by spec path # limit # shots
  mutable std::map<std::string, std::vector<LoglikelihoodResult>> fp_tasks_;  // full precision, per model

  const PreparedTask& task(const Plan& plan, const std::string& name) const;
  std::string task_key(const Plan& plan, const std::string& name) const;
  // Zero-shot tasks (issue #22) in the layer pass (issue #18): each task's requests as rows
  // of token batches, with their full-precision key (cache/tasks_fp in the results directory).
  struct TaskRows {
    std::string name, fp_key;
    const PreparedTask* task = nullptr;
    const LoglikelihoodBatches* rows = nullptr;
    size_t first = 0;  // its first batch in the combined stream
  };
  LoglikelihoodOptions task_options(const Plan& plan) const;
  std::vector<TaskRows> task_rows(const Plan& plan, const LlamaConfig& config) const;
  void record_tasks(const Plan& plan, const std::vector<TaskRows>& rows, const std::vector<ScoredTokens>& quantized,
                    RunRecord& record) const;
  mutable std::map<std::string, LoglikelihoodBatches> task_batches_;  // by task key and scoring options
};

std::shared_ptr<const ModelRunPlan> ModelBackend::prepare(const Experiment& ex, const RunSpec& run,
                                                          QuantConfig& quant) const {
  auto plan = std::make_shared<Plan>();
  plan->file = ex.file;
  plan->sources = run.sources;
  plan->method_node = run.config["method"];
  plan->method_path = "methods." + run.label;
  ConfigReader m(run.config["model"], ex.file, "model", run.sources);
  if (m.has("generate")) generate_checkpoint(m);
  plan->model.path = m.existing_path("path");
  plan->model.format = m.choice("format", "auto", {"auto", "hf", "llama2c", "gguf"});
  plan->model.tokenizer = m.existing_path("tokenizer", false);
  if (plan->model.tokenizer.empty() && is_gguf_file(plan->model.path))
    plan->model.tokenizer = plan->model.path;  // a GGUF carries its tokenizer
  plan->model.device = parse_device(m, "device");
  plan->model.compute_dtype = compute_dtype_named(m.choice("compute_dtype", "float32", {"float32", "bfloat16"}));
  m.finish();

  ConfigReader e(run.config["eval"], ex.file, "eval", run.sources);
  if (const YAML::Node tasks = e.raw("tasks")) {
    if (!tasks.IsSequence()) e.fail("tasks", "expected a list of task names, e.g. [piqa, arc_easy]");
    for (const auto& t : tasks) {
      if (!t.IsScalar()) e.fail("tasks", "expected a list of task names");
      plan->eval.tasks.push_back(t.as<std::string>());
    }
    const std::vector<std::string> known = known_tasks();
    for (const std::string& t : plan->eval.tasks)
      if (std::find(known.begin(), known.end(), t) == known.end())
        e.fail("tasks", fmt::format("unknown task '{}' (known: {}; configs/tasks/NAME.yaml)", t, fmt::join(known, ", ")));
  }
  plan->eval.tasks_dir = e.get<std::string>("tasks_dir", std::string(SQLAB_SOURCE_DIR) + "/../shared/data/tasks");
  plan->eval.limit = non_negative(e, "limit", 0);
  plan->eval.num_fewshot = non_negative(e, "num_fewshot", 0);
  // Perplexity needs a text; a zero-shot run may go without one (then calib.text is required).
  plan->eval.text = e.existing_path("text", plan->eval.tasks.empty());
  plan->eval.seq_len = non_negative(e, "seq_len", 0);
  plan->eval.stride = non_negative(e, "stride", 0);
  plan->eval.max_tokens = non_negative(e, "max_tokens", 0);
  plan->eval.bos = e.get<bool>("bos", true);
  plan->eval.batch = e.get<int64_t>("batch", 8);
  plan->eval.gemm_reference = e.get<bool>("gemm_reference", false);
  plan->eval.hidden_budget_gb = e.get<double>("hidden_budget_gb", plan->eval.hidden_budget_gb);
  if (!(plan->eval.hidden_budget_gb >= 0)) e.fail("hidden_budget_gb", "must be >= 0 (0: every batch in the scratch file)");
  plan->eval.documents.documents = non_negative(e, "documents", 0);
  plan->eval.documents.join = e.get<std::string>("join", plan->eval.documents.join);
  if (plan->eval.batch < 1) e.fail("batch", "must be positive");
  if (plan->eval.seq_len == 1) e.fail("seq_len", "must be at least 2 (0: the model's context)");
  if (plan->eval.stride > 0 && plan->eval.seq_len > 0 && plan->eval.stride > plan->eval.seq_len)
    e.fail("stride", fmt::format("{} is larger than seq_len {}", plan->eval.stride, plan->eval.seq_len));
  e.finish();

  ConfigReader c(run.config["calib"], ex.file, "calib", run.sources);
  plan->calib.text = c.existing_path("text", false);
  plan->calib.tokens = non_negative(c, "tokens", plan->calib.tokens);
  plan->calib.seq_len = non_negative(c, "seq_len", 0);
  plan->calib.fit_tokens = non_negative(c, "fit_tokens", 0);
  if (plan->calib.tokens == 0) c.fail("tokens", "must be positive");
  if (plan->calib.text.empty() && plan->eval.text.empty())
    c.fail("text", "required when eval has no text (a zero-shot run calibrates on a text of its own)");
  c.finish();

  plan->quant = parse_model_quant_config(run.config["quant"], ex.file, run.sources);
  quant = plan->quant.quant;
  if (run.method == "cayley_sgd" && plan->quant.model.placement == Placement::residual)
    parse_model_cayley_options(plan->method_node, ex.file, plan->method_path, run.sources, 2);
  return plan;
}

WeightSourcePtr ModelBackend::source(const Plan& plan) const {
  const std::string key = plan.model.path + "#" + plan.model.format;
  auto it = sources_.find(key);
  if (it == sources_.end()) it = sources_.emplace(key, open_weights(plan.model.path, plan.model.format)).first;
  return it->second;
}

const Tokenizer* ModelBackend::tokenizer(const Plan& plan) const {
  if (plan.model.tokenizer.empty()) return nullptr;
  auto it = tokenizers_.find(plan.model.tokenizer);
  if (it == tokenizers_.end()) it = tokenizers_.emplace(plan.model.tokenizer, load_tokenizer(plan.model.tokenizer)).first;
  return it->second.get();
}

const std::vector<int64_t>& ModelBackend::tokens(const Plan& plan, const std::string& text) const {
  const TextSelection& documents = plan.eval.documents;
  const std::string key = fmt::format("{}#{}#{}#{}#{}", text, plan.model.tokenizer, plan.eval.bos,
                                      documents.documents, documents.join);
  auto it = tokens_.find(key);
  if (it == tokens_.end())
    it = tokens_.emplace(key, load_eval_tokens(text, tokenizer(plan), plan.eval.bos, 0, documents)).first;
  return it->second;
}

std::string ModelBackend::fp_key(const Plan& plan, const at::Tensor& eval_tokens, int64_t seq_len,
                                 int64_t stride) const {
  return fmt::format("{}#{}#{}#{}#{}#{}#{}", plan.model.path, plan.model.format, plan.model.tokenizer, plan.eval.text,
                     eval_tokens.numel(), seq_len, stride) +
         fmt::format("#{}#{}#{}#{}#{}", plan.eval.bos, plan.eval.documents.documents, plan.eval.documents.join,
                     modified_time(plan.model.path), modified_time(plan.eval.text)) +
         (plan.model.compute_dtype == at::kFloat ? std::string() : std::string("#") + compute_dtype_name(plan.model.compute_dtype));
}

void ModelBackend::validate(const ModelRunPlan& base, const RotationMethod& method) const {
  const Plan& plan = static_cast<const Plan&>(base);
  const LlamaConfig& config = source(plan)->config();
  const std::string where = plan.file + ": eval.seq_len";
  if (plan.eval.seq_len > config.max_seq_len)
    throw config_error(fmt::format("{}: {} exceeds the context of {} ({})", where, plan.eval.seq_len,
                                   plan.model.path, config.max_seq_len));
  const Tokenizer* tok = tokenizer(plan);
  if (tok && tok->vocab_size() > config.vocab_size)
    throw config_error(fmt::format("{}: model.tokenizer: {} has {} tokens, the model only {}", plan.file,
                                   plan.model.tokenizer, tok->vocab_size(), config.vocab_size));
  for (const std::string& text : {plan.eval.text, plan.calib.text})
    if (!text.empty()) tokens(plan, text);  // tokenizes (and checks) once; cached for the runs
  if (!plan.eval.tasks.empty() && !tok)
    throw config_error(fmt::format("{}: eval.tasks: zero-shot tasks need a tokenizer (model.tokenizer)", plan.file));
  for (const std::string& name : plan.eval.tasks) task(plan, name);  // specs, data and requests, checked once
  method.check_width(config.dim);
  if (plan.quant.model.placement == Placement::online) method.check_width(config.hidden_dim);
}

std::string ModelBackend::task_key(const Plan& plan, const std::string& name) const {
  return fmt::format("{}#{}#{}#{}", task_spec_path(name), plan.eval.tasks_dir, plan.eval.limit, plan.eval.num_fewshot);
}

const PreparedTask& ModelBackend::task(const Plan& plan, const std::string& name) const {
  const std::string key = task_key(plan, name);
  auto it = tasks_.find(key);
  if (it == tasks_.end()) {
    PreparedTask t;
    t.spec = load_task_spec(task_spec_path(name));
    const std::vector<nlohmann::json> docs = load_task_documents(t.spec, plan.eval.tasks_dir, plan.eval.limit);
    try {
      t.requests = build_task_requests(t.spec, docs, plan.eval.tasks_dir, plan.eval.num_fewshot);
    } catch (const Error& e) {  // a document the spec cannot read: the data or the spec is wrong
      throw config_error(e.what());
    }
    it = tasks_.emplace(key, std::move(t)).first;
  }
  return it->second;
}

LoglikelihoodOptions ModelBackend::task_options(const Plan& plan) const {
  LoglikelihoodOptions options;
  options.max_length = plan.eval.seq_len;
  options.batch = plan.eval.batch;
  options.bos = plan.eval.bos;
  return options;
}

// Each task's rows (tokenized and batched once per experiment) and the key of its
// full-precision scores: the model, the task's spec and data, the scoring options, the
// compute dtype, and the files' modification times.
std::vector<ModelBackend::TaskRows> ModelBackend::task_rows(const Plan& plan, const LlamaConfig& config) const {
  const LoglikelihoodOptions options = task_options(plan);
  std::vector<TaskRows> out;
  size_t first = 0;
  for (const std::string& name : plan.eval.tasks) {
    TaskRows t;
    t.name = name;
    t.task = &task(plan, name);
    const std::string key = fmt::format("{}#{}#{}#{}#{}", task_key(plan, name), plan.model.tokenizer, options.bos,
                                        options.max_length, options.batch);
    auto it = task_batches_.find(key);
    if (it == task_batches_.end())
      it = task_batches_.emplace(key, loglikelihood_batches(*tokenizer(plan), t.task->requests.requests, options,
                                                            config.max_seq_len)).first;
    t.rows = &it->second;
    t.fp_key = fmt::format("tasks_fp#{}#{}#{}#{}#{}#{}#{}#{}", plan.model.path, plan.model.format, key,
                           t.task->spec.sha256, compute_dtype_name(plan.model.compute_dtype), modified_time(plan.model.path),
                           t.task->requests.requests.size(), config.max_seq_len);
    t.first = first;
    first += t.rows->batches.size();
    out.push_back(t);
  }
  return out;
}

// A task's full-precision log-likelihoods in RESULTS/cache/tasks_fp (cache_path).
std::optional<std::vector<LoglikelihoodResult>> read_task_cache(const std::string& results_dir,
                                                                const std::string& key) {
  if (results_dir.empty()) return std::nullopt;
  std::ifstream in(cache_path(results_dir, "tasks_fp", key));
  if (!in) return std::nullopt;
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || j.value("key", "") != key) return std::nullopt;
  try {
    const auto ll = j.at("loglikelihood").get<std::vector<double>>();
    const auto greedy = j.at("greedy").get<std::vector<bool>>();
    if (ll.size() != greedy.size()) return std::nullopt;
    std::vector<LoglikelihoodResult> out(ll.size());
    for (size_t i = 0; i < ll.size(); ++i) out[i] = {ll[i], greedy[i]};
    return out;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

void write_task_cache(const std::string& results_dir, const std::string& key,
                      const std::vector<LoglikelihoodResult>& results) {
  if (results_dir.empty()) return;
  std::vector<double> ll;
  std::vector<bool> greedy;
  for (const LoglikelihoodResult& r : results) {
    ll.push_back(r.loglikelihood);
    greedy.push_back(r.greedy);
  }
  const std::string path = cache_path(results_dir, "tasks_fp", key);
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  write_file_atomic(path, nlohmann::json{{"key", key}, {"loglikelihood", ll}, {"greedy", greedy}}.dump() + "\n");
}

// The scored rows of task t out of a combined stream's scores.
std::vector<ScoredTokens> rows_of(const std::vector<ScoredTokens>& all, size_t first, size_t count) {
  return std::vector<ScoredTokens>(all.begin() + static_cast<int64_t>(first),
                                   all.begin() + static_cast<int64_t>(first + count));
}

// Every task on the quantized model and (fp_tasks_: computed in the same pass, or cached)
// the full-precision one: /metrics/TASK.acc, TASK.acc_stderr, TASK.acc_norm, ...,
// TASK.examples and the same with _fp; the mean acc over the tasks (zero_shot_acc); per
// task the spec's sha256, the lm-eval task it reproduces and the first example's prompt as
// attributes.
void ModelBackend::record_tasks(const Plan& plan, const std::vector<TaskRows>& rows,
                                const std::vector<ScoredTokens>& quantized, RunRecord& record) const {
  if (rows.empty()) return;
  const LoglikelihoodOptions options = task_options(plan);
  double acc_sum = 0.0, acc_fp_sum = 0.0;
  for (const TaskRows& t : rows) {
    const PreparedTask& task = *t.task;
    const std::vector<LoglikelihoodResult> q =
        loglikelihood_results(*t.rows, rows_of(quantized, t.first, t.rows->batches.size()));
    const TaskScores scores = score_task(task.spec, task.requests, q);
    const TaskScores fp_scores = score_task(task.spec, task.requests, fp_tasks_.at(t.fp_key));
    for (const auto& [metric, value] : scores.metrics) record.metrics[t.name + "." + metric] = value;
    for (const auto& [metric, value] : fp_scores.metrics) record.metrics[t.name + "." + metric + "_fp"] = value;
    record.metrics[t.name + ".examples"] = static_cast<double>(scores.examples);
    acc_sum += scores.metrics.at("acc");
    acc_fp_sum += fp_scores.metrics.at("acc");
    record.attributes["task." + t.name + ".spec_sha256"] = task.spec.sha256;
    record.attributes["task." + t.name + ".reproduces"] = task.spec.reproduces;
    record.attributes["task." + t.name + ".first_prompt"] = task.requests.first_prompt;
    record.attributes["task." + t.name + ".tokens"] =
        fmt::format("{} tokens through each layer ({} row by row)", t.rows->tokens(), t.rows->row_tokens);
  }
  const double n = static_cast<double>(rows.size());
  record.metrics["zero_shot_acc"] = acc_sum / n;
  record.metrics["zero_shot_acc_fp"] = acc_fp_sum / n;
  record.attributes["task_protocol"] = fmt::format(
      "lm-evaluation-harness log-likelihood scoring (tasks/task.h): tasks {}; {} examples per task ({}); {} shots; "
      "window {} tokens, contexts cut from the left; BOS {}; data {}; requests carried through the layers with the "
      "evaluation windows, a beginning that rows share (a context, few-shot examples) read once",
      fmt::join(plan.eval.tasks, ", "), plan.eval.limit > 0 ? std::to_string(plan.eval.limit) : "all",
      plan.eval.limit > 0 ? "eval.limit: not a reportable score" : "the whole split", plan.eval.num_fewshot,
      options.max_length > 0 ? options.max_length : source(plan)->config().max_seq_len, options.bos ? "yes" : "no",
      plan.eval.tasks_dir);
}

RunRecord ModelBackend::execute(const PreparedRun& p) const {
  const double start = now_seconds();
  const Plan& plan = static_cast<const Plan&>(*p.model);
  RunRecord record = new_run_record(*p.spec);

  const WeightSourcePtr weights = source(plan);
  const LlamaConfig& config = weights->config();
  const int64_t seq_len = plan.eval.seq_len > 0 ? plan.eval.seq_len : config.max_seq_len;
  const int64_t stride = plan.eval.stride > 0 ? plan.eval.stride : seq_len;
  const bool has_text = !plan.eval.text.empty();
  static const std::vector<int64_t> kNoTokens;
  const std::vector<int64_t>& all = has_text ? tokens(plan, plan.eval.text) : kNoTokens;
  const int64_t eval_count = plan.eval.max_tokens > 0 ? std::min<int64_t>(plan.eval.max_tokens, all.size()) : all.size();
  const at::Tensor eval_tokens = at::tensor(std::vector<int64_t>(all.begin(), all.begin() + eval_count), at::kLong);

  // Calibration windows: after the evaluated tokens when the same text has room.
  const std::string calib_text = plan.calib.text.empty() ? plan.eval.text : plan.calib.text;
  const std::vector<int64_t>& calib_all = tokens(plan, calib_text);
  const int64_t calib_seq = plan.calib.seq_len > 0 ? plan.calib.seq_len : seq_len;
  int64_t calib_begin = 0;
  if (calib_text == plan.eval.text && eval_count + plan.calib.tokens <= static_cast<int64_t>(calib_all.size()))
    calib_begin = eval_count;
  const int64_t calib_count = std::min<int64_t>(plan.calib.tokens, calib_all.size() - calib_begin);
  const at::Tensor calib = token_windows(
      at::tensor(std::vector<int64_t>(calib_all.begin() + calib_begin, calib_all.begin() + calib_begin + calib_count),
                 at::kLong),
      std::min(calib_seq, calib_count), "calib");
  // The full-precision perplexity: once per model and protocol, in the same pass as the
  // first run that needs it; cached for the others.
  const std::string fp_cache = has_text ? fp_key(plan, eval_tokens, seq_len, stride) : std::string();
  if (has_text && !fp_.count(fp_cache))
    if (const std::optional<PerplexityResult> cached = read_fp_cache(p.results_dir, fp_cache)) fp_[fp_cache] = *cached;
  const bool need_fp = has_text && !fp_.count(fp_cache);
  const std::vector<TokenBatch> batches =
      has_text ? perplexity_batches(eval_tokens, seq_len, stride, plan.eval.batch) : std::vector<TokenBatch>{};
  const int64_t windows = has_text ? static_cast<int64_t>(perplexity_windows(eval_count, seq_len, stride).size()) : 0;
  // Zero-shot tasks: their requests' rows go through the layers beside the evaluation
  // windows (and through the full-precision layers while a task's full-precision scores
  // are neither computed in this process nor cached in the results directory).
  const std::vector<TaskRows> task_list = task_rows(plan, config);
  std::vector<TokenBatch> task_batches, task_batches_fp;
  std::vector<const TaskRows*> fp_pending;
  for (const TaskRows& t : task_list) {
    append_batches(task_batches, t.rows->batches);
    if (!fp_tasks_.count(t.fp_key))
      if (auto cached = read_task_cache(p.results_dir, t.fp_key)) fp_tasks_[t.fp_key] = std::move(*cached);
    if (fp_tasks_.count(t.fp_key)) continue;
    fp_pending.push_back(&t);
    append_batches(task_batches_fp, t.rows->batches);
  }
  const double load_seconds = now_seconds() - start;

  // The quantizer's inputs.
  const bool online = plan.quant.model.placement == Placement::online;
  std::map<std::string, std::unique_ptr<RecordFitLog>> logs;
  RunWarnings warnings(p.spec->run_id);
  BuildInputs in;
  in.method = p.method.get();
  in.seed = static_cast<uint64_t>(p.spec->seed);
  in.calib_windows = calib;
  in.max_fit_tokens = plan.calib.fit_tokens;
  in.keep_rotations = p.record.rotations;
  in.rotations_out = &record.rotations;
  in.log_for = [&](const std::string& site) -> FitLog& {
    auto& log = logs[site];
    if (!log)
      log = std::make_unique<RecordFitLog>(record, record.site_metrics[site], site, online ? site + "." : "",
                                           p.record.traces, warnings);
    return *log;
  };
  if (p.spec->method == "cayley_sgd" && !online) {
    const ModelCayleyOptions options = parse_model_cayley_options(plan.method_node, plan.file, plan.method_path,
                                                                   plan.sources, calib.size(1));
    in.residual_trainer = [&, options](const LlamaWeights& m, const QuantizedModelHooks& hooks) {
      return train_residual_rotation(m, hooks, plan.quant.quant, plan.quant.model.head_bits, calib, options,
                                     in.seed, in.log_for("residual"));
    };
  }

  // One pass over the layers (issue #18): layer l is read, transformed and quantized, the
  // evaluation windows' and the tasks' hidden states go through it (and through the
  // full-precision layer while the full-precision scores are not cached), then it is dropped.
  const at::Device device(plan.model.device);
  std::map<std::string, double> stage;
  const auto timed = [&](const char* name, auto&& work) {
    const double t = now_seconds();
    work();
    wait_for_device(device);  // GPU kernels run asynchronously
    stage[name] += now_seconds() - t;
  };
  LayerwiseBuilder builder(weights, plan.quant, in, device);
  const at::ScalarType dtype = plan.model.compute_dtype;
  HiddenStream eval_q(batches, dtype), eval_fp(need_fp ? batches : std::vector<TokenBatch>{}, dtype);
  const int64_t budget = static_cast<int64_t>(plan.eval.hidden_budget_gb * static_cast<double>(1ull << 30));
  HiddenStream tasks_q(task_batches, dtype), tasks_fp(task_batches_fp, dtype);
  for (HiddenStream* stream : {&eval_q, &eval_fp, &tasks_q, &tasks_fp}) stream->spill_beyond(budget, p.results_dir);
  ForwardHooks* hooks = builder.hooks().get();
  timed("eval_forward", [&] { eval_q.embed(config, builder.embedding(), weights->origin()); });
  timed("eval_fp", [&] { eval_fp.embed(config, builder.fp_embedding(), weights->origin()); });
  timed("tasks", [&] {
    tasks_q.embed(config, builder.embedding(), weights->origin());
    tasks_fp.embed(config, builder.fp_embedding(), weights->origin());
  });
  builder.release_embeddings();
  const auto tokens_of = [](const std::vector<TokenBatch>& batches) {
    int64_t n = 0;
    for (const TokenBatch& b : batches) n += b.token_count();
    return n;
  };
  const int64_t tokens_per_layer = calib.numel() * (plan.quant.quant.w_quantizer == WeightQuantizer::rtn ? 1 : 3) +
                                   eval_count * (need_fp ? 2 : 1) + tokens_of(task_batches) + tokens_of(task_batches_fp);
  // Layer i/N, elapsed, time left, tokens per second: on a terminal, or a line a minute in a log (core/progress.h).
  Progress progress(static_cast<size_t>(config.n_layers), default_progress_mode());
  const double pass_start = now_seconds();
  for (int64_t l = 0; l < config.n_layers; ++l) {
    LayerwiseBuilder::Layer layer = builder.next_layer();
    timed("eval_fp", [&] { eval_fp.advance(config, layer.fp, l); });
    timed("eval_forward", [&] { eval_q.advance(config, layer.quantized, l, hooks); });
    timed("tasks", [&] {
      tasks_fp.advance(config, layer.fp, l);
      tasks_q.advance(config, layer.quantized, l, hooks);
    });
    const double rate = static_cast<double>(tokens_per_layer * (l + 1)) / std::max(1e-9, now_seconds() - pass_start);
    progress.update(static_cast<size_t>(l + 1), fmt::format("{}: layers, {:.0f} tokens/s", p.spec->run_id, rate));
  }
  progress.finish();
  builder.finish();
  PerplexityResult q;
  if (has_text) {
    timed("head", [&] {
      q = perplexity_result(eval_q.score(config, builder.final_norm(), builder.output(), hooks), seq_len, stride,
                            windows);
    });
  }
  std::vector<ScoredTokens> task_scores;
  timed("tasks", [&] {
    task_scores = tasks_q.score(config, builder.final_norm(), builder.output(), hooks);
    const std::vector<ScoredTokens> fp_scores = tasks_fp.score(config, builder.fp_final_norm(), builder.fp_output());
    size_t first = 0;
    for (const TaskRows* t : fp_pending) {
      fp_tasks_[t->fp_key] = loglikelihood_results(*t->rows, rows_of(fp_scores, first, t->rows->batches.size()));
      first += t->rows->batches.size();
      write_task_cache(p.results_dir, t->fp_key, fp_tasks_[t->fp_key]);
    }
  });
  if (need_fp)
    timed("eval_fp", [&] {
      fp_[fp_cache] = perplexity_result(eval_fp.score(config, builder.fp_final_norm(), builder.fp_output()), seq_len,
                                        stride, windows);
      write_fp_cache(p.results_dir, fp_cache, fp_[fp_cache]);
    });
  static const PerplexityResult kNoPerplexity;
  const PerplexityResult& fp_ppl = has_text ? fp_.at(fp_cache) : kNoPerplexity;
  for (const auto& [name, seconds] : builder.timing()) stage[name] += seconds;
  double build_seconds = 0.0;  // the quantization pass: read, calibration forward, fit, fuse, quantize, check
  for (const auto& [name, seconds] : builder.timing()) build_seconds += seconds;
  const double eval_seconds = stage["eval_forward"] + stage["head"];
  const double fp_seconds = stage["eval_fp"];
  const double tasks_seconds = stage["tasks"];
  throw_if_interrupted();
  record_tasks(plan, task_list, task_scores, record);
  const double record_start = now_seconds();

  // One residual site: its fit metrics (e.g. cayley_sgd's grad_norm_ratio) are the run's,
  // as a single-site run's are at site level; added to the task metrics already recorded.
  if (!online && record.site_metrics.size() == 1) {
    for (const auto& [name, value] : record.site_metrics.begin()->second) record.metrics[name] = value;
    record.site_metrics.clear();
  }
  if (has_text) {
    record.metrics["ppl"] = q.ppl;
    record.metrics["nll"] = q.nll_mean;
    record.metrics["ppl_fp"] = fp_ppl.ppl;
    record.metrics["nll_fp"] = fp_ppl.nll_mean;
    record.metrics["ppl_ratio"] = q.ppl / fp_ppl.ppl;
    record.metrics["tokens"] = static_cast<double>(q.tokens_scored);
    record.metrics["windows"] = static_cast<double>(q.windows);
  }
  record.metrics["seq_len"] = static_cast<double>(seq_len);
  record.metrics["stride"] = static_cast<double>(stride);
  record.metrics["calib_tokens"] = static_cast<double>(calib.numel());
  record.metrics["calib_overlaps_eval"] = calib_text == plan.eval.text && calib_begin < eval_count;
  record.metrics["fused_logit_error"] = builder.fused_logit_error();
  record.metrics["build_seconds"] = build_seconds;
  record.metrics["eval_seconds"] = eval_seconds;
  record.metrics["quantization_pass_seconds"] = build_seconds;  // fit + fuse + quantize
  record.metrics["evaluation_seconds"] = eval_seconds + fp_seconds + tasks_seconds;
  if (!plan.eval.tasks.empty()) record.metrics["tasks_seconds"] = tasks_seconds;
  record.attributes["eval_text"] = plan.eval.text;
  record.attributes["calib_text"] = calib_text;
  record.attributes["tokenizer"] = plan.model.tokenizer.empty() ? "(token ids)" : plan.model.tokenizer;
  record.attributes["model_path"] = plan.model.path;
  for (const auto& [key, value] : device_attributes(plan.model.device)) record.attributes[key] = value;
  record.attributes["placement"] = placement_name(plan.quant.model.placement);
  const std::string documents =
      plan.eval.text.size() > 6 && plan.eval.text.compare(plan.eval.text.size() - 6, 6, ".jsonl") == 0
          ? fmt::format(" ({} documents' text joined with '{}')",
                        plan.eval.documents.documents > 0 ? std::to_string(plan.eval.documents.documents) : "all",
                        plan.eval.documents.join)
          : "";
  if (has_text)
    record.attributes["ppl_protocol"] = fmt::format(
        "text {}{} tokenized whole (bos {}), first {} tokens; windows of {} tokens, stride {}; {} windows, {} scored "
        "targets (each once); ppl = exp(mean NLL)",
        plan.eval.text, documents, plan.eval.bos ? "at the start" : "none", eval_count, seq_len, stride, q.windows,
        q.tokens_scored);
  record.attributes["calib_protocol"] =
      fmt::format("text {}, tokens [{}, {}), windows of {}", calib_text, calib_begin, calib_begin + calib.numel(),
                  calib.size(1));
  record.attributes["head"] = !config.tied_embeddings  ? "separate"
                              : builder.head_untied() ? "tied in the checkpoint; untied by folding/fusion"
                                                      : "tied";
  if (builder.residual()) record.attributes["residual_rotation"] = builder.residual()->describe();
  record.attributes["pipeline"] = fmt::format(
      "layer by layer: weights read from {} one decoder layer at a time (evaluation in {} on {}; calibration and "
      "fitting in float32), calibration and evaluation hidden states carried through each layer in turn; head "
      "(float32) and log-softmax (float64) {} tokens at a time",
      weights->origin(), compute_dtype_name(dtype), device.str(), kHeadChunkTokens);
  record.attributes["compute_dtype"] = compute_dtype_name(dtype);
  // How the 16-bit products ran on this CPU (model/gemm.h): the numbers differ in the order
  // of the float32 sums only, the speed by up to 50x.
  if (dtype != at::kFloat && device.is_cpu()) record.attributes["cpu_gemm16"] = gemm::cpu_path16();
  record.metrics["peak_rss_mib"] = peak_rss_mib();
  record.metrics["hidden_spilled_mib"] =
      static_cast<double>(eval_q.spilled_bytes() + tasks_q.spilled_bytes()) / (1 << 20);
  if (has_text) {
    const double flops = forward_flops(config, windows, seq_len);
    record.metrics["eval_forward_gflops"] = flops / std::max(1e-9, stage["eval_forward"]) / 1e9;
    if (plan.eval.gemm_reference) {
      const double gemm = reference_gemm_gflops(config, device);
      record.metrics["gemm_gflops"] = gemm;
      record.metrics["eval_forward_gemm_ratio"] = record.metrics["eval_forward_gflops"] / gemm;
    }
  }
  warnings.store(record);
  // Disjoint stages: load (texts, tokens, windows); the quantization pass's read (weights
  // from the checkpoint), calib_forward, fit, fuse, quantize, check (the fused-model check);
  // eval_forward (the evaluation windows through the quantized layers), head (its chunked
  // log-softmax), eval_fp (the same on the full-precision layers; 0 when cached); tasks; record.
  record.timing["load"] = load_seconds;
  for (const auto& [name, seconds] : stage) record.timing[name] = seconds;
  record.timing["record"] = now_seconds() - record_start;
  finish_timing(record, now_seconds() - start);
  return record;
}

}  // namespace

std::shared_ptr<const ModelRunBackend> make_model_run_backend() { return std::make_shared<ModelBackend>(); }

}  // namespace sqlab
