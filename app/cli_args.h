// What every subcommand does with its arguments: Boost.Program_options parsing with a
// --help option, and parse errors turned into config errors (exit 2) that name the
// subcommand.
#pragma once

#include <boost/program_options.hpp>

#include <string>
#include <vector>

namespace sqlab {

// Parses `args` into `vm`. Returns false when --help was given: the usage (`usage`,
// which may run over several lines) and the options were printed, and the command
// should exit 0.
bool parse_args(const std::string& command, const std::vector<std::string>& args,
                boost::program_options::options_description& options,
                const boost::program_options::positional_options_description& positional, const std::string& usage,
                boost::program_options::variables_map& vm);

}  // namespace sqlab
