// Zero-shot tasks (tasks/, model/loglikelihood.h): each spec in configs/tasks against
// contexts and continuations written out by hand for two documents of the real split
// (skipped, with a message, where ../shared/data/tasks is absent), the metrics against a
// direct computation, the log-likelihood against full logits, LAMBADA's greedy match, the
// left truncation, and bad task files.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "model/loglikelihood.h"
#include "model/tokenizer.h"
#include "tasks/readers.h"
#include "tasks/task.h"
#include "tasks/template.h"
#include "tests/test_util.h"

namespace sqlab {
namespace {

namespace fs = std::filesystem;
using testing::expect_config_error;
using testing::TempDir;
using testing::write_text;

const std::string kTasksDir = std::string(SQLAB_SHARED_DATA) + "/tasks";

struct Expected {
  std::string task;
  size_t document;
  size_t requests;  // of this document
  int64_t gold;
  std::string context, continuation;  // of the gold request
};

// Written from lm-eval's task definitions (configs/tasks/*.yaml cite them) applied by hand to
// the first two documents of each file.
const std::vector<Expected> kExpected = {
    {"piqa", 0, 2, 0, "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
     " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also "
     "need to supply it with a water bottle and a food dish."},
    {"piqa", 1, 2, 1, "Question: dresser\nAnswer:", " finish, woodgrain with  bobby pin "},
    {"arc_easy", 0, 4, 0,
     "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:",
     " Sunlight is the source of energy for nearly all ecosystems."},
    {"arc_easy", 1, 4, 1,
     "Question: Which piece of safety equipment is used to keep mold spores from entering the respiratory "
     "system?\nAnswer:",
     " breathing mask"},
    {"arc_challenge", 0, 4, 2,
     "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most "
     "likely effect of this increase in rotation?\nAnswer:",
     " Planetary days will become shorter."},
    {"winogrande", 0, 2, 1, "Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."},
    {"winogrande", 1, 2, 0, "Sarah was a much better surgeon than Maria so Sarah", " always got the harder cases."},
    {"lambada_openai", 1, 1, 0, "", " Shane"},
    {"openbookqa", 0, 4, 1,
     "A person wants to start saving money so that they can afford a nice vacation at the end of the year. After "
     "looking over their budget and expenses, they decide the best way to save money is to",
     " quit eating lunch out"},
    {"openbookqa", 1, 4, 0, "There is most likely going to be fog around:", " a marsh"},
    {"hellaswag", 0, 4, 3, "Roof shingle removal: A man is sitting on a roof. he", " starts pulling up roofing on a roof."},
    {"hellaswag", 1, 4, 3, "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. the lady",
     " stands and lifts the weight over her head."},
    {"mmlu", 0, 4, 1,
     "The following are multiple choice questions (with answers) about abstract algebra.\n\nFind the degree for the "
     "given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:",
     " B"},
};

TEST(TaskSpecs, RealDocumentsGiveLmEvalsPrompts) {
  if (!fs::exists(kTasksDir)) GTEST_SKIP() << "no " << kTasksDir << " (the shared task data)";
  for (const Expected& e : kExpected) {
    SCOPED_TRACE(fmt::format("{} document {}", e.task, e.document));
    const TaskSpec spec = load_task_spec(task_spec_path(e.task));
    const auto docs = load_task_documents(spec, kTasksDir, 2);
    const TaskRequests r = build_task_requests(spec, docs, kTasksDir);
    ASSERT_EQ(r.count[e.document], static_cast<int64_t>(e.requests));
    EXPECT_EQ(r.gold[e.document], e.gold);
    const LoglikelihoodRequest& req = r.requests[static_cast<size_t>(r.first[e.document] + e.gold)];
    if (e.task == "lambada_openai") {  // the context is the long passage: check its end
      EXPECT_TRUE(req.context.size() > 100 && req.context.compare(req.context.size() - 31, 31,
                                                                   "\"I can make it there on my own,") == 0)
          << req.context;
    } else {
      EXPECT_EQ(req.context, e.context);
    }
    EXPECT_EQ(req.continuation, e.continuation);
  }
  // BoolQ: passage, question with "?", the no/yes answers; the split's counts.
  const TaskSpec boolq = load_task_spec(task_spec_path("boolq"));
  const TaskRequests b = build_task_requests(boolq, load_task_documents(boolq, kTasksDir, 2), kTasksDir);
  EXPECT_EQ(b.gold, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(b.requests[0].continuation, " no");
  EXPECT_EQ(b.requests[1].continuation, " yes");
  const std::string& ctx = b.requests[0].context;
  EXPECT_EQ(ctx.substr(0, 44), "Ethanol fuel -- All biomass goes through at ");
  EXPECT_EQ(ctx.substr(ctx.size() - 68),
            "\nQuestion: does ethanol take more energy make that produces?\nAnswer:");
  // MMLU 5-shot: the description, five dev examples with their answers, then the question.
  const TaskSpec mmlu = load_task_spec(task_spec_path("mmlu"));
  const TaskRequests five = build_task_requests(mmlu, load_task_documents(mmlu, kTasksDir, 1), kTasksDir, 5);
  const std::string& shots = five.requests[0].context;
  EXPECT_EQ(shots.find("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
                       "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\n"
                       "Answer: B\n\n"),
            0u);
  size_t answers = 0;
  for (size_t at = shots.find("\nAnswer: "); at != std::string::npos; at = shots.find("\nAnswer: ", at + 1)) ++answers;
  EXPECT_EQ(answers, 5u);
}

// lm-evaluation-harness itself (tools/zero_shot_reference.py: its task code fed the local
// files, its Hugging Face backend on SmolLM2 loaded by transformers) on the first 4 documents
// of each task: sqlab's prompts are byte-for-byte its prompts and its log-likelihoods agree.
TEST(TaskSpecs, SmolLM2AgreesWithLmEvaluationHarness) {
  if (!fs::exists(kTasksDir)) GTEST_SKIP() << "no " << kTasksDir << " (the shared task data)";
  if (!fs::exists(testing::smollm2_gguf_path())) FAIL() << testing::smollm2_missing_message();
  const nlohmann::json reference = nlohmann::json::parse(testing::read_text(
      (fs::path(SQLAB_SOURCE_DIR) / "tests" / "fixtures" / "tasks" / "smollm2_lm_eval.json").string()));
  const LlamaWeights model = load_checkpoint(testing::smollm2_gguf_path());
  const auto tokenizer = load_tokenizer(testing::smollm2_gguf_path());
  double worst = 0.0;
  for (const auto& [label, expected] : reference["tasks"].items()) {
    SCOPED_TRACE(label);
    const bool mmlu = label.rfind("mmlu", 0) == 0;
    const TaskSpec spec = load_task_spec(task_spec_path(mmlu ? "mmlu" : label));
    const auto docs = load_task_documents(spec, kTasksDir, reference["docs_per_task"].get<int64_t>());
    const TaskRequests r = build_task_requests(spec, docs, kTasksDir, label.find("5shot") != std::string::npos ? 5 : 0);
    ASSERT_EQ(r.requests.size(), expected.size());
    for (const auto& e : expected) {
      const size_t i = static_cast<size_t>(r.first[e["doc"].get<size_t>()] + e["choice"].get<int64_t>());
      EXPECT_EQ(r.requests[i].context, e["context"].get<std::string>());
      EXPECT_EQ(r.requests[i].continuation, e["continuation"].get<std::string>());
    }
    // The log-likelihoods of the first 2 documents (the prompts of all 4 are checked above).
    // 5-shot: all 4, one question per pass, so that the first pass computes the five examples
    // and the other three borrow them (LoglikelihoodOptions::reuse_prefixes).
    const bool five_shot = label.find("5shot") != std::string::npos;
    LoglikelihoodOptions options;
    options.batch = five_shot ? 1 : 8;
    const size_t scored = static_cast<size_t>(five_shot ? r.requests.size() : r.first[2]);
    if (five_shot) {
      const std::vector<LoglikelihoodRequest> all(r.requests.begin(), r.requests.end());
      int64_t borrowed = 0;
      for (const TokenBatch& b : loglikelihood_batches(*tokenizer, all, options, model.config.max_seq_len).batches)
        borrowed += b.borrowed_prefixes;
      EXPECT_EQ(borrowed, 3);
    }
    const std::vector<LoglikelihoodRequest> first(r.requests.begin(), r.requests.begin() + static_cast<int64_t>(scored));
    const auto results = score_loglikelihoods(model, nullptr, *tokenizer, first, options);
    for (const auto& e : expected) {
      const size_t i = static_cast<size_t>(r.first[e["doc"].get<size_t>()] + e["choice"].get<int64_t>());
      if (i >= scored) continue;
      const double want = e["loglikelihood"].get<double>();
      EXPECT_NEAR(results[i].loglikelihood, want, 1e-3 * std::max(1.0, std::fabs(want))) << e["context"];
      EXPECT_EQ(results[i].greedy, e["greedy"].get<bool>());
      worst = std::max(worst, std::fabs(results[i].loglikelihood - want));
    }
  }
  std::printf("[ tasks ] SmolLM2 log-likelihoods vs lm-evaluation-harness %s: max |difference| %.2e\n",
              reference["lm_eval"].get<std::string>().c_str(), worst);
}

TEST(TaskSpecs, WholeSplitsHaveTheirOfficialCounts) {
  if (!fs::exists(kTasksDir)) GTEST_SKIP() << "no " << kTasksDir << " (the shared task data)";
  const std::vector<std::pair<std::string, size_t>> counts = {
      {"piqa", 1838},       {"arc_easy", 2376},   {"arc_challenge", 1172}, {"boolq", 3270}, {"winogrande", 1267},
      {"lambada_openai", 5153}, {"openbookqa", 500}, {"hellaswag", 10042},  {"mmlu", 14042}};
  for (const auto& [task, n] : counts) {
    const TaskSpec spec = load_task_spec(task_spec_path(task));
    const auto docs = load_task_documents(spec, kTasksDir);
    EXPECT_EQ(docs.size(), n) << task;
    EXPECT_NO_THROW(build_task_requests(spec, docs, kTasksDir)) << task;  // every document reads
  }
}

// lm-eval's four MMLU groups (configs/tasks/mmlu_{stem,humanities,social_sciences,other}.yaml,
// each mmlu.yaml with its subjects' files): they partition MMLU's questions, and a question
// reads the same prompt, 0- or 5-shot, in its group as in MMLU.
TEST(TaskSpecs, MmluGroupsPartitionMmlu) {
  if (!fs::exists(kTasksDir)) GTEST_SKIP() << "no " << kTasksDir << " (the shared task data)";
  const TaskSpec mmlu = load_task_spec(task_spec_path("mmlu"));
  const auto all = load_task_documents(mmlu, kTasksDir);
  const TaskRequests all_five = build_task_requests(mmlu, all, kTasksDir, 5);
  std::map<std::string, size_t> first_of;  // the 5-shot prompt of a question's first choice -> its index
  for (size_t d = 0; d < all.size(); ++d)
    first_of.emplace(all_five.requests[static_cast<size_t>(all_five.first[d])].context, d);
  struct Group {
    std::string name;
    size_t subjects, questions;
  };
  const std::vector<Group> groups = {{"mmlu_stem", 19, 3153},
                                     {"mmlu_humanities", 13, 4705},
                                     {"mmlu_social_sciences", 12, 3077},
                                     {"mmlu_other", 13, 3107}};
  std::set<std::string> subjects;
  size_t questions = 0;
  for (const auto& [name, count, n] : groups) {
    SCOPED_TRACE(name);
    const TaskSpec spec = load_task_spec(task_spec_path(name));
    EXPECT_EQ(spec.name, name);
    EXPECT_EQ(spec.files.size(), count);
    EXPECT_EQ(spec.context, mmlu.context);
    EXPECT_EQ(spec.fewshot_files, mmlu.fewshot_files);
    EXPECT_NE(spec.sha256, mmlu.sha256);
    for (const std::string& f : spec.files) EXPECT_TRUE(subjects.insert(f).second) << f << " in two groups";
    const auto docs = load_task_documents(spec, kTasksDir);
    EXPECT_EQ(docs.size(), n);
    const TaskRequests five = build_task_requests(spec, docs, kTasksDir, 5);
    for (size_t d = 0; d < docs.size(); ++d) {
      const auto it = first_of.find(five.requests[static_cast<size_t>(five.first[d])].context);
      ASSERT_NE(it, first_of.end()) << "document " << d << " is not an MMLU question";
      EXPECT_EQ(docs[d], all[it->second]);
      EXPECT_EQ(five.gold[d], all_five.gold[it->second]);
    }
    std::printf("[ tasks ] %s: %zu subjects, %zu questions\n", name.c_str(), count, docs.size());
    questions += docs.size();
  }
  EXPECT_EQ(subjects.size(), 57u);
  EXPECT_EQ(questions, all.size());
}

TEST(TaskTemplates, FiltersFollowPython) {
  const nlohmann::json doc = {{"s", "  Hello World  "}, {"t", "The cat sat down"}, {"b", "a _ b"},
                              {"h", " A [title] B [step] C  D "}, {"n", 3}, {"list", {{{"x", "y"}}}}};
  EXPECT_EQ(render_template("{s|strip}|{s|lstrip}|", doc, "t"), "Hello World|Hello World  |");
  EXPECT_EQ(render_template("{t|capitalize}", nlohmann::json{{"t", "hELLO World"}}, "t"), "Hello world");
  EXPECT_EQ(render_template("{t|but_last_word}/{t|last_word}", doc, "t"), "The cat sat/down");
  EXPECT_EQ(render_template("[{b|before:_}][{b|after:_|strip}]", doc, "t"), "[a ][b]");
  EXPECT_EQ(render_template("{h|hellaswag}", doc, "t"), "A. B C D");
  EXPECT_EQ(render_template("{{{n}}} {list.0.x}", doc, "t"), "{3} y");
  EXPECT_EQ(code_points("caf\xC3\xA9"), 4);  // Python len(), not bytes
  EXPECT_THROW(render_template("{missing}", doc, "t"), Error);
  expect_config_error([] { check_template("{x|upper}", "spec.yaml: context"); }, {"spec.yaml: context", "upper"});
  expect_config_error([] { check_template("{x", "spec.yaml: context"); }, {"unclosed"});
  expect_config_error([] { check_template("{x|before}", "spec.yaml: context"); }, {"needs an argument"});
}

TEST(TaskCsv, QuotedFieldsAndNewlines) {
  const auto rows = parse_csv("a,b\n\"x, \"\"y\"\"\",\"1\n2\"\n", "t.csv");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1][0], "x, \"y\"");
  EXPECT_EQ(rows[1][1], "1\n2");
}

// A tiny task of our own: three documents, known log-likelihoods.
TaskSpec tiny_spec(TaskOutput output) {
  TaskSpec s;
  s.name = "tiny";
  s.output = output;
  s.context = "{q}";
  s.choices = {"{a}", "{bb}", "{ccc}"};
  s.gold.value = "{g}";
  s.metrics = {"acc", "acc_norm"};
  return s;
}

TEST(TaskMetrics, AccAccNormAndStderrAsLmEval) {
  const TaskSpec spec = tiny_spec(TaskOutput::multiple_choice);
  std::vector<nlohmann::json> docs;
  for (int g : {0, 1, 2}) docs.push_back({{"q", "Q"}, {"a", "x"}, {"bb", "yy"}, {"ccc", "zzz"}, {"g", g}});
  const TaskRequests r = build_task_requests(spec, docs, "");
  ASSERT_EQ(r.requests.size(), 9u);
  EXPECT_EQ(r.requests[1].continuation, " yy");
  // Document 0: ll (-1, -1.5, -2.4): acc picks 0 (right), acc_norm /(1, 2, 3) = (-1, -.75, -.8) picks 1 (wrong).
  // Document 1: ll (-2, -2, -9): a tie, the first wins (0, wrong); norm (-2, -1, -3) picks 1 (right).
  // Document 2: ll (-5, -4, -3): 2 (right); norm (-5, -2, -1) picks 2 (right).
  const std::vector<double> ll = {-1, -1.5, -2.4, -2, -2, -9, -5, -4, -3};
  std::vector<LoglikelihoodResult> results;
  for (double v : ll) results.push_back({v, false});
  const TaskScores s = score_task(spec, r, results);
  EXPECT_EQ(s.examples, 3);
  EXPECT_NEAR(s.metrics.at("acc"), 2.0 / 3.0, 1e-15);
  EXPECT_NEAR(s.metrics.at("acc_norm"), 2.0 / 3.0, 1e-15);
  // values (1, 0, 1): sample std sqrt(1/3), over sqrt(3): 1/3.
  EXPECT_NEAR(s.metrics.at("acc_stderr"), 1.0 / 3.0, 1e-15);
  // LAMBADA-style: acc = greedy, ppl = exp(-mean ll).
  TaskSpec lambada;
  lambada.name = "lam";
  lambada.output = TaskOutput::loglikelihood;
  lambada.context = "{t|but_last_word}";
  lambada.target = " {t|last_word}";
  lambada.metrics = {"ppl", "acc"};
  const TaskRequests lr = build_task_requests(lambada, {{{"t", "a b c"}}, {{"t", "d e"}}}, "");
  EXPECT_EQ(lr.requests[0].context, "a b");
  EXPECT_EQ(lr.requests[0].continuation, " c");
  const TaskScores ls = score_task(lambada, lr, {{-1.0, true}, {-3.0, false}});
  EXPECT_DOUBLE_EQ(ls.metrics.at("acc"), 0.5);
  EXPECT_NEAR(ls.metrics.at("ppl"), std::exp(2.0), 1e-12);
}

// Bytes as tokens: id = byte + 2 (0 BOS, 1 EOS), so every string's tokens are known.
class ByteTokenizer : public Tokenizer {
 public:
  std::vector<int64_t> encode(const std::string& text, bool bos) const override {
    std::vector<int64_t> ids;
    if (bos) ids.push_back(0);
    for (unsigned char c : text) ids.push_back(c + 2);
    return ids;
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string s;
    for (int64_t id : ids)
      if (id >= 2) s += static_cast<char>(id - 2);
    return s;
  }
  std::string piece(int64_t id) const override { return decode({id}); }
  int64_t vocab_size() const override { return 258; }
  int64_t bos_id() const override { return 0; }
  int64_t eos_id() const override { return 1; }
  const std::string& origin() const override { return origin_; }

