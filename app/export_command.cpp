// sqlab export: each run's /rotations/SITE/ tensors (one stored form per rotation type,
// rotations/stored_form.h: R; R1, R2; H_base, signs; blocks; source; T, T_w) become tensors
// SITE.NAME in RUN_ID.safetensors, with metadata method, options (the method entry as JSON),
// run_id, label, seed, forms ({site: form} as JSON) and layout (the reconstruction of each
// form present, one line per form); or one RUN_ID.SITE.NAME.npy per tensor plus RUN_ID.json.
// --dense writes every orthogonal rotation as its dense SITE.R instead, whatever its size.
// Tensors stay float64, as in the run file: float32 would lose orthogonality at
// about 1e-7 per entry, and the user's pipeline can cast when it fuses.
#include "app/cli_args.h"
#include "app/export_command.h"

#include <ATen/ATen.h>
#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <charconv>
#include <filesystem>
#include <iostream>
#include <set>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/recorder.h"
#include "core/system.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "rotations/stored_form.h"

namespace sqlab {
namespace po = boost::program_options;
namespace fs = std::filesystem;
namespace {

const char* kUsage = "sqlab export RESULTS_DIR [--run RUN_ID]... [--format safetensors|npy] [--dense] --out DIR";

// A YAML scalar as the JSON value it reads as: quoted scalars stay strings.
nlohmann::json scalar_json(const YAML::Node& node) {
  const std::string text = node.Scalar();
  if (node.Tag() == "!") return text;
  if (text == "true" || text == "false") return text == "true";
  if (text == "~" || text == "null") return nullptr;
  int64_t i = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), i);
  if (ec == std::errc() && end == text.data() + text.size() && !text.empty()) return i;
  char* stop = nullptr;
  const double d = std::strtod(text.c_str(), &stop);
  if (!text.empty() && stop == text.c_str() + text.size()) return d;
  return text;
}

nlohmann::json yaml_to_json(const YAML::Node& node) {
  if (node.IsMap()) {
    nlohmann::json object = nlohmann::json::object();
    for (const auto& item : node) object[item.first.as<std::string>()] = yaml_to_json(item.second);
    return object;
  }
  if (node.IsSequence()) {
    nlohmann::json array = nlohmann::json::array();
    for (const auto& item : node) array.push_back(yaml_to_json(item));
    return array;
  }
  if (node.IsScalar()) return scalar_json(node);
  return nullptr;
}

using SiteFactors = std::map<std::string, std::map<std::string, at::Tensor>>;

// {site: form} and the layout line of each form present, in the order of stored_forms().
std::pair<nlohmann::json, std::string> forms_of(const SiteFactors& rotations) {
  nlohmann::json forms = nlohmann::json::object();
  std::set<std::string> present;
  for (const auto& [site, factors] : rotations) {
    const StoredForm& form = stored_form_of(factors);
    forms[site] = form.name;
    present.insert(form.name);
  }
  std::vector<std::string> lines;
  for (const StoredForm& form : stored_forms())
    if (present.count(form.name)) lines.push_back(form.name + ": " + form.layout);
  return {forms, fmt::format("{}", fmt::join(lines, "\n"))};
}

std::map<std::string, std::string> metadata_of(const RunRecord& run, const SiteFactors& rotations) {
  const auto [forms, layout] = forms_of(rotations);
  std::map<std::string, std::string> meta{{"run_id", run.run_id},
                                          {"label", run.label},
                                          {"method", run.method},
                                          {"seed", std::to_string(run.seed)},
                                          {"forms", forms.dump()},
                                          {"layout", layout},
                                          {"format", "sqlab rotations 1"}};
  nlohmann::json options = nlohmann::json::object();
  try {
    const YAML::Node config = YAML::Load(run.config_yaml);
    if (config["method"]) options = yaml_to_json(config["method"]);
  } catch (const YAML::Exception&) {
  }
  meta["options"] = options.dump();
  if (run.attributes.count("sqlab_version")) meta["sqlab_version"] = run.attributes.at("sqlab_version");
  return meta;
}

// --dense: every orthogonal rotation as its dense R (a transform keeps T and T_w), with the
// bytes each costs on stderr when it was stored in a smaller form.
SiteFactors densified(const SiteFactors& rotations) {
  SiteFactors dense;
  for (const auto& [site, factors] : rotations) {
    const std::string& form = stored_form_of(factors).name;
    if (form == "dense" || form == "transform") {
      dense[site] = factors;
      continue;
    }
    at::Tensor r = dense_from_factors(factors);
    fmt::print(stderr, "export --dense: {}.R is {} x {} float64, {:.3g} GB (stored as {})\n", site, r.size(0),
               r.size(1), static_cast<double>(r.numel()) * 8.0 / 1e9, form);
    dense[site] = {{"R", std::move(r)}};
  }
  return dense;
}

std::vector<std::pair<std::string, at::Tensor>> tensors_of(const SiteFactors& rotations) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [site, factors] : rotations)
    for (const auto& [factor, matrix] : factors)
      tensors.emplace_back(site + "." + factor, matrix.to(at::kDouble).contiguous());
  return tensors;
}

