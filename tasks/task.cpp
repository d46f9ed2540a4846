#include "tasks/task.h"

#include <fmt/format.h>
#include <openssl/sha.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/config.h"
#include "core/error.h"
#include "tasks/template.h"
#include "tasks/readers.h"

namespace sqlab {
namespace fs = std::filesystem;
namespace {

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw config_error(fmt::format("task spec '{}': cannot open", path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<std::string> string_list(ConfigReader& r, const std::string& key, bool required) {
  const YAML::Node node = r.raw(key);
  if (!node) {
    if (required) r.fail(key, "required key is missing");
    return {};
  }
  if (node.IsScalar()) return {node.as<std::string>()};
  if (!node.IsSequence()) r.fail(key, "expected a string or a list of strings");
  std::vector<std::string> out;
  for (const auto& item : node) {
    if (!item.IsScalar()) r.fail(key, "expected a list of strings");
    out.push_back(item.as<std::string>());
  }
  return out;
}

GoldRule read_gold(ConfigReader& r) {
  GoldRule g;
  const YAML::Node node = r.raw("gold");
  if (!node) r.fail("gold", "required key is missing");
  if (node.IsScalar()) {
    g.value = node.as<std::string>();
    return g;
  }
  ConfigReader gold = r.child("gold");
  g.value = gold.require<std::string>("value");
  g.index_in = gold.get<std::string>("index_in", "");
  g.item = gold.get<std::string>("item", "");
  if (g.index_in.empty() != g.item.empty()) gold.fail("index_in", "index_in and item go together");
  if (const YAML::Node map = gold.raw("map")) {
    if (!map.IsMap()) gold.fail("map", "expected a mapping {value: index}");
    for (const auto& kv : map) g.map[kv.first.as<std::string>()] = kv.second.as<int64_t>();
  }
  gold.finish();
  return g;
}

}  // namespace

std::string sha256_hex(const std::string& bytes) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest);
  std::string hex;
  for (unsigned char b : digest) hex += fmt::format("{:02x}", b);
  return hex;
}

namespace {

// `include: OTHER.yaml` (lm-eval's include; beside the spec): the other spec's keys, with
// this file's over them (a key here replaces the included one whole). One level: the
// included spec includes nothing. The checksum covers both files' bytes.
YAML::Node with_included(const std::string& path, YAML::Node node, std::string& bytes) {
  if (!node.IsMap() || !node["include"]) return node;
  ConfigReader top(node, path, "");
  const std::string other = (fs::path(path).parent_path() / top.require<std::string>("include")).string();
  const YAML::Node base = load_yaml_file(other);
  if (!base.IsMap()) throw config_error(fmt::format("{}: include: '{}' is not a task spec (a mapping)", path, other));
  if (base["include"])
    throw config_error(fmt::format("{}: include: '{}' includes a spec itself (one level only)", path, other));
  YAML::Node merged = YAML::Clone(base);
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    if (key != "include") merged[key] = kv.second;
  }
  bytes += file_bytes(other);
  return merged;
}

}  // namespace

