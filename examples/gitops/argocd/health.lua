-- Argo CD health check for kimi-operator.dev/KimiDeployment (Lua 5.1, as Argo CD runs it).
-- Reads only status.conditions (metav1.Condition shape) and metadata.generation; the reasons are those of the
-- Ready condition in docs/api.md. Installed through argocd-cm.yaml (same text); tested by tests/unit/test_gitops.py.
--   Healthy      Ready=True for the current generation (reason Ready, or ScaledToZero)
--   Degraded     the operator refused the spec or cannot make progress without a person
--   Progressing  everything else: no status yet, a generation not yet observed, downloading, loading, rolling out
local degraded = {
  InvalidSpec = true,
  UnknownCheckpoint = true,
  UnknownAccelerator = true,
  ContextTooLong = true,
  DoesNotFit = true,
  UnsupportedByCheckpoint = true,
  UnsupportedByEngine = true,
  AcceleratorMismatch = true,
  VolumeTooSmall = true,
  InvalidTopology = true,
  LeaderWorkerSetNotInstalled = true,
  VolumeNotBound = true,
  VolumeTerminating = true,
  FetchFailed = true,
  RevisionUnresolved = true,
  RevisionNotFound = true,
  Unschedulable = true,
  ApplyFailed = true,
  FailedCreate = true,
  StartupStalled = true,
  ErrImagePull = true,
  ImagePullBackOff = true,
  InvalidImageName = true,
  CreateContainerConfigError = true,
  CreateContainerError = true,
  RunContainerError = true,
  CrashLoopBackOff = true,
}

local hs = {status = "Progressing", message = "Waiting for the operator to report status"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end

local ready = nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    ready = condition
  end
end
if ready == nil then
  return hs
end

local generation = obj.metadata.generation
local observed = ready.observedGeneration or obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local reason = ready.reason or ""
local text = reason
if ready.message ~= nil and ready.message ~= "" then
  text = reason .. ": " .. ready.message
end
if ready.status == "True" then
  hs.status = "Healthy"
elseif degraded[reason] then
  hs.status = "Degraded"
end
hs.message = text
return hs