 private:
  std::string origin_ = "bytes";
};

LlamaWeights tiny_model(int64_t context = 64) {
  LlamaConfig c;
  c.dim = 32;
  c.hidden_dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 258;
  c.max_seq_len = context;
  return random_llama(c, 7);
}

// Direct: log-softmax of the full logits of (context + continuation) at the positions
// before each continuation token.
double direct_loglikelihood(const LlamaWeights& w, const std::vector<int64_t>& input, size_t continuation_tokens,
                            const std::vector<int64_t>& targets) {
  const at::Tensor logits = llama_forward(w, at::tensor(input, at::kLong).view({1, -1}))[0].to(at::kDouble);
  const at::Tensor logp = at::log_softmax(logits, -1);
  double sum = 0.0;
  for (size_t j = 0; j < continuation_tokens; ++j)
    sum += logp[static_cast<int64_t>(input.size() - continuation_tokens + j)][targets[j]].item<double>();
  return sum;
}

TEST(Loglikelihood, SumOverTheContinuationTokensOfTheFullLogits) {
  const LlamaWeights w = tiny_model();
  const ByteTokenizer tok;
  // Trailing whitespace of the context moves to the continuation (lm-eval's _encode_pair).
  const auto [ctx, cont] = encode_request(tok, {"Question: x\nAnswer: ", "yes"}, false);
  EXPECT_EQ(tok.decode(ctx), "Question: x\nAnswer:");
  EXPECT_EQ(tok.decode(cont), " yes");
  // The last three read the same input (one-token continuations) and share a forward row.
  const std::vector<LoglikelihoodRequest> requests = {
      {"Question: x\nAnswer:", " yes"}, {"ab", " no"}, {"a longer context here", " c"}, {"", "hi"},
      {"xy", "A"}, {"xy", "B"}, {"xy", "C"}};
  LoglikelihoodOptions options;
  options.batch = 3;  // rows of different lengths share a padded batch
  const auto results = score_loglikelihoods(w, nullptr, tok, requests, options);
  for (size_t i = 0; i < requests.size(); ++i) {
    auto [c, k] = encode_request(tok, requests[i], false);
    std::vector<int64_t> all = c;
    all.insert(all.end(), k.begin(), k.end());
    all.pop_back();
    EXPECT_NEAR(results[i].loglikelihood, direct_loglikelihood(w, all, k.size(), k), 1e-4) << i;
  }
  // An empty context reads the BOS token first.
  EXPECT_EQ(encode_request(tok, {"", "hi"}, false).first, std::vector<int64_t>{0});
}

// Requests that begin alike (choices after one context, questions after the same few-shot
// examples, equal inputs) are read after one shared copy of their beginning: each result
// still equals its own row's direct forward, and the batches hold fewer tokens than the rows.
TEST(Loglikelihood, SharedPrefixesGiveEachRowsOwnForward) {
  const LlamaWeights w = tiny_model(128);
  const ByteTokenizer tok;
  const std::string shots = "Q: 1+1? A: 2\nQ: 2+2? A: 4\nQ: 3+3? A: 6\n";
  std::vector<LoglikelihoodRequest> requests;
  for (const char* q : {"5+5?", "7+1?", "a much longer question, 9+9?"})
    for (const char* a : {" 10", " 8", " 18", " x"}) requests.push_back({shots + "Q: " + q + " A:", a});
  for (const char* e : {" the dog ran.", " the dog sat down.", " a cat.", " nothing at all here"})
    requests.push_back({"Walking a dog: a man holds a leash and", e});
  requests.push_back({"An unrelated context", " alone"});
  requests.push_back({"", "empty context"});
  requests.push_back({"xy", "A"});
  requests.push_back({"xy", "B"});
  LoglikelihoodOptions options;
  options.batch = 5;  // groups cut into pieces, pieces of different prefixes in one batch
  const LoglikelihoodBatches batches = loglikelihood_batches(tok, requests, options, w.config.max_seq_len);
  int64_t packed = 0, prefixed = 0, alone = 0;
  for (const TokenBatch& b : batches.batches) {
    packed += b.token_count();
    prefixed += b.has_prefixes() ? 1 : 0;
  }
  const auto results = loglikelihood_results(batches, score_batches(w, batches.batches));
  for (size_t i = 0; i < requests.size(); ++i) {
    auto [c, k] = encode_request(tok, requests[i], false);
    std::vector<int64_t> all = c;
    all.insert(all.end(), k.begin(), k.end());
    all.pop_back();
    alone += static_cast<int64_t>(all.size());
    EXPECT_NEAR(results[i].loglikelihood, direct_loglikelihood(w, all, k.size(), k), 1e-4) << i;
  }
  EXPECT_GT(prefixed, 0);
  EXPECT_LT(packed, alone * 3 / 5) << "padded tokens with shared prefixes vs the rows' own";
  // The same through a HiddenStream, layer by layer, and cut from the left.
  HiddenStream stream(batches.batches);
  stream.embed(w.config, w.embedding, w.origin);
  for (int64_t l = 0; l < w.config.n_layers; ++l) stream.advance(w.config, w.layers[l], l);
  const auto streamed = loglikelihood_results(batches, stream.score(w.config, w.final_norm, w.output));
  for (size_t i = 0; i < requests.size(); ++i)
    EXPECT_NEAR(streamed[i].loglikelihood, results[i].loglikelihood, 1e-9) << i;
  options.max_length = 24;
  const auto cut = score_loglikelihoods(w, nullptr, tok, requests, options);
  for (size_t i = 0; i < requests.size(); ++i) {
    auto [c, k] = encode_request(tok, requests[i], false);
    std::vector<int64_t> all = c;
    all.insert(all.end(), k.begin(), k.end());
    const std::vector<int64_t> input(all.end() - std::min<int64_t>(25, static_cast<int64_t>(all.size())), all.end() - 1);
    const size_t scored = std::min(k.size(), input.size());
    EXPECT_NEAR(cut[i].loglikelihood,
                direct_loglikelihood(w, input, scored, std::vector<int64_t>(k.end() - static_cast<int64_t>(scored), k.end())),
                1e-4) << i;
  }
}

// MMLU 5-shot's shape: subjects whose prompts share a header, then each subject's own
// few-shot examples, then the question; four one-token answers read one input (MMLU's " A"
// is one token of SmolLM2's, "A" one of the byte tokenizer's). Each
// subject's questions read its examples once (its first question does not join the
// previous subject's group on the header alone), and the scores are each row's own.
TEST(Loglikelihood, FewShotSubjectsShareTheirExamples) {
  const LlamaWeights w = tiny_model(128);
  const ByteTokenizer tok;
  const std::string header = "Questions about ";
  std::vector<LoglikelihoodRequest> requests;
  std::vector<int64_t> shots_length;
  // The first subject's questions share a long stem but for one ("z?", last in order), which
  // is left a group of its own: the next subject's first question must not join it on the
  // header alone.
  const std::vector<std::pair<std::string, std::vector<std::string>>> subjects = {
      {"arithmetic.\n1+1? 2\n2+2? 4\n",
       {"Compute the following sum with care: 3+3?", "Compute the following sum with care: 4+1?",
        "Compute the following sum with care: 9+0?", "Compute the following sum with care: 2+5?", "z?"}},
      {"letters.\nAfter a? b\nAfter b? c\n", {"Before c?", "After x?", "Before z?"}}};
  for (const auto& [subject, questions] : subjects) {
    shots_length.push_back(static_cast<int64_t>((header + subject).size()));
    for (const std::string& q : questions)
      for (const char* a : {"A", "B", "C", "D"}) requests.push_back({header + subject + q, a});  // one byte each
  }
  LoglikelihoodOptions options;
  options.batch = 16;
  const LoglikelihoodBatches batches = loglikelihood_batches(tok, requests, options, w.config.max_seq_len);
  for (const TokenBatch& b : batches.batches) {
    ASSERT_TRUE(b.has_prefixes());
    EXPECT_EQ(b.tokens.size(0), static_cast<int64_t>(b.select.size()) / 4) << "one row per question";
    for (int64_t n : b.prefix_length) EXPECT_GE(n, std::min(shots_length[0], shots_length[1])) << "a header-only prefix";
  }
  const auto results = loglikelihood_results(batches, score_batches(w, batches.batches));
  for (size_t i = 0; i < requests.size(); ++i) {
    auto [c, k] = encode_request(tok, requests[i], false);
    EXPECT_NEAR(results[i].loglikelihood, direct_loglikelihood(w, c, 1, k), 1e-4) << i;
  }

  // Two questions per pass: a subject's questions span passes. Its examples are computed by
  // its first pass and borrowed by the others (kept keys and values), so each subject's are
  // read once; without reuse each pass reads its own copy. The scores are the same, whole
  // model or layer by layer.
  options.batch = 2;
  const LoglikelihoodBatches reused = loglikelihood_batches(tok, requests, options, w.config.max_seq_len);
  options.reuse_prefixes = false;
  const LoglikelihoodBatches copied = loglikelihood_batches(tok, requests, options, w.config.max_seq_len);
  ASSERT_EQ(reused.batches.size(), copied.batches.size());
  int64_t computed = 0, borrowed = 0;
  for (const TokenBatch& b : reused.batches) {
    for (size_t p = 0; p < b.prefix_length.size(); ++p)
      if (b.prefix_length[p] >= std::min(shots_length[0], shots_length[1])) {
        const bool owned = static_cast<int64_t>(p) < b.prefix_tokens.size(0);
        (owned ? computed : borrowed) += 1;
      }
  }
  // Three groups: the first subject's four questions (two passes: computed, borrowed once),
  // its "z?" alone (one pass), the second subject's three (two passes).
  EXPECT_EQ(computed, 3) << "each group's prefix computed once";
  EXPECT_EQ(borrowed, 2);
  for (const TokenBatch& b : copied.batches) EXPECT_EQ(b.borrowed_prefixes, 0);
  EXPECT_LT(reused.tokens(), copied.tokens() - borrowed * std::min(shots_length[0], shots_length[1]) + 1);
  const auto with_reuse = loglikelihood_results(reused, score_batches(w, reused.batches));
  const auto with_copies = loglikelihood_results(copied, score_batches(w, copied.batches));
  HiddenStream stream(reused.batches);
  stream.embed(w.config, w.embedding, w.origin);
  for (int64_t l = 0; l < w.config.n_layers; ++l) stream.advance(w.config, w.layers[l], l);
  const auto streamed = loglikelihood_results(reused, stream.score(w.config, w.final_norm, w.output));
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_NEAR(with_reuse[i].loglikelihood, results[i].loglikelihood, 1e-5) << i;
    EXPECT_NEAR(with_copies[i].loglikelihood, results[i].loglikelihood, 1e-5) << i;
    EXPECT_NEAR(streamed[i].loglikelihood, with_reuse[i].loglikelihood, 1e-9) << i;
  }
}

