// Zero-shot (and few-shot) tasks scored the way lm-evaluation-harness scores them: a task is
// a small data-driven spec (configs/tasks/NAME.yaml) saying how a document of the split
// becomes a context and its continuations, which one is right, and which metrics to report.
// This folder only turns documents into (context, continuation) requests and log-likelihoods
// into metrics; model/loglikelihood.h scores the requests with a (quantized) model.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sqlab {

// lm-eval's output types: one context and a continuation per choice (multiple_choice); one
// context per choice and a shared continuation (multiple_input: WinoGrande's partial
// scoring); one context and its target (loglikelihood: LAMBADA).
enum class TaskOutput { multiple_choice, multiple_input, loglikelihood };

// How the index of the right choice comes from a document: `value` rendered, then either an
// integer, looked up in `map`, or found among the items of the list `index_in` (each
// rendered with `item`).
struct GoldRule {
  std::string value;
  std::map<std::string, int64_t> map;
  std::string index_in, item;
};

struct TaskSpec {
  std::string name;
  std::string file;         // the spec's path
  std::string sha256;       // of the spec file's bytes (recorded in every run file)
  std::string reproduces;   // the lm-eval task and version it follows
  std::string reader;       // jsonl | csv | hellaswag_txt
  std::vector<std::string> files;  // under the tasks directory; a '*' in the file name globs
  std::string labels_file;  // jsonl: one label per line, stored as the field `label`
  TaskOutput output = TaskOutput::multiple_choice;
  std::string description;  // template, before everything (MMLU's header)
  std::string context;      // template
  std::vector<std::string> choices;           // templates, or
  std::string choices_list, choice_item;      // a list field and each item's template
  std::string target;       // multiple_input, loglikelihood: template
  GoldRule gold;
  std::string target_delimiter = " ";
  std::string fewshot_delimiter = "\n\n";
  std::string fewshot_files;  // template naming the few-shot split for a document (MMLU dev)
  std::vector<std::string> metrics;  // acc, acc_norm (choices); acc, ppl (loglikelihood)
};

// Reads and checks a spec; every problem is a config error naming the file, line and key.
TaskSpec load_task_spec(const std::string& path);

// configs/tasks/NAME.yaml under the project (or `specs_dir`); unknown names list the known.
std::string task_spec_path(const std::string& name, const std::string& specs_dir = "");
std::vector<std::string> known_tasks(const std::string& specs_dir = "");

// The documents of the split, in the file's order (`limit` > 0: the first `limit`).
std::vector<nlohmann::json> load_task_documents(const TaskSpec& spec, const std::string& tasks_dir, int64_t limit = 0);

struct LoglikelihoodRequest {
  std::string context, continuation;
};
struct LoglikelihoodResult {
  double loglikelihood = 0.0;  // sum of the continuation tokens' log-probabilities
  bool greedy = false;         // every continuation token is the argmax
};

// A task's requests: document d owns requests [first[d], first[d] + count[d]).
struct TaskRequests {
  std::vector<LoglikelihoodRequest> requests;
  std::vector<int64_t> first, count, gold;
  std::vector<std::vector<int64_t>> choice_chars;  // lm-eval's len(choice), for acc_norm
  std::string first_prompt;  // the first document's context + its gold continuation
};

// `num_fewshot` > 0: that many examples of the few-shot split (the first ones, in order, as
// lm-eval's default sampler for MMLU's dev split) go before each context.
TaskRequests build_task_requests(const TaskSpec& spec, const std::vector<nlohmann::json>& documents,
                                 const std::string& tasks_dir, int64_t num_fewshot = 0);

struct TaskScores {
  std::map<std::string, double> metrics;  // acc, acc_stderr, acc_norm, acc_norm_stderr, ppl, ...
  int64_t examples = 0;
};

// Metrics from the requests' results, as lm-eval computes them: acc (argmax of the
// log-likelihoods, first on ties), acc_norm (argmax of loglikelihood / len(choice)), their
// standard errors (sample standard deviation / sqrt(n)); loglikelihood tasks: acc (greedy
// match) and ppl = exp(-mean loglikelihood).
TaskScores score_task(const TaskSpec& spec, const TaskRequests& requests,
                      const std::vector<LoglikelihoodResult>& results);

// Lower-case hex SHA-256 of `bytes` (spec checksums; cache keys).
std::string sha256_hex(const std::string& bytes);

}  // namespace sqlab
