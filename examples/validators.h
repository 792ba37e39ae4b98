#pragma once

// Command-line helpers shared by the programs. CLI11's PositiveNumber
// reports "Value 0 not in range 0.000000 to 1797...", which names neither
// the rule nor a readable bound, hence the validators here.

#include <cmath>
#include <cstdlib>
#include <string>

#include <CLI/CLI.hpp>

namespace ddpm::cli {

inline CLI::Validator number_at_least(double minimum, bool inclusive,
                                      const std::string& description) {
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        char* end = nullptr;
        const double value = std::strtod(text.c_str(), &end);
        if (text.empty() || end != text.c_str() + text.size()) {
          return "must be a number, got \"" + text + "\"";
        }
        if (!std::isfinite(value)) {
          return "must be a finite number, got " + text;
        }
        if (value < minimum || (!inclusive && value == minimum)) {
          return "must be " + description + ", got " + text;
        }
        return {};
      },
      description == "positive"   ? "POSITIVE"
      : description == "finite" ? "NUMBER"
                                : "NONNEGATIVE");
}

inline const CLI::Validator& positive() {
  static const CLI::Validator validator =
      number_at_least(0.0, /*inclusive=*/false, "positive");
  return validator;
}

inline const CLI::Validator& non_negative() {
  static const CLI::Validator validator =
      number_at_least(0.0, /*inclusive=*/true, "at least 0");
  return validator;
}

inline const CLI::Validator& finite() {
  static const CLI::Validator validator =
      number_at_least(-HUGE_VAL, /*inclusive=*/true, "finite");
  return validator;
}

// Lets a repeated single-value option take its last value, so that flags
// appended to a command (as scripts/main-job.sh forwards its arguments)
// override earlier ones instead of failing. Call after adding the options.
inline void take_last_repeated_values(CLI::App& app) {
  for (CLI::Option* option : app.get_options()) {
    if (option->get_items_expected_max() == 1 &&
        !option->get_name().empty()) {
      option->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    }
  }
}

} // namespace ddpm::cli