std::string describe(const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::vector<std::string> parts;
  for (const auto& [name, t] : tensors) parts.push_back(fmt::format("{} [{}]", name, fmt::join(t.sizes(), ", ")));
  return fmt::format("{}", fmt::join(parts, ", "));
}

void export_run(const RunRecord& run, const std::string& format, bool dense, const fs::path& out) {
  const SiteFactors rotations = dense ? densified(run.rotations) : run.rotations;
  const auto tensors = tensors_of(rotations);
  const auto meta = metadata_of(run, rotations);
  if (format == "safetensors") {
    const fs::path file = out / (run.run_id + ".safetensors");
    write_safetensors(file.string(), tensors, meta);
    fmt::print("{}: {} (float64)\n", file.string(), describe(tensors));
    return;
  }
  for (const auto& [name, t] : tensors) {
    const fs::path file = out / (run.run_id + "." + name + ".npy");
    write_npy(file.string(), t);
    fmt::print("{}: {} [{}] (float64)\n", file.string(), name, fmt::join(t.sizes(), ", "));
  }
  write_file_atomic((out / (run.run_id + ".json")).string(), nlohmann::json(meta).dump(2) + "\n");
}

std::string no_rotations_message(const std::string& run_id) {
  return fmt::format("run {} has no rotations (it ran with record.rotations: false); rerun the experiment with "
                     "`--set record.rotations=true` (add --out to keep the old results)", run_id);
}

}  // namespace

int command_export(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("results", po::value<std::string>(), "results directory (holds runs/*.h5)")(
      "run", po::value<std::vector<std::string>>()->composing(), "export only this run (repeatable)")(
      "format", po::value<std::string>()->default_value("safetensors"), "safetensors | npy")(
      "dense", po::bool_switch(), "write every orthogonal rotation as its dense SITE.R, whatever its size")(
      "out", po::value<std::string>(), "output directory (created if missing)");
  po::positional_options_description positional;
  positional.add("results", 1);
  po::variables_map vm;
  if (!parse_args("export", args, options, positional, kUsage, vm)) return 0;
  if (!vm.count("results")) throw config_error(fmt::format("export: missing RESULTS_DIR (usage: {})", kUsage));
  if (!vm.count("out")) throw config_error(fmt::format("export: missing --out DIR (usage: {})", kUsage));
  const std::string format = vm["format"].as<std::string>();
  if (format != "safetensors" && format != "npy")
    throw config_error(fmt::format("export: unknown --format '{}' (valid: safetensors, npy)", format));

  const fs::path results(vm["results"].as<std::string>());
  const fs::path runs_dir = results / "runs";
  std::error_code ec;
  if (!fs::is_directory(runs_dir, ec))
    throw config_error(fmt::format("export: '{}' is not a results directory (it has no runs/ folder)", results.string()));
  std::vector<std::string> available;
  for (const auto& entry : fs::directory_iterator(runs_dir))
    if (entry.path().extension() == ".h5") available.push_back(entry.path().stem().string());
  std::sort(available.begin(), available.end());

  const bool explicit_runs = vm.count("run") > 0;
  const std::vector<std::string> wanted = explicit_runs ? vm["run"].as<std::vector<std::string>>() : available;
  for (const std::string& id : wanted)
    if (std::find(available.begin(), available.end(), id) == available.end())
      throw config_error(fmt::format("export: no run '{}' in {} (runs: {})", id, runs_dir.string(),
                                     available.empty() ? "none" : fmt::format("{}", fmt::join(available, ", "))));
  if (wanted.empty()) throw config_error(fmt::format("export: {} holds no runs", runs_dir.string()));

  // Read everything first: a missing rotation is reported before any file is written.
  std::vector<RunRecord> runs;
  std::vector<std::string> skipped;
  for (const std::string& id : wanted) {
    const std::string path = (runs_dir / (id + ".h5")).string();
    if (!run_file_complete(path)) {
      if (explicit_runs) throw config_error(fmt::format("export: run {} is not complete ({})", id, path));
      skipped.push_back(fmt::format("{} (not complete)", id));
      continue;
    }
    RunRecord run = read_run_file(path);
    if (run.rotations.empty()) {
      if (explicit_runs) throw config_error("export: " + no_rotations_message(id));
      skipped.push_back(fmt::format("{} (no rotations recorded)", id));
      continue;
    }
    try {
      forms_of(run.rotations);
    } catch (const Error& e) {
      throw config_error(fmt::format("export: {}: {}", path, e.what()));
    }
    runs.push_back(std::move(run));
  }
  if (runs.empty())
    throw config_error(fmt::format("export: no run in {} has rotations: {}", runs_dir.string(),
                                   no_rotations_message(wanted.front())));

  const fs::path out(vm["out"].as<std::string>());
  fs::create_directories(out, ec);
  if (ec) throw config_error(fmt::format("export: cannot create '{}': {}", out.string(), ec.message()));
  for (const RunRecord& run : runs) export_run(run, format, vm["dense"].as<bool>(), out);
  for (const std::string& s : skipped) fmt::print(stderr, "export: skipped {}\n", s);
  return 0;
}

}  // namespace sqlab
