// The task files as documents (JSON objects), one reader per file format of
// ../shared/data/tasks (its README lists the formats):
//   jsonl          one JSON object per line; `labels_file` (one label per line) adds `label`
//   csv            a header line, then RFC 4180 rows; each row an object keyed by the header,
//                  plus `subject`: the file name without its last _part (MMLU's
//                  abstract_algebra_test.csv -> abstract_algebra)
//   hellaswag_txt  llama.cpp's HellaSwag text: 6 lines per example, `query` (activity_label:
//                  ctx), the gold index `label`, then the 4 `endings`
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace sqlab {

// `files` are relative to `tasks_dir`; a '*' in a file name matches like a shell glob (the
// matches in name order). Errors name the data file and line, or `spec_file`.
std::vector<nlohmann::json> read_task_files(const std::string& reader, const std::vector<std::string>& files,
                                            const std::string& labels_file, const std::string& tasks_dir,
                                            const std::string& spec_file);

// RFC 4180 fields of CSV `text` (quoted fields may hold commas, quotes as "", newlines).
std::vector<std::vector<std::string>> parse_csv(const std::string& text, const std::string& origin);

}  // namespace sqlab
