#include "engine/model/load_model.h"

#include "engine/backend/backend_factory.h"
#include "engine/model/infini_gates.h"
#include "engine/util/status_macros.h"

namespace longctx {

HostLoadOptions HostLoadOptionsFor(const Backend& backend) {
  HostLoadOptions options;
  for (DType t : {DType::kF16, DType::kBF16, DType::kQ4_0, DType::kQ4_1, DType::kQ8_0, DType::kQ4_K,
                  DType::kQ5_K, DType::kQ6_K}) {
    if (backend.TakesWeights(t)) options.raw_types.push_back(t);
  }
  return options;
}

absl::StatusOr<LoadedModel> OpenModel(const std::string& path, const std::string& backend,
                                      const CpuBackendOptions& cpu,
                                      const std::string& infini_gates) {
  ASSIGN_OR_RETURN(BackendKind kind, ParseBackendKind(backend));
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> b, CreateBackend(kind, cpu));
  return OpenModel(path, std::move(b), infini_gates);
}

absl::StatusOr<LoadedModel> OpenModel(const std::string& path, std::unique_ptr<Backend> backend,
                                      const std::string& infini_gates) {
  LoadedModel m;
  m.backend = std::move(backend);
  ASSIGN_OR_RETURN(m.host, LoadHostModel(path, HostLoadOptionsFor(*m.backend)));
  ASSIGN_OR_RETURN(m.infini_gates, ApplyInfiniGates(infini_gates, path, &m.host));
  return m;
}

absl::Status BuildModel(LoadedModel& m, const KvCacheConfig& kv, bool keep_host) {
  ASSIGN_OR_RETURN(m.model, LlamaModel::Create(m.host, m.backend.get(), kv));
  if (!keep_host) m.host.tensors.clear();
  return absl::OkStatus();
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& path, const std::string& backend,
                                      const KvCacheConfig& kv, bool keep_host,
                                      const CpuBackendOptions& cpu,
                                      const std::string& infini_gates) {
  ASSIGN_OR_RETURN(LoadedModel m, OpenModel(path, backend, cpu, infini_gates));
  RETURN_IF_ERROR(BuildModel(m, kv, keep_host));
  return m;
}

}  // namespace longctx