TaskSpec load_task_spec(const std::string& path) {
  TaskSpec s;
  s.file = path;
  std::string bytes = file_bytes(path);
  const YAML::Node node = with_included(path, load_yaml_file(path), bytes);
  s.sha256 = sha256_hex(bytes);
  ConfigReader r(node, path, "");
  s.name = r.require<std::string>("task");
  s.reproduces = r.require<std::string>("reproduces");
  ConfigReader docs = r.child("documents");
  s.reader = docs.choice("reader", "jsonl", {"jsonl", "csv", "hellaswag_txt"});
  s.files = string_list(docs, "files", true);
  s.labels_file = docs.get<std::string>("labels_file", "");
  if (!s.labels_file.empty() && s.reader != "jsonl") docs.fail("labels_file", "only a jsonl reader takes labels_file");
  docs.finish();
  const std::string output = r.choice("output", "multiple_choice", {"multiple_choice", "multiple_input", "loglikelihood"});
  s.output = output == "multiple_input" ? TaskOutput::multiple_input
             : output == "loglikelihood" ? TaskOutput::loglikelihood
                                         : TaskOutput::multiple_choice;
  s.description = r.get<std::string>("description", "");
  s.context = r.require<std::string>("context");
  if (const YAML::Node choices = r.raw("choices")) {
    if (choices.IsSequence()) {
      s.choices = string_list(r, "choices", true);
    } else {
      ConfigReader c = r.child("choices");
      s.choices_list = c.require<std::string>("list");
      s.choice_item = c.require<std::string>("item");
      c.finish();
    }
  }
  s.target = r.get<std::string>("target", "");
  const bool has_choices = !s.choices.empty() || !s.choices_list.empty();
  if (s.output != TaskOutput::loglikelihood && !has_choices) r.fail("choices", "a multiple-choice task needs its choices");
  if (s.output != TaskOutput::multiple_choice && s.target.empty()) r.fail("target", "required for this output type");
  if (s.output != TaskOutput::loglikelihood) s.gold = read_gold(r);
  s.target_delimiter = r.get<std::string>("target_delimiter", s.target_delimiter);
  s.fewshot_delimiter = r.get<std::string>("fewshot_delimiter", s.fewshot_delimiter);
  s.fewshot_files = r.get<std::string>("fewshot_files", "");
  s.metrics = string_list(r, "metrics", true);
  for (const std::string& m : s.metrics) {
    const bool choice_metric = m == "acc" || m == "acc_norm";
    const bool ll_metric = m == "acc" || m == "ppl";
    if (s.output == TaskOutput::loglikelihood ? !ll_metric : !choice_metric)
      r.fail("metrics", fmt::format("'{}' is not a metric of a {} task (valid: {})", m, output,
                                    s.output == TaskOutput::loglikelihood ? "acc, ppl" : "acc, acc_norm"));
    if (m == "acc_norm" && s.output == TaskOutput::multiple_input)
      r.fail("metrics", "acc_norm needs one continuation per choice (multiple_choice)");
  }
  r.finish();
  // Template syntax and filter names, before any document is read.
  const auto check = [&](const std::string& text, const char* key) {
    if (!text.empty()) check_template(text, fmt::format("{}: {}", path, key));
  };
  check(s.description, "description");
  check(s.context, "context");
  for (const std::string& c : s.choices) check(c, "choices");
  check(s.choice_item, "choices.item");
  check(s.target, "target");
  check(s.gold.value, "gold");
  check(s.gold.item, "gold.item");
  check(s.fewshot_files, "fewshot_files");
  return s;
}

std::string task_spec_path(const std::string& name, const std::string& specs_dir) {
  const fs::path dir = specs_dir.empty() ? fs::path(SQLAB_SOURCE_DIR) / "configs" / "tasks" : fs::path(specs_dir);
  const fs::path path = dir / (name + ".yaml");
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw config_error(fmt::format("unknown task '{}' (no {}; known: {})", name, path.string(),
                                   fmt::join(known_tasks(specs_dir), ", ")));
  return path.string();
}