TEST(Loglikelihood, ContextsAreCutFromTheLeft) {
  const LlamaWeights w = tiny_model();
  const ByteTokenizer tok;
  LoglikelihoodOptions options;
  options.max_length = 8;
  const std::string context = "0123456789abcdefghij";  // 20 tokens, + 3 of continuation
  const auto result = score_loglikelihoods(w, nullptr, tok, {{context, "xyz"}}, options)[0];
  // (context + continuation)[-(8 + 1):][:-1]: the last 9 tokens minus the last.
  const std::vector<int64_t> all = tok.encode(context + "xyz", false);
  const std::vector<int64_t> input(all.end() - 9, all.end() - 1);
  EXPECT_NEAR(result.loglikelihood, direct_loglikelihood(w, input, 3, tok.encode("xyz", false)), 1e-4);
}

TEST(Loglikelihood, GreedyMatchOnAModelThatAlwaysSaysOneToken) {
  // Every layer writes nothing, the embedding puts a large value in channel 0, and the head
  // reads channel 0 for token 'w' only: 'w' is the argmax after any context.
  LlamaWeights w = tiny_model();
  for (LlamaLayer& l : w.layers) {
    l.wo.zero_();
    l.w_down.zero_();
  }
  w.embedding = at::randn_like(w.embedding) * 0.01;
  w.embedding.select(1, 0).fill_(5.0);
  w.final_norm.fill_(1.0);
  w.output = at::zeros({258, 32});
  const int64_t word = 'w' + 2;
  w.output[word][0] = 10.0;
  w.config.tied_embeddings = false;
  const ByteTokenizer tok;
  TaskSpec lambada;
  lambada.name = "lam";
  lambada.output = TaskOutput::loglikelihood;
  lambada.context = "{t|but_last_word}";
  lambada.target = "{t|last_word}";  // no space: the last word's only token is its letter
  lambada.metrics = {"acc", "ppl"};
  const TaskRequests r = build_task_requests(lambada, {{{"t", "some text w"}}, {{"t", "other text v"}}}, "");
  const auto results = score_loglikelihoods(w, nullptr, tok, r.requests, {});
  EXPECT_TRUE(results[0].greedy);
  EXPECT_FALSE(results[1].greedy);
  EXPECT_DOUBLE_EQ(score_task(lambada, r, results).metrics.at("acc"), 0.5);
}

