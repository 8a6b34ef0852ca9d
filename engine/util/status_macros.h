// Status plumbing shared by every module: errors are values (absl::Status),
// never exceptions across module boundaries.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define LONGCTX_CONCAT_INNER_(a, b) a##b
#define LONGCTX_CONCAT_(a, b) LONGCTX_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` yields a non-OK status.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::absl::Status _longctx_status = (expr);       \
    if (!_longctx_status.ok()) return _longctx_status; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, StatusOrExpr());`
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(LONGCTX_CONCAT_(_longctx_statusor_, __LINE__), lhs, rexpr)
#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                           \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
