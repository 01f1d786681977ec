-- wrk: PUT 1 KiB values to fresh keys through the Dynamo HTTP API (no context: new keys).
local common = dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
common.install_thread_numbering()
request = function()
  return wrk.format("PUT", "/v1/kv/" .. common.fresh_key(), nil, common.value)
end
