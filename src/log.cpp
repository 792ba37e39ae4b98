#include "ddpm/log.h"

#include <iostream>
#include <mutex>

namespace ddpm {
namespace {

std::mutex& sink_mutex() {
  static std::mutex mutex;
  return mutex;
}

LogSink& current_sink() {
  static LogSink sink;
  return sink;
}

void write_to_stderr(LogLevel level, const std::string& message) {
  if (level == LogLevel::kWarning || level == LogLevel::kError) {
    std::cerr << "ddpm " << to_string(level) << ": " << message << '\n';
  }
}

} // namespace

LogSink set_log_sink(LogSink sink) {
  std::lock_guard<std::mutex> lock(sink_mutex());
  LogSink previous = std::move(current_sink());
  current_sink() = std::move(sink);
  return previous;
}

void log_message(LogLevel level, const std::string& message) {
  std::lock_guard<std::mutex> lock(sink_mutex());
  if (current_sink()) {
    current_sink()(level, message);
  } else {
    write_to_stderr(level, message);
  }
}

const char* to_string(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "unknown";
}

} // namespace ddpm