TEST(TaskSpecErrors, BadTaskFilesNameTheFileAndLine) {
  TempDir dir;
  const std::string base = "task: t\nreproduces: x\ndocuments: {reader: jsonl, files: d.jsonl}\n";
  write_text(dir.file("missing.yaml"), base + "choices: [\"{a}\"]\ngold: \"{g}\"\nmetrics: [acc]\n");
  expect_config_error([&] { load_task_spec(dir.file("missing.yaml")); }, {"missing.yaml", "context", "missing"});
  write_text(dir.file("metric.yaml"), base + "context: x\nchoices: [\"{a}\"]\ngold: \"{g}\"\nmetrics: [ppl]\n");
  expect_config_error([&] { load_task_spec(dir.file("metric.yaml")); }, {"metric.yaml:7", "ppl"});
  write_text(dir.file("filter.yaml"), base + "context: \"{q|upper}\"\nchoices: [\"{a}\"]\ngold: \"{g}\"\nmetrics: [acc]\n");
  expect_config_error([&] { load_task_spec(dir.file("filter.yaml")); }, {"filter.yaml", "upper"});
  write_text(dir.file("reader.yaml"), "task: t\nreproduces: x\ndocuments: {reader: xml, files: d}\ncontext: x\n");
  expect_config_error([&] { load_task_spec(dir.file("reader.yaml")); }, {"reader.yaml:3", "xml"});
  // A gold label out of range names the document.
  write_text(dir.file("ok.yaml"), base + "context: \"{q}\"\nchoices: [\"{a}\", \"{b}\"]\ngold: \"{g}\"\nmetrics: [acc]\n");
  write_text(dir.file("d.jsonl"), "{\"q\": \"Q\", \"a\": \"x\", \"b\": \"y\", \"g\": 1}\n{\"q\": \"Q\", \"a\": \"x\", \"b\": \"y\", \"g\": 2}\n");
  const TaskSpec ok = load_task_spec(dir.file("ok.yaml"));
  const auto docs = load_task_documents(ok, dir.path().string());
  try {
    build_task_requests(ok, docs, dir.path().string());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("document 1: gold '2' is not a choice index (0..1)"), std::string::npos)
        << e.what();
  }
  write_text(dir.file("d.jsonl"), "{\"q\": 1}\nnot json\n");
  expect_config_error([&] { load_task_documents(ok, dir.path().string()); }, {"d.jsonl:2", "not a JSON object"});
  expect_config_error([&] { task_spec_path("no_such_task"); }, {"unknown task 'no_such_task'", "piqa"});
  // include: the other spec's keys under this file's; a missing or nested include is named.
  write_text(dir.file("inc.yaml"), "include: ok.yaml\ntask: inc\ncontext: \"{q}?\"\n");
  const TaskSpec inc = load_task_spec(dir.file("inc.yaml"));
  EXPECT_EQ(inc.name, "inc");
  EXPECT_EQ(inc.context, "{q}?");
  EXPECT_EQ(inc.choices, ok.choices);
  EXPECT_NE(inc.sha256, ok.sha256);
  write_text(dir.file("gone.yaml"), "include: nowhere.yaml\ntask: gone\n");
  expect_config_error([&] { load_task_spec(dir.file("gone.yaml")); }, {"nowhere.yaml", "cannot open"});
  write_text(dir.file("twice.yaml"), "include: inc.yaml\ntask: twice\n");
  expect_config_error([&] { load_task_spec(dir.file("twice.yaml")); }, {"twice.yaml", "inc.yaml", "one level only"});
  write_text(dir.file("typo.yaml"), "include: ok.yaml\ntask: typo\ncontxt: x\n");
  expect_config_error([&] { load_task_spec(dir.file("typo.yaml")); }, {"typo.yaml", "contxt"});
}

