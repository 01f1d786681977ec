-- wrk: GET uniformly random preloaded keys through the Dynamo HTTP API (R from the node).
local common = dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
common.install_thread_numbering()
request = function()
  return wrk.format("GET", "/v1/kv/" .. common.loaded_key())
end
