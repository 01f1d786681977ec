-- wrk: put 1 KiB values to fresh keys through etcd's JSON gateway (/v3/kv/put).
local common = dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
common.install_thread_numbering()
local value = common.base64(common.value)
local headers = { ["Content-Type"] = "application/json" }
request = function()
  local body = '{"key":"' .. common.base64(common.fresh_key()) .. '","value":"' .. value .. '"}'
  return wrk.format("POST", "/v3/kv/put", headers, body)
end
