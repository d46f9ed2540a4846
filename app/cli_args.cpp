#include "app/cli_args.h"

#include <fmt/format.h>

#include <iostream>

#include "core/error.h"

namespace sqlab {
namespace po = boost::program_options;

bool parse_args(const std::string& command, const std::vector<std::string>& args, po::options_description& options,
                const po::positional_options_description& positional, const std::string& usage,
                po::variables_map& vm) {
  options.add_options()("help,h", "show this help");
  try {
    po::store(po::command_line_parser(args).options(options).positional(positional).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw config_error(fmt::format("{}: {} (see `sqlab {} --help`)", command, e.what(), command));
  }
  if (vm.count("help")) {
    std::cout << "usage: " << usage << "\n\n" << options;
    return false;
  }
  return true;
}

}  // namespace sqlab
