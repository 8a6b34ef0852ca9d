// Session homes (docs/service.md "Routing"). Every replica has an id
// (`replica_id`, a DNS label such as the StatefulSet pod name "longctxd-1"),
// and every session id a replica makes names it: "<replica_id>.s-<32 hex>".
// A gateway routes each call by that prefix (deploy/envoy), and a replica
// asked about a session whose id names another replica answers
// FAILED_PRECONDITION naming the home (trailing metadata x-session-home, HTTP
// 421), never NOT_FOUND, so a call that reaches the wrong replica (a stale
// gateway, a direct connection, a scaled fleet) is never mistaken for a lost
// session.
//
// An id has a home when it has the form "<replica id>.s-<rest>"; ids without
// one (a caller-chosen "doc-1" or "doc-1.v2") and ids naming this replica
// behave as they always did. A session this replica holds is served whatever its id names (one
// created before the replica was renamed, or before ids had homes).
//
// Thread safety: plain functions of their arguments; the engine lookups are
// the engine's (safe from any thread).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "engine/engine.h"

namespace longctx::server {

// Trailing metadata (gRPC) and response header (HTTP) that name the home
// replica of a misdirected call.
inline constexpr char kSessionHomeHeader[] = "x-session-home";
// The absl::Status payload that carries the home replica of a misdirected
// call; server/status.cc turns it into kSessionHomeHeader.
inline constexpr absl::string_view kSessionHomePayload = "type.longctx.dev/session-home";
// The longest replica id: with "." and a generated "s-<32 hex>" a session id
// stays within its 64 characters.
inline constexpr size_t kMaxReplicaIdLength = 24;

// OK when `id` is 1 to kMaxReplicaIdLength of [a-z0-9-], beginning and ending
// with a letter or digit (a DNS label, so that a gateway can name the pod).
absl::Status ValidateReplicaId(absl::string_view id);

// A replica id made from a host name: its first label, lower-cased, other
// characters turned into '-', cut to kMaxReplicaIdLength; "longctxd" when
// nothing is left. A StatefulSet pod "longctxd-1" keeps its name.
std::string ReplicaIdFromHostName(absl::string_view host);

// The replica that session id `id` names: in "<home>.s-<rest>" with <home> a
// valid replica id and <rest> not empty, <home>; else empty (no home).
std::string SessionHome(absl::string_view id);

// The prefix of the session ids replica `replica_id` makes.
std::string SessionIdPrefix(absl::string_view replica_id);

// FAILED_PRECONDITION for a call about session `id`, whose home `home` is not
// this replica `self`; the message names both and the payload carries `home`.
absl::Status MisdirectedError(absl::string_view id, absl::string_view home, absl::string_view self);
// The home replica a MisdirectedError names, or empty for any other status.
std::string MisdirectedHome(const absl::Status& status);

// `lookup`, the status of looking up session `id` on replica `self`, as the
// call answers it: NOT_FOUND for an id whose home is another replica becomes
// MisdirectedError; anything else is returned unchanged.
absl::Status RouteLookup(absl::Status lookup, absl::string_view id, absl::string_view self);

// Before a call about existing session `id` of `tenant` on replica `self`:
// MisdirectedError when the id names another replica and `engine` holds no
// such session (live, expired or lost) for the tenant; else OK (the call
// then answers as it always did). INVALID_ARGUMENT for a malformed id.
absl::Status CheckSessionHome(Engine& engine, const std::string& tenant, const std::string& id,
                              absl::string_view self);

// Before creating or importing a session under the caller's `id` on replica
// `self`: MisdirectedError when the id names another replica (the session
// would live where the gateway never sends its calls); else OK.
absl::Status CheckNewSessionId(absl::string_view id, absl::string_view self);

}  // namespace longctx::server
