// The small template language of the task specs (configs/tasks/*.yaml): text with
// {path|filter|filter:arg} fields, filled from one document (a JSON object a reader made
// from one example). `path` is dot-separated (question.stem, endings.0); `{{` and `}}` are
// literal braces. The filters reproduce the string functions that lm-evaluation-harness's
// task definitions apply (Python semantics):
//   strip, lstrip          str.strip() / str.lstrip()
//   capitalize             str.capitalize(): first character upper case, the rest lower
//   before:X, after:X      the text before / after the first X (WinoGrande's "_")
//   but_last_word          ' '.join(text.split(' ')[:-1])  (LAMBADA's context)
//   last_word              text.split(' ')[-1]             (LAMBADA's target)
//   hellaswag              lm-eval's hellaswag preprocess: strip, " [title]" -> ". ",
//                          remove every [...], "  " -> " "
//   spaces                 "_" -> " " (MMLU's subject names)
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace sqlab {

// The JSON value at `path` (dot-separated keys and list indices); throws sqlab::Error naming
// `where` when the path does not exist.
const nlohmann::json& document_node(const nlohmann::json& document, const std::string& path, const std::string& where);

// The value at `path` as text (a string as it is, a number or bool as JSON writes it);
// throws sqlab::Error naming `where` when the path does not exist.
std::string document_field(const nlohmann::json& document, const std::string& path, const std::string& where);

// `text` with every field filled. Throws sqlab::Error naming `where` (the spec file and
// key) for an unknown filter, an unclosed brace or a missing field.
std::string render_template(const std::string& text, const nlohmann::json& document, const std::string& where);

// Checks the template's syntax and filter names without a document (spec loading).
void check_template(const std::string& text, const std::string& where);

// Python's len(): the number of Unicode code points of UTF-8 `text` (lm-eval's acc_norm
// divides by the choice's len()).
int64_t code_points(const std::string& text);

}  // namespace sqlab
