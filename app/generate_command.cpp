// Keys for --set (YAML values):
//   format: auto|hf|llama2c       the checkpoint format
//   temperature: 0                0 = greedy (argmax); > 0 samples from softmax(logits / T)
//   seed: 0                       the sampling seed, and the method's seed
//   method: none                  none = full precision; a registered method builds the
//                                 fake-quantized model (README "Model-level runs")
//   method_options: {}            that method's options, e.g. {components: [art]}
//   quant: {...}                  the quantizer and placement (w_bits, a_bits, placement, head_bits, ...)
//   calib: {text, tokens: 2048, seq_len: 256}   calibration for the method (text required with a method)
// Generation stops after --steps tokens, at the end-of-sequence token, or at BOS (llama2.c's
// stories delimit with BOS); the context is the model's max_seq_len (older tokens drop out).
#include "app/generate_command.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>

#include "app/cli_args.h"
#include "core/config.h"
#include "core/error.h"
#include "core/experiment.h"
#include "core/random.h"
#include "core/torch_compat.h"
#include "model/capture.h"
#include "model/checkpoint.h"
#include "model/quantized_model.h"
#include "model/gguf_checkpoint.h"
#include "model/tokenizer.h"

namespace sqlab {
namespace po = boost::program_options;
namespace {

struct SilentLog : FitLog {
  void trace(const std::string&, int64_t, double) override {}
  void metric(const std::string&, double) override {}
  void warn(const std::string& message) override { fmt::print(stderr, "warning: {}\n", message); }
};

YAML::Node settings_from(const std::vector<std::string>& sets) {
  YAML::Node root(YAML::NodeType::Map);
  for (const std::string& set : sets) {
    const size_t eq = set.find('=');
    if (eq == std::string::npos || eq == 0)
      throw config_error(fmt::format("generate: --set '{}': expected KEY=VALUE", set));
    YAML::Node value;
    try {
      value = YAML::Load(set.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      throw config_error(fmt::format("generate: --set '{}': {}", set, e.what()));
    }
    set_dotted(root, set.substr(0, eq), value, "--set");
  }
  return root;
}

QuantizedModel quantize(const LlamaWeights& fp, const Tokenizer* tok, ConfigReader& settings, const std::string& name,
                        const Registries& registries, uint64_t seed) {
  if (!registries.methods.contains(name)) settings.fail("method", registries.methods.unknown_message(name));
  YAML::Node options = settings.raw("method_options");
  ConfigReader method_reader(options ? options : YAML::Node(YAML::NodeType::Map), "--set", "method_options");
  const std::unique_ptr<RotationMethod> method = registries.methods.create(name, method_reader);
  const ModelQuantConfig quant = parse_model_quant_config(settings.raw("quant"), "--set", nullptr);
  ConfigReader calib = settings.child("calib");
  const std::string text = calib.require<std::string>("text");
  const int64_t tokens = calib.get<int64_t>("tokens", 2048);
  const int64_t seq_len = calib.get<int64_t>("seq_len", 256);
  calib.finish();
  const std::vector<int64_t> ids = load_eval_tokens(text, tok, true, tokens);
  SilentLog log;
  BuildInputs in;
  in.method = method.get();
  in.seed = seed;
  in.calib_windows = token_windows(at::tensor(ids, at::kLong), std::min<int64_t>(seq_len, ids.size()), "calib");
  in.log_for = [&](const std::string&) -> FitLog& { return log; };
  return build_quantized_model(fp, quant, in);
}

}  // namespace

int command_generate(const std::vector<std::string>& args, const Registries& registries) {
  po::options_description options("options");
  options.add_options()("model", po::value<std::string>(), "checkpoint (llama2.c .bin or Hugging Face directory)")(
      "tokenizer", po::value<std::string>(), "tokenizer (llama2.c tokenizer.bin, sentencepiece .model; default for a GGUF model: its own)")(
      "prompt", po::value<std::string>()->default_value(""), "the text to continue (may be empty)")(
      "steps", po::value<int64_t>()->default_value(256), "tokens to generate at most")(
      "set", po::value<std::vector<std::string>>()->composing(),
      "KEY=VALUE: format, temperature, seed, method, method_options, quant.*, calib.*");
  po::positional_options_description positional;
  po::variables_map vm;
  if (!parse_args("generate", args, options, positional,
                  "sqlab generate --model PATH [--tokenizer PATH] --prompt TEXT [--steps N] [--set KEY=VALUE]...", vm))
    return 0;
  if (!vm.count("model")) throw config_error("generate: --model is required");
  const std::string model_path = vm["model"].as<std::string>();
  const std::string tokenizer_path = vm.count("tokenizer") ? vm["tokenizer"].as<std::string>()
                                     : is_gguf_file(model_path) ? model_path  // a GGUF carries its tokenizer
                                                                : "";
  if (tokenizer_path.empty()) throw config_error("generate: --tokenizer is required (text in, text out)");
  const int64_t steps = vm["steps"].as<int64_t>();
  if (steps < 0) throw config_error("generate: --steps must be >= 0");

  YAML::Node root = settings_from(vm.count("set") ? vm["set"].as<std::vector<std::string>>() : std::vector<std::string>{});
  ConfigReader settings(root, "--set", "");
  const std::string format = settings.choice("format", "auto", {"auto", "hf", "llama2c", "gguf"});
  const double temperature = settings.get<double>("temperature", 0.0);
  if (!(temperature >= 0)) settings.fail("temperature", "must be >= 0");
  const uint64_t seed = settings.get<uint64_t>("seed", 0);
  const std::string method = settings.get<std::string>("method", "none");

  const LlamaWeights fp = load_checkpoint(model_path, format);
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(tokenizer_path);
  QuantizedModel quantized;
  const bool full_precision = method == "none";
  if (!full_precision) quantized = quantize(fp, tok.get(), settings, method, registries, seed);
  settings.raw("method_options");
  settings.raw("quant");
  settings.raw("calib");
  settings.finish();
  const LlamaWeights& weights = full_precision ? fp : quantized.weights;
  ForwardHooks* hooks = full_precision ? nullptr : quantized.hooks.get();

  at::NoGradGuard no_grad;
  std::vector<int64_t> ids = tok->encode(vm["prompt"].as<std::string>(), true);
  const size_t prompt_size = ids.size();
  at::Generator gen = make_generator(seed, "generate");
  std::string printed = tok->decode(ids);
  fmt::print("{}", printed);
  std::fflush(stdout);
  for (int64_t step = 0; step < steps; ++step) {
    const int64_t ctx = std::min<int64_t>(ids.size(), fp.config.max_seq_len);
    const at::Tensor input = at::tensor(std::vector<int64_t>(ids.end() - ctx, ids.end()), at::kLong).unsqueeze(0);
    const at::Tensor logits = llama_forward(weights, input, hooks)[0][ctx - 1].to(at::kDouble);
    const int64_t next = temperature == 0
                             ? logits.argmax().item<int64_t>()
                             : at::multinomial(at::softmax(logits / temperature, -1), 1, false, gen).item<int64_t>();
    if (next == fp.config.eos_id || next == tok->eos_id() || next == tok->bos_id()) break;
    ids.push_back(next);
    const std::string text = tok->decode(ids);
    // Print what this token added (decode may merge bytes across tokens).
    if (text.size() >= printed.size() && text.compare(0, printed.size(), printed) == 0) {
      fmt::print("{}", text.substr(printed.size()));
      printed = text;
      std::fflush(stdout);
    }
  }
  fmt::print("\n");
  std::fflush(stdout);
  fmt::print(stderr, "[{} tokens: {} prompt, {} generated; {}]\n", ids.size(), prompt_size, ids.size() - prompt_size,
             full_precision ? "full precision" : "fake-quantized, method " + method);
  return 0;
}

}  // namespace sqlab
