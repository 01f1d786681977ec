-- Shared helpers for the wrk scripts in this folder (loaded with dofile).
-- Environment: BENCH_KEYS (preloaded key count), BENCH_VALUE_BYTES (value size).

local M = {}

M.keys = tonumber(os.getenv("BENCH_KEYS") or "10000")
M.value = string.rep("v", tonumber(os.getenv("BENCH_VALUE_BYTES") or "1024"))

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- Standard base64 (RFC 4648, with padding): etcd's JSON gateway takes keys and values so.
function M.base64(data)
  local out = {}
  for i = 1, #data, 3 do
    local a, b, c = data:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local remaining = #data - i + 1
    -- 3 bytes give 4 characters; a final 1 or 2 bytes give 2 or 3, then padding.
    local chars = remaining >= 3 and 4 or remaining + 1
    for j = 1, 4 do
      if j <= chars then
        local index = math.floor(n / 2 ^ (6 * (4 - j))) % 64
        out[#out + 1] = alphabet:sub(index + 1, index + 1)
      else
        out[#out + 1] = "="
      end
    end
  end
  return table.concat(out)
end

-- Per-thread state: wrk runs each thread in its own Lua state; setup() numbers them so
-- that put keys are unique across threads and random sequences differ.
M.counter = 0
M.thread_id = 0

function M.install_thread_numbering()
  local next_id = 0
  setup = function(thread)
    next_id = next_id + 1
    thread:set("thread_id", next_id)
  end
  init = function(args)
    -- thread:set() in setup() becomes a global of the thread's own Lua state.
    M.thread_id = tonumber(thread_id) or 0
    math.randomseed(1000 + M.thread_id)
  end
end

-- A key never written before: blind writes to fresh keys never create siblings, so the
-- put workload measures writes, not sibling growth.
function M.fresh_key()
  M.counter = M.counter + 1
  return string.format("bench-put-%d-%d", M.thread_id, M.counter)
end

-- A uniformly random preloaded key.
function M.loaded_key()
  return string.format("bench-%d", math.random(M.keys))
end

return M
