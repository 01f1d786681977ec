-- wrk: linearizable range reads (etcd's default) of uniformly random preloaded keys
-- through etcd's JSON gateway (/v3/kv/range).
local common = dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
common.install_thread_numbering()
local headers = { ["Content-Type"] = "application/json" }
request = function()
  local body = '{"key":"' .. common.base64(common.loaded_key()) .. '"}'
  return wrk.format("POST", "/v3/kv/range", headers, body)
end
