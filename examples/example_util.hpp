#pragma once
// Small helpers the examples share: the command line, random inputs, timing, row checks.

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <mmattn/mmattn.hpp>

namespace example {

// The command line every example shares: `--help`, `--smoke` for a tiny run, and arguments checked
// before any work starts. A usage error names the argument, prints the usage to stderr and exits
// with 2; a failed run exits with 1; so a script can tell a mistyped command from a broken one.
class CommandLine {
 public:
  CommandLine(char** argv, std::string usage, std::string about)
      : program_(program_name(argv)), usage_(std::move(usage)), about_(std::move(about)) {}

  [[noreturn]] void help() const {
    std::printf("usage: %s %s\n%s\n", program_.c_str(), usage_.c_str(), about_.c_str());
    std::exit(0);
  }
  [[noreturn]] void fail(const std::string& why) const {
    std::fprintf(stderr, "%s: %s\nusage: %s %s\n(%s --help for more)\n", program_.c_str(), why.c_str(),
                 program_.c_str(), usage_.c_str(), program_.c_str());
    std::exit(2);
  }

  // `text`, the value of argument `name`, as a whole number in [min, max]. strtol alone accepts
  // "12abc" and saturates on overflow, hence the end pointer and errno checks.
  long whole(const std::string& name, const char* text, long min, long max = LONG_MAX) const {
    char* end = nullptr;
    errno = 0;
    const long value = std::strtol(text, &end, 10);
    if (end == text || *end != '\0') fail(name + ": '" + text + "' is not a whole number");
    if (errno == ERANGE) fail(name + ": '" + text + "' is out of range");
    if (value < min || value > max)
      fail(name + ": '" + text + "' must be " +
           (max == LONG_MAX ? "at least " + std::to_string(min)
                            : "in [" + std::to_string(min) + ", " + std::to_string(max) + "]"));
    return value;
  }
  // The same for a real number in [lo, hi]; NaN fails the range check.
  double real(const std::string& name, const char* text, double lo, double hi) const {
    char* end = nullptr;
    errno = 0;
    const double value = std::strtod(text, &end);
    if (end == text || *end != '\0') fail(name + ": '" + text + "' is not a number");
    if (errno == ERANGE || !(value >= lo && value <= hi)) {
      char range[64];
      std::snprintf(range, sizeof range, "[%g, %g]", lo, hi);
      fail(name + ": '" + text + "' must be in " + range);
    }
    return value;
  }

  // What main's handler returns for an exception the run threw (an mmattn::Error for a size the
  // library refuses, such as an even window; bad_alloc for one too large): the message, and 1
  // rather than an abort.
  static int error(char** argv, const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", program_name(argv).c_str(), e.what());
    return 1;
  }

 private:
  static std::string program_name(char** argv) {
    const std::string path = argv[0] ? argv[0] : "example";
    return path.substr(path.find_last_of('/') + 1);  // npos + 1 == 0
  }

  std::string program_, usage_, about_;
};

// One positional argument: a whole number (a size unless `min` says otherwise), or, where `text`
// is set, a string such as a directory with `text` as its default.
struct Param {
  const char* name;
  long normal;                 // default
  long smoke;                  // default under --smoke
  long min = 1;
  const char* text = nullptr;
};

struct Args {
  bool smoke = false;
  std::vector<long> number;       // per Param; 0 for a text one
  std::vector<std::string> text;  // per Param, as given or defaulted
};

// Positional arguments in the order of `params`, each optional from the first one left out;
// `--smoke` and `--help` anywhere.
inline Args parse(int argc, char** argv, const std::string& about, const std::vector<Param>& params) {
  std::string usage, smoke_defaults;
  for (const Param& p : params) {
    usage += std::string("[") + p.name + "=" + (p.text ? p.text : std::to_string(p.normal)) + "] ";
    if (!p.text) smoke_defaults += std::string(" ") + p.name + "=" + std::to_string(p.smoke);
  }
  usage += "[--smoke] [--help]";
  if (!smoke_defaults.empty()) smoke_defaults = ", with" + smoke_defaults;
  const CommandLine cli(argv, usage, about + (params.empty() ? "" : "\n--smoke: a tiny run" + smoke_defaults));
  Args a;
  std::vector<const char*> given;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (s == "--help" || s == "-h") cli.help();
    const bool option = s.size() > 1 && s[0] == '-' && !std::isdigit(static_cast<unsigned char>(s[1]));  // not "-3"
    if (s == "--smoke") a.smoke = true;
    else if (option) cli.fail("unknown option '" + s + "'");
    else if (given.size() == params.size())
      cli.fail("unexpected argument '" + s + "' (takes " +
               (params.empty() ? std::string("none") : "at most " + std::to_string(params.size())) + ")");
    else given.push_back(argv[i]);
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const Param& p = params[i];
    if (p.text) {
      a.number.push_back(0);
      a.text.push_back(i < given.size() ? given[i] : p.text);
    } else {
      a.number.push_back(i < given.size() ? cli.whole(p.name, given[i], p.min) : a.smoke ? p.smoke : p.normal);
      a.text.push_back(std::to_string(a.number.back()));
    }
  }
  return a;
}

inline std::vector<float> random_values(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// Median wall time in milliseconds of `runs` calls.
template <class F>
double median_ms(int runs, F&& f) {
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Largest |out - reference| / max|reference| over the given query rows (all heads), with the
// reference computed one row at a time so a check never costs the full dense attention.
template <class Predicate>
double check_rows(const mmattn::AttentionConfig& cfg, mmattn::TensorView<const float> q,
                  mmattn::TensorView<const float> k, mmattn::TensorView<const float> v,
                  mmattn::TensorView<float> out, const std::vector<mmattn::index_t>& rows,
                  const Predicate& allowed) {
  return mmattn::sampled_relative_error(cfg, q, k, v, out, rows, allowed);  // NaN-aware
}

}  // namespace example
