#include "warpctl/db.hpp"

#include <libpq-fe.h>

#include <charconv>
#include <vector>

namespace warp::warpctl {

namespace {

std::string OneLine(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' '))
    text.pop_back();
  for (char& c : text) {
    if (c == '\n' || c == '\t')
      c = ' ';
  }
  return text;
}

}  // namespace

Rows::Rows(PGresult* result) : result_(result, &PQclear) {}

int Rows::size() const {
  return PQntuples(result_.get());
}

int Rows::Column(const char* column) const {
  const int n = PQfnumber(result_.get(), column);
  if (n < 0)
    throw std::logic_error(std::string("no column ") + column + " in the result");
  return n;
}

bool Rows::IsNull(int row, const char* column) const {
  return PQgetisnull(result_.get(), row, Column(column)) != 0;
}

std::string Rows::Text(int row, const char* column) const {
  return PQgetvalue(result_.get(), row, Column(column));
}

std::optional<std::string> Rows::Optional(int row, const char* column) const {
  if (IsNull(row, column))
    return std::nullopt;
  return Text(row, column);
}

std::int64_t Rows::Int(int row, const char* column) const {
  const std::string text = Text(row, column);
  std::int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size())
    throw std::logic_error(std::string("column ") + column + " is not an integer: " + text);
  return value;
}

std::optional<std::int64_t> Rows::OptionalInt(int row, const char* column) const {
  if (IsNull(row, column))
    return std::nullopt;
  return Int(row, column);
}

bool Rows::Bool(int row, const char* column) const {
  return Text(row, column) == "t";
}

Db::Db(migrations::ConnectionPtr conn) : conn_(std::move(conn)) {
  Query("SET TIME ZONE 'UTC'");
}

Rows Db::Query(const char* sql, std::initializer_list<Param> params) {
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& p : params)
    values.push_back(p ? p->c_str() : nullptr);
  PGresult* result = PQexecParams(conn_.get(), sql, static_cast<int>(values.size()), nullptr,
                                  values.data(), nullptr, nullptr, 0);
  const auto status = result ? PQresultStatus(result) : PGRES_FATAL_ERROR;
  if (status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK)
    return Rows(result);
  const bool lost = PQstatus(conn_.get()) != CONNECTION_OK;
  std::string message = result ? PQresultErrorMessage(result) : PQerrorMessage(conn_.get());
  const char* state = result ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  const char* constraint = result ? PQresultErrorField(result, PG_DIAG_CONSTRAINT_NAME) : nullptr;
  const char* primary = result ? PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY) : nullptr;
  if (primary)
    message = primary;
  DbError error(OneLine(message.empty() ? "connection lost" : message), state ? state : "",
                constraint ? constraint : "", lost);
  if (result)
    PQclear(result);
  throw error;
}

Transaction::Transaction(Db& db) : db_(db) {
  db_.Query("BEGIN");
}

Transaction::~Transaction() {
  if (done_)
    return;
  try {
    db_.Query("ROLLBACK");
  } catch (const DbError&) {
    // The connection is gone: so is the transaction.
  }
}

void Transaction::Commit() {
  db_.Query("COMMIT");
  done_ = true;
}

}  // namespace warp::warpctl
