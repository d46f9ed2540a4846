#include "tasks/readers.h"

#include <fmt/format.h>
#include <fnmatch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace sqlab {
namespace fs = std::filesystem;
namespace {

std::string read_all(const fs::path& path, const std::string& spec_file) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw config_error(fmt::format("{}: task data '{}' is missing (eval.tasks_dir is the folder that holds the "
                                   "splits; ../shared/data/tasks by default)",
                                   spec_file, path.string()));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

// The files a pattern names: itself, or the matches of a '*' in its file name.
std::vector<fs::path> expand(const std::string& pattern, const std::string& tasks_dir, const std::string& spec_file) {
  const fs::path full = fs::path(tasks_dir) / pattern;
  if (pattern.find('*') == std::string::npos) return {full};
  std::vector<fs::path> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(full.parent_path(), ec))
    if (fnmatch(full.filename().c_str(), entry.path().filename().c_str(), 0) == 0) found.push_back(entry.path());
  if (found.empty())
    throw config_error(fmt::format("{}: no task data matches '{}' (eval.tasks_dir: {})", spec_file, full.string(),
                                   tasks_dir));
  std::sort(found.begin(), found.end());
  return found;
}

nlohmann::json label_value(const std::string& text) {
  if (!text.empty() && text.find_first_not_of("-0123456789") == std::string::npos) return std::stoll(text);
  return text;
}

void read_jsonl(const fs::path& path, const std::string& spec_file, std::vector<nlohmann::json>& docs) {
  const std::vector<std::string> lines = lines_of(read_all(path, spec_file));
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find_first_not_of(" \t") == std::string::npos) continue;
    nlohmann::json doc = nlohmann::json::parse(lines[i], nullptr, false);
    if (doc.is_discarded() || !doc.is_object())
      throw config_error(fmt::format("{}:{}: not a JSON object", path.string(), i + 1));
    docs.push_back(std::move(doc));
  }
}

void read_hellaswag(const fs::path& path, const std::string& spec_file, std::string& pending) {
  pending += read_all(path, spec_file);  // the parts are one file cut in three
}

std::vector<nlohmann::json> hellaswag_documents(const std::string& text, const std::string& origin) {
  std::vector<std::string> lines = lines_of(text);
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.size() % 6 != 0)
    throw config_error(fmt::format("{}: {} lines, not 6 per example", origin, lines.size()));
  std::vector<nlohmann::json> docs;
  for (size_t i = 0; i < lines.size(); i += 6) {
    const std::string& gold = lines[i + 1];
    if (gold.size() != 1 || gold[0] < '0' || gold[0] > '3')
      throw config_error(fmt::format("{}:{}: gold index '{}' is not 0-3", origin, i + 2, gold));
    docs.push_back({{"query", lines[i]},
                    {"label", gold[0] - '0'},
                    {"endings", {lines[i + 2], lines[i + 3], lines[i + 4], lines[i + 5]}}});
  }
  return docs;
}

void read_csv(const fs::path& path, const std::string& spec_file, std::vector<nlohmann::json>& docs) {
  const std::vector<std::vector<std::string>> rows = parse_csv(read_all(path, spec_file), path.string());
  if (rows.empty()) throw config_error(fmt::format("{}: no header line", path.string()));
  std::string subject = path.stem().string();
  if (const size_t cut = subject.rfind('_'); cut != std::string::npos) subject = subject.substr(0, cut);
  for (size_t r = 1; r < rows.size(); ++r) {
    if (rows[r].size() != rows[0].size())
      throw config_error(fmt::format("{}: row {} has {} fields, the header {}", path.string(), r + 1, rows[r].size(),
                                     rows[0].size()));
    nlohmann::json doc = {{"subject", subject}};
    for (size_t c = 0; c < rows[0].size(); ++c) doc[rows[0][c]] = rows[r][c];
    docs.push_back(std::move(doc));
  }
}

}  // namespace

std::vector<std::vector<std::string>> parse_csv(const std::string& text, const std::string& origin) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false, field_started = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c == '"' && !field_started) {
      quoted = field_started = true;
    } else if (c == ',') {
      row.push_back(field);
      field.clear();
      field_started = false;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      row.push_back(field);
      rows.push_back(row);
      row.clear();
      field.clear();
      field_started = false;
    } else {
      field += c;
      field_started = true;
    }
  }
  if (quoted) throw config_error(fmt::format("{}: a quoted field is not closed", origin));
  if (field_started || !row.empty()) {
    row.push_back(field);
    rows.push_back(row);
  }
  return rows;
}

std::vector<nlohmann::json> read_task_files(const std::string& reader, const std::vector<std::string>& files,
                                            const std::string& labels_file, const std::string& tasks_dir,
                                            const std::string& spec_file) {
  std::vector<nlohmann::json> docs;
  std::string hellaswag;
  for (const std::string& pattern : files)
    for (const fs::path& path : expand(pattern, tasks_dir, spec_file)) {
      if (reader == "jsonl") read_jsonl(path, spec_file, docs);
      else if (reader == "csv") read_csv(path, spec_file, docs);
      else read_hellaswag(path, spec_file, hellaswag);
    }
  if (reader == "hellaswag_txt") docs = hellaswag_documents(hellaswag, fmt::format("{} ({})", files.front(), tasks_dir));
  if (!labels_file.empty()) {
    const fs::path path = fs::path(tasks_dir) / labels_file;
    std::vector<std::string> labels = lines_of(read_all(path, spec_file));
    while (!labels.empty() && labels.back().empty()) labels.pop_back();
    if (labels.size() != docs.size())
      throw config_error(fmt::format("{}: {} labels for {} documents", path.string(), labels.size(), docs.size()));
    for (size_t i = 0; i < docs.size(); ++i) docs[i]["label"] = label_value(labels[i]);
  }
  return docs;
}

}  // namespace sqlab