std::vector<std::string> known_tasks(const std::string& specs_dir) {
  const fs::path dir = specs_dir.empty() ? fs::path(SQLAB_SOURCE_DIR) / "configs" / "tasks" : fs::path(specs_dir);
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.path().extension() == ".yaml") names.push_back(entry.path().stem().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<nlohmann::json> load_task_documents(const TaskSpec& spec, const std::string& tasks_dir, int64_t limit) {
  std::vector<nlohmann::json> docs = read_task_files(spec.reader, spec.files, spec.labels_file, tasks_dir, spec.file);
  if (limit > 0 && static_cast<int64_t>(docs.size()) > limit) docs.resize(static_cast<size_t>(limit));
  return docs;
}

namespace {

// Each item of the list at `list_path`, rendered with `item`.
std::vector<std::string> render_items(const nlohmann::json& doc, const std::string& list_path, const std::string& item,
                                      const std::string& where) {
  const nlohmann::json& list = document_node(doc, list_path, where);
  if (!list.is_array()) throw Error(fmt::format("{}: '{}' is not a list", where, list_path));
  std::vector<std::string> out;
  for (const auto& element : list) out.push_back(render_template(item, element, where));
  return out;
}

std::vector<std::string> choices_of(const TaskSpec& spec, const nlohmann::json& doc, const std::string& where) {
  if (!spec.choices_list.empty()) return render_items(doc, spec.choices_list, spec.choice_item, where);
  std::vector<std::string> out;
  for (const std::string& c : spec.choices) out.push_back(render_template(c, doc, where));
  return out;
}

int64_t gold_of(const TaskSpec& spec, const nlohmann::json& doc, const std::vector<std::string>& choices,
                const std::string& where) {
  const GoldRule& g = spec.gold;
  const std::string value = render_template(g.value, doc, where);
  int64_t index = -1;
  if (!g.map.empty()) {
    const auto it = g.map.find(value);
    if (it == g.map.end()) throw Error(fmt::format("{}: gold value '{}' is not in gold.map", where, value));
    index = it->second;
  } else if (!g.index_in.empty()) {
    const std::vector<std::string> keys = render_items(doc, g.index_in, g.item, where);
    const auto it = std::find(keys.begin(), keys.end(), value);
    if (it == keys.end()) throw Error(fmt::format("{}: gold value '{}' is not among [{}]", where, value, fmt::join(keys, ", ")));
    index = it - keys.begin();
  } else {
    try {
      size_t used = 0;
      index = std::stoll(value, &used);
      if (used != value.size()) index = -1;
    } catch (const std::exception&) {
      index = -1;
    }
  }
  if (index < 0 || index >= static_cast<int64_t>(choices.size()))
    throw Error(fmt::format("{}: gold '{}' is not a choice index (0..{})", where, value, choices.size() - 1));
  return index;
}

// The context of a document with the description and few-shot examples before it.
std::string full_context(const TaskSpec& spec, const nlohmann::json& doc, const std::string& tasks_dir,
                         int64_t num_fewshot, const std::string& where,
                         std::map<std::string, std::vector<nlohmann::json>>& fewshot_cache) {
  std::string text = spec.description.empty() ? "" : render_template(spec.description, doc, where);
  if (num_fewshot > 0) {
    const std::string file = render_template(spec.fewshot_files, doc, where);
    auto it = fewshot_cache.find(file);
    if (it == fewshot_cache.end())
      it = fewshot_cache.emplace(file, read_task_files(spec.reader, {file}, "", tasks_dir, spec.file)).first;
    if (static_cast<int64_t>(it->second.size()) < num_fewshot)
      throw config_error(fmt::format("{}: {} has {} examples, fewer than num_fewshot = {}", spec.file, file,
                                     it->second.size(), num_fewshot));
    for (int64_t i = 0; i < num_fewshot; ++i) {
      const nlohmann::json& shot = it->second[static_cast<size_t>(i)];
      const std::vector<std::string> choices = choices_of(spec, shot, where);
      text += render_template(spec.context, shot, where) + spec.target_delimiter +
              choices[static_cast<size_t>(gold_of(spec, shot, choices, where))] + spec.fewshot_delimiter;
    }
  }
  return text;
}

}  // namespace

TaskRequests build_task_requests(const TaskSpec& spec, const std::vector<nlohmann::json>& documents,
                                 const std::string& tasks_dir, int64_t num_fewshot) {
  if (num_fewshot > 0 && spec.fewshot_files.empty())
    throw config_error(fmt::format("{}: num_fewshot = {} but the task has no fewshot_files", spec.file, num_fewshot));
  TaskRequests out;
  std::map<std::string, std::vector<nlohmann::json>> fewshot_cache;
  for (size_t d = 0; d < documents.size(); ++d) {
    const nlohmann::json& doc = documents[d];
    const std::string where = fmt::format("{}: document {}", spec.file, d);
    const std::string prefix = full_context(spec, doc, tasks_dir, num_fewshot, where, fewshot_cache);
    out.first.push_back(static_cast<int64_t>(out.requests.size()));
    if (spec.output == TaskOutput::loglikelihood) {
      const std::string context = prefix + render_template(spec.context, doc, where);
      // lm-eval adds no delimiter to a loglikelihood target (LAMBADA's carries its space).
      out.requests.push_back({context, render_template(spec.target, doc, where)});
      out.gold.push_back(0);
      out.choice_chars.push_back({});
    } else {
      const std::vector<std::string> choices = choices_of(spec, doc, where);
      const int64_t gold = gold_of(spec, doc, choices, where);
      std::vector<int64_t> chars;
      if (spec.output == TaskOutput::multiple_choice) {
        const std::string context = prefix + render_template(spec.context, doc, where);
        for (const std::string& c : choices) {
          out.requests.push_back({context, spec.target_delimiter + c});
          chars.push_back(code_points(c));
        }
      } else {  // multiple_input: each choice is a context, the target their shared continuation
        const std::string continuation = spec.target_delimiter + render_template(spec.target, doc, where);
        for (const std::string& c : choices) {
          out.requests.push_back({prefix + c, continuation});
          chars.push_back(code_points(c));
        }
      }
      out.gold.push_back(gold);
      out.choice_chars.push_back(chars);
    }
    out.count.push_back(static_cast<int64_t>(out.requests.size()) - out.first.back());
    if (d == 0) {
      const LoglikelihoodRequest& r = out.requests[static_cast<size_t>(out.first[0] + out.gold[0])];
      out.first_prompt = r.context + r.continuation;
    }
  }
  return out;
}

namespace {

// mean and lm-eval's mean_stderr: sample standard deviation (n - 1) / sqrt(n).
std::pair<double, double> mean_and_stderr(const std::vector<double>& values) {
  const double n = static_cast<double>(values.size());
  if (values.empty()) return {0.0, 0.0};
  double sum = 0.0;
  for (double v : values) sum += v;
  const double mean = sum / n;
  if (values.size() < 2) return {mean, 0.0};
  double sq = 0.0;
  for (double v : values) sq += (v - mean) * (v - mean);
  return {mean, std::sqrt(sq / (n - 1.0)) / std::sqrt(n)};
}

size_t argmax(const std::vector<double>& v) {  // the first of equal maxima, as numpy's argmax
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[best]) best = i;
  return best;
}

}  // namespace