// An experiment naming an unknown task or a missing data folder exits 2 before anything runs.
TEST(TaskSpecErrors, ExperimentsCheckTasksBeforeRunning) {
  if (!fs::exists(testing::smollm2_gguf_path())) FAIL() << testing::smollm2_missing_message();
  TempDir dir;
  const std::string yaml = fmt::format(R"(name: zs
model: {{path: {}}}
eval: {{tasks: [piqa, nope], bos: false}}
calib: {{text: calib.txt, tokens: 64, seq_len: 32}}
methods: [{{method: identity}}]
)",
                                       testing::smollm2_gguf_path());
  std::string calib;
  for (int i = 0; i < 40; ++i) calib += "Researchers rotate activations before they quantize a model. ";
  write_text(dir.file("calib.txt"), calib);
  write_text(dir.file("zs.yaml"), yaml);
  const auto r = testing::run_cli(dir.path(), "run zs.yaml --out out");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("zs.yaml:3"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("unknown task 'nope'"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.path() / "out" / "runs")) << "something ran";
  write_text(dir.file("zs2.yaml"), yaml.substr(0, yaml.find("[piqa, nope]")) + "[piqa], tasks_dir: nowhere" +
                                       yaml.substr(yaml.find(", bos")));
  const auto missing = testing::run_cli(dir.path(), "run zs2.yaml --out out2");
  EXPECT_EQ(missing.code, 2) << missing.err;
  EXPECT_NE(missing.err.find("task data 'nowhere/piqa/valid.jsonl' is missing"), std::string::npos) << missing.err;
}

