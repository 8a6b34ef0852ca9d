// The service's requests and responses as bytes on the wire. The service is
// registered with gRPC's raw (ByteBuffer) callback methods and parses each
// request itself: gRPC's own parsing answers a request that fails to parse
// (a truncated message, a string field that is not UTF-8) with UNIMPLEMENTED
// and no message, or ends a stream as if the client had half-closed, without
// a word in the service's logs or metrics. Here it is INVALID_ARGUMENT,
// logged and counted like any other refusal.
//
// Thread safety: plain functions.
#pragma once

#include "absl/status/status.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"

namespace longctx::server {

// Parses `in` into `msg`. INVALID_ARGUMENT, naming the message type, when the
// bytes are not a valid message.
absl::Status ParseRequest(const grpc::ByteBuffer& in, google::protobuf::MessageLite* msg);

// `msg` serialized into `out` (replacing what it held). Returns `out`.
grpc::ByteBuffer* Serialize(const google::protobuf::MessageLite& msg, grpc::ByteBuffer* out);

}  // namespace longctx::server