TaskScores score_task(const TaskSpec& spec, const TaskRequests& requests, const std::vector<LoglikelihoodResult>& results) {
  if (results.size() != requests.requests.size())
    throw Error(fmt::format("task {}: {} results for {} requests", spec.name, results.size(), requests.requests.size()));
  TaskScores scores;
  scores.examples = static_cast<int64_t>(requests.first.size());
  std::vector<double> acc, acc_norm, loglikelihoods;
  for (size_t d = 0; d < requests.first.size(); ++d) {
    const size_t first = static_cast<size_t>(requests.first[d]);
    if (spec.output == TaskOutput::loglikelihood) {
      acc.push_back(results[first].greedy ? 1.0 : 0.0);
      loglikelihoods.push_back(results[first].loglikelihood);
      continue;
    }
    std::vector<double> ll, normalized;
    for (int64_t i = 0; i < requests.count[d]; ++i) {
      ll.push_back(results[first + static_cast<size_t>(i)].loglikelihood);
      normalized.push_back(ll.back() / static_cast<double>(requests.choice_chars[d][static_cast<size_t>(i)]));
    }
    acc.push_back(static_cast<int64_t>(argmax(ll)) == requests.gold[d] ? 1.0 : 0.0);
    acc_norm.push_back(static_cast<int64_t>(argmax(normalized)) == requests.gold[d] ? 1.0 : 0.0);
  }
  for (const std::string& m : spec.metrics) {
    if (m == "acc" || m == "acc_norm") {
      const auto [mean, stderr_] = mean_and_stderr(m == "acc" ? acc : acc_norm);
      scores.metrics[m] = mean;
      scores.metrics[m + "_stderr"] = stderr_;
    } else if (m == "ppl") {
      const auto [mean, stderr_] = mean_and_stderr(loglikelihoods);
      scores.metrics["ppl"] = std::exp(-mean);
      // The delta method: d exp(-m) = exp(-m) dm.
      scores.metrics["ppl_stderr"] = std::exp(-mean) * stderr_;
    }
  }
  return scores;
}

}  // namespace sqlab
