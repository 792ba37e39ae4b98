#pragma once

#include <functional>
#include <string>

namespace ddpm {

/// Severity of a library message.
enum class LogLevel { kDebug, kInfo, kWarning, kError };

/// Receives every message the library emits. The library itself never
/// writes to standard output; programs install a sink to show messages.
using LogSink = std::function<void(LogLevel, const std::string&)>;

/// Replaces the process-wide sink and returns the previous one. The default
/// sink writes warnings and errors to standard error and drops the rest.
/// Passing an empty function restores the default.
LogSink set_log_sink(LogSink sink);

/// Sends one message to the current sink. Safe to call from any thread.
void log_message(LogLevel level, const std::string& message);

inline void log_info(const std::string& message) {
  log_message(LogLevel::kInfo, message);
}

inline void log_warning(const std::string& message) {
  log_message(LogLevel::kWarning, message);
}

/// Returns "debug", "info", "warning" or "error".
const char* to_string(LogLevel level);

} // namespace ddpm
