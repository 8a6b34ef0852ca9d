#include "server/wire.h"

#include "absl/strings/str_cat.h"
#include "grpcpp/support/proto_buffer_reader.h"

namespace longctx::server {

absl::Status ParseRequest(const grpc::ByteBuffer& in, google::protobuf::MessageLite* msg) {
  grpc::ByteBuffer copy(in);  // shares the slices; the reader needs a mutable buffer
  grpc::ProtoBufferReader reader(&copy);
  if (!reader.status().ok() || !msg->ParseFromZeroCopyStream(&reader)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request is not a valid ", msg->GetTypeName(),
                     " (truncated or malformed protobuf, or a string field that is not UTF-8)"));
  }
  return absl::OkStatus();
}

grpc::ByteBuffer* Serialize(const google::protobuf::MessageLite& msg, grpc::ByteBuffer* out) {
  // One slice, as gRPC's own serializer makes for messages of this size (at
  // most max_message_bytes); an empty message is one empty slice.
  grpc::Slice slice(msg.ByteSizeLong());
  msg.SerializeWithCachedSizesToArray(const_cast<uint8_t*>(slice.begin()));
  *out = grpc::ByteBuffer(&slice, 1);
  return out;
}

}  // namespace longctx::server
