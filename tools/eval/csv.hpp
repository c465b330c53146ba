// simcalkv-eval: RFC 4180 CSV (writing and reading) and atomic file writes.
#pragma once

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <unistd.h>

namespace simcalkv::eval {

/// One CSV field, RFC 4180: quoted when it holds a comma, a double quote, CR or LF (or starts or ends with a
/// space, which some readers trim); double quotes inside are doubled.
inline std::string csv_field(std::string_view s) {
  bool quote = s.find_first_of(",\"\r\n") != std::string_view::npos;
  if (!s.empty() && (s.front() == ' ' || s.back() == ' ' || s.front() == '\t' || s.back() == '\t')) quote = true;
  if (!quote) return std::string(s);
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

/// One record: fields joined by commas, ended by CRLF as RFC 4180 says.
inline std::string csv_row(const std::vector<std::string>& fields) {
  std::string out;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i) out += ',';
    out += csv_field(fields[i]);
  }
  out += "\r\n";
  return out;
}

/// Parses RFC 4180 text (CRLF or LF line ends) into records; throws on a malformed quoted field.
inline std::vector<std::vector<std::string>> csv_parse(std::string_view text) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool in_quotes = false, field_started = false;
  std::size_t i = 0;
  auto end_field = [&] {
    row.push_back(field);
    field.clear();
    field_started = false;
  };
  while (i < text.size()) {
    const char c = text[i];
    if (in_quotes) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          i += 2;
          continue;
        }
        in_quotes = false;
        ++i;
        if (i < text.size() && text[i] != ',' && text[i] != '\r' && text[i] != '\n')
          throw std::runtime_error("CSV: text after a closing quote at byte " + std::to_string(i));
        continue;
      }
      field += c;
      ++i;
      continue;
    }
    if (c == '"' && !field_started && field.empty()) {
      in_quotes = true;
      field_started = true;
      ++i;
    } else if (c == ',') {
      end_field();
      ++i;
    } else if (c == '\r' || c == '\n') {
      end_field();
      rows.push_back(std::move(row));
      row.clear();
      i += (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ? 2 : 1;
    } else {
      field += c;
      field_started = true;
      ++i;
    }
  }
  if (in_quotes) throw std::runtime_error("CSV: a quoted field is not closed");
  if (field_started || !field.empty() || !row.empty()) {
    end_field();
    rows.push_back(std::move(row));
  }
  return rows;
}

/// Writes `content` to `path` atomically: a temporary file in the same folder, closed and renamed over `path`.
/// A reader (or an interrupted or killed run) sees the old file or the new one, never half of one. (No fsync: the
/// files are rewritten after every sample, and surviving a power cut is not the point.)
inline void write_file_atomic(const std::filesystem::path& path, std::string_view content) {
  const auto dir = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
  std::filesystem::create_directories(dir);
  const auto tmp = dir / ("." + path.filename().string() + ".tmp." + std::to_string(::getpid()));
  {
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) throw std::runtime_error(tmp.string() + ": cannot create the file");
    const bool ok = std::fwrite(content.data(), 1, content.size(), f) == content.size() && std::fflush(f) == 0;
    if (std::fclose(f) != 0 || !ok) {
      std::filesystem::remove(tmp);
      throw std::runtime_error(tmp.string() + ": write failed");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    throw std::runtime_error(path.string() + ": cannot rename the written file into place: " + ec.message());
  }
}

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path.string() + ": cannot open the file");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return s;
}

}  // namespace simcalkv::eval