// A run with eval.tasks carries the requests through the same layer pass as the perplexity
// windows (issue #18): its full-precision scores equal the whole model's, they are cached in
// the results directory, and a later run (or --resume) reads them from there.
TEST(ZeroShotRun, TasksGoThroughTheLayerPassAndTheirFullPrecisionScoresAreCached) {
  if (!fs::exists(testing::smollm2_gguf_path())) FAIL() << testing::smollm2_missing_message();
  TempDir dir;
  fs::create_directories(dir.path() / "tasks" / "piqa");
  write_text(dir.file("tasks/piqa/valid.jsonl"),
             R"({"goal": "How do I dry wet shoes?", "sol1": "Stuff them with newspaper.", "sol2": "Put them in the fridge."})" "\n"
             R"({"goal": "How do you open a jar?", "sol1": "Twist the lid.", "sol2": "Eat the lid."})" "\n"
             R"({"goal": "Keep bread fresh", "sol1": "Leave it in the rain.", "sol2": "Seal it in a bag."})" "\n");
  write_text(dir.file("tasks/piqa/valid-labels.lst"), "0\n0\n1\n");
  std::string calib;
  for (int i = 0; i < 40; ++i) calib += "Researchers rotate activations before they quantize a model. ";
  write_text(dir.file("calib.txt"), calib);
  write_text(dir.file("zs.yaml"), fmt::format(R"(name: zs
seeds: [0]
model: {{path: {}}}
eval: {{tasks: [piqa], tasks_dir: tasks, bos: false, batch: 2}}
calib: {{text: calib.txt, tokens: 64, seq_len: 32}}
quant: {{w_bits: 4, a_bits: 8}}
methods: [{{label: rtn, method: identity}}]
)",
                                              testing::smollm2_gguf_path()));
  const auto metric = [](const std::string& out, const std::string& name) {
    return nlohmann::json::parse(out)["groups"][0]["metrics"][name]["mean"].get<double>();
  };
  const auto first = testing::run_cli(dir.path(), "run zs.yaml --out out --json", "SQLAB_THREADS=1");
  ASSERT_EQ(first.code, 0) << first.err;
  EXPECT_EQ(metric(first.out, "piqa.examples"), 3.0);

  // The cached full-precision log-likelihoods are the whole model's.
  std::vector<fs::path> cached;
  for (const auto& entry : fs::directory_iterator(dir.path() / "out" / "cache" / "tasks_fp")) cached.push_back(entry.path());
  ASSERT_EQ(cached.size(), 1u);
  nlohmann::json cache = nlohmann::json::parse(testing::read_text(cached[0].string()));
  const TaskSpec spec = load_task_spec(task_spec_path("piqa"));
  const TaskRequests requests =
      build_task_requests(spec, load_task_documents(spec, dir.file("tasks"), 0), dir.file("tasks"), 0);
  LoglikelihoodOptions options;
  options.batch = 2;
  const auto whole = score_loglikelihoods(load_checkpoint(testing::smollm2_gguf_path()), nullptr,
                                          *load_tokenizer(testing::smollm2_gguf_path()), requests.requests, options);
  ASSERT_EQ(cache["loglikelihood"].size(), whole.size());
  for (size_t i = 0; i < whole.size(); ++i) {
    EXPECT_NEAR(cache["loglikelihood"][i].get<double>(), whole[i].loglikelihood, 1e-5 * std::fabs(whole[i].loglikelihood));
    EXPECT_EQ(cache["greedy"][i].get<bool>(), whole[i].greedy);
  }
  // A later run reads the cache: make it say every gold choice wins (or every one loses).
  const double acc_fp = metric(first.out, "piqa.acc_fp");
  const std::vector<int> gold = {0, 0, 1};
  for (size_t d = 0; d < 3; ++d)
    for (size_t c = 0; c < 2; ++c)
      cache["loglikelihood"][2 * d + c] = ((static_cast<int>(c) == gold[d]) == (acc_fp < 1.0)) ? -1.0 : -50.0;
  write_text(cached[0].string(), cache.dump());
  const auto second = testing::run_cli(dir.path(), "run zs.yaml --out out --json --set 'methods=[{label: rtn2, method: identity}]'",
                                       "SQLAB_THREADS=1");
  ASSERT_EQ(second.code, 0) << second.err;
  EXPECT_EQ(metric(second.out, "piqa.acc_fp"), acc_fp < 1.0 ? 1.0 : 0.0);
  EXPECT_EQ(metric(second.out, "piqa.acc"), metric(first.out, "piqa.acc"));
  // A residual-placement run (one fitted site, whose fit metrics become the run's) keeps its task metrics.
  const auto residual = testing::run_cli(
      dir.path(), "run zs.yaml --out out --json --set 'methods=[{label: quarot, method: hadamard, quant: {placement: residual}}]'",
      "SQLAB_THREADS=1");
  ASSERT_EQ(residual.code, 0) << residual.err;
  EXPECT_EQ(metric(residual.out, "piqa.examples"), 3.0);
  EXPECT_EQ(metric(residual.out, "piqa.acc_fp"), acc_fp < 1.0 ? 1.0 : 0.0);
}

}  // namespace
}  // namespace sqlab
